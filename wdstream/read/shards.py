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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .. import storage
from ..errors import ErrorBudget, redact
from ..format.index import load_index
from ..format.tario import group_samples, iter_members

__all__ = ["ShardRef", "ShardReader", "LocalCache", "error_item"]

log = logging.getLogger(__name__)

_READ_ERRORS = (OSError, EOFError, tarfile.TarError, zlib.error, ValueError)


@dataclass
class ShardRef:
    """A shard to read: its URL, sample count and index URL when known, or in-memory bytes."""

    url: str
    samples: int | None = None
    index_url: str | None = None
    data: bytes | None = None


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
        if len(self._indices) > 256:
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
        ``[first, stop)``): the sample, or an error marker if it could not be read.

        With an index, the read starts at the sample's offset; a shard marked ``whole``
        (compressed) or without an index is read from its start, skipping to ``first``. A key
        that comes back after other keys (left out by ``wdstream index``) is skipped."""
        wanted = [int(w) for w in wanted]
        want = set(wanted)
        idx = self.index(shard)
        offset, skip = 0, first
        keys = None
        if idx is not None:
            if not idx.get("whole"):
                offset, skip = idx["offsets"][first], 0
            keys = idx.get("keys")
        position = _key_positions(idx) if keys is not None else None
        got: dict[int, dict] = {}
        emitted = 0
        error: str | None = None
        try:
            with self._open(shard, offset) as f:
                local = first - skip
                for sample in group_samples(iter_members(f, name=shard.url)):
                    key = sample["__key__"]
                    if position is not None and (local >= len(keys) or key != keys[local]) \
                            and position.get(key, local) < local:
                        continue  # a repeated key the index left out
                    if local >= first and local in want:
                        if keys is not None and key != keys[local]:
                            raise ValueError(
                                f"sample {local} has key {key!r}, index says "
                                f"{keys[local]!r}: the shard does not match its index")
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


def _key_positions(idx: dict) -> dict[str, int]:
    """``{key: position}`` of an index's keys, built once per cached index."""
    pos = idx.get("_positions")
    if pos is None:
        pos = idx["_positions"] = {k: i for i, k in enumerate(idx["keys"])}
    return pos
