"""The converter: a Hugging Face dataset -> WebDataset shards + manifest, resumable, parallel.

The work is split into partitions that follow the source's own shards. Each partition is one
:class:`ConvertTask`, run by the pure, picklable :func:`convert_partition` on any executor
(a local process pool, or Ray: :mod:`wdstream.executors_ray`). A partition streams its rows through
:class:`~wdstream.sources.hf.RowEncoder` into a :class:`~wdstream.writer.ShardWriter`
(commit-or-abort shards) and writes ``OUTPUT/_partitions/part-NNNNN.json`` only after all of
its shards are committed. The driver (:func:`convert`) checks the output, plans the partitions,
skips those that have a record, and writes ``OUTPUT/manifest.json`` last.

Keys are ``make_key(partition, row)`` with ``row`` the row's index within its partition
(skipped rows included), so keys and shard bytes are the same whatever the number of workers.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from . import storage
from .config import Config, load_config
from .errors import ConfigError, ErrorBudget, SkipSample, StorageError, WdstreamError, redact
from .executors import Executor, LocalExecutor, Progress, merge_secrets, split_secrets
from .manifest import (
    MANIFEST_NAME,
    PARTITIONS_DIR,
    Manifest,
    PartitionRecord,
    load_manifest,
)
from .schema import make_key
from .sources.hf import ColumnMap, SourceSpec
from .writer import ShardWriter

__all__ = ["convert", "convert_partition", "ConvertTask", "plan_job", "JOB_NAME"]

log = logging.getLogger(__name__)

JOB_NAME = "_job.json"  # in OUTPUT/_partitions: the options the partitions were made with
_RECORD_RE = re.compile(r"^part-(\d{5,})\.json$")
_PARTIAL_RE = re.compile(r"^\..+\.partial-[0-9a-f]+$")


def record_name(partition: int) -> str:
    return f"part-{partition:05d}.json"


@dataclass
class ConvertTask:
    """Everything one partition needs; picklable, credentials kept out of ``repr``.

    ``storage_options`` travel with the task (a process pool pickles them into a pipe); they
    are never logged. A cluster executor ships the task from :meth:`without_secrets` and the
    credentials apart. ``limit`` caps the rows read (only used with a single partition).
    """

    spec: SourceSpec
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

    def __str__(self) -> str:
        return (f"partition {self.partition} of {self.n_partitions} "
                f"({self.spec.source} -> {redact(self.output_url)})")

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
    if isinstance(exc, WdstreamError) and exc.args and isinstance(exc.args[0], str):
        if not exc.args[0].startswith(where):
            exc.args = (f"{where}: {exc.args[0]}", *exc.args[1:])
    elif hasattr(exc, "add_note"):
        exc.add_note(f"while converting {task}")


_OPENED: dict[str, Any] = {}  # per process: the prepared source of the current job


def _partition_dataset(task: ConvertTask):
    """The task's rows: the source opened (once per job and process, as ``load_dataset``
    resolves every data file of the dataset, a Hub listing included) and sharded."""
    from .sources.hf import open_source, prepare

    key = f"{task.job}|{task.spec!r}|{task.columns!r}"
    ds = _OPENED.get(key) if task.job else None
    if ds is None:
        ds = prepare(open_source(task.spec, check_hub=False), task.columns)
        _OPENED.clear()
        if task.job:
            _OPENED[key] = ds
    if task.n_partitions > 1:
        if ds.n_shards != task.n_partitions:
            raise ConfigError(
                f"{task.spec.source} now has {ds.n_shards} source shards, not the "
                f"{task.n_partitions} this job was planned with; its files changed during the "
                f"conversion. Convert it again into a new OUTPUT", url=task.output_url)
        ds = ds.shard(num_shards=task.n_partitions, index=task.partition, contiguous=True)
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
    try:
        return _convert_partition(task, progress)
    except Exception as exc:
        _name_partition(exc, task)
        raise


def _convert_partition(task: ConvertTask, progress: Progress | None) -> PartitionRecord:
    from .sources.hf import RowEncoder, iter_rows

    ds = _partition_dataset(task)
    encoder = RowEncoder(task.columns, task.spec.source)
    budget = ErrorBudget(-1 if task.skip_bad_rows else 0, what="bad rows")
    writer = ShardWriter(task.output_url, task.partition, max_samples=task.max_samples_per_shard,
                         max_bytes=task.max_shard_bytes, storage_options=task.storage_options)
    exts: set[str] = set()
    samples = 0
    pending_samples = pending_bytes = 0
    last_report = time.monotonic()
    try:
        for row_index, row in enumerate(iter_rows(ds, task.columns, task.batch_size)):
            key = make_key(task.partition, row_index)
            try:
                fields = encoder(row, key)
            except SkipSample as exc:
                budget.record(str(exc), f"{redact(task.output_url)} partition "
                              f"{task.partition} key {key}", exc.__cause__)
                continue
            writer.write(key, fields)
            exts.update(fields)
            samples += 1
            if progress is not None:
                pending_samples += 1
                pending_bytes += sum(len(v) for v in fields.values())
                now = time.monotonic()
                if now - last_report > 0.25:
                    progress(pending_samples, pending_bytes)
                    pending_samples = pending_bytes = 0
                    last_report = now
        shards = writer.close()
    except BaseException:
        writer.abort()
        raise
    if progress is not None and (pending_samples or pending_bytes):
        progress(pending_samples, pending_bytes)
    record = PartitionRecord(partition=task.partition, shards=shards, samples=samples,
                             skipped=dict(budget.counts), fields=sorted(exts))
    storage.write_bytes(
        storage.join_url(task.output_url, f"{PARTITIONS_DIR}/{record_name(task.partition)}"),
        record.to_json(), task.storage_options)
    log.debug("partition %d done: %d samples in %d shards", task.partition, samples,
              len(shards))
    return record


# --------------------------------------------------------------------------- planning

@dataclass
class JobPlan:
    """The partitions of a job and the options that shape its output (``_job.json``)."""

    spec: SourceSpec
    columns: ColumnMap
    n_partitions: int
    total_rows: int | None
    options: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.spec.to_dict(), "columns": _columns_dict(self.columns),
                "partitions": self.n_partitions, "options": self.options}


def _columns_dict(columns: ColumnMap) -> dict[str, Any]:
    d = asdict(columns)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def plan_job(spec: SourceSpec, config: Config) -> JobPlan:
    """Open the source once: find the columns and the partitions (the source's shards).

    Raises SourceError/HubUnreachableError for the source and ColumnError for a bad column.
    """
    from .sources.hf import open_source, resolve_columns

    ds = open_source(spec)
    features = ds.features
    if features is not None:
        names = list(features)
    else:  # a generator of Python objects: look at the first row
        first = next(iter(ds), None)
        names = list(first) if first else []
    columns = resolve_columns(names, features, image=config.image_column,
                              audio=config.audio_column, text=config.text_columns)
    if config.text_template:
        import dataclasses

        columns = dataclasses.replace(columns, template=config.text_template)
    if not (columns.image or columns.audio or columns.text):
        log.warning("no image, audio or text column found among %s; samples will only hold "
                    ".json (name them with --image-column/--audio-column/--text-column)", names)
    if columns.dropped:
        log.warning("columns %s hold images/audio besides the chosen ones; they are not "
                    "written", list(columns.dropped))
    n_partitions = 1 if config.limit is not None else max(1, int(ds.n_shards))
    total = None
    try:
        split_info = (ds.info.splits or {}).get(spec.split)
        total = int(split_info.num_examples) if split_info and split_info.num_examples else None
    except (AttributeError, TypeError, KeyError):
        total = None
    if config.limit is not None:
        total = min(total, config.limit) if total else config.limit
    options = {"max_samples_per_shard": config.max_samples_per_shard,
               "max_shard_bytes": config.max_shard_bytes, "limit": config.limit,
               "skip_bad_rows": config.skip_bad_rows}
    log.info("source %s: columns image=%s audio=%s text=%s json=%s; %d partition(s)",
             spec.source, columns.image, columns.audio, list(columns.text), list(columns.extra),
             n_partitions)
    return JobPlan(spec=spec, columns=columns, n_partitions=n_partitions, total_rows=total,
                   options=options)


# --------------------------------------------------------------------------- output state

class _Output:
    """The output folder: records, job file, stale-shard cleanup."""

    def __init__(self, url: str, storage_options: dict[str, Any]):
        self.url = url.rstrip("/")
        self.storage_options = storage_options
        self.fs, self.path = storage.url_to_fs(self.url, storage_options)

    def _ls(self, path: str) -> list[str]:
        try:
            self.fs.invalidate_cache(path)
            return [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise storage.translate_error(exc, self.url, "list") from exc

    def read(self, name: str) -> bytes | None:
        try:
            return storage.read_bytes(storage.join_url(self.url, name), self.storage_options)
        except StorageError as exc:
            if isinstance(exc.__cause__, FileNotFoundError) or "does not exist" in str(exc):
                return None
            raise

    def records(self) -> dict[int, PartitionRecord]:
        out = {}
        for name in self._ls(f"{self.path}/{PARTITIONS_DIR}"):
            m = _RECORD_RE.match(name)
            if m:
                data = self.read(f"{PARTITIONS_DIR}/{name}")
                if data is not None:
                    out[int(m.group(1))] = PartitionRecord.from_json(data)
        return out

    def clean(self, pending: set[int]) -> None:
        """Before a run (nothing may be running): remove what unfinished partitions left
        (their committed shards and indexes, without a record), then :meth:`sweep`."""
        prefixes = tuple(f"shard-{p:05d}-" for p in pending)
        if prefixes:
            self._remove([f"{self.path}/{name}" for name in self._ls(self.path)
                          if name.startswith(prefixes)])
        self.sweep()

    def sweep(self) -> None:
        """Remove what dead attempts left that never became visible: local ``.partial-*``
        temp files and (S3) pending multipart uploads of shards. Only while no partition of
        this output is running (before a run, or once all its partitions are done)."""
        stale = [f"{self.path}/{name}" for name in self._ls(self.path) if _PARTIAL_RE.match(name)]
        stale += [f"{self.path}/{PARTITIONS_DIR}/{name}"
                  for name in self._ls(f"{self.path}/{PARTITIONS_DIR}") if _PARTIAL_RE.match(name)]
        self._remove(stale)
        self._abort_uploads(("shard-",))

    def _remove(self, stale: list[str]) -> None:
        for path in stale:
            log.info("removing %s left by an unfinished run", posixpath.basename(path))
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass
            except Exception as exc:
                raise storage.translate_error(exc, self.url, "clean") from exc

    def _abort_uploads(self, prefixes: tuple[str, ...]) -> None:
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) \
            else (self.fs.protocol,)
        if not any(p in ("s3", "s3a") for p in protocols):
            return
        bucket, _, key_prefix = self.path.partition("/")
        prefix = (key_prefix.rstrip("/") + "/") if key_prefix else ""
        try:
            resp = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        except Exception as exc:  # listing uploads may be forbidden; not fatal
            log.warning("could not list pending multipart uploads under %s (%s); any left by "
                        "a killed run stay invisible but may cost storage until a lifecycle "
                        "rule removes them", redact(self.url), type(exc).__name__)
            return
        for up in resp.get("Uploads", []):
            name = up["Key"][len(prefix):]
            if name.startswith(prefixes):
                log.info("aborting pending multipart upload of %s", name)
                self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=up["Key"],
                                UploadId=up["UploadId"])


def _check_job(out: _Output, plan: JobPlan) -> bool:
    """Compare with the job already in OUTPUT; returns True when OUTPUT is a fresh folder."""
    wanted = plan.to_dict()
    data = out.read(f"{PARTITIONS_DIR}/{JOB_NAME}")
    if data is None:
        if out.read(MANIFEST_NAME) is not None:
            raise ConfigError(
                f"{redact(out.url)} already holds a dataset (manifest.json) that was not made "
                f"by this conversion; choose another OUTPUT or delete it first", url=out.url)
        return True
    found = json.loads(data)
    if found != wanted:
        diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        raise ConfigError(
            f"{redact(out.url)} holds a conversion made with other options (differs in "
            f"{diff}: {[found.get(k) for k in diff]} there, {[wanted.get(k) for k in diff]} "
            f"now). Re-run with the same options to resume, or choose another OUTPUT",
            url=out.url)
    return False


def _manifest(plan: JobPlan, records: dict[int, PartitionRecord], output_url: str) -> Manifest:
    shards, skipped, fields = [], {}, set()
    for p in sorted(records):
        rec = records[p]
        shards.extend(rec.shards)
        for reason, n in rec.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
        fields.update(rec.fields)
    options = dict(plan.options, partitions=plan.n_partitions, columns=_columns_dict(plan.columns))
    return Manifest(shards=shards, source=plan.spec.to_dict(), skipped=skipped,
                    fields=sorted(fields), options=options, base_url=output_url)


# --------------------------------------------------------------------------- driver

class _Bar:
    """tqdm over samples, with MB/s; a no-op when quiet."""

    def __init__(self, total: int | None, initial: int, quiet: bool):
        self.bar = None
        self.start = time.monotonic()
        self.nbytes = 0
        if not quiet:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit=" samples", unit_scale=True,
                            desc="convert", dynamic_ncols=True)

    def __call__(self, samples: int, nbytes: int) -> None:
        self.nbytes += nbytes
        if self.bar is not None:
            elapsed = max(time.monotonic() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.nbytes / elapsed / 1e6:.1f} MB/s", refresh=False)
            self.bar.update(samples)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _make_executor(config: Config) -> Executor:
    """The executor ``config.executor`` names: ``local`` (a process pool of ``workers``) or
    ``ray`` (at ``ray_address``, or a local Ray with ``workers`` CPUs)."""
    if config.executor == "local":
        return LocalExecutor(config.workers or os.cpu_count() or 1)
    if config.executor == "ray":
        from .executors_ray import RayExecutor

        return RayExecutor(address=config.ray_address, num_cpus=config.workers)
    raise ConfigError(f"executor {config.executor!r} is not available; use 'local' or 'ray'")


def convert(source: str, output: str, *, name: str | None = None, split: str | None = None,
            data_files: Any = None, revision: str | None = None, config: Config | None = None,
            executor: Executor | str | None = None, **overrides: Any) -> Manifest:
    """Convert a Hugging Face dataset into WebDataset shards under ``output``; returns the
    Manifest.

    ``source``, ``name``, ``split``, ``data_files`` and ``revision`` are passed to
    ``datasets.load_dataset(..., streaming=True)``. Settings come from ``config`` (a
    :class:`~wdstream.config.Config`) updated with ``overrides`` (Config field names, e.g.
    ``max_samples_per_shard=500, workers=4, storage_options={...}``).

    Re-running with the same arguments resumes: finished partitions are skipped, unfinished
    ones redone; a finished job is left unchanged. Raises StorageError/CredentialsError for an
    unwritable output, SourceError/HubUnreachableError for the source, ColumnError for a
    missing column, ConfigError when ``output`` holds a job made with other options.

    ``executor`` is an :class:`~wdstream.executors.Executor` to run the partitions on (it is
    left open), or ``"local"`` / ``"ray"`` (``config.executor``; Ray joins
    ``config.ray_address`` or starts a local Ray). A failed partition stops the job with its
    own error, which names the partition.
    """
    if isinstance(executor, str):
        overrides["executor"], executor = executor, None
    config = (config or load_config()).replace(**overrides) if overrides else \
        (config or load_config())
    if executor is None and config.executor == "ray":
        from .executors_ray import import_ray

        import_ray()  # without Ray, say how to install it before any work
    spec = SourceSpec(source=source, name=name, split=split or config.split,
                      data_files=tuple(data_files) if isinstance(data_files, list) else data_files,
                      revision=revision)
    output = output.rstrip("/")
    opts = dict(config.storage_options)
    storage.check_writable(output, opts)
    plan = plan_job(spec, config)
    out = _Output(output, opts)
    fresh = _check_job(out, plan)
    if fresh:
        storage.write_bytes(storage.join_url(output, f"{PARTITIONS_DIR}/{JOB_NAME}"),
                            json.dumps(plan.to_dict(), indent=1, sort_keys=True).encode(), opts)
    records = out.records()
    pending = [p for p in range(plan.n_partitions) if p not in records]
    if not pending and out.read(MANIFEST_NAME) is not None:
        log.info("%s is complete (%d partitions, %d samples); nothing to do",
                 redact(output), plan.n_partitions, sum(r.samples for r in records.values()))
        return load_manifest(output, opts)
    if records:
        log.info("resuming: %d of %d partitions already done", len(records), plan.n_partitions)
    out.clean(set(pending))
    job = uuid.uuid4().hex
    tasks = [ConvertTask(spec=spec, columns=plan.columns, partition=p,
                         n_partitions=plan.n_partitions, output_url=output,
                         max_samples_per_shard=config.max_samples_per_shard,
                         max_shard_bytes=config.max_shard_bytes, limit=config.limit,
                         skip_bad_rows=config.skip_bad_rows, storage_options=opts,
                         job=job)
             for p in pending]
    bar = _Bar(plan.total_rows, sum(r.samples for r in records.values()), config.quiet)
    own_executor = executor is None
    executor = executor or _make_executor(config)
    try:
        for record in executor.map_unordered(convert_partition, tasks, progress=bar):
            records[record.partition] = record
    finally:
        bar.close()
        if own_executor:
            executor.close()
    out.sweep()  # temp files / uploads of attempts that died and were retried
    manifest = _manifest(plan, records, output)
    manifest.save(output, opts)
    log.info("wrote %s: %d samples in %d shards (%.1f MB); skipped %s", redact(output),
             manifest.samples, len(manifest.shards), manifest.bytes / 1e6,
             manifest.skipped or "none")
    return manifest
