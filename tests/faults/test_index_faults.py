"""``wdstream index`` through the S3 test proxy: a reset in the middle of a shard's body is
retried where it happened (it used to mark the shard truncated, 1 of 60 samples, and a clean
re-run kept that record); a shard whose reads keep failing is not recorded, so the next run
reads it; at 85% faults the command ends in one line, never a traceback."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import pytest
from helpers import small_config

import wdstream
from wdstream.cli import main
from wdstream.format.manifest import load_manifest
from wdstream.write.indexer import STATE_NAME, index_dataset

pytestmark = pytest.mark.s3
SIZES = (60, 60, 60)


def _keys(sizes=SIZES) -> list[str]:
    return [f"{s:05d}{i:04d}" for s, n in enumerate(sizes) for i in range(n)]


def _put_shards(fs) -> None:
    """Shards that ``tarfile`` wrote (pax headers), a caption and metadata a sample."""
    for s, n in enumerate(SIZES):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for key in _keys((0,) * s + (n,))[-n:]:
                for ext, data in (("txt", f"caption {key} " * 40), ("json", '{"k": 1}')):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data.encode()))
        fs.pipe_file(f"test/ds/{s:05d}.tar", buf.getvalue())


def _read_all(opts) -> list[str]:
    config = small_config(storage_options=opts, batch_size=4)
    return sorted(k for b in wdstream.make_loader("s3://test/ds", config) for k in b["keys"])


def test_a_reset_mid_body_is_read_again_where_it_happened(s3, s3_proxy, s3proxy):
    proxy, opts = s3_proxy
    _put_shards(s3["fs"])
    # five resets in a row, 30 kB into the body: s3fs's own five attempts all fail
    reset = s3proxy.Fault("reset_after", 30_000)
    proxy.inject(reset, times=5, method="GET", path_contains="00001")
    report = index_dataset("s3://test/ds", storage_options=opts, workers=1, quiet=True)
    assert [s.samples for s in report.manifest.shards] == list(SIZES)
    assert report.problems == {} and report.manifest.skipped == {}
    assert len(proxy.faults_seen) == 5
    assert _read_all(opts) == sorted(_keys())
    assert main(["verify", "s3://test/ds", "--storage-option", f"endpoint_url={proxy.url}"]) == 0


def test_a_shard_that_keeps_failing_is_not_recorded_and_the_next_run_reads_it(
    s3, s3_proxy, s3proxy, caplog
):
    proxy, opts = s3_proxy
    _put_shards(s3["fs"])
    reset = s3proxy.Fault("reset_after", 30_000)
    proxy.inject(reset, times=1000, method="GET", path_contains="00001")
    endpoint = ["--storage-option", f"endpoint_url={proxy.url}"]
    with caplog.at_level(logging.WARNING):
        assert main(["index", "s3://test/ds", "--workers", "1", "--quiet", *endpoint]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "1 of 3 shards could not be read" in errors[0] and "00001.tar at byte" in errors[0]
    assert "run the same command again" in errors[0]
    state = json.loads(s3["fs"].cat_file(f"test/ds/{STATE_NAME}"))
    assert sorted(r["url"] for r in state["shards"]) == [
        "s3://test/ds/00000.tar",
        "s3://test/ds/00002.tar",
    ]
    assert not s3["fs"].exists("test/ds/manifest.json")
    proxy.clear_faults()
    again = index_dataset("s3://test/ds", storage_options=opts, workers=1, quiet=True)
    assert (again.indexed, again.reused) == (1, 2)
    assert [s.samples for s in again.manifest.shards] == list(SIZES)
    assert _read_all(opts) == sorted(_keys())


def test_a_truncated_record_from_an_earlier_run_is_read_again(s3, s3_proxy):
    """A state written before this fix may hold a failed read recorded as a truncated shard;
    a shard recorded truncated is read again instead of kept."""
    proxy, opts = s3_proxy
    _put_shards(s3["fs"])
    index_dataset("s3://test/ds", storage_options=opts, quiet=True)
    fs = s3["fs"]
    state = json.loads(fs.cat_file(f"test/ds/{STATE_NAME}"))
    bad = state["shards"][1]
    bad["info"]["samples"] = 1
    bad["skipped"] = {"truncated or corrupt shard": 1}
    bad["problems"] = ["truncated or corrupt (ConnectionResetError: reset by peer)"]
    fs.pipe_file(f"test/ds/{STATE_NAME}", json.dumps(state).encode())
    again = index_dataset("s3://test/ds", storage_options=opts, quiet=True)
    assert (again.indexed, again.reused) == (1, 2)
    assert [s.samples for s in load_manifest("s3://test/ds", opts).shards] == list(SIZES)


def test_index_through_85_percent_faults_ends_in_one_line_never_a_traceback(
    s3, s3_proxy, s3proxy, caplog
):
    proxy, opts = s3_proxy
    _put_shards(s3["fs"])
    proxy.faults = s3proxy.FaultPlan(
        rate=0.85,
        kinds=("reset", "500", "503", "reset_after", "truncated"),
        methods=("GET",),
        match=lambda info: info.key.endswith(".tar"),
        nbytes=20_000,
        seed=3,
    )
    endpoint = ["--storage-option", f"endpoint_url={proxy.url}"]
    with caplog.at_level(logging.WARNING):
        code = main(["index", "s3://test/ds", "--workers", "3", "--quiet", *endpoint])
    assert code in (0, 2)  # main() returned: no exception escaped it
    assert len(proxy.faults_seen) > 10 and "opening it again there" in caplog.text
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == (code == 2) and all("\n" not in e for e in errors), errors
    proxy.faults = None
    assert main(["index", "s3://test/ds", "--quiet", *endpoint]) == 0
    assert _read_all(opts) == sorted(_keys())


@pytest.mark.slow
def test_bodies_always_cut_short_are_retried_then_end_in_one_line(
    s3, s3_proxy, s3proxy, caplog, capsys
):
    """Every GET of one shard answers with a body cut short of its Content-Length (aiohttp's
    ClientPayloadError, which escaped ``main`` as a traceback at 85% faults): each read is
    retried, then the command exits 2 with one ERROR line naming the shard; the next clean
    run indexes it."""
    proxy, opts = s3_proxy
    _put_shards(s3["fs"])
    proxy.faults = s3proxy.FaultPlan(
        rate=1.0,
        kinds=("truncated",),
        methods=("GET",),
        match=lambda info: info.key.endswith("00001.tar"),
        nbytes=20_000,
    )
    endpoint = ["--storage-option", f"endpoint_url={proxy.url}"]
    with caplog.at_level(logging.WARNING):
        assert main(["index", "s3://test/ds", "--workers", "2", "--quiet", *endpoint]) == 2
    cut = [f for f in proxy.faults_seen if f[2].endswith("00001.tar")]
    assert len(cut) > 1 and len(cut) == len(proxy.faults_seen)  # retried, one shard only
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0].getMessage(), errors
    assert "1 of 3 shards could not be read" in errors[0].getMessage()
    assert "00001.tar" in errors[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records)
    assert "Traceback" not in caplog.text and "Traceback" not in capsys.readouterr().err
    proxy.faults = None
    assert main(["index", "s3://test/ds", "--quiet", *endpoint]) == 0
    assert _read_all(opts) == sorted(_keys())
