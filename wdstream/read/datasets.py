"""The datasets inside each DataLoader worker: a plan, then stages, then batches.

exact mode (a manifest):   plan -> read spans -> window shuffle -> decode -> exact batches
streaming mode (no manifest, or ``exact=False``): shards (resampled per slot) -> samples ->
                           shuffle buffer -> decode -> batches
mixed (several manifests): each source planned on its own -> mix by weight -> decode -> batches

A worker yields whole collated batches (decode, tokenization and collation run in workers).
Every rank yields the same number of batches: in exact mode that number comes from the plan,
in streaming mode from the nominal epoch length, when mixing from the mix's arithmetic.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError, ErrorBudget, SourceError, redact
from . import planner
from .fetch import Counters, Prefetcher, ReadStats
from .mix import normalise_weights
from .mixplan import MixPlan, mixed_epoch
from .planner import Layout, Pool, SlotPlan
from .shards import LocalCache, ShardReader, ShardRef
from .shuffle import buffer_shuffle, derive_seed, shard_order
from .stages import Bad, decode_stage, exact_batches, plain_batches, readahead, window_shuffle
from .world import SharedEpoch, World

__all__ = ["ShardSource", "ResumeInfo", "ShardDataset", "MixedDataset", "make_reader",
           "TransformedDecoder", "transform_seed"]

log = logging.getLogger(__name__)


def make_reader(config, budget: ErrorBudget) -> ShardReader:
    """A shard reader for one worker, with the optional local shard cache."""
    cache = LocalCache(config.local_cache_dir, config.local_cache_bytes) \
        if config.local_cache_dir else None
    return ShardReader(config.storage_options, block_size=config.read_block_size, budget=budget,
                       cache=cache, max_member_bytes=config.max_member_bytes)


def tracked(batches: Iterator[dict], stats: ReadStats, worker: int, counters: Counters,
            batch_size: int, log_every: int, what: str) -> Iterator[dict]:
    """``batches``, counting each into ``counters`` (written to ``stats`` row ``worker``)
    and the seconds spent suspended at the yield: blocked on the consumer."""
    for batch in batches:
        counters.batches += 1
        counters.samples += batch_size
        stats.write(worker, counters)
        if log_every and counters.batches % log_every == 0:
            log.debug("%s worker %d: %d batches, %.1f samples/s, io wait %.2fs, decode %.2fs, "
                      "blocked %.2fs, %d GETs, %d bytes", what, worker, counters.batches,
                      counters.samples / max(counters.elapsed_s, 1e-9), counters.io_wait_s,
                      counters.decode_s, counters.blocked_s, counters.get_requests,
                      counters.bytes_read)
        t0 = time.perf_counter()
        yield batch
        counters.blocked_s += time.perf_counter() - t0
    stats.write(worker, counters)


def transform_seed(seed: int, epoch: int, source: str, key: str) -> int:
    """The seed of a sample's transform: a pure function of ``(config.seed, epoch, source
    name, sample key)``, so the same sample gets the same augmentation in any worker, rank,
    layout or resumed run, and another one in the next epoch."""
    return derive_seed(seed, epoch, source, key, "transform")


class TransformedDecoder:
    """The decoder, then ``transform(sample, generator)`` with a ``torch.Generator`` seeded by
    :func:`transform_seed`. Picklable when ``decoder`` and ``transform`` are. ``transform``
    returns the sample (or None after changing it in place); a SampleError it raises counts
    the sample as bad, like a decoding error."""

    def __init__(self, decoder: Callable[[dict], dict], transform: Callable, *, seed: int,
                 epoch: int, source: str):
        self.decoder, self.transform = decoder, transform
        self.seed, self.epoch, self.source = seed, epoch, source

    def __call__(self, item: dict) -> dict:
        out = self.decoder(item)
        generator = torch.Generator()
        generator.manual_seed(transform_seed(self.seed, self.epoch, self.source, out["key"]))
        result = self.transform(out, generator)
        return out if result is None else result


MAX_GAP = 64  # unwanted samples a read goes through rather than opening a new ranged read


def _gap_split(wanted: np.ndarray, max_gap: int) -> list[np.ndarray]:
    """Sorted local indices cut where more than ``max_gap`` samples lie between two."""
    cuts = np.flatnonzero(np.diff(wanted) > max_gap + 1) + 1
    return np.split(wanted, cuts)


@dataclass
class ShardSource:
    """One data source resolved to shards; ``sizes`` known when it came from a manifest."""

    name: str
    shards: Sequence[ShardRef]  # a list, or ShardRefs over a manifest's compact table
    has_manifest: bool = False
    synthetic: bool = False

    @property
    def sizes(self):
        """Sample count of every shard (0 when unknown)."""
        sizes = getattr(self.shards, "sizes", None)
        return sizes if sizes is not None else [int(s.samples or 0) for s in self.shards]

    @property
    def samples(self) -> int | None:
        return int(sum(self.sizes)) if self.has_manifest else None


@dataclass
class ResumeInfo:
    """Where a resumed epoch starts: the runs of that epoch so far, as (layout, batches)."""

    epoch: int
    history: list[tuple[Layout, int]] = field(default_factory=list)




class ShardDataset(torch.utils.data.IterableDataset):
    """Yields collated batches for this process's rank and DataLoader worker.

    The epoch lives in a shared-memory tensor so that persistent workers see
    :meth:`set_epoch`; everything else is fixed at construction.
    """

    def __init__(self, source: ShardSource, config, decoder: Callable[[dict], dict],
                 collate: Callable[[list[dict]], dict], *, rank: int = 0, world: int = 1,
                 resume: ResumeInfo | None = None, transform: Callable | None = None):
        super().__init__()
        self.source = source
        self.config = config
        self.decoder = decoder
        self.transform = transform
        self.collate = collate
        self.rank, self.world = rank, world
        self.resume = resume
        self.slots_per_rank = max(1, config.num_workers)
        self._epoch = SharedEpoch()
        self.read_stats = ReadStats(self.slots_per_rank)
        self.exact = bool(source.has_manifest and config.exact)
        if not self.exact and world > 1 and self.epoch_samples() is None:
            raise ConfigError(
                f"{world} ranks read {source.name!r} without a manifest: set config.epoch_length "
                f"(samples per epoch) so every rank yields the same number of batches")

    # -- epoch bookkeeping (main process) ----------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    def decoder_for(self, epoch: int) -> Callable[[dict], dict]:
        """The decode stage's function: the decoder, then the transform when there is one."""
        if self.transform is None:
            return self.decoder
        return TransformedDecoder(self.decoder, self.transform, seed=self.config.seed,
                                  epoch=epoch, source=self.source.name)

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def layout(self) -> Layout:
        c = self.config
        return Layout(world=self.world, workers=self.slots_per_rank, batch_size=c.batch_size,
                      cache_size=c.cache_size if c.shuffle else 0, drop_last=c.drop_last)

    def history(self, epoch: int) -> list[tuple[Layout, int]]:
        if self.resume is not None and self.resume.epoch == epoch:
            return list(self.resume.history)
        return []

    def pool(self, epoch: int) -> Pool:
        """What is left of ``epoch`` after the resumed history: O(shards + old slots)."""
        c = self.config
        return planner.epoch_plan(self.source.sizes, seed=c.seed, epoch=epoch,
                                  shuffle=c.shuffle, history=self.history(epoch))

    def epoch_samples(self) -> int | None:
        if self.config.epoch_length is not None:
            return int(self.config.epoch_length)
        return self.source.samples

    def batches_per_rank(self, epoch: int | None = None) -> int | None:
        """Batches each rank yields in ``epoch`` (None: unknown, a single natural pass)."""
        epoch = self.epoch if epoch is None else epoch
        if self.exact:
            return self.pool(epoch).batches_per_rank(self.layout())
        n = self.epoch_samples()
        if n is None:
            return None
        per_step = self.world * self.config.batch_size
        return n // per_step if self.config.drop_last else -(-n // per_step)

    # -- worker side -------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        world = World.detect(self.rank, self.world)
        if world.workers != self.slots_per_rank:
            raise ConfigError(f"dataset planned for {self.slots_per_rank} workers per rank but "
                              f"runs under {world.workers}; build it with the loader's "
                              f"num_workers")
        c = self.config
        budget = ErrorBudget(c.error_tolerance, what="bad samples/shards")
        reader = make_reader(c, budget)
        epoch = self.epoch
        counters = Counters()
        if self.exact:
            stream = self._exact(reader, budget, epoch, world.worker, counters)
        else:
            stream = self._streaming(reader, budget, epoch, world.worker, world.workers,
                                     counters)
        yield from tracked(stream, self.read_stats, world.worker, counters, c.batch_size,
                           c.stats_log_every, f"epoch {epoch}, rank {self.rank}")
        if budget.total or budget.placeholders:
            log.warning("epoch %d, rank %d worker %d: skipped %s; %d samples not delivered",
                        epoch, self.rank, world.worker, dict(budget.counts), budget.placeholders)

    def decoded(self, world: World, epoch: int, budget: ErrorBudget) -> Iterator:
        """This slot's decoded samples in emission order, :class:`Bad` markers included: the
        stages before batching (used one sample at a time by MultimodalDataset)."""
        reader = make_reader(self.config, budget)
        if self.exact:
            items = self.slot_items(reader, self.slot_plan(epoch, world.worker))
        else:
            items = self._streaming_items(reader, epoch, world.worker, world.workers)
        return decode_stage(items, self.decoder_for(epoch), budget, self.source.name,
                            self.source.synthetic, threads=self.config.decode_threads)

    def _exact(self, reader: ShardReader, budget: ErrorBudget, epoch: int,
               worker: int, counters: Counters | None = None) -> Iterator[dict]:
        c = self.config
        slot = self.slot_plan(epoch, worker)
        n_batches = slot.length // c.batch_size
        if n_batches == 0:
            return
        shuffled = self.slot_items(reader, slot, counters)
        decoded = decode_stage(shuffled, self.decoder_for(epoch), budget, self.source.name,
                               self.source.synthetic, threads=c.decode_threads,
                               counters=counters)
        yield from exact_batches(decoded, c.batch_size, n_batches, self.collate,
                                 borrow=lambda: self._borrow(reader, budget, epoch))

    def _borrow(self, reader: ShardReader, budget: ErrorBudget, epoch: int) -> dict | None:
        """The first good sample of the source: fills a slot none of whose samples could be
        read, so that its rank still yields every planned batch (DDP must not hang)."""
        for shard in self.source.shards:
            for item in decode_stage(reader.iter_shard(shard), self.decoder_for(epoch), budget,
                                     self.source.name, self.source.synthetic):
                if not isinstance(item, Bad):
                    log.warning("rank %d: no readable sample in its span; repeating %s to keep "
                                "the batch count", self.rank, item.get("key"))
                    return item
        return None

    def slot_plan(self, epoch: int, worker: int, rank: int | None = None) -> SlotPlan:
        """What slot ``(rank, worker)`` reads this epoch: O(shards + old slots + cache)."""
        rank = self.rank if rank is None else rank
        return self.pool(epoch).slot(self.layout(), rank, worker)

    def slot_items(self, reader: ShardReader, slot: SlotPlan,
                   counters: Counters | None = None) -> Iterator[dict]:
        """Raw items of one slot in emission order: its reads (``read_ahead_requests``
        ranged GETs in flight, see :mod:`wdstream.read.fetch`; or, with 0, one read at a
        time on the ``readahead`` thread), then the window shuffle."""
        c = self.config
        if c.read_ahead_requests > 0 and reader.cache is None:  # the cache reads whole shards
            items = iter(Prefetcher(reader, self.source.shards, self._slot_reads(slot),
                                    requests=c.read_ahead_requests,
                                    max_bytes=c.read_ahead_bytes,
                                    request_bytes=min(c.read_block_size, max(
                                        1, c.read_ahead_bytes // c.read_ahead_requests)),
                                    counters=counters))
        else:
            items = readahead(self._read_slot(reader, slot), c.readahead)
        return window_shuffle(items, slot)

    @staticmethod
    def _slot_reads(slot: SlotPlan) -> Iterator[tuple[int, int, int, np.ndarray | None]]:
        """The slot's reads as ``(shard, first, stop, wanted or None)``, scattered ones cut
        where samples lie far apart (as :meth:`_read_slot` reads them)."""
        for read in slot.reads:
            if read.wanted is None:
                yield read.shard, read.first, read.stop, None
                continue
            for part in _gap_split(np.asarray(read.wanted), MAX_GAP):
                yield read.shard, int(part[0]), int(part[-1]) + 1, part

    def _read_slot(self, reader: ShardReader, slot: SlotPlan) -> Iterator[dict]:
        shards = self.source.shards
        for read in slot.reads:
            if read.wanted is None:
                yield from reader.read_run(shards[read.shard], read.first, read.stop,
                                           range(read.first, read.stop))
                continue
            for part in _gap_split(read.wanted, MAX_GAP):  # scattered: ranged reads
                yield from reader.read_run(shards[read.shard], int(part[0]),
                                           int(part[-1]) + 1, part)

    def _streaming_items(self, reader: ShardReader, epoch: int, worker: int,
                         workers: int) -> Iterator[dict]:
        """Raw samples of one slot in streaming mode, shuffled in the buffer: one natural pass
        over this worker's shards, or shards resampled forever when the epoch has a length."""
        c = self.config
        shards = self.source.shards
        seed = derive_seed(c.seed, epoch, self.rank, worker, "stream")
        if self.epoch_samples() is None:  # one natural pass, shards split over workers
            order = shard_order(len(shards), c.seed, epoch, c.shuffle)
            mine = [shards[i] for i in order[worker::workers]]
            samples = itertools.chain.from_iterable(reader.iter_shard(s) for s in mine)
        else:
            samples = self._resampled(reader, shards, seed)
        return buffer_shuffle(readahead(samples, c.readahead), c.cache_size if c.shuffle else 0,
                              seed)

    def _streaming(self, reader: ShardReader, budget: ErrorBudget, epoch: int, worker: int,
                   workers: int, counters: Counters | None = None) -> Iterator[dict]:
        c = self.config
        k = self.batches_per_rank(epoch)
        n_batches = None if k is None else planner.worker_batches(k, workers, worker)
        if n_batches == 0:
            return
        decoded = decode_stage(self._streaming_items(reader, epoch, worker, workers),
                               self.decoder_for(epoch), budget, self.source.name,
                               self.source.synthetic, threads=c.decode_threads,
                               counters=counters)
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


class MixedDataset(torch.utils.data.IterableDataset):
    """Batches mixing several manifest sources by ``config.weights`` (see
    :mod:`wdstream.read.mixplan`): every step's per-source counts are arithmetic, equal on
    every rank, and a mid-epoch state resumes exactly, as for one source."""

    def __init__(self, parts: dict[str, ShardDataset], config, collate, *, rank: int = 0,
                 world: int = 1):
        super().__init__()
        for name, part in parts.items():
            if not part.exact:
                raise ConfigError(f"mixed source {name!r} needs a manifest (exact mode)")
        self.parts = parts
        self.names = sorted(parts)
        self.weights = normalise_weights(self.names, config.weights or None)
        self.config = config
        self.collate = collate
        self.rank, self.world = rank, world
        self.slots_per_rank = max(1, config.num_workers)
        self._epoch = SharedEpoch()
        self.read_stats = ReadStats(self.slots_per_rank)
        self.resume: ResumeInfo | None = None

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    @property
    def exact(self) -> bool:
        return True

    def layout(self) -> Layout:
        c = self.config
        return Layout(world=self.world, workers=self.slots_per_rank, batch_size=c.batch_size,
                      cache_size=c.cache_size if c.shuffle else 0, drop_last=True)

    def history(self, epoch: int) -> list[tuple[Layout, int]]:
        if self.resume is not None and self.resume.epoch == epoch:
            return list(self.resume.history)
        return []

    def epoch_samples(self) -> int | None:
        """Samples of a resampled epoch (``epoch_length``, else the sources' total)."""
        if self.config.mix_exhausted != "resample":
            return None
        return int(self.config.epoch_length or sum(p.source.samples or 0
                                                   for p in self.parts.values()))

    def plan(self, epoch: int) -> tuple[MixPlan, dict[str, Pool]]:
        """This generation's per-step counts and each source's pool: O(shards + batches)."""
        c = self.config
        cap = c.max_samples_per_dataset
        return mixed_epoch({n: self.parts[n].source.sizes for n in self.names},
                           self.weights, seed=c.seed, epoch=epoch, layout=self.layout(),
                           mode=c.mix_exhausted, shuffle=c.shuffle,
                           history=self.history(epoch), samples=self.epoch_samples(),
                           caps=None if cap is None else dict.fromkeys(self.names, int(cap)))

    def batches_per_rank(self, epoch: int | None = None) -> int:
        return self.plan(self.epoch if epoch is None else epoch)[0].batches

    def __iter__(self) -> Iterator[dict]:
        worker = World.detect(self.rank, self.world).worker
        c = self.config
        budget = ErrorBudget(c.error_tolerance, what="bad samples/shards")
        reader = make_reader(c, budget)
        epoch = self.epoch
        counters = Counters()
        mix, pools = self.plan(epoch)
        steps = range(worker, mix.batches, self.slots_per_rank)
        if not steps:
            return
        streams = []
        for name in mix.names:
            part = self.parts[name]
            slot = pools[name].slot(mix.split(name), self.rank, worker)
            streams.append(decode_stage(part.slot_items(reader, slot, counters),
                                        part.decoder_for(epoch), budget, name,
                                        part.source.synthetic, force_source=True,
                                        threads=c.decode_threads, counters=counters))

        def items() -> Iterator:
            for step in steps:
                for s in mix.batch_sources(step).tolist():
                    yield next(streams[s])

        first = self.parts[self.names[0]]
        yield from tracked(exact_batches(items(), c.batch_size, len(steps), self.collate,
                                         borrow=lambda: first._borrow(reader, budget, epoch)),
                           self.read_stats, worker, counters, c.batch_size, c.stats_log_every,
                           f"epoch {epoch}, rank {self.rank} (mixed)")
