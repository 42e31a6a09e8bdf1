"""The seekable sample shuffle: a seeded permutation inside consecutive windows of a span.

A slot emits its span window by window: window ``i`` covers span items
``[window_start(i), window_start(i + 1))`` (cut at the span's end) and is emitted in the order
of :func:`window_order`. The windows grow from ``max(1, window // 10)`` items, doubling,
up to ``window`` (the slot's window cap: ``config.window``, see
:func:`wdstream.read.planner.slot_window`) and then stay there, so the first batch waits for a
small window only and a reader never holds more than ``window`` samples. ``window <= 1``
means windows of one item: nothing moves.

With ``single`` (the interleaved epoch order, :mod:`wdstream.read.order`), a span no longer
than ``window`` is one window: a short span holds only a few of the order's chunks, and
cutting it into growing windows would leave the first batches with samples of a few shards
only; such a span is never larger than one window anyway.

Window sizes are a pure function of ``window`` (and ``single``), so the items a slot has emitted after
``n`` are arithmetic: every window before the current one, plus the first ``n - start`` items
of the current window's permutation (:func:`emitted`, O(window)).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np

__all__ = [
    "window_cap",
    "growth_sizes",
    "window_index",
    "window_start",
    "window_bounds",
    "iter_windows",
    "window_order",
    "emitted",
]


def window_cap(window: int) -> int:
    """Largest window: ``window`` (at least 1)."""
    return max(1, int(window))


@lru_cache(maxsize=64)
def growth_sizes(window: int) -> tuple[int, ...]:
    """Sizes of the growing windows before the first full one (empty when no shuffle)."""
    cap = window_cap(window)
    size = max(1, cap // 10)
    out = []
    while size < cap:
        out.append(size)
        size *= 2
    return tuple(out)


@lru_cache(maxsize=64)
def _growth_starts(window: int) -> np.ndarray:
    starts = np.concatenate([[0], np.cumsum(growth_sizes(window), dtype=np.int64)])
    return starts.astype(np.int64)


def window_start(index, window: int):
    """Span position where window ``index`` starts (int or int64 array)."""
    starts = _growth_starts(window)
    g = len(starts) - 1
    i = np.asarray(index, dtype=np.int64)
    out = np.where(i <= g, starts[np.clip(i, 0, g)], starts[g] + (i - g) * window_cap(window))
    return out if out.ndim else int(out)


def window_index(n, window: int):
    """Index of the window holding span position ``n`` (int or int64 array)."""
    starts = _growth_starts(window)
    g = len(starts) - 1
    pos = np.asarray(n, dtype=np.int64)
    full = g + (pos - starts[g]) // window_cap(window)
    out = np.where(pos < starts[g], np.searchsorted(starts, pos, side="right") - 1, full)
    return out if out.ndim else int(out)


def window_bounds(n, length, window: int, single: bool = False):
    """``(index, start, stop)`` of the window holding position ``n`` of a span of ``length``
    items, ``stop`` cut at ``length``; ``n >= length`` gives ``start == stop == length``."""
    n = np.asarray(n, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    index = np.asarray(window_index(n, window))
    start = np.asarray(window_start(index, window))
    stop = np.minimum(np.asarray(window_start(index + 1, window)), length)
    if single:
        one = length <= window_cap(window)
        index, start, stop = (
            np.where(one, 0, index),
            np.where(one, 0, start),
            np.where(one, length, stop),
        )
    done = n >= length
    start = np.where(done, length, start)
    stop = np.where(done, length, stop)
    if n.ndim == 0 and length.ndim == 0:
        return int(index), int(start), int(stop)
    return index, start, stop


def iter_windows(length: int, window: int, single: bool = False) -> Iterator[tuple[int, int, int]]:
    """``(index, start, stop)`` of each window of a span of ``length`` items, in order."""
    if single and 0 < length <= window_cap(window):
        yield 0, 0, length
        return
    sizes = growth_sizes(window)
    cap = window_cap(window)
    index, start = 0, 0
    while start < length:
        stop = min(start + (sizes[index] if index < len(sizes) else cap), length)
        yield index, start, stop
        index, start = index + 1, stop


def window_order(slot_seed: int, index: int, size: int) -> np.ndarray:
    """The order window ``index`` of a slot emits its ``size`` items (offsets in the window)."""
    if size <= 1:
        return np.arange(size, dtype=np.int64)
    rng = np.random.default_rng([slot_seed, index])
    return rng.permutation(size).astype(np.int64)


def emitted(
    n: int, length: int, window: int, slot_seed: int, single: bool = False
) -> tuple[int, np.ndarray]:
    """Span positions emitted by a slot after its first ``n`` items: ``[0, whole)`` plus the
    (unsorted) positions ``partial`` of the current window. O(window)."""
    n = min(n, length)
    index, start, stop = window_bounds(n, length, window, single)
    taken = n - start
    if taken <= 0:
        return start, np.zeros(0, dtype=np.int64)
    return start, start + window_order(slot_seed, index, stop - start)[:taken]
