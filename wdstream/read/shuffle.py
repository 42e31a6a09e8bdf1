"""Shuffling: per-epoch shard order, seeds per slot, and the bounded shuffle buffer.

Pure and deterministic: every random choice comes from a generator seeded by
``(seed, epoch, generation, rank, worker)``. The buffer shuffle is one function used on data
and on plain indices alike, so the emission order of a slot can be recomputed without I/O
(that is how resumption knows what was consumed).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np

__all__ = ["derive_seed", "shard_order", "buffer_shuffle", "buffer_order"]

T = TypeVar("T")
_END = object()


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes and runs)."""
    seq = np.random.SeedSequence([abs(hash_part(p)) for p in parts])
    return int(seq.generate_state(2, np.uint64)[0] >> np.uint64(1))


def hash_part(p: int | str) -> int:
    if isinstance(p, int):
        return p & 0xFFFFFFFFFFFF
    return zlib.crc32(str(p).encode())


def shard_order(n_shards: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Indices of the shards in the order this epoch reads them."""
    if not shuffle:
        return np.arange(n_shards, dtype=np.int64)
    rng = np.random.default_rng(derive_seed(seed, epoch, "shards"))
    return rng.permutation(n_shards).astype(np.int64)


def buffer_shuffle(items: Iterable[T], size: int, seed: int) -> Iterator[T]:
    """Shuffle a stream in a buffer of at most ``size`` items (``size <= 1``: unchanged order).

    As webdataset's ``shuffle(bufsize, initial)``: emitting starts once ``size // 10`` items are
    buffered (so the first batch does not wait for a full buffer), and while the buffer is below
    ``size`` each emitted item is replaced by two new ones, so it grows to ``size``. Each emitted
    item is a random one of the buffer; at the end the rest comes out in random order.
    """
    if size <= 1:
        yield from items
        return
    initial = max(1, size // 10)
    rng = random.Random(seed)
    source = iter(items)
    buf: list[T] = []
    for item in source:
        buf.append(item)
        if len(buf) < size:
            more = next(source, _END)
            if more is not _END:
                buf.append(more)
        if len(buf) >= initial:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    while buf:
        i = rng.randrange(len(buf))
        buf[i], buf[-1] = buf[-1], buf[i]
        yield buf.pop()


def buffer_order(n: int, size: int, seed: int) -> np.ndarray:
    """The permutation :func:`buffer_shuffle` applies to ``n`` items, computed on indices."""
    return np.fromiter(buffer_shuffle(range(n), size, seed), dtype=np.int64, count=n)
