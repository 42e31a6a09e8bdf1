"""Concurrent uploads to S3 (issue 13), counted at the S3 test proxy: several parts of a shard
upload at once, at most ``upload_concurrency`` of them and at most ``upload_buffer_bytes`` of
bytes; finished shards commit while the next is written; nothing is left pending."""

from __future__ import annotations

import hashlib
import os

import pytest

from wdstream import uploads
from wdstream.errors import StorageError
from wdstream.write.writer import ShardWriter

pytestmark = pytest.mark.s3

MiB = 2**20


def _slow_parts(proxy, s3proxy, delay=0.2):
    slow = s3proxy.Fault("slow", delay=delay)  # part uploads wait, so they overlap
    proxy.faults = lambda req: slow if "partNumber" in req.params else None


def _pending(fs):
    return fs.call_s3("list_multipart_uploads", Bucket="test").get("Uploads", [])


@pytest.mark.parametrize(
    "concurrency, buffer, bound",
    [
        (3, 15 * MiB, 3),  # the part count binds: 3 parts of 5 MiB
        (4, 10 * MiB, 2),  # the bytes bind: 10 MiB hold 2 parts of 5 MiB
    ],
)
def test_parts_in_flight_reach_and_keep_the_bound(
    s3, s3_proxy, s3proxy, concurrency, buffer, bound
):
    proxy, opts = s3_proxy
    _slow_parts(proxy, s3proxy)
    data = os.urandom(41 * MiB)
    url = f"s3://test/c{concurrency}.bin"
    f = uploads.AtomicFile(url, opts, upload_concurrency=concurrency, upload_buffer_bytes=buffer)
    for i in range(0, len(data), MiB):  # written in 1 MiB pieces, as a tar stream is
        f.write(data[i : i + MiB])
    assert not s3["fs"].exists(url)  # nothing visible before the commit
    f.commit()
    assert proxy.parts == 9  # 8 parts of 5 MiB and the last of 1 MiB
    assert proxy.max_parts_in_flight == bound
    assert proxy.parts_in_flight == 0
    assert s3["fs"].cat_file(url) == data
    assert f.hexdigest() == hashlib.sha256(data).hexdigest()
    assert _pending(s3["fs"]) == []


def test_a_failed_part_aborts_the_upload(s3, s3_proxy, s3proxy):
    proxy, opts = s3_proxy
    bad = s3proxy.Fault("400")  # not retried: the upload fails
    proxy.faults = lambda req: bad if req.params.get("partNumber") == "3" else None
    f = uploads.AtomicFile(
        "s3://test/fail.bin", opts, upload_concurrency=2, upload_buffer_bytes=10 * MiB
    )
    with pytest.raises(StorageError):
        for _ in range(30):
            f.write(os.urandom(MiB))
        f.commit()
    f.discard()
    s3["fs"].invalidate_cache()
    assert not s3["fs"].exists("test/fail.bin")
    assert _pending(s3["fs"]) == []


def test_several_shards_of_a_writer_upload_at_once(s3, s3_proxy, s3proxy):
    proxy, opts = s3_proxy
    slow = s3proxy.Fault("slow", delay=0.2)
    proxy.faults = lambda req: slow if req.method == "PUT" and req.path.endswith(".tar") else None
    w = ShardWriter("s3://test/many", 0, max_samples=1, storage_options=opts, upload_concurrency=3)
    members = [{"bin": os.urandom(64 * 1024 + i)} for i in range(8)]
    for i, fields in enumerate(members):
        w.write(f"k{i}", fields)
    shards = w.close()
    assert [s.url for s in shards] == [f"shard-00000-{i:05d}.tar" for i in range(8)]
    assert proxy.max_in_flight == 3  # three shards committing at once, never more
    for s in shards:
        data = s3["fs"].cat_file(f"test/many/{s.url}")
        assert hashlib.sha256(data).hexdigest() == s.sha256 and len(data) == s.bytes
    assert _pending(s3["fs"]) == []
