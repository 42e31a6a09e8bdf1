"""Where a worker's read time goes, and what it skipped: the counters behind ``loader.stats()``.

Each DataLoader worker (or the main process, with 0 workers) keeps a :class:`Counters` for its
epoch and copies it after every batch into its row of :class:`ReadStats`, a small table in
shared memory that the main process reads. Skips are counted by reason (the error budget's
reasons: ``unreadable shard``, ``undecodable image``, ...) in a few named slots per row, so a
caller reads them as numbers instead of parsing log lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import ErrorBudget

__all__ = ["FIELDS", "REASON_SLOTS", "Counters", "ReadStats", "tracked"]

log = logging.getLogger(__name__)

#: The numeric columns of a worker's row in :class:`ReadStats`.
FIELDS = (
    "samples",
    "batches",
    "elapsed_s",
    "io_wait_s",
    "decode_s",
    "blocked_s",
    "get_requests",
    "bytes_read",
    "index_requests",
    "placeholders",
)
#: Distinct skip reasons a row keeps by name; further reasons are summed under ``"other"``.
REASON_SLOTS = 15
_NAME_BYTES = 48
_OTHER = "other"


class Counters:
    """One worker's counters for the current epoch (plain floats; copied to shared memory),
    with the error budget whose counts it reports."""

    __slots__ = FIELDS + ("budget", "_lock", "_start")

    def __init__(self, budget: ErrorBudget | None = None):
        for f in FIELDS:
            setattr(self, f, 0.0)
        self.budget = budget
        self._lock = threading.Lock()
        self._start = time.perf_counter()

    def add_request(self, nbytes: int, *, index: bool = False) -> None:
        """Count one ranged GET of ``nbytes`` (``index``: of a shard's index; thread-safe:
        fetch threads call it)."""
        with self._lock:
            self.get_requests += 1
            self.bytes_read += nbytes
            if index:
                self.index_requests += 1

    def values(self) -> list[float]:
        self.elapsed_s = time.perf_counter() - self._start
        if self.budget is not None:
            self.placeholders = self.budget.placeholders
        return [float(getattr(self, f)) for f in FIELDS]

    def skipped(self) -> dict[str, int]:
        return dict(self.budget.counts) if self.budget is not None else {}


class ReadStats:
    """Per-worker counters in shared memory: written by DataLoader workers (or the main
    process with 0 workers), read by the main process."""

    def __init__(self, workers: int):
        rows = max(1, workers)
        self._t = torch.zeros((rows, len(FIELDS)), dtype=torch.float64).share_memory_()
        self._names = torch.zeros(
            (rows, REASON_SLOTS, _NAME_BYTES), dtype=torch.uint8
        ).share_memory_()
        self._counts = torch.zeros((rows, REASON_SLOTS + 1), dtype=torch.int64).share_memory_()

    def write(self, worker: int, counters: Counters) -> None:
        self._t[worker] = torch.tensor(counters.values(), dtype=torch.float64)
        skipped = counters.skipped()
        if not skipped and not int(self._counts[worker].sum()):
            return
        names = self._names[worker]
        counts = torch.zeros(REASON_SLOTS + 1, dtype=torch.int64)
        for slot, (reason, n) in enumerate(sorted(skipped.items())):
            if slot >= REASON_SLOTS:
                counts[REASON_SLOTS] += n
                continue
            raw = reason.encode("utf-8", "replace")[:_NAME_BYTES]
            names[slot].zero_()
            names[slot, : len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
            counts[slot] = n
        self._counts[worker] = counts

    def _skipped(self, worker: int) -> dict[str, int]:
        out: dict[str, int] = {}
        counts = self._counts[worker].tolist()
        for slot in range(REASON_SLOTS):
            if counts[slot]:
                raw = bytes(self._names[worker, slot].tolist()).rstrip(b"\0")
                out[raw.decode("utf-8", "replace")] = counts[slot]
        if counts[REASON_SLOTS]:
            out[_OTHER] = counts[REASON_SLOTS]
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One dict per worker: :data:`FIELDS`, ``samples_per_s``, and ``skipped`` (reason ->
        count)."""
        out = []
        for worker, row in enumerate(self._t.tolist()):
            d: dict[str, Any] = dict(zip(FIELDS, row, strict=True))
            for name in (
                "samples",
                "batches",
                "get_requests",
                "bytes_read",
                "index_requests",
                "placeholders",
            ):
                d[name] = int(d[name])
            d["samples_per_s"] = d["samples"] / d["elapsed_s"] if d["elapsed_s"] > 0 else 0.0
            d["skipped"] = self._skipped(worker)
            out.append({"worker": worker, **d})
        return out


def tracked(
    batches: Iterator[dict],
    stats: ReadStats,
    worker: int,
    counters: Counters,
    batch_size: int,
    log_every: int,
    what: str,
) -> Iterator[dict]:
    """``batches``, counting each into ``counters`` (written to ``stats`` row ``worker``)
    and the seconds spent suspended at the yield: blocked on the consumer."""
    for batch in batches:
        counters.batches += 1
        counters.samples += batch_size
        stats.write(worker, counters)
        if log_every and counters.batches % log_every == 0:
            log.debug(
                "%s worker %d: %d batches, %.1f samples/s, io wait %.2fs, decode %.2fs, "
                "blocked %.2fs, %d GETs, %d bytes",
                what,
                worker,
                counters.batches,
                counters.samples / max(counters.elapsed_s, 1e-9),
                counters.io_wait_s,
                counters.decode_s,
                counters.blocked_s,
                counters.get_requests,
                counters.bytes_read,
            )
        t0 = time.perf_counter()
        yield batch
        counters.blocked_s += time.perf_counter() - t0
    stats.write(worker, counters)
