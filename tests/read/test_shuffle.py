"""The shuffle stages: the window shuffle of exact mode (a slot's span emitted in the plan's
window order, fillers marked) and the streaming buffer."""

from __future__ import annotations

import oracle
from hypothesis import given
from hypothesis import strategies as st

from wdstream.read.planner import Layout, epoch_plan
from wdstream.read.shuffle import buffer_shuffle
from wdstream.read.stages import FILLER, window_shuffle


@given(
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=6),
    batch=st.integers(1, 5),
    cache=st.integers(0, 40),
    workers=st.integers(1, 3),
    drop_last=st.booleans(),
)
def test_window_shuffle_emits_the_plans_order_and_marks_fillers(
    sizes, batch, cache, workers, drop_last
):
    pool = epoch_plan(sizes, seed=1, epoch=0)
    if pool.length == 0:
        return
    slot = pool.slot(Layout(2, workers, batch, cache, drop_last), 1, 0)
    span = [{"i": i} for i in range(slot.length)]  # span items, in read order
    held = []

    def source():
        for item in span:
            held.append(item)
            yield item

    out = []
    for item in window_shuffle(source(), slot):
        out.append(item)
        assert len(held) - len(out) <= max(1, cache)  # at most one window held
    # the order the oracle rebuilds from the definitions (explicit window slices)
    expected = oracle.emission(slot.length, cache, slot.seed)
    assert [x["i"] for x in out] == expected
    assert [bool(x.get(FILLER)) for x in out] == [i >= slot.real for i in expected]


def test_padding_fillers_are_flagged_and_never_real():
    pool = epoch_plan([5], seed=0, epoch=0)
    slot = pool.slot(Layout(1, 1, 4, 0, drop_last=False), 0, 0)
    out = list(window_shuffle(({"i": i} for i in range(slot.length)), slot))
    assert slot.length == 8 and slot.real == 5
    assert [bool(x.get(FILLER)) for x in out] == [False] * 5 + [True] * 3


@given(n=st.integers(0, 200), size=st.integers(0, 50), seed=st.integers(0, 10))
def test_buffer_shuffle_is_a_seeded_permutation(n, size, seed):
    data = [f"item{i}" for i in range(n)]
    out = list(buffer_shuffle(data, size, seed))
    assert sorted(out) == sorted(data)
    assert out == list(buffer_shuffle(data, size, seed))


def test_buffer_is_bounded():
    """The streaming buffer never holds more than ``size`` items."""
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


def test_scattered_reads_are_cut_at_large_gaps():
    import numpy as np

    from wdstream.read.fetch import gap_split

    parts = gap_split(np.array([1, 2, 5, 80, 81, 300]), 64)
    assert [p.tolist() for p in parts] == [[1, 2, 5], [80, 81], [300]]
