"""One partition of a conversion: its rows streamed into committed shards, then its record.

A partition is one :class:`ConvertTask`, run by the pure, picklable :func:`convert_partition` on
any executor. Its rows go through :class:`~wdstream.rows.encode.RowEncoder` into a
:class:`~wdstream.write.writer.ShardWriter` (commit-or-abort shards), and
``OUTPUT/_partitions/part-NNNNN.json`` is written only after all of its shards are committed.

Keys are ``make_key(partition, row)`` with ``row`` the row's index within its partition
(skipped rows included), so keys and shard bytes are the same whatever the number of workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .. import storage
from ..errors import ConfigError, ErrorBudget, SkipSample, WdstreamError, redact
from ..format.manifest import PARTITIONS_DIR, PartitionRecord
from ..format.schema import make_key
from ..rows.columns import ColumnMap, iter_rows, prepare
from ..rows.encode import RowEncoder
from ..rows.paths import ReadRoots
from ..rows.source import HFSource, open_source
from .executors.base import Progress, merge_secrets, split_secrets
from .output import lists_by_prefix, remove_leftovers
from .sources.files import SourceFiles, open_files
from .torchless import without_torch
from .writer import ShardWriter

__all__ = [
    "ConvertTask",
    "WrittenPartition",
    "convert_partition",
    "finish_partition",
    "record_name",
    "write_partition",
]

log = logging.getLogger(__name__)


def record_name(partition: int) -> str:
    return f"part-{partition:05d}.json"


@dataclass
class ConvertTask:
    """Everything one partition needs; picklable, credentials kept out of ``repr``.

    ``storage_options`` travel with the task (a process pool pickles them into a pipe); they
    are never logged. A cluster executor ships the task from :meth:`without_secrets` and the
    credentials apart. ``limit`` caps the rows this partition reads (its share of a
    ``--limit``). The source's shards are split into ``n_partitions`` contiguous groups and
    the partition reads group ``partition``; ``source_shards`` is how many shards the source
    had when the job was planned (0: ``n_partitions``, one shard a partition). ``resume`` says a dead attempt may have
    committed files of this partition: it then removes those it does not write again.
    ``first_partition`` is the job's first partition number (an append numbers its partitions
    after the output's last one): ``partition`` names the shards, keys and record, and the
    task reads group ``partition - first_partition`` of the source. ``files``, when the
    source's shards are data files (parquet, arrow), are that group's files: the worker opens
    only them, instead of resolving every file of the source again. ``read_roots``: the
    folders a media cell's path may be read from (the source's own and the allowed ones,
    :mod:`wdstream.rows.paths`); a row naming a path elsewhere is skipped and counted.
    """

    spec: HFSource
    columns: ColumnMap
    partition: int
    n_partitions: int
    output_url: str
    max_samples_per_shard: int
    max_shard_bytes: int
    limit: int | None = None
    skip_bad_rows: bool = True
    batch_size: int = 64
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    job: str = ""  # one convert() call; a worker opens the source once per job ("": each time)
    validate: str = "cheap"  # "cheap" | "full" (see wdstream.rows.validate)
    source_shards: int = 0
    resume: bool = False
    first_partition: int = 0
    upload_concurrency: int = 4
    upload_buffer_bytes: int = 64 * 2**20
    files: SourceFiles | None = None  # this partition's data files (None: open the source)
    read_roots: ReadRoots = field(default_factory=ReadRoots)  # where media paths may be read

    def __str__(self) -> str:
        return (
            f"partition {self.partition} of {self.n_partitions} "
            f"({self.spec.source} -> {redact(self.output_url)})"
        )

    def without_secrets(self) -> tuple[ConvertTask, dict[str, Any]]:
        """``(this task with no credentials in its storage options, those credentials)``."""
        public, secrets = split_secrets(self.storage_options)
        return replace(self, storage_options=public), secrets

    def with_secrets(self, secrets: dict[str, Any]) -> ConvertTask:
        """The inverse of :meth:`without_secrets`."""
        return replace(self, storage_options=merge_secrets(self.storage_options, secrets))


def _name_partition(exc: BaseException, task: ConvertTask) -> None:
    """Make a partition's error say which partition failed, keeping its type (callers catch
    ColumnError, TooManyErrors...): wdstream errors get a prefix, others a note."""
    where = f"partition {task.partition} of {task.n_partitions}"
    if task.first_partition:  # an append: its partitions follow the output's earlier ones
        where = (
            f"partition {task.partition} (of {task.first_partition}.."
            f"{task.first_partition + task.n_partitions - 1}, appended)"
        )
    if isinstance(exc, WdstreamError) and exc.args and isinstance(exc.args[0], str):
        if not exc.args[0].startswith(where):
            exc.args = (f"{where}: {exc.args[0]}", *exc.args[1:])
    elif hasattr(exc, "add_note"):
        exc.add_note(f"while converting {task}")


_OPENED: dict[str, Any] = {}  # per process: the prepared source of the current job


def _partition_dataset(task: ConvertTask):
    """The task's rows: the source opened (once per job and process, as ``load_dataset``
    resolves every data file of the dataset, a Hub listing included) and sharded; or, when
    the task carries its data files, just those files."""
    if task.files is not None:
        ds = prepare(open_files(task.spec, task.files), task.columns)
        return ds.take(task.limit) if task.limit is not None else ds
    key = f"{task.job}|{task.spec!r}|{task.columns!r}"
    ds = _OPENED.get(key) if task.job else None
    if ds is None:
        ds = prepare(open_source(task.spec, check_hub=False), task.columns)
        _OPENED.clear()
        if task.job:
            _OPENED[key] = ds
    shards = task.source_shards or task.n_partitions
    if shards > 1 and ds.n_shards != shards:
        raise ConfigError(
            f"{task.spec.source} now has {ds.n_shards} source shards, not the "
            f"{shards} this job was planned with; its files changed during the "
            f"conversion. Convert it again into a new OUTPUT",
            url=task.output_url,
        )
    if task.n_partitions > 1:  # contiguous groups of source shards (one each without --limit)
        ds = ds.shard(
            num_shards=task.n_partitions,
            index=task.partition - task.first_partition,
            contiguous=True,
        )
    if task.limit is not None:
        ds = ds.take(task.limit)
    return ds


def convert_partition(task: ConvertTask, progress: Progress | None = None) -> PartitionRecord:
    """Convert one partition: stream its rows into committed shards, then write its record.

    Pure with respect to its inputs (same task -> same keys, same shard bytes). Bad rows are
    skipped and counted (or, with ``skip_bad_rows=False``, stop the partition with
    TooManyErrors). On any error the open shard is discarded and no record is written, so a
    re-run redoes the partition. ``progress(samples, nbytes)`` receives deltas now and then.
    An error keeps its type and names the partition.

    Idempotent: a partition writes only its own names (``shard-PPPPP-*``, its record), so a
    retried attempt overwrites what a dead one committed with the same bytes; a dead attempt's
    open shard is never visible (a temp name or a pending multipart upload, which the driver
    sweeps at the end of the job).
    """
    return finish_partition(write_partition(task, progress))


class WrittenPartition:
    """A partition whose rows are all written (:func:`write_partition`) and whose last shards
    may still be uploading; :func:`finish_partition` commits them, then writes the record."""

    def __init__(self, task: ConvertTask, writer: ShardWriter):
        self.task = task
        self.writer = writer
        self.samples = 0
        self.exts: set[str] = set()
        self.budget = ErrorBudget(-1 if task.skip_bad_rows else 0, what="bad rows")

    def abort(self) -> None:
        """Discard what is not committed (the open shard, the uploads in flight)."""
        self.writer.abort()


def write_partition(
    task: ConvertTask,
    progress: Progress | None = None,
    check: Callable[[], None] | None = None,
) -> WrittenPartition:
    """The first half of :func:`convert_partition`: every row of the partition written into
    its shards. The last shard is closed and its upload started, not awaited. ``check()`` is
    called now and then while rows are written (a run raises there the error of the
    partition before this one). On error the open shard is discarded and the error, naming
    the partition, raised."""
    try:
        with without_torch():
            return _write_rows(task, progress, check)
    except Exception as exc:
        _name_partition(exc, task)
        raise


def finish_partition(written: WrittenPartition) -> PartitionRecord:
    """The second half of :func:`convert_partition`: wait until the partition's shards are
    committed, remove what a dead attempt left, then write the record. On error the
    uncommitted shards are discarded, no record is written and the error names the
    partition."""
    try:
        return _finish(written)
    except Exception as exc:
        _name_partition(exc, written.task)
        raise


def _write_rows(
    task: ConvertTask, progress: Progress | None, check: Callable[[], None] | None
) -> WrittenPartition:
    ds = _partition_dataset(task)
    encoder = RowEncoder(
        task.columns, task.spec.source, validate=task.validate, paths=task.read_roots
    )
    writer = ShardWriter(
        task.output_url,
        task.partition,
        max_samples=task.max_samples_per_shard,
        max_bytes=task.max_shard_bytes,
        storage_options=task.storage_options,
        upload_concurrency=task.upload_concurrency,
        upload_buffer_bytes=task.upload_buffer_bytes,
    )
    out = WrittenPartition(task, writer)
    pending_samples = pending_bytes = 0  # not yet reported to ``progress``
    last_report = time.monotonic()
    try:
        for row_index, row in enumerate(iter_rows(ds, task.columns, task.batch_size)):
            key = make_key(task.partition, row_index)
            try:
                fields = encoder(row, key)
            except SkipSample as exc:
                out.budget.record(
                    str(exc),
                    f"{redact(task.output_url)} partition {task.partition} key {key}",
                    exc.__cause__,
                )
                continue
            writer.write(key, fields)
            out.exts.update(fields)
            out.samples += 1
            pending_samples += 1
            if progress is not None:
                pending_bytes += sum(len(v) for v in fields.values())
            now = time.monotonic()
            if now - last_report > 0.25:
                if check is not None:
                    check()
                if progress is not None:
                    progress(pending_samples, pending_bytes)
                pending_samples = pending_bytes = 0
                last_report = now
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    if progress is not None and (pending_samples or pending_bytes):
        progress(pending_samples, pending_bytes)  # here: the caller's thread
    return out


def _finish(written: WrittenPartition) -> PartitionRecord:
    task, writer = written.task, written.writer
    try:
        shards = writer.close()
    except BaseException:
        writer.abort()
        raise
    if task.resume and lists_by_prefix(writer.fs):
        # one listing of this partition's own prefix; locally the driver cleaned before
        remove_leftovers(
            task.output_url,
            task.partition,
            [n for s in shards for n in (s.url, s.index) if n],
            task.storage_options,
            fs=writer.fs,
        )
    record = PartitionRecord(
        partition=task.partition,
        shards=shards,
        samples=written.samples,
        skipped=dict(written.budget.counts),
        fields=sorted(written.exts),
    )
    storage.write_bytes(
        storage.join_url(task.output_url, f"{PARTITIONS_DIR}/{record_name(task.partition)}"),
        record.to_json(),
        task.storage_options,
        fs=writer.fs,
    )
    log.debug(
        "partition %d done: %d samples in %d shards", task.partition, written.samples, len(shards)
    )
    return record
