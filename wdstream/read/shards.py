"""Reading samples out of shards: whole shards streamed, or spans of samples starting
mid-shard with a ranged read at the byte offset from the shard's index.

Every read of a span yields exactly one item per wanted sample, in order: the sample dict
(``__key__``, ``__url__``, members) or, when the shard is truncated or unreadable, an error
marker ``{"__error__": reason, ...}``. Keeping one item per position keeps the shuffle buffer
and batch boundaries aligned with the pure plan in :mod:`wdstream.split`, so resumption stays
exact even when data is bad.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import tarfile
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .. import storage
from ..errors import ErrorBudget, redact
from ..format.index import key_hash, load_index
from ..format.tario import group_samples, iter_members

__all__ = ["ShardRef", "ShardRefs", "ShardReader", "LocalCache", "error_item"]

log = logging.getLogger(__name__)

INDEX_CACHE = 64  # shard indexes a reader keeps: 16 bytes per sample each (version 2)
_READ_ERRORS = (OSError, EOFError, tarfile.TarError, zlib.error, ValueError)


@dataclass
class ShardRef:
    """A shard to read: its URL, sample count and index URL when known, or in-memory bytes."""

    url: str
    samples: int | None = None
    index_url: str | None = None
    data: bytes | None = None


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
        return ShardRef(url=t.url(i), samples=int(t.samples[i]), index_url=t.index_url(i))


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
                 cache: LocalCache | None = None):
        self.storage_options = storage_options or {}
        self.block_size = block_size
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
            f.seek(offset)
            return f
        return storage.open_read(shard.url, self.storage_options, offset=offset,
                                 block_size=self.block_size)

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
        """Every sample of a shard; a broken shard is counted once and its rest skipped."""
        seen: set[str] = set()
        try:
            with self._open(shard) as f:
                for sample in group_samples(iter_members(f, name=shard.url)):
                    key = sample["__key__"]
                    if key in seen:
                        self.budget.record("non-adjacent members", f"{redact(shard.url)} key {key}")
                        continue
                    seen.add(key)
                    sample["__url__"] = shard.url
                    yield sample
        except _READ_ERRORS as exc:
            self.budget.record("unreadable shard", redact(shard.url), exc)

    # -- spans -------------------------------------------------------------------------
    def read_run(self, shard: ShardRef, first: int, stop: int, wanted) -> Iterator[dict]:
        """Exactly one item per entry of ``wanted`` (ascending local indices in
        ``[first, stop)``): the sample, or an error marker if it could not be read."""
        wanted = [int(w) for w in wanted]
        want = set(wanted)
        idx = self.index(shard)
        offset, skip = 0, first
        keys = hashes = None
        if idx is not None:
            offset, skip = int(idx["offsets"][first]), 0
            keys, hashes = idx.get("keys"), idx.get("key_hashes")
        got: dict[int, dict] = {}
        emitted = 0
        error: str | None = None
        try:
            with self._open(shard, offset) as f:
                local = first - skip
                for sample in group_samples(iter_members(f, name=shard.url)):
                    if local >= stop:
                        break
                    if local >= first and local in want:
                        if keys is not None and sample["__key__"] != keys[local]:
                            raise ValueError(
                                f"sample {local} has key {sample['__key__']!r}, index says "
                                f"{keys[local]!r}: the shard does not match its index")
                        if hashes is not None and key_hash(sample["__key__"]) != hashes[local]:
                            raise ValueError(
                                f"sample {local} has key {sample['__key__']!r}, which is not "
                                f"the key its index names: the shard does not match its index")
                        sample["__url__"] = shard.url
                        got[local] = sample
                        # yield in wanted order as soon as possible (bounded memory)
                        while emitted < len(wanted) and wanted[emitted] in got:
                            yield got.pop(wanted[emitted])
                            emitted += 1
                    local += 1
                if local < stop:
                    raise EOFError(f"shard ended after {local} samples, expected at least {stop}")
        except _READ_ERRORS as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.budget.record("unreadable shard", redact(shard.url), exc)
        while emitted < len(wanted):
            w = wanted[emitted]
            if w in got:
                yield got.pop(w)
            else:
                key = keys[w] if keys is not None and w < len(keys) else None
                yield error_item(error or "missing sample", shard.url, key)
            emitted += 1
