"""Property tests of the interval planner (wdstream/read/planner.py, windows.py, mixplan.py)
against the per-sample oracle (tests/read/oracle.py): exactly once over chains of elastic
resumes, equal batches per rank, determinism, windows bounded by cache_size, fillers flagged,
and mixed epochs that are equal, proportional and resumable."""

from __future__ import annotations

from collections import Counter

import numpy as np
import oracle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wdstream.read import windows
from wdstream.read.mixplan import mix_plan, mix_weights, mixed_epoch, step_counts
from wdstream.read.planner import INF, Layout, Read, epoch_plan, layout_split

sizes_st = st.lists(st.integers(0, 30), min_size=1, max_size=8)
layout_st = st.builds(
    Layout,
    world=st.integers(1, 4),
    workers=st.integers(1, 3),
    batch_size=st.integers(1, 5),
    cache_size=st.integers(0, 25),
    drop_last=st.booleans(),
    lanes=st.sampled_from([0, 0, 1, 2, 3, 5]),
)


def expand(segs) -> list[int]:
    """Root indices of a list of segments."""
    out: list[int] = []
    for seg in segs:
        out.extend(range(*seg) if isinstance(seg, tuple) else (int(i) for i in seg))
    return out


def read_positions(reads: list[Read], sizes) -> list[int]:
    """Global positions (manifest order) of reads, checking each read's invariants."""
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    out: list[int] = []
    for r in reads:
        assert 0 <= r.first < r.stop <= sizes[r.shard]
        if r.wanted is None:
            local = list(range(r.first, r.stop))
        else:
            local = r.wanted.tolist()
            assert local == sorted(set(local)) and local[0] == r.first and local[-1] == r.stop - 1
        out.extend(int(starts[r.shard]) + i for i in local)
    return out


def check_generation(
    pool, opool, layout, k, *, sizes, order, seed, epoch, generation, shuffle=True, single=False
):
    """Compare one generation of the planner with the oracle; returns (oracle slots, rest,
    real items emitted per slot as root indices, fillers emitted)."""
    assert pool.length == len(opool)
    assert expand(pool.segments(0, pool.length)) == opool
    split = pool.split(layout)
    lengths, n_batches = oracle.layout_lengths(len(opool), layout)
    assert list(split.lengths) == lengths and pool.batches_per_rank(layout) == n_batches
    assert split.rank_length == n_batches * layout.batch_size  # equal batches per rank
    emitted = oracle.layout_emitted(k, layout)
    slots, rest = oracle.run_generation(
        opool,
        layout.world,
        lengths,
        oracle.window_of(layout.cache_size, shuffle),
        emitted,
        seed=seed,
        epoch=epoch,
        generation=generation,
        single=single,
    )
    real_emitted: list[int] = []
    fillers = 0
    for (rank, worker), o in slots.items():
        plan = pool.slot(split, rank, worker)
        segs, length, real = pool.slot_segments(split, rank, worker)
        span = expand(pool.to_root(segs))
        assert span == o["span"] and length == len(span) and real == plan.real == o["real"]
        assert read_positions(list(plan.reads), sizes) == [order[i] for i in span]
        order_ = plan.emission()
        assert order_.tolist() == o["order"]  # windows as the oracle slices them
        assert sorted(order_.tolist()) == list(range(length))  # a permutation of the span
        for _, a, b in plan.windows():
            assert b - a <= max(1, layout.cache_size)
        whole, partial = plan.consumed(emitted[worker])
        mine = [span[i] for i in range(whole)] + [span[i] for i in partial]
        assert sorted(mine) == sorted(o["consumed"])
        n = emitted[worker]
        flags = plan.is_filler(order_[:n])
        assert flags.tolist() == o["filler"][:n]
        real_emitted.extend(span[i] for i, f in zip(order_[:n], flags, strict=True) if not f)
        fillers += int(flags.sum())
    return rest, real_emitted, fillers


@settings(max_examples=1000, deadline=None)
@given(
    sizes=sizes_st,
    layouts=st.lists(layout_st, min_size=1, max_size=4),
    stops=st.lists(st.floats(0, 1), min_size=3, max_size=3),
    seed=st.integers(0, 5),
    epoch=st.integers(0, 2),
    shuffle=st.booleans(),
)
def test_chain_of_resumes_matches_oracle_and_is_exactly_once(
    sizes, layouts, stops, seed, epoch, shuffle
):
    """Up to three elastic resumes (each with its own layout), the last run to the end; the
    epoch order interleaved in lanes as the first layout says (0: the old order)."""
    total = sum(sizes)
    first = layouts[0]
    order = oracle.epoch_positions(
        sizes, seed, epoch, shuffle, lanes=first.lanes, window=first.cache_size
    )
    pool = epoch_plan(sizes, seed=seed, epoch=epoch, shuffle=shuffle, layout=first)
    opool = list(range(total))
    delivered: Counter = Counter()
    history = []
    for generation, layout in enumerate(layouts):
        last = generation == len(layouts) - 1
        n_batches = pool.batches_per_rank(layout)
        k = n_batches if last else int(stops[generation] * n_batches)
        opool_next, real, fillers = check_generation(
            pool,
            opool,
            layout,
            k,
            sizes=sizes,
            order=order,
            seed=seed,
            epoch=epoch,
            generation=generation,
            shuffle=shuffle,
            single=first.lanes > 0,
        )
        delivered.update(real)
        step = layout.world * layout.batch_size
        if last:
            if layout.drop_last:
                assert fillers == 0 and len(opool_next) == len(opool) % step
            else:
                assert fillers == n_batches * step - len(opool) and opool_next == []
        history.append((layout, k))
        pool = pool.after_batches(layout, k)
        opool = opool_next
        # the pool rebuilt from the state alone (layouts + batches) is the same pool
        rebuilt = epoch_plan(sizes, seed=seed, epoch=epoch, shuffle=shuffle, history=history)
        assert expand(rebuilt.segments(0, rebuilt.length)) == opool
    assert all(c == 1 for c in delivered.values())  # no real sample twice
    assert sorted([*delivered, *opool]) == list(range(total))  # none missing but the drop
    assert len(opool) < layouts[-1].world * layouts[-1].batch_size


padded_st = st.builds(
    Layout,
    world=st.integers(1, 3),
    workers=st.integers(1, 3),
    batch_size=st.integers(2, 6),
    cache_size=st.integers(10, 60),
    drop_last=st.just(False),
)


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 12), min_size=1, max_size=4),
    first=padded_st,
    second=layout_st,
    back=st.integers(0, 2),
    seed=st.integers(0, 5),
)
def test_stop_in_the_window_where_padding_starts(sizes, first, second, back, seed):
    """Stopping near the end of a padded epoch: the slot holding the pool's end has a window
    of real items and fillers; only its real, unemitted items are left."""
    pool = epoch_plan(sizes, seed=seed, epoch=0)
    k = max(0, pool.batches_per_rank(first) - 1 - back)
    order = oracle.epoch_positions(sizes, seed, 0)
    rest, real, _ = check_generation(
        pool,
        list(range(pool.length)),
        first,
        k,
        sizes=sizes,
        order=order,
        seed=seed,
        epoch=0,
        generation=0,
    )
    nxt = pool.after_batches(first, k)
    rest2, real2, _ = check_generation(
        nxt,
        rest,
        second,
        nxt.batches_per_rank(second),
        sizes=sizes,
        order=order,
        seed=seed,
        epoch=0,
        generation=1,
    )
    assert sorted([*real, *real2, *rest2]) == list(range(sum(sizes)))


@pytest.mark.parametrize("seed", range(5))
def test_stop_in_a_window_of_fillers_only(seed):
    """8 samples, 2 ranks of batch 3, no drop: rank 1's span is 2 real items then 4 fillers,
    its second window (cache 20: windows of 2 then 4) starts exactly where padding starts."""
    layout = Layout(world=2, workers=1, batch_size=3, cache_size=20, drop_last=False)
    pool = epoch_plan([8], seed=seed, epoch=0)
    order = oracle.epoch_positions([8], seed, 0)
    rest, real, fillers = check_generation(
        pool, list(range(8)), layout, 1, sizes=[8], order=order, seed=seed, epoch=0, generation=0
    )
    assert fillers == 1 and len(real) == 5
    nxt = pool.after_batches(layout, 1)
    assert nxt.length == len(rest) == 3 and expand(nxt.segments(0, 8)) == rest


@settings(max_examples=40, deadline=None)
@given(
    sizes=sizes_st,
    layout=layout_st,
    seed=st.integers(0, 100),
    stop=st.floats(0, 1),
    second=layout_st,
)
def test_same_inputs_same_reads_and_order(sizes, layout, seed, stop, second):
    def plans():
        pool = epoch_plan(list(sizes), seed=seed, epoch=1)
        k = int(stop * pool.batches_per_rank(layout))
        pool = epoch_plan(list(sizes), seed=seed, epoch=1, history=[(layout, k)])
        out = []
        for r in range(second.world):
            for w in range(second.workers):
                p = pool.slot(second, r, w)
                out.append(
                    (
                        [
                            (
                                x.shard,
                                x.first,
                                x.stop,
                                None if x.wanted is None else x.wanted.tolist(),
                            )
                            for x in p.reads
                        ],
                        p.emission().tolist(),
                        p.real,
                        p.seed,
                    )
                )
        return out

    assert plans() == plans()


def test_different_epoch_different_order():
    layout = Layout(world=2, workers=2, batch_size=4, cache_size=32)
    a = epoch_plan([50] * 8, seed=0, epoch=0).slot(layout, 0, 0)
    b = epoch_plan([50] * 8, seed=0, epoch=1).slot(layout, 0, 0)
    assert a.reads != b.reads or a.emission().tolist() != b.emission().tolist()


@settings(max_examples=150, deadline=None)
@given(
    sizes=sizes_st,
    seed=st.integers(0, 9),
    shuffle=st.booleans(),
    passes=st.integers(1, 3),
    lo=st.integers(0, 40),
    lanes=st.sampled_from([0, 2, 3, 8]),
    cache=st.integers(1, 40),
)
def test_reads_follow_the_epoch_order_also_cyclic(sizes, seed, shuffle, passes, lo, lanes, cache):
    total = sum(sizes)
    layout = Layout(1, 1, 1, cache, lanes=lanes)
    flat = epoch_plan(sizes, seed=seed, epoch=3, shuffle=shuffle, layout=layout)
    order = oracle.epoch_positions(sizes, seed, 3, shuffle, lanes=lanes, window=cache)
    assert read_positions(flat.reads(0, total), sizes) == order
    cyc = epoch_plan(sizes, seed=seed, epoch=3, shuffle=shuffle, cyclic=True, layout=layout)
    assert cyc.length == (INF if total else 0)
    if total:
        want = [
            p
            for n in range(passes + 1)
            for p in oracle.epoch_positions(sizes, seed, 3, shuffle, n, lanes=lanes, window=cache)
        ]
        lo = min(lo, total * passes)
        got = read_positions(cyc.reads(lo, total * passes), sizes)
        assert got == want[lo : total * passes]
        idx = np.arange(lo, total * passes, 3)  # sorted index arrays map too
        assert read_positions(cyc.root.to_reads([idx]), sizes) == [want[i] for i in idx]


def test_lanes_put_one_chunk_of_each_shard_in_a_round():
    """32 shards of 100, windows of 320: lanes of one shard each, chunks of 10; a window's
    worth of the order holds 10 samples of every shard, each a run of consecutive samples;
    with small windows a lane still gives 8 samples a round."""
    layout = Layout(1, 1, 32, 320, lanes=32)
    pool = epoch_plan([100] * 32, seed=0, epoch=0, layout=layout)
    reads = pool.reads(0, 320)
    assert len(reads) == 32 and sorted(r.shard for r in reads) == list(range(32))
    assert all(r.first == 0 and r.stop == 10 and r.wanted is None for r in reads)
    nxt = pool.reads(320, 640)  # the next round continues every lane where it stopped
    assert [(r.shard, r.first, r.stop) for r in nxt] == [(r.shard, 10, 20) for r in reads]
    small = epoch_plan([100] * 32, seed=0, epoch=0, layout=Layout(1, 1, 8, 64, lanes=32))
    assert {r.count for r in small.reads(0, 256)} == {8}
    # large samples: chunks of about 8 MiB (here 4 samples of 2 MiB, raised to the minimum 8),
    # a window then holds several chunks of each lane, as many lanes as before
    big = epoch_plan([100] * 32, seed=0, epoch=0, layout=layout, sample_bytes=2**20 * 1.5)
    first = big.reads(0, 320)
    assert {r.count for r in first} == {8} and len({r.shard for r in first}) == 32


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 5000), cache=st.integers(0, 1200))
def test_window_arithmetic_matches_explicit_sizes(n, cache):
    sizes = oracle.window_sizes(n + 1, cache)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    i = int(np.searchsorted(starts, n, side="right")) - 1
    assert windows.window_index(n, cache) == i
    assert windows.window_start(i, cache) == starts[i]
    assert max(sizes) <= max(1, cache) and sizes[0] == min(n + 1, max(1, cache // 10))
    got = [b - a for _, a, b in windows.iter_windows(n + 1, cache)]
    assert got == sizes


def test_windows_grow_to_cache_size():
    assert [b - a for _, a, b in windows.iter_windows(4000, 1000)][:7] == [
        100,
        200,
        400,
        800,
        1000,
        1000,
        500,
    ]
    assert windows.growth_sizes(1) == windows.growth_sizes(0) == ()
    assert [b - a for _, a, b in windows.iter_windows(3, 0)] == [1, 1, 1]


def test_fillers_are_flagged_and_never_consumed():
    """1 sample, 3 ranks of batch 2, no drop: 5 of the 6 items are fillers."""
    layout = Layout(world=3, workers=1, batch_size=2, cache_size=4, drop_last=False)
    pool = epoch_plan([1], seed=0, epoch=0)
    plans = [pool.slot(layout, r, 0) for r in range(3)]
    assert [(p.length, p.real) for p in plans] == [(2, 1), (2, 0), (2, 0)]
    assert all(r.shard == 0 for p in plans for r in p.reads)
    rest = pool.after_batches(layout, 1)
    assert rest.length == 0  # the one real sample was consumed, the fillers were not


def test_medium_chain_with_many_windows():
    """~15k samples in uneven shards, spans of many full windows, three layouts."""
    sizes = np.random.default_rng(7).integers(0, 500, 60).tolist()
    chain = [
        (Layout(8, 3, 7, 100, drop_last=False), 0.4),
        (Layout(5, 2, 16, 64), 0.7),
        (Layout(3, 4, 5, 200, drop_last=False), 1.0),
    ]
    order = oracle.epoch_positions(sizes, 11, 2)
    pool, opool = epoch_plan(sizes, seed=11, epoch=2), list(range(sum(sizes)))
    delivered: Counter = Counter()
    for generation, (layout, stop) in enumerate(chain):
        k = int(stop * pool.batches_per_rank(layout))
        opool, real, _ = check_generation(
            pool,
            opool,
            layout,
            k,
            sizes=sizes,
            order=order,
            seed=11,
            epoch=2,
            generation=generation,
        )
        delivered.update(real)
        pool = pool.after_batches(layout, k)
    assert opool == [] and pool.length == 0
    assert sorted(delivered) == list(range(sum(sizes))) and max(delivered.values()) == 1


def test_large_plan_touches_only_its_runs():
    """1B samples in 100k shards: a slot after a resume reads a few runs (no per-sample
    arrays; bench_scale.py measures time and memory)."""
    sizes = np.full(100_000, 10_000, dtype=np.int64)
    first = Layout(world=2048, workers=8, batch_size=32, cache_size=1000)
    pool = epoch_plan(sizes, seed=0, epoch=0)
    k = pool.batches_per_rank(first)
    rest = epoch_plan(sizes, seed=0, epoch=0, history=[(first, k // 2)])
    second = Layout(world=1536, workers=8, batch_size=32, cache_size=1000)
    plan = rest.slot(second, 100, 3)
    assert plan.length == layout_split(rest.length, second).lengths[3]
    assert sum(r.count for r in plan.reads) == plan.length
    assert len(plan.reads) < 100


# -- mixing -----------------------------------------------------------------------------------


def test_mixed_stop_equal_batches_and_maximal():
    sources = {"a": [40] * 30, "b": [25] * 12, "c": [7] * 50}
    weights = {"a": 0.5, "b": 0.2, "c": 0.3}
    layout = Layout(world=3, workers=2, batch_size=8, cache_size=30)
    plan, pools = mixed_epoch(sources, weights, seed=4, epoch=1, layout=layout)
    k = plan.batches
    assert k > 0 and (plan.counts.sum(axis=1) == layout.batch_size).all()
    probs = mix_weights(plan.names, weights)
    nxt = step_counts(probs, 8, seed=4, epoch=1, generation=0, start=k, stop=k + 1)[0]
    used = plan.counts.sum(axis=0) * layout.world
    lengths = np.array([pools[n].length for n in plan.names])
    assert (used <= lengths).all() and ((used + nxt * layout.world) > lengths).any()
    for name in plan.names:  # every rank reads the same amount of every source
        split = plan.split(name)
        assert split.rank_length == int(plan.counts[:, plan.names.index(name)].sum())
        for r in range(layout.world):
            for w in range(layout.workers):
                slot = pools[name].slot(split, r, w)
                assert slot.real == slot.length == split.lengths[w]
    for j in range(k):  # in-batch order is a permutation of the step's multiset
        assert np.bincount(plan.batch_sources(j), minlength=3).tolist() == plan.counts[j].tolist()
    again, _ = mixed_epoch(sources, weights, seed=4, epoch=1, layout=layout)
    assert (again.counts == plan.counts).all()


def test_mixed_proportions_over_many_steps():
    layout = Layout(world=4, workers=2, batch_size=32, cache_size=100)
    weights = {"x": 0.7, "y": 0.2, "z": 0.1}
    plan = mix_plan(
        {"x": 1, "y": 1, "z": 1},
        weights,
        seed=0,
        epoch=0,
        layout=layout,
        mode="resample",
        samples=4 * 32 * 5000,
    )
    assert plan.batches == 5000
    share = plan.counts.sum(axis=0) / plan.counts.sum()
    assert np.allclose(share, [0.7, 0.2, 0.1], atol=0.01)


def test_mixed_resample_needs_samples_and_nonempty_sources():
    layout = Layout(world=1, workers=1, batch_size=4, cache_size=0)
    with pytest.raises(ValueError):
        mix_plan({"a": 5}, None, seed=0, epoch=0, layout=layout, mode="resample")
    with pytest.raises(ValueError):
        mix_plan({"a": 0, "b": 5}, None, seed=0, epoch=0, layout=layout, mode="resample", samples=8)


mix_layout_st = st.builds(
    Layout,
    world=st.integers(1, 3),
    workers=st.integers(1, 3),
    batch_size=st.integers(1, 6),
    cache_size=st.integers(0, 20),
    lanes=st.sampled_from([0, 3]),
)


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(sizes_st, min_size=1, max_size=3),
    weights=st.lists(st.integers(1, 5), min_size=3, max_size=3),
    layouts=st.lists(mix_layout_st, min_size=1, max_size=3),
    stops=st.lists(st.floats(0, 1), min_size=2, max_size=2),
    seed=st.integers(0, 5),
    resample=st.booleans(),
    samples=st.integers(0, 300),
)
def test_mixed_chain_matches_oracle_and_is_exactly_once(
    sizes, weights, layouts, stops, seed, resample, samples
):
    names = [f"s{i}" for i in range(len(sizes))]
    sources = dict(zip(names, sizes, strict=False))
    w = dict(zip(names, weights, strict=False))
    totals = {n: sum(s) for n, s in sources.items()}
    mode = "resample" if resample else "stop"
    if resample and not all(totals.values()):
        return  # an empty source cannot be resampled (tested above)
    probs = mix_weights(sorted(names), w)
    history = []
    for g in range(len(layouts) - 1):
        plan, _ = mixed_epoch(
            sources,
            w,
            seed=seed,
            epoch=0,
            layout=layouts[g],
            mode=mode,
            history=history,
            samples=samples if resample else None,
        )
        history.append((layouts[g], int(stops[g] * plan.batches)))
    horizon = {n: totals[n] * (samples // max(1, totals[n]) + 2) for n in names}
    gens, rest = oracle.mixed_chain(
        totals,
        probs,
        history,
        layouts[-1],
        seed=seed,
        epoch=0,
        mode=mode,
        samples=samples if resample else None,
        horizon=horizon if resample else None,
        single=layouts[0].lanes > 0,
    )
    delivered: dict[str, Counter] = {n: Counter() for n in names}
    for g, gen in enumerate(gens):
        plan, pools = mixed_epoch(
            sources,
            w,
            seed=seed,
            epoch=0,
            layout=layouts[g],
            mode=mode,
            history=history[:g],
            samples=samples if resample else None,
        )
        assert plan.counts.tolist() == gen["counts"].tolist()
        k = history[g][1] if g < len(history) else plan.batches
        for name in names:
            opool = gen["pools"][name]
            pool = pools[name]
            assert expand(pool.segments(0, len(opool))) == opool
            split = plan.split(name)
            emitted = plan.emitted(name, k)
            for (r, wk), o in gen["slots"][name].items():
                slot = pool.slot(split, r, wk)
                segs, _, _ = pool.slot_segments(split, r, wk)
                span = expand(pool.to_root(segs))
                assert span == o["span"] and slot.emission().tolist() == o["order"]
                whole, partial = slot.consumed(emitted[wk])
                mine = [span[i] for i in range(whole)] + [span[i] for i in partial]
                assert sorted(mine) == sorted(o["consumed"])
                delivered[name].update(mine)
    for name in names:
        assert all(c == 1 for c in delivered[name].values())
        if not resample:  # delivered + what is left = the whole source
            assert sorted([*delivered[name], *rest[name]]) == list(range(totals[name]))


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 60), min_size=1, max_size=4),
    cap=st.integers(0, 150),
    world=st.integers(1, 3),
    batch=st.integers(1, 6),
    stop=st.integers(0, 20),
    mode=st.sampled_from(["stop", "resample"]),
)
def test_capped_sources_never_pass_their_cap_across_a_resume(sizes, cap, world, batch, stop, mode):
    """max_samples_per_dataset: each source gives at most ``cap`` samples in the epoch, over
    every rank and both generations; batches stay full and equal; the draws are seeded."""
    sources = {"a": sizes, "b": [7, 0, 30]}
    samples = 400 if mode == "resample" else None
    old = Layout(world, 2, batch, 8)
    caps = {"a": cap, "b": 3 * cap}
    plan, _ = mixed_epoch(
        sources,
        {"a": 1.0, "b": 2.0},
        seed=3,
        epoch=0,
        layout=old,
        mode=mode,
        samples=samples,
        caps=caps,
    )
    k = min(stop, plan.batches)
    new = Layout(world % 3 + 1, 3, batch, 8)
    again, pools = mixed_epoch(
        sources,
        {"a": 1.0, "b": 2.0},
        seed=3,
        epoch=0,
        layout=new,
        mode=mode,
        samples=samples,
        caps=caps,
        history=[(old, k)],
    )
    assert (plan.counts.sum(axis=1) == batch).all() and (again.counts.sum(axis=1) == batch).all()
    given_ = plan.counts[:k].sum(axis=0) * old.world + again.counts.sum(axis=0) * new.world
    assert given_[0] <= cap and given_[1] <= 3 * cap
    if mode == "stop":
        assert (given_ <= [sum(sizes), 37]).all()
    for name in ("a", "b"):  # each source's slots read exactly what the counts ask for
        total = sum(
            pools[name].slot(again.split(name), r, w).length
            for r in range(new.world)
            for w in range(new.workers)
        )
        assert total == again.counts[:, again.names.index(name)].sum() * new.world
    same, _ = mixed_epoch(
        sources,
        {"a": 1.0, "b": 2.0},
        seed=3,
        epoch=0,
        layout=new,
        mode=mode,
        samples=samples,
        caps=caps,
        history=[(old, k)],
    )
    assert (same.counts == again.counts).all()
