"""Reading several sources mixed by weight, with equal batches on every rank.

Each source is planned on its own (its manifest, split by rank and worker as in exact mode);
a slot mixes its per-source streams with :func:`wdstream.mix.mix`, seeded by
``(seed, epoch, rank, worker)``. The mix's choices depend only on the seed and the span
lengths, never on the data, so every rank can compute, without I/O, how many items every slot
will produce, and all ranks stop at the same batch count: DDP never waits.

- ``mix_exhausted="stop"``: a slot's mix ends when one of its sources runs out; the epoch has
  as many batches as the slowest slot can fill.
- ``mix_exhausted="resample"``: a source that runs out starts another pass (a new shuffled
  order); the epoch is ``config.epoch_length`` samples (default: all sources' samples).
- ``max_samples_per_dataset`` caps what each source contributes to an epoch, split evenly
  over the slots.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import torch

from . import split
from .errors import ConfigError, ErrorBudget
from .mix import mix, normalise_weights
from .pipeline import ShardDataset, decode_stage, plain_batches
from .reading import ShardCache, ShardReader
from .shuffle import derive_seed

__all__ = ["MixedDataset"]

log = logging.getLogger(__name__)


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
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.resume = None

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)
        for p in self.parts.values():
            p.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

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
            k = split.batches_per_rank(pool_sizes[name], layout)
            out[name] = split.worker_batches(k, layout.workers, worker) * layout.batch_size
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
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        c = self.config
        epoch = self.epoch
        budget = ErrorBudget(c.error_tolerance, what="bad samples/shards")
        cache = ShardCache(c.shard_cache_dir, c.shard_cache_bytes) if c.shard_cache_dir else None
        reader = ShardReader(c.storage_options, block_size=c.read_block_size, budget=budget,
                             cache=cache)
        k = self.batches_per_rank(epoch)
        n_batches = split.worker_batches(k, self.slots_per_rank, worker)
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
        mixed = mix({n: stream(n, 0) for n in self.names}, self.weights,
                    seed=self._mix_seed(epoch, self.rank, worker), exhausted=c.mix_exhausted,
                    reopen=reopen, caps={n: cap for n in self.names})
        decoded = itertools.chain.from_iterable(
            decode_stage([item], self.parts[name].decoder, budget, name,
                         self.parts[name].source.synthetic, force_source=True)
            for name, item in mixed)
        yield from plain_batches(decoded, c.batch_size, self.collate, n_batches=n_batches,
                                 drop_last=True)
