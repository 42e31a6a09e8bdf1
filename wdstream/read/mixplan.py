"""Mixed sources as arithmetic: per-step source counts, the batch count, and each source's
split over the slots, so a mixed epoch is exact, equal per rank and resumable.

Step ``j`` (batch ``j`` of every rank) takes ``counts[j, s]`` samples of source ``s``: a seeded
multinomial of ``batch_size`` over the weights, drawn in blocks of :data:`BLOCK` steps (one
generator per block, so a step's counts do not depend on how many steps are drawn). Every
rank has the same counts, hence the same batches. Inside a batch the sources come in a seeded
order (:meth:`MixPlan.batch_sources`).

Each source is then planned like a single source (:mod:`wdstream.read.planner`) with a
:class:`~wdstream.read.planner.Split` whose worker ``w`` reads
``sum(counts[j, s] for j in range(w, K, workers))`` items: resuming a mixed epoch is the same
pool arithmetic per source, and O(K) per generation, never O(samples).

- ``mode="stop"``: the epoch ends before the first step some source cannot fill
  (``world * sum(counts[:K+1, s]) > pool_s``); what is left of each source is its dropped tail.
- ``mode="resample"``: sources are cyclic (each pass a new shard order) and the epoch is
  ``samples`` samples (``K = samples // (world * batch)``).

``caps`` (``max_samples_per_dataset``): a source gives at most ``cap`` samples in the epoch
(over all ranks and resumes). In the step where a source would pass its cap, it gives what is
left of it (rounded down to a multiple of ``world``, so every rank gets the same), the rest
of that step is drawn from the other sources by weight, and the source leaves the mix. The
epoch ends before a step that no source left in the mix can fill.

Batches are always full (``drop_last`` does not apply). Each source's windows are at most
:func:`source_window` items (``cache_size // len(sources)``), so a worker still holds at most
``cache_size`` samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..config import MIX_MODES
from ..errors import ConfigError
from .planner import Layout, Pool, Split, epoch_plan, slot_window
from .seeds import derive_seed

__all__ = [
    "BLOCK",
    "MixPlan",
    "normalise_weights",
    "mix_weights",
    "source_window",
    "step_counts",
    "mix_plan",
    "mixed_epoch",
]

BLOCK = 1024  # steps drawn per generator


def normalise_weights(names, weights: Mapping[str, float] | None) -> dict[str, float]:
    """Weights for ``names`` summing to 1; empty/None weights mean equal weights. The one
    check of mixing weights, for planned and streamed mixes alike.

    Raises ConfigError for a weight naming no source, a source without a weight, a negative
    or non-finite weight, or weights that are all zero.
    """
    names = list(names)
    if not names:
        raise ConfigError("nothing to mix: no sources")
    if not weights:
        return {n: 1.0 / len(names) for n in names}
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ConfigError(
            f"weights name unknown source(s) {unknown}; the sources are {names}", key=unknown[0]
        )
    missing = [n for n in names if n not in weights]
    if missing:
        raise ConfigError(
            f"no weight for source(s) {missing}; give every source a weight "
            f"(config.weights) or none for equal weights",
            key=missing[0],
        )
    for name in names:
        w = weights[name]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(
                f"weight of {name!r} must be a finite number >= 0, not {w!r}", key=name
            )
    total = float(sum(weights[n] for n in names))
    if total <= 0:
        raise ConfigError(f"the weights {dict(weights)} are all zero")
    return {n: weights[n] / total for n in names}


def mix_weights(names: Sequence[str], weights: Mapping[str, float] | None) -> np.ndarray:
    """Probabilities of ``names`` in order (None or empty: equal weights); ConfigError as
    :func:`normalise_weights`."""
    probs = normalise_weights(names, weights)
    return np.array([probs[n] for n in names], dtype=np.float64)


def source_window(cache_size: int, n_sources: int) -> int:
    """Window cap of each of ``n_sources`` sources sharing a worker's ``cache_size``."""
    return cache_size if cache_size <= 1 else max(1, cache_size // n_sources)


def step_counts(
    probs: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    generation: int,
    start: int,
    stop: int,
    salt: tuple = (),
) -> np.ndarray:
    """``counts[j - start, s]`` for steps ``start <= j < stop``: samples of each source
    (``salt``: tells apart the draws after a capped source left the mix)."""
    out = np.zeros((max(0, stop - start), len(probs)), dtype=np.int64)
    for block in range(start // BLOCK, -(-stop // BLOCK)):
        rng = np.random.default_rng(derive_seed(seed, epoch, generation, "mix", block, *salt))
        drawn = rng.multinomial(batch_size, probs, size=BLOCK)
        lo, hi = max(start, block * BLOCK), min(stop, (block + 1) * BLOCK)
        out[lo - start : hi - start] = drawn[lo - block * BLOCK : hi - block * BLOCK]
    return out


@dataclass(frozen=True, eq=False)
class MixPlan:
    """One generation of a mixed epoch: ``counts[j, s]`` samples of ``names[s]`` in step
    ``j``'s batch on every rank; ``len(counts)`` batches per rank."""

    names: tuple[str, ...]
    layout: Layout
    counts: np.ndarray
    seed: int
    epoch: int
    generation: int
    shuffle: bool = True

    @property
    def batches(self) -> int:
        return len(self.counts)

    def _column(self, name: str) -> np.ndarray:
        return self.counts[:, self.names.index(name)]

    def worker_lengths(self, name: str) -> tuple[int, ...]:
        """Items of source ``name`` each worker of a rank reads this generation."""
        col, w = self._column(name), self.layout.workers
        return tuple(int(col[i::w].sum()) for i in range(w))

    def split(self, name: str) -> Split:
        """Source ``name``'s pool laid over the slots."""
        window = slot_window(source_window(self.layout.cache_size, len(self.names)), self.shuffle)
        return Split(self.layout.world, self.worker_lengths(name), window)

    def emitted(self, name: str, k: int) -> tuple[int, ...]:
        """Items of source ``name`` each worker emitted once every rank yielded ``k`` batches."""
        col, w = self._column(name)[:k], self.layout.workers
        return tuple(int(col[i::w].sum()) for i in range(w))

    def batch_sources(self, step: int) -> np.ndarray:
        """Source index of each item of step ``step``'s batch, in batch order."""
        multiset = np.repeat(np.arange(len(self.names)), self.counts[step])
        rng = np.random.default_rng(
            [derive_seed(self.seed, self.epoch, self.generation, "order"), step]
        )
        return rng.permutation(multiset)


def _stop_counts(
    lengths: np.ndarray,
    probs: np.ndarray,
    layout: Layout,
    *,
    seed: int,
    epoch: int,
    generation: int,
) -> np.ndarray:
    """Counts of every step while each source can fill it on every rank: O(K)."""
    if (lengths[probs > 0] >= 1 << 61).all():
        raise ValueError("mode='stop' needs finite pools")
    done = np.zeros(len(probs), dtype=np.int64)
    chunks = []
    block = 0
    while True:
        c = step_counts(
            probs,
            layout.batch_size,
            seed=seed,
            epoch=epoch,
            generation=generation,
            start=block * BLOCK,
            stop=(block + 1) * BLOCK,
        )
        used = done + np.cumsum(c, axis=0) * layout.world
        short = np.flatnonzero((used > lengths).any(axis=1))
        if short.size:
            chunks.append(c[: short[0]])
            return np.concatenate(chunks)
        chunks.append(c)
        done = used[-1]
        block += 1


def _capped_counts(
    probs: np.ndarray,
    limits: np.ndarray,
    ends: np.ndarray,
    layout: Layout,
    k_max: int | None,
    *,
    seed: int,
    epoch: int,
    generation: int,
) -> np.ndarray:
    """Counts of every step when sources have caps: a source leaves the mix at its limit
    (``ends[s]``: reaching it ends the epoch instead: a pool that ran out in mode 'stop').
    Drawn in blocks as :func:`step_counts`, with one Python step per source that leaves."""
    world, batch = layout.world, layout.batch_size
    active = probs > 0
    used = np.zeros(len(probs), dtype=np.int64)
    chunks: list[np.ndarray] = []
    step, salt = 0, ()
    while k_max is None or step < k_max:
        end = (
            (step // BLOCK + 1) * BLOCK
            if k_max is None
            else min((step // BLOCK + 1) * BLOCK, k_max)
        )
        p = np.where(active, probs, 0.0)
        if p.sum() <= 0:
            break
        c = step_counts(
            p / p.sum(),
            batch,
            seed=seed,
            epoch=epoch,
            generation=generation,
            start=step,
            stop=end,
            salt=salt,
        )
        cum = used + np.cumsum(c, axis=0) * world
        bad = np.flatnonzero((cum > limits).any(axis=1))
        if not bad.size:
            chunks.append(c)
            used, step = cum[-1], end
            continue
        b = int(bad[0])
        chunks.append(c[:b])
        used = used + c[:b].sum(axis=0) * world
        row = _fill_step(
            c[b],
            probs,
            limits,
            ends,
            used,
            active,
            world,
            np.random.default_rng(derive_seed(seed, epoch, generation, "mix-cap", step + b)),
        )
        if row is None:
            break
        chunks.append(row[None])
        used = used + row * world
        step = step + b + 1
        salt = ("active", int(sum(1 << i for i in np.flatnonzero(active))), step)
    if not chunks:
        return np.zeros((0, len(probs)), dtype=np.int64)
    return np.concatenate(chunks).astype(np.int64)


def _fill_step(
    row: np.ndarray,
    probs: np.ndarray,
    limits: np.ndarray,
    ends: np.ndarray,
    used: np.ndarray,
    active: np.ndarray,
    world: int,
    rng: np.random.Generator,
) -> np.ndarray | None:
    """The step's counts with every source within its limit: sources over it give what they
    have left and leave ``active``; their excess is drawn again from the others. None when
    the step cannot be filled (the epoch ends before it)."""
    row = row.copy()
    excess = 0
    while True:
        room = (limits - used) // world - row
        over = room < 0
        if (over & ends).any():
            return None
        excess += int(-room[over].sum())
        row[over] += room[over]
        active &= ~over
        if excess == 0:
            return row
        p = np.where(active, probs, 0.0)
        if p.sum() <= 0:
            return None
        add = rng.multinomial(excess, p / p.sum())
        row += add
        excess = 0


def mix_plan(
    pool_lengths: Mapping[str, int],
    weights: Mapping[str, float] | None,
    *,
    seed: int,
    epoch: int,
    layout: Layout,
    mode: str = "stop",
    generation: int = 0,
    samples: int | None = None,
    caps: Mapping[str, int] | None = None,
    shuffle: bool = True,
) -> MixPlan:
    """The mixed plan of one generation over pools of ``pool_lengths`` samples.

    ``samples`` (mode ``"resample"`` only, required there): samples this generation yields
    over all ranks, rounded down to whole steps. ``caps``: samples each source may still
    give this epoch (see the module doc); a name missing from it has no cap.
    """
    if mode not in MIX_MODES:
        raise ConfigError(f"mix mode must be one of {MIX_MODES}, not {mode!r}")
    names = tuple(sorted(pool_lengths))
    probs = mix_weights(names, weights)
    lengths = np.array([pool_lengths[n] for n in names], dtype=np.int64)
    if caps:
        if mode == "resample" and (samples is None or samples < 0):
            raise ValueError("mode='resample' needs samples >= 0 (the epoch's length)")
        cap = np.array([caps.get(n, 1 << 62) for n in names], dtype=np.int64)
        limits = np.minimum(lengths, np.maximum(cap, 0))
        ends = (lengths <= cap) if mode == "stop" else np.zeros(len(names), dtype=bool)
        k_max = None if mode == "stop" else samples // (layout.world * layout.batch_size)
        counts = _capped_counts(
            probs, limits, ends, layout, k_max, seed=seed, epoch=epoch, generation=generation
        )
    elif mode == "stop":
        counts = _stop_counts(lengths, probs, layout, seed=seed, epoch=epoch, generation=generation)
    else:
        if samples is None or samples < 0:
            raise ValueError("mode='resample' needs samples >= 0 (the epoch's length)")
        empty = [n for n, p, m in zip(names, probs, lengths, strict=True) if p > 0 and m == 0]
        if empty:
            raise ValueError(f"cannot resample empty source(s) {empty}")
        k = samples // (layout.world * layout.batch_size)
        counts = step_counts(
            probs, layout.batch_size, seed=seed, epoch=epoch, generation=generation, start=0, stop=k
        )
    return MixPlan(names, layout, counts, seed, epoch, generation, shuffle)


def mixed_epoch(
    sources: Mapping[str, Sequence[int]],
    weights: Mapping[str, float] | None,
    *,
    seed: int,
    epoch: int,
    layout: Layout,
    mode: str = "stop",
    shuffle: bool = True,
    history: Sequence[tuple[Layout, int]] = (),
    samples: int | None = None,
    caps: Mapping[str, int] | None = None,
    sample_bytes: Mapping[str, float | None] | None = None,
) -> tuple[MixPlan, dict[str, Pool]]:
    """The current generation's mixed plan and each source's pool, after ``history``.
    ``caps``: the most samples each source gives in the epoch (``max_samples_per_dataset``);
    ``sample_bytes``: each source's mean sample size, which sizes its order's chunks.

    ``sources`` maps names to shard sizes. Slot ``(rank, worker)`` of source ``name`` is
    ``pools[name].slot(plan.split(name), rank, worker)``; its batch ``i`` is step
    ``worker + i * workers`` of ``plan``.
    """
    cyclic = mode == "resample"
    first = history[0][0] if history else layout
    window = source_window(first.cache_size, len(sources))
    pools = {
        n: epoch_plan(
            sizes,
            seed=seed,
            epoch=epoch,
            shuffle=shuffle,
            salt=n,
            cyclic=cyclic,
            layout=first,
            window=window,
            sample_bytes=(sample_bytes or {}).get(n),
        )
        for n, sizes in sources.items()
    }
    left = samples
    caps_left = dict(caps) if caps else None
    for generation, (old, k) in enumerate(history):
        plan = mix_plan(
            {n: p.length for n, p in pools.items()},
            weights,
            seed=seed,
            epoch=epoch,
            layout=old,
            mode=mode,
            generation=generation,
            samples=left,
            caps=caps_left,
            shuffle=shuffle,
        )
        if not 0 <= k <= plan.batches:
            raise ValueError(
                f"{k} batches consumed but generation {generation} has {plan.batches} per rank"
            )
        pools = {n: p.after(plan.split(n), plan.emitted(n, k)) for n, p in pools.items()}
        if left is not None:
            left = max(0, left - k * old.world * old.batch_size)
        if caps_left is not None:
            given = plan.counts[:k].sum(axis=0) * old.world
            caps_left = {
                n: c - int(given[plan.names.index(n)]) if n in plan.names else c
                for n, c in caps_left.items()
            }
    plan = mix_plan(
        {n: p.length for n, p in pools.items()},
        weights,
        seed=seed,
        epoch=epoch,
        layout=layout,
        mode=mode,
        generation=len(history),
        samples=left,
        caps=caps_left,
        shuffle=shuffle,
    )
    return plan, pools
