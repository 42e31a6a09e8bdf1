"""Lossless conversion of parquet written without Hugging Face metadata (plain pyarrow, pandas):
image and audio columns found by layout and content, other binary columns kept as members of
their own, nested binary refused with the flag to choose; the mapping is shown before the job
and by ``inspect``. End to end: the bytes in the shards are the bytes of the source."""

from __future__ import annotations

import io
import json
import random

import pytest

from wdstream import storage
from wdstream.errors import ColumnError
from wdstream.format.manifest import load_manifest
from wdstream.format.schema import make_key
from wdstream.format.tario import group_samples, iter_members
from wdstream.write.convert import convert

N = 12


def _png(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8 + i, 6), (i * 20 % 256, 40, 90)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (10, 8 + i), (10, i * 15 % 256, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def _flac(i: int) -> bytes:
    from wdstream.demo.data import encode_audio

    return encode_audio(random.Random(i), 0.05, fmt="FLAC")


def _rows():
    return [
        {
            "image": {"bytes": _png(i), "path": f"img{i}.png"},
            "audio": {"bytes": _flac(i), "path": None},
            "thumb": _jpeg(i),  # a second image, as a plain binary column
            "blob": bytes([i, 0, 255, i]) * 3,  # binary that is neither image nor audio
            "caption": f"caption {i}",
            "n": i,
        }
        for i in range(N)
    ]


def _write_pyarrow(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows()
    table = pa.Table.from_pylist(rows)
    assert table.schema.metadata is None or b"huggingface" not in table.schema.metadata
    pq.write_table(table, path)
    return rows


def _write_pandas(path):
    import pandas as pd

    rows = _rows()
    pd.DataFrame(rows).to_parquet(path)
    return rows


def _samples(url):
    out = {}
    for shard in load_manifest(url).shard_urls():
        with storage.open_read(shard) as f:
            out.update({s["__key__"]: s for s in group_samples(iter_members(f))})
    return out


@pytest.mark.parametrize("writer", [_write_pyarrow, _write_pandas], ids=["pyarrow", "pandas"])
def test_parquet_without_hf_metadata_keeps_every_byte(writer, tmp_path, capsys):
    from wdstream.cli import main

    src = tmp_path / "src"
    src.mkdir()
    rows = writer(str(src / "data.parquet"))
    out = str(tmp_path / "out")
    assert (
        main(
            [
                "convert",
                "parquet",
                out,
                "--data-files",
                str(src / "data.parquet"),
                "--quiet",
                "--max-samples-per-shard",
                "5",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    # the mapping is on the console before the job's summary
    mapping = printed.splitlines()[0]
    assert "image=image" in mapping and "audio=audio" in mapping and "text=caption" in mapping
    assert "own members=blob" in mapping and "left out=thumb" in mapping

    m = load_manifest(out)
    assert m.samples == N and not m.skipped
    assert m.options["columns"]["binary"] == ["blob"]
    samples = _samples(out)
    assert len(samples) == N
    for i, row in enumerate(rows):
        s = samples[make_key(0, i)]
        assert s["png"] == row["image"]["bytes"]  # byte for byte
        assert s["flac"] == row["audio"]["bytes"]
        assert s["blob.bin"] == row["blob"]
        assert s["txt"] == row["caption"].encode()
        assert json.loads(s["json"])["n"] == i
    total = sum(len(r["image"]["bytes"]) + len(r["audio"]["bytes"]) for r in rows)
    assert m.bytes > total  # the media bytes are in the shards, not lost

    assert main(["inspect", out, "--samples", "1"]) == 0
    shown = capsys.readouterr().out
    assert "columns: image=image  audio=audio  text=caption" in shown
    assert ".blob.bin: 12 B" in shown


def test_binary_image_column_without_struct_and_chosen_second_image(tmp_path):
    """A plain binary column holding JPEGs is the image when it is the only one; naming
    another column keeps the named one, and the other is reported as left out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"pic": _jpeg(i), "label": i} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    m = convert(
        "parquet",
        str(tmp_path / "o"),
        data_files=[str(tmp_path / "a.parquet")],
        quiet=True,
        workers=1,
    )
    assert m.options["columns"]["image"] == "pic" and m.samples == 4
    assert [s["jpg"] for s in _samples(str(tmp_path / "o")).values()] == [r["pic"] for r in rows]


def test_nested_binary_stops_the_job_naming_the_column_and_the_flag(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"caption": "a", "meta": {"raw": b"\x00\x01", "w": 3}}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    files = [str(tmp_path / "a.parquet")]
    with pytest.raises(ColumnError, match=r"'meta'.*--drop-column meta") as e:
        convert("parquet", str(tmp_path / "o"), data_files=files, quiet=True, workers=1)
    assert not (tmp_path / "o" / "manifest.json").exists()
    assert e.value.key == "meta"
    m = convert(
        "parquet",
        str(tmp_path / "o2"),
        data_files=files,
        quiet=True,
        workers=1,
        drop_columns=("meta",),
    )
    assert m.samples == 1 and m.options["columns"]["dropped"] == ["meta"]
