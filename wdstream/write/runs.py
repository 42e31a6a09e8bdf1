"""A run: several partitions converted in turn by one worker, each one's commit overlapping
the next one's rows.

A partition ends by waiting for its last shard's upload, then writing its record
(:mod:`.partition`). Alone, a worker idles through that wait. In a run, the wait moves to a
commit thread: partition k's last uploads, its record and nothing else run there while
partition k+1's rows are read and written. The queue holds one partition: before handing over
partition k+1 the run waits for partition k's record, so at most two partitions of a worker
are open at once (one writing rows, one committing), and memory grows by at most one open
shard's unsent bytes (one part, :class:`~wdstream.uploads.UploadBudget`), the bytes of parts
being bounded per process as before.

Nothing else changes: each partition still commits its shards before its record is written,
and a record is the only mark of a finished partition, so a kill at any moment leaves what a
kill of single partitions leaves. A run returns its records once all are written; an error
of any partition stops the run with that partition's error (the partitions before it keep
their records).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from ..format.manifest import PartitionRecord
from .executors.base import Progress, merge_secrets, split_secrets
from .partition import ConvertTask, WrittenPartition, finish_partition, write_partition

__all__ = ["MAX_RUN", "PartitionRun", "convert_run", "make_runs", "run_length"]

#: most partitions in one run: a run's records reach the driver when it ends
MAX_RUN = 8


@dataclass
class PartitionRun:
    """Partitions converted in turn by one worker; picklable, credentials kept out of
    ``repr`` (each task's own)."""

    tasks: tuple[ConvertTask, ...]

    def __str__(self) -> str:
        parts = [t.partition for t in self.tasks]
        first = self.tasks[0]
        return (
            f"partitions {', '.join(map(str, parts))} of {first.n_partitions} ({first.spec.source})"
        )

    def without_secrets(self) -> tuple[PartitionRun, dict[str, Any]]:
        """``(this run with no credentials in its tasks, those credentials)``; the tasks of
        one job share their storage options."""
        _, secrets = split_secrets(self.tasks[0].storage_options)
        return replace(self, tasks=tuple(t.without_secrets()[0] for t in self.tasks)), secrets

    def with_secrets(self, secrets: dict[str, Any]) -> PartitionRun:
        """The inverse of :meth:`without_secrets`."""
        return replace(
            self,
            tasks=tuple(
                replace(t, storage_options=merge_secrets(t.storage_options, secrets))
                for t in self.tasks
            ),
        )


def run_length(partitions: int, workers: int) -> int:
    """Partitions per run for ``partitions`` spread over ``workers``: as many as gives each
    worker one run, at most :data:`MAX_RUN` (the driver hears of a run's records when it
    ends), at least 1."""
    return max(1, min(MAX_RUN, -(-partitions // max(1, workers))))


def make_runs(tasks: Iterable[ConvertTask], length: int) -> Iterator[PartitionRun]:
    """``tasks`` in consecutive runs of ``length`` (the last may be shorter), made as they are
    taken."""
    run: list[ConvertTask] = []
    for task in tasks:
        run.append(task)
        if len(run) >= length:
            yield PartitionRun(tuple(run))
            run = []
    if run:
        yield PartitionRun(tuple(run))


class _EarlierFailed(Exception):
    """Raised by a run's check while a partition writes rows: the partition before it failed
    to commit (``error``)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def convert_run(run: PartitionRun, progress: Progress | None = None) -> list[PartitionRecord]:
    """Convert the run's partitions in turn (see the module docstring); their records, in the
    run's order. Raises the first failing partition's error, naming it."""
    records: list[PartitionRecord] = []
    if len(run.tasks) == 1:  # nothing to overlap with
        written = write_partition(run.tasks[0], progress)
        return [finish_partition(written)]
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wdstream-finish") as pool:
        committing: concurrent.futures.Future | None = None
        current: WrittenPartition | None = None

        def check() -> None:  # the partition before failed: stop writing rows at once
            if committing is not None and committing.done() and committing.exception():
                raise _EarlierFailed(committing.exception())

        try:
            for task in run.tasks:
                earlier = None
                try:
                    current = write_partition(task, progress, check)
                except _EarlierFailed as exc:
                    earlier = exc.error
                if earlier is not None:  # its own error (and cause), naming its partition
                    raise earlier
                if committing is not None:
                    records.append(committing.result())
                committing, current = pool.submit(finish_partition, current), None
            if committing is not None:
                records.append(committing.result())
        except BaseException:
            if current is not None:  # written, never handed over: its uploads go
                current.abort()
            if committing is not None and not committing.done():
                # the partition before keeps its record when its commit succeeds
                concurrent.futures.wait([committing])
            raise
    return records
