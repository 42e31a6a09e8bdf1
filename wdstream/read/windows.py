"""The seekable sample shuffle: a seeded permutation inside consecutive windows of a span.

A slot emits its span window by window: window ``i`` covers span items
``[window_start(i), window_start(i + 1))`` (cut at the span's end) and is emitted in the order
of :func:`window_order`. The windows grow from ``max(1, cache_size // 10)`` items, doubling,
up to ``cache_size`` and then stay there, so the first batch waits for a small window only
and a reader never holds more than ``cache_size`` samples. ``cache_size <= 1`` means no
shuffle (windows of one item).

Window sizes are a pure function of ``cache_size``, so the items a slot has emitted after
``n`` are arithmetic: every window before the current one, plus the first ``n - start`` items
of the current window's permutation (:func:`emitted`, O(cache_size)).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np

__all__ = ["window_cap", "growth_sizes", "window_index", "window_start", "window_bounds",
           "iter_windows", "window_order", "emitted"]


def window_cap(cache_size: int) -> int:
    """Largest window: ``cache_size`` (1 when ``cache_size <= 1``: no shuffle)."""
    return max(1, int(cache_size))


@lru_cache(maxsize=64)
def growth_sizes(cache_size: int) -> tuple[int, ...]:
    """Sizes of the growing windows before the first full one (empty when no shuffle)."""
    cap = window_cap(cache_size)
    size = max(1, cap // 10)
    out = []
    while size < cap:
        out.append(size)
        size *= 2
    return tuple(out)


@lru_cache(maxsize=64)
def _growth_starts(cache_size: int) -> np.ndarray:
    starts = np.concatenate([[0], np.cumsum(growth_sizes(cache_size), dtype=np.int64)])
    return starts.astype(np.int64)


def window_start(index, cache_size: int):
    """Span position where window ``index`` starts (int or int64 array)."""
    starts = _growth_starts(cache_size)
    g = len(starts) - 1
    i = np.asarray(index, dtype=np.int64)
    out = np.where(i <= g, starts[np.clip(i, 0, g)], starts[g] + (i - g) * window_cap(cache_size))
    return out if out.ndim else int(out)


def window_index(n, cache_size: int):
    """Index of the window holding span position ``n`` (int or int64 array)."""
    starts = _growth_starts(cache_size)
    g = len(starts) - 1
    pos = np.asarray(n, dtype=np.int64)
    full = g + (pos - starts[g]) // window_cap(cache_size)
    out = np.where(pos < starts[g], np.searchsorted(starts, pos, side="right") - 1, full)
    return out if out.ndim else int(out)


def window_bounds(n, length, cache_size: int):
    """``(index, start, stop)`` of the window holding position ``n`` of a span of ``length``
    items, ``stop`` cut at ``length``; ``n >= length`` gives ``start == stop == length``."""
    n = np.asarray(n, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    index = np.asarray(window_index(n, cache_size))
    start = np.asarray(window_start(index, cache_size))
    stop = np.minimum(np.asarray(window_start(index + 1, cache_size)), length)
    done = n >= length
    start = np.where(done, length, start)
    stop = np.where(done, length, stop)
    if n.ndim == 0 and length.ndim == 0:
        return int(index), int(start), int(stop)
    return index, start, stop


def iter_windows(length: int, cache_size: int) -> Iterator[tuple[int, int, int]]:
    """``(index, start, stop)`` of each window of a span of ``length`` items, in order."""
    sizes = growth_sizes(cache_size)
    cap = window_cap(cache_size)
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


def emitted(n: int, length: int, cache_size: int, slot_seed: int) -> tuple[int, np.ndarray]:
    """Span positions emitted by a slot after its first ``n`` items: ``[0, whole)`` plus the
    (unsorted) positions ``partial`` of the current window. O(cache_size)."""
    n = min(n, length)
    index, start, stop = window_bounds(n, length, cache_size)
    taken = n - start
    if taken <= 0:
        return start, np.zeros(0, dtype=np.int64)
    return start, start + window_order(slot_seed, index, stop - start)[:taken]
