"""``--workers 1``: one process, two partitions at once on threads (issue 13).

A partition's record is written only after its shards are committed, and on S3 a one-process
conversion spent 40% of its time waiting for each partition's last upload. Two partitions on
threads overlap that wait with the next one's reading and encoding. These tests check the
overlap, the bound, the results, errors and the torch switch that partitions share.
"""

from __future__ import annotations

import threading
import time
import types

import datasets
import pytest

from wdstream.write.executors.local import LocalExecutor
from wdstream.write.sources.hf import without_torch


def test_two_tasks_at_once_never_more_and_every_result_once():
    running, peak, lock = [0], [0], threading.Lock()
    reports = []

    def task(i, progress=None):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)  # an upload being waited for
        progress(1, 10)
        with lock:
            running[0] -= 1
        return i

    ex = LocalExecutor(workers=1)
    got = list(ex.map_unordered(task, iter(range(12)), progress=lambda s, b: reports.append(s)))
    assert sorted(got) == list(range(12))
    assert peak[0] == 2  # overlapped, and bounded
    assert sum(reports) == 12
    serial = LocalExecutor(workers=1, inline_threads=1)
    running[0] = peak[0] = 0
    assert list(serial.map_unordered(task, iter(range(4)), progress=lambda s, b: None)) == \
        [0, 1, 2, 3]
    assert peak[0] == 1


def test_a_failing_task_stops_the_job_after_the_running_one_finishes():
    finished = []

    def task(i, progress=None):
        if i == 3:
            raise ValueError("partition 3 is bad")
        time.sleep(0.01)
        finished.append(i)
        return i

    ex = LocalExecutor(workers=1)
    with pytest.raises(ValueError, match="partition 3"):
        list(ex.map_unordered(task, iter(range(50))))
    assert 3 not in finished and len(finished) < 10  # no task started after the failure
    assert len(set(finished)) == len(finished)


def test_without_torch_restores_the_setting_when_threads_overlap(monkeypatch):
    from wdstream.write.sources import hf

    # as in a conversion worker, where torch is not imported (in the test process it may be)
    monkeypatch.setattr(hf, "sys", types.SimpleNamespace(modules={}))
    monkeypatch.setattr(datasets.config, "TORCH_AVAILABLE", True)
    before = datasets.config.TORCH_AVAILABLE
    inside, release, left = threading.Event(), threading.Event(), threading.Event()

    def hold():
        with without_torch():
            inside.set()
            release.wait(5)
        left.set()

    t = threading.Thread(target=hold)
    t.start()
    inside.wait(5)
    with without_torch():  # enters while the other thread is inside; the other leaves first
        release.set()
        left.wait(5)
        assert datasets.config.TORCH_AVAILABLE is False  # still off: this one is inside
    t.join()
    assert datasets.config.TORCH_AVAILABLE == before  # restored by the last one out
