"""The datasets a DataLoader iterates: what each worker reads this epoch, handed to a chain of
:mod:`wdstream.read.pipeline`.

- :class:`ShardDataset`: one source. Exact mode (a manifest) plans the worker's slot with
  :mod:`wdstream.read.planner`; streaming mode (no manifest, or ``exact=False``) with
  :func:`wdstream.read.shuffle.stream_plan`.
- :class:`MixedDataset`: several manifest sources mixed by ``config.weights``
  (:mod:`wdstream.read.mixplan`).

Both share :class:`EpochDataset`: the epoch (in shared memory, so persistent workers see
:meth:`~EpochDataset.set_epoch`), the run's layout, the resumed history, the per-worker stats.
A worker yields whole collated batches (decode, tokenization and collation run in workers).
Every rank yields the same number of batches: in exact mode that number comes from the plan,
in streaming mode from the nominal epoch length, when mixing from the mix's arithmetic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError, ErrorBudget
from . import pipeline, planner
from .fetch import ReadOptions, ShardReader
from .mixplan import MixPlan, mixed_epoch, normalise_weights
from .planner import Layout, Pool, SlotPlan
from .shuffle import stream_plan
from .sources import ShardSource
from .state import fingerprint
from .stats import Counters, ReadStats, tracked
from .transform import with_transform
from .world import SharedEpoch, World

__all__ = ["ResumeInfo", "EpochDataset", "ShardDataset", "MixedDataset", "read_plan"]

log = logging.getLogger(__name__)


def read_plan(
    source: ShardSource, config, *, epoch: int, layout: Layout, rank: int, worker: int, history=()
) -> pipeline.Plan:
    """What slot ``(rank, worker)`` of ``layout`` reads of ``source`` this epoch: a slot plan
    (exact mode: a manifest and ``config.exact``), else a stream plan (shards drawn at random
    when the epoch has a nominal length, one pass over the worker's shards when not)."""
    if source.has_manifest and config.exact:
        pool = planner.epoch_plan(
            source.sizes,
            seed=config.seed,
            epoch=epoch,
            shuffle=config.shuffle,
            history=history,
            layout=layout,
            sample_bytes=source.sample_bytes,
        )
        return pool.slot(layout, rank, worker)
    endless = config.epoch_length is not None or source.has_manifest
    return stream_plan(
        len(source.shards),
        seed=config.seed,
        epoch=epoch,
        rank=rank,
        worker=worker,
        workers=layout.workers,
        shuffle=config.shuffle,
        cache_size=config.cache_size,
        endless=endless,
    )


@dataclass
class ResumeInfo:
    """Where a resumed epoch starts: the runs of that epoch so far, as (layout, batches)."""

    epoch: int
    history: list[tuple[Layout, int]] = field(default_factory=list)


class EpochDataset(torch.utils.data.IterableDataset):
    """What both datasets share: sources, config, decoder, collate, rank and world, the epoch
    in shared memory, the layout of this run, the history of a resumed epoch, and the stats
    table. Subclasses say how many batches a rank yields and what a worker yields."""

    def __init__(
        self,
        sources: Mapping[str, ShardSource],
        config,
        decoder: Callable,
        collate: Callable,
        *,
        rank: int = 0,
        world: int = 1,
        transform: Callable | None = None,
    ):
        super().__init__()
        self.sources = dict(sources)
        self.config = config
        self.decoder, self.collate, self.transform = decoder, collate, transform
        self.rank, self.world = rank, world
        self.slots_per_rank = max(1, config.num_workers)
        self.resume: ResumeInfo | None = None
        self._fingerprint: str | dict[str, str] | None = None
        self._epoch = SharedEpoch()
        self.read_stats = ReadStats(self.slots_per_rank)

    # -- what the loader asks ------------------------------------------------------------
    exact: bool = True

    @property
    def synthetic(self) -> bool:
        """True when any source is synthetic (fallback or ``use_streaming=False``)."""
        return any(s.synthetic for s in self.sources.values())

    def identity(self) -> dict[str, Any]:  # pragma: no cover - overridden
        """What a saved state must agree on to resume here (besides seed and shuffle)."""
        raise NotImplementedError

    def fingerprint(self) -> str | dict[str, str]:
        """The fingerprint of the data (:func:`~wdstream.read.state.fingerprint`; per source
        when mixing), computed once."""
        if self._fingerprint is None:
            self._fingerprint = {n: fingerprint(s) for n, s in sorted(self.sources.items())}
        return self._fingerprint

    def batches_per_rank(self, epoch: int | None = None) -> int | None:  # pragma: no cover
        raise NotImplementedError

    # -- epoch bookkeeping ---------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def layout(self) -> Layout:
        c = self.config
        return Layout(
            world=self.world,
            workers=self.slots_per_rank,
            batch_size=c.batch_size,
            cache_size=c.cache_size,
            drop_last=self._drop_last(),
            lanes=int(c.shuffle_lanes),
        )

    def _drop_last(self) -> bool:
        return bool(self.config.drop_last)

    def history(self, epoch: int) -> list[tuple[Layout, int]]:
        if self.resume is not None and self.resume.epoch == epoch:
            return list(self.resume.history)
        return []

    # -- worker side ---------------------------------------------------------------------
    def decode_for(self, name: str, epoch: int) -> Callable[[dict], dict]:
        """The decode stage's function for source ``name``: the decoder, then the transform."""
        return with_transform(
            self.decoder, self.transform, seed=self.config.seed, epoch=epoch, source=name
        )

    def _worker(self) -> World:
        world = World.detect(self.rank, self.world)
        if world.workers != self.slots_per_rank:
            raise ConfigError(
                f"dataset planned for {self.slots_per_rank} workers per rank but "
                f"runs under {world.workers}; build it with the loader's "
                f"num_workers"
            )
        return world

    def __iter__(self) -> Iterator[dict]:
        world = self._worker()
        c = self.config
        budget = ErrorBudget(c.error_tolerance, what="bad samples/shards")
        reader = ShardReader(ReadOptions.from_config(c))
        counters = Counters(budget)
        epoch = self.epoch
        batches = self._batches(reader, budget, counters, epoch, world)
        yield from tracked(
            batches,
            self.read_stats,
            world.worker,
            counters,
            c.batch_size,
            c.stats_log_every,
            f"epoch {epoch}, rank {self.rank}",
        )
        if budget.total or budget.placeholders:
            log.warning(
                "epoch %d, rank %d worker %d: skipped %s; %d samples not delivered",
                epoch,
                self.rank,
                world.worker,
                dict(budget.counts),
                budget.placeholders,
            )

    def _batches(
        self, reader: ShardReader, budget: ErrorBudget, counters: Counters, epoch: int, world: World
    ) -> Iterator[dict]:  # pragma: no cover - overridden
        raise NotImplementedError


class ShardDataset(EpochDataset):
    """Collated batches of one source for this process's rank and DataLoader worker."""

    def __init__(
        self,
        source: ShardSource,
        config,
        decoder: Callable,
        collate: Callable,
        *,
        rank: int = 0,
        world: int = 1,
        transform: Callable | None = None,
    ):
        super().__init__(
            {source.name: source},
            config,
            decoder,
            collate,
            rank=rank,
            world=world,
            transform=transform,
        )
        self.source = source
        self.exact = bool(source.has_manifest and config.exact)
        if not self.exact and world > 1 and self.epoch_samples() is None:
            raise ConfigError(
                f"{world} ranks read {source.name!r} without a manifest: set config.epoch_length "
                f"(samples per epoch) so every rank yields the same number of batches"
            )

    def identity(self) -> dict[str, Any]:
        return {"samples": self.source.samples, "shards": len(self.source.shards)}

    def fingerprint(self) -> str:
        return super().fingerprint()[self.source.name]

    def pool(self, epoch: int) -> Pool:
        """What is left of ``epoch`` after the resumed history: O(shards + old slots)."""
        c = self.config
        return planner.epoch_plan(
            self.source.sizes,
            seed=c.seed,
            epoch=epoch,
            shuffle=c.shuffle,
            history=self.history(epoch),
            layout=self.layout(),
            sample_bytes=self.source.sample_bytes,
        )

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

    def slot_plan(self, epoch: int, worker: int, rank: int | None = None) -> SlotPlan:
        """What slot ``(rank, worker)`` reads this epoch: O(shards + old slots + cache)."""
        rank = self.rank if rank is None else rank
        return self.pool(epoch).slot(self.layout(), rank, worker)

    def _batches(self, reader, budget, counters, epoch, world) -> Iterator[dict]:
        c = self.config
        decode = self.decode_for(self.source.name, epoch)
        plan = read_plan(
            self.source,
            c,
            epoch=epoch,
            layout=self.layout(),
            rank=self.rank,
            worker=world.worker,
            history=self.history(epoch),
        )
        if self.exact:
            return pipeline.exact(
                plan,
                self.source,
                reader,
                decode,
                budget,
                collate=self.collate,
                batch_size=c.batch_size,
                threads=c.decode_threads,
                counters=counters,
            )
        k = self.batches_per_rank(epoch)
        return pipeline.streaming(
            plan,
            self.source,
            reader,
            decode,
            budget,
            collate=self.collate,
            batch_size=c.batch_size,
            n_batches=None if k is None else planner.worker_batches(k, world.workers, world.worker),
            drop_last=c.drop_last,
            threads=c.decode_threads,
            counters=counters,
        )


class MixedDataset(EpochDataset):
    """Batches mixing several manifest sources by ``config.weights`` (see
    :mod:`wdstream.read.mixplan`): every step's per-source counts are arithmetic, equal on
    every rank, and a mid-epoch state resumes exactly, as for one source."""

    def __init__(
        self,
        sources: Mapping[str, ShardSource],
        config,
        decoder: Callable,
        collate: Callable,
        *,
        rank: int = 0,
        world: int = 1,
        transform: Callable | None = None,
    ):
        super().__init__(
            sources, config, decoder, collate, rank=rank, world=world, transform=transform
        )
        for name, source in self.sources.items():
            if not (source.has_manifest and config.exact):
                raise ConfigError(f"mixed source {name!r} needs a manifest (exact mode)")
        self.names = sorted(self.sources)
        self.weights = normalise_weights(self.names, config.weights or None)

    def _drop_last(self) -> bool:
        return True  # a mixed batch is always full

    def identity(self) -> dict[str, Any]:
        c = self.config
        out: dict[str, Any] = {
            "sources": {n: [s.samples, len(s.shards)] for n, s in sorted(self.sources.items())},
            "mix_exhausted": c.mix_exhausted,
            "max_samples_per_dataset": c.max_samples_per_dataset,
            "weights": dict(sorted((c.weights or {}).items())),
        }
        if c.mix_exhausted == "resample":
            out["epoch_length"] = self.epoch_samples()
        return out

    def epoch_samples(self) -> int | None:
        """Samples of a resampled epoch (``epoch_length``, else the sources' total)."""
        if self.config.mix_exhausted != "resample":
            return None
        return int(self.config.epoch_length or sum(s.samples or 0 for s in self.sources.values()))

    def plan(self, epoch: int) -> tuple[MixPlan, dict[str, Pool]]:
        """This generation's per-step counts and each source's pool: O(shards + batches)."""
        c = self.config
        cap = c.max_samples_per_dataset
        return mixed_epoch(
            {n: self.sources[n].sizes for n in self.names},
            self.weights,
            seed=c.seed,
            epoch=epoch,
            layout=self.layout(),
            mode=c.mix_exhausted,
            shuffle=c.shuffle,
            history=self.history(epoch),
            samples=self.epoch_samples(),
            caps=None if cap is None else dict.fromkeys(self.names, int(cap)),
            sample_bytes={n: self.sources[n].sample_bytes for n in self.names},
        )

    def batches_per_rank(self, epoch: int | None = None) -> int:
        return self.plan(self.epoch if epoch is None else epoch)[0].batches

    def _batches(self, reader, budget, counters, epoch, world) -> Iterator[dict]:
        c = self.config
        mix, pools = self.plan(epoch)
        slots = {n: pools[n].slot(mix.split(n), self.rank, world.worker) for n in mix.names}
        decoders = {n: self.decode_for(n, epoch) for n in mix.names}
        steps = range(world.worker, mix.batches, self.slots_per_rank)
        return pipeline.mixed(
            mix,
            steps,
            slots,
            self.sources,
            reader,
            decoders,
            budget,
            collate=self.collate,
            batch_size=c.batch_size,
            threads=c.decode_threads,
            counters=counters,
        )
