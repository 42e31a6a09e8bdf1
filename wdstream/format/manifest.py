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

import numpy as np

from .. import storage
from ..errors import NotFoundError, SourceError, redact
from .schema import SHARD_EXTS
from .shardtable import ShardTable, expand_compact, is_compact, parse_reader_part

__all__ = [
    "ShardInfo",
    "PartitionRecord",
    "Manifest",
    "MANIFEST_NAME",
    "PARTITIONS_DIR",
    "load_manifest",
    "validate_manifest",
    "load_reader_part",
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
_MIN_SAMPLE_BYTES = 512  # every tar sample holds at least one 512-byte member header
_MAX_GZIP_RATIO = 1032  # deflate's largest expansion: at most 1032 bytes out per byte in


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
    """Load and check ``source`` (a folder or its ``manifest.json``).

    Its shard and index URLs must lie in the manifest's own folder or under one of
    ``allowed_prefixes`` (the user's ``config.allowed_prefixes``). Raises
    ManifestNotFoundError (a NotFoundError and a SourceError, saying how to make one) when
    there is none, and SourceError naming the URL, and the field when the manifest is
    malformed (see :func:`validate_manifest`).
    """
    url = manifest_url_for(source)
    data = _read_manifest(url, storage_options)
    try:
        d = json.loads(data)
        if is_compact(d):  # version 2: shard columns plus the details part
            d = expand_compact(d, url, storage_options)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise SourceError(
            f"{redact(url)} is not a valid wdstream manifest: {exc}. "
            f"Re-run the conversion or point at the shards directly.",
            url=url,
        ) from exc
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


def load_reader_part(
    source: str,
    storage_options: dict[str, Any] | None = None,
    *,
    allowed_prefixes: Sequence[str] = (),
) -> tuple[dict[str, Any], ShardTable]:
    """What a reader needs of a manifest, checked: ``(header, shard table)``. Version 2 reads
    only its reader part (no sha256s); version 1 is checked in full by
    :func:`validate_manifest`. Every shard and index must lie in the manifest's folder or under
    ``allowed_prefixes``. Raises ManifestNotFoundError or SourceError, as
    :func:`load_manifest`."""
    url = manifest_url_for(source)
    data = _read_manifest(url, storage_options)
    try:
        d = json.loads(data)
        compact = is_compact(d)
        if not compact:
            validate_manifest(d, url=url, allowed_prefixes=allowed_prefixes)
        head, table = parse_reader_part(d, url)
    except SourceError:
        raise
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise SourceError(
            f"{redact(url)} is not a valid wdstream manifest: {exc}. "
            f"Re-run the conversion or point at the shards directly.",
            url=url,
        ) from exc
    if compact:
        _confine_table(table, url, allowed_prefixes)
        _check_table_sizes(table, url)
    return head, table


def _check_table_sizes(table: ShardTable, url: str) -> None:
    """Refuse a shard that claims more samples than its bytes can hold (every sample takes at
    least one 512-byte tar header; compressed shards are left to the read)."""
    if table.bytes is None:
        return
    plain = (
        np.array([not table.name(i).endswith((".gz", ".tgz")) for i in range(len(table))])
        if not _plainly_tar(table)
        else np.ones(len(table), dtype=bool)
    )
    too_many = np.flatnonzero(plain & (table.samples * 512 > table.bytes))
    if len(too_many):
        i = int(too_many[0])
        raise SourceError(
            f"{redact(url)} is not a valid wdstream manifest: 'shards[{i}].samples' is "
            f"{int(table.samples[i])}, more than its {int(table.bytes[i])} bytes can hold. "
            f"Re-run the conversion or point at the shards directly.",
            url=url,
        )


def _plainly_tar(table: ShardTable) -> bool:
    """True when no shard name is compressed (one pass over the name blob)."""
    blob = table.names_blob()
    return ".gz" not in blob and ".tgz" not in blob


def _confine_table(table: ShardTable, url: str, allowed_prefixes: Sequence[str]) -> None:
    """Raise SourceError when a shard or index of ``table`` lies outside the manifest's folder
    and ``allowed_prefixes``. Plain relative names (no scheme, no leading '/', no '..', no
    '::') are inside by construction, so the usual table is checked in one pass over its
    names."""
    base = posixpath.dirname(url) or "."
    blobs = [table.names_blob()] + ([table.index_names_blob()] if table.index_names_blob() else [])
    if all(_plainly_inside(b) for b in blobs):
        return
    for i in range(len(table)):
        for what, value in (("url", table.name(i)), ("index", table.index_name(i))):
            if value is None:
                continue
            why = _confined(value, base, allowed_prefixes)
            if why:
                raise SourceError(
                    f"{redact(url)} is not a valid wdstream manifest: 'shards[{i}].{what}' "
                    f"{_show(redact(value))} {why}. Re-run the conversion or point at the "
                    f"shards directly.",
                    url=url,
                )


def _plainly_inside(names: str) -> bool:
    """True when newline-joined ``names`` are all plain relative paths."""
    return not (
        "://" in names or names.startswith("/") or "\n/" in names or ".." in names or "::" in names
    )


# --------------------------------------------------------------------------- validation


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is not a count


def _show(value: Any) -> str:
    """A value for an error message, cut short (a hostile manifest may hold megabytes)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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


def _max_samples(shard_url: str, nbytes: int) -> int | None:
    """The most samples ``nbytes`` stored bytes can hold (None: no bound known)."""
    path = shard_url.split("?", 1)[0]
    if path.endswith(".tar"):
        return nbytes // _MIN_SAMPLE_BYTES
    if path.endswith((".tar.gz", ".tgz")):
        return nbytes * _MAX_GZIP_RATIO // _MIN_SAMPLE_BYTES
    return None


def _canonical(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def _confined(value: str, base_url: str, allowed_prefixes: Sequence[str]) -> str | None:
    """Why the shard/index URL ``value`` of a manifest in ``base_url`` may not be read (None:
    it may): it must lie in the manifest's folder or under a prefix the user allowed."""
    if not value or "::" in value:
        return "is not a plain relative path or URL"
    full = _canonical(storage.join_url(base_url, value))
    if ".." in full.split("?", 1)[0].split("/"):
        return "has a '..' component"
    prefixes = [_canonical(base_url).rstrip("/") + "/"] + [
        _canonical(p).rstrip("/") + "/" for p in allowed_prefixes
    ]
    if any(full.startswith(p) for p in prefixes):
        return None
    return (
        "lies outside the manifest's folder; to read it, add its prefix to config.allowed_prefixes"
    )


def validate_manifest(d: Any, *, url: str = "", allowed_prefixes: Sequence[str] = ()) -> None:
    """Check a parsed manifest before anything trusts it; raises SourceError naming the
    field and the manifest URL.

    Checked: the types of every field; non-negative integer counts and sizes; the totals
    against the sum of the shards; that each shard's bytes could hold its claimed samples
    (every sample takes at least a 512-byte tar header; gzip expands at most 1032-fold); and,
    when ``url`` is given, that every shard and index URL lies in the manifest's folder or
    under one of ``allowed_prefixes`` (no ``..``, no other bucket or scheme). What a manifest
    says never widens what may be read.
    """
    where = redact(url) if url else "manifest"

    def bad(field: str, problem: str) -> SourceError:
        return SourceError(
            f"{where} is not a valid wdstream manifest: {field} {problem}. "
            f"Re-run the conversion or point at the shards directly.",
            url=url or None,
        )

    if not isinstance(d, dict):
        raise bad("the top level", f"is a {type(d).__name__}, not an object")
    shards = d.get("shards")
    if shards is None:
        raise bad("'shards'", "is missing: no 'shards' list")
    if not isinstance(shards, list):
        raise bad("'shards'", f"is a {type(shards).__name__}, not a list")
    for name, kind in (
        ("source", dict),
        ("skipped", dict),
        ("fields", list),
        ("options", dict),
        ("format", str),
    ):
        if name in d and not isinstance(d[name], kind):
            raise bad(f"'{name}'", f"is a {type(d[name]).__name__}, not a {kind.__name__}")
    for reason, count in d.get("skipped", {}).items():
        if not _is_int(count) or count < 0:
            raise bad(
                f"'skipped.{_show(reason)[1:-1]}'", f"is {_show(count)}, not a non-negative integer"
            )
    if not all(isinstance(f, str) for f in d.get("fields", [])):
        raise bad("'fields'", "holds something other than strings")
    base = posixpath.dirname(url) if url else ""
    total_samples = total_bytes = 0
    for i, s in enumerate(shards):
        if not isinstance(s, dict):
            raise bad(f"'shards[{i}]'", f"is a {type(s).__name__}, not an object")
        for name in _REQUIRED:
            if name not in s:
                raise bad(f"'shards[{i}].{name}'", "is missing")
        for name, kinds in _SHARD_FIELDS.items():
            value = s.get(name)
            if name in s and (not isinstance(value, kinds) or isinstance(value, bool)):
                raise bad(
                    f"'shards[{i}].{name}'",
                    f"is {_show(value)}, not {' or '.join(_TYPE_NAMES[k] for k in kinds)}",
                )
        for name in ("samples", "bytes"):
            if s[name] < 0:
                raise bad(f"'shards[{i}].{name}'", f"is {s[name]}, a negative count")
        most = _max_samples(s["url"], s["bytes"])
        if most is not None and s["samples"] > most:
            raise bad(
                f"'shards[{i}].samples'",
                f"is {s['samples']}, more than its {s['bytes']} bytes can hold (at most {most})",
            )
        if url:
            for name in ("url", "index"):
                if s.get(name) is not None:
                    why = _confined(s[name], base or ".", allowed_prefixes)
                    if why:
                        raise bad(f"'shards[{i}].{name}'", f"{_show(redact(s[name]))} {why}")
        total_samples += s["samples"]
        total_bytes += s["bytes"]
    for name, total in (("samples", total_samples), ("bytes", total_bytes)):
        if name in d and (not _is_int(d[name]) or d[name] != total):
            raise bad(f"'{name}'", f"is {_show(d[name])}, but the shards' {name} sum to {total}")
