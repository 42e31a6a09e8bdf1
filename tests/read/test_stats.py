"""Per-worker read stats (read/stats.py): counters in shared memory, skips by reason."""

from __future__ import annotations

import multiprocessing

from wdstream.errors import ErrorBudget
from wdstream.read.stats import REASON_SLOTS, Counters, ReadStats, tracked


def _worker(stats: ReadStats) -> None:
    budget = ErrorBudget(-1)
    counters = Counters(budget)
    budget.record("unreadable shard", "s3://b/x.tar")
    budget.placeholders += 7
    counters.add_request(1000)
    stats.write(1, counters)


def test_a_workers_row_reaches_the_main_process_with_its_skips():
    stats = ReadStats(2)
    proc = multiprocessing.get_context("fork").Process(target=_worker, args=(stats,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    rows = stats.rows()
    assert [r["worker"] for r in rows] == [0, 1]
    assert rows[1]["skipped"] == {"unreadable shard": 1} and rows[1]["placeholders"] == 7
    assert rows[1]["get_requests"] == 1 and rows[1]["bytes_read"] == 1000
    assert rows[0]["skipped"] == {} and rows[0]["samples"] == 0


def test_reasons_past_the_named_slots_are_summed_as_other():
    stats = ReadStats(1)
    budget = ErrorBudget(-1)
    for i in range(REASON_SLOTS + 3):
        for _ in range(i + 1):
            budget.record(f"reason {i:02d}", "here")
    stats.write(0, Counters(budget))
    skipped = stats.rows()[0]["skipped"]
    assert len(skipped) == REASON_SLOTS + 1
    assert sum(skipped.values()) == sum(range(1, REASON_SLOTS + 4))
    assert skipped["other"] == sum(range(REASON_SLOTS + 1, REASON_SLOTS + 4))


def test_tracked_counts_batches_and_samples():
    stats = ReadStats(1)
    counters = Counters(ErrorBudget(-1))
    out = list(tracked(iter([{"b": 1}, {"b": 2}, {"b": 3}]), stats, 0, counters, 4, 0, "t"))
    assert len(out) == 3
    row = stats.rows()[0]
    assert row["batches"] == 3 and row["samples"] == 12 and row["samples_per_s"] > 0
