"""Reading samples out of shards: whole shards streamed, or spans of samples starting
mid-shard with a ranged read at the byte offset from the shard's index.

Every read of a span yields exactly one item per wanted sample, in order: the sample dict
(``__key__``, ``__url__``, members) or an error marker ``{"__error__": reason, ...}``, counted
in the error budget, when the shard is truncated or unreadable, when a member is over
``max_member_bytes``, or when the sample repeats a key seen earlier in its shard. Keeping one
item per position keeps the shuffle buffer and batch boundaries aligned with the pure plan in
:mod:`wdstream.read.plan`, so resumption stays exact even when data is bad.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import storage
from ..errors import ErrorBudget, ShardReadError, TooManyErrors, redact
from ..format.index import key_hash, load_index
from ..format.tario import group_samples, iter_members

__all__ = ["ShardRef", "ShardRefs", "ShardReader", "LocalCache", "error_item"]

log = logging.getLogger(__name__)

DUPLICATE = "non-adjacent members"  # the reason counted for a key seen earlier in its shard
TOO_LARGE = "member too large"  # the reason counted for a member over max_member_bytes
INDEX_CACHE = 64  # shard indexes a reader keeps: 16 bytes per sample each (version 2)


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
        return ShardRef(url=t.url(i), samples=int(t.samples[i]), index_url=t.index_url(i),
                        bytes=None if t.bytes is None else int(t.bytes[i]))


def error_item(reason: str, url: str, key: str | None = None) -> dict:
    """The item a span read yields in place of a sample it could not read (already counted)."""
    return {"__error__": reason, "__url__": url, "__key__": key}


class LocalCache:
    """A local folder of whole shards, bounded in bytes, least recently used out.

    Safe for several processes: downloads go to a temp name and are renamed into place.
    """

    def __init__(self, folder: str, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        os.makedirs(folder, exist_ok=True)

    def _path(self, url: str) -> str:
        digest = hashlib.sha256(url.encode()).hexdigest()[:24]
        return os.path.join(self.folder, digest + "-" + posixpath.basename(url.split("?")[0]))

    def get(self, url: str, storage_options: dict[str, Any] | None) -> str:
        """A local path holding the whole shard (downloaded on a miss)."""
        path = self._path(url)
        if os.path.exists(path):
            os.utime(path)
            return path
        tmp = f"{path}.partial-{os.getpid()}-{threading.get_ident()}"
        fs, rpath = storage.url_to_fs(url, storage_options)
        try:
            fs.get_file(rpath, tmp)
            os.replace(tmp, path)
        except Exception as exc:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise storage.translate_error(exc, url, "cache") from exc
        self._evict(keep=path)
        return path

    def _evict(self, keep: str) -> None:
        entries = []
        for name in os.listdir(self.folder):
            p = os.path.join(self.folder, name)
            if ".partial-" in name:
                continue
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue
            entries.append((st.st_atime, st.st_size, p))
        total = sum(e[1] for e in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            try:
                os.remove(p)
                total -= size
            except FileNotFoundError:
                pass


class ShardReader:
    """Opens shards through fsspec (or the shard cache) and yields samples or spans of them."""

    def __init__(self, storage_options: dict[str, Any] | None = None, *,
                 block_size: int = 8 * 2**20, budget: ErrorBudget | None = None,
                 cache: LocalCache | None = None, max_member_bytes: int | None = None):
        self.storage_options = storage_options or {}
        self.block_size = block_size
        self.max_member_bytes = max_member_bytes
        self.budget = budget or ErrorBudget(-1)
        self.cache = cache
        self._indices: OrderedDict[str, dict | None] = OrderedDict()

    # -- opening -------------------------------------------------------------------------
    def _open(self, shard: ShardRef, offset: int = 0):
        if shard.data is not None:
            f = io.BytesIO(shard.data)
            f.seek(offset)
            return f
        if self.cache is not None:
            path = self.cache.get(shard.url, self.storage_options)
            f = open(path, "rb")  # noqa: SIM115 - closed by the caller
            size = os.path.getsize(path)
        else:
            f = storage.open_read(shard.url, self.storage_options, block_size=self.block_size)
            size = getattr(f, "size", None)
        if shard.bytes is not None and isinstance(size, int) and size != shard.bytes:
            f.close()
            raise ShardReadError(f"shard {redact(shard.url)} is {size} bytes, its manifest says "
                                 f"{shard.bytes}: it was replaced or the manifest is wrong",
                                 shard=shard.url)
        if offset:
            f.seek(offset)
        return f

    def _samples(self, f, shard: ShardRef) -> Iterator[dict]:
        return group_samples(iter_members(f, name=shard.url,
                                          max_member_bytes=self.max_member_bytes))

    def index(self, shard: ShardRef) -> dict | None:
        """The shard's index (``offsets``, ``keys``), cached per reader; ``None`` without one."""
        if shard.index_url is None:
            return None
        if shard.index_url in self._indices:
            self._indices.move_to_end(shard.index_url)
            return self._indices[shard.index_url]
        try:
            idx = load_index(shard.index_url, self.storage_options, samples=shard.samples)
        except Exception as exc:  # a missing index only costs speed
            log.warning("no usable index for %s (%s); reading the shard from its start",
                        redact(shard.url), exc)
            idx = None
        self._indices[shard.index_url] = idx
        if len(self._indices) > INDEX_CACHE:
            self._indices.popitem(last=False)
        return idx

    # -- whole shards ------------------------------------------------------------------
    def iter_shard(self, shard: ShardRef) -> Iterator[dict]:
        """Every sample of a shard; a broken shard is counted once and its rest skipped, a
        sample with a key seen before or a member over the size limit is counted and skipped."""
        seen: set[str] = set()
        try:
            with self._open(shard) as f:
                for sample in self._samples(f, shard):
                    key = sample["__key__"]
                    if key in seen:
                        self.budget.record(DUPLICATE, f"{redact(shard.url)} key {key}")
                        continue
                    seen.add(key)
                    if "__error__" in sample:
                        self.budget.record(TOO_LARGE, f"{redact(shard.url)} key {key}",
                                           ValueError(sample["__error__"]))
                        continue
                    sample["__url__"] = shard.url
                    yield sample
        except TooManyErrors:
            raise
        except Exception as exc:  # noqa: BLE001 - OSError, TarError, zlib.error, and the odd
            # types a hostile tar makes tarfile raise: all count as an unreadable shard
            self.budget.record("unreadable shard", redact(shard.url), exc)

    # -- spans -------------------------------------------------------------------------
    def remember_index(self, shard: ShardRef, idx: dict | None) -> None:
        """Keep an index fetched elsewhere (the prefetcher) as if :meth:`index` had read it."""
        if shard.index_url is None:
            return
        self._indices[shard.index_url] = idx
        self._indices.move_to_end(shard.index_url)
        if len(self._indices) > INDEX_CACHE:
            self._indices.popitem(last=False)

    def has_index(self, shard: ShardRef) -> bool:
        """Whether the shard's index is cached already (loaded, or known to be missing)."""
        return shard.index_url is None or shard.index_url in self._indices

    def _span_samples(self, shard: ShardRef, offset: int, members) -> Iterator[dict]:
        if members is None:
            with self._open(shard, offset) as f:
                yield from self._samples(f, shard)
            return
        if isinstance(members, BaseException):
            raise members
        yield from group_samples(members)

    def read_run(self, shard: ShardRef, first: int, stop: int, wanted,
                 members=None) -> Iterator[dict]:
        """Exactly one item per entry of ``wanted`` (ascending local indices in
        ``[first, stop)``): the sample, or an error marker if it could not be read.

        With an index, the read starts at the sample's offset; a shard marked ``whole``
        (compressed) or without an index is read from its start, skipping to ``first``. A key
        that comes back after other keys and that the index left out (``wdstream index`` does)
        is skipped; one that the index counts as a position (or, without an index, one this
        read has seen) is counted and becomes an error marker, so later positions do not
        shift.

        ``members``: the span's members already fetched from the index's offset of ``first``
        (a list of ``(name, bytes)``, see :func:`~wdstream.format.tario.split_members`), or
        the exception that fetching them raised; the shard is then not opened here."""
        wanted = [int(w) for w in wanted]
        want = set(wanted)
        idx = self.index(shard)
        offset, skip = 0, first
        ids = None  # the index's key (version 1) or key hash (version 2) of each position
        dups: frozenset[int] = frozenset()
        if idx is not None:
            if not idx.get("whole"):
                offset, skip = int(idx["offsets"][first]), 0
            ids = idx.get("keys") if idx.get("keys") is not None else idx.get("key_hashes")
            dups = _duplicates(idx)
        ident = key_hash if idx is not None and idx.get("keys") is None else (lambda k: k)
        got: dict[int, dict] = {}
        seen: set[str] = set()
        emitted = 0
        error: str | None = None
        samples = self._span_samples(shard, offset, members)
        try:
            local = first - skip
            for sample in samples:
                key = sample["__key__"]
                kid = ident(key) if ids is not None else key
                if ids is not None and (local >= len(ids) or kid != ids[local]) \
                        and _key_positions(idx).get(kid, local) < local:
                    continue  # a repeated key the index left out
                duplicate = key in seen or local in dups
                seen.add(key)
                if local >= first and local in want:
                    if ids is not None and (local >= len(ids) or kid != ids[local]):
                        raise ValueError(
                            f"sample {local} has key {key!r}, which is not the key its "
                            f"index names: the shard does not match its index")
                    where = f"{redact(shard.url)} key {key}"
                    if duplicate:
                        self.budget.record(DUPLICATE, f"{where} (sample {local} repeats an "
                                           f"earlier key; a placeholder takes its place)")
                        got[local] = error_item(DUPLICATE, shard.url, key)
                    elif "__error__" in sample:
                        self.budget.record(TOO_LARGE, where, ValueError(sample["__error__"]))
                        got[local] = error_item(TOO_LARGE, shard.url, key)
                    else:
                        sample["__url__"] = shard.url
                        got[local] = sample
                    # yield in wanted order as soon as possible (bounded memory)
                    while emitted < len(wanted) and wanted[emitted] in got:
                        yield got.pop(wanted[emitted])
                        emitted += 1
                local += 1
                if local >= stop:
                    break
            if local < stop:
                raise EOFError(f"shard ended after {local} samples, expected at least {stop}")
        except TooManyErrors:
            raise
        except Exception as exc:  # noqa: BLE001 - OSError, TarError, zlib.error, and the odd
            # types a hostile tar makes tarfile raise: all count as an unreadable shard
            error = f"{type(exc).__name__}: {exc}"
            self.budget.record("unreadable shard", redact(shard.url), exc)
        finally:
            samples.close()
        while emitted < len(wanted):
            w = wanted[emitted]
            if w in got:
                yield got.pop(w)
            else:
                names = idx.get("keys") if idx is not None else None
                key = names[w] if names is not None and w < len(names) else None
                yield error_item(error or "missing sample", shard.url, key)
            emitted += 1


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
