"""The converter's driver: a Hugging Face dataset -> WebDataset shards + manifest, resumable.

:func:`convert` checks the output, plans the partitions (:mod:`.plan`), skips those that have a
record, runs the others (:mod:`.partition`) on an executor (:mod:`.executors`), cleans what
dead attempts left (:mod:`.output`) and writes ``OUTPUT/manifest.json`` last.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import time
import uuid
from typing import Any

from tqdm.auto import tqdm

from .. import storage
from ..config import Config, load_config
from ..errors import redact
from ..format.manifest import (
    FORMAT,
    MANIFEST_NAME,
    PARTITIONS_DIR,
    VERSION,
    Manifest,
    PartitionRecord,
    ShardInfo,
    load_manifest,
)
from ..registry import Entry
from .executors import Executor, check_executor, make_executor
from .output import JOB_NAME, Output, RecordLog, check_job, records_per_batch
from .partition import ConvertTask, convert_partition
from .plan import JobPlan, columns_dict, plan_job
from .sources.hf import HFSource

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
    return Manifest(shards=shards, source=plan.spec.to_dict(), skipped=skipped,
                    fields=sorted(fields), options=options, base_url=output_url)


#: above this many shards the manifest is streamed as a multipart upload instead of one PUT
STREAM_MANIFEST_SHARDS = 100_000


def _manifest_chunks(m: Manifest):
    """``m`` as JSON, piece by piece: the same document as :meth:`Manifest.to_dict`, one
    shard a line, each written by the C encoder (``indent`` would use the pure-Python one:
    28 s and 1 GB more at 500k shards)."""
    d = {"format": FORMAT, "version": VERSION, "samples": m.samples, "bytes": m.bytes,
         "shards": [], "source": m.source, "skipped": dict(sorted(m.skipped.items())),
         "fields": sorted(m.fields), "options": m.options}
    names = list(ShardInfo.__dataclass_fields__)
    yield b"{\n"
    items = list(d.items())
    for i, (key, value) in enumerate(items):
        end = ",\n" if i < len(items) - 1 else "\n"
        if key == "shards" and m.shards:
            yield b' "shards": [\n'
            last = len(m.shards) - 1
            for j, s in enumerate(m.shards):
                line = json.dumps({n: getattr(s, n) for n in names})
                yield f"  {line}{',' if j < last else ''}\n".encode()
            yield f" ]{end}".encode()
        else:
            yield f" {json.dumps(key)}: {json.dumps(value)}{end}" \
                .encode()
    yield b"}\n"


def _save_manifest(m: Manifest, output: str, opts: dict[str, Any]) -> None:
    """Write ``OUTPUT/manifest.json``: one PUT, or streamed for a very large job, so the
    driver never holds the manifest's JSON beside its records."""
    url = storage.join_url(output, MANIFEST_NAME)
    if len(m.shards) <= STREAM_MANIFEST_SHARDS:
        storage.write_bytes(url, b"".join(_manifest_chunks(m)), opts)
        return
    with storage.atomic_write(url, opts) as f:
        buf = bytearray()
        for chunk in _manifest_chunks(m):
            buf += chunk
            if len(buf) >= 8 * 2**20:
                f.write(bytes(buf))
                buf.clear()
        f.write(bytes(buf))


class _Bar:
    """tqdm over samples, with MB/s; a no-op when quiet."""

    def __init__(self, total: int | None, initial: int, quiet: bool):
        self.bar = None
        self.start = time.monotonic()
        self.nbytes = 0
        if not quiet:
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
    missing column, ConfigError when ``output`` holds a job made with other options, and
    CleanupError when what dead attempts left cannot be cleaned (every finished partition is
    recorded; re-running finishes the job and writes the manifest).

    ``executor`` is an :class:`~wdstream.executors.Executor` to run the partitions on (it is
    left open), or ``"local"`` / ``"ray"`` (``config.executor``; Ray joins
    ``config.ray_address`` or starts a local Ray). A failed partition stops the job with its
    own error, which names the partition.
    """
    if isinstance(executor, str):
        overrides["executor"], executor = executor, None
    config = (config or load_config()).replace(**overrides) if overrides else \
        (config or load_config())
    if executor is None:
        check_executor(config)  # e.g. without Ray, say how to install it before any work
    spec = HFSource(source=source, name=name, split=split or config.split,
                      data_files=tuple(data_files) if isinstance(data_files, list) else data_files,
                      revision=revision)
    output = output.rstrip("/")
    opts = dict(config.storage_options)
    storage.check_writable(output, opts)
    out = Output(output, opts)
    # a resume reads the finished partitions' records (requests) while the source is
    # opened and planned (CPU); a fresh output skips it
    reading = None
    if out.read(f"{PARTITIONS_DIR}/{JOB_NAME}") is not None:
        reading = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="records")
    records_future = reading.submit(out.records) if reading else None
    try:
        plan = plan_job(spec, config)
        fresh = check_job(out, plan)
        if fresh:
            storage.write_bytes(storage.join_url(output, f"{PARTITIONS_DIR}/{JOB_NAME}"),
                                json.dumps(plan.to_dict(), indent=1, sort_keys=True).encode(),
                                opts)
        records = {} if fresh or records_future is None else records_future.result()
    finally:
        if reading is not None:
            reading.shutdown(wait=True, cancel_futures=True)
    pending = [p for p in range(plan.n_partitions) if p not in records]
    if not pending and out.read(MANIFEST_NAME) is not None:
        log.info("%s is complete (%d partitions, %d samples); nothing to do",
                 redact(output), plan.n_partitions, sum(r.samples for r in records.values()))
        return load_manifest(output, opts)
    if records:
        log.info("resuming: %d of %d partitions already done", len(records), plan.n_partitions)
    out.clean(pending)
    job = uuid.uuid4().hex
    tasks = (ConvertTask(spec=spec, columns=plan.columns, partition=p,
                         n_partitions=plan.n_partitions, output_url=output,
                         max_samples_per_shard=config.max_samples_per_shard,
                         max_shard_bytes=config.max_shard_bytes, limit=plan.limit_of(p),
                         skip_bad_rows=config.skip_bad_rows, storage_options=opts,
                         job=job, source_shards=plan.source_shards, resume=not fresh)
             for p in pending)  # made as the executor takes them: memory bounded by in-flight
    batches = RecordLog(out, job[:12], records_per_batch(plan.n_partitions))
    bar = _Bar(plan.total_rows, sum(r.samples for r in records.values()), config.quiet)
    own_executor = executor is None
    executor = executor or make_executor(config)
    log.info("running %d partition(s)", len(pending))
    try:
        for record in executor.map_unordered(convert_partition, tasks, progress=bar):
            records[record.partition] = record
            batches.add(record)
    finally:
        bar.close()
        if own_executor:
            executor.close()
        batches.flush()
    log.info("all %d partitions done; cleaning up", plan.n_partitions)
    out.sweep()  # uploads / temp files of attempts that died; CleanupError: re-run finishes
    manifest = _manifest(plan, records, output)
    _save_manifest(manifest, output, opts)
    log.info("wrote %s: %d samples in %d shards (%.1f MB); skipped %s", redact(output),
             manifest.samples, len(manifest.shards), manifest.bytes / 1e6,
             manifest.skipped or "none")
    return manifest


def convert_entry(entry: Entry, output: str, config: Config | None = None,
                  **overrides: Any) -> Manifest:
    """Convert one registry dataset with its column mapping and text template (see
    :func:`convert`); returns the Manifest."""
    config = (config or Config()).replace(
        image_column=entry.image_column, audio_column=entry.audio_column,
        text_columns=entry.template_columns, text_template=entry.text_template or None,
        **overrides)
    return convert(entry.hub_id, output, name=entry.config, split=entry.split,
                   revision=entry.revision, config=config)
