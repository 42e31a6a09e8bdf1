"""Shards and what a read of them gives back: the reconciliation of what was wanted with what
came.

A read is a span of one shard: samples ``first..stop-1`` (all of them, or only ``wanted``
among them), or the whole shard (``stop`` None: streaming mode). The fetcher
(:mod:`wdstream.read.fetch`) turns each read into a :class:`Fetched`: its tar members, or the
exception that fetching them raised. :func:`span_items` turns those members into exactly one
item per wanted sample, in order: the sample dict (``__key__``, ``__url__``, members) or an
error marker ``{"__error__": reason, ...}``, counted in the error budget, when the shard is
truncated or unreadable, when a member is over ``max_member_bytes``, or when the sample
repeats a key seen earlier in its shard. One item per position keeps the window shuffle and
batch boundaries aligned with the pure plan (:mod:`wdstream.read.planner`), so resumption
stays exact even when data is bad. A whole-shard read yields the good samples only (the
bad ones counted and skipped).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..errors import ErrorBudget, TooManyErrors, redact
from ..format.index import key_hash
from ..format.tario import group_samples

__all__ = [
    "ShardRef",
    "ShardRefs",
    "Fetched",
    "span_items",
    "error_item",
    "DUPLICATE",
    "TOO_LARGE",
    "UNREADABLE",
]

log = logging.getLogger(__name__)

DUPLICATE = "non-adjacent members"  # the reason counted for a key seen earlier in its shard
TOO_LARGE = "member too large"  # the reason counted for a member over max_member_bytes
UNREADABLE = "unreadable shard"  # the reason counted for a read that failed or ended early


@dataclass
class ShardRef:
    """A shard to read: its URL, sample count, index URL and stored size when known, or
    in-memory bytes."""

    url: str
    samples: int | None = None
    index_url: str | None = None
    data: bytes | None = None
    bytes: int | None = None  # the size the manifest claims; checked when the shard is opened


class ShardRefs(Sequence):
    """A manifest's shards as :class:`ShardRef`, made on demand from its compact
    :class:`~wdstream.format.shardtable.ShardTable` (arrays and one blob of names), so a
    dataset pickles small into DataLoader workers whatever the number of shards."""

    def __init__(self, table):
        self.table = table

    @property
    def sizes(self):
        """Sample count of every shard (an int64 array)."""
        return self.table.samples

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        t = self.table
        return ShardRef(
            url=t.url(i),
            samples=int(t.samples[i]),
            index_url=t.index_url(i),
            bytes=None if t.bytes is None else int(t.bytes[i]),
        )


class Fetched(NamedTuple):
    """One read as the fetcher hands it back: samples ``first..stop-1`` of ``shard`` (only
    ``wanted`` among them when given; ``stop`` None: the whole shard), with ``members`` (an
    iterable of ``(name, bytes)`` starting at sample ``first`` when the read used ``index``'s
    offset, else at the shard's start) or the exception fetching them raised, and the shard's
    ``index`` (None when it has none, or it is not used)."""

    shard: ShardRef
    first: int
    stop: int | None
    wanted: np.ndarray | None
    members: Iterable[tuple[str, Any]] | BaseException
    index: dict | None
    from_offset: bool  # members start at ``first`` (a ranged read at the index's offset)


def error_item(reason: str, url: str, key: str | None = None) -> dict:
    """The item a span read yields in place of a sample it could not read (already counted)."""
    return {"__error__": reason, "__url__": url, "__key__": key}


def span_items(fetched: Iterable[Fetched], budget: ErrorBudget) -> Iterator[dict]:
    """The items of each read, in order (see the module doc)."""
    for got in fetched:
        if got.stop is None:
            yield from _whole_shard(got, budget)
        else:
            yield from _span(got, budget)


def _samples(got: Fetched) -> Iterator[dict]:
    if isinstance(got.members, BaseException):
        raise got.members
    return group_samples(got.members)


def _whole_shard(got: Fetched, budget: ErrorBudget) -> Iterator[dict]:
    """Every good sample of a shard; a broken shard is counted once and its rest skipped, a
    sample with a key seen before or a member over the size limit is counted and skipped."""
    url = got.shard.url
    seen: set[str] = set()
    samples = None
    try:
        samples = _samples(got)
        for sample in samples:
            key = sample["__key__"]
            if key in seen:
                budget.record(DUPLICATE, f"{redact(url)} key {key}")
                continue
            seen.add(key)
            if "__error__" in sample:
                budget.record(
                    TOO_LARGE, f"{redact(url)} key {key}", ValueError(sample["__error__"])
                )
                continue
            sample["__url__"] = url
            yield sample
    except TooManyErrors:
        raise
    except Exception as exc:  # noqa: BLE001 - OSError, TarError, zlib.error, and the odd
        # types a hostile tar makes tarfile raise: all count as an unreadable shard
        budget.record(UNREADABLE, redact(url), exc)
    finally:  # no module globals here: this also runs when a generator is collected at exit
        for it in (samples, got.members):
            close = getattr(it, "close", None)
            if close is not None:
                close()


def _span(got: Fetched, budget: ErrorBudget) -> Iterator[dict]:
    """Exactly one item per wanted sample of a bounded read, in order.

    Members that start at the shard's start (no index, or a compressed shard) are skipped to
    ``first``. A key that comes back after other keys and that the index left out
    (``wdstream index`` does) is skipped; one that the index counts as a position (or, without
    an index, one this read has seen) is counted and becomes an error marker, so later
    positions do not shift."""
    shard, first, stop, idx = got.shard, got.first, int(got.stop), got.index
    url = shard.url
    wanted = iter(range(first, stop) if got.wanted is None else got.wanted.tolist())
    next_wanted = next(wanted, None)
    local = first if got.from_offset else 0
    ids = None  # the index's key (version 1) or key hash (version 2) of each position
    dups: frozenset[int] = frozenset()
    if idx is not None:
        ids = _ids(idx)
        dups = _duplicates(idx)
    ident = key_hash if idx is not None and idx.get("keys") is None else (lambda k: k)
    seen: set[str] = set()
    error: str | None = None
    samples = None
    try:
        samples = _samples(got)
        for sample in samples:
            if next_wanted is None:
                break
            key = sample["__key__"]
            kid = ident(key) if ids is not None else key
            if (
                ids is not None
                and (local >= len(ids) or kid != ids[local])
                and _key_positions(idx).get(kid, local) < local
            ):
                continue  # a repeated key the index left out
            duplicate = key in seen or local in dups
            seen.add(key)
            if local == next_wanted:
                if ids is not None and (local >= len(ids) or kid != ids[local]):
                    raise ValueError(
                        f"sample {local} has key {key!r}, which is not the key its "
                        f"index names: the shard does not match its index"
                    )
                where = f"{redact(url)} key {key}"
                if duplicate:
                    budget.record(
                        DUPLICATE,
                        f"{where} (sample {local} repeats an "
                        f"earlier key; a placeholder takes its place)",
                    )
                    yield error_item(DUPLICATE, url, key)
                elif "__error__" in sample:
                    budget.record(TOO_LARGE, where, ValueError(sample["__error__"]))
                    yield error_item(TOO_LARGE, url, key)
                else:
                    sample["__url__"] = url
                    yield sample
                next_wanted = next(wanted, None)
            local += 1
            if local >= stop:
                break
        if next_wanted is not None and local < stop:
            raise EOFError(f"shard ended after {local} samples, expected at least {stop}")
    except TooManyErrors:
        raise
    except Exception as exc:  # noqa: BLE001 - OSError, TarError, zlib.error, and the odd
        # types a hostile tar makes tarfile raise: all count as an unreadable shard
        error = f"{type(exc).__name__}: {exc}"
        budget.record(UNREADABLE, redact(url), exc)
    finally:  # no module globals here: this also runs when a generator is collected at exit
        for it in (samples, got.members):
            close = getattr(it, "close", None)
            if close is not None:
                close()
    names = idx.get("keys") if idx is not None else None
    while next_wanted is not None:
        key = names[next_wanted] if names is not None and next_wanted < len(names) else None
        yield error_item(error or "missing sample", url, key)
        next_wanted = next(wanted, None)


def _ids(idx: dict):
    """The index's key (version 1) or key hash (version 2) of each position."""
    return idx["keys"] if idx.get("keys") is not None else idx.get("key_hashes")


def _key_positions(idx: dict) -> dict:
    """``{key or key hash: first position}`` of an index, built on first use (only when a
    read meets a key the index does not name at that position) and cached with it."""
    pos = idx.get("_positions")
    if pos is None:
        ids = _ids(idx)
        pos = {}
        for i, k in enumerate(ids.tolist() if isinstance(ids, np.ndarray) else ids):
            pos.setdefault(k, i)
        idx["_positions"] = pos
    return pos


def _duplicates(idx: dict) -> frozenset[int]:
    """Positions whose key (or key hash) the index lists earlier in the shard (once)."""
    dups = idx.get("duplicates")
    if dups is None:
        ids = _ids(idx)
        if ids is None:
            dups = frozenset()
        elif isinstance(ids, np.ndarray):
            _, first = np.unique(ids, return_index=True)
            repeated = np.ones(len(ids), dtype=bool)
            repeated[first] = False
            dups = frozenset(np.flatnonzero(repeated).tolist())
        else:
            seen: set = set()
            found = set()
            for i, k in enumerate(ids):
                if k in seen:
                    found.add(i)
                seen.add(k)
            dups = frozenset(found)
        idx["duplicates"] = dups
    return dups
