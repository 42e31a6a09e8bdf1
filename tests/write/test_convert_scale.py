"""The converter's driver at scale and its cleanup on S3, against moto behind the shared S3
test proxy (tools/s3proxy.py), whose counters say what the driver asked of S3.

- A job of many one-row partitions, killed (SIGKILL) halfway and resumed: the manifest is
  complete, without duplicates, and the resume's start-up requests stay under the bound of the
  design (docs/converter.md, "Scale"), at two sizes so that its growth shows.
- Cleanup (issue 14): an abort whose reply is lost does not kill a finished job; cleanup that
  keeps failing exits 2 and a re-run finishes; every pending upload under the output is
  aborted, page by page; small objects go up as single PUTs.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from urllib.parse import unquote

import pytest

from wdstream import storage
from wdstream.format.manifest import load_manifest
from wdstream.format.tario import group_samples, iter_members
from wdstream.write.convert import convert
from wdstream.write.output import records_per_batch
from wdstream.write.runs import MAX_RUN

pytestmark = pytest.mark.s3

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tiny_source(folder, n: int) -> str:
    """``n`` parquet files of one row each: ``n`` partitions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        pq.write_table(
            pa.table({"text": [f"row {i}"], "id": [i]}),
            os.path.join(folder, f"part-{i:06d}.parquet"),
        )
    return str(folder)


class _Log:
    """A proxy fault rule that injects nothing and records every request."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []

    def __call__(self, info):
        self.requests.append((info.method, unquote(f"{info.path}?{info.query}")))
        return None


def _keys(url, opts):
    keys = []
    for shard in load_manifest(url, opts).shard_urls():
        with storage.open_read(shard, opts) as f:
            keys.extend(s["__key__"] for s in group_samples(iter_members(f)))
    return keys


def _kill_halfway(source: str, url: str, n: int, s3) -> int:
    """Run ``wdstream convert`` in a child process straight to moto and SIGKILL it once half
    of the partitions have a record; returns how many had one."""
    endpoint = json.dumps({"endpoint_url": s3["endpoint"]})
    cmd = [
        sys.executable,
        "-m",
        "wdstream",
        "convert",
        source,
        url,
        "--workers",
        "1",
        "--quiet",
        "--storage-option",
        f"client_kwargs={endpoint}",
    ]
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    fs, prefix = s3["fs"], url[len("s3://") :] + "/_partitions/part-"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = len(fs.find(prefix.rsplit("/", 1)[0], prefix="part-"))
            if done >= n // 2:
                break
            if proc.poll() is not None:
                pytest.fail(
                    f"the conversion ended before it was killed: "
                    f"{proc.stderr.read().decode()[-2000:]}"
                )
            time.sleep(0.2)
            fs.invalidate_cache()
        else:
            pytest.fail("the conversion made no progress")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    fs.invalidate_cache()
    return len(fs.find(prefix.rsplit("/", 1)[0], prefix="part-"))


def loose_records(n: int) -> int:
    """The most part files no records batch covers after a kill: the driver's batch not yet
    flushed (one less than a batch) and the records of the run the worker was in, which
    reach the driver only when the run ends (up to MAX_RUN partitions, write/runs.py)."""
    return records_per_batch(n) - 1 + MAX_RUN


def startup_bound(n: int, done: int) -> int:
    """The resume's start-up requests, by design: the write probe (PUT, DELETE), the job file
    (GET, twice: to know whether to read records while planning, then to compare), the
    listing of ``_partitions/`` (1,000 names a page), one GET per records batch, one GET per
    part file that no batch covers (:func:`loose_records`), and the listing of pending
    uploads. 4 spare."""
    per = records_per_batch(n)
    pages = math.ceil((done + 2 + done / per) / 1000)
    return 2 + 2 + pages + math.ceil(done / per) + loose_records(n) + 1 + 4


@pytest.mark.slow
def test_killed_job_resumes_with_bounded_startup_requests(s3_proxy, s3, tmp_path):
    proxy, opts = s3_proxy
    seen = {}
    for n in (400, 1000):
        source = _tiny_source(tmp_path / f"src{n}", n)
        url = f"s3://test/out{n}"
        done = _kill_halfway(source, url, n, s3)
        assert n // 2 <= done < n
        assert not s3["fs"].exists(f"test/out{n}/manifest.json")
        log = _Log()
        proxy.reset_counters()
        proxy.faults = log
        m = convert(source, url, workers=1, quiet=True, storage_options=opts)
        proxy.faults = None
        # complete, no duplicates
        keys = _keys(url, opts)
        assert m.samples == n == len(keys) == len(set(keys))
        assert sorted(s.partition for s in m.shards) == list(range(n))
        # the start-up: every request before the first one of a partition (its shard)
        first = next(
            i
            for i, (_, target) in enumerate(log.requests)
            if "/shard-" in target or "shard-" in target.partition("?")[2]
        )
        startup = log.requests[:first]
        bound = startup_bound(n, done)
        assert len(startup) <= bound, "\n".join(f"{m} {t}" for m, t in startup)
        # nothing read one record at a time: far fewer GETs than finished partitions
        gets = [t for method, t in startup if method == "GET" and "/_partitions/part-" in t]
        assert len(gets) <= loose_records(n)
        seen[n] = (done, len(startup), bound)
    (d1, s1, _), (d2, s2, _) = seen[400], seen[1000]
    # growth: about one request per batch of finished partitions, not one per partition
    assert s2 - s1 <= (d2 - d1) / records_per_batch(1000) + loose_records(1000) + 2, seen


def test_a_lost_abort_reply_does_not_kill_the_job(small_hf_dataset, s3_proxy, s3proxy):
    """S3 aborts the upload but the reply is lost; the client's retry gets NoSuchUpload: the
    upload counts as aborted and the job ends with its manifest."""
    proxy, opts = s3_proxy
    fs = s3proxy_fs(opts)
    for key in (
        "out/shard-00001-00000.tar",
        "out/_partitions/part-00002.json",
        "out/manifest.json",
        "out/_wdstream_write_probe",
    ):
        fs.call_s3("create_multipart_upload", Bucket="test", Key=key)
    proxy.inject(
        s3proxy.Fault("lost_reply"),
        times=2,
        match=lambda info: info.method == "DELETE" and "uploadId" in info.query,
    )
    m = convert(small_hf_dataset, "s3://test/out", workers=1, quiet=True, storage_options=opts)
    assert m.samples == 48
    assert [f[3] for f in proxy.faults_seen] == ["lost_reply", "lost_reply"]
    assert fs.call_s3("list_multipart_uploads", Bucket="test").get("Uploads", []) == []
    assert load_manifest("s3://test/out", opts).samples == 48


def s3proxy_fs(opts):
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, **opts)


def test_cleanup_that_keeps_failing_exits_2_and_a_rerun_finishes(
    small_hf_dataset, s3_proxy, s3proxy, caplog
):
    from wdstream.cli import main

    proxy, opts = s3_proxy
    fs = s3proxy_fs(opts)
    fs.call_s3("create_multipart_upload", Bucket="test", Key="out/shard-00003-00009.tar")
    endpoint = json.dumps(opts["client_kwargs"])
    retries = json.dumps({"retries": {"max_attempts": 1}})
    argv = [
        "convert",
        small_hf_dataset,
        "s3://test/out",
        "--workers",
        "1",
        "--quiet",
        "--storage-option",
        f"client_kwargs={endpoint}",
        "--storage-option",
        f"config_kwargs={retries}",
    ]
    proxy.inject(
        s3proxy.Fault("500"),
        times=1000,
        match=lambda info: info.method == "DELETE" and "uploadId" in info.query,
    )
    assert main(argv) == 2
    assert "re-run the same command" in caplog.text
    assert "Traceback" not in caplog.text
    assert not fs.exists("test/out/manifest.json")
    assert len(proxy.faults_seen) >= 4  # retried
    proxy.clear_faults()
    assert main(argv) == 0
    assert load_manifest("s3://test/out", opts).samples == 48
    assert fs.call_s3("list_multipart_uploads", Bucket="test").get("Uploads", []) == []


def test_every_pending_upload_under_the_output_is_aborted_page_by_page(small_hf_dataset, s3_proxy):
    """1,001 pending uploads (the proxy pages them 1,000 at a time, as S3 does) of every kind
    of object under OUTPUT are aborted; an upload outside OUTPUT is left alone."""
    proxy, opts = s3_proxy
    fs = s3proxy_fs(opts)
    names = (
        ["manifest.json", "_partitions/_job.json", "_wdstream_write_probe"]
        + [f"_partitions/part-{i:05d}.json" for i in range(500)]
        + [f"shard-{i:05d}-00000.tar" for i in range(498)]
    )
    for name in names:
        fs.call_s3("create_multipart_upload", Bucket="test", Key=f"out/{name}")
    fs.call_s3("create_multipart_upload", Bucket="test", Key="other/keep.tar")
    log = _Log()
    proxy.faults = log
    m = convert(small_hf_dataset, "s3://test/out", workers=1, quiet=True, storage_options=opts)
    proxy.faults = None
    assert m.samples == 48
    left = fs.call_s3("list_multipart_uploads", Bucket="test").get("Uploads", [])
    assert [u["Key"] for u in left] == ["other/keep.tar"]
    pages = [t for method, t in log.requests if method == "GET" and "?uploads" in t]
    assert any("key-marker=" in t for t in pages)  # the second page was asked for


def test_small_objects_are_single_puts(small_hf_dataset, s3_proxy):
    """Records, indexes, the job file and the manifest go up as one PUT each: no multipart
    upload that an interrupt could leave pending. A fresh output has no write probe (the
    job file is its first write)."""
    proxy, opts = s3_proxy
    log = _Log()
    proxy.faults = log
    convert(
        small_hf_dataset,
        "s3://test/small",
        workers=1,
        quiet=True,
        max_samples_per_shard=5,
        storage_options=opts,
    )
    proxy.faults = None
    creates = [
        t
        for method, t in log.requests
        if method == "POST"
        and t.endswith("?uploads=")
        or (method == "POST" and "?uploads" in t and "uploadId" not in t)
    ]
    assert not [t for t in creates if "/shard-" not in t or t.split("?")[0].endswith(".json")]
    puts = {t.split("?")[0].rsplit("/", 1)[1] for method, t in log.requests if method == "PUT"}
    assert {
        "manifest.json",
        "_job.json",
        "part-00000.json",
        "shard-00000-00000.idx",
    } <= puts
    assert "_wdstream_write_probe" not in puts


def _echo(task, progress=None):
    if progress is not None:
        progress(1, 1)
    return task


def test_local_pool_takes_tasks_as_earlier_ones_finish():
    """The process pool holds at most ``in_flight`` submitted tasks and reads the task
    generator as results come back: the driver never holds one task per partition."""
    from wdstream.write.executors.local import LocalExecutor

    pulled, reports = [], []

    def tasks():
        for i in range(60):
            pulled.append(i)
            yield i

    with LocalExecutor(workers=2) as ex:
        got = []
        for result in ex.map_unordered(_echo, tasks(), progress=lambda s, b: reports.append(s)):
            got.append(result)
            assert len(pulled) - len(got) <= ex.in_flight == 4
    assert sorted(got) == list(range(60))
    # progress crosses a multiprocessing queue whose feeder thread may still hold the last
    # reports when the pool's results are in: they may trail, never exceed
    assert 0 < sum(reports) <= 60
