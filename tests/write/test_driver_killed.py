"""kill -9 of only the driver of a ``--workers 2`` conversion: its pool workers (children of
the forkserver, not of the driver) stop within seconds and commit nothing afterwards; a re-run
completes. To local disk and to S3 (moto over HTTP)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

import pytest

from wdstream.write.convert import convert

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "faults"))
from killing import (  # noqa: E402
    alive,
    check_complete,
    descendants,
    listing,
    pending_uploads,
    start_conversion,
    wait_gone,
)

log = logging.getLogger(__name__)


def _kill_driver_mid_job(source, url, options=None):
    """Start the slowed conversion with 2 workers, SIGKILL only the driver once a partition
    has finished and others are running, and return (the processes below the driver that
    were running just before the kill, the listing after it)."""
    # rows slow enough that the second pair of partitions is still running at the kill
    child = start_conversion(source, url, workers=2, options=options, delay=0.2)
    try:
        deadline = time.monotonic() + 120
        below = []
        while time.monotonic() < deadline and child.poll() is None:
            below = sorted(set(below) | set(descendants(child.pid)))
            names = listing(url, options)
            if any(n.startswith("_partitions/part-") for n in names) and len(below) >= 3:
                break
            time.sleep(0.02)
        assert child.poll() is None, child.communicate()[1].decode()[-3000:]
        below = sorted(set(below) | set(descendants(child.pid)))
        running = alive(below)  # the workers, as the driver dies (they exit within moments)
        os.kill(child.pid, signal.SIGKILL)  # the driver only: its workers are not signalled
        child.wait(timeout=30)
        return running, listing(url, options)
    finally:
        if child.poll() is None:
            child.kill()


def _check_workers_stop_and_commit_nothing(running, at_kill, url, options=None):
    assert len(running) >= 3, "the pool's workers were not running when the driver died"
    left = wait_gone(running, timeout=10)
    assert not left, f"processes {left} still run 10 s after their driver died"
    after = listing(url, options)
    time.sleep(1.5)
    assert listing(url, options) == after  # nothing more is written once they are gone
    assert "manifest.json" not in after
    log.info(
        "written between the kill and the workers' exit: %s", sorted(set(after) - set(at_kill))
    )


@pytest.mark.slow
def test_driver_killed_local(small_hf_dataset, tmp_path):
    out = str(tmp_path / "out")
    running, at_kill = _kill_driver_mid_job(small_hf_dataset, out)
    _check_workers_stop_and_commit_nothing(running, at_kill, out)
    convert(small_hf_dataset, out, max_samples_per_shard=3, workers=1, quiet=True)
    check_complete(out, 48)


@pytest.mark.slow
@pytest.mark.s3
def test_driver_killed_s3(small_hf_dataset, s3):
    opts = s3["storage_options"]
    url = "s3://test/killed"
    running, at_kill = _kill_driver_mid_job(small_hf_dataset, url, opts)
    _check_workers_stop_and_commit_nothing(running, at_kill, url, opts)
    convert(
        small_hf_dataset, url, max_samples_per_shard=3, workers=1, quiet=True, storage_options=opts
    )
    check_complete(url, 48, opts)
    assert [u["Key"] for u in pending_uploads(opts) if "/shard-" in u["Key"]] == []
