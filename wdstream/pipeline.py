"""The read pipeline inside each DataLoader worker: plain generator stages chained together.

exact mode (a manifest):   plan (split.py) -> read spans -> shuffle buffer -> decode -> batches
streaming mode (no manifest, or ``exact=False``): shards (resampled per slot) -> samples ->
                           shuffle buffer -> decode -> batches

A worker yields whole collated batches (decode, tokenization and collation run in workers).
Every rank yields the same number of batches: in exact mode that number comes from the plan,
in streaming mode from the nominal epoch length.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from . import split
from .errors import ConfigError, ErrorBudget, SampleError, SourceError, TooManyErrors, redact
from .reading import ShardCache, ShardReader, ShardRef
from .shuffle import buffer_shuffle, derive_seed, shard_order

__all__ = ["SourceSpec", "ResumeInfo", "ShardDataset", "decode_stage", "exact_batches",
           "plain_batches"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class SourceSpec:
    """One data source resolved to shards; ``sizes`` known when it came from a manifest."""

    name: str
    shards: list[ShardRef]
    has_manifest: bool = False
    synthetic: bool = False

    @property
    def sizes(self) -> list[int]:
        return [int(s.samples or 0) for s in self.shards]

    @property
    def samples(self) -> int | None:
        return sum(self.sizes) if self.has_manifest else None


@dataclass
class ResumeInfo:
    """Where a resumed epoch starts: the runs of that epoch so far, as (layout, batches)."""

    epoch: int
    history: list[tuple[split.Layout, int]] = field(default_factory=list)


class _Bad:
    """Marks a sample that could not be read or decoded (keeps batch alignment)."""

    __slots__ = ("key", "reason")

    def __init__(self, key: str | None, reason: str):
        self.key, self.reason = key, reason


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


def readahead(items: Iterable[T], depth: int) -> Iterator[T]:
    """Pull ``items`` in a background thread, at most ``depth`` ahead, keeping their order.

    Shard reads and tar parsing then overlap with decoding (pillow and soundfile release the
    GIL). Errors are re-raised here; closing this generator stops and joins the thread.
    """
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    source = iter(items)

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for x in source:
                if not put(x):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_Raised(exc))

    thread = threading.Thread(target=run, name="wdstream-readahead", daemon=True)
    thread.start()
    try:
        while True:
            x = q.get()
            if x is _DONE:
                return
            if isinstance(x, _Raised):
                raise x.exc
            yield x
    finally:
        stop.set()
        thread.join()
        close = getattr(source, "close", None)
        if close is not None:
            close()


def decode_stage(items: Iterable[dict], decoder: Callable[[dict], dict], budget: ErrorBudget,
                 source: str | None = None, synthetic: bool = False,
                 force_source: bool = False) -> Iterator[Any]:
    """Decode each item; undecodable ones are counted, logged and passed on as ``_Bad``.

    ``source`` fills the sample's source when its metadata names none (``force_source``:
    always, as when mixing named sources)."""
    for item in items:
        if "__error__" in item:
            yield _Bad(item.get("__key__"), item["__error__"])
            continue
        try:
            out = decoder(item)
        except SampleError as exc:
            reason = getattr(exc, "reason", None) or "undecodable sample"
            budget.record(reason, f"{redact(item.get('__url__', '?'))} key {item.get('__key__')}",
                          exc)
            yield _Bad(item.get("__key__"), reason)
            continue
        if source is not None and (force_source or not out.get("source")):
            out["source"] = source
        if synthetic:
            out["synthetic"] = True
        yield out


def exact_batches(items: Iterable[Any], batch_size: int, n_batches: int,
                  collate: Callable[[list[dict]], dict],
                  borrow: Callable[[], dict | None] | None = None) -> Iterator[dict]:
    """Exactly ``n_batches`` batches of ``batch_size`` consecutive items.

    A bad item is replaced by a good sample of the same batch (or the last good one before),
    so batch boundaries stay where the plan put them; the replacement is already counted.
    When a slot has no good sample at all, ``borrow()`` supplies one from elsewhere.
    """
    it = iter(items)
    last_good: dict | None = None
    waiting: list[list[Any]] = []  # batches with no good sample yet and none before them
    for _ in range(n_batches):
        chunk = list(itertools.islice(it, batch_size))
        if len(chunk) < batch_size:
            raise AssertionError(f"plan promised {batch_size} items, got {len(chunk)}")
        good = [s for s in chunk if not isinstance(s, _Bad)]
        if not good and last_good is None:
            waiting.append(chunk)
            continue
        fill = good or [last_good]
        batch = [s if not isinstance(s, _Bad) else fill[i % len(fill)]
                 for i, s in enumerate(chunk)]
        last_good = good[-1] if good else last_good
        for held in waiting:
            yield collate([last_good] * len(held))
        waiting = []
        yield collate(batch)
    if waiting and borrow is not None:
        last_good = borrow()
        if last_good is not None:
            for held in waiting:
                yield collate([last_good] * len(held))
            return
    if waiting:
        raise TooManyErrors(f"{len(waiting) * batch_size} samples in a row could not be read "
                            f"or decoded; no good sample to fill the batches with")


def plain_batches(items: Iterable[Any], batch_size: int, collate: Callable[[list[dict]], dict],
                  *, n_batches: int | None = None, drop_last: bool = False) -> Iterator[dict]:
    """Batches of the good items; stops after ``n_batches`` when given."""
    batch: list[dict] = []
    count = 0
    for s in items:
        if isinstance(s, _Bad):
            continue
        batch.append(s)
        if len(batch) == batch_size:
            yield collate(batch)
            batch = []
            count += 1
            if n_batches is not None and count >= n_batches:
                return
    if batch and not drop_last and n_batches is None:
        yield collate(batch)


class ShardDataset(torch.utils.data.IterableDataset):
    """Yields collated batches for this process's rank and DataLoader worker.

    The epoch lives in a shared-memory tensor so that persistent workers see
    :meth:`set_epoch`; everything else is fixed at construction.
    """

    def __init__(self, source: SourceSpec, config, decoder: Callable[[dict], dict],
                 collate: Callable[[list[dict]], dict], *, rank: int = 0, world: int = 1,
                 resume: ResumeInfo | None = None):
        super().__init__()
        self.source = source
        self.config = config
        self.decoder = decoder
        self.collate = collate
        self.rank, self.world = rank, world
        self.resume = resume
        self.slots_per_rank = max(1, config.num_workers)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.exact = bool(source.has_manifest and config.exact)
        if not self.exact and world > 1 and self.epoch_samples() is None:
            raise ConfigError(
                f"{world} ranks read {source.name!r} without a manifest: set config.epoch_length "
                f"(samples per epoch) so every rank yields the same number of batches")

    # -- epoch bookkeeping (main process) ----------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def layout(self) -> split.Layout:
        c = self.config
        return split.Layout(world=self.world, workers=self.slots_per_rank,
                            batch_size=c.batch_size, cache_size=c.cache_size if c.shuffle else 0,
                            drop_last=c.drop_last)

    def history(self, epoch: int) -> list[tuple[split.Layout, int]]:
        if self.resume is not None and self.resume.epoch == epoch:
            return list(self.resume.history)
        return []

    def pool(self, epoch: int) -> np.ndarray:
        c = self.config
        return split.epoch_pool(self.source.sizes, seed=c.seed, epoch=epoch, shuffle=c.shuffle,
                                history=self.history(epoch))

    def epoch_samples(self) -> int | None:
        if self.config.epoch_length is not None:
            return int(self.config.epoch_length)
        return self.source.samples

    def batches_per_rank(self, epoch: int | None = None) -> int | None:
        """Batches each rank yields in ``epoch`` (None: unknown, a single natural pass)."""
        epoch = self.epoch if epoch is None else epoch
        if self.exact:
            return split.batches_per_rank(len(self.pool(epoch)), self.layout())
        n = self.epoch_samples()
        if n is None:
            return None
        per_step = self.world * self.config.batch_size
        return n // per_step if self.config.drop_last else -(-n // per_step)

    # -- worker side -------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.slots_per_rank:
            raise ConfigError(f"dataset planned for {self.slots_per_rank} workers per rank but "
                              f"runs under {workers}; build it with the loader's num_workers")
        c = self.config
        budget = ErrorBudget(c.error_tolerance, what="bad samples/shards")
        cache = ShardCache(c.shard_cache_dir, c.shard_cache_bytes) if c.shard_cache_dir else None
        reader = ShardReader(c.storage_options, block_size=c.read_block_size, budget=budget,
                             cache=cache)
        epoch = self.epoch
        if self.exact:
            stream = self._exact(reader, budget, epoch, worker)
        else:
            stream = self._streaming(reader, budget, epoch, worker, workers)
        yield from stream
        if budget.total:
            log.warning("epoch %d, rank %d worker %d: skipped %s", epoch, self.rank, worker,
                        dict(budget.counts))

    def _exact(self, reader: ShardReader, budget: ErrorBudget, epoch: int,
               worker: int) -> Iterator[dict]:
        c = self.config
        layout = self.layout()
        history = self.history(epoch)
        pool = self.pool(epoch)
        k = split.batches_per_rank(len(pool), layout)
        n_batches = split.worker_batches(k, layout.workers, worker)
        if n_batches == 0:
            return
        shuffled = self.slot_items(reader, pool, epoch, len(history), worker)
        decoded = decode_stage(shuffled, self.decoder, budget, self.source.name,
                               self.source.synthetic)
        yield from exact_batches(decoded, c.batch_size, n_batches, self.collate,
                                 borrow=lambda: self._borrow(reader, budget))

    def _borrow(self, reader: ShardReader, budget: ErrorBudget) -> dict | None:
        """The first good sample of the source: fills a slot none of whose samples could be
        read, so that its rank still yields every planned batch (DDP must not hang)."""
        for shard in self.source.shards:
            for item in decode_stage(reader.iter_shard(shard), self.decoder, budget,
                                     self.source.name, self.source.synthetic):
                if not isinstance(item, _Bad):
                    log.warning("rank %d: no readable sample in its span; repeating %s to keep "
                                "the batch count", self.rank, item.get("key"))
                    return item
        return None

    def slot_items(self, reader: ShardReader, pool: np.ndarray, epoch: int, generation: int,
                   worker: int, rank: int | None = None) -> Iterator[dict]:
        """Raw items of one slot in emission order: its span read, then buffer-shuffled."""
        layout = self.layout()
        rank = self.rank if rank is None else rank
        span = split.slot_span(pool, layout, rank, worker)
        items = readahead(self._read_span(reader, span, split.shard_starts(self.source.sizes)),
                          self.config.readahead)
        seed = split.slot_seed(self.config.seed, epoch, generation, rank, worker)
        return buffer_shuffle(items, layout.cache_size, seed)

    def _read_span(self, reader: ShardReader, span: np.ndarray,
                   starts: np.ndarray) -> Iterator[dict]:
        for shard, first, stop, wanted in split.positions_to_runs(span, starts, max_gap=64):
            yield from reader.read_run(self.source.shards[shard], first, stop, wanted)

    def _streaming(self, reader: ShardReader, budget: ErrorBudget, epoch: int, worker: int,
                   workers: int) -> Iterator[dict]:
        c = self.config
        shards = self.source.shards
        seed = derive_seed(c.seed, epoch, self.rank, worker, "stream")
        k = self.batches_per_rank(epoch)
        if k is None:  # one natural pass, shards split over workers (a single rank)
            order = shard_order(len(shards), c.seed, epoch, c.shuffle)
            mine = [shards[i] for i in order[worker::workers]]
            samples = itertools.chain.from_iterable(reader.iter_shard(s) for s in mine)
            n_batches = None
        else:
            samples = self._resampled(reader, shards, seed)
            n_batches = split.worker_batches(k, workers, worker)
            if n_batches == 0:
                return
        shuffled = buffer_shuffle(readahead(samples, c.readahead),
                                  c.cache_size if c.shuffle else 0, seed)
        decoded = decode_stage(shuffled, self.decoder, budget, self.source.name,
                               self.source.synthetic)
        yield from plain_batches(decoded, c.batch_size, self.collate, n_batches=n_batches,
                                 drop_last=c.drop_last)

    def _resampled(self, reader: ShardReader, shards: list[ShardRef],
                   seed: int) -> Iterator[dict]:
        """Shards drawn at random with replacement, forever (webdataset's ResampledShards)."""
        if not shards:
            raise SourceError(f"source {self.source.name!r} has no shards")
        rng = random.Random(seed)
        empty_draws = 0
        while True:
            shard = shards[rng.randrange(len(shards))]
            got = False
            for sample in reader.iter_shard(shard):
                got = True
                yield sample
            empty_draws = 0 if got else empty_draws + 1
            if empty_draws > 3 * len(shards) + 10:
                raise SourceError(f"no readable sample in {empty_draws} shard draws from "
                                  f"{self.source.name!r}; last tried {redact(shard.url)}",
                                  url=shard.url)
