"""tario.py: deterministic tar bytes, sample offsets, streaming reads, WebDataset grouping."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from wdstream.format.tario import TarStreamWriter, group_samples, iter_members, split_key, tar_bytes

SAMPLES = [("k0", {"txt": b"hello", "jpg": b"\xff\xd8\xff" + b"x" * 700}),
           ("k1", {"txt": b"", "json": b"{}"}),
           ("dir/k2", {"seg.png": b"p" * 513})]


def test_same_samples_same_bytes_and_valid_tar():
    a, b = tar_bytes(SAMPLES), tar_bytes(SAMPLES)
    assert a == b and len(a) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(a)) as t:
        names = t.getnames()
        assert t.getmember("k0.jpg").mtime == 1_700_000_000
        assert t.getmember("k0.jpg").uid == 0
    assert names == ["k0.jpg", "k0.txt", "k1.json", "k1.txt", "dir/k2.seg.png"]


def test_offsets_point_at_each_sample():
    buf = io.BytesIO()
    w = TarStreamWriter(buf)
    offsets = [w.write_sample(k, f) for k, f in SAMPLES]
    end = w.offset
    w.close()
    data = buf.getvalue()
    for (key, fields), off in zip(SAMPLES, offsets, strict=True):
        got = next(group_samples(iter_members(io.BytesIO(data[off:end] + b"\0" * 1024))))
        assert got["__key__"] == key and all(got[e] == v for e, v in fields.items())


def test_round_trip_plain_and_gzip():
    data = tar_bytes(SAMPLES)
    for blob in (data, gzip.compress(data)):
        samples = list(group_samples(iter_members(io.BytesIO(blob))))
        assert [s["__key__"] for s in samples] == ["k0", "k1", "dir/k2"]
        assert samples[2]["seg.png"] == b"p" * 513 and samples[1]["txt"] == b""


def test_truncated_shard_raises():
    data = tar_bytes(SAMPLES)
    with pytest.raises((tarfile.ReadError, EOFError)):
        list(iter_members(io.BytesIO(data[:1200])))


def test_split_key_and_grouping_rules():
    assert split_key("a/b.c.d") == ("a/b", "c.d")
    assert split_key("noext") is None
    members = [("a.txt", b"1"), ("a.txt", b"dup"), ("b.txt", b"2"), ("a.json", b"3"),
               ("README", b"")]
    assert list(group_samples(members)) == [{"__key__": "a", "txt": b"1"},
                                            {"__key__": "b", "txt": b"2"},
                                            {"__key__": "a", "json": b"3"}]
