"""Property tests of the pure epoch arithmetic (split.py, shuffle.py): every sample exactly
once, equal batches per rank, determinism, and exact resumption across layouts."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from wdstream.read import plan as split
from wdstream.read.shuffle import buffer_order, buffer_shuffle

sizes_st = st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=12)
layout_st = st.builds(
    split.Layout,
    world=st.integers(1, 4),
    workers=st.integers(1, 4),
    batch_size=st.integers(1, 6),
    cache_size=st.integers(0, 20),
    drop_last=st.booleans(),
)


def all_emitted(pool, layout, seed, epoch, generation=0):
    out = []
    per_rank = []
    for rank in range(layout.world):
        n = 0
        for worker in range(layout.workers):
            e = split.slot_emission(pool, layout, rank, worker, seed=seed, epoch=epoch,
                                    generation=generation)
            assert len(e) % layout.batch_size == 0
            n += len(e) // layout.batch_size
            out.append(e)
        per_rank.append(n)
    return (np.concatenate(out) if out else np.zeros(0, dtype=np.int64)), per_rank


@settings(max_examples=150, deadline=None)
@given(sizes=sizes_st, layout=layout_st, seed=st.integers(0, 5), epoch=st.integers(0, 3))
def test_every_sample_once_and_equal_batches(sizes, layout, seed, epoch):
    n = sum(sizes)
    pool = split.epoch_positions(sizes, seed, epoch)
    assert sorted(pool.tolist()) == list(range(n))
    emitted, per_rank = all_emitted(pool, layout, seed, epoch)
    k = split.batches_per_rank(n, layout)
    assert per_rank == [k] * layout.world  # equal: DDP never waits on a rank
    counts = Counter(emitted.tolist())
    step = layout.world * layout.batch_size
    if layout.drop_last:
        assert all(c == 1 for c in counts.values())  # exactly once...
        assert n - len(counts) < step  # ...apart from fewer than world*batch dropped
        assert n - len(counts) == n % step
    else:
        assert set(counts) == set(range(n))  # nothing dropped
        assert len(emitted) - n < step  # fewer than world*batch repeated
        assert len(emitted) == k * step


@settings(max_examples=150, deadline=None)
@given(sizes=sizes_st, first=layout_st, second=layout_st, seed=st.integers(0, 5),
       stop=st.floats(0, 1))
def test_resume_delivers_exactly_the_rest(sizes, first, second, seed, stop):
    """Stop after some batches, resume with another layout: union = epoch, once each."""
    second = split.Layout(world=second.world, workers=second.workers,
                          batch_size=second.batch_size, cache_size=second.cache_size,
                          drop_last=True)
    first = split.Layout(world=first.world, workers=first.workers, batch_size=first.batch_size,
                         cache_size=first.cache_size, drop_last=True)
    n = sum(sizes)
    pool0 = split.epoch_positions(sizes, seed, 0)
    k0 = split.batches_per_rank(n, first)
    stop_at = int(stop * k0)
    done = split.consumed_positions(pool0, first, stop_at, seed=seed, epoch=0, generation=0)
    assert len(done) == stop_at * first.world * first.batch_size
    pool1 = split.epoch_pool(sizes, seed=seed, epoch=0, history=[(first, stop_at)])
    assert len(pool1) == n - len(done)
    rest, per_rank = all_emitted(pool1, second, seed, 0, generation=1)
    assert len(set(per_rank)) <= 1
    union = Counter(done.tolist()) + Counter(rest.tolist())
    assert all(c == 1 for c in union.values())  # no sample twice
    dropped = n - len(union)
    assert 0 <= dropped < second.world * second.batch_size  # the documented drop, once


@settings(max_examples=60, deadline=None)
@given(sizes=sizes_st, layout=layout_st, seed=st.integers(0, 100))
def test_same_inputs_same_order(sizes, layout, seed):
    pool_a = split.epoch_positions(sizes, seed, 1)
    pool_b = split.epoch_positions(list(sizes), seed, 1)
    a, _ = all_emitted(pool_a, layout, seed, 1)
    b, _ = all_emitted(pool_b, layout, seed, 1)
    assert a.tolist() == b.tolist()


def test_different_epoch_different_order():
    sizes = [50] * 8
    layout = split.Layout(world=2, workers=2, batch_size=4, cache_size=32)
    a, _ = all_emitted(split.epoch_positions(sizes, 0, 0), layout, 0, 0)
    b, _ = all_emitted(split.epoch_positions(sizes, 0, 1), layout, 0, 1)
    assert sorted(a.tolist()) == sorted(b.tolist())
    assert a.tolist() != b.tolist()


def test_uneven_and_fewer_shards_than_slots_still_balanced():
    sizes = [97, 3]  # 2 shards, 3 ranks x 4 workers = 12 slots
    layout = split.Layout(world=3, workers=4, batch_size=2, cache_size=8)
    pool = split.epoch_positions(sizes, 0, 0)
    spans = [len(split.slot_span(pool, layout, r, w)) for r in range(3) for w in range(4)]
    assert sum(spans) == 3 * split.batches_per_rank(100, layout) * 2 == 96
    assert max(spans) - min(spans) <= 2  # a batch at most between slots


@given(n=st.integers(0, 200), size=st.integers(0, 50), seed=st.integers(0, 10))
def test_buffer_order_matches_buffer_shuffle_on_data(n, size, seed):
    data = [f"item{i}" for i in range(n)]
    order = buffer_order(n, size, seed)
    assert [data[i] for i in order] == list(buffer_shuffle(data, size, seed))
    assert sorted(order.tolist()) == list(range(n))


def test_buffer_is_bounded():
    """An item leaves the buffer at most ``size`` positions before it arrives in the stream...
    and the shuffle never holds more than ``size`` items (checked by a lagging generator)."""
    held = []

    def source():
        for i in range(500):
            held.append(i)
            yield i

    out = []
    for x in buffer_shuffle(source(), 16, 3):
        out.append(x)
        assert len(held) - len(out) <= 16
    assert sorted(out) == list(range(500))


def test_positions_to_runs_merges_small_gaps():
    starts = split.shard_starts([10, 10])
    runs = split.positions_to_runs(np.array([1, 2, 5, 12, 13, 19]), starts, max_gap=2)
    assert [(s, a, b, w.tolist()) for s, a, b, w in runs] == [
        (0, 1, 6, [1, 2, 5]), (1, 2, 4, [2, 3]), (1, 9, 10, [9])]  # 3,4 read and dropped
