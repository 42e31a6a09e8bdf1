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
Every column is checked (:mod:`wdstream.format.checks`) before anything is allocated from it.
:func:`wdstream.format.manifest.upgrade_manifest` turns a version-1 manifest into version 2
without reading a shard.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import storage
from ..errors import SourceError, redact
from .checks import (
    MAX_SHARD_BYTES,
    MAX_SHARD_SAMPLES,
    MIN_SAMPLE_BYTES,
    check_head,
    confined,
    counts,
    invalid,
    is_int,
    run_lengths,
    show,
    size_bound,
)
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
]

COMPACT_VERSION = 2
DETAILS_NAME = "manifest.details.json"
MAX_DETAILS_BYTES = 1 << 30  # a details part is ~120 bytes a shard: 1 GiB is ~8M shards
_DETAILS_BYTES_PER_SHARD = 64 << 10  # room for long keys, escaped; read only up to this
_DETAILS_SLACK = 1 << 20
_DETAIL_FIELDS = ("bytes", "sha256", "partition", "first_key", "last_key")


def _rle(values: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([int(v), 1])
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

    def ends_with(self, end: bytes) -> np.ndarray:
        """Whether each name ends with ``end`` (a bool array; one pass over the blob)."""
        arr = np.frombuffer(self.blob, dtype=np.uint8)
        firsts = self.starts[1:] - 1 - len(end)  # where ``end`` would start in each name
        out = firsts >= self.starts[:-1]
        if not len(arr):
            return out
        for k, byte in enumerate(end):
            out &= arr[np.clip(firsts + k, 0, len(arr) - 1)] == byte
        return out


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

    def index_suffix(self) -> str | None:
        """The ending that names every shard's index after its stem (None: no such rule)."""
        return self._suffix if self._index_names is None else None

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
    indexes = [s.get("index") for s in shards]
    for field, values in (("url", names), ("index", indexes)):
        at = next((i for i, v in enumerate(values) if v and "\n" in v), None)
        if at is not None:
            raise ValueError(
                f"'shards[{at}].{field}' holds a newline; version 2 joins names with newlines, "
                f"so this manifest cannot be written as version 2"
            )
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


def _check_names(blob: Any, count: int, field: str, url: str, *, empty: bool) -> None:
    """Raise SourceError unless ``blob`` is a string of ``count`` newline-joined names (none
    empty unless ``empty``), checked before anything is built from it."""
    if not isinstance(blob, str):
        raise invalid(url, field, f"is {show(blob)}, not a string of newline-joined names")
    found = blob.count("\n") + 1 if (blob or count) else 0
    if found != count:
        raise invalid(url, field, f"holds {found} names for {count} shards")
    if not empty and count and (not blob or blob[0] == "\n" or blob[-1] == "\n" or "\n\n" in blob):
        at = blob.split("\n").index("")
        raise invalid(url, field, f"holds an empty name (shard {at})")
    try:
        blob.encode()
    except UnicodeEncodeError as exc:
        raise invalid(url, field, f"is not valid UTF-8 ({exc.reason})") from None


def _index_rule(index: Any, count: int, url: str) -> dict[str, str] | None:
    """The ``shards.index`` rule, checked: None, ``{"suffix": str}`` or ``{"names": str}``."""
    if index is None:
        return None
    keys = set(index) & {"suffix", "names"} if isinstance(index, dict) else set()
    if len(keys) != 1:
        raise invalid(
            url,
            "shards.index",
            f"is {show(index)}, not null, {{'suffix': ...}} or {{'names': ...}}",
        )
    if "suffix" in index:
        if not isinstance(index["suffix"], str):
            raise invalid(url, "shards.index.suffix", f"is {show(index['suffix'])}, not a string")
        return {"suffix": index["suffix"]}
    _check_names(index["names"], count, "shards.index.names", url, empty=True)
    return {"names": index["names"]}


def _table(d: dict[str, Any], url: str) -> ShardTable:
    """The checked shard table of a version-2 reader part ``d`` (or a version-1 manifest in
    that form). Every column is checked before anything is allocated from it: the count
    against the names (so arrays are as long as the manifest, never as long as it claims),
    each sample count and size in range, and the totals; no count exceeds what its shard's
    size can hold. Raises SourceError naming the field."""
    cols = d["shards"]
    count = cols.get("count")
    if not is_int(count) or count < 0:
        raise invalid(url, "shards.count", f"is {show(count)}, not a non-negative integer")
    _check_names(cols.get("names"), count, "shards.names", url, empty=False)
    samples = run_lengths(
        cols.get("samples"),
        count,
        "shards.samples",
        url,
        most=MAX_SHARD_SAMPLES,
        what="sample counts",
        each="shards[{i}].samples",
    )
    sizes = cols.get("bytes")
    if sizes is not None:
        sizes = counts(
            sizes, count, "shards.bytes", url, most=MAX_SHARD_BYTES, each="shards[{i}].bytes"
        )
    index = _index_rule(cols.get("index"), count, url)
    table = ShardTable(posixpath.dirname(url), cols["names"], samples, index, sizes)
    total = int(table.samples.sum())  # at most count * 2**24: no overflow
    if "samples" in d and (not is_int(d["samples"]) or d["samples"] != total):
        raise invalid(
            url, "samples", f"is {show(d['samples'])}, but the shards' samples sum to {total}"
        )
    if "bytes" in d and (not is_int(d["bytes"]) or d["bytes"] < 0):
        raise invalid(url, "bytes", f"is {show(d['bytes'])}, not a non-negative integer")
    if sizes is not None:
        size_total = sum(cols["bytes"])  # Python ints
        if "bytes" in d and d["bytes"] != size_total:
            raise invalid(
                url, "bytes", f"is {d['bytes']}, but the shards' bytes sum to {size_total}"
            )
    _check_sizes(table, d.get("bytes"), url)
    return table


def _check_sizes(table: ShardTable, total_bytes: int | None, url: str) -> None:
    """Refuse a shard that claims more samples than its bytes can hold (every sample takes
    at least one 512-byte tar header; gzip expands at most 1032-fold); without per-shard
    sizes, all samples together must fit in the manifest's total ``bytes`` when it gives one
    (0 there means unknown, as in the synthetic manifests of the scale benchmarks)."""
    ratios = _size_ratios(table)  # 0: a shard of unknown kind (no bound from its size)
    if table.bytes is not None:
        most = np.minimum(table.bytes, MAX_SHARD_BYTES) * ratios // MIN_SAMPLE_BYTES
        too_many = np.flatnonzero((ratios > 0) & (table.samples > most))
        if len(too_many):
            i = int(too_many[0])
            raise invalid(
                url,
                f"shards[{i}].samples",
                f"is {int(table.samples[i])}, more than its {int(table.bytes[i])} bytes can "
                f"hold (at most {int(most[i])})",
            )
    elif is_int(total_bytes) and total_bytes > 0 and len(table) and (ratios > 0).all():
        most = total_bytes * int(ratios.max()) // MIN_SAMPLE_BYTES  # Python ints
        total = int(table.samples.sum())
        if total > most:
            raise invalid(
                url,
                "samples",
                f"is {total}, more than the manifest's {total_bytes} bytes can hold "
                f"(at most {most}; its shards give no sizes)",
            )


def _size_ratios(table: ShardTable) -> np.ndarray:
    """Each shard's samples-per-512-bytes ratio (1 for ``.tar``, 1032 for ``.tar.gz``, 0 when
    unknown): one pass over the names when they all end in ``.tar``."""
    names = table._names
    if b"?" not in names.blob and names.ends_with(b".tar").all():
        return np.ones(len(table), dtype=np.int64)
    return np.array([size_bound(table.name(i)) or 0 for i in range(len(table))], dtype=np.int64)


def _details_url(d: dict[str, Any], url: str) -> str:
    """The URL of the details part that the version-2 manifest ``d`` at ``url`` names: a file
    beside the manifest (no folder, no leading '.'), confined like every URL a manifest names.
    Raises SourceError naming ``details``."""
    name = d.get("details")
    name = DETAILS_NAME if name is None else name
    if not isinstance(name, str) or not name or any(c in name for c in "/\\?#") or name[0] == ".":
        raise invalid(url, "details", f"must name a file beside the manifest, not {show(name)}")
    base = posixpath.dirname(url)
    why = confined(name, base or ".", ())
    if why:
        raise invalid(url, "details", f"{show(name)} {why}")
    return storage.join_url(base, name)


def _details_budget(count: int) -> int:
    """The most bytes the details part of ``count`` shards may take (it is read up to this)."""
    return min(MAX_DETAILS_BYTES, _DETAILS_SLACK + _DETAILS_BYTES_PER_SHARD * count)


def _check_details(details: Any, count: int, url: str) -> None:
    """Raise SourceError (naming the details part at ``url`` and the field) unless
    ``details`` holds ``count`` entries in each of its lists."""
    if not isinstance(details, dict):
        raise invalid(url, None, f"is a {type(details).__name__}, not an object")
    if details.get("count") != count or not is_int(details.get("count")):
        raise invalid(
            url, "count", f"is {show(details.get('count'))}, but the manifest has {count} shards"
        )
    for f in _DETAIL_FIELDS:
        if f in details and (not isinstance(details[f], list) or len(details[f]) != count):
            raise invalid(url, f, f"is {show(details[f])}, not a list of {count} entries")


def expand_compact(
    d: dict[str, Any], url: str, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A version-2 manifest (and its details part) as the version-1 dict it was made from;
    both parts are checked as they are read (see :func:`parse_reader_part`). Raises
    SourceError naming the part and the field."""
    _, table = parse_reader_part(d, url)
    where = _details_url(d, url)
    try:
        data = storage.read_bytes(where, storage_options, max_bytes=_details_budget(len(table)))
        details = json.loads(data)
    except (OSError, ValueError, RecursionError) as exc:
        raise SourceError(
            f"cannot read {redact(where)}, the per-shard part of {redact(url)}: {exc}",
            url=where,
        ) from exc
    _check_details(details, len(table), where)
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
    """``(header, table)`` of a parsed manifest at ``url``: its reader part (version 2),
    checked field by field (see :func:`_table`), or the shard list of a version-1 manifest
    turned into columns (checked by :func:`wdstream.format.manifest.validate_manifest` first).
    Raises SourceError naming the field, or ValueError, KeyError or TypeError for a version-1
    manifest that was not checked."""
    if not is_compact(d):  # version 1: one object per shard
        if not isinstance(d, dict) or not isinstance(d.get("shards"), list):
            raise ValueError("not a wdstream manifest: no 'shards' list")
        d = _compact_head(d)
    check_head(d, url)
    _details_url(d, url)
    table = _table(d, url)
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
