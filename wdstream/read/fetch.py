"""Fetching: reads in, members out, one way.

A :class:`ShardReader` (one per worker) fetches a slot's reads ``(shard, first, stop,
wanted)`` in plan order and hands back one :class:`~wdstream.read.shards.Fetched` per
request: the read's tar members, or the exception fetching them raised. It never yields
samples itself: :func:`wdstream.read.shards.span_items` reconciles what came with what was
wanted.

- A read of an indexed, uncompressed shard is cut at sample boundaries into ranged GETs of
  at most ``request_bytes``, or 1.25 times that for a read's last request rather than a small
  tail of its own (a wanted subset is first cut where more than :data:`MAX_GAP` unwanted
  samples lie between two wanted ones), and split into members by
  :func:`~wdstream.format.tario.split_members`. A read that continues an earlier one in the
  same shard, within the look-ahead, is fetched with it (up to the same 1.25 times).
- A read of a shard without an index, a compressed one, or a whole shard (streaming mode) is
  streamed from the shard's start on one fetch thread, its members handed over in chunks of
  about ``request_bytes``.

Up to ``requests`` requests are in flight ahead of the consumer (the next shards' indexes
included), and at most ``max_bytes`` of fetched members wait unconsumed (one request always
goes out). With ``requests == 0`` everything is fetched in the consumer's thread, one request
at a time. This is the reader's only read-ahead: nothing else reads shards ahead.

One filesystem per protocol serves every request of a worker (fsspec caches instances per
process, so a forked or spawned DataLoader worker makes its own and reuses its connections),
one LRU cache holds the shard indexes, and a shard's stored size is checked against the
manifest's once, when it is first touched.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import queue
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import storage
from ..errors import ShardReadError, StorageError, redact
from ..format.index import max_index_bytes, parse_index
from ..format.tario import iter_members, split_members
from .cache import LocalCache
from .planner import Read
from .shards import Fetched, ShardRef
from .stats import Counters

__all__ = ["ReadOptions", "ShardReader", "MAX_GAP", "INDEX_CACHE"]

log = logging.getLogger(__name__)

MAX_GAP = 64  # unwanted samples a read goes through rather than opening a new ranged read
INDEX_CACHE = 64  # shard indexes a reader keeps at least: 16 bytes per sample each (version 2)
_HORIZON = 96  # reads looked ahead for one that continues a request in the same shard
_STREAM_CHUNKS = 4  # member chunks a streamed read holds ahead of the consumer


@dataclass(frozen=True)
class ReadOptions:
    """How a worker fetches: the config's read settings, gathered (see docs/reader.md,
    "Tuning")."""

    storage_options: dict
    requests: int = 8  # read_ahead_requests
    max_bytes: int = 64 * 2**20  # read_ahead_bytes
    block_size: int = 8 * 2**20  # read_block_size
    max_member_bytes: int | None = 2**30
    cache_dir: str | None = None  # local_cache_dir
    cache_bytes: int = 10 * 2**30  # local_cache_bytes
    indexes: int = INDEX_CACHE  # shard indexes kept: at least two per interleaved lane

    @classmethod
    def from_config(cls, config) -> ReadOptions:
        return cls(
            storage_options=dict(config.storage_options or {}),
            requests=int(config.read_ahead_requests),
            max_bytes=int(config.read_ahead_bytes),
            block_size=int(config.read_block_size),
            max_member_bytes=config.max_member_bytes,
            cache_dir=config.local_cache_dir,
            cache_bytes=int(config.local_cache_bytes),
            indexes=max(INDEX_CACHE, 2 * int(config.shuffle_lanes)),
        )

    @property
    def request_bytes(self) -> int:
        """The most bytes of one ranged GET: ``read_block_size``, or less when the bytes
        bound shared by the requests in flight is smaller."""
        return max(1, min(self.block_size, self.max_bytes // max(1, self.requests)))


def gap_split(wanted: np.ndarray, max_gap: int = MAX_GAP) -> list[np.ndarray]:
    """Sorted local indices cut where more than ``max_gap`` samples lie between two."""
    cuts = np.flatnonzero(np.diff(wanted) > max_gap + 1) + 1
    return np.split(wanted, cuts)


class ShardReader:
    """One worker's fetching: its filesystems, its index cache, its optional local cache.
    :meth:`fetch` runs one sequence of reads."""

    def __init__(self, options: ReadOptions):
        self.options = options
        self.cache = (
            LocalCache(options.cache_dir, options.cache_bytes) if options.cache_dir else None
        )
        self._indexes: OrderedDict[str, dict | None] = OrderedDict()
        self._index_lock = threading.Lock()
        self._filesystems: dict[str, Any] = {}
        self._fs_lock = threading.Lock()
        self._checked: set[str] = set()  # shards whose size matched the manifest's

    def fetch(
        self, shards: Sequence[ShardRef], reads: Iterable[Read], counters: Counters | None = None
    ) -> Iterator[Fetched]:
        """The members of each read (``shards[read.shard]``), in order (module doc). Closing
        the iterator cancels what is queued."""
        return iter(_Run(self, shards, reads, counters or Counters()))

    # -- filesystems -------------------------------------------------------------------
    def fs_path(self, url: str):
        """``(filesystem, path)`` for ``url``, one filesystem per protocol for all threads."""
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        fs = self._filesystems.get(protocol)
        if fs is None:
            with self._fs_lock:
                fs = self._filesystems.get(protocol)
                if fs is None:
                    fs, path = storage.url_to_fs(url, self.options.storage_options)
                    self._filesystems[protocol] = fs
                    return fs, path
        return fs, storage.fs_path(fs, url)

    # -- the shard's size, once --------------------------------------------------------
    def needs_size_check(self, shard: ShardRef) -> bool:
        """Whether :meth:`check_size` still has to ask the store for the shard's size."""
        return shard.bytes is not None and shard.data is None and shard.url not in self._checked

    def check_size(self, shard: ShardRef, size: int | None = None) -> None:
        """Raise ShardReadError when the shard's stored size differs from the manifest's
        ``bytes`` (asked once per shard, with a HEAD on an object store; ``size``: already
        known, as an open file knows it)."""
        if not self.needs_size_check(shard):
            return
        if size is None:
            fs, path = self.fs_path(shard.url)
            try:
                size = fs.size(path)
            except Exception as exc:
                raise storage.translate_error(exc, shard.url, "read") from exc
        if isinstance(size, int) and size != shard.bytes:
            raise ShardReadError(
                f"shard {redact(shard.url)} is {size} bytes, its manifest says "
                f"{shard.bytes}: it was replaced or the manifest is wrong",
                shard=shard.url,
            )
        self._checked.add(shard.url)

    # -- indexes -----------------------------------------------------------------------
    def cached_index(self, shard: ShardRef) -> tuple[bool, dict | None]:
        """``(known, index)``: whether the shard's index is in the cache (or known to be
        missing), and the index."""
        if shard.index_url is None:
            return True, None
        with self._index_lock:
            if shard.index_url in self._indexes:
                self._indexes.move_to_end(shard.index_url)
                return True, self._indexes[shard.index_url]
        return False, None

    def remember_index(self, shard: ShardRef, idx: dict | None) -> None:
        with self._index_lock:
            self._indexes[shard.index_url] = idx
            self._indexes.move_to_end(shard.index_url)
            if len(self._indexes) > self.options.indexes:
                self._indexes.popitem(last=False)

    def load_index(self, shard: ShardRef, counters: Counters) -> dict | None:
        """The shard's index, read with one bounded ranged GET (no HEAD first); None when it
        is missing or unusable (a WARNING: it only costs speed)."""
        try:
            data = self._read_index_bytes(shard, counters)
            return parse_index(data, shard.samples)
        except Exception as exc:  # noqa: BLE001 - a missing index only costs speed
            log.warning(
                "no usable index for %s (%s); reading the shard from its start",
                redact(shard.url),
                exc,
            )
            return None

    def _read_index_bytes(self, shard: ShardRef, counters: Counters) -> bytes:
        fs, path = self.fs_path(shard.index_url)
        data = storage.read_bytes(
            shard.index_url, max_bytes=max_index_bytes(shard.samples), fs=fs, path=path
        )
        counters.add_request(len(data), index=True)
        return data

    # -- bytes -------------------------------------------------------------------------
    def read_range(
        self, shard: ShardRef, bounds: Sequence[tuple[int, int]], counters: Counters
    ) -> list[list]:
        """The members of each of ``bounds`` (contiguous byte ranges of an uncompressed shard,
        in order), fetched together: one ranged GET, a seek in the local cache, or a slice of
        in-memory bytes."""
        start, end = bounds[0][0], bounds[-1][1]
        if shard.data is not None:
            data = shard.data[start:end]
        elif self.cache is not None:
            with self.cache.open(shard.url, self.options.storage_options) as f:
                f.seek(start)
                data = f.read(end - start)
        else:
            fs, path = self.fs_path(shard.url)
            try:
                data = fs.cat_file(path, start=start, end=end)
            except Exception as exc:
                raise storage.translate_error(exc, shard.url, "read") from exc
            counters.add_request(len(data))
        if len(data) != end - start:
            raise EOFError(f"ranged read of bytes {start}-{end} returned {len(data)} bytes")
        view = memoryview(data)
        return [
            split_members(
                view[a - start : b - start],
                name=shard.url,
                max_member_bytes=self.options.max_member_bytes,
            )
            for a, b in bounds
        ]

    def open(self, shard: ShardRef):
        """The shard as a file object from its start (in memory, the local cache, or fsspec),
        its size checked against the manifest's."""
        if shard.data is not None:
            return io.BytesIO(shard.data)
        if self.cache is not None:
            f = self.cache.open(shard.url, self.options.storage_options)
            size = os.fstat(f.fileno()).st_size
        else:
            f = storage.open_read(
                shard.url, self.options.storage_options, block_size=self.options.block_size
            )
            size = getattr(f, "size", None)
        try:
            self.check_size(shard, size if isinstance(size, int) else None)
        except BaseException:
            f.close()
            raise
        return f

    def stream_members(self, shard: ShardRef, offset: int = 0) -> Iterator[tuple[str, Any]]:
        """The shard's members from byte ``offset`` (a sample's first header) on, read as a
        stream."""
        with self.open(shard) as f:
            if offset:
                f.seek(offset)
            yield from iter_members(
                f, name=shard.url, max_member_bytes=self.options.max_member_bytes
            )


class _Piece:
    """One request of a run (a ranged GET, or a streamed read), in plan order."""

    __slots__ = (
        "shard",
        "first",
        "stop",
        "wanted",
        "index",
        "nbytes",
        "range",
        "offset",
        "future",
        "stream",
        "error",
        "part",
        "bounds",
        "carried",
        "sid",
    )

    def __init__(
        self,
        shard,
        first,
        stop,
        wanted,
        index=None,
        nbytes=0,
        byte_range=None,
        offset=None,
        error=None,
    ):
        self.shard, self.first, self.stop, self.wanted = shard, first, stop, wanted
        self.index, self.nbytes, self.range, self.error = index, nbytes, byte_range, error
        self.offset = offset  # a streamed read from this byte (sample ``first``'s header)
        self.future: Future | None = None
        self.stream: _Stream | None = None
        self.part = 0  # which of its request's byte ranges is this piece's
        self.bounds: list[tuple[int, int]] = [byte_range] if byte_range else []
        self.carried = False  # fetched with an earlier piece's request
        self.sid = -1  # the shard's index in the run's shards


class _Stream:
    """A streamed read on a fetch thread: members handed over in chunks of about
    ``chunk_bytes`` through a bounded queue; closing it stops the thread at its next chunk."""

    def __init__(self, members: Iterator, chunk_bytes: int):
        self.members, self.chunk_bytes = members, chunk_bytes
        self.q: queue.Queue = queue.Queue(_STREAM_CHUNKS)
        self.stop = threading.Event()

    def _put(self, x) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(x, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        chunk: list = []
        size = 0
        try:
            for name, data in self.members:
                chunk.append((name, data))
                size += len(data) if isinstance(data, bytes) else 0
                if size >= self.chunk_bytes:
                    if not self._put(chunk):
                        return
                    chunk, size = [], 0
            self._put(chunk)
            self._put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(chunk)
            self._put(exc)
        finally:
            self.members.close()

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        try:
            while True:
                x = self.q.get()
                if x is None:
                    return
                if isinstance(x, BaseException):
                    raise x
                yield from x
        finally:
            self.close()

    def close(self) -> None:
        self.stop.set()


class _Deferred(Future):
    """A future run on its first ``result()`` (``requests == 0``: nothing runs ahead)."""

    def __init__(self, fn, args):
        super().__init__()
        self._call = (fn, args)

    def done(self) -> bool:
        return True

    def result(self, timeout=None):
        if self._call is not None:
            fn, args = self._call
            self._call = None
            try:
                self.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - re-raised by result()
                self.set_exception(exc)
        return super().result(timeout)


class _Run:
    """One sequence of reads, fetched ahead (see the module doc)."""

    def __init__(
        self,
        reader: ShardReader,
        shards: Sequence[ShardRef],
        reads: Iterable[Read],
        counters: Counters,
    ):
        self.reader, self.shards, self.counters = reader, shards, counters
        opts = reader.options
        self.requests = max(1, opts.requests)
        self.max_bytes = max(1, opts.max_bytes)
        self.request_bytes = opts.request_bytes
        self.pool = (
            ThreadPoolExecutor(opts.requests, thread_name_prefix="wdstream-fetch")
            if opts.requests > 0
            else None
        )
        self.source = iter(reads)
        self.ahead: deque[Read] = deque()  # reads taken from the source, not yet cut
        self.pending: deque[_Piece] = deque()  # submitted, not yet consumed
        self.outstanding = 0  # bytes of pending ranged requests
        self.pieces: deque[_Piece] = deque()  # the current read cut into requests
        self.indexes: dict[int, Future] = {}  # shard -> index being fetched
        self.failed: dict[int, BaseException] = {}  # shards that cannot be read at all
        self.later: dict[tuple[int, int, int], _Piece] = {}  # reads fetched with earlier ones
        self.carried = 0  # bytes fetched for later reads, not yet consumed
        self.sizes: dict[int, Future] = {}  # shard -> its size check, beside its first span
        first = self._peek(1)
        if first and self.pool is not None:
            self._warm_up(first[0])

    def _warm_up(self, read: Read) -> None:
        """The first request goes alone, from the consumer's thread, before the fetch threads
        start: s3fs builds its client, and botocore its request machinery, on the first
        requests without a lock, and eight fetch threads starting at once in a fresh worker
        each did that work (about 1 s before a worker's first response on loopback S3; 0.04 s
        once one request has gone first). That request is the first shard's index, which
        the first span needs anyway (no HEAD first: the size check runs beside the span)."""
        shard = self.shards[read.shard]
        if shard.data is not None:
            return
        try:
            self.reader.fs_path(shard.url)
        except StorageError:
            return  # the read itself reports it, naming the shard
        if (
            shard.index_url is not None
            and read.stop is not None
            and not self.reader.cached_index(shard)[0]
        ):
            self.reader.remember_index(shard, self.reader.load_index(shard, self.counters))

    def _submit(self, fn, *args) -> Future:
        if self.pool is None:
            return _Deferred(fn, args)
        return self.pool.submit(fn, *args)

    def _peek(self, n: int) -> deque[Read]:
        while len(self.ahead) < n:
            read = next(self.source, None)
            if read is None:
                break
            self.ahead.append(read)
        return self.ahead

    # -- indexes and sizes -------------------------------------------------------------
    def _load_index(self, shard: ShardRef):
        try:
            return self.reader.load_index(shard, self.counters)
        except Exception as exc:  # noqa: BLE001 - the shard itself is bad: every read fails
            return _Failed(exc)

    def _check_size_beside(self, i: int) -> None:
        """Start the size check of shard ``i`` (a HEAD on an object store) on a fetch thread,
        right before its first span's request, so that it adds no round trip before the
        first span and keeps no index or span of another shard waiting for a thread; that
        span's members wait for it (:meth:`_size_error`)."""
        if i not in self.sizes and self.reader.needs_size_check(self.shards[i]):
            self.sizes[i] = self._submit(self.reader.check_size, self.shards[i])

    def _size_error(self, i: int) -> BaseException | None:
        """The error of shard ``i``'s size check (None when it passed, or none was made)."""
        fut = self.sizes.get(i)
        if fut is None:
            return self.failed.get(i)
        try:
            fut.result()
        except Exception as exc:  # noqa: BLE001 - counted by span_items, as the read's error
            self.failed[i] = exc
        del self.sizes[i]
        return self.failed.get(i)

    def _prefetch_indexes(self) -> None:
        """Start fetching the indexes of the next few shards the plan reads."""
        if self.pool is None:
            return
        started = 0
        for read in itertools.islice(self._peek(4 * self.requests), 4 * self.requests):
            if started >= self.requests:
                break
            i = read.shard
            shard = self.shards[i]
            if i in self.indexes or i in self.failed or self.reader.cached_index(shard)[0]:
                continue
            self.indexes[i] = self.pool.submit(self._load_index, shard)
            started += 1

    def _index(self, i: int, block: bool) -> tuple[bool, dict | None]:
        """``(known, index)`` of shard ``i``; waits only when ``block``."""
        if i in self.failed:
            return True, None
        shard = self.shards[i]
        fut = self.indexes.get(i)
        if fut is None:
            known, idx = self.reader.cached_index(shard)
            if known:
                return True, idx
            fut = self.indexes[i] = self._submit(self._load_index, shard)
        if not fut.done() and not block:
            return False, None
        t0 = time.perf_counter()
        idx = fut.result()
        self.counters.io_wait_s += time.perf_counter() - t0
        del self.indexes[i]
        if isinstance(idx, _Failed):
            self.failed[i] = idx.exc
            return True, None
        self.reader.remember_index(shard, idx)
        return True, idx

    # -- cutting reads into requests ---------------------------------------------------
    def _cut(self, read: Read, idx: dict | None) -> None:
        shard = self.shards[read.shard]
        if read.wanted is None and (read.shard, read.first, read.stop) in self.later:
            self.pieces.append(self.later.pop((read.shard, read.first, read.stop)))
            return  # fetched with an earlier read of the same shard
        wanted = None if read.wanted is None else np.asarray(read.wanted)
        if read.shard in self.failed:
            self.pieces.append(
                _Piece(shard, read.first, read.stop, wanted, error=self.failed[read.shard])
            )
            return
        if idx is None or idx.get("whole") or read.stop is None:
            self.pieces.append(_Piece(shard, read.first, read.stop, wanted, idx))
            return
        parts = (
            [(read.first, read.stop, None)]
            if wanted is None
            else [(int(p[0]), int(p[-1]) + 1, p) for p in gap_split(wanted)]
        )
        offsets = idx["offsets"]
        for first, stop, part in parts:
            a = first
            while a < stop:
                if int(offsets[stop]) - int(offsets[a]) <= self.request_bytes * 5 // 4:
                    b = stop  # the rest in one request: no tail smaller than it must be
                else:
                    limit = int(offsets[a]) + self.request_bytes
                    b = int(np.searchsorted(offsets, limit, side="right")) - 1
                    b = min(stop, max(a + 1, b))
                sub = None if part is None else part[(part >= a) & (part < b)]
                if sub is None or len(sub):
                    start, end = int(offsets[a]), int(offsets[b])
                    limit_member = self.reader.options.max_member_bytes
                    if limit_member is not None and end - start > limit_member:
                        # a member too large: streamed, so it is read through, never held
                        self.pieces.append(_Piece(shard, a, b, sub, idx, offset=start))
                    else:
                        piece = _Piece(shard, a, b, sub, idx, end - start, (start, end))
                        if part is None and b == stop:
                            self._coalesce(piece, read.shard, offsets)
                        self.pieces.append(piece)
                a = b

    def _coalesce(self, piece: _Piece, i: int, offsets) -> None:
        """Fetch the reads that continue ``piece`` in the same shard (later in the plan,
        within the look-ahead) with its request, while the request stays within 1.25
        requests' bytes and what waits for later reads within half the bytes bound: no
        request smaller than it must be."""
        limit = self.request_bytes * 5 // 4
        start, end = piece.range
        cur = piece.stop
        for read in itertools.islice(self._peek(_HORIZON), _HORIZON):
            if read.shard != i:
                continue
            key = (read.shard, read.first, read.stop)
            if (
                read.wanted is not None
                or read.stop is None
                or read.first != cur
                or key in self.later
            ):
                break  # the shard is read otherwise next: stop here
            nbytes = int(offsets[read.stop]) - end
            if end + nbytes - start > limit or self.carried + nbytes > self.max_bytes // 2:
                break
            later = _Piece(
                piece.shard, read.first, read.stop, None, piece.index, nbytes, (end, end + nbytes)
            )
            later.carried, later.part, later.future = True, len(piece.bounds), piece
            piece.bounds.append((end, end + nbytes))
            self.later[key] = later
            self.carried += nbytes
            piece.nbytes += nbytes
            cur, end = read.stop, end + nbytes

    def _next_piece(self, block: bool) -> _Piece | None:
        while not self.pieces:
            ahead = self._peek(1)
            if not ahead:
                return None
            read = ahead[0]
            known, idx = (
                self._index(read.shard, block)
                if self.shards[read.shard].index_url and read.stop is not None
                else (True, None)
            )
            if not known:
                return None
            self.ahead.popleft()
            self._cut(read, idx)
            for piece in self.pieces:
                piece.sid = read.shard
        return self.pieces[0]

    def _stream(self, piece: _Piece) -> Iterator[tuple[str, Any]]:
        return self.reader.stream_members(piece.shard, piece.offset or 0)

    def _top_up(self, block: bool = True) -> None:
        """Send requests until ``requests`` are in flight or the bytes bound is reached;
        waits for an index only when nothing is in flight and ``block``."""
        self._prefetch_indexes()
        while len(self.pending) < self.requests:
            piece = self._next_piece(block=block and not self.pending)
            if piece is None:
                return
            if (
                piece.nbytes > 0
                and not piece.carried
                and self.pending
                and self.outstanding + piece.nbytes > self.max_bytes
            ):
                return
            self.pieces.popleft()
            if piece.carried:
                piece.future = piece.future.future  # the request of the piece it came with
            elif piece.error is None:
                if piece.range is not None:
                    self._check_size_beside(piece.sid)
                    piece.future = self._submit(
                        self.reader.read_range, piece.shard, piece.bounds, self.counters
                    )
                    self.outstanding += piece.nbytes
                elif self.pool is not None:
                    piece.stream = _Stream(self._stream(piece), self.request_bytes)
                    piece.future = self.pool.submit(piece.stream.run)
            self.pending.append(piece)
            if piece.range is None:
                return  # a streamed read: nothing is fetched ahead of it

    def _await(self, fut: Future) -> None:
        """Wait for ``fut`` (a request the consumer needs next); when an index the plan
        waits for arrives first, cut and send the requests it unblocks at once, rather than
        after ``fut``: otherwise the fetch threads idle while the consumer waits (at an
        epoch's start, the first span's transfer time for every other lane)."""
        if self.pool is None:
            return  # everything is fetched in this thread: nothing to send meanwhile
        while not fut.done():
            waiting = [f for f in self.indexes.values() if not f.done()]
            if not waiting or len(self.pending) >= self.requests:
                return
            wait([fut, *waiting], return_when=FIRST_COMPLETED)
            self._top_up(block=False)

    def _members(self, piece: _Piece):
        """The piece's members (a list, or a stream), or the exception fetching raised."""
        if piece.error is not None:
            return piece.error
        if piece.range is None:
            return iter(piece.stream) if piece.stream is not None else self._stream(piece)
        t0 = time.perf_counter()
        self._await(piece.future)
        try:
            members = piece.future.result()[piece.part]
        except Exception as exc:  # noqa: BLE001 - counted by span_items
            members = exc
        error = self._size_error(piece.sid)
        if error is not None:
            members = error
        self.counters.io_wait_s += time.perf_counter() - t0
        if piece.carried:
            self.carried -= piece.nbytes
        else:
            piece.nbytes -= sum(b - a for a, b in piece.bounds[1:])  # carried ones count theirs
        self.outstanding -= piece.nbytes
        return members

    def __iter__(self) -> Iterator[Fetched]:
        current = None
        try:
            while True:
                self._top_up()
                if not self.pending:
                    return
                current = piece = self.pending.popleft()
                members = self._members(piece)
                self._top_up()
                yield Fetched(
                    piece.shard,
                    piece.first,
                    piece.stop,
                    piece.wanted,
                    members,
                    piece.index,
                    piece.range is not None or piece.offset is not None,
                )
        finally:
            for piece in [current, *self.pending] if current is not None else self.pending:
                if piece.stream is not None:
                    piece.stream.close()
                if piece.future is not None:
                    piece.future.cancel()
            for fut in self.indexes.values():
                fut.cancel()
            if self.pool is not None and not sys.is_finalizing():
                self.pool.shutdown(wait=True, cancel_futures=True)


class _Failed:
    """An index load that found the shard itself unreadable."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc
