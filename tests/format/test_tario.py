"""tario.py: deterministic tar bytes, sample offsets, streaming reads, WebDataset grouping."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from wdstream.format.tario import (
    MAX_MEMBER_BYTES,
    MemberTooLarge,
    TarStreamWriter,
    group_samples,
    iter_members,
    split_key,
    tar_bytes,
)

SAMPLES = [
    ("k0", {"txt": b"hello", "jpg": b"\xff\xd8\xff" + b"x" * 700}),
    ("k1", {"txt": b"", "json": b"{}"}),
    ("dir/k2", {"seg.png": b"p" * 513}),
]


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
    members = [
        ("a.txt", b"1"),
        ("a.txt", b"dup"),
        ("b.txt", b"2"),
        ("a.json", b"3"),
        ("README", b""),
    ]
    assert list(group_samples(members)) == [
        {"__key__": "a", "txt": b"1"},
        {"__key__": "b", "txt": b"2"},
        {"__key__": "a", "json": b"3"},
    ]


# -- members over the size limit ---------------------------------------------------------------
def _with_big_member(size: int) -> bytes:
    return tar_bytes(
        [
            ("a", {"txt": b"first"}),
            ("b", {"bin": b"\0" * size, "txt": b"big"}),
            ("c", {"txt": b"last"}),
        ]
    )


@pytest.mark.parametrize("gz", [False, True])
def test_a_member_over_the_limit_is_skipped_unread_and_marks_its_sample(gz):
    data = _with_big_member(100_000)
    if gz:
        data = gzip.compress(data)
    samples = list(group_samples(iter_members(io.BytesIO(data), max_member_bytes=4096)))
    assert [s["__key__"] for s in samples] == ["a", "b", "c"]
    assert "bin" not in samples[1] and samples[1]["txt"] == b"big"
    assert samples[1]["__error__"] == "member b.bin is 100000 bytes, over max_member_bytes 4096"
    assert "__error__" not in samples[0] and samples[2]["txt"] == b"last"
    members = list(iter_members(io.BytesIO(data), max_member_bytes=4096))
    assert isinstance(members[1][1], MemberTooLarge) and members[1][1].size == 100_000
    # without a limit, or under it, every member is read as before
    assert next(iter(group_samples(iter_members(io.BytesIO(data)))))["txt"] == b"first"
    assert (
        len(list(group_samples(iter_members(io.BytesIO(data), max_member_bytes=100_000)))[1]["bin"])
        == 100_000
    )


def test_a_truncated_member_over_the_limit_still_raises():
    data = _with_big_member(100_000)[:60_000]
    with pytest.raises((EOFError, tarfile.ReadError)):
        list(iter_members(io.BytesIO(data), max_member_bytes=4096))


def test_the_converter_never_writes_what_readers_skip(monkeypatch):
    """The contract: the default ``max_member_bytes`` is above the largest member the
    converter writes, and the converter refuses (counts) a larger cell."""
    from wdstream.config import Config
    from wdstream.errors import SkipSample
    from wdstream.rows import encode
    from wdstream.rows.columns import ColumnMap

    assert Config().max_member_bytes > MAX_MEMBER_BYTES
    monkeypatch.setattr(encode, "MAX_MEMBER_BYTES", 1000)  # not 512 MiB of test data
    encoder = encode.RowEncoder(ColumnMap(text=("text",)), "src")
    assert encoder({"text": "x" * 1000}, "k0")["txt"] == b"x" * 1000
    with pytest.raises(SkipSample, match="member_too_large"):
        encoder({"text": "x" * 1001}, "k1")
