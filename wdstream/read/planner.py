"""The epoch plan as intervals: which samples each (rank, worker) slot reads, and what is left
after a stop. Pure arithmetic (numpy, no I/O): a function of
``(shard sizes, seed, epoch, shuffle, history, layout)``.

Terms:

- The *epoch order* lists the samples of the shards, the shards in a seeded per-epoch order,
  interleaved in lanes (:mod:`wdstream.read.order`: groups of ``lanes`` shards, one chunk of
  each in turn) so that every window mixes many shards. A *root index* is a position in it.
  (A cyclic order, for a resampled mixed source, repeats the shards in a new order each pass;
  root index ``p * total + i`` is item ``i`` of pass ``p``.) It is stored as runs (one per
  non-empty shard) and group bounds: O(shards). The first run of an epoch (the first entry of
  its history, else the current layout) fixes the interleave for the whole epoch; its
  ``lanes`` of 0 is the order of the releases before lanes (shard after shard, windows that
  grow in every span), kept so that their saved states resume exactly.
- The *pool* of generation 0 is the epoch order. Each resume (an entry of the *history*: a
  split of the pool over slots and how many items each slot emitted) starts a new
  generation whose pool is the previous one less what was emitted, order kept. It is stored
  as pieces of the previous pool: per old slot, its leftover of the window it stopped in
  (sorted) and the untouched tail interval of its span; then the part of the old pool that
  was in no slot (the dropped tail). So every pool is a sorted subsequence of the epoch
  order, and a range of it maps to root indices by prefix sums over O(old slots) pieces,
  materialising at most one window (<= the window cap) per old slot it overlaps.
- A :class:`Split` lays a pool over ``world`` ranks of ``len(lengths)`` workers: rank ``r``
  takes the ``r``-th contiguous span of ``sum(lengths)`` items, and inside it worker ``w`` the
  ``w``-th contiguous sub-span of ``lengths[w]`` items. A :class:`Layout` gives
  ``K = pool // (world * batch)`` batches per rank with ``drop_last`` (the last
  ``pool % (world * batch)`` items are in no slot), else ``ceil(pool / (world * batch))`` and
  the pool is padded by repeating it from its start (*fillers*: ``SlotPlan.real`` and on).
  Batch ``j`` of a rank comes from worker ``j % workers`` (the DataLoader round robin), so
  worker ``w`` owns ``len(range(w, K, workers))`` batches.
- A slot emits its span through seeded windows (:mod:`wdstream.read.windows`) of at most
  :func:`slot_window` items: the layout's ``cache_size`` when the epoch is shuffled, one
  item (nothing moves) when it is not. After it
  emitted ``n`` items, its consumed set is its whole windows before plus the first items of
  the current window's permutation; fillers are never consumed, so a resumed run still
  delivers every real sample exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np

from .order import Interleave, PassOrder
from .seeds import shard_order, slot_seed
from .windows import emitted as window_emitted
from .windows import iter_windows, window_bounds, window_order

__all__ = [
    "INF",
    "Layout",
    "Split",
    "Read",
    "SlotPlan",
    "Pool",
    "batches_per_rank",
    "worker_batches",
    "slot_window",
    "layout_split",
    "layout_emitted",
    "epoch_plan",
]

INF = 1 << 62  # length of a cyclic pool: passes without end
READ_BLOCK = 1 << 16  # positions of a span turned into reads at a time

Seg = tuple[int, int] | np.ndarray  # an interval [lo, hi) of indices, or sorted indices


@dataclass(frozen=True)
class Layout:
    """How one run reads an epoch: ranks, DataLoader workers per rank, batch, shuffle window
    (``config.cache_size``), policy."""

    world: int
    workers: int  # slots per rank: DataLoader num_workers, or 1 when it is 0
    batch_size: int
    cache_size: int  # the shuffle window's cap, in samples (config.cache_size)
    drop_last: bool = True
    lanes: int = 0  # shards interleaved per window (config.shuffle_lanes); 0: the old order

    def __post_init__(self) -> None:
        if (
            self.world < 1
            or self.workers < 1
            or self.batch_size < 1
            or self.cache_size < 0
            or self.lanes < 0
        ):
            raise ValueError(f"invalid layout {self}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Layout:
        """The layout of a state entry (keys that are not layout fields are ignored)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def batches_per_rank(pool_len: int, layout: Layout) -> int:
    """Batches every rank yields from a pool of ``pool_len`` samples."""
    step = layout.world * layout.batch_size
    return pool_len // step if layout.drop_last else -(-pool_len // step)


def worker_batches(k: int, workers: int, worker: int) -> int:
    """How many of a rank's first ``k`` batches come from ``worker`` (DataLoader round robin)."""
    return len(range(worker, k, workers))


@dataclass(frozen=True)
class Split:
    """A pool laid over ``world`` ranks x ``len(lengths)`` workers: worker ``w`` of every rank
    reads ``lengths[w]`` items; windows of at most ``window`` items."""

    world: int
    lengths: tuple[int, ...]
    window: int

    def __post_init__(self) -> None:
        if self.world < 1 or not self.lengths or min(self.lengths) < 0 or self.window < 0:
            raise ValueError(f"invalid split {self}")

    @property
    def workers(self) -> int:
        return len(self.lengths)

    @property
    def rank_length(self) -> int:
        return int(sum(self.lengths))

    @property
    def extent(self) -> int:
        """Items of the (padded) pool that the slots read."""
        return self.world * self.rank_length

    def slot_start(self, rank: int, worker: int) -> int:
        """Index in the padded pool of slot ``(rank, worker)``'s first item."""
        if not (0 <= rank < self.world and 0 <= worker < self.workers):
            raise ValueError(f"slot ({rank}, {worker}) is outside {self}")
        return rank * self.rank_length + int(sum(self.lengths[:worker]))

    def slot_starts(self) -> np.ndarray:
        """:meth:`slot_start` of every slot, in pool order (rank-major)."""
        lengths = np.asarray(self.lengths, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        ranks = np.arange(self.world, dtype=np.int64)[:, None] * self.rank_length
        return (ranks + offsets[None, :]).ravel()


def slot_window(cache_size: int, shuffle: bool) -> int:
    """A slot's window cap: ``cache_size`` when the epoch is shuffled, else 1 (every window
    one item: nothing moves, nothing is held)."""
    return int(cache_size) if shuffle else 1


def layout_split(pool_len: int, layout: Layout, shuffle: bool = True) -> Split:
    """The split of a pool of ``pool_len`` by ``layout``: whole batches per worker."""
    k = batches_per_rank(pool_len, layout)
    return Split(layout.world, layout_emitted(k, layout), slot_window(layout.cache_size, shuffle))


def layout_emitted(k: int, layout: Layout) -> tuple[int, ...]:
    """Items each worker of a rank has emitted after the rank yielded ``k`` batches."""
    return tuple(
        worker_batches(k, layout.workers, w) * layout.batch_size for w in range(layout.workers)
    )


class Read(NamedTuple):
    """Samples ``first..stop-1`` of a shard (``wanted`` None), or only the sorted local
    indices ``wanted`` among them; ``stop`` None: the whole shard, however many samples it
    has (streaming mode)."""

    shard: int
    first: int
    stop: int | None
    wanted: np.ndarray | None = None

    @property
    def count(self) -> int:
        return self.stop - self.first if self.wanted is None else len(self.wanted)


@dataclass(frozen=True, eq=False)
class SlotPlan:
    """What one slot reads and how it emits it.

    :meth:`iter_reads` gives, in order, the reads of the span (``length`` items) in read
    order, made as they are consumed (a span's reads can be many: one per chunk of a lane);
    span items ``[real, length)`` are fillers (padding repeats, not counted as consumed). The
    slot emits each window's items in :meth:`window_order`.
    """

    rank: int
    worker: int
    generation: int
    length: int
    real: int
    window: int
    seed: int
    segments: tuple[Seg, ...]  # the span as root-index segments
    root: _Root
    single: bool = False  # a span no longer than ``window`` is one window

    def iter_reads(self) -> Iterator[Read]:
        """The span's reads in order, made a block at a time (bounded memory)."""
        return self.root.iter_reads(self.segments)

    @property
    def reads(self) -> tuple[Read, ...]:
        """Every read of the span at once: O(reads), for tests and tools."""
        return tuple(self.iter_reads())

    def is_filler(self, span_index):
        """True for span indices that are padding repeats (int or array)."""
        return np.asarray(span_index) >= self.real

    def windows(self) -> Iterator[tuple[int, int, int]]:
        """``(index, start, stop)`` of the span's windows, in order."""
        return iter_windows(self.length, self.window, self.single)

    def window_order(self, index: int, start: int, stop: int) -> np.ndarray:
        """Span indices of window ``index`` (``[start, stop)``) in emission order."""
        return start + window_order(self.seed, index, stop - start)

    def emission(self) -> np.ndarray:
        """Every span index in emission order: O(length), for tests and tools."""
        parts = [self.window_order(i, a, b) for i, a, b in self.windows()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def consumed(self, n: int) -> tuple[int, np.ndarray]:
        """Real span indices emitted after ``n`` items: ``[0, whole)`` plus ``partial``."""
        whole, partial = window_emitted(n, self.length, self.window, self.seed, self.single)
        return min(whole, self.real), partial[partial < self.real]


def _add(out: list, seg: Seg) -> None:
    """Append a segment, skipping empty ones and merging touching intervals."""
    if isinstance(seg, tuple):
        if seg[1] <= seg[0]:
            return
        if out and isinstance(out[-1], tuple) and out[-1][1] == seg[0]:
            out[-1] = (out[-1][0], seg[1])
            return
    elif len(seg) == 0:
        return
    out.append(seg)


def _add_read(out: list[Read], read: Read) -> None:
    last = out[-1] if out else None
    if (
        read.wanted is None
        and last is not None
        and last.wanted is None
        and last.shard == read.shard
        and last.stop == read.first
    ):
        out[-1] = Read(last.shard, last.first, read.stop)
        return
    out.append(read)


class Pool:
    """One generation's pool of an epoch, lazily: ranges of it map to root indices and reads.

    Build it with :func:`epoch_plan`. ``length`` is its number of items (:data:`INF` for a
    cyclic pool).
    """

    length: int
    generation: int
    root: _Root

    def _map(self, segs: list[Seg]) -> list[Seg]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _parent(self) -> Pool | None:
        return None

    def to_root(self, segs: list[Seg]) -> list[Seg]:
        """Segments of this pool as segments of root indices (sorted, order kept)."""
        pool: Pool | None = self
        while pool is not None and pool is not self.root:
            segs = pool._map(segs)
            pool = pool._parent()
        return segs

    def segments(self, lo: int, hi: int) -> list[Seg]:
        """Root indices of pool items ``[lo, hi)``."""
        segs: list[Seg] = []
        _add(segs, (lo, min(hi, self.length)))
        return self.to_root(segs)

    def reads(self, lo: int, hi: int) -> list[Read]:
        """Reads of pool items ``[lo, hi)``, in pool order."""
        return self.root.to_reads(self.segments(lo, hi))

    def split(self, layout: Layout) -> Split:
        return layout_split(self.length, layout, self.root.shuffle)

    def batches_per_rank(self, layout: Layout) -> int:
        return batches_per_rank(self.length, layout)

    def slot_segments(
        self, split: Split | Layout, rank: int, worker: int
    ) -> tuple[list[Seg], int, int]:
        """``(segments of this pool, length, real)`` of slot ``(rank, worker)``'s span: the
        real part, then fillers (pool items again from the start) up to ``length``."""
        if isinstance(split, Layout):
            split = self.split(split)
        start = split.slot_start(rank, worker)
        length = split.lengths[worker]
        if split.extent > 0 and self.length == 0:
            raise ValueError("cannot split an empty pool over non-empty spans")
        real = max(0, min(self.length - start, length))
        segs: list[Seg] = []
        _add(segs, (start, start + real))
        pos, end = start + real, start + length
        while pos < end:
            q = pos % self.length
            take = min(self.length - q, end - pos)
            segs.append((q, q + take))
            pos += take
        return segs, length, real

    def slot(self, split: Split | Layout, rank: int, worker: int) -> SlotPlan:
        """The plan of slot ``(rank, worker)``: its reads, fillers and window seed.
        O(runs it touches + old slots + a window per old slot it overlaps)."""
        if isinstance(split, Layout):
            split = self.split(split)
        segs, length, real = self.slot_segments(split, rank, worker)
        root = self.root
        seed = slot_seed(root.seed, root.epoch, self.generation, rank, worker, root.salt)
        return SlotPlan(
            rank,
            worker,
            self.generation,
            length,
            real,
            split.window,
            seed,
            tuple(self.to_root(segs)),
            root,
            root.single,
        )

    def after(self, split: Split, emitted: Sequence[int]) -> Pool:
        """The next generation's pool: this one less what the slots of ``split`` emitted
        (``emitted[w]`` items by worker ``w`` of every rank)."""
        return _Rest(self, split, emitted)

    def after_batches(self, layout: Layout, k: int) -> Pool:
        """The next generation's pool after every rank of ``layout`` yielded ``k`` batches."""
        total = self.batches_per_rank(layout)
        if not 0 <= k <= total:
            raise ValueError(f"{k} batches consumed but the layout has {total} per rank")
        return self.after(self.split(layout), layout_emitted(k, layout))


class _Root(Pool):
    """Generation 0: the epoch order, as runs of shards and groups of lanes (per pass when
    cyclic)."""

    def __init__(
        self,
        sizes: Sequence[int],
        seed: int,
        epoch: int,
        shuffle: bool,
        cyclic: bool,
        salt: str,
        interleave: Interleave | None = None,
        single: bool = False,
    ):
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
        if (self.sizes < 0).any():
            raise ValueError("shard sizes must be >= 0")
        self.seed, self.epoch, self.shuffle, self.salt = seed, epoch, shuffle, salt
        self.interleave, self.single = interleave, single
        self.total = int(self.sizes.sum())
        self.length = INF if cyclic and self.total else self.total
        self.generation = 0
        self.root = self
        self._passes: dict[int, tuple[np.ndarray, PassOrder]] = {}

    def pass_runs(self, pass_no: int) -> tuple[np.ndarray, PassOrder]:
        """``(shards, order)`` of a pass: its non-empty shards in order, and its epoch order
        over them (``order.starts``: where each shard starts in the base order)."""
        got = self._passes.get(pass_no)
        if got is None:
            shards = shard_order(len(self.sizes), self.seed, self.epoch, self.shuffle, pass_no)
            shards = shards[self.sizes[shards] > 0]
            if len(self._passes) >= 4:
                self._passes.clear()
            got = self._passes[pass_no] = (shards, PassOrder(self.sizes[shards], self.interleave))
        return got

    def to_reads(self, segs: Sequence[Seg]) -> list[Read]:
        """Reads of root-index segments, in order."""
        return list(self.iter_reads(segs))

    def iter_reads(self, segs: Sequence[Seg]) -> Iterator[Read]:
        """Reads of root-index segments, in order, made :data:`READ_BLOCK` positions at a
        time: memory stays bounded however long the span (or however many samples a
        manifest claims)."""
        for seg in segs:
            if isinstance(seg, tuple):
                for lo in range(seg[0], seg[1], READ_BLOCK):
                    out: list[Read] = []
                    self._interval_reads(lo, min(seg[1], lo + READ_BLOCK), out)
                    yield from out
            elif len(seg):
                out = []
                self._array_reads(np.asarray(seg, dtype=np.int64), out)
                yield from out

    def _interval_reads(self, lo: int, hi: int, out: list[Read]) -> None:
        while lo < hi:
            pass_no, off = divmod(lo, self.total)
            shards, order = self.pass_runs(pass_no)
            end = off + min(hi - lo, self.total - off)
            starts = order.starts
            for a, n in zip(*order.pieces(off, end), strict=True):
                a, b = int(a), int(a + n)
                i = int(np.searchsorted(starts, a, side="right")) - 1
                while a < b:
                    stop = min(int(starts[i + 1]), b)
                    _add_read(out, Read(int(shards[i]), a - int(starts[i]), stop - int(starts[i])))
                    a = stop
                    i += 1
            lo += end - off

    def _array_reads(self, idx: np.ndarray, out: list[Read]) -> None:
        passes = idx // self.total
        cuts = np.flatnonzero(np.diff(passes)) + 1
        for part in np.split(idx, cuts):
            pass_no = int(part[0]) // self.total
            shards, order = self.pass_runs(pass_no)
            base = order.to_base(part - pass_no * self.total)
            run = np.searchsorted(order.starts, base, side="right") - 1
            # a read per run of one shard, its wanted samples ascending
            cut = np.flatnonzero((np.diff(run) != 0) | (np.diff(base) <= 0)) + 1
            for group in np.split(np.arange(len(base)), cut):
                r = int(run[group[0]])
                local = base[group] - order.starts[r]
                out.append(Read(int(shards[r]), int(local[0]), int(local[-1]) + 1, local))


class _Rest(Pool):
    """Generation g + 1: generation g's pool less what a split's slots emitted, as pieces."""

    def __init__(self, parent: Pool, split: Split, emitted: Sequence[int]):
        if len(emitted) != split.workers:
            raise ValueError(f"{len(emitted)} emitted counts for {split.workers} workers")
        if any(not 0 <= e <= n for e, n in zip(emitted, split.lengths, strict=True)):
            raise ValueError(f"emitted {tuple(emitted)} outside spans {split.lengths}")
        if split.extent > 0 and parent.length == 0:
            raise ValueError("cannot split an empty pool over non-empty spans")
        self.parent, self._split = parent, split
        self.root = parent.root
        self.generation = parent.generation + 1
        n_old = parent.length
        slots = split.world * split.workers
        self._starts = split.slot_starts()
        lengths = np.tile(np.asarray(split.lengths, dtype=np.int64), split.world)
        taken = np.tile(np.asarray(emitted, dtype=np.int64), split.world)
        self._real = np.clip(n_old - self._starts, 0, lengths)
        self._window, self._a, self._b = window_bounds(
            taken, lengths, split.window, parent.root.single
        )
        self._taken = taken - self._a  # items emitted of the current window
        partial = self._taken > 0
        tail_lo = np.where(partial, self._b, self._a)
        part_len = np.where(partial & (self._real >= self._b), self._b - self._a - self._taken, 0)
        self._partials: dict[int, np.ndarray] = {}
        for i in np.flatnonzero(partial & (self._real > self._a) & (self._real < self._b)):
            part_len[i] = len(self._partial(int(i)))  # the slot where padding starts
        pieces = np.empty(2 * slots + 1, dtype=np.int64)
        pieces[0 : 2 * slots : 2] = part_len
        pieces[1 : 2 * slots : 2] = np.clip(self._real - tail_lo, 0, None)
        pieces[-1] = max(0, n_old - split.extent)
        self._src = np.full(2 * slots + 1, -1, dtype=np.int64)
        self._src[1 : 2 * slots : 2] = self._starts + tail_lo
        self._src[-1] = split.extent
        self._cum = np.zeros(2 * slots + 2, dtype=np.int64)
        np.cumsum(pieces, out=self._cum[1:])
        self._slots = slots
        self.length = int(self._cum[-1])

    def _parent(self) -> Pool:
        return self.parent

    def _partial(self, i: int) -> np.ndarray:
        """Parent indices of the real items old slot ``i`` left in its current window."""
        got = self._partials.get(i)
        if got is None:
            rank, worker = divmod(i, self._split.workers)
            root = self.root
            seed = slot_seed(root.seed, root.epoch, self.parent.generation, rank, worker, root.salt)
            a, b = int(self._a[i]), int(self._b[i])
            perm = window_order(seed, int(self._window[i]), b - a)
            left = np.sort(perm[int(self._taken[i]) :]) + a
            got = self._partials[i] = self._starts[i] + left[left < self._real[i]]
        return got

    def _piece(self, p: int, o0: int, o1: int, out: list[Seg]) -> None:
        if p % 2 == 1 or p == 2 * self._slots:
            src = int(self._src[p])
            _add(out, (src + o0, src + o1))
        else:
            _add(out, self._partial(p // 2)[o0:o1])

    def _map(self, segs: list[Seg]) -> list[Seg]:
        out: list[Seg] = []
        cum = self._cum
        for seg in segs:
            if isinstance(seg, tuple):
                lo, hi = seg
                p = int(np.searchsorted(cum, lo, side="right")) - 1
                while lo < hi:
                    base = int(cum[p])
                    end = min(hi, int(cum[p + 1]))
                    if end > lo:
                        self._piece(p, lo - base, end - base, out)
                        lo = end
                    p += 1
                continue
            idx = np.asarray(seg, dtype=np.int64)
            p = np.searchsorted(cum, idx, side="right") - 1
            off = idx - cum[p]
            res = np.empty_like(idx)
            part = (p % 2 == 0) & (p < 2 * self._slots)
            res[~part] = self._src[p[~part]] + off[~part]
            for q in np.unique(p[part]):
                sel = p == q
                res[sel] = self._partial(int(q) // 2)[off[sel]]
            _add(out, res)
        return out


def epoch_plan(
    sizes: Sequence[int],
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    history: Sequence[tuple[Layout, int]] = (),
    salt: str = "",
    cyclic: bool = False,
    layout: Layout | None = None,
    window: int | None = None,
    sample_bytes: float | None = None,
) -> Pool:
    """The pool of ``epoch`` after the runs in ``history`` (``(layout, batches per rank)``
    each, oldest first). O(shards + old slots); nothing per sample.

    The epoch order is interleaved as the epoch's first layout says (``history[0]``'s, else
    ``layout``; none, or ``lanes == 0``: the old order), its chunks sized for windows of
    ``window`` samples (default: that layout's ``cache_size``) and samples of
    ``sample_bytes`` bytes (the manifest's mean; None: unknown). ``cyclic``: the epoch order
    repeats in new shard orders without end (a resampled mixed source); ``salt``:
    distinguishes the window seeds of sources that share slots.
    """
    first = history[0][0] if history else layout
    interleave, single = None, False
    if first is not None and first.lanes > 0:
        single = True
        if shuffle:
            interleave = Interleave.of(
                first.lanes, first.cache_size if window is None else window, sample_bytes
            )
    pool: Pool = _Root(sizes, seed, epoch, shuffle, cyclic, salt, interleave, single)
    for layout, k in history:
        pool = pool.after_batches(layout, k)
    return pool
