"""The datasets inside each DataLoader worker: a plan, then stages, then batches.

exact mode (a manifest):   plan -> read spans -> shuffle buffer -> decode -> exact batches
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError, ErrorBudget, SourceError, redact
from . import plan
from .mix import mix, normalise_weights
from .shards import LocalCache, ShardReader, ShardRef
from .shuffle import buffer_shuffle, derive_seed, shard_order
from .stages import Bad, decode_stage, exact_batches, plain_batches, readahead
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


@dataclass
class ShardSource:
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
    history: list[tuple[plan.Layout, int]] = field(default_factory=list)




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

    def layout(self) -> plan.Layout:
        c = self.config
        return plan.Layout(world=self.world, workers=self.slots_per_rank,
                            batch_size=c.batch_size, cache_size=c.cache_size if c.shuffle else 0,
                            drop_last=c.drop_last)

    def history(self, epoch: int) -> list[tuple[plan.Layout, int]]:
        if self.resume is not None and self.resume.epoch == epoch:
            return list(self.resume.history)
        return []

    def pool(self, epoch: int) -> np.ndarray:
        c = self.config
        return plan.epoch_pool(self.source.sizes, seed=c.seed, epoch=epoch, shuffle=c.shuffle,
                                history=self.history(epoch))

    def epoch_samples(self) -> int | None:
        if self.config.epoch_length is not None:
            return int(self.config.epoch_length)
        return self.source.samples

    def batches_per_rank(self, epoch: int | None = None) -> int | None:
        """Batches each rank yields in ``epoch`` (None: unknown, a single natural pass)."""
        epoch = self.epoch if epoch is None else epoch
        if self.exact:
            return plan.batches_per_rank(len(self.pool(epoch)), self.layout())
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
        if self.exact:
            stream = self._exact(reader, budget, epoch, world.worker)
        else:
            stream = self._streaming(reader, budget, epoch, world.worker, world.workers)
        yield from stream
        if budget.total or budget.placeholders:
            log.warning("epoch %d, rank %d worker %d: skipped %s; %d samples not delivered",
                        epoch, self.rank, world.worker, dict(budget.counts), budget.placeholders)

    def decoded(self, world: World, epoch: int, budget: ErrorBudget) -> Iterator:
        """This slot's decoded samples in emission order, :class:`Bad` markers included: the
        stages before batching (used one sample at a time by MultimodalDataset)."""
        reader = make_reader(self.config, budget)
        if self.exact:
            pool = self.pool(epoch)
            items = self.slot_items(reader, pool, epoch, len(self.history(epoch)), world.worker)
        else:
            items = self._streaming_items(reader, epoch, world.worker, world.workers)
        return decode_stage(items, self.decoder_for(epoch), budget, self.source.name,
                            self.source.synthetic)

    def _exact(self, reader: ShardReader, budget: ErrorBudget, epoch: int,
               worker: int) -> Iterator[dict]:
        c = self.config
        layout = self.layout()
        history = self.history(epoch)
        pool = self.pool(epoch)
        k = plan.batches_per_rank(len(pool), layout)
        n_batches = plan.worker_batches(k, layout.workers, worker)
        if n_batches == 0:
            return
        shuffled = self.slot_items(reader, pool, epoch, len(history), worker)
        decoded = decode_stage(shuffled, self.decoder_for(epoch), budget, self.source.name,
                               self.source.synthetic)
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

    def slot_items(self, reader: ShardReader, pool: np.ndarray, epoch: int, generation: int,
                   worker: int, rank: int | None = None) -> Iterator[dict]:
        """Raw items of one slot in emission order: its span read, then buffer-shuffled."""
        layout = self.layout()
        rank = self.rank if rank is None else rank
        span = plan.slot_span(pool, layout, rank, worker)
        items = readahead(self._read_span(reader, span, plan.shard_starts(self.source.sizes)),
                          self.config.readahead)
        seed = plan.slot_seed(self.config.seed, epoch, generation, rank, worker)
        return buffer_shuffle(items, layout.cache_size, seed)

    def _read_span(self, reader: ShardReader, span: np.ndarray,
                   starts: np.ndarray) -> Iterator[dict]:
        for shard, first, stop, wanted in plan.positions_to_runs(span, starts, max_gap=64):
            yield from reader.read_run(self.source.shards[shard], first, stop, wanted)

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
                   workers: int) -> Iterator[dict]:
        c = self.config
        k = self.batches_per_rank(epoch)
        n_batches = None if k is None else plan.worker_batches(k, workers, worker)
        if n_batches == 0:
            return
        decoded = decode_stage(self._streaming_items(reader, epoch, worker, workers),
                               self.decoder_for(epoch), budget, self.source.name,
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


class MixedDataset(torch.utils.data.IterableDataset):
    """Batches mixing several manifest sources by ``config.weights``."""

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
        self.resume = None

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)
        for p in self.parts.values():
            p.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    @property
    def exact(self) -> bool:
        return False

    def _slot_cap(self) -> int | None:
        cap = self.config.max_samples_per_dataset
        return None if cap is None else cap // (self.world * self.slots_per_rank)

    def _mix_seed(self, epoch: int, rank: int, worker: int) -> int:
        return derive_seed(self.config.seed, epoch, rank, worker, "mix")

    def _span_lengths(self, pool_sizes: dict[str, int], worker: int) -> dict[str, int]:
        """Samples worker ``worker`` of any rank reads from each source (the plan's arithmetic:
        equal for every rank)."""
        out = {}
        for name, part in self.parts.items():
            layout = part.layout()
            k = plan.batches_per_rank(pool_sizes[name], layout)
            out[name] = plan.worker_batches(k, layout.workers, worker) * layout.batch_size
        return out

    def _mixed_count(self, pool_sizes: dict[str, int], epoch: int, rank: int,
                     worker: int) -> int:
        """Items slot ``(rank, worker)`` yields in ``stop`` mode: the mix run on lengths only."""
        lengths = self._span_lengths(pool_sizes, worker)
        cap = self._slot_cap()
        streams = {n: iter(range(lengths[n])) for n in self.names}
        return sum(1 for _ in mix(streams, self.weights, seed=self._mix_seed(epoch, rank, worker),
                                  exhausted="stop", caps={n: cap for n in self.names}))

    def batches_per_rank(self, epoch: int | None = None) -> int:
        epoch = self.epoch if epoch is None else epoch
        c = self.config
        w_slots = self.slots_per_rank
        if c.mix_exhausted == "resample":
            total = c.epoch_length or sum(p.source.samples or 0 for p in self.parts.values())
            return total // (self.world * c.batch_size)
        pool_sizes = {name: len(part.pool(epoch)) for name, part in self.parts.items()}
        best = None
        for rank in range(self.world):
            for worker in range(w_slots):
                full = self._mixed_count(pool_sizes, epoch, rank, worker) // c.batch_size
                # largest k with worker_batches(k, W, worker) <= full
                k = full * w_slots + worker
                best = k if best is None else min(best, k)
        return max(0, best or 0)

    def __iter__(self) -> Iterator[dict]:
        worker = World.detect(self.rank, self.world).worker
        c = self.config
        epoch = self.epoch
        budget = ErrorBudget(c.error_tolerance, what="bad samples/shards")
        reader = make_reader(c, budget)
        k = self.batches_per_rank(epoch)
        n_batches = plan.worker_batches(k, self.slots_per_rank, worker)
        if n_batches == 0:
            return

        def stream(name: str, pass_no: int) -> Iterator[dict]:
            part = self.parts[name]
            e = epoch if pass_no == 0 else derive_seed(epoch, pass_no, "pass") % (2**31)
            return part.slot_items(reader, part.pool(e), e, 0, worker, rank=self.rank)

        passes = dict.fromkeys(self.names, 0)

        def reopen(name: str) -> Iterator[dict]:
            passes[name] += 1
            return stream(name, passes[name])

        cap = self._slot_cap()
        decoders = {name: part.decoder_for(epoch) for name, part in self.parts.items()}
        mixed = mix({n: stream(n, 0) for n in self.names}, self.weights,
                    seed=self._mix_seed(epoch, self.rank, worker), exhausted=c.mix_exhausted,
                    reopen=reopen, caps={n: cap for n in self.names})
        decoded = itertools.chain.from_iterable(
            decode_stage([item], decoders[name], budget, name,
                         self.parts[name].source.synthetic, force_source=True)
            for name, item in mixed)
        yield from plain_batches(decoded, c.batch_size, self.collate, n_batches=n_batches,
                                 drop_last=True)
