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
"""

from __future__ import annotations

import json
import logging
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

__all__ = ["Segment", "job_name", "details_name", "start_append", "segments_manifest"]

log = logging.getLogger(__name__)

_JOB_RE = re.compile(r"^_job-(\d{5,})\.json$")


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
    jobs = [json.loads(data[f"{PARTITIONS_DIR}/{n}"]) for n in wanted]
    jobs[0].setdefault("first_partition", 0)
    return jobs


def _covered(manifest: Manifest) -> int:
    """How many segments ``manifest`` covers."""
    segments = manifest.source.get("segments") if isinstance(manifest.source, dict) else None
    return len(segments) if isinstance(segments, list) else 1


def _plan_of(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if k != "first_partition"}


def start_append(out: Output, plan: JobPlan) -> Segment:
    """The segment that ``plan`` appends to ``out``: a new one (its job file written), or the
    one made earlier with the same plan (to resume, or a no-op when finished).

    Raises ConfigError when ``out`` holds no finished dataset made by ``wdstream convert``, or
    when its last segment is unfinished and ``plan`` is not that segment's."""
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
        raise ConfigError(
            f"{redact(out.url)} holds an unfinished append (segment {last}, from "
            f"{found.get('source', {}).get('name')!r}) made with another source or options "
            f"(differs in {diff}: {[found.get(k) for k in diff]} there, "
            f"{[wanted.get(k) for k in diff]} now). Re-run that append with the same source "
            f"and options to finish it, then append this one",
            url=out.url,
        )
    first = int(jobs[last]["first_partition"]) + int(jobs[last]["partitions"])
    job = dict(wanted, first_partition=first)
    storage.write_bytes(
        storage.join_url(out.url, f"{PARTITIONS_DIR}/{job_name(last + 1)}"),
        json.dumps(job, indent=1, sort_keys=True).encode(),
        out.storage_options,
    )
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
