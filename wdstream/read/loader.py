"""make_loader: the read pipeline's recipe, wrapped in a WebLoader with epochs and state.

``make_loader(source, config)`` resolves the source (a manifest, a brace pattern, a list of
shard URLs, or a dict of named sources to mix), checks it can be reached before training
starts (or falls back to synthetic shards, loudly, when ``config.fallback == "synthetic"``),
and returns a :class:`Loader`: an iterable of collated batches with ``set_epoch``,
``state_dict``/``load_state_dict`` and ``close``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import webdataset as wds

from ..config import Config
from ..errors import ConfigError, WdstreamError
from .collate import collate
from .datasets import EpochDataset, MixedDataset, ResumeInfo, ShardDataset
from .decode import SampleDecoder, preload_codecs
from .planner import Layout
from .sources import resolve_sources
from .state import STATE_VERSION, parse_state
from .world import World

__all__ = ["make_loader", "Loader", "STATE_VERSION"]

log = logging.getLogger(__name__)


def make_loader(
    source: Any,
    config: Config | None = None,
    tokenizer=None,
    *,
    rank: int | None = None,
    world: int | None = None,
    transform: Callable | None = None,
) -> Loader:
    """Build the loader for ``source`` (see module doc). Checks the tokenizer against
    ``config.vocab_size`` and the source's reachability before returning.

    ``transform(sample, generator)``: a per-sample function (augmentations) that runs in the
    DataLoader workers after decoding and before collation. ``sample`` is the decoded dict
    (``key``, ``input_ids``, ``pixel_values``, ``audio``, ...); return it (or None after
    changing it in place). Draw every random number from ``generator``, a ``torch.Generator``
    seeded by ``(config.seed, epoch, source name, sample key)``
    (:func:`wdstream.read.transform.transform_seed`): the same seed gives the same augmented
    batches, in any number of workers or ranks and after a resume; another epoch gives other
    ones. It must pickle (a module-level function, or a ``functools.partial`` of one).

    Raises ConfigError for a rank outside the world, a tokenizer that does not fit
    ``vocab_size`` or an empty dict of sources; SourceError/StorageError when a source cannot
    be read (unless ``config.fallback`` is ``"synthetic"``)."""
    config = config or Config()
    r, w = World.ranks()
    rank = r if rank is None else rank
    world = w if world is None else world
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is outside world size {world}")
    # the sources first: a store that cannot be reached fails within seconds, before the
    # tokenizer is loaded (seconds more on a cold start)
    sources = resolve_sources(source, config)
    decoder = SampleDecoder(config, tokenizer)
    collate_fn = functools.partial(collate, config=config, pad_token_id=decoder.pad_token_id)
    if not isinstance(source, dict):
        (spec,) = sources.values()
        dataset: EpochDataset = ShardDataset(
            spec, config, decoder, collate_fn, rank=rank, world=world, transform=transform
        )
    else:
        dataset = MixedDataset(
            sources, config, decoder, collate_fn, rank=rank, world=world, transform=transform
        )
    return Loader(dataset, config)


def _stop_workers(it) -> None:
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()


def _shutdown(dl_holder: dict) -> None:
    # close the epochs' generators first, while the interpreter is whole: one left open
    # (a loop broken out of, its iterator kept) ran its cleanup at exit, when the modules
    # it needs are already gone, and printed "Exception ignored" tracebacks
    for gen in list(dl_holder.pop("epochs", ())):
        with contextlib.suppress(ValueError):  # closed from inside its own loop: it ends there
            gen.close()
    _stop_workers(dl_holder.get("iterator"))
    dl_holder.clear()


class Loader:
    """An iterable of batches over one epoch at a time, on top of a WebLoader.

    ``len(loader)`` is the number of batches every rank yields this epoch. ``state_dict()``
    after any number of batches is a small JSON-serialisable dict; a new loader given it with
    ``load_state_dict()`` yields exactly the rest of that epoch (see docs/reader.md,
    "Guarantees"), also with another world size or worker count.
    """

    def __init__(self, dataset: EpochDataset, config: Config):
        self.dataset = dataset
        self.config = config
        self._epoch = 0
        self._batches = 0  # batches yielded in the current epoch by this run
        self._dl = None
        self._holder: dict = {}
        self._finalizer = weakref.finalize(self, _shutdown, self._holder)

    # -- DataLoader --------------------------------------------------------------------
    def _make_dl(self):
        c = self.config
        pin = c.pin_memory == "true" or (c.pin_memory == "auto" and torch.cuda.is_available())
        kwargs: dict[str, Any] = {
            "batch_size": None,
            "num_workers": c.num_workers,
            "pin_memory": pin,
        }
        if c.num_workers > 0:
            preload_codecs()  # forked workers inherit them
            kwargs.update(
                persistent_workers=c.persistent_workers, prefetch_factor=c.prefetch_factor
            )
        return wds.WebLoader(self.dataset, **kwargs)

    def close(self) -> None:
        """Stop the worker processes now (also done when the loader is garbage-collected)."""
        _shutdown(self._holder)
        self._dl = None

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- epochs ------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next iteration reads (its order depends on it)."""
        self._epoch = int(epoch)
        self._batches = 0

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def synthetic(self) -> bool:
        """True when the data is synthetic (fallback or ``use_streaming=False``)."""
        return self.dataset.synthetic

    def __len__(self) -> int:
        n = self.dataset.batches_per_rank(self._epoch)
        if n is None:
            raise TypeError("the epoch length is unknown (no manifest, no config.epoch_length)")
        return n

    def __iter__(self) -> Iterator[dict]:
        gen = self._epoch_batches()
        self._holder.setdefault("epochs", weakref.WeakSet()).add(gen)
        return gen

    def _epoch_batches(self) -> Iterator[dict]:
        if self._dl is None:
            self._dl = self._make_dl()
        self.dataset.set_epoch(self._epoch)
        self._batches = 0
        it = iter(self._dl)
        self._holder["iterator"] = it
        try:
            for batch in it:
                self._batches += 1
                yield batch
        finally:  # its own workers only: a newer epoch's may already be starting
            if not (self.config.num_workers > 0 and self.config.persistent_workers):
                _stop_workers(it)
                if self._holder.get("iterator") is it:
                    del self._holder["iterator"]

    def stats(self) -> list[dict[str, Any]]:
        """Where this rank's read time goes in the current epoch, one dict per DataLoader
        worker (one row with 0 workers): ``samples``, ``batches``, ``elapsed_s``,
        ``samples_per_s``, ``io_wait_s`` (waiting for fetched spans and indexes),
        ``decode_s`` (decoding, summed over decode threads), ``blocked_s`` (a batch ready,
        waiting for the consumer), ``get_requests`` and ``bytes_read`` (ranged GETs the
        reader made and their bytes), ``skipped`` (samples and shards skipped, by reason) and
        ``placeholders`` (planned samples not delivered). Updated by the workers after every
        batch (see docs/reader.md, "Tuning")."""
        return self.dataset.read_stats.rows()

    # -- state -------------------------------------------------------------------------
    def _history(self) -> list[tuple[Layout, int]]:
        return self.dataset.history(self._epoch)

    def _identity(self) -> dict[str, Any]:
        """What a state must agree on to resume here: seed, shuffle and the data."""
        return {"seed": self.config.seed, "shuffle": self.config.shuffle, **self.dataset.identity()}

    def state_dict(self) -> dict[str, Any]:
        """Progress through the current epoch: JSON-serialisable, a few hundred bytes (one
        short entry per resume of the epoch)."""
        ds = self.dataset
        if not ds.exact:
            raise WdstreamError(
                "mid-epoch state needs exact mode: manifest sources and "
                "config.exact=True (shard-list sources restart their epoch)"
            )
        runs = [{**layout.to_dict(), "batches": k} for layout, k in self._history()]
        runs.append({**ds.layout().to_dict(), "batches": self._batches})
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            **self._identity(),
            "fingerprint": ds.fingerprint(),
            "runs": runs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration yields exactly what the saved run had not delivered of
        its epoch, laid out for this loader's world size and workers (format and checks:
        :mod:`wdstream.read.state`).

        Raises ConfigError for a state of another version, dataset, seed or mix, and for one
        that is malformed or does not fit the data (a field out of range, more batches than
        the epoch has)."""
        ds = self.dataset
        epoch, history = parse_state(state, self._identity(), ds.fingerprint())
        old = ds.resume
        ds.resume = ResumeInfo(epoch=epoch, history=history)
        try:
            ds.batches_per_rank(epoch)  # plans the history once: a run that does not fit
        except ValueError as exc:  # this data raises here, not in a worker
            ds.resume = old
            raise ConfigError(
                f"loader state does not fit this data: {exc}; resume with the "
                f"manifest it was saved on",
                key="runs",
            ) from exc
        self.close()
        self._epoch = epoch
        self._batches = 0
