"""A per-sample reference of the planner's semantics, written to be obviously right: every
position is materialised, windows are explicit slices, resume is a set difference.

It shares only the seeded primitives with the planner (``shard_order``, ``slot_seed``,
``window_order``, ``step_counts``); all the structure is rebuilt here from the definitions in
``wdstream/read/planner.py`` and ``mixplan.py``. Pools are arrays of root indices (position in
the epoch order; ``p * total + i`` for item ``i`` of pass ``p`` of a cyclic order).
"""

from __future__ import annotations

import numpy as np

from wdstream.read.mixplan import source_window, step_counts
from wdstream.read.seeds import shard_order, slot_seed
from wdstream.read.windows import window_order


def epoch_positions(sizes, seed, epoch, shuffle=True, pass_no=0, lanes=0, window=0):
    """Global positions (manifest order) of pass ``pass_no`` of the epoch order: the shards in
    the pass's order; with ``lanes`` > 1 (and shuffling), interleaved: groups of ``lanes``
    non-empty shards, each group's samples cut into equal lanes (as many as the group has
    shards, at most ``lanes``), read one chunk of ``ceil(window / lanes)`` (at least 8) per
    lane in turn."""
    starts = [0]
    for n in sizes:
        starts.append(starts[-1] + n)
    shards = [s for s in shard_order(len(sizes), seed, epoch, shuffle, pass_no) if sizes[s] > 0]
    if lanes <= 1 or not shuffle:
        return [p for s in shards for p in range(starts[s], starts[s + 1])]
    chunk = max(8, -(-window // lanes))  # at least 8 samples a lane per round
    out = []
    for g in range(0, len(shards), lanes):
        group = [p for s in shards[g : g + lanes] for p in range(starts[s], starts[s + 1])]
        want = max(1, min(lanes, len(shards[g : g + lanes]), len(group)))
        length = -(-len(group) // want)
        cut = [group[i : i + length] for i in range(0, len(group), length)]
        t = 0
        while any(t * chunk < len(lane) for lane in cut):
            for lane in cut:
                out.extend(lane[t * chunk : (t + 1) * chunk])
            t += 1
    return out


def window_of(cache_size, shuffle=True):
    """A slot's window cap: the layout's cache_size when the epoch is shuffled, else 1."""
    return cache_size if shuffle else 1


def window_sizes(length, cache_size, single=False):
    """Sizes of the windows of a span: from max(1, cache // 10), doubling, capped at cache;
    with ``single``, a span no longer than the cap is one window."""
    cap = max(1, cache_size)
    if single and 0 < length <= cap:
        return [length]
    size = max(1, cap // 10)
    out, done = [], 0
    while done < length:
        out.append(min(size, cap, length - done))
        done += out[-1]
        size = min(size * 2, cap)
    return out


def emission(length, cache_size, seed, single=False):
    """Span indices of a slot in emission order: each window's slice, permuted."""
    out, start = [], 0
    for index, size in enumerate(window_sizes(length, cache_size, single)):
        out.extend(start + int(i) for i in window_order(seed, index, size))
        start += size
    return out


def layout_lengths(pool_len, layout):
    """Span length of each worker of a rank under ``layout`` (whole batches)."""
    step = layout.world * layout.batch_size
    k = pool_len // step if layout.drop_last else -(-pool_len // step)
    return [len(range(w, k, layout.workers)) * layout.batch_size for w in range(layout.workers)], k


def run_generation(
    pool, world, lengths, cache, emitted, *, seed, epoch, generation, salt="", single=False
):
    """Lay ``pool`` (a list of root indices) over the slots and let worker ``w`` of every
    rank emit ``emitted[w]`` items.

    Returns ``slots`` (per slot: dict of span, real, emission order as root indices, fillers
    flag per emitted item, consumed root indices) and the next pool (set difference)."""
    extent = world * sum(lengths)
    padded = [pool[i % len(pool)] for i in range(extent)] if pool else []
    is_real = [i < len(pool) for i in range(extent)]
    slots = {}
    used_positions = set()  # pool positions (not values) consumed: fillers are not
    start = 0
    for rank in range(world):
        for worker in range(len(lengths)):
            n = lengths[worker]
            span = padded[start : start + n]
            real = sum(is_real[start : start + n])
            seed_ = slot_seed(seed, epoch, generation, rank, worker, salt)
            order = emission(n, cache, seed_, single)
            done = order[: emitted[worker]]
            consumed = [span[i] for i in done if is_real[start + i]]
            used_positions.update(start + i for i in done if is_real[start + i])
            slots[rank, worker] = {
                "span": span,
                "real": real,
                "order": order,
                "emitted": [span[i] for i in order],
                "filler": [not is_real[start + i] for i in order],
                "consumed": consumed,
            }
            start += n
    rest = [v for i, v in enumerate(pool) if i not in used_positions]
    return slots, rest


def layout_emitted(k, layout):
    return [len(range(w, k, layout.workers)) * layout.batch_size for w in range(layout.workers)]


def chain(total, history, final, *, seed, epoch, shuffle=True):
    """Pools of every generation of a single source of ``total`` samples (root indices), and
    each generation's slots; ``history`` is ``[(layout, batches)]`` and ``final`` the last
    layout, run to the end."""
    pool = list(range(total))
    gens = []
    for generation, (layout, k) in enumerate([*history, (final, None)]):
        lengths, n_batches = layout_lengths(len(pool), layout)
        k = n_batches if k is None else k
        slots, rest = run_generation(
            pool,
            layout.world,
            lengths,
            window_of(layout.cache_size, shuffle),
            layout_emitted(k, layout),
            seed=seed,
            epoch=epoch,
            generation=generation,
        )
        gens.append({"pool": pool, "batches": n_batches, "lengths": lengths, "slots": slots})
        pool = rest
    return gens, pool


def mix_counts(lengths, probs, layout, *, seed, epoch, generation, mode, samples=None):
    """Per-step counts of a mixed generation, step by step."""
    if mode == "resample":
        k = samples // (layout.world * layout.batch_size)
        return step_counts(
            probs, layout.batch_size, seed=seed, epoch=epoch, generation=generation, start=0, stop=k
        )
    used = np.zeros(len(probs), dtype=np.int64)
    rows = []
    while True:
        row = step_counts(
            probs,
            layout.batch_size,
            seed=seed,
            epoch=epoch,
            generation=generation,
            start=len(rows),
            stop=len(rows) + 1,
        )[0]
        if any(used[s] + layout.world * row[s] > lengths[s] for s in range(len(probs))):
            return np.array(rows, dtype=np.int64).reshape(-1, len(probs))
        used += layout.world * row
        rows.append(row)


def mixed_chain(
    totals,
    probs,
    history,
    final,
    *,
    seed,
    epoch,
    mode,
    samples=None,
    horizon=None,
    shuffle=True,
    single=False,
):
    """Per source (names sorted, ``totals`` in that order): the pool of every generation
    (root indices, a finite ``horizon`` of a cyclic pool) and every generation's slots."""
    names = sorted(totals)
    horizon = horizon or {}
    pools = {n: list(range(horizon.get(n, totals[n]))) for n in names}
    left = samples
    gens = []
    for generation, (layout, k) in enumerate([*history, (final, None)]):
        infinite = [1 << 62 if mode == "resample" else len(pools[n]) for n in names]
        counts = mix_counts(
            infinite,
            probs,
            layout,
            seed=seed,
            epoch=epoch,
            generation=generation,
            mode=mode,
            samples=left,
        )
        k = len(counts) if k is None else k
        cache = window_of(source_window(layout.cache_size, len(names)), shuffle)
        gen = {"counts": counts, "pools": dict(pools), "slots": {}}
        for s, name in enumerate(names):
            lengths = [int(counts[w :: layout.workers, s].sum()) for w in range(layout.workers)]
            emitted = [int(counts[w : k : layout.workers, s].sum()) for w in range(layout.workers)]
            slots, rest = run_generation(
                pools[name],
                layout.world,
                lengths,
                cache,
                emitted,
                single=single,
                seed=seed,
                epoch=epoch,
                generation=generation,
                salt=name,
            )
            gen["slots"][name] = slots
            pools[name] = rest
        gens.append(gen)
        if left is not None:
            left = max(0, left - k * layout.world * layout.batch_size)
    return gens, pools
