"""The requests a conversion to S3 makes, pinned: counted at the shared S3 test proxy
(tools/s3proxy.py), by kind and per shard, so that a change cannot add round trips silently.

A shard below one part is one PUT; a larger one a multipart upload of ``ceil(bytes / part)``
parts; each shard has its index (one PUT), each partition its record (one PUT). The driver
adds a fixed number: the job file (GET, GET, conditional PUT), the manifest's absence (GET),
the listings of pending uploads before and after the partitions, the records batch and the
manifest's two parts. No write probe on a fresh output, no HEAD, no listing of shards.
"""

from __future__ import annotations

import math
from collections import Counter
from urllib.parse import unquote

import pytest

from wdstream import uploads
from wdstream.demo.data import build_parquet_dataset
from wdstream.write.convert import convert

pytestmark = pytest.mark.s3

MiB = 2**20


class _Log:
    """A proxy fault rule that injects nothing and records every request."""

    def __init__(self):
        self.requests: list[tuple[str, str, str]] = []

    def __call__(self, info):
        self.requests.append((info.method, unquote(info.key), info.query))
        return None


def _kind(method: str, key: str, query: str) -> str:
    """``METHOD what``: the object's role (shard, index, record...) and the multipart step."""
    name = key.rsplit("/", 1)[-1]
    if name.endswith(".tar"):
        what = "shard"
    elif name.endswith(".idx"):
        what = "index"
    elif name.startswith("part-"):
        what = "record"
    elif name.startswith("records-"):
        what = "records batch"
    else:
        what = name or "bucket"
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    if "partNumber" in params:
        what += " part"
    elif "uploads" in params:
        what += " uploads" if method == "GET" else " create"
    elif "uploadId" in params:
        what += " complete" if method == "POST" else " abort"
    return f"{method} {what}"


def _convert(source, url, opts, proxy, **options) -> tuple:
    log = _Log()
    proxy.faults = log
    try:
        m = convert(source, url, quiet=True, storage_options=opts, **options)
    finally:
        proxy.faults = None
    return m, Counter(_kind(*r) for r in log.requests)


DRIVER = {  # a fresh job's own requests, whatever its size
    "GET _job.json": 2,  # is it a resume? then check_job
    "GET manifest.json": 1,  # a folder holding another dataset is refused
    "PUT _job.json": 1,  # the conditional create: the output's first write
    "GET bucket uploads": 2,  # pending uploads, before and after the partitions
    "PUT records batch": 1,
    "PUT manifest.json": 1,
    "PUT manifest.details.json": 1,
}


@pytest.mark.parametrize("workers", [1, 2])
def test_requests_per_shard_are_pinned(small_hf_dataset, s3_proxy, workers):
    """48 rows, 4 partitions, shards of 5 samples (3 a partition, all below one part): per
    shard one PUT and its index, per partition its record, and the driver's fixed few."""
    proxy, opts = s3_proxy
    m, kinds = _convert(
        small_hf_dataset,
        "s3://test/pinned",
        opts,
        proxy,
        workers=workers,
        max_samples_per_shard=5,
    )
    shards, partitions = len(m.shards), 4
    assert shards == 12
    assert kinds == Counter(
        {
            "PUT shard": shards,
            "PUT index": shards,
            "PUT record": partitions,
            **DRIVER,
        }
    ), kinds
    assert sum(kinds.values()) == 2 * shards + partitions + sum(DRIVER.values())


def test_a_shard_above_one_part_is_one_multipart_upload(tmp_path, s3_proxy):
    """A shard larger than a part: one create, at most ``ceil(bytes / part)`` parts (a part
    ends where a sample ends, so it may be a little larger), one complete; nothing else per
    shard but its index, nothing per partition but its record."""
    proxy, opts = s3_proxy
    source = build_parquet_dataset(
        str(tmp_path / "src"), 48, n_files=2, image_size=(700, 900), with_audio=False
    )
    concurrency, buffer = 1, 5 * MiB
    part = uploads.UploadBudget(concurrency, buffer).part_size
    m, kinds = _convert(
        source,
        "s3://test/large",
        opts,
        proxy,
        workers=1,
        upload_concurrency=concurrency,
        upload_buffer_bytes=buffer,
    )
    assert len(m.shards) == 2 and all(s.bytes > part for s in m.shards)
    parts = kinds["PUT shard part"]
    assert 2 * len(m.shards) <= parts <= sum(math.ceil(s.bytes / part) for s in m.shards)
    assert kinds == Counter(
        {
            "POST shard create": 2,
            "PUT shard part": parts,
            "POST shard complete": 2,
            "PUT index": 2,
            "PUT record": 2,
            **DRIVER,
        }
    ), kinds
