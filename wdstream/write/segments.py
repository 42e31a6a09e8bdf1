"""Appending to a finished output: each job on an output is a numbered *segment*.

Segment 0 is the first conversion (``_partitions/_job.json``). ``convert(..., append=True)``
adds segment ``k`` with its own job file ``_partitions/_job-0000k.json`` (the plan, as
``_job.json``, plus ``first_partition``): its partitions are numbered after the previous
segments' last one, so its shard names (``shard-PPPPP-*``), keys and records never collide
with finished work, which is never rewritten. The manifest is written last, as for any job,
listing every segment's shards in partition order; its ``source`` is then
``{"segments": [...]}`` (each segment's source, columns, options and partitions) and its
details part gets a name of its own (``manifest.details-0000k.json``), so the manifest of the
finished segments stays whole until the new ``manifest.json`` replaces it in one write.

A segment is finished once the manifest covers it. A crash leaves the last segment's job file
and some records; re-running the same ``--append`` command finds that segment by its plan and
finishes it; re-running a finished append is a no-op.

Claims. An append takes its segment by creating ``_job-0000k.json`` with the store's
create-if-absent request (:func:`wdstream.storage.create_new`), never by a plain write: of two
appends that read the same segments at once, one creates the job file and the other is told
the name is taken. That one reads the job files again and goes on from what it finds: the
other's segment, unfinished, stops it with a ConfigError (wait, then re-run); finished, it
claims the next number. No append ever replaces another's job file, so no source is lost.

Same source. An append of a source (name, config, split and data files) that an earlier segment
already holds, with other options, would add its rows a second time: it is refused unless
``allow_duplicate_source`` is set.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from .. import storage
from ..errors import ConfigError, redact
from ..format.manifest import (
    MANIFEST_NAME,
    PARTITIONS_DIR,
    Manifest,
    PartitionRecord,
    load_manifest,
)
from .output import JOB_NAME, Output, lists_by_prefix
from .plan import JobPlan

__all__ = [
    "Segment",
    "job_name",
    "details_name",
    "start_append",
    "same_source",
    "segments_manifest",
]

log = logging.getLogger(__name__)

_JOB_RE = re.compile(r"^_job-(\d{5,})\.json$")
#: how often an append that lost its segment to another append reads the segments again
CLAIM_TRIES = 5


def job_name(segment: int) -> str:
    """The job file of segment ``segment`` (in ``OUTPUT/_partitions``)."""
    return JOB_NAME if segment == 0 else f"_job-{segment:05d}.json"


def details_name(segment: int) -> str:
    """The manifest's details part once it covers segments ``0..segment``."""
    return "manifest.details.json" if segment == 0 else f"manifest.details-{segment:05d}.json"


@dataclass
class Segment:
    """The segment an append works on: its number, its first partition, whether its job file
    was just written (nothing of it can exist yet), whether the manifest already covers it,
    and every segment's job file up to it (for the manifest)."""

    index: int
    first_partition: int
    fresh: bool
    finished: bool
    jobs: list[dict[str, Any]]


def _read_jobs(out: Output) -> list[dict[str, Any]]:
    """The job files of the output's segments, in order (``first_partition`` set)."""
    if lists_by_prefix(out.fs):  # the job files only, not every record (one small listing)
        names = storage.list_names(
            storage.join_url(out.url, PARTITIONS_DIR), out.storage_options, fs=out.fs, prefix="_job"
        )
    else:
        names = out.list(PARTITIONS_DIR)
    numbers = sorted(int(m.group(1)) for n in names if (m := _JOB_RE.match(n)))
    if JOB_NAME not in names:
        return []
    wanted = [job_name(k) for k in range(len(numbers) + 1)]
    if numbers != list(range(1, len(numbers) + 1)):
        raise ConfigError(
            f"{redact(out.url)}/{PARTITIONS_DIR} holds job files {numbers} with "
            f"gaps; it was not made by wdstream convert --append",
            url=out.url,
        )
    data = out.read_many([f"{PARTITIONS_DIR}/{n}" for n in wanted])
    jobs = []
    for n in wanted:
        try:
            job = json.loads(data[f"{PARTITIONS_DIR}/{n}"])
        except (KeyError, ValueError) as exc:  # removed or damaged since the listing
            raise ConfigError(
                f"cannot read {redact(out.url)}/{PARTITIONS_DIR}/{n} ({type(exc).__name__}: "
                f"{exc}); it was removed or damaged while this append read it. Re-run the "
                f"command; if this stays, the file was not made by wdstream convert",
                url=out.url,
            ) from None
        if not isinstance(job, dict):
            raise ConfigError(
                f"{redact(out.url)}/{PARTITIONS_DIR}/{n} is not a job file of wdstream convert",
                url=out.url,
            )
        jobs.append(job)
    jobs[0].setdefault("first_partition", 0)
    return jobs


def _covered(manifest: Manifest) -> int:
    """How many segments ``manifest`` covers."""
    segments = manifest.source.get("segments") if isinstance(manifest.source, dict) else None
    return len(segments) if isinstance(segments, list) else 1


def _plan_of(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if k != "first_partition"}


def _norm_files(files: Any) -> Any:
    """``data_files`` in one form: a list of patterns, sorted (their order changes the order of
    the rows, not which rows), each normalised (``./a/*.parquet`` is ``a/*.parquet``)."""
    if files is None:
        return None
    if isinstance(files, dict):
        return {str(k): _norm_files(v) for k, v in sorted(files.items())}
    items = [files] if isinstance(files, str) else list(files)
    return sorted(p if "://" in str(p) else posixpath.normpath(str(p)) for p in items)


def _norm_name(name: Any) -> Any:
    """A source name in one form: a local folder by its real path, anything else as given."""
    if isinstance(name, str) and "://" not in name and os.path.exists(os.path.expanduser(name)):
        return os.path.realpath(os.path.expanduser(name))
    return name


def same_source(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two job files' sources (``HFSource.to_dict()``) are the same source: the same
    name (a local folder by its real path), config, split and data files (in any order).
    The revision is left out: another revision of a dataset holds mostly the same rows."""
    return (
        _norm_name(a.get("name")) == _norm_name(b.get("name"))
        and a.get("config") == b.get("config")
        and a.get("split") == b.get("split")
        and _norm_files(a.get("data_files")) == _norm_files(b.get("data_files"))
    )


def _refuse_duplicate(out: Output, jobs: list[dict[str, Any]], wanted: dict[str, Any]) -> None:
    for k, job in enumerate(jobs):
        if same_source(job.get("source") or {}, wanted["source"]):
            found = _plan_of(job)
            diff = sorted(d for d in set(found) | set(wanted) if found.get(d) != wanted.get(d))
            raise ConfigError(
                f"{redact(out.url)} already holds source {wanted['source'].get('name')!r} "
                f"(segment {k}, config {wanted['source'].get('config')!r}, split "
                f"{wanted['source'].get('split')!r}), made with other options (differs in "
                f"{diff}); appending it again would add its rows a second time. Pass "
                f"--allow-duplicate-source (Python: allow_duplicate_source=True) to append it "
                f"anyway, or convert it into another OUTPUT",
                url=out.url,
            )


def start_append(out: Output, plan: JobPlan, *, allow_duplicate_source: bool = False) -> Segment:
    """The segment that ``plan`` appends to ``out``: a new one (its job file created), or the
    one made earlier with the same plan (to resume, or a no-op when finished).

    The new segment's job file is created only where none is (:func:`storage.create_new`):
    when another append created it first, the job files are read again and the checks run
    once more on what is there now.

    Raises ConfigError when ``out`` holds no finished dataset made by ``wdstream convert``,
    when its last segment is unfinished and ``plan`` is not that segment's (another append
    may be running), when another append took the segment this one was about to take and is
    not finished, and, unless ``allow_duplicate_source``, when an earlier segment holds the
    same source (:func:`same_source`) made with other options."""
    lost: int | None = None  # the segment another append took first
    for _ in range(CLAIM_TRIES):
        segment = _try_append(out, plan, allow_duplicate_source, lost)
        if isinstance(segment, Segment):
            return segment
        lost = segment
    raise ConfigError(
        f"{redact(out.url)}: other appends took segment after segment ({CLAIM_TRIES} tries, "
        f"the last {lost}) while this one started. Run one append at a time on an output: "
        f"wait until the others have finished, then re-run this command",
        url=out.url,
    )


def _try_append(
    out: Output, plan: JobPlan, allow_duplicate_source: bool, lost: int | None
) -> Segment | int:
    """One try of :func:`start_append`: the Segment, or the number of the segment whose job
    file another append created between this one's reading and its creating it."""
    jobs = _read_jobs(out)
    manifest = (
        load_manifest(out.url, out.storage_options)
        if jobs and out.read(MANIFEST_NAME) is not None
        else None
    )
    if manifest is None:
        what = (
            "an unfinished conversion: re-run its convert command without --append to "
            "finish it, then append"
            if jobs
            else f"no finished conversion (no {PARTITIONS_DIR}/{JOB_NAME}): convert without "
            f"--append to create the dataset first"
        )
        raise ConfigError(
            f"--append adds to a finished conversion, and {redact(out.url)} holds {what}",
            url=out.url,
        )
    covered = _covered(manifest)
    wanted = plan.to_dict()
    for k, job in enumerate(jobs):
        if _plan_of(job) == wanted:
            log.info(
                "%s: segment %d has this source and options (%s)",
                redact(out.url),
                k,
                "finished" if k < covered else "unfinished: resuming it",
            )
            return Segment(
                index=k,
                first_partition=int(job["first_partition"]),
                fresh=False,
                finished=k < covered,
                jobs=jobs[: k + 1],
            )
    last = len(jobs) - 1
    if last >= covered:
        found = _plan_of(jobs[last])
        diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        raced = (
            f"another append took segment {lost} while this one was starting, and "
            if lost == last
            else ""
        )
        raise ConfigError(
            f"{raced}{redact(out.url)} holds an unfinished append (segment {last}, from "
            f"{found.get('source', {}).get('name')!r}) made with another source or options "
            f"(differs in {diff}: {[found.get(k) for k in diff]} there, "
            f"{[wanted.get(k) for k in diff]} now). It may still be running: wait until it has "
            f"finished; if it was stopped, re-run that append with the same source and options "
            f"to finish it. Then run this append again",
            url=out.url,
        )
    if not allow_duplicate_source:
        _refuse_duplicate(out, jobs, wanted)
    first = int(jobs[last]["first_partition"]) + int(jobs[last]["partitions"])
    job = dict(wanted, first_partition=first)
    claimed = storage.create_new(
        storage.join_url(out.url, f"{PARTITIONS_DIR}/{job_name(last + 1)}"),
        json.dumps(job, indent=1, sort_keys=True).encode(),
        out.storage_options,
        fs=out.fs,
    )
    if not claimed:
        log.info(
            "%s: segment %d was taken by another append meanwhile; reading the segments again",
            redact(out.url),
            last + 1,
        )
        return last + 1
    log.info(
        "%s: appending segment %d (partitions %d..%d)",
        redact(out.url),
        last + 1,
        first,
        first + plan.n_partitions - 1,
    )
    return Segment(
        index=last + 1, first_partition=first, fresh=True, finished=False, jobs=[*jobs, job]
    )


def segments_manifest(
    segment: Segment, records: dict[int, PartitionRecord], output_url: str
) -> Manifest:
    """The manifest of segments ``0..segment.index`` from their records (partition order)."""
    end = segment.first_partition + int(segment.jobs[-1]["partitions"])
    shards, skipped, fields = [], {}, set()
    for p in sorted(records):
        if p >= end:
            continue
        rec = records[p]
        shards.extend(rec.shards)
        for reason, n in rec.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
        fields.update(rec.fields)
    first = segment.jobs[0]
    options = dict(first["options"], partitions=end, columns=first["columns"])
    source: dict[str, Any] = first["source"]
    if segment.index > 0:
        source = {
            "segments": [
                {
                    "source": j["source"],
                    "first_partition": j["first_partition"],
                    "partitions": j["partitions"],
                    "columns": j["columns"],
                    "options": j["options"],
                }
                for j in segment.jobs
            ]
        }
    return Manifest(
        shards=shards,
        source=source,
        skipped=skipped,
        fields=sorted(fields),
        options=options,
        base_url=output_url,
    )
