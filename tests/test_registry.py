"""The dataset registry: every entry parses, selection by name / 'all' + type / defaults, errors,
and the column mappings applied to local datasets with the same columns (no Hub)."""

from __future__ import annotations

import io
import textwrap
from types import MappingProxyType

import pytest

from wdstream.errors import ColumnError, ConfigError
from wdstream.registry import (
    TASK_TYPES,
    Entry,
    get_registry,
    load_registry,
    registry_path,
    select_datasets,
)


@pytest.fixture(scope="module")
def reg():
    return get_registry()


# --- the registry file -------------------------------------------------------------------------
def test_every_entry_parses_and_is_complete(reg):
    assert registry_path().name == "datasets.yaml"
    assert isinstance(reg, MappingProxyType)
    for name, e in reg.items():
        assert isinstance(e, Entry) and e.name == name
        assert "/" in e.hub_id and e.split and e.revision and e.license
        assert e.task_types and set(e.task_types) <= set(TASK_TYPES)
        assert isinstance(e.verified, bool) and isinstance(e.default, bool)
        assert e.columns, f"{name}: list the columns the mapping relies on"
        assert set(e.required_columns) <= set(e.columns)
        if "vision" in e.task_types:
            assert e.image_column
        if "audio" in e.task_types:
            assert e.audio_column


def test_at_least_three_per_task_type_and_a_default_set(reg):
    for t in TASK_TYPES:
        of_type = [e for e in reg.values() if t in e.task_types]
        assert len(of_type) >= 3, t
        assert any(e.default for e in of_type), t


def test_registry_is_read_only(reg):
    with pytest.raises(TypeError):
        reg["new"] = reg["gsm8k"]
    with pytest.raises(AttributeError):
        reg["gsm8k"].hub_id = "x/y"


def test_seed_names_resolve(reg):
    assert reg["open_platypus"].hub_id == "garage-bAInd/Open-Platypus"
    assert reg["open_platypus"].load_kwargs()["path"] == "garage-bAInd/Open-Platypus"
    assert reg["gsm8k"].load_kwargs() == {
        "path": "openai/gsm8k",
        "name": "main",
        "split": "train",
        "revision": "main",
    }


# --- selection ---------------------------------------------------------------------------------
def test_select_by_name_and_by_hub_id(reg):
    assert select_datasets("open_platypus") == [reg["open_platypus"]]
    assert select_datasets("openai/gsm8k") == [reg["gsm8k"]]
    assert select_datasets("open_platypus", task_type="math") == [reg["open_platypus"]]


def test_select_all_with_task_type(reg):
    code = select_datasets("all", task_type="code")
    assert {e.name for e in code} == {n for n, e in reg.items() if "code" in e.task_types}
    assert {"mbpp", "humaneval", "python_code_18k"} <= {e.name for e in code}
    assert len(select_datasets("all")) == len(reg)


def test_task_type_alone_gives_the_default_set(reg):
    vision = select_datasets(task_type="vision")
    assert vision and all(e.default and "vision" in e.task_types for e in vision)
    assert "mnist" not in {e.name for e in vision}  # in the registry, not a default
    assert len(vision) < len(select_datasets("all", task_type="vision"))


def test_defaults_fall_back_to_every_entry_of_the_type():
    reg = MappingProxyType(
        {"a": Entry(name="a", hub_id="o/a", task_types=("text",), text_template="{t}")}
    )
    assert [e.name for e in select_datasets(task_type="text", registry=reg)] == ["a"]
    assert select_datasets(task_type="audio", registry=reg) == []


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (
            {"dataset_name": "open_platypu"},
            ["unknown dataset name", "open_platypus", "gsm8k", "all"],
        ),
        ({"task_type": "coed"}, ["unknown task type", "'code'", "vision", "audio"]),
        ({"dataset_name": "all", "task_type": "images"}, ["unknown task type", "vision"]),
        ({"dataset_name": "gsm8k", "task_type": "vision"}, ["'gsm8k'", "math", "'vision'"]),
        ({}, ["dataset_name", "task_type"]),
    ],
)
def test_selection_errors_list_the_valid_choices(kwargs, words):
    with pytest.raises(ConfigError) as info:
        select_datasets(**kwargs)
    for w in words:
        assert w in str(info.value)


# --- templates ---------------------------------------------------------------------------------
def test_template_joins_columns_and_drops_empty_lines(reg):
    e = reg["open_platypus"]
    row = {"instruction": "Add 2 and 3.", "input": "", "output": "5", "data_source": "x"}
    assert e.template.render(row) == "Add 2 and 3.\n5"
    assert e.template.render({**row, "input": "2, 3"}) == "Add 2 and 3.\n2, 3\n5"
    assert e.template.render({**row, "input": None}) == "Add 2 and 3.\n5"


def test_template_indexes_lists_and_formats_numbers(reg):
    assert reg["flickr30k"].template.render({"caption": ["a dog runs", "b"]}) == "a dog runs"
    assert reg["flickr30k"].template.render({"caption": []}) == ""
    assert reg["mnist"].template.render({"label": 7, "image": None}) == "a handwritten digit 7"


def test_template_missing_column_is_a_column_error(reg):
    with pytest.raises(ColumnError, match="question"):
        reg["gsm8k"].template.render({"answer": "4"})


def test_check_columns_names_what_is_missing(reg):
    reg["flickr8k"].check_columns(["image", "caption_0", "caption_1"])
    with pytest.raises(ColumnError, match=r"\['caption_0'\]"):
        reg["flickr8k"].check_columns(["image", "captions"])


@pytest.mark.parametrize(
    "body, words",
    [
        (
            "x:\n    hub_id: o/x\n    task_types: [text]\n    text_tempate: '{a}'\n",
            ["unknown key 'text_tempate'", "text_template"],
        ),
        (
            "x:\n    hub_id: o/x\n    task_types: [pictures]\n    text_template: '{a}'\n",
            ["task_types", "vision"],
        ),
        (
            "x:\n    hub_id: o/x\n    task_types: [text]\n    text_template: '{a}\\n{b}'\n"
            "    columns: [a]\n",
            ["['b']", "not in its columns"],
        ),
        ("x:\n    task_types: [text]\n    text_template: '{a}'\n", ["no hub_id"]),
        (
            "x:\n    hub_id: o/x\n    task_types: [text]\n    text_template: '{a.b}'\n",
            ["bad template field"],
        ),
        (
            "Bad-Name:\n    hub_id: o/x\n    task_types: [text]\n    text_template: '{a}'\n",
            ["lower-case"],
        ),
    ],
)
def test_bad_registry_files_are_config_errors(tmp_path, body, words):
    path = tmp_path / "datasets.yaml"
    path.write_text("datasets:\n" + textwrap.indent(body, "  "))
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    for w in words:
        assert w in str(info.value)


def test_registry_path_honours_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "datasets:\n  mine:\n    hub_id: me/mine\n    task_types: [code]\n"
        "    text_template: '{src}'\n"
    )
    monkeypatch.setenv("WDSTREAM_DATASETS", str(path))
    assert registry_path() == path
    assert [e.hub_id for e in select_datasets("all", task_type="code")] == ["me/mine"]


# --- mappings on local datasets with the entries' columns ----------------------------------------
def _png(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8 + i, 6), (10 * i, 100, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _flac(i: int) -> bytes:
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.full(1600 + 160 * i, 0.1, dtype=np.float32), 16000, format="FLAC")
    return buf.getvalue()


def _local_dataset(entry: Entry, folder, rows: int = 3):
    """A parquet dataset with exactly the entry's columns, streamed back with ``datasets``."""
    import datasets

    indexed = {
        spec[0] for parts, _ in entry.template._lines for _, spec in parts if spec and spec[1]
    }
    cols: dict[str, list] = {c: [] for c in entry.columns}
    for i in range(rows):
        for c in entry.columns:
            if c == entry.image_column:
                cols[c].append({"bytes": _png(i), "path": None})
            elif c == entry.audio_column:
                cols[c].append({"bytes": _flac(i), "path": f"clip{i}.flac"})
            elif c in indexed:
                cols[c].append([f"{c} {i} first", f"{c} {i} second"])
            else:
                cols[c].append(f"{c} {i}")
    ds = datasets.Dataset.from_dict(cols)
    if entry.image_column:
        ds = ds.cast_column(entry.image_column, datasets.Image())
    if entry.audio_column:  # a storage-level cast: no torchcodec needed
        ds = ds.cast_column(entry.audio_column, datasets.Audio())
    (folder / "data").mkdir()
    ds.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    stream = datasets.load_dataset(str(folder), split="train", streaming=True)
    if entry.image_column:
        stream = stream.cast_column(entry.image_column, datasets.Image(decode=False))
    if entry.audio_column:
        stream = stream.cast_column(entry.audio_column, datasets.Audio(decode=False))
    return stream


@pytest.mark.parametrize(
    "name",
    [
        "open_platypus",
        "python_code_18k",
        "mbpp",
        "gsm8k",
        "flickr8k",
        "flickr30k",
        "librispeech_clean100",
        "esc50",
    ],
)
def test_mapping_applies_to_a_local_dataset_with_the_same_columns(reg, tmp_path, name):
    from wdstream.format.schema import audio_ext, image_ext

    entry = reg[name]
    stream = _local_dataset(entry, tmp_path)
    entry.check_columns(stream.column_names)
    rows = list(stream)
    assert len(rows) == 3
    for i, row in enumerate(rows):
        text = entry.template.render(row)
        assert text
        for column in entry.template_columns:
            assert f"{column} {i}" in text
        if entry.image_column:
            assert image_ext(row[entry.image_column]["bytes"]) == "png"
        if entry.audio_column:
            assert audio_ext(row[entry.audio_column]["bytes"]) == "flac"


def test_known_texts_for_local_rows(reg, tmp_path):
    stream = _local_dataset(reg["flickr30k"], tmp_path, rows=2)
    assert [reg["flickr30k"].template.render(r) for r in stream] == [
        "caption 0 first",
        "caption 1 first",
    ]
