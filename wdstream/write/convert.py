"""The converter's driver: a Hugging Face dataset -> WebDataset shards + manifest, resumable.

:func:`convert` checks the output, plans the partitions (:mod:`.plan`), skips those that have a
record, runs the others (:mod:`.partition`) on an executor (:mod:`.executors`), cleans what
dead attempts left (:mod:`.output`) and writes ``OUTPUT/manifest.json`` last.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from tqdm.auto import tqdm

from .. import storage
from ..config import Config, load_config
from ..errors import StorageError, redact
from ..format.manifest import (
    MANIFEST_NAME,
    PARTITIONS_DIR,
    Manifest,
    PartitionRecord,
    load_manifest,
)
from ..format.schema import modality_of
from ..format.shardtable import save_compact
from ..registry import Entry
from ..rows.source import HFSource
from .executors import Executor, check_executor, make_executor
from .executors.local import LocalExecutor
from .output import JOB_NAME, Output, RecordLog, claim_job, records_per_batch
from .partition import ConvertTask, convert_partition
from .plan import JobPlan, columns_dict, plan_job
from .runs import convert_run, make_runs, run_length
from .segments import details_name, segments_manifest, start_append
from .torchless import without_torch

__all__ = ["convert", "convert_entry"]

log = logging.getLogger(__name__)


def _manifest(plan: JobPlan, records: dict[int, PartitionRecord], output_url: str) -> Manifest:
    """The job's manifest from its records: the one place it is built (the records hold
    shards, never samples, so the driver's memory grows with shards only)."""
    shards, skipped, fields = [], {}, set()
    for p in sorted(records):
        rec = records[p]
        shards.extend(rec.shards)
        for reason, n in rec.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
        fields.update(rec.fields)
    options = dict(plan.options, partitions=plan.n_partitions, columns=columns_dict(plan.columns))
    return Manifest(
        shards=shards,
        source=plan.spec.to_dict(),
        skipped=skipped,
        fields=sorted(fields),
        options=options,
        base_url=output_url,
    )


class _Bar:
    """tqdm over samples, with MB/s; a no-op when quiet."""

    def __init__(self, total: int | None, initial: int, quiet: bool):
        self.bar = None
        self.start = time.monotonic()
        self.nbytes = 0
        if not quiet:
            self.bar = tqdm(
                total=total,
                initial=initial,
                unit=" samples",
                unit_scale=True,
                desc="convert",
                dynamic_ncols=True,
            )

    def __call__(self, samples: int, nbytes: int) -> None:
        self.nbytes += nbytes
        if self.bar is not None:
            elapsed = max(time.monotonic() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.nbytes / elapsed / 1e6:.1f} MB/s", refresh=False)
            self.bar.update(samples)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def convert(
    source: str,
    output: str,
    *,
    name: str | None = None,
    split: str | None = None,
    data_files: Any = None,
    revision: str | None = None,
    config: Config | None = None,
    executor: Executor | str | None = None,
    on_plan: Callable[[JobPlan], None] | None = None,
    append: bool = False,
    allow_duplicate_source: bool = False,
    **overrides: Any,
) -> Manifest:
    """Convert a Hugging Face dataset into WebDataset shards under ``output``; returns the
    Manifest.

    ``source``, ``name``, ``split``, ``data_files`` and ``revision`` are passed to
    ``datasets.load_dataset(..., streaming=True)``. Settings come from ``config`` (a
    :class:`~wdstream.config.Config`) updated with ``overrides`` (Config field names, e.g.
    ``max_samples_per_shard=500, workers=4, storage_options={...}``).

    Re-running with the same arguments resumes: finished partitions are skipped, unfinished
    ones redone; a finished job is left unchanged. Raises StorageError/CredentialsError for an
    unwritable output, SourceError/HubUnreachableError for the source, ColumnError for a
    missing column, ConfigError when ``output`` holds a job made with other options, and
    CleanupError when what dead attempts left cannot be cleaned (every finished partition is
    recorded; re-running finishes the job and writes the manifest).

    ``executor`` is an :class:`~wdstream.write.executors.Executor` to run the partitions on (it is
    left open), or ``"local"`` / ``"ray"`` (``config.executor``; Ray joins
    ``config.ray_address`` or starts a local Ray). A failed partition stops the job with its
    own error, which names the partition. ``on_plan(plan)`` is called once the source's
    columns and partitions are known, before any work (the CLI prints the column mapping).

    ``append=True`` adds this source to the finished dataset in ``output`` as a new segment
    (:mod:`.segments`): new partitions numbered after its last one, a manifest covering both;
    nothing finished is rewritten. Re-running the same append resumes or is a no-op. Raises
    ConfigError when ``output`` holds no finished conversion, an unfinished append of another
    source or options (another append may be running: two appends that start at once never
    both take one segment, the second one is refused), or the same source with other options
    (it would duplicate its rows) unless ``allow_duplicate_source=True``.
    """
    if isinstance(executor, str):
        overrides["executor"], executor = executor, None
    config = (
        (config or load_config()).replace(**overrides) if overrides else (config or load_config())
    )
    if executor is None:
        check_executor(config)  # e.g. without Ray, say how to install it before any work
    spec = HFSource(
        source=source,
        name=name,
        split=split or config.split,
        data_files=tuple(data_files) if isinstance(data_files, list) else data_files,
        revision=revision,
    )
    output = output.rstrip("/")
    opts = dict(config.storage_options)
    out = Output(output, opts)
    # no write probe: the job file is the output's first request (an unreachable bucket,
    # missing credentials or a path under a file fail here) and, for a fresh output, its
    # first write too (claim_job, before any partition runs). A resume reads the finished
    # partitions' records and probes that it may still write (requests) while the source
    # is opened and planned (CPU).
    # a refused port or an unknown host fails here within seconds, naming the endpoint
    # (the clients would retry for 15-90 s); one TCP connection, remembered per process
    storage.check_reachable(output, opts)
    reading = probe = records_future = None
    try:
        resuming = out.read(f"{PARTITIONS_DIR}/{JOB_NAME}") is not None
    except StorageError as exc:
        raise storage.as_write_error(exc, output) from exc.__cause__
    if resuming:
        reading = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="records")
        probe = reading.submit(storage.check_writable, output, opts)
        records_future = reading.submit(out.records)
    early = None  # the pool's start-up (imports in a fresh process) overlaps the planning
    if (
        executor is None
        and config.executor == "local"
        and (config.workers or os.cpu_count() or 1) > 1
    ):
        early = make_executor(config)
        early.start(convert_run)
    try:
        with without_torch():
            plan = plan_job(spec, config)
        if on_plan is not None:
            on_plan(plan)
        segment = (
            start_append(out, plan, allow_duplicate_source=allow_duplicate_source)
            if append
            else None
        )
        if probe is not None:
            probe.result()
        fresh = segment.fresh if segment else _claim(out, plan)
        records = (
            {} if (fresh and not segment) or records_future is None else records_future.result()
        )
        if segment is not None and any(p not in records for p in range(segment.first_partition)):
            # another append finished a segment while this one started: the records read
            # early lack its partitions, which this segment's manifest must list too
            log.info("%s: reading the records again (another append finished)", redact(output))
            records = out.records()
    except BaseException:
        if early is not None:
            early.close()
        raise
    finally:
        if reading is not None:
            reading.shutdown(wait=True, cancel_futures=True)
    first = segment.first_partition if segment else 0
    pending = [first + p for p in range(plan.n_partitions) if first + p not in records]
    if not pending and (segment.finished if segment else out.read(MANIFEST_NAME) is not None):
        if early is not None:
            early.close()
        log.info(
            "%s is complete (%d partitions, %d samples); nothing to do",
            redact(output),
            plan.n_partitions,
            sum(r.samples for r in records.values()),
        )
        return load_manifest(output, opts)
    if records:
        log.info("resuming: %d of %d partitions already done", len(records), plan.n_partitions)
    out.clean(pending)
    job = uuid.uuid4().hex
    tasks = (
        ConvertTask(
            spec=spec,
            columns=plan.columns,
            partition=p,
            n_partitions=plan.n_partitions,
            output_url=output,
            max_samples_per_shard=config.max_samples_per_shard,
            max_shard_bytes=config.max_shard_bytes,
            limit=plan.limit_of(p - first),
            skip_bad_rows=config.skip_bad_rows,
            storage_options=opts,
            job=job,
            validate=config.validate,
            source_shards=plan.source_shards,
            resume=not fresh,
            first_partition=first,
            upload_concurrency=config.upload_concurrency,
            upload_buffer_bytes=config.upload_buffer_bytes,
            files=plan.files_of(p - first),
            read_roots=plan.read_roots,
        )
        for p in pending
    )  # made as the executor takes them: memory bounded by in-flight
    batches = RecordLog(out, job[:12], records_per_batch(plan.n_partitions))
    bar = _Bar(
        plan.total_rows, sum(r.samples for p, r in records.items() if p >= first), config.quiet
    )
    own_executor = executor is None
    executor = executor or early or make_executor(config)
    log.info("running %d partition(s)", len(pending))
    try:
        for record in _run(executor, tasks, len(pending), bar):
            records[record.partition] = record
            batches.add(record)
    finally:
        bar.close()
        if own_executor:
            executor.close()
        batches.flush()
    log.info("all %d partitions done; cleaning up", plan.n_partitions)
    out.sweep()  # uploads / temp files of attempts that died; CleanupError: re-run finishes
    if segment:  # every segment's shards; a new details part: the old manifest stays whole
        manifest = segments_manifest(segment, records, output)
        save_compact(manifest, output, opts, details_name=details_name(segment.index))
    else:
        manifest = _manifest(plan, records, output)
        save_compact(manifest, output, opts)  # version 2: reader part + details part
    _warn_mixed_extensions(manifest)
    log.info(
        "wrote %s: %d samples in %d shards (%.1f MB); skipped %s",
        redact(output),
        manifest.samples,
        len(manifest.shards),
        manifest.bytes / 1e6,
        manifest.skipped or "none",
    )
    return manifest


def _claim(out: Output, plan: JobPlan) -> bool:
    """:func:`.output.claim_job`; a store error says the output cannot be written (for a fresh
    output the job file is the first write)."""
    try:
        return claim_job(out, plan)
    except StorageError as exc:
        raise storage.as_write_error(exc, out.url) from exc.__cause__


def _run(
    executor: Executor, tasks: Iterator[ConvertTask], n: int, progress: _Bar
) -> Iterator[PartitionRecord]:
    """The records of ``tasks`` (``n`` of them) as the executor finishes them. A local pool's
    worker converts runs of consecutive partitions (:mod:`.runs`: each partition's last
    upload overlaps the next one's rows); another executor (Ray) gets one task a partition,
    since a cluster has the CPUs to spread them."""
    if isinstance(executor, LocalExecutor):
        runs = make_runs(tasks, run_length(n, executor.workers))
        for records in executor.map_unordered(convert_run, runs, progress=progress):
            yield from records
    else:
        yield from executor.map_unordered(convert_partition, tasks, progress=progress)


def _warn_mixed_extensions(manifest: Manifest) -> None:
    """Say so when one modality was written under several extensions: webdataset readers cope,
    but ``datasets.load_dataset("webdataset")`` refuses such shards."""
    for modality, option in (("image", "image_ext"), ("audio", "audio_ext")):
        exts = sorted(e for e in manifest.fields if modality_of(e) == modality)
        if len(exts) > 1:
            flag = option.replace("_", "-")
            log.warning(
                "the %s members have several extensions (%s), each named by its real "
                "format; datasets.load_dataset('webdataset', ...) refuses shards whose "
                "samples differ in their member types. To name them all .%s (bytes "
                "untouched; decoders read the format from the bytes), convert with "
                "--%s %s (config %s)",
                modality,
                ", ".join(exts),
                exts[0],
                flag,
                exts[0],
                option,
            )


def convert_entry(
    entry: Entry,
    output: str,
    config: Config | None = None,
    on_plan: Callable[[JobPlan], None] | None = None,
    append: bool = False,
    allow_duplicate_source: bool = False,
    **overrides: Any,
) -> Manifest:
    """Convert one registry dataset with its column mapping and text template (see
    :func:`convert`; ``append`` and ``allow_duplicate_source`` as there); returns the
    Manifest."""
    config = (config or Config()).replace(
        image_column=entry.image_column,
        audio_column=entry.audio_column,
        text_columns=entry.template_columns,
        text_template=entry.text_template or None,
        **overrides,
    )
    return convert(
        entry.hub_id,
        output,
        name=entry.config,
        split=entry.split,
        revision=entry.revision,
        config=config,
        on_plan=on_plan,
        append=append,
        allow_duplicate_source=allow_duplicate_source,
    )
