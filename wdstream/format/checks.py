"""What a manifest may claim, checked before anything trusts it: limits on counts and sizes,
the checks both manifest versions share, and the confinement of every URL a manifest names.

A manifest is a few bytes that say how much there is. Every count in it is checked before
anything is allocated from it, with Python integers (which cannot overflow) or with bounds
checked before any product, so a manifest costs memory in proportion to its shards, never to
what it claims:

- a shard holds at most :data:`MAX_SHARD_SAMPLES` samples and :data:`MAX_SHARD_BYTES` bytes;
- a shard's samples fit in its bytes (every sample takes at least a 512-byte tar header; a
  ``.tar.gz`` expands at most 1032-fold); without per-shard sizes, all samples fit in the
  manifest's total ``bytes``;
- run-length columns repeat to exactly the shard count, checked before they are expanded.

Every URL built from a manifest (shards, indexes, the details part) must lie in the
manifest's own folder or under a prefix the user allowed (:func:`confined`); what a manifest
says never widens what may be read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

import numpy as np

from .. import storage
from ..errors import SourceError, redact

__all__ = [
    "MAX_SHARD_SAMPLES",
    "MAX_SHARD_BYTES",
    "MIN_SAMPLE_BYTES",
    "MAX_GZIP_RATIO",
    "invalid",
    "show",
    "is_int",
    "check_head",
    "size_bound",
    "max_samples",
    "counts",
    "run_lengths",
    "confined",
    "plainly_inside",
]

#: The most samples one shard may claim: 16,777,216 (a 16 GiB tar of 1 KiB samples). A
#: reader keeps an index of up to 16 bytes a sample per open shard; split larger tars.
MAX_SHARD_SAMPLES = 2**24
#: The most bytes one shard may claim (256 TiB): keeps every product of counts in int64.
MAX_SHARD_BYTES = 2**48
MIN_SAMPLE_BYTES = 512  # every tar sample holds at least one 512-byte member header
MAX_GZIP_RATIO = 1032  # deflate's largest expansion: at most 1032 bytes out per byte in


def invalid(url: str, field: str | None, problem: str) -> SourceError:
    """The error for a malformed manifest at ``url``: names the manifest and ``field`` (its
    path, ``shards[3].samples``; None for the document itself), which is also the error's
    ``key``, and says what to do."""
    where = redact(url) if url else "manifest"
    what = f"'{field}'" if field else "the top level"
    return SourceError(
        f"{where} is not a valid wdstream manifest: {what} {problem}. "
        f"Re-run the conversion or point at the shards directly.",
        url=url or None,
        key=field,
    )


def show(value: Any) -> str:
    """A value for an error message, cut short (a hostile manifest may hold megabytes)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_int(value: Any) -> bool:
    return type(value) is int  # bool is not a count


_HEAD_TYPES: tuple[tuple[str, type], ...] = (
    ("format", str),
    ("source", dict),
    ("skipped", dict),
    ("fields", list),
    ("options", dict),
)


def check_head(d: dict[str, Any], url: str) -> None:
    """Check the fields both versions share (``format``, ``source``, ``skipped``, ``fields``
    and ``options``); raise SourceError naming the field."""
    for name, kind in _HEAD_TYPES:
        if name in d and not isinstance(d[name], kind):
            raise invalid(url, name, f"is a {type(d[name]).__name__}, not a {kind.__name__}")
    for reason, count in d.get("skipped", {}).items():
        if not is_int(count) or count < 0:
            raise invalid(
                url,
                f"skipped.{show(reason)[1:-1]}",
                f"is {show(count)}, not a non-negative integer",
            )
    if not all(isinstance(f, str) for f in d.get("fields", [])):
        raise invalid(url, "fields", "holds something other than strings")


def size_bound(name: str) -> int | None:
    """How many bytes of a shard named ``name`` hold at least one sample, per byte stored:
    1 for a ``.tar`` (read as ``bytes // 512``), :data:`MAX_GZIP_RATIO` for a ``.tar.gz``,
    None when its kind is unknown (no bound but :data:`MAX_SHARD_SAMPLES`)."""
    path = name.split("?", 1)[0]
    if path.endswith(".tar"):
        return 1
    if path.endswith((".tar.gz", ".tgz")):
        return MAX_GZIP_RATIO
    return None


def max_samples(name: str, nbytes: int) -> int | None:
    """The most samples ``nbytes`` stored bytes of shard ``name`` can hold (None: no bound
    known from its size)."""
    ratio = size_bound(name)
    return None if ratio is None else nbytes * ratio // MIN_SAMPLE_BYTES


def counts(
    values: Any, count: int, field: str, url: str, *, most: int, each: str | None = None
) -> np.ndarray:
    """``values`` (a JSON list) as an int64 array of ``count`` integers in ``[0, most]``;
    every element is checked before the array is made. Raises SourceError naming ``field``
    (``each.format(i=i)`` for a bad element ``i``, when given)."""
    if not isinstance(values, list):
        raise invalid(url, field, f"is {show(values)}, not a list of {count} integers")
    if len(values) != count:
        raise invalid(url, field, f"has {len(values)} entries for {count} shards")
    for i, v in enumerate(values):
        if not is_int(v) or not 0 <= v <= most:
            where = each.format(i=i) if each else f"{field}[{i}]"
            raise invalid(url, where, f"is {show(v)}, not an integer in 0..{most}")
    return np.array(values, dtype=np.int64)


def run_lengths(
    pairs: Any,
    count: int,
    field: str,
    url: str,
    *,
    most: int,
    what: str = "values",
    each: str | None = None,
) -> np.ndarray:
    """A run-length column (``[[value, repeat], ...]``) expanded to ``count`` values, each an
    integer in ``[0, most]``. The pairs are checked and their repeats summed (stopping at the
    first past ``count``) before anything is allocated: a few bytes cannot claim gigabytes.
    Raises SourceError naming ``field`` (``each.format(i=i)`` for a value out of range whose
    run starts at shard ``i``, when given)."""
    if not isinstance(pairs, list):
        raise invalid(url, field, f"is {show(pairs)}, not a list of [value, repeat] pairs")
    total = 0
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, list) and len(pair) == 2 and all(map(is_int, pair))):
            raise invalid(url, field, f"holds {show(pair)} (run {i}), not a [value, repeat] pair")
        value, repeat = pair
        if not 0 <= value <= most:
            where = each.format(i=total) if each else field
            raise invalid(
                url,
                where,
                f"is {value}, a negative count"
                if value < 0
                else f"is {value}, more than a shard may hold (at most {most}; split the shard)",
            )
        if repeat < 0:
            raise invalid(url, field, f"repeats a run {repeat} times (run {i})")
        total += repeat
        if total > count:
            break
    if total != count:
        n = f"more than {count}" if total > count else str(total)
        raise invalid(url, field, f"gives {n} {what} for {count} shards")
    values = np.fromiter((v for v, _ in pairs), dtype=np.int64, count=len(pairs))
    repeats = np.fromiter((r for _, r in pairs), dtype=np.int64, count=len(pairs))
    return np.repeat(values, repeats)


def _canonical(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def _climbs(url: str) -> bool:
    """True when a component of ``url`` (query included, percent-escapes decoded) is ``..``:
    fsspec, HTTP clients and servers resolve one, wherever it stands."""
    return any(unquote(part) == ".." for part in url.replace("?", "/").split("/"))


def confined(value: str, base_url: str, allowed_prefixes: Sequence[str]) -> str | None:
    """Why the URL ``value`` that a manifest in ``base_url`` names may not be read (None: it
    may): it must lie in the manifest's folder or under a prefix the user allowed, with no
    ``..`` component anywhere and no ``::`` chaining."""
    if not value or "::" in value:
        return "is not a plain relative path or URL"
    full = _canonical(storage.join_url(base_url, value))
    if _climbs(full):
        return "has a '..' component"
    prefixes = [_canonical(base_url).rstrip("/") + "/"] + [
        _canonical(p).rstrip("/") + "/" for p in allowed_prefixes
    ]
    if any(full.startswith(p) for p in prefixes):
        return None
    return (
        "lies outside the manifest's folder; to read it, add its prefix to config.allowed_prefixes"
    )


def plainly_inside(names: str) -> bool:
    """True when newline-joined ``names`` are all plain relative paths (no scheme, no leading
    '/', no '..', no '::', no percent-escape): inside the manifest's folder by construction,
    so a table of millions of shards is confined in one pass over its names."""
    return not (
        "://" in names
        or names.startswith("/")
        or "\n/" in names
        or ".." in names
        or "::" in names
        or "%" in names
    )
