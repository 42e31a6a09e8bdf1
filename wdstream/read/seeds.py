"""Seeds of every random choice of the read plan, and the per-epoch shard order.

Everything random in an epoch comes from a generator seeded by :func:`derive_seed` of the
user's seed and the coordinates of the choice (epoch, generation, rank, worker, ...), so the
plan is a pure function of its inputs, identical on every process that computes it.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["derive_seed", "shard_order", "slot_seed"]


def _part(p: int | str) -> int:
    if isinstance(p, int):
        return p & 0xFFFFFFFFFFFF
    return zlib.crc32(str(p).encode())


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes and runs)."""
    seq = np.random.SeedSequence([abs(_part(p)) for p in parts])
    return int(seq.generate_state(2, np.uint64)[0] >> np.uint64(1))


def shard_order(
    n_shards: int, seed: int, epoch: int, shuffle: bool = True, pass_no: int = 0
) -> np.ndarray:
    """Indices of the shards in the order ``epoch`` reads them.

    ``pass_no`` > 0 gives the order of a further pass over the source within the same epoch
    (a mixed source that ran out and is resampled); pass 0 is the epoch's own order.
    """
    if not shuffle:
        return np.arange(n_shards, dtype=np.int64)
    key = (seed, epoch, "shards") if pass_no == 0 else (seed, epoch, "shards", pass_no)
    rng = np.random.default_rng(derive_seed(*key))
    return rng.permutation(n_shards).astype(np.int64)


def slot_seed(
    seed: int, epoch: int, generation: int, rank: int, worker: int, salt: str = ""
) -> int:
    """Seed of the window permutations of slot ``(rank, worker)`` reading ``generation``'s
    pool (``salt``: the source name when several sources share a slot)."""
    parts: tuple[int | str, ...] = (seed, epoch, generation, rank, worker, "window")
    return derive_seed(*parts, salt) if salt else derive_seed(*parts)
