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
from .encode import ColumnMap
from .sources.hf import HFSource, open_source, resolve_columns

__all__ = ["JobPlan", "plan_job", "columns_dict", "LIMIT_ROWS_PER_PARTITION", "partition_limit"]

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

    def __post_init__(self):
        if not self.source_shards:
            self.source_shards = self.n_partitions

    def to_dict(self) -> dict[str, Any]:
        d = {"source": self.spec.to_dict(), "columns": columns_dict(self.columns),
             "partitions": self.n_partitions, "options": self.options}
        if self.source_shards != self.n_partitions:  # a --limit job: the first partitions
            d["source_shards"] = self.source_shards
        return d

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
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


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
    columns = resolve_columns(names, features, image=config.image_column,
                              audio=config.audio_column, text=config.text_columns)
    if config.text_template:
        columns = dataclasses.replace(columns, template=config.text_template)
    if not (columns.image or columns.audio or columns.text):
        log.warning("no image, audio or text column found among %s; samples will only hold "
                    ".json (name them with --image-column/--audio-column/--text-column)", names)
    if columns.dropped:
        log.warning("columns %s hold images/audio besides the chosen ones; they are not "
                    "written", list(columns.dropped))
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
    options = {"max_samples_per_shard": config.max_samples_per_shard,
               "max_shard_bytes": config.max_shard_bytes, "limit": config.limit,
               "skip_bad_rows": config.skip_bad_rows}
    log.info("source %s: columns image=%s audio=%s text=%s json=%s; %d partition(s)",
             spec.source, columns.image, columns.audio, list(columns.text), list(columns.extra),
             n_partitions)
    return JobPlan(spec=spec, columns=columns, n_partitions=n_partitions, total_rows=total,
                   options=options, source_shards=source_shards)
