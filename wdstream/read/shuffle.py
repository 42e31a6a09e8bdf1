"""Streaming mode's plan and shuffling (no manifest, or ``exact=False``): which shards a slot
reads (:class:`StreamPlan`: one pass over its share of the per-epoch shard order, or shards
drawn at random with replacement) and the bounded shuffle buffer. Exact mode shuffles in
seekable windows instead (:mod:`wdstream.read.windows`), so that a resume knows what was
consumed without replaying a buffer; this buffer stays for streams whose length is unknown.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from .planner import Read
from .seeds import derive_seed, shard_order

__all__ = ["StreamPlan", "stream_plan", "stream_reads", "buffer_shuffle"]

T = TypeVar("T")
_END = object()


@dataclass(frozen=True)
class StreamPlan:
    """What a slot reads in streaming mode: one pass over ``shards`` (indices, in order), or,
    when ``shards`` is None, shards drawn at random with replacement forever (webdataset's
    resampling) from a generator seeded by ``seed``; samples then pass a shuffle buffer of
    ``buffer`` samples seeded by ``seed`` (``shuffle`` False: no buffer)."""

    shards: tuple[int, ...] | None
    seed: int
    buffer: int
    shuffle: bool = True


def stream_plan(
    n_shards: int,
    *,
    seed: int,
    epoch: int,
    rank: int,
    worker: int,
    workers: int,
    shuffle: bool,
    cache_size: int,
    endless: bool,
) -> StreamPlan:
    """The streaming plan of slot ``(rank, worker)``: ``endless`` (the epoch has a nominal
    length) draws shards at random; else the worker's share of one pass over the epoch's shard
    order (shards split over the workers)."""
    slot_seed = derive_seed(seed, epoch, rank, worker, "stream")
    mine = (
        None
        if endless
        else tuple(int(i) for i in shard_order(n_shards, seed, epoch, shuffle)[worker::workers])
    )
    return StreamPlan(mine, slot_seed, int(cache_size), bool(shuffle))


def stream_reads(plan: StreamPlan, n_shards: int) -> Iterator[Read]:
    """Whole-shard reads of a streaming plan, in order (endless when shards are drawn)."""
    if plan.shards is not None:
        for i in plan.shards:
            yield Read(i, 0, None)
        return
    rng = random.Random(plan.seed)
    while True:
        yield Read(rng.randrange(n_shards), 0, None)


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
