"""Concurrent ranged reads for one slot, and the counters that say where its time goes.

The plan names every sample a slot reads, in order; the shards' indexes give their byte
ranges. :class:`Prefetcher` turns a slot's reads into ranged requests of at most
``request_bytes`` each (cut at sample boundaries), keeps up to ``read_ahead_requests`` of them
(and the indexes they need) in flight on a small thread pool, never holds more than
``read_ahead_bytes`` of fetched-but-not-consumed spans (one request at least), and hands the
spans back strictly in plan order, split into tar members by
:func:`~wdstream.format.tario.split_members`. Shards without an index (or compressed ones)
are streamed by :meth:`ShardReader.read_run` when their turn comes.

One filesystem per process serves every request (fsspec caches instances per process, so a
forked or spawned DataLoader worker makes its own and reuses its HTTP connections).

:class:`ReadStats` is a small shared-memory table, one row per DataLoader worker of this rank:
the workers write their counters after every batch, the main process reads them
(``loader.stats()``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from .. import storage
from ..errors import ShardReadError, StorageError, redact
from ..format.index import max_index_bytes, parse_index
from ..format.tario import split_members
from .shards import ShardReader, ShardRef

__all__ = ["Counters", "ReadStats", "Prefetcher", "FIELDS"]

log = logging.getLogger(__name__)

#: The columns of a worker's row in :class:`ReadStats`.
FIELDS = ("samples", "batches", "elapsed_s", "io_wait_s", "decode_s", "blocked_s",
          "get_requests", "bytes_read")


class Counters:
    """One worker's counters for the current epoch (plain floats; copied to shared memory)."""

    __slots__ = FIELDS + ("_lock", "_start")

    def __init__(self):
        for f in FIELDS:
            setattr(self, f, 0.0)
        self._lock = threading.Lock()
        self._start = time.perf_counter()

    def add_request(self, nbytes: int) -> None:
        with self._lock:  # requests finish on the prefetcher's threads
            self.get_requests += 1
            self.bytes_read += nbytes

    def values(self) -> list[float]:
        self.elapsed_s = time.perf_counter() - self._start
        return [float(getattr(self, f)) for f in FIELDS]


class ReadStats:
    """Per-worker counters in shared memory: written by DataLoader workers (or the main
    process with 0 workers), read by the main process."""

    def __init__(self, workers: int):
        self._t = torch.zeros((max(1, workers), len(FIELDS)), dtype=torch.float64).share_memory_()

    def write(self, worker: int, counters: Counters) -> None:
        self._t[worker] = torch.tensor(counters.values(), dtype=torch.float64)

    def rows(self) -> list[dict]:
        out = []
        for worker, row in enumerate(self._t.tolist()):
            d = dict(zip(FIELDS, row, strict=True))
            d["samples"], d["batches"] = int(d["samples"]), int(d["batches"])
            d["get_requests"], d["bytes_read"] = int(d["get_requests"]), int(d["bytes_read"])
            d["samples_per_s"] = d["samples"] / d["elapsed_s"] if d["elapsed_s"] > 0 else 0.0
            out.append({"worker": worker, **d})
        return out


class _Span:
    """One ranged request (or a streamed read) of a slot, in plan order."""

    __slots__ = ("shard", "first", "stop", "wanted", "nbytes", "future")

    def __init__(self, shard, first, stop, wanted, nbytes=0, future=None):
        self.shard, self.first, self.stop, self.wanted = shard, first, stop, wanted
        self.nbytes, self.future = nbytes, future


def _failed(exc: BaseException) -> Future:
    fut: Future = Future()
    fut.set_exception(exc)
    return fut


def _connect(fs, path: str) -> int | None:
    """Make an object store's client ready before threads use the filesystem, and return
    the size of ``path`` (None when unknown). s3fs builds its client, and botocore its
    request machinery, on the first requests without a lock: eight fetch threads starting at
    once in a fresh worker each did that work (about 1 s before a worker's first response,
    measured on loopback S3; 0.04 s once one request has gone first). One HEAD, which the
    shard's size check needs anyway, goes first."""
    if not storage._is_object_store(fs):  # the shared test of what an object store is
        return None
    try:
        size = fs.size(path)
    except Exception:  # noqa: BLE001 - the read itself reports it, naming the URL
        return None
    return size if isinstance(size, int) else None


class Prefetcher:
    """The items of ``reads`` (``(shard index, first, stop, wanted or None)``, in plan
    order), exactly as :meth:`ShardReader.read_run` yields them, with requests in flight
    ahead of the consumer. Iterate once; closing the iterator cancels what is queued."""

    def __init__(self, reader: ShardReader, shards: Sequence[ShardRef], reads,
                 *, requests: int, max_bytes: int, request_bytes: int,
                 counters: Counters | None = None):
        self.reader, self.shards = reader, shards
        self.reads = deque(reads)
        self.requests = max(1, int(requests))
        self.max_bytes = max(1, int(max_bytes))
        self.request_bytes = max(1, int(request_bytes))
        self.counters = counters or Counters()
        self.pool = ThreadPoolExecutor(self.requests, thread_name_prefix="wdstream-fetch")
        self.pending: deque[_Span] = deque()  # submitted or streamed, not yet consumed
        self.outstanding = 0  # bytes of pending spans
        self.pieces: deque[_Span] = deque()  # the current read cut into requests
        self.indexes: dict[int, Future] = {}  # shard -> index being fetched
        self.failed: dict[int, ShardReadError] = {}  # shards that cannot be read at all
        # one filesystem per protocol for every fetch thread: fsspec caches instances per
        # thread, and each new s3fs instance builds its own client (0.1-0.3 s, its own
        # connections), which made the first batch wait for one per thread
        self._filesystems: dict[str, object] = {}
        self._fs_lock = threading.Lock()
        self._known_sizes: dict[str, int | None] = {}  # from the warm-up HEAD
        first = shards[self.reads[0][0]] if shards and self.reads else None
        if first is not None and first.data is None:
            try:  # made here, in the consumer's thread, where it is often cached already
                self._fs_path(first.url)
            except StorageError:
                pass  # the read itself reports it, naming the shard

    def _fs_path(self, url: str):
        """``(filesystem, path)`` for ``url``, sharing one filesystem across threads."""
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        fs = self._filesystems.get(protocol)
        if fs is None:
            with self._fs_lock:
                fs = self._filesystems.get(protocol)
                if fs is None:
                    fs, path = storage.url_to_fs(url, self.reader.storage_options)
                    self._known_sizes[url] = _connect(fs, path)
                    self._filesystems[protocol] = fs
                    return fs, path
        return fs, fs._strip_protocol(url)

    # -- indexes -----------------------------------------------------------------------
    def _load_index(self, shard: ShardRef) -> dict | None:
        try:
            self._check_size(shard)
            fs, path = self._fs_path(shard.index_url)
            limit = max_index_bytes(shard.samples)
            # one ranged GET, no HEAD first (a whole-object cat_file asks for the size first
            # on recent s3fs), and at most limit + 1 bytes of any file
            data = fs.cat_file(path, start=0, end=limit + 1)
            self.counters.add_request(len(data))
            if len(data) > limit:
                raise StorageError(f"{redact(shard.index_url)} is larger than {limit} bytes, "
                                   f"the most expected there; not reading it",
                                   url=shard.index_url)
            return parse_index(data, shard.samples)
        except ShardReadError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a missing index only costs speed
            log.warning("no usable index for %s (%s); reading the shard from its start",
                        redact(shard.url), exc)
            return None

    def _check_size(self, shard: ShardRef) -> None:
        """The shard's stored size against the manifest's, when the manifest gives one."""
        if shard.bytes is None or shard.data is not None:
            return
        fs, path = self._fs_path(shard.url)
        size = self._known_sizes.pop(shard.url, None)
        if size is None:
            try:
                size = fs.size(path)
            except Exception as exc:
                raise storage.translate_error(exc, shard.url, "read") from exc
        if isinstance(size, int) and size != shard.bytes:
            raise ShardReadError(f"shard {redact(shard.url)} is {size} bytes, its manifest says "
                                 f"{shard.bytes}: it was replaced or the manifest is wrong",
                                 shard=shard.url)

    def _prefetch_indexes(self) -> None:
        """Start fetching the indexes of the next few shards the plan reads."""
        ahead = 0
        for i, _, _, _ in itertools.islice(self.reads, 4 * self.requests):
            if ahead >= self.requests:
                break
            shard = self.shards[i]
            if i in self.indexes or self.reader.has_index(shard):
                continue
            self.indexes[i] = self.pool.submit(self._load_index, shard)
            ahead += 1

    def _index(self, i: int, block: bool) -> tuple[bool, dict | None]:
        """``(known, index)`` of shard ``i``; waits only when ``block``."""
        shard = self.shards[i]
        fut = self.indexes.get(i)
        if fut is None:
            if self.reader.has_index(shard):
                return True, self.reader.index(shard)
            fut = self.indexes[i] = self.pool.submit(self._load_index, shard)
        if not fut.done() and not block:
            return False, None
        t0 = time.perf_counter()
        idx = fut.result()
        self.counters.io_wait_s += time.perf_counter() - t0
        del self.indexes[i]
        if isinstance(idx, ShardReadError):  # the shard itself is bad: every read fails
            self.failed[i] = idx
            self.reader.remember_index(shard, None)
            return True, None
        self.reader.remember_index(shard, idx)
        return True, idx

    # -- spans -------------------------------------------------------------------------
    def _cut(self, i: int, first: int, stop: int, wanted, idx: dict | None) -> None:
        """Queue read ``(i, first, stop, wanted)`` as ranged requests at sample boundaries."""
        shard = self.shards[i]
        if i in self.failed:
            self.pieces.append(_Span(shard, first, stop, wanted, 0, _failed(self.failed[i])))
            return
        if idx is None or idx.get("whole"):
            self.pieces.append(_Span(shard, first, stop, wanted))  # streamed by the reader
            return
        offsets = idx["offsets"]
        a = first
        while a < stop:
            limit = int(offsets[a]) + self.request_bytes
            b = int(np.searchsorted(offsets, limit, side="right")) - 1
            b = min(stop, max(a + 1, b))
            if wanted is None:
                part = None
            else:
                part = wanted[(wanted >= a) & (wanted < b)]
            if part is None or len(part):
                n = int(offsets[b]) - int(offsets[a])
                big = self.reader.max_member_bytes is not None and n > self.reader.max_member_bytes
                self.pieces.append(_Span(shard, a, b, part, -1 if big else n))
            a = b

    def _fetch(self, shard: ShardRef, start: int, end: int):
        fs, path = self._fs_path(shard.url)
        try:
            data = fs.cat_file(path, start=start, end=end)
        except Exception as exc:
            raise storage.translate_error(exc, shard.url, "read") from exc
        self.counters.add_request(len(data))
        if len(data) != end - start:
            raise EOFError(f"ranged read of bytes {start}-{end} returned {len(data)} bytes")
        return split_members(data, name=shard.url,
                             max_member_bytes=self.reader.max_member_bytes)

    def _next_piece(self, block: bool) -> _Span | None:
        while not self.pieces:
            if not self.reads:
                return None
            i, first, stop, wanted = self.reads[0]
            known, idx = self._index(i, block)
            if not known:
                return None
            self.reads.popleft()
            self._cut(i, first, stop, wanted, idx)
        return self.pieces[0]

    def _top_up(self) -> None:
        self._prefetch_indexes()
        while len(self.pending) < self.requests:
            piece = self._next_piece(block=not self.pending)
            if piece is None:
                return
            if piece.nbytes > 0 and self.pending and \
                    self.outstanding + piece.nbytes > self.max_bytes:
                return
            self.pieces.popleft()
            if piece.nbytes > 0:
                idx = self.reader.index(piece.shard)
                start, end = int(idx["offsets"][piece.first]), int(idx["offsets"][piece.stop])
                piece.future = self.pool.submit(self._fetch, piece.shard, start, end)
                self.outstanding += piece.nbytes
            self.pending.append(piece)
            if piece.future is None:
                return  # a streamed read: nothing to fetch ahead of it

    def __iter__(self) -> Iterator[dict]:
        try:
            while True:
                self._top_up()
                if not self.pending:
                    return
                span = self.pending.popleft()
                wanted = range(span.first, span.stop) if span.wanted is None else span.wanted
                if span.future is None:  # no index, compressed, or a member too large:
                    # streamed through fsspec's file object (its requests are not counted)
                    yield from self.reader.read_run(span.shard, span.first, span.stop, wanted)
                    continue
                t0 = time.perf_counter()
                try:
                    members = span.future.result()
                except Exception as exc:  # noqa: BLE001 - counted by read_run
                    members = exc
                self.counters.io_wait_s += time.perf_counter() - t0
                self.outstanding -= span.nbytes
                self._top_up()
                yield from self.reader.read_run(span.shard, span.first, span.stop, wanted,
                                                members=members)
        finally:
            for span in self.pending:
                if span.future is not None:
                    span.future.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)
