"""The manifest: what a conversion produced, shard by shard, and the per-partition records.

``OUTPUT/manifest.json`` is written last, after every shard it names is committed. Each
partition writes ``OUTPUT/_partitions/part-NNNNN.json`` once all of its shards are committed;
a re-run skips partitions that have a record. Shard byte offsets of each sample live in a small
index beside the shard (``<shard stem>.idx.json``) so readers can start mid-shard.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import storage
from ..errors import NotFoundError, SourceError, redact
from .checks import (
    MAX_SHARD_BYTES,
    MAX_SHARD_SAMPLES,
    check_head,
    confined,
    invalid,
    is_int,
    max_samples,
    plainly_inside,
    show,
)
from .schema import SHARD_EXTS, shard_stem
from .shardtable import (
    DETAILS_NAME,
    ShardTable,
    compact_parts,
    expand_compact,
    is_compact,
    parse_reader_part,
)

__all__ = [
    "ShardInfo",
    "PartitionRecord",
    "Manifest",
    "MANIFEST_NAME",
    "PARTITIONS_DIR",
    "load_manifest",
    "validate_manifest",
    "load_reader_part",
    "upgrade_manifest",
    "is_shard_source",
    "manifest_url_for",
    "missing_manifest_error",
    "ManifestNotFoundError",
]

MANIFEST_NAME = "manifest.json"
PARTITIONS_DIR = "_partitions"
FORMAT = "wdstream-manifest"
VERSION = 1
MAX_MANIFEST_BYTES = 256 * 2**20  # a larger manifest.json is refused unread


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
    whole: bool = False  # readable from its start only (.tar.gz); written only when true

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
        return cls(
            partition=d["partition"],
            shards=[ShardInfo.from_dict(s) for s in d["shards"]],
            samples=d["samples"],
            skipped=d.get("skipped", {}),
            fields=d.get("fields", []),
        )

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
        return [storage.join_url(self.base_url, s.index) if s.index else None for s in self.shards]

    def to_dict(self, *, shards: bool = True) -> dict[str, Any]:
        """The version-1 document; ``shards=False`` leaves the shard list out (empty)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "samples": self.samples,
            "bytes": self.bytes,
            "shards": [_shard_dict(s) for s in self.shards] if shards else [],
            "source": self.source,
            "skipped": dict(sorted(self.skipped.items())),
            "fields": sorted(self.fields),
            "options": self.options,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False).encode()

    @classmethod
    def from_dict(cls, d: dict[str, Any], base_url: str = "") -> Manifest:
        """A manifest from its parsed JSON, checked by :func:`validate_manifest` (its URLs are
        confined by :func:`load_manifest`). Raises SourceError naming the field."""
        validate_manifest(d)
        return cls(
            shards=[ShardInfo.from_dict(s) for s in d["shards"]],
            source=d.get("source", {}),
            skipped=d.get("skipped", {}),
            fields=d.get("fields", []),
            options=d.get("options", {}),
            base_url=base_url,
        )

    def save(self, output_url: str, storage_options: dict[str, Any] | None = None) -> str:
        url = storage.join_url(output_url, MANIFEST_NAME)
        storage.write_bytes(url, self.to_json(), storage_options)
        return url


def _shard_dict(s: ShardInfo) -> dict[str, Any]:
    d = dict(vars(s))  # flat fields: a shallow copy (asdict deep-copies, 10x slower)
    if not d["whole"]:
        del d["whole"]  # manifests of converted shards stay as they were
    return d


def is_shard_source(source: str | list | tuple) -> bool:
    """True for shard URLs (a list, a brace pattern, or one ``.tar``/``.tar.gz``/``.tgz``);
    False for a manifest URL or a dataset folder."""
    if isinstance(source, (list, tuple)):
        return True
    base = source.split("?", 1)[0]
    return base.endswith(SHARD_EXTS) or ("{" in base and ".." in base)


def manifest_url_for(source: str) -> str:
    """The manifest URL for a folder URL or a manifest URL."""
    return source if source.endswith(".json") else storage.join_url(source, MANIFEST_NAME)


class ManifestNotFoundError(NotFoundError, SourceError):
    """No manifest where one was expected: a missing object (``NotFoundError``, a
    ``FileNotFoundError``) and a source that cannot be used as given (``SourceError``)."""


def missing_manifest_error(url: str) -> ManifestNotFoundError:
    """The error for a manifest that does not exist: where it was looked for, and what to do."""
    folder = redact(url).rsplit("/", 1)[0] if url.endswith(".json") else redact(url)
    return ManifestNotFoundError(
        f"no wdstream manifest at {redact(url)} (the folder or prefix does not exist, or holds "
        f"no {MANIFEST_NAME}). Make one first: `wdstream convert SOURCE {folder}` for a "
        f"Hugging Face dataset, or `wdstream index {folder}` for WebDataset shards you already "
        f"have; or pass the shard URLs themselves (a brace pattern such as "
        f"'{folder}/shard-{{00000..00009}}.tar', or a list)",
        url=url,
    )


def load_manifest(
    source: str,
    storage_options: dict[str, Any] | None = None,
    *,
    allowed_prefixes: Sequence[str] = (),
) -> Manifest:
    """Load and check ``source`` (a folder or its ``manifest.json``; version 2 with its
    details part).

    Every count is checked before anything is allocated from it, and every URL the manifest
    names (shards, indexes, the details part) must lie in the manifest's own folder or under
    one of ``allowed_prefixes`` (the user's ``config.allowed_prefixes``). Raises
    ManifestNotFoundError (a NotFoundError and a SourceError, saying how to make one) when
    there is none, and SourceError naming the URL and the field when the manifest is
    malformed (see :func:`validate_manifest` and
    :func:`~wdstream.format.shardtable.parse_reader_part`).
    """
    url = manifest_url_for(source)
    d = _parse(url, _read_manifest(url, storage_options))
    if is_compact(d):  # version 2: shard columns plus the details part
        d = _guarded(url, expand_compact, d, url, storage_options)
    validate_manifest(d, url=url, allowed_prefixes=allowed_prefixes)
    return Manifest.from_dict(d, base_url=posixpath.dirname(url) or ".")


def _read_manifest(url: str, storage_options: dict[str, Any] | None) -> bytes:
    """The manifest's bytes (at most MAX_MANIFEST_BYTES). Raises ManifestNotFoundError or
    SourceError naming the URL."""
    try:
        return storage.read_bytes(url, storage_options, max_bytes=MAX_MANIFEST_BYTES)
    except NotFoundError as exc:
        raise missing_manifest_error(url) from exc
    except OSError as exc:
        raise SourceError(f"cannot read manifest {redact(url)}: {exc}", url=url) from exc


def _guarded(url: str, fn, *args):
    """``fn(*args)``, its ValueError, KeyError, TypeError or RecursionError (a manifest that
    is not JSON, or a version-1 one not yet checked) raised as SourceError naming ``url``."""
    try:
        return fn(*args)
    except SourceError:
        raise
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise SourceError(
            f"{redact(url)} is not a valid wdstream manifest: {exc}. "
            f"Re-run the conversion or point at the shards directly.",
            url=url,
        ) from exc


def _parse(url: str, data: bytes) -> Any:
    return _guarded(url, json.loads, data)


def load_reader_part(
    source: str,
    storage_options: dict[str, Any] | None = None,
    *,
    allowed_prefixes: Sequence[str] = (),
) -> tuple[dict[str, Any], ShardTable]:
    """What a reader needs of a manifest, checked: ``(header, shard table)``. Version 2 reads
    only its reader part (no sha256s), checked column by column before anything is allocated
    from it; version 1 is checked in full by :func:`validate_manifest`. Every shard and index
    must lie in the manifest's folder or under ``allowed_prefixes``. Raises
    ManifestNotFoundError or SourceError, as :func:`load_manifest`."""
    url = manifest_url_for(source)
    d = _parse(url, _read_manifest(url, storage_options))
    return _reader_part(d, url, allowed_prefixes)


def _reader_part(
    d: Any, url: str, allowed_prefixes: Sequence[str]
) -> tuple[dict[str, Any], ShardTable]:
    """:func:`load_reader_part` of the parsed manifest ``d``."""
    compact = is_compact(d)
    if not compact:
        validate_manifest(d, url=url, allowed_prefixes=allowed_prefixes)
    head, table = _guarded(url, parse_reader_part, d, url)
    if compact:
        _confine_table(table, url, allowed_prefixes)
    return head, table


def upgrade_manifest(
    source: str,
    storage_options: dict[str, Any] | None = None,
    *,
    allowed_prefixes: Sequence[str] = (),
) -> bool:
    """Rewrite a version-1 manifest (a folder or its manifest.json) as version 2, from the
    manifest alone (no shard is read; the indexes stay as they are). The manifest is checked
    exactly as :func:`load_manifest` checks it before anything is written; False when it
    already is version 2 (its reader part checked as :func:`load_reader_part` does). Raises
    ManifestNotFoundError or SourceError naming the URL and the field."""
    url = manifest_url_for(source)
    d = _parse(url, _read_manifest(url, storage_options))
    if is_compact(d):
        _reader_part(d, url, allowed_prefixes)
        return False
    validate_manifest(d, url=url, allowed_prefixes=allowed_prefixes)
    head, details = _guarded(url, compact_parts, d)
    base = posixpath.dirname(url)
    storage.write_bytes(storage.join_url(base, DETAILS_NAME), details, storage_options)
    storage.write_bytes(url, head, storage_options)
    return True


def _confine_table(table: ShardTable, url: str, allowed_prefixes: Sequence[str]) -> None:
    """Raise SourceError when a shard or index of ``table`` lies outside the manifest's folder
    and ``allowed_prefixes``: every shard name, and every index name (listed, or made by the
    suffix rule from each shard's stem). Plain relative names (no scheme, no leading '/', no
    '..', no '::', no escape) and a suffix without '/' are inside by construction, so the
    usual table is checked in one pass over its names."""
    base = posixpath.dirname(url) or "."
    listed = table.index_names_blob()
    suffix = table.index_suffix()
    if (
        plainly_inside(table.names_blob())
        and (listed is None or plainly_inside(listed))
        and (suffix is None or (plainly_inside(suffix) and "/" not in suffix))
    ):
        return
    for i in range(len(table)):
        name = table.name(i)
        checks = [("url", name, "")]
        if listed is not None:
            checks.append(("index", table.index_name(i), ""))
        elif suffix is not None:
            rule = f" (its stem and the index suffix {show(suffix)})"
            checks.append(("index", shard_stem(name) + suffix, rule))
        for what, value, how in checks:
            why = None if value is None else confined(value, base, allowed_prefixes)
            if why:
                raise invalid(url, f"shards[{i}].{what}", f"{show(redact(value))}{how} {why}")


# --------------------------------------------------------------------------- validation


_SHARD_FIELDS: dict[str, tuple[type, ...]] = {
    "url": (str,),
    "samples": (int,),
    "bytes": (int,),
    "sha256": (str,),
    "index": (str, type(None)),
    "partition": (int, type(None)),
    "first_key": (str, type(None)),
    "last_key": (str, type(None)),
}
_REQUIRED = ("url", "samples", "bytes", "sha256")
_TYPE_NAMES = {int: "an integer", str: "a string", type(None): "null"}


def validate_manifest(d: Any, *, url: str = "", allowed_prefixes: Sequence[str] = ()) -> None:
    """Check a parsed version-1 manifest before anything trusts it; raises SourceError naming
    the field (its ``key``) and the manifest URL.

    Checked: the version and the types of every field; counts and sizes are non-negative
    integers, at most MAX_SHARD_SAMPLES samples and MAX_SHARD_BYTES bytes a shard; the totals
    against the sum of the shards; that each shard's bytes could hold its claimed samples
    (every sample takes at least a 512-byte tar header; gzip expands at most 1032-fold); and,
    when ``url`` is given, that every shard and index URL lies in the manifest's folder or
    under one of ``allowed_prefixes`` (no ``..``, no other bucket or scheme). What a manifest
    says never widens what may be read.
    """

    def bad(field: str | None, problem: str) -> SourceError:
        return invalid(url, field, problem)

    if not isinstance(d, dict):
        raise bad(None, f"is a {type(d).__name__}, not an object")
    version = d.get("version", VERSION)
    if not is_int(version) or version != VERSION:
        if is_int(version) and version == 2:
            raise bad("shards", "is not an object, which version 2 keeps its shards in")
        raise bad("version", f"is {show(version)}: this wdstream reads versions 1 and 2")
    shards = d.get("shards")
    if shards is None:
        raise bad("shards", "is missing: no 'shards' list")
    if not isinstance(shards, list):
        raise bad("shards", f"is a {type(shards).__name__}, not a list")
    check_head(d, url)
    base = posixpath.dirname(url) if url else ""
    total_samples = total_bytes = 0
    for i, s in enumerate(shards):
        if not isinstance(s, dict):
            raise bad(f"shards[{i}]", f"is a {type(s).__name__}, not an object")
        for name in _REQUIRED:
            if name not in s:
                raise bad(f"shards[{i}].{name}", "is missing")
        for name, kinds in _SHARD_FIELDS.items():
            value = s.get(name)
            if name in s and (not isinstance(value, kinds) or isinstance(value, bool)):
                raise bad(
                    f"shards[{i}].{name}",
                    f"is {show(value)}, not {' or '.join(_TYPE_NAMES[k] for k in kinds)}",
                )
        for name in ("samples", "bytes"):
            if s[name] < 0:
                raise bad(f"shards[{i}].{name}", f"is {s[name]}, a negative count")
        if s["bytes"] > MAX_SHARD_BYTES:
            raise bad(
                f"shards[{i}].bytes",
                f"is {s['bytes']}, more than a shard may take (at most {MAX_SHARD_BYTES})",
            )
        most = max_samples(s["url"], s["bytes"])
        if most is not None and s["samples"] > most:
            raise bad(
                f"shards[{i}].samples",
                f"is {s['samples']}, more than its {s['bytes']} bytes can hold (at most {most})",
            )
        if s["samples"] > MAX_SHARD_SAMPLES:
            raise bad(
                f"shards[{i}].samples",
                f"is {s['samples']}, more than a shard may hold (at most {MAX_SHARD_SAMPLES}; "
                f"split the shard)",
            )
        if url:
            for name in ("url", "index"):
                if s.get(name) is not None:
                    why = confined(s[name], base or ".", allowed_prefixes)
                    if why:
                        raise bad(f"shards[{i}].{name}", f"{show(redact(s[name]))} {why}")
        total_samples += s["samples"]
        total_bytes += s["bytes"]
    for name, total in (("samples", total_samples), ("bytes", total_bytes)):
        if name in d and (not is_int(d[name]) or d[name] != total):
            raise bad(name, f"is {show(d[name])}, but the shards' {name} sum to {total}")
