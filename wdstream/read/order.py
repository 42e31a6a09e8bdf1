"""The epoch order inside one pass: shards in a seeded order, interleaved in lanes.

Pure arithmetic (numpy, no I/O). The *base order* lists a pass's samples shard by shard, the
shards in the pass's seeded order; a *base index* is a position in it. With an
:class:`Interleave` of ``lanes`` lanes and chunks of ``chunk`` samples, the shards are taken
in *groups* of ``lanes`` consecutive shards; a group's samples (concatenated in base order)
are cut into ``lanes`` equal *lanes* (about one shard each), and the group's part of the epoch
order takes ``chunk`` samples from lane 0, then ``chunk`` from lane 1, ... then the next
``chunk`` of lane 0: *rounds* of one chunk per lane. A window of ``lanes * chunk`` consecutive
positions of the epoch order therefore holds one chunk of every lane of a group: samples of
``lanes`` shards in equal shares, each read as one sequential run per lane, while every
position still maps to its base index in O(1) (O(log rounds) with a lookup), so that the
planner's spans, windows and resumes stay arithmetic over positions.

Without an interleave (``lanes <= 1``) the epoch order is the base order itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Interleave", "PassOrder", "MIN_CHUNK", "CHUNK_BYTES"]

#: The fewest samples a lane gives per round: keeps each run a reader fetches from a lane
#: large enough to be worth a request (about 1 MB at 150 KB a sample) when windows are small.
MIN_CHUNK = 8
#: The most bytes a chunk should hold (by the manifest's mean sample size): about one read
#: request (``read_block_size``'s default), so that a chunk is fetched with one request; when
#: a window holds more than one chunk of a lane, the reader joins them.
CHUNK_BYTES = 8 * 2**20


@dataclass(frozen=True)
class Interleave:
    """``lanes`` shards mixed per group, ``chunk`` samples taken from each lane per round."""

    lanes: int
    chunk: int

    @classmethod
    def of(cls, lanes: int, window: int, sample_bytes: float | None = None) -> Interleave | None:
        """The interleave that puts about one round in a window of ``window`` samples: chunks
        of ``ceil(window / lanes)``, or fewer samples when that would be more than
        :data:`CHUNK_BYTES` at ``sample_bytes`` a sample (the manifest's mean), and at least
        :data:`MIN_CHUNK`; None when ``lanes <= 1`` (the base order). Smaller chunks keep
        the diversity: a window then holds several chunks of each lane."""
        if lanes <= 1:
            return None
        chunk = -(-int(window) // int(lanes))
        if sample_bytes:
            chunk = min(chunk, int(CHUNK_BYTES // sample_bytes))
        return cls(int(lanes), max(MIN_CHUNK, chunk))


class _Group:
    """One group of the pass: ``size`` samples from base index ``start``, cut into ``n``
    lanes of ``length`` samples (the last one ``last``), read in rounds of ``chunk``."""

    __slots__ = ("start", "size", "n", "length", "last", "chunk", "rounds")

    def __init__(self, start: int, size: int, shards: int, lanes: int, chunk: int):
        self.start, self.size, self.chunk = start, size, chunk
        want = max(1, min(lanes, shards, size))
        self.length = -(-size // want)
        self.n = -(-size // self.length)
        self.last = size - (self.n - 1) * self.length
        t = np.arange(-(-self.length // chunk) + 1, dtype=np.int64) * chunk
        # samples of the group before round t (rounds[-1] == size)
        self.rounds = (self.n - 1) * np.minimum(t, self.length) + np.minimum(t, self.last)

    def to_base(self, q: np.ndarray) -> np.ndarray:
        """Base indices (from the pass's start) of group-local positions ``q``."""
        c = self.chunk
        t = np.searchsorted(self.rounds, q, side="right") - 1
        u = q - self.rounds[t]
        k = np.minimum(c, self.length - t * c)  # a full lane's chunk in round t
        full = u < (self.n - 1) * k
        kk = np.maximum(k, 1)
        g = np.where(full, u // kk, self.n - 1)
        off = np.where(full, u % kk, u - (self.n - 1) * k)
        return self.start + g * self.length + t * c + off

    def pieces(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """``(base starts, lengths)`` of the contiguous runs that group-local positions
        ``[lo, hi)`` map to, in epoch order (one per chunk they touch)."""
        c = self.chunk
        t0 = int(np.searchsorted(self.rounds, lo, side="right")) - 1
        t1 = int(np.searchsorted(self.rounds, hi - 1, side="right")) - 1
        t = np.arange(t0, t1 + 1, dtype=np.int64)
        k = np.minimum(c, self.length - t * c)
        k_last = np.clip(self.last - t * c, 0, c)
        g = np.arange(self.n, dtype=np.int64)
        starts = self.rounds[t][:, None] + g[None, :] * k[:, None]
        sizes = np.where(g[None, :] < self.n - 1, k[:, None], k_last[:, None])
        base = g[None, :] * self.length + t[:, None] * c
        starts, sizes, base = starts.ravel(), sizes.ravel(), base.ravel()
        a = np.maximum(starts, lo)
        b = np.minimum(starts + sizes, hi)
        keep = b > a
        return self.start + base[keep] + (a[keep] - starts[keep]), (b - a)[keep]


class PassOrder:
    """One pass's epoch order over its non-empty shards ``shards`` (in order, sizes
    ``sizes``): positions <-> base indices, per group (module doc)."""

    def __init__(self, sizes: np.ndarray, interleave: Interleave | None):
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.starts = np.zeros(len(self.sizes) + 1, dtype=np.int64)
        np.cumsum(self.sizes, out=self.starts[1:])
        self.total = int(self.starts[-1])
        self.interleave = interleave
        if interleave is None:
            self.group_starts = np.array([0, self.total], dtype=np.int64)
        else:
            cuts = np.arange(0, len(self.sizes), interleave.lanes)
            self.group_starts = np.append(self.starts[cuts], self.total).astype(np.int64)
        self._groups: dict[int, _Group] = {}

    def _group(self, j: int) -> _Group:
        got = self._groups.get(j)
        if got is None:
            il = self.interleave
            lo, hi = int(self.group_starts[j]), int(self.group_starts[j + 1])
            first = j * il.lanes
            shards = min(il.lanes, len(self.sizes) - first)
            if len(self._groups) >= 64:
                self._groups.clear()
            got = self._groups[j] = _Group(lo, hi - lo, shards, il.lanes, il.chunk)
        return got

    def to_base(self, q: np.ndarray) -> np.ndarray:
        """Base indices of positions ``q`` (int64 array) of this pass."""
        q = np.asarray(q, dtype=np.int64)
        if self.interleave is None:
            return q
        out = np.empty_like(q)
        j = np.searchsorted(self.group_starts, q, side="right") - 1
        for g in np.unique(j).tolist():
            sel = j == g
            grp = self._group(g)
            out[sel] = grp.to_base(q[sel] - grp.start)
        return out

    def pieces(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """``(base starts, lengths)`` of the runs of base indices that positions ``[lo, hi)``
        map to, in epoch order."""
        if self.interleave is None:
            return np.array([lo], dtype=np.int64), np.array([hi - lo], dtype=np.int64)
        starts, sizes = [], []
        j = int(np.searchsorted(self.group_starts, lo, side="right")) - 1
        while lo < hi:
            grp = self._group(j)
            end = min(hi, grp.start + grp.size)
            s, n = grp.pieces(lo - grp.start, end - grp.start)
            starts.append(s)
            sizes.append(n)
            lo = end
            j += 1
        return np.concatenate(starts), np.concatenate(sizes)
