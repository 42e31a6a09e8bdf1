"""The manifest: what a conversion produced, shard by shard, and the per-partition records.

``OUTPUT/manifest.json`` is written last, after every shard it names is committed. Each
partition writes ``OUTPUT/_partitions/part-NNNNN.json`` once all of its shards are committed;
a re-run skips partitions that have a record. Shard byte offsets of each sample live in a small
index beside the shard (``<shard stem>.idx.json``) so readers can start mid-shard.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import storage
from ..errors import SourceError, redact

__all__ = [
    "ShardInfo",
    "PartitionRecord",
    "Manifest",
    "MANIFEST_NAME",
    "PARTITIONS_DIR",
    "load_manifest",
    "is_shard_source",
    "manifest_url_for",
]

MANIFEST_NAME = "manifest.json"
PARTITIONS_DIR = "_partitions"
FORMAT = "wdstream-manifest"
VERSION = 1


@dataclass
class ShardInfo:
    """One committed shard. ``url`` is relative to the manifest's folder unless absolute."""

    url: str
    samples: int
    bytes: int
    sha256: str
    index: str | None = None  # sidecar with sample offsets, relative like url
    partition: int | None = None
    first_key: str | None = None
    last_key: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardInfo:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass
class PartitionRecord:
    """Written once all shards of a partition are committed; its presence means 'done'."""

    partition: int
    shards: list[ShardInfo]
    samples: int
    skipped: dict[str, int] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)  # member extensions written

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True).encode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PartitionRecord:
        return cls(partition=d["partition"], shards=[ShardInfo.from_dict(s) for s in d["shards"]],
                   samples=d["samples"], skipped=d.get("skipped", {}),
                   fields=d.get("fields", []))

    @classmethod
    def from_json(cls, data: bytes) -> PartitionRecord:
        return cls.from_dict(json.loads(data))


@dataclass
class Manifest:
    """Totals, shards in order, the source and the skipped-row counts."""

    shards: list[ShardInfo]
    source: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)  # member extensions seen, e.g. jpg, txt
    options: dict[str, Any] = field(default_factory=dict)
    base_url: str = ""  # folder the relative URLs resolve against (not serialised)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def shard_urls(self) -> list[str]:
        return [storage.join_url(self.base_url, s.url) for s in self.shards]

    def index_urls(self) -> list[str | None]:
        return [storage.join_url(self.base_url, s.index) if s.index else None
                for s in self.shards]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "samples": self.samples,
            "bytes": self.bytes,
            "shards": [asdict(s) for s in self.shards],
            "source": self.source,
            "skipped": dict(sorted(self.skipped.items())),
            "fields": sorted(self.fields),
            "options": self.options,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False).encode()

    @classmethod
    def from_dict(cls, d: dict[str, Any], base_url: str = "") -> Manifest:
        if "shards" not in d:
            raise ValueError("not a wdstream manifest: no 'shards' list")
        m = cls(shards=[ShardInfo.from_dict(s) for s in d["shards"]], source=d.get("source", {}),
                skipped=d.get("skipped", {}), fields=d.get("fields", []),
                options=d.get("options", {}), base_url=base_url)
        if "samples" in d and d["samples"] != m.samples:
            raise ValueError(f"manifest total {d['samples']} != sum of shard counts {m.samples}")
        return m

    def save(self, output_url: str, storage_options: dict[str, Any] | None = None) -> str:
        url = storage.join_url(output_url, MANIFEST_NAME)
        storage.write_bytes(url, self.to_json(), storage_options)
        return url


def is_shard_source(source: str | list | tuple) -> bool:
    """True for shard URLs (a list, a brace pattern, or one ``.tar``/``.tar.gz``/``.tgz``);
    False for a manifest URL or a dataset folder."""
    if isinstance(source, (list, tuple)):
        return True
    base = source.split("?", 1)[0]
    return base.endswith((".tar", ".tar.gz", ".tgz")) or ("{" in base and ".." in base)


def manifest_url_for(source: str) -> str:
    """The manifest URL for a folder URL or a manifest URL."""
    return source if source.endswith(".json") else storage.join_url(source, MANIFEST_NAME)


def load_manifest(source: str, storage_options: dict[str, Any] | None = None) -> Manifest:
    """Load ``source`` (a folder or its ``manifest.json``). Raises SourceError naming the URL."""
    url = manifest_url_for(source)
    try:
        data = storage.read_bytes(url, storage_options)
    except OSError as exc:
        raise SourceError(f"cannot read manifest {redact(url)}: {exc}", url=url) from exc
    try:
        return Manifest.from_dict(json.loads(data), base_url=posixpath.dirname(url))
    except (ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"{redact(url)} is not a valid wdstream manifest: {exc}. "
                          f"Re-run the conversion or point at the shards directly.",
                          url=url) from exc
