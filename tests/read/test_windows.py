"""The window arithmetic (read/windows.py): window sizes grow from cap // 10, doubling, to the
cap; positions and windows map both ways; what a slot emitted after n items is a prefix of the
oracle's emission, computed in O(window)."""

from __future__ import annotations

import numpy as np
import oracle
from hypothesis import given, settings
from hypothesis import strategies as st

from wdstream.read import windows


def test_windows_grow_from_a_tenth_doubling_to_the_cap():
    assert windows.growth_sizes(1000) == (100, 200, 400, 800)
    sizes = [b - a for _, a, b in windows.iter_windows(4000, 1000)]
    assert sizes == [100, 200, 400, 800, 1000, 1000, 500]  # the last one cut at the span
    assert [b - a for _, a, b in windows.iter_windows(5, 0)] == [1] * 5  # cap 1: one each
    assert windows.window_cap(0) == 1 and windows.window_cap(7) == 7


@settings(max_examples=60, deadline=None)
@given(length=st.integers(0, 1500), window=st.integers(0, 300))
def test_window_index_and_start_invert_each_other(length, window):
    bounds = list(windows.iter_windows(length, window))
    for index, start, stop in bounds:
        assert windows.window_start(index, window) == start
        assert windows.window_index(start, window) == index
        assert windows.window_index(stop - 1, window) == index
        assert windows.window_bounds(start, length, window) == (index, start, stop)
    positions = np.arange(length, dtype=np.int64)
    vec = windows.window_index(positions, window)
    assert vec.tolist() == [windows.window_index(int(p), window) for p in positions]
    assert windows.window_bounds(length, length, window)[1:] == (length, length)


@settings(deadline=None)
@given(
    length=st.integers(0, 400),
    window=st.integers(0, 60),
    seed=st.integers(0, 2**32),
    n=st.integers(0, 450),
)
def test_emitted_is_the_prefix_of_the_oracles_emission(length, window, seed, n):
    order = oracle.emission(length, window, seed)
    whole, partial = windows.emitted(n, length, window, seed)
    got = list(range(whole)) + partial.tolist()
    assert sorted(got) == sorted(order[: min(n, length)])
    assert len(partial) < max(1, window)  # at most one window is ever partial


def test_window_orders_are_seeded_permutations():
    a = windows.window_order(5, 3, 100)
    assert sorted(a.tolist()) == list(range(100))
    assert a.tolist() == windows.window_order(5, 3, 100).tolist()
    assert a.tolist() != windows.window_order(6, 3, 100).tolist()
    assert windows.window_order(5, 3, 1).tolist() == [0]
