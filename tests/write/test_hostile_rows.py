"""A source built to lose or leak data through the converter (issue 22): a media cell naming a
local file outside the source (item 3), two binary columns that become one member (item 2), a
column named ``source`` (item 4). Each is a plain-pyarrow parquet dataset, as found on the Hub,
converted end to end; the shards are checked byte for byte."""

from __future__ import annotations

import io
import json
import logging
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wdstream import storage
from wdstream.cli import main
from wdstream.errors import ColumnError
from wdstream.format.manifest import load_manifest
from wdstream.format.tario import group_samples, iter_members
from wdstream.write.convert import convert

SECRET = b"aws_secret_access_key = NOT-A-REAL-KEY-but-it-must-never-reach-a-shard"
MEDIA = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 20, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def _write(folder, columns: dict, types: dict | None = None) -> str:
    """``columns`` as ``folder/data/train.parquet``, written by plain pyarrow (no HF
    metadata); returns ``folder``."""
    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    types = types or {}
    table = pa.table({c: pa.array(v, type=types.get(c)) for c, v in columns.items()})
    pq.write_table(table, os.path.join(folder, "data", "train.parquet"))
    return str(folder)


def _samples(url: str) -> list[dict]:
    m = load_manifest(url)
    out = []
    for shard in m.shard_urls():
        with storage.open_read(shard) as f:
            out.extend(group_samples(iter_members(f)))
    return out


def _all_shard_bytes(url: str) -> bytes:
    return b"".join(storage.read_bytes(u) for u in load_manifest(url).shard_urls())


# ----------------------------------------------------------- item 3: paths outside the source


@pytest.fixture
def leaky_source(tmp_path):
    """A source whose media cells name files by path: inside its folder (read), and outside
    it (an absolute path, a ``..`` path, a symlink inside pointing out, ``~``, a URL)."""
    outside = tmp_path / "home"
    outside.mkdir()
    (outside / "credentials").write_bytes(SECRET)
    (outside / "photo.jpg").write_bytes(_jpeg())
    src = tmp_path / "src"
    (src / "media").mkdir(parents=True)
    (src / "media" / "inside.bin").write_bytes(b"inside bytes")
    (src / "media" / "inside.jpg").write_bytes(_jpeg())
    os.symlink(outside / "credentials", src / "media" / "link.bin")
    blobs = [
        {"bytes": b"plain bytes", "path": None},  # row 0: bytes (the column is binary)
        {"bytes": None, "path": str(src / "media" / "inside.bin")},  # 1: inside, read
        {"bytes": None, "path": str(outside / "credentials")},  # 2: outside
        {"bytes": None, "path": str(src / "media" / ".." / ".." / "home" / "credentials")},
        {"bytes": None, "path": str(src / "media" / "link.bin")},  # 4: symlink out
        {"bytes": None, "path": "~/.aws/credentials"},  # 5
        {"bytes": None, "path": "http://127.0.0.1:9/latest/meta-data"},  # 6: a URL
        {"bytes": None, "path": None},  # 7: nothing: no member, not skipped
    ]
    images = [{"bytes": _jpeg(), "path": None} for _ in range(8)]
    images[1] = {"bytes": None, "path": str(src / "media" / "inside.jpg")}
    images[7] = {"bytes": None, "path": str(outside / "photo.jpg")}  # 7: an image outside
    _write(
        src,
        {"text": [f"row {i}" for i in range(8)], "blob": blobs, "image": images},
        {"blob": MEDIA, "image": MEDIA},
    )
    return str(src), str(outside)


def test_a_media_path_outside_the_source_is_never_read(leaky_source, tmp_path, caplog):
    src, outside = leaky_source
    out = str(tmp_path / "out")
    with caplog.at_level(logging.WARNING):
        m = convert(src, out, workers=1, quiet=True)
    assert m.skipped == {"path_outside_source": 6}  # rows 2..7
    assert SECRET not in _all_shard_bytes(out)
    samples = {s["txt"].decode(): s for s in _samples(out)}
    assert sorted(samples) == ["row 0", "row 1"]
    assert samples["row 0"]["blob.bin"] == b"plain bytes"
    assert samples["row 1"]["blob.bin"] == b"inside bytes"  # inside the source: read
    assert samples["row 1"]["jpg"] == (tmp_path / "src" / "media" / "inside.jpg").read_bytes()
    first = [r.getMessage() for r in caplog.records if "outside the source" in r.getMessage()]
    assert len(first) == 1  # the first such path, with its column, once
    assert "'blob'" in first[0] and "credentials" in first[0] and "--allow-path" in first[0]


def test_allow_path_lets_a_trusted_folder_be_read(leaky_source, tmp_path):
    src, outside = leaky_source
    out = str(tmp_path / "out")
    args = ["convert", src, out, "--quiet", "--workers", "1", "--allow-path", outside]
    assert main(args) == 0
    m = load_manifest(out)
    # the allowed folder is read (rows 2, 3, 4 and the image of 7); ~ and the URL are not
    assert m.skipped == {"path_outside_source": 2}
    assert SECRET in _all_shard_bytes(out)
    assert m.options["allow_paths"] == [outside]  # part of the job: a resume must agree
    assert main(["convert", src, out, "--quiet", "--workers", "1"]) == 2


def test_data_files_roots_confine_a_builder_source(leaky_source, tmp_path):
    """``parquet --data-files DIR/*.parquet``: the data files' folder is the root, so even
    the source folder's media/ (beside it) is outside unless allowed."""
    src, outside = leaky_source
    out = str(tmp_path / "out")
    pattern = os.path.join(src, "data", "*.parquet")
    m = convert("parquet", out, data_files=[pattern], workers=1, quiet=True)
    assert m.skipped == {"path_outside_source": 7}
    m = convert(
        "parquet",
        str(tmp_path / "out2"),
        data_files=[pattern],
        workers=1,
        quiet=True,
        allow_paths=[src],
    )
    assert m.skipped == {"path_outside_source": 6}


# --------------------------------------------- item 2: two columns, one member name


def test_two_binary_columns_with_one_member_name_stop_before_any_work(tmp_path, caplog):
    src = _write(
        tmp_path / "src",
        {"text": ["x", "y"], "a.b": [b"first", b"1"], "a b": [b"second", b"2"]},
    )
    out = str(tmp_path / "out")
    with pytest.raises(ColumnError) as err:
        convert(src, out, workers=1, quiet=True)
    assert "'a.b'" in str(err.value) and "'a b'" in str(err.value)
    assert "a_b.bin" in str(err.value) and "--drop-column" in str(err.value)
    assert not [n for n in storage.find_urls(out) if n.endswith(".tar")]  # nothing written
    caplog.clear()
    assert main(["convert", src, str(tmp_path / "cli"), "--quiet"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "--drop-column" in errors[0]
    # leaving one out: the other's bytes, whole
    convert(src, out, workers=1, quiet=True, drop_columns=["a b"])
    assert [s["a_b.bin"] for s in _samples(out)] == [b"first", b"1"]


# ---------------------------------------------------- item 4: a column named "source"


def test_a_column_named_source_keeps_the_dataset_name(tmp_path):
    src = _write(tmp_path / "src", {"text": ["x"], "source": ["laion"], "n": [1]})
    out = str(tmp_path / "out")
    convert(src, out, workers=1, quiet=True)
    (sample,) = _samples(out)
    assert json.loads(sample["json"]) == {"source": src, "source_column": "laion", "n": 1}
    both = _write(tmp_path / "both", {"text": ["x"], "source": ["a"], "source_column": ["b"]})
    with pytest.raises(ColumnError, match="'source' and 'source_column'"):
        convert(both, str(tmp_path / "out2"), workers=1, quiet=True)
