"""Planning a conversion: open the source once, find its columns and its partitions.

The partitions follow the source's own shards (its data files). The plan's options are stored
as ``OUTPUT/_partitions/_job.json``, so a re-run resumes only a job made with the same options.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass
from typing import Any

from ..config import Config
from ..rows.columns import ColumnMap, binary_member, resolve_columns, sample_binary_values
from ..rows.paths import ReadRoots, source_roots
from ..rows.source import HFSource, open_source
from .sources.files import SourceFiles, file_group, source_files

__all__ = [
    "JobPlan",
    "plan_job",
    "columns_dict",
    "describe_columns",
    "LIMIT_ROWS_PER_PARTITION",
    "partition_limit",
]

log = logging.getLogger(__name__)

#: ``limit`` rows are spread over the first ``ceil(limit / 100)`` source shards (at most all).
LIMIT_ROWS_PER_PARTITION = 100


@dataclass
class JobPlan:
    """The partitions of a job and the options that shape its output (``_job.json``)."""

    spec: HFSource
    columns: ColumnMap
    n_partitions: int
    total_rows: int | None
    options: dict[str, Any]
    source_shards: int = 0  # the source's shards (data files); 0: as many as partitions
    files: SourceFiles | None = None  # the source's data files, one per shard (not in _job.json)
    read_roots: ReadRoots = ReadRoots()  # where media paths may be read (not in _job.json)

    def __post_init__(self):
        if not self.source_shards:
            self.source_shards = self.n_partitions

    def to_dict(self) -> dict[str, Any]:
        d = {
            "source": self.spec.to_dict(),
            "columns": columns_dict(self.columns),
            "partitions": self.n_partitions,
            "options": self.options,
        }
        if self.source_shards != self.n_partitions:  # a --limit job: the first partitions
            d["source_shards"] = self.source_shards
        return d

    def files_of(self, partition: int) -> SourceFiles | None:
        """The data files partition ``partition`` reads (the group ``ds.shard(n_partitions,
        partition, contiguous=True)`` would read), or None: the worker opens the whole
        source."""
        if self.files is None:
            return None
        group = file_group(len(self.files.paths), self.n_partitions, partition)
        return dataclasses.replace(self.files, paths=self.files.paths[group.start : group.stop])

    def limit_of(self, partition: int) -> int | None:
        """The rows partition ``partition`` may take (None: all of them)."""
        return partition_limit(self.options.get("limit"), self.n_partitions, partition)


def partition_limit(limit: int | None, n_partitions: int, partition: int) -> int | None:
    """``limit`` rows split over ``n_partitions`` partitions as evenly as possible, the first
    ones taking one more: the same split whatever the number of workers."""
    if limit is None:
        return None
    return limit // n_partitions + (1 if partition < limit % n_partitions else 0)


def columns_dict(columns: ColumnMap) -> dict[str, Any]:
    d = asdict(columns)
    for key in ("image_ext", "audio_ext"):  # absent unless set: older jobs still resume
        if d[key] is None:
            del d[key]
    if not d["binary"]:  # absent when empty: jobs planned before binary members still resume
        del d["binary"]
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def describe_columns(columns: ColumnMap | dict[str, Any]) -> str:
    """One line saying which source column becomes which member (for the console)."""
    d = columns_dict(columns) if isinstance(columns, ColumnMap) else columns
    parts = [
        f"image={d.get('image') or '-'}",
        f"audio={d.get('audio') or '-'}",
        f"text={','.join(d.get('text') or []) or '-'}",
    ]
    if d.get("template"):
        parts.append(f"template={d['template']!r}")
    parts.append(f"json={','.join(d.get('extra') or []) or '-'}")
    if d.get("binary"):
        parts.append(f"own members={','.join(d['binary'])}")
    if d.get("dropped"):
        parts.append(f"left out={','.join(d['dropped'])}")
    return "  ".join(parts)


def _bytes_path(value: Any) -> tuple[bytes | None, str | None] | None:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):
        return bytes(value["bytes"]), value.get("path")
    return None


def plan_job(spec: HFSource, config: Config) -> JobPlan:
    """Open the source once: find the columns and the partitions (the source's shards).

    Raises SourceError/HubUnreachableError for the source and ColumnError for a bad column.
    """
    ds = open_source(spec)
    features = ds.features
    if features is not None:
        names = list(features)
    else:  # a generator of Python objects: look at the first row
        first = next(iter(ds), None)
        names = list(first) if first else []
    if features is not None:  # media by layout and content: look at the binary columns' bytes
        samples = sample_binary_values(ds, exclude=config.drop_columns)
    else:  # the first row's encoded values: bytes, or {"bytes", "path"} dicts
        samples = {
            c: _bytes_path(v) for c, v in (first or {}).items() if _bytes_path(v) is not None
        }
    columns = resolve_columns(
        names,
        features,
        image=config.image_column,
        audio=config.audio_column,
        text=config.text_columns,
        samples=samples,
        drop=config.drop_columns,
    )
    if config.text_template:
        columns = dataclasses.replace(columns, template=config.text_template)
    if config.image_ext or config.audio_ext:
        columns = dataclasses.replace(
            columns, image_ext=config.image_ext, audio_ext=config.audio_ext
        )
    if not (columns.image or columns.audio or columns.text):
        log.warning(
            "no image, audio or text column found among %s; samples will only hold "
            ".json (name them with --image-column/--audio-column/--text-column)",
            names,
        )
    if columns.dropped:
        log.warning(
            "columns %s are left out (images/audio besides the chosen ones, or "
            "drop_columns); they are not written",
            list(columns.dropped),
        )
    if columns.binary:
        log.warning(
            "columns %s hold binary data that is neither an image nor audio; each "
            "is written as its own member (%s)",
            list(columns.binary),
            ", ".join(f".{binary_member(c)}" for c in columns.binary),
        )
    source_shards = max(1, int(ds.n_shards))
    n_partitions = source_shards
    if config.limit is not None:  # a trial: the first source shards, a share of rows each
        n_partitions = max(1, min(source_shards, -(-config.limit // LIMIT_ROWS_PER_PARTITION)))
    total = None
    try:
        split_info = (ds.info.splits or {}).get(spec.split)
        total = int(split_info.num_examples) if split_info and split_info.num_examples else None
    except (AttributeError, TypeError, KeyError):
        total = None
    if config.limit is not None:
        total = min(total, config.limit) if total else config.limit
    options = {
        "max_samples_per_shard": config.max_samples_per_shard,
        "max_shard_bytes": config.max_shard_bytes,
        "limit": config.limit,
        "skip_bad_rows": config.skip_bad_rows,
    }
    if config.validate != "cheap":  # only when set: older jobs keep resuming
        options["validate"] = config.validate
    if config.allow_paths:  # which rows are read; only when set: older jobs keep resuming
        options["allow_paths"] = sorted(config.allow_paths)
    files = source_files(ds)
    log.info(
        "source %s: columns %s; %d partition(s)",
        spec.source,
        describe_columns(columns),
        n_partitions,
    )
    return JobPlan(
        spec=spec,
        columns=columns,
        n_partitions=n_partitions,
        total_rows=total,
        options=options,
        source_shards=source_shards,
        files=files,
        read_roots=source_roots(
            spec, files.paths if files is not None else (), allow=config.allow_paths
        ),
    )
