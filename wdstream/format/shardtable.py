"""The compact manifest (format version 2) and the shard table a reader plans from.

A version-1 ``manifest.json`` lists every shard as a JSON object (URL, counts, sha256, keys):
151 MB for 500k shards, parsed in every rank. Version 2 splits it in two parts:

- ``manifest.json`` (the *reader part*): the totals, source, skipped counts, fields and options
  as before, and ``shards`` as columns::

      "shards": {"count": N,
                 "names": "shard-00000-00000.tar\\nshard-00000-00001.tar\\n...",
                 "samples": [[10000, 499999], [4321, 1]],   # run-length: [value, repeat]
                 "index": {"suffix": ".idx"}}               # or {"names": "..."} or null

  Names are relative to the manifest's folder (or absolute URLs), joined by newlines. The
  index of shard ``i`` is its name's stem plus ``suffix`` (``.idx``: the binary index of
  :mod:`wdstream.format.index`; ``.idx.json`` in an upgraded version-1 manifest), or the
  ``i``-th of ``names`` when the indexes follow no such rule; ``null``: no index.
- ``manifest.details.json`` (named by ``"details"``): per-shard ``bytes``, ``sha256``,
  ``partition``, ``first_key`` and ``last_key`` as lists; only ``verify``, ``inspect`` and
  :func:`wdstream.format.manifest.load_manifest` read it.

The reader loads only the first part into a :class:`ShardTable` (numpy arrays and one blob of
names: about 33 bytes per shard, pickled small into DataLoader workers).
:func:`upgrade_manifest` turns a version-1 manifest into version 2 without reading a shard.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import storage
from ..errors import SourceError, redact
from .schema import shard_stem

__all__ = [
    "COMPACT_VERSION",
    "DETAILS_NAME",
    "ShardTable",
    "is_compact",
    "compact_parts",
    "expand_compact",
    "load_shard_table",
    "parse_reader_part",
    "save_compact",
    "upgrade_manifest",
]

COMPACT_VERSION = 2
DETAILS_NAME = "manifest.details.json"
MAX_DETAILS_BYTES = 1 << 30  # a details part is ~120 bytes a shard: 1 GiB is ~8M shards
_DETAIL_FIELDS = ("bytes", "sha256", "partition", "first_key", "last_key")


def _rle(values: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([int(v), 1])
    return out


def _unrle(pairs: Any, count: int, what: str) -> np.ndarray:
    arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if (arr[:, 1] < 0).any() or (arr[:, 0] < 0).any():
        raise ValueError(f"negative {what} in the shard columns")
    out = np.repeat(arr[:, 0], arr[:, 1])
    if len(out) != count:
        raise ValueError(f"{len(out)} {what} for {count} shards")
    return out


class _Names:
    """Newline-joined names with their start offsets: ``names[i]`` without a list of str."""

    def __init__(self, blob: str, count: int):
        self.blob = blob.encode()
        ends = np.flatnonzero(np.frombuffer(self.blob, dtype=np.uint8) == 10)
        found = len(ends) + 1 if (self.blob or count) else 0
        if found != count:
            raise ValueError(f"{found} names for {count} shards")
        self.starts = np.concatenate([[0], ends + 1, [len(self.blob) + 1]]).astype(np.int64)

    def __getitem__(self, i: int) -> str:
        return self.blob[int(self.starts[i]) : int(self.starts[i + 1]) - 1].decode()


class ShardTable:
    """The shards of a manifest as columns: ``len(table)``, ``samples`` (int64 array),
    ``url(i)`` and ``index_url(i)``. Built by :func:`load_shard_table`."""

    def __init__(
        self,
        base_url: str,
        names: str,
        samples: np.ndarray,
        index: dict[str, str] | None,
        nbytes: np.ndarray | None = None,
    ):
        self.base_url = base_url
        self.samples = np.asarray(samples, dtype=np.int64)
        #: each shard's size in bytes, when the manifest says (the reader checks it at open)
        self.bytes = None if nbytes is None else np.asarray(nbytes, dtype=np.int64)
        self._names = _Names(names, len(self.samples))
        self._suffix = index.get("suffix") if index else None
        self._index_names = (
            _Names(index["names"], len(self.samples)) if index and "names" in index else None
        )

    def __len__(self) -> int:
        return len(self.samples)

    def name(self, i: int) -> str:
        return self._names[i]

    def url(self, i: int) -> str:
        return storage.join_url(self.base_url, self._names[i])

    def index_name(self, i: int) -> str | None:
        """The index of shard ``i``, relative like its name (None: it has none)."""
        if self._index_names is not None:
            return self._index_names[i] or None
        if self._suffix is None:
            return None
        return shard_stem(self._names[i]) + self._suffix

    def index_url(self, i: int) -> str | None:
        name = self.index_name(i)
        return None if name is None else storage.join_url(self.base_url, name)

    def names_blob(self) -> str:
        """Every shard name, newline-joined (as stored)."""
        return self._names.blob.decode()

    def index_names_blob(self) -> str | None:
        """Every index name, newline-joined, when the indexes follow no suffix rule."""
        return self._index_names.blob.decode() if self._index_names is not None else None

    def urls(self) -> Iterator[str]:
        return (self.url(i) for i in range(len(self)))


def is_compact(d: Any) -> bool:
    """True for a parsed version-2 manifest (``shards`` as columns)."""
    return (
        isinstance(d, dict)
        and d.get("version") == COMPACT_VERSION
        and isinstance(d.get("shards"), dict)
    )


def compact_parts(d: dict[str, Any], details_name: str = DETAILS_NAME) -> tuple[bytes, bytes]:
    """``(manifest.json, manifest.details.json)`` bytes of version 2 from a version-1 dict
    (``Manifest.to_dict()``); the reader part names its details part ``details_name``."""
    shards = d["shards"]
    details = {
        "format": "wdstream-manifest-details",
        "version": COMPACT_VERSION,
        "count": len(shards),
        **{f: [s.get(f) for s in shards] for f in _DETAIL_FIELDS},
    }
    head = _compact_head(d)
    head["details"] = details_name
    return json.dumps(head, indent=1).encode(), json.dumps(details).encode()


def _compact_head(d: dict[str, Any]) -> dict[str, Any]:
    """The reader part (version 2) of a version-1 manifest dict."""
    shards = d["shards"]
    names = [s["url"] for s in shards]
    if any("\n" in n for n in names):
        raise ValueError("a shard name holds a newline; it cannot be written as version 2")
    indexes = [s.get("index") for s in shards]
    index: dict[str, str] | None = None
    if any(indexes):
        suffixes = {
            i[len(shard_stem(n)) :] if i and i.startswith(shard_stem(n)) else None
            for n, i in zip(names, indexes, strict=True)
        }
        if len(suffixes) == 1 and None not in suffixes:
            index = {"suffix": suffixes.pop()}
        else:
            index = {"names": "\n".join(i or "" for i in indexes)}
    head = {k: v for k, v in d.items() if k != "shards"}
    head.update(
        version=COMPACT_VERSION,
        details=DETAILS_NAME,
        shards={
            "count": len(shards),
            "names": "\n".join(names),
            "samples": _rle([int(s["samples"]) for s in shards]),
            "index": index,
        },
    )
    sizes = [s.get("bytes") for s in shards]
    if shards and all(isinstance(b, int) and not isinstance(b, bool) for b in sizes):
        head["shards"]["bytes"] = sizes  # lets a reader check a shard's size when it opens it
    return head


def _table(d: dict[str, Any], base_url: str) -> ShardTable:
    cols = d["shards"]
    count = int(cols["count"])
    sizes = cols.get("bytes")
    if sizes is not None:
        sizes = np.asarray(sizes, dtype=np.int64)
        if sizes.shape != (count,) or (sizes < 0).any():
            raise ValueError(f"'shards.bytes' must be {count} non-negative sizes")
    table = ShardTable(
        base_url,
        cols["names"],
        _unrle(cols["samples"], count, "sample counts"),
        cols.get("index"),
        sizes,
    )
    if "samples" in d and int(d["samples"]) != int(table.samples.sum()):
        raise ValueError(
            f"manifest total {d['samples']} != sum of shard counts {int(table.samples.sum())}"
        )
    return table


def expand_compact(
    d: dict[str, Any], url: str, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A version-2 manifest (and its details part) as the version-1 dict it was made from."""
    base = posixpath.dirname(url)
    table = _table(d, base)
    name = d.get("details") or DETAILS_NAME
    if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"'details' must name a file beside the manifest, not {name!r}")
    details_url = storage.join_url(base, name)
    try:
        details = json.loads(
            storage.read_bytes(details_url, storage_options, max_bytes=MAX_DETAILS_BYTES)
        )
    except OSError as exc:
        raise SourceError(
            f"cannot read {redact(details_url)}, the per-shard part of {redact(url)}: {exc}",
            url=details_url,
        ) from exc
    if details.get("count") != len(table):
        raise ValueError(
            f"{redact(details_url)} describes {details.get('count')} shards, the "
            f"manifest {len(table)}"
        )
    shards = [
        {
            "url": table.name(i),
            "samples": int(table.samples[i]),
            "index": table.index_name(i),
            **{f: details[f][i] for f in _DETAIL_FIELDS if f in details},
        }
        for i in range(len(table))
    ]
    return {
        **{k: v for k, v in d.items() if k not in ("shards", "details")},
        "version": 1,
        "shards": shards,
    }


def parse_reader_part(d: Any, url: str) -> tuple[dict[str, Any], ShardTable]:
    """``(header, table)`` of a parsed manifest at ``url``: its reader part (version 2), or the
    shard list of a version-1 manifest turned into columns. Raises ValueError, KeyError or
    TypeError when it is malformed."""
    if not is_compact(d):  # version 1: one object per shard
        if not isinstance(d, dict) or not isinstance(d.get("shards"), list):
            raise ValueError("not a wdstream manifest: no 'shards' list")
        d = _compact_head(d)
    table = _table(d, posixpath.dirname(url))
    if (table.samples < 0).any():
        raise ValueError("negative sample count")
    head = {k: v for k, v in d.items() if k != "shards"}
    return head, table


def load_shard_table(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[dict[str, Any], ShardTable]:
    """``(header, table)`` of the manifest at ``url`` (see :func:`parse_reader_part`), unchecked
    beyond its form: readers use :func:`wdstream.format.manifest.load_reader_part`, which also
    confines the shards to the manifest's folder. Raises SourceError."""
    try:
        data = storage.read_bytes(url, storage_options)
    except OSError as exc:
        raise SourceError(f"cannot read manifest {redact(url)}: {exc}", url=url) from exc
    try:
        return parse_reader_part(json.loads(data), url)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise SourceError(
            f"{redact(url)} is not a valid wdstream manifest: {exc}. "
            f"Re-run the conversion or point at the shards directly.",
            url=url,
        ) from exc


class _Fields:
    """A read-only mapping view of a shard record's attributes (``s["url"]``, ``s.get(f)``)."""

    __slots__ = ("_obj",)

    def __init__(self, obj):
        self._obj = obj

    def __getitem__(self, name: str):
        return getattr(self._obj, name)

    def get(self, name: str, default=None):
        return getattr(self._obj, name, default)


def save_compact(
    manifest,
    output_url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    details_name: str = DETAILS_NAME,
) -> str:
    """Write ``manifest`` (a :class:`~wdstream.format.manifest.Manifest`) as version 2: the
    details part first (as ``details_name``: an append writes a new one, so the manifest
    being replaced stays whole), then ``manifest.json`` (a reader never sees one without the
    other)."""
    d = {k: v for k, v in manifest.to_dict(shards=False).items()}
    d["shards"] = [_Fields(s) for s in manifest.shards]  # views, not 500k dict copies
    head, details = compact_parts(d, details_name)
    storage.write_bytes(storage.join_url(output_url, details_name), details, storage_options)
    url = storage.join_url(output_url, "manifest.json")
    storage.write_bytes(url, head, storage_options)
    return url


def upgrade_manifest(source: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Rewrite a version-1 manifest (a folder or its manifest.json) as version 2, from the
    manifest alone (no shard is read; the indexes stay as they are). False when it already
    is version 2. Raises SourceError when it cannot be read."""
    url = source if source.endswith(".json") else storage.join_url(source, "manifest.json")
    try:
        d = json.loads(storage.read_bytes(url, storage_options))
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read manifest {redact(url)}: {exc}", url=url) from exc
    if is_compact(d):
        return False
    if not isinstance(d, dict) or not isinstance(d.get("shards"), list):
        raise SourceError(f"{redact(url)} is not a wdstream manifest", url=url)
    head, details = compact_parts(d)
    base = posixpath.dirname(url)
    storage.write_bytes(storage.join_url(base, DETAILS_NAME), details, storage_options)
    storage.write_bytes(url, head, storage_options)
    return True
