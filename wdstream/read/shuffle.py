"""Streaming mode's shuffling (no manifest, or ``exact=False``): the per-epoch shard order
and the bounded shuffle buffer. Exact mode shuffles in seekable windows instead
(:mod:`wdstream.read.windows`), so that a resume knows what was consumed without replaying a
buffer; this buffer stays for streams whose length is unknown.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import TypeVar

from .seeds import derive_seed, shard_order

__all__ = ["derive_seed", "shard_order", "buffer_shuffle"]

T = TypeVar("T")
_END = object()


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
