"""rows/columns.py: which column becomes which member, found from the features and, for parquet
written without Hugging Face metadata, from the columns' layout and content; and the rows read
from a source as dicts of the mapped columns."""

from __future__ import annotations

import io
import random

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wdstream.demo.data import encode_audio
from wdstream.errors import ColumnError
from wdstream.format.schema import AUDIO_EXTS, IMAGE_EXTS
from wdstream.rows.columns import (
    TEXT_COLUMN_NAMES,
    ColumnMap,
    binary_member,
    check_member_names,
    iter_rows,
    json_key,
    prepare,
    resolve_columns,
    sample_binary_values,
)

N = 5


def _png(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4 + i, 3), (i * 40, 10, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _flac(i: int) -> bytes:
    return encode_audio(random.Random(i), 0.02, fmt="FLAC")


def _columns() -> dict[str, list]:
    return {
        "image": [{"bytes": _png(i), "path": f"img{i}.png"} for i in range(N)],
        "audio": [{"bytes": _flac(i), "path": None} for i in range(N)],
        "caption": [f"caption {i}" for i in range(N)],
        "title": [f"title {i}" for i in range(N)],
        "blob": [bytes([i, 0, 255]) for i in range(N)],
        "n": list(range(N)),
    }


def _by_datasets(path) -> str:
    """Parquet written by ``datasets``: Image/Audio features in its schema metadata."""
    ds = datasets.Dataset.from_dict(_columns())
    ds = ds.cast_column("image", datasets.Image()).cast_column("audio", datasets.Audio())
    ds.to_parquet(str(path))
    return str(path)


def _by_pyarrow(path) -> str:
    """The same rows written by plain pyarrow: ``{bytes, path}`` structs, no HF metadata."""
    table = pa.table(_columns())
    assert table.schema.metadata is None or b"huggingface" not in table.schema.metadata
    pq.write_table(table, path)
    return str(path)


@pytest.fixture
def no_decoding(monkeypatch):
    """Decoding an image or a clip fails the test."""

    def decode_example(self, value, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__} decoded {str(value)[:60]}")

    monkeypatch.setattr(datasets.Image, "decode_example", decode_example)
    monkeypatch.setattr(datasets.Audio, "decode_example", decode_example)


def _stream(path: str):
    return datasets.load_dataset("parquet", data_files=[path], split="train", streaming=True)


EXPECTED = ColumnMap(
    image="image", audio="audio", text=("caption",), extra=("title", "n"), binary=("blob",)
)


# ------------------------------------------------------------------ inference


@pytest.mark.parametrize("writer", [_by_datasets, _by_pyarrow], ids=["datasets", "pyarrow"])
def test_parquet_by_datasets_or_by_pyarrow_maps_to_the_same_members(tmp_path, writer):
    ds = _stream(writer(tmp_path / "a.parquet"))
    samples = sample_binary_values(ds)
    if writer is _by_datasets:  # the features say which are media; only the blob is looked at
        assert isinstance(ds.features["image"], datasets.Image) and set(samples) == {"blob"}
    else:  # no features: the image and the audio are found by their bytes
        assert set(samples) == {"image", "audio", "blob"}
        assert samples["image"] == (_png(0), "img0.png")
    assert resolve_columns(list(ds.features), ds.features, samples=samples) == EXPECTED


def test_without_samples_pyarrow_media_stay_members_of_their_own(tmp_path):
    """Not looked at, a ``{bytes, path}`` column is still binary: a ``.bin`` member, never
    ``null`` in the ``.json``."""
    ds = _stream(_by_pyarrow(tmp_path / "a.parquet"))
    cols = resolve_columns(list(ds.features), ds.features)
    assert cols.image is None and cols.audio is None
    assert cols.binary == ("image", "audio", "blob") and cols.extra == ("title", "n")


def test_the_first_non_null_value_is_sampled_and_excluded_columns_are_not(tmp_path):
    cols = _columns()
    cols["image"][0] = None
    cols["blob"][:2] = [None, None]
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table(cols), path)
    samples = sample_binary_values(_stream(str(path)), exclude=["audio"])
    assert set(samples) == {"image", "blob"}
    assert samples["image"] == (_png(1), "img1.png") and samples["blob"] == (
        bytes([2, 0, 255]),
        None,
    )


def test_a_path_without_bytes_is_media_by_its_suffix():
    cols = resolve_columns(
        ["a", "b", "c"],
        None,
        samples={"a": (None, "x/y.JPG"), "b": (None, "c.wav"), "c": (b"\x00", None)},
    )
    assert (cols.image, cols.audio, cols.binary) == ("a", "b", ("c",))


def test_resolve_columns_from_features():
    feats = datasets.Features(
        {
            "caption": datasets.Value("string"),
            "url": datasets.Value("string"),
            "img": datasets.Image(),
            "img2": datasets.Image(),
            "sound": datasets.Audio(),
            "n": datasets.Value("int32"),
        }
    )
    cols = resolve_columns(list(feats), feats)
    assert cols == ColumnMap(
        image="img", audio="sound", text=("caption",), extra=("url", "n"), dropped=("img2",)
    )
    named = resolve_columns(list(feats), feats, image="img2", text=["url", "caption"])
    assert named.image == "img2" and named.text == ("url", "caption")
    assert named.dropped == ("img",)
    with pytest.raises(ColumnError, match="'nope' does not exist"):
        resolve_columns(list(feats), feats, audio="nope")


def test_resolve_columns_prefers_hf_features_then_content():
    feats = datasets.Features(
        {"raw": datasets.Value("binary"), "img": datasets.Image(), "t": datasets.Value("string")}
    )
    cols = resolve_columns(list(feats), feats, samples={"raw": (_png(0), None)})
    assert cols.image == "img" and cols.dropped == ("raw",) and cols.text == ("t",)
    # no features (a generator of Python objects): the first row's bytes decide
    cols = resolve_columns(
        ["a", "b", "text"], None, samples={"a": (b"\x00\x01", None), "b": (_flac(0), "x.flac")}
    )
    assert cols.audio == "b" and cols.binary == ("a",) and cols.extra == ()


def test_the_text_is_the_first_known_name_then_the_first_string_column():
    string = datasets.Value("string")
    feats = datasets.Features({"notes": string, "title": string, "caption": string})
    assert TEXT_COLUMN_NAMES.index("caption") < TEXT_COLUMN_NAMES.index("title")
    assert resolve_columns(list(feats), feats).text == ("caption",)
    dropped = resolve_columns(list(feats), feats, drop=["caption"])
    assert dropped.text == ("title",) and dropped.dropped == ("caption",)
    feats = datasets.Features({"notes": string, "other": string})
    assert resolve_columns(list(feats), feats).text == ("notes",)


def test_binary_nested_in_another_type_names_the_column_and_the_flag():
    feats = datasets.Features(
        {"text": datasets.Value("string"), "pages": datasets.Sequence(datasets.Value("binary"))}
    )
    with pytest.raises(ColumnError, match=r"'pages'.*--drop-column pages") as e:
        resolve_columns(list(feats), feats)
    assert e.value.key == "pages"
    assert resolve_columns(list(feats), feats, drop=["pages"]).dropped == ("pages",)


@pytest.mark.parametrize(
    "column, member",
    [
        ("blob", "blob.bin"),
        ("raw bytes", "raw_bytes.bin"),
        ("a.b/c", "a_b_c.bin"),
        ("__x__", "x.bin"),
        ("...", "column.bin"),
    ],
)
def test_a_binary_column_gets_a_member_name_without_dots(column, member):
    assert binary_member(column) == member


# ------------------------------------------------------------------ rows


@pytest.mark.parametrize("writer", [_by_datasets, _by_pyarrow], ids=["datasets", "pyarrow"])
def test_rows_hold_the_mapped_columns_with_the_sources_bytes(tmp_path, writer, no_decoding):
    ds = prepare(_stream(writer(tmp_path / "a.parquet")), EXPECTED)
    rows = list(iter_rows(ds, EXPECTED, batch_size=2))  # batches of 2, 2, 1
    assert len(rows) == N
    for i, row in enumerate(rows):
        assert row == {
            "image": {"bytes": _png(i), "path": f"img{i}.png"},
            "audio": {"bytes": _flac(i), "path": None},
            "caption": f"caption {i}",
            "title": f"title {i}",
            "n": i,
            "blob": bytes([i, 0, 255]),
        }


def test_prepare_decodes_nothing_and_removes_dropped_columns(tmp_path, no_decoding):
    """Two images and two clips: the chosen ones pass encoded, the others are removed, and
    neither is decoded on the way (a dropped clip needs no audio decoder)."""
    path = tmp_path / "a.parquet"
    ds = datasets.Dataset.from_dict(
        {**_columns(), "image2": _columns()["image"], "audio2": _columns()["audio"]}
    )
    for col, feature in (
        ("image", datasets.Image()),
        ("image2", datasets.Image()),
        ("audio", datasets.Audio()),
        ("audio2", datasets.Audio()),
    ):
        ds = ds.cast_column(col, feature)
    ds.to_parquet(str(path))
    ds = _stream(str(path))
    cols = resolve_columns(list(ds.features), ds.features)
    assert cols.image == "image" and cols.audio == "audio"
    assert cols.dropped == ("image2", "audio2")
    out = prepare(ds, cols)
    assert out.features["image"] == datasets.Image(decode=False)
    assert out.features["audio"] == datasets.Audio(decode=False)
    assert "image2" not in out.features and "audio2" not in out.features
    rows = list(iter_rows(out, cols))
    assert [r["image"]["bytes"] for r in rows] == [_png(i) for i in range(N)]
    assert [r["audio"]["bytes"] for r in rows] == [_flac(i) for i in range(N)]


def test_rows_of_a_source_without_features_pass_as_they_are():
    def gen():
        yield {"text": "a", "n": 1, "other": "x"}
        yield {"text": "b"}

    ds = datasets.IterableDataset.from_generator(gen)
    assert ds.features is None
    rows = list(iter_rows(ds, ColumnMap(text=("text",), extra=("n",))))
    assert rows == [{"text": "a", "n": 1}, {"text": "b", "n": None}]


def test_two_columns_that_would_give_one_member_are_refused_naming_both():
    """Issue 22, item 2: ``a.b`` and ``a b`` are both ``a_b.bin``; ``a_b`` too. Other member
    names cannot meet: txt and json are fixed, image and audio extensions come from disjoint
    lists and binary members end in .bin."""
    features = datasets.Features(
        {c: datasets.Value("binary") for c in ("a.b", "a b", "a_b", "txt", "jpg", "json")}
    )
    with pytest.raises(ColumnError) as err:
        resolve_columns(list(features), features)
    assert "'a.b' and 'a b'" in str(err.value) and "--drop-column" in str(err.value)
    with pytest.raises(ColumnError, match="'a.b' and 'a_b'"):
        resolve_columns(list(features), features, drop=["a b"])
    found = resolve_columns(list(features), features, drop=["a b", "a_b"])
    members = {binary_member(c) for c in found.binary}
    assert members == {"a_b.bin", "txt.bin", "jpg.bin", "json.bin"}
    assert not members & {"txt", "json", *IMAGE_EXTS, *AUDIO_EXTS}
    assert not set(IMAGE_EXTS) & set(AUDIO_EXTS)
    # names that empty out: both "column.bin"
    with pytest.raises(ColumnError, match="column.bin"):
        check_member_names(ColumnMap(binary=("..", "__")))


def test_a_column_named_source_goes_under_source_column_in_the_json():
    assert json_key("source") == "source_column" and json_key("label") == "label"
    features = datasets.Features(
        {"text": datasets.Value("string"), "source": datasets.Value("string")}
    )
    assert resolve_columns(list(features), features).extra == ("source",)
    both = datasets.Features({**features, "source_column": datasets.Value("string")})
    with pytest.raises(ColumnError, match="--drop-column source_column"):
        resolve_columns(list(both), both)
