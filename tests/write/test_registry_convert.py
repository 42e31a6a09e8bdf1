"""Converting by registry name and by task type: the entry's columns and text template apply.

The Hub is unreachable here, so the test registry's entries point at local parquet datasets
built in the test (an absolute path is a valid ``hub_id`` for ``load_dataset``)."""

from __future__ import annotations

import json

import pytest

from wdstream.cli import main
from wdstream.format.manifest import load_manifest
from wdstream.format.tario import group_samples, iter_members
from wdstream.storage import read_bytes


@pytest.fixture
def local_registry(tmp_path, monkeypatch):
    import datasets

    roots = {}
    for name, rows in (("instruct_a", 6), ("instruct_b", 4)):
        folder = tmp_path / name / "data"
        folder.mkdir(parents=True)
        ds = datasets.Dataset.from_dict(
            {
                "instruction": [f"{name} task {i}" for i in range(rows)],
                "input": ["" if i % 2 else f"input {i}" for i in range(rows)],
                "output": [f"answer {i}" for i in range(rows)],
            }
        )
        for k in range(2):
            ds.shard(2, k, contiguous=True).to_parquet(str(folder / f"train-{k}.parquet"))
        roots[name] = str(tmp_path / name)
    reg = tmp_path / "datasets.yaml"
    entries = {
        name: {
            "hub_id": path,
            "split": "train",
            "task_types": ["code"],
            "text_template": "{instruction}\n{input}\n{output}",
            "columns": ["instruction", "input", "output"],
            "license": "test",
            "default": True,
            "verified": True,
        }
        for name, path in roots.items()
    }
    reg.write_text(json.dumps({"datasets": entries}))
    monkeypatch.setenv("WDSTREAM_DATASETS", str(reg))
    return roots


def texts(url):
    m = load_manifest(url)
    out = []
    for shard in m.shard_urls():
        import io

        for s in group_samples(iter_members(io.BytesIO(read_bytes(shard)))):
            out.append(s["txt"].decode())
    return m, out


def test_convert_by_registry_name_applies_the_template(local_registry, tmp_path):
    out = tmp_path / "out"
    assert main(["convert", "instruct_a", str(out), "--quiet", "--workers", "1"]) == 0
    m, got = texts(str(out))
    assert m.samples == 6
    assert "instruct_a task 0\ninput 0\nanswer 0" in got
    assert "instruct_a task 1\nanswer 1" in got  # an empty input line is dropped


def test_convert_all_of_a_task_type_with_a_limit(local_registry, tmp_path):
    out = tmp_path / "all"
    assert (
        main(
            [
                "convert",
                "--task-type",
                "code",
                "--all",
                str(out),
                "--limit",
                "3",
                "--quiet",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    for name in ("instruct_a", "instruct_b"):
        m = load_manifest(str(out / name))
        assert m.samples == 3  # --limit caps each dataset


def test_unknown_task_type_lists_the_valid_ones(local_registry, tmp_path, caplog):
    assert main(["convert", "--task-type", "poetry", "--all", str(tmp_path / "x")]) == 2
    assert "code" in caplog.text and "poetry" in caplog.text
