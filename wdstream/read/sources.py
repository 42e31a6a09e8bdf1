"""Turning what the user gives into shards to read: a manifest, a brace pattern, a list of
shard URLs, a dict of named sources to mix, or, when allowed, synthetic shards in memory (the
loud fallback)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import storage
from ..config import Config
from ..errors import ConfigError, NotFoundError, SourceError, StorageError, redact
from ..format.manifest import (
    is_shard_source,
    load_reader_part,
    manifest_url_for,
    missing_manifest_error,
)
from ..format.synthetic import synthetic_shards_in_memory
from .shards import ShardRef, ShardRefs

__all__ = [
    "ShardSource",
    "resolve_source",
    "synthetic_source",
    "resolve_or_fallback",
    "resolve_sources",
]

log = logging.getLogger(__name__)


@dataclass
class ShardSource:
    """One data source resolved to shards; ``sizes`` known when it came from a manifest."""

    name: str
    shards: Sequence[ShardRef]  # a list, or ShardRefs over a manifest's compact table
    has_manifest: bool = False
    synthetic: bool = False

    @property
    def sizes(self):
        """Sample count of every shard (0 when unknown)."""
        sizes = getattr(self.shards, "sizes", None)
        return sizes if sizes is not None else [int(s.samples or 0) for s in self.shards]

    @property
    def samples(self) -> int | None:
        return int(sum(self.sizes)) if self.has_manifest else None

    @property
    def sample_bytes(self) -> float | None:
        """The mean bytes of a sample, when the manifest gives the shards' sizes."""
        nbytes = getattr(getattr(self.shards, "table", None), "bytes", None)
        samples = self.samples
        if nbytes is None or not samples:
            return None
        total = int(nbytes.sum())
        return total / samples if total > 0 else None


def resolve_source(source: Any, config: Config, name: str | None = None) -> ShardSource:
    """Turn a manifest URL/folder, a brace pattern or a list of URLs into a ShardSource.

    Raises SourceError/StorageError naming the URL when it cannot be reached.
    """
    opts = config.storage_options
    if isinstance(source, ShardSource):
        return source
    if isinstance(source, (list, tuple)) or (isinstance(source, str) and is_shard_source(source)):
        urls = storage.expand_urls(source)
        if not urls:
            raise SourceError(f"no shard URLs in {source!r}")
        storage.check_readable(urls[0], opts)
        return ShardSource(
            name=name or _short_name(urls[0]), shards=[ShardRef(url=u) for u in urls]
        )
    if not isinstance(source, str):
        raise ConfigError(
            f"unsupported source {source!r}: give a manifest URL, a brace "
            f"pattern, a list of shard URLs, or a dict of named sources"
        )
    url = manifest_url_for(source)
    try:
        storage.check_readable(url, opts)
    except NotFoundError as exc:
        raise missing_manifest_error(url) from exc
    # the reader part only (no sha256s, no keys), its shards confined to the manifest's folder
    head, table = load_reader_part(url, opts, allowed_prefixes=config.allowed_prefixes)
    if not len(table):
        raise SourceError(f"manifest {redact(source)} lists no shards", url=source)
    return ShardSource(
        name=name or (head.get("source") or {}).get("name") or _short_name(source),
        shards=ShardRefs(table),
        has_manifest=True,
    )


def _short_name(url: str) -> str:
    return redact(url).rstrip("/").rsplit("/", 1)[-1] or "source"


def synthetic_source(config: Config) -> ShardSource:
    """Synthetic shards (the shard contract's seeded samples), held in memory (never disk)."""
    per = 64
    n = max(1, config.synthetic_samples)
    blobs = synthetic_shards_in_memory(
        n,
        seed=config.seed,
        modalities=config.modalities,
        samples_per_shard=per,
        sample_rate=config.audio_sample_rate,
    )
    shards = [
        ShardRef(url=f"synthetic-shard-{i:05d}", samples=min(per, n - i * per), data=b)
        for i, b in enumerate(blobs)
    ]
    return ShardSource(name="synthetic", shards=shards, has_manifest=True, synthetic=True)


def resolve_sources(source: Any, config: Config) -> dict[str, ShardSource]:
    """``{name: ShardSource}``: one entry for a single source, one per name for a dict of
    named sources to mix (each resolved, or replaced by the synthetic fallback, on its own).
    Raises ConfigError for an empty dict."""
    if not isinstance(source, dict):
        spec = resolve_or_fallback(source, config)
        return {spec.name: spec}
    if not source:
        raise ConfigError("no sources to mix: the dict is empty")
    out = {}
    for name, src in source.items():
        spec = resolve_or_fallback(src, config)
        spec.name = name
        out[name] = spec
    return out


def resolve_or_fallback(source: Any, config: Config) -> ShardSource:
    """:func:`resolve_source`, or synthetic shards (one WARNING) when the source cannot be
    read and ``config.fallback == "synthetic"``, or directly when ``use_streaming`` is
    False."""
    if config.use_streaming:
        try:
            return resolve_source(source, config)
        except (SourceError, StorageError) as exc:
            if config.fallback != "synthetic":
                raise
            log.warning(
                "cannot read %s (%s); config.fallback='synthetic': training on %d "
                "SYNTHETIC samples instead, every batch has synthetic=True",
                redact(str(source)),
                exc,
                config.synthetic_samples,
            )
    else:
        log.info("use_streaming=False: using %d synthetic samples", config.synthetic_samples)
    return synthetic_source(config)
