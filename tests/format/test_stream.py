"""format/stream.py: the one loop that streams a shard's samples (counts, keys, offsets,
member size bound, gzip), its one error for a shard that cannot be read, and the hashing
reader behind ``verify`` and ``index``."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile

import pytest

from wdstream.errors import ShardReadError
from wdstream.format.scan import scan_shard
from wdstream.format.stream import HashingReader, iter_samples
from wdstream.format.tario import TarStreamWriter


def _shard(n: int = 5) -> tuple[bytes, list[int], int]:
    """``n`` samples of two members each: ``(bytes, offset of each sample, end of samples)``."""
    buf = io.BytesIO()
    w = TarStreamWriter(buf)
    offsets = [
        w.write_sample(
            f"k{i:03d}", {"txt": f"text {i}".encode(), "bin": bytes([i]) * (100 * i + 1)}
        )
        for i in range(n)
    ]
    end = w.offset
    w.close()
    return buf.getvalue(), offsets, end


def test_samples_keys_members_and_counts():
    data, _, _ = _shard(5)
    samples = list(iter_samples(io.BytesIO(data), name="s.tar"))
    assert [s["__key__"] for s in samples] == [f"k{i:03d}" for i in range(5)]
    assert [s["txt"] for s in samples] == [f"text {i}".encode() for i in range(5)]
    assert [len(s["bin"]) for s in samples] == [100 * i + 1 for i in range(5)]
    assert all("__offset__" not in s and "__error__" not in s for s in samples)


def test_offsets_are_where_each_sample_starts_and_ends():
    data, offsets, end = _shard(6)
    samples = list(iter_samples(io.BytesIO(data), offsets=True))
    assert [s["__offset__"] for s in samples] == offsets
    assert [s["__end__"] for s in samples] == offsets[1:] + [end]
    # a read that starts at a sample's offset sees that sample first (what the index is for)
    third = next(iter(iter_samples(io.BytesIO(data[offsets[3] :]))))
    assert third["__key__"] == "k003"


def test_gzip_shards_stream_the_same_samples_with_uncompressed_offsets():
    data, offsets, _ = _shard(4)
    plain = list(iter_samples(io.BytesIO(data), offsets=True))
    gz = list(iter_samples(io.BytesIO(gzip.compress(data)), offsets=True))
    assert gz == plain
    assert [s["__offset__"] for s in gz] == offsets


def test_members_over_the_bound_are_counted_not_held():
    data, _, _ = _shard(4)
    samples = list(iter_samples(io.BytesIO(data), max_member_bytes=150))
    assert [("bin" in s, "__error__" in s) for s in samples] == [
        (True, False),
        (True, False),
        (False, True),
        (False, True),
    ]
    assert "member k002.bin is 201 bytes, over max_member_bytes 150" == samples[2]["__error__"]
    nothing = list(iter_samples(io.BytesIO(data), max_member_bytes=0))
    assert [s["__key__"] for s in nothing] == [f"k{i:03d}" for i in range(4)]
    assert all(set(s) == {"__key__", "__error__"} for s in nothing)


@pytest.mark.parametrize(
    "sample, into, whole",
    [
        (0, 700, 0),  # inside the first sample's second header: nothing is whole
        (2, 100, 1),  # inside sample 2's first header: sample 1 cannot be known to have ended
        (4, 1024 + 700, 4),  # after sample 4's last member, before the end-of-archive marker
    ],
)
def test_a_truncated_shard_raises_one_error_naming_the_shard_after_its_whole_samples(
    sample, into, whole
):
    data, offsets, _ = _shard(5)
    cut = offsets[sample] + into
    url = "s3://user:secret@bucket/data/shard-7.tar?X-Amz-Signature=abc"
    got = []
    with pytest.raises(ShardReadError) as info:
        for s in iter_samples(io.BytesIO(data[:cut]), name=url, offsets=True):
            got.append(s)
    message = str(info.value)
    assert "shard s3://***@bucket/data/shard-7.tar cannot be read: " in message
    assert "secret" not in message and "Signature" not in message
    assert info.value.shard == "s3://***@bucket/data/shard-7.tar"
    assert isinstance(info.value.__cause__, (EOFError, tarfile.TarError))
    # exactly the whole samples came before the error
    assert [s["__key__"] for s in got] == [f"k{i:03d}" for i in range(whole)]
    assert [s["__end__"] for s in got] == offsets[1 : whole + 1]


def test_not_a_tar_raises_shard_read_error():
    with pytest.raises(ShardReadError, match="junk.tar cannot be read"):
        list(iter_samples(io.BytesIO(b"this is not a tar archive at all" * 40), name="junk.tar"))


def test_repeated_keys_come_back_as_they_are_and_callers_check():
    buf = io.BytesIO()
    w = TarStreamWriter(buf)
    for key in ("a", "b", "a"):
        w.write_sample(key, {"txt": key.encode()})
    w.close()
    assert [s["__key__"] for s in iter_samples(io.BytesIO(buf.getvalue()))] == ["a", "b", "a"]


def test_hashing_reader_counts_and_hashes_the_whole_file():
    data, _, _ = _shard(3)
    data += bytes(4 * 10240)  # more zero padding than tarfile reads ahead
    reader = HashingReader(io.BytesIO(data))
    assert len(list(iter_samples(reader, max_member_bytes=0))) == 3
    reader.drain(chunk=1000)  # the padding after the end-of-archive blocks, if any is left
    assert reader.bytes == len(data)
    assert reader.hexdigest() == hashlib.sha256(data).hexdigest()


def test_scan_shard_gives_the_index_of_a_whole_and_of_a_truncated_shard(tmp_path):
    data, offsets, end = _shard(5)
    (tmp_path / "whole.tar").write_bytes(data)
    scan = scan_shard(str(tmp_path / "whole.tar"))
    assert scan.keys == [f"k{i:03d}" for i in range(5)]
    assert scan.offsets == offsets + [end]
    assert (scan.bytes, scan.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert (scan.problems, scan.skipped, scan.whole) == ([], {}, False)
    cut = offsets[3] + 1024 + 100  # inside sample 3's second header
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    scan = scan_shard(str(tmp_path / "cut.tar"))
    assert scan.keys == ["k000", "k001", "k002"]
    assert scan.offsets == offsets[:3] + [offsets[3]]
    assert scan.skipped == {"truncated or corrupt shard": 1}
    assert "indexed its first 3 whole samples" in scan.problems[0]
    assert scan.bytes == cut  # the whole file was read and hashed


# -- ShardStream: the listed size bounds what is read; failed reads are retried in place ------
def test_shard_stream_never_reads_past_the_listed_size():
    from wdstream.format.stream import ShardStream

    with ShardStream("/dev/zero", size=100_000) as f:
        got = [f.read(30_000) for _ in range(5)]
    assert [len(g) for g in got] == [30_000, 30_000, 30_000, 10_000, 0]


def test_shard_stream_opens_again_at_the_byte_reached_after_a_failed_read(
    tmp_path, monkeypatch, caplog
):
    from wdstream import storage
    from wdstream.errors import StorageError
    from wdstream.format import stream as stream_module

    data, _, _ = _shard(8)
    (tmp_path / "s.tar").write_bytes(data)
    opened, failures = [], {"left": 2}
    real = storage.open_read

    class Flaky:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            if failures["left"] and self.f.tell() >= 3000:
                failures["left"] -= 1
                raise ConnectionResetError("reset by peer")
            return self.f.read(min(n, 1000))

        def close(self):
            self.f.close()

    def open_read(url, options=None, *, offset=0, **kw):
        opened.append(offset)
        return Flaky(real(url, options, offset=offset, **kw))

    monkeypatch.setattr(stream_module.storage, "open_read", open_read)
    scan = scan_shard(str(tmp_path / "s.tar"))
    assert len(scan.keys) == 8 and scan.problems == []
    assert scan.sha256 == hashlib.sha256(data).hexdigest()
    assert opened[0] == 0 and opened[1] == opened[2] >= 3000 and len(opened) == 3
    assert f"failed at byte {opened[1]}" in caplog.text and "opening it again there" in caplog.text
    failures["left"] = 100  # a read that keeps failing: StorageError, not a truncated shard
    with pytest.raises(StorageError, match=r"s\.tar at byte \d+ of \d+: 5 attempts failed"):
        scan_shard(str(tmp_path / "s.tar"))
