"""writer.py: shards cut by count and bytes, sha256/bytes/index correct, abort publishes nothing."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from wdstream.format.index import key_hash, parse_index
from wdstream.format.tario import group_samples, iter_members
from wdstream.write.writer import ShardWriter


def _fields(i, size=100):
    return {"txt": f"t{i}".encode(), "bin": bytes([i % 256]) * size}


def test_cut_by_samples_and_infos_match_files(tmp_path):
    w = ShardWriter(str(tmp_path), 7, max_samples=3)
    for i in range(8):
        w.write(f"k{i}", _fields(i))
    shards = w.close()
    assert [s.url for s in shards] == [
        "shard-00007-00000.tar",
        "shard-00007-00001.tar",
        "shard-00007-00002.tar",
    ]
    assert [s.samples for s in shards] == [3, 3, 2]
    for s in shards:
        blob = (tmp_path / s.url).read_bytes()
        assert len(blob) == s.bytes and hashlib.sha256(blob).hexdigest() == s.sha256
        index = parse_index((tmp_path / s.index).read_bytes(), s.samples)  # binary (version 2)
        keys = [x["__key__"] for x in group_samples(iter_members(io.BytesIO(blob)))]
        assert index["key_hashes"].tolist() == [key_hash(k) for k in keys]
        assert len(index["offsets"]) == len(keys) + 1 and index["offsets"][-1] <= len(blob)
        assert s.first_key == keys[0] and s.last_key == keys[-1]


def test_cut_by_bytes_never_exceeds_the_limit(tmp_path):
    w = ShardWriter(str(tmp_path), 0, max_samples=1000, max_bytes=30_000)
    for i in range(40):
        w.write(f"k{i}", _fields(i, 3000))
    shards = w.close()
    assert sum(s.samples for s in shards) == 40 and len(shards) > 1
    assert all(s.bytes <= 30_000 for s in shards)
    w = ShardWriter(str(tmp_path / "big"), 0, max_bytes=10_000)
    w.write("huge", _fields(0, 50_000))  # larger than the limit: a shard of its own
    w.write("small", _fields(1))
    assert [s.samples for s in w.close()] == [1, 1]


def test_abort_leaves_nothing(tmp_path):
    w = ShardWriter(str(tmp_path), 0, max_samples=2)
    for i in range(3):
        w.write(f"k{i}", _fields(i))
    w.abort()
    assert sorted(os.listdir(tmp_path)) == [
        "shard-00000-00000.idx",
        "shard-00000-00000.tar",
    ]  # only the committed one


@pytest.mark.s3
def test_s3_abort_mid_shard_no_object_no_upload(s3):
    """A forced error mid-shard on S3: the multipart upload in flight is aborted."""
    fs = s3["fs"]
    w = ShardWriter(
        "s3://test/w",
        0,
        max_samples=10,
        storage_options=s3["storage_options"],
        upload_concurrency=1,
        upload_buffer_bytes=5 * 2**20,
    )  # 5 MiB parts
    w.write("k0", _fields(0, 6 * 2**20))  # past one part: the multipart upload is open
    w.write("k1", _fields(1, 10))
    assert fs.call_s3("list_multipart_uploads", Bucket="test").get("Uploads")
    try:
        raise RuntimeError("forced")
    except RuntimeError:
        w.abort()
    fs.invalidate_cache()
    assert not fs.exists("test/w/shard-00000-00000.tar")
    assert fs.call_s3("list_multipart_uploads", Bucket="test").get("Uploads", []) == []
