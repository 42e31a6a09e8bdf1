"""Pure epoch arithmetic: which samples each (rank, worker) slot reads, in which order, and
what is left after a stop. No I/O; everything is a function of
``(shard sizes, seed, epoch, layout, history)``.

The plan of an epoch:
1. The *epoch order* lists every sample position (its index in manifest order) shard by shard,
   the shards in a per-epoch shuffled order.
2. The *pool* is the epoch order, less what earlier runs of this epoch already consumed (the
   resume *history*). A fresh epoch's pool is the whole epoch order.
3. Each rank gets ``K`` batches: ``K = len(pool) // (world * batch)`` with ``drop_last`` (the
   last ``len(pool) % (world * batch)`` samples of the pool are dropped), else
   ``ceil(len(pool) / (world * batch))`` and the pool is padded by repeating its first samples.
4. Rank ``r`` takes the ``r``-th contiguous span of ``K * batch`` samples. Its batch ``j`` comes
   from DataLoader worker ``j % workers`` (the DataLoader's round robin), so worker ``w`` owns
   ``len(range(w, K, workers))`` batches; each worker takes a contiguous sub-span of that size.
5. A slot emits its span through a shuffle buffer of ``cache_size`` seeded by
   ``(seed, epoch, generation, rank, worker)``; batch ``j`` of the slot is emitted items
   ``[j * batch, (j + 1) * batch)``.

After ``k`` batches on every rank (ranks step in lockstep), slot ``(r, w)`` has delivered the
first ``len(range(w, k, workers)) * batch`` items of its emission order. That is the consumed set;
the next pool is the previous pool without it, in epoch order, whatever the new layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .shuffle import buffer_order, derive_seed, shard_order

__all__ = [
    "Layout",
    "shard_starts",
    "epoch_positions",
    "batches_per_rank",
    "worker_batches",
    "padded_pool",
    "slot_span",
    "slot_seed",
    "slot_emission",
    "consumed_positions",
    "epoch_pool",
    "positions_to_runs",
]


@dataclass(frozen=True)
class Layout:
    """How one run reads an epoch: ranks, DataLoader workers per rank, batch, buffer, policy."""

    world: int
    workers: int  # slots per rank: DataLoader num_workers, or 1 when it is 0
    batch_size: int
    cache_size: int
    drop_last: bool = True

    def __post_init__(self) -> None:
        if self.world < 1 or self.workers < 1 or self.batch_size < 1 or self.cache_size < 0:
            raise ValueError(f"invalid layout {self}")

    def to_dict(self) -> dict:
        return asdict(self)


def shard_starts(shard_sizes: Sequence[int]) -> np.ndarray:
    """Global position of each shard's first sample, plus the total at the end."""
    return np.concatenate([[0], np.cumsum(np.asarray(shard_sizes, dtype=np.int64))])


def epoch_positions(shard_sizes: Sequence[int], seed: int, epoch: int,
                    shuffle: bool = True) -> np.ndarray:
    """Every sample position, shard by shard, shards in this epoch's order."""
    starts = shard_starts(shard_sizes)
    order = shard_order(len(shard_sizes), seed, epoch, shuffle)
    if len(order) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(starts[s], starts[s + 1], dtype=np.int64) for s in order])


def batches_per_rank(pool_len: int, layout: Layout) -> int:
    """Batches every rank yields for a pool of ``pool_len`` samples."""
    per_step = layout.world * layout.batch_size
    if layout.drop_last:
        return pool_len // per_step
    return -(-pool_len // per_step)


def worker_batches(k: int, workers: int, worker: int) -> int:
    """How many of a rank's first ``k`` batches come from ``worker`` (DataLoader round robin)."""
    return len(range(worker, k, workers))


def padded_pool(pool: np.ndarray, layout: Layout) -> np.ndarray:
    """The pool cut (drop_last) or padded by repetition to ``world * K * batch`` samples."""
    k = batches_per_rank(len(pool), layout)
    need = layout.world * k * layout.batch_size
    if need <= len(pool):
        return pool[:need]
    reps = -(-need // max(1, len(pool)))
    return np.tile(pool, reps)[:need]


def slot_span(pool: np.ndarray, layout: Layout, rank: int, worker: int) -> np.ndarray:
    """Positions slot ``(rank, worker)`` reads, in read order (a contiguous span of the pool)."""
    k = batches_per_rank(len(pool), layout)
    ext = padded_pool(pool, layout)
    b = layout.batch_size
    start = rank * k * b
    for w in range(worker):
        start += worker_batches(k, layout.workers, w) * b
    return ext[start:start + worker_batches(k, layout.workers, worker) * b]


def slot_seed(seed: int, epoch: int, generation: int, rank: int, worker: int) -> int:
    return derive_seed(seed, epoch, generation, rank, worker, "buffer")


def slot_emission(pool: np.ndarray, layout: Layout, rank: int, worker: int, *, seed: int,
                  epoch: int, generation: int) -> np.ndarray:
    """Positions in the order slot ``(rank, worker)`` emits them (after its shuffle buffer)."""
    span = slot_span(pool, layout, rank, worker)
    order = buffer_order(len(span), layout.cache_size,
                         slot_seed(seed, epoch, generation, rank, worker))
    return span[order]


def consumed_positions(pool: np.ndarray, layout: Layout, batches: int, *, seed: int, epoch: int,
                       generation: int) -> np.ndarray:
    """Positions delivered once every rank has yielded ``batches`` batches of this layout."""
    k = batches_per_rank(len(pool), layout)
    if batches > k:
        raise ValueError(f"{batches} batches consumed but the layout only has {k} per rank")
    out = []
    for rank in range(layout.world):
        for worker in range(layout.workers):
            n = worker_batches(batches, layout.workers, worker) * layout.batch_size
            if n:
                out.append(slot_emission(pool, layout, rank, worker, seed=seed, epoch=epoch,
                                         generation=generation)[:n])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def epoch_pool(shard_sizes: Sequence[int], *, seed: int, epoch: int, shuffle: bool = True,
               history: Sequence[tuple[Layout, int]] = ()) -> np.ndarray:
    """What is left of the epoch after the runs in ``history`` (``(layout, batches)`` each)."""
    pool = epoch_positions(shard_sizes, seed, epoch, shuffle)
    for generation, (layout, batches) in enumerate(history):
        done = consumed_positions(pool, layout, batches, seed=seed, epoch=epoch,
                                  generation=generation)
        pool = pool[~np.isin(pool, done)]
    return pool


def positions_to_runs(positions: np.ndarray, starts: np.ndarray,
                      max_gap: int = 0) -> list[tuple[int, int, int, np.ndarray]]:
    """Group positions (in read order) into reads: ``(shard, first, stop, wanted)``.

    Consecutive positions of one shard whose gaps are at most ``max_gap`` samples form one
    read of local samples ``first..stop-1``; ``wanted`` lists the local indices to keep, in
    the order they are wanted (read order within a run is ascending).
    """
    runs: list[tuple[int, int, int, np.ndarray]] = []
    if len(positions) == 0:
        return runs
    shards = np.searchsorted(starts, positions, side="right") - 1
    local = positions - starts[shards]
    i = 0
    n = len(positions)
    while i < n:
        j = i + 1
        while j < n and shards[j] == shards[i] and 0 < local[j] - local[j - 1] <= max_gap + 1:
            j += 1
        runs.append((int(shards[i]), int(local[i]), int(local[j - 1]) + 1, local[i:j].copy()))
        i = j
    return runs
