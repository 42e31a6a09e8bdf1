"""``MultimodalDataset``: the training code's dataset class, now backed by wdstream.

The old call sites keep working::

    ds = MultimodalDataset(config=config, tokenizer=tokenizer, split="train",
                           dataset_name="open_platypus", use_streaming=True, cache_size=1000)
    ds = MultimodalDataset(config=config, tokenizer=tokenizer, dataset_name="all",
                           task_type="code", cache_size=2000)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=ds.collate_fn)

It is a ``torch.utils.data.IterableDataset`` of decoded samples (the reader's
:class:`wdstream.read.decode.SampleDecoder` output); ``ds.collate_fn`` (the reader's
:func:`wdstream.read.collate.collate`) batches them. Where the samples come from:

- ``use_streaming=True`` with shards (``shards=`` or ``config.shards``): the shard reader
  (manifest, brace pattern or shard URLs), split over ranks and DataLoader workers;
- ``use_streaming=True`` without shards: the registry datasets picked by ``dataset_name`` /
  ``task_type`` are streamed straight from Hugging Face (no conversion), mapped by their
  registry entry, and decoded by the same decoder; several are mixed by ``config.weights``;
- when that source cannot be reached: synthetic data, with one WARNING and
  ``synthetic=True`` in every sample;
- ``use_streaming=False``: synthetic data.

It has no pipeline of its own: the reader's :mod:`wdstream.read.pipeline` builds both of its
chains. Shards are planned as the loader plans them, at batch size 1, and read, shuffled and
decoded by :func:`wdstream.read.pipeline.samples` (read ahead by the reader's fetch threads).
Hugging Face rows are encoded into samples by :class:`~wdstream.rows.encode.RowEncoder` with
the entry's template and run through :func:`wdstream.read.pipeline.hub_samples`: mix, shuffle
buffer, decode, and one background thread per iterator that reads and decodes ahead (at most
``config.prefetch_factor * config.batch_size`` samples). Every thread stops at the end of the
iteration, when the iterator is dropped, on :meth:`close` and when the dataset is
garbage-collected. ``cache_size`` bounds the shuffle window (or buffer), in samples.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from datasets.distributed import split_dataset_by_node

from .config import Config, config_fields
from .errors import ConfigError, ErrorBudget, SampleError, SourceError, StorageError, redact
from .read import pipeline
from .read.collate import collate
from .read.datasets import read_plan
from .read.decode import SampleDecoder
from .read.fetch import ReadOptions, ShardReader
from .read.planner import Layout
from .read.seeds import derive_seed
from .read.sources import ShardSource, resolve_source, synthetic_source
from .read.world import SharedEpoch, World
from .registry import Entry, select_datasets
from .rows.columns import ColumnMap, iter_rows, prepare
from .rows.encode import RowEncoder
from .rows.paths import source_roots
from .rows.source import HFSource, open_source

__all__ = ["MultimodalDataset", "PREFETCH_THREAD_NAME"]

log = logging.getLogger(__name__)
PREFETCH_THREAD_NAME = "wdstream-prefetch"
_DEFAULT_TASK_TYPE = "text"


def _as_config(config: Any) -> Config:
    """A :class:`Config` from a Config, a dict, or any object with the flat attributes the
    training code used (``vocab_size``, ``vision_dim``, ``max_audio_length``...)."""
    if isinstance(config, Config):
        return config
    if config is None:
        return Config()
    if isinstance(config, Mapping):
        values = dict(config)
    else:
        values = (
            {k: v for k, v in vars(config).items() if not k.startswith("_")}
            if hasattr(config, "__dict__")
            else {}
        )
    known = set(config_fields())
    return Config(**{k: v for k, v in values.items() if k in known})


# --------------------------------------------------------------------------- sources
# Module-level functions with explicit arguments (not methods): the background thread and the
# DataLoader workers hold these, never the dataset itself, so dropping the dataset frees it.


def _shard_samples(
    source: ShardSource, config: Config, decoder, world: World, epoch: int
) -> Iterator[dict]:
    """Decoded samples of a shard source for this rank and worker: the reader's plan at batch
    size 1, through the reader's sample chain."""
    if (
        not (source.has_manifest and config.exact)
        and world.world > 1
        and config.epoch_length is None
    ):
        raise ConfigError(
            f"{world.world} ranks read {source.name!r} without a manifest: set "
            f"config.epoch_length (samples per epoch) so every rank reads as many samples"
        )
    layout = Layout(
        world=world.world,
        workers=world.workers,
        batch_size=1,
        cache_size=config.cache_size,
        drop_last=config.drop_last,
        lanes=int(config.shuffle_lanes),
    )
    plan = read_plan(
        source, config, epoch=epoch, layout=layout, rank=world.rank, worker=world.worker
    )
    budget = ErrorBudget(config.error_tolerance, what="bad samples/shards")
    return pipeline.samples(
        plan,
        source,
        ShardReader(ReadOptions.from_config(config)),
        decoder,
        budget,
        threads=config.decode_threads,
    )


def _entry_members(
    entry: Entry,
    ds,
    world: World,
    budget: ErrorBudget,
    pass_no: int = 0,
    allow_paths: tuple[str, ...] = (),
) -> Iterator[dict]:
    """One pass over an opened Hugging Face stream, as WebDataset-style member dicts: the
    converter's row encoder, with the entry's text template; a media path is read only in the
    entry's own repository or folder and ``allow_paths``, as the converter does."""
    columns = ColumnMap(
        image=entry.image_column,
        audio=entry.audio_column,
        text=entry.template_columns,
        template=entry.text_template or None,
    )
    ds = prepare(ds, columns)
    if world.slots > 1:
        ds = split_dataset_by_node(ds, rank=world.slot, world_size=world.slots)
    roots = source_roots(HFSource(entry.hub_id, name=entry.config), allow=allow_paths)
    encoder = RowEncoder(columns, entry.name, verify=False, paths=roots)
    for i, row in enumerate(iter_rows(ds, columns)):
        key = f"{entry.name}_{world.slot:04d}_{pass_no:04d}_{i:09d}"
        try:
            fields = encoder(row, key)
        except SampleError as exc:
            budget.record(exc.reason, f"{entry.name} key {key}", exc)
            continue
        if not fields.get("txt"):
            fields.pop("txt", None)
        yield {
            "__key__": key,
            "__url__": f"hf://{entry.hub_id}",
            "__source__": entry.name,
            **fields,
        }


def _hub_samples(
    entries: list[Entry], streams: dict[str, Any], config: Config, decoder, world: World, epoch: int
) -> Iterator[dict]:
    """Decoded samples streamed from Hugging Face: one entry, or several mixed by weight,
    through the reader's Hub chain (mix -> shuffle buffer -> decode -> read ahead)."""
    budget = ErrorBudget(config.error_tolerance, what="bad rows/samples")
    by_name = {e.name: e for e in entries}
    cap = config.max_samples_per_dataset

    def members(name: str, pass_no: int) -> Iterator[dict]:
        return _entry_members(
            by_name[name], streams[name], world, budget, pass_no, config.allow_paths
        )

    return pipeline.hub_samples(
        members,
        sorted(by_name),
        decoder,
        budget,
        weights={n: w for n, w in config.weights.items() if n in by_name} or None,
        seed=derive_seed(config.seed, epoch, world.rank, world.worker, "hub"),
        exhausted=config.mix_exhausted,
        caps=dict.fromkeys(by_name, cap) if cap is not None else None,
        shuffle=config.shuffle,
        buffer=config.cache_size,
        ahead=max(1, config.prefetch_factor * config.batch_size),
        thread_name=PREFETCH_THREAD_NAME,
    )


# --------------------------------------------------------------------------- the dataset


class MultimodalDataset(torch.utils.data.IterableDataset):
    """Decoded multimodal samples from shards, from Hugging Face, or synthetic (module doc).

    Args:
        config: a :class:`wdstream.Config`, a dict, or any object with the flat fields the
            training code used (``vocab_size``, ``vision_dim``, ``max_audio_length``...).
        tokenizer: a Hugging Face tokenizer; ``None`` loads the one ``config.tokenizer`` names.
        split: ``"train"`` reads each registry entry's own split (its training split; a
            test-only set such as ``humaneval`` reads ``test``); any other value is used as is.
        dataset_name: a registry name, a Hub id listed in the registry, or ``"all"``.
        task_type: ``text``, ``code``, ``math``, ``vision`` or ``audio``; alone it picks that
            type's default set. Neither given: ``config.dataset_name``/``config.task_type``,
            else the ``text`` default set.
        use_streaming: ``False`` gives synthetic data.
        cache_size: the shuffle buffer, in samples (``config.cache_size``).
        shards: shard URLs, a brace pattern or a manifest URL/folder (else ``config.shards``
            when the config has that attribute).
        registry: a registry mapping to select from (default: ``configs/datasets.yaml``).

    Raises ConfigError for an unknown dataset name or task type (listing the valid ones) and
    for a tokenizer that does not fit ``config.vocab_size``. Unreachable sources do not raise:
    they fall back to synthetic data with one WARNING (``self.synthetic`` is then True).
    """

    def __init__(
        self,
        config: Any,
        tokenizer=None,
        split: str = "train",
        dataset_name: str | None = None,
        task_type: str | None = None,
        use_streaming: bool = True,
        cache_size: int = 1000,
        shards: Any = None,
        *,
        registry: Mapping[str, Entry] | None = None,
    ):
        super().__init__()
        shards = shards if shards is not None else getattr(config, "shards", None)
        cfg = _as_config(config)
        self.config = cfg.replace(cache_size=int(cache_size), use_streaming=bool(use_streaming))
        self.split = split
        self.decoder = SampleDecoder(self.config, tokenizer)
        self.tokenizer = self.decoder.tokenizer
        self.collate_fn = functools.partial(
            collate, config=self.config, pad_token_id=self.decoder.pad_token_id
        )
        self.rank, self.world = World.ranks()
        self.entries: list[Entry] = []
        self._spec: ShardSource | None = None  # shards or synthetic
        self._streams: dict[str, Any] = {}  # entry name -> datasets.IterableDataset
        self._epoch = SharedEpoch()
        self._init_runtime()

        if not self.config.use_streaming:
            log.info("use_streaming=False: %d synthetic samples", self.config.synthetic_samples)
            self._use_synthetic()
            return
        if shards is not None:
            self._open_shards(shards)
            return
        name = dataset_name if dataset_name is not None else self.config.dataset_name
        ttype = task_type if task_type is not None else self.config.task_type
        if name is None and ttype is None:
            ttype = _DEFAULT_TASK_TYPE
        self.entries = select_datasets(name, ttype, registry=registry)
        if not self.entries:
            raise ConfigError(
                f"no registry dataset of task type {ttype!r}; add one to configs/datasets.yaml"
            )
        self._open_hub()

    # -- opening -----------------------------------------------------------------------
    def _init_runtime(self) -> None:
        self._iterators: weakref.WeakSet = weakref.WeakSet()
        self._finalizer = weakref.finalize(self, _close_all, self._iterators)

    def _use_synthetic(self) -> None:
        self.mode = "synthetic"
        self._spec = synthetic_source(self.config)

    def _fallback(self, what: str, exc: BaseException) -> None:
        log.warning(
            "cannot read %s (%s); MultimodalDataset falls back to %d SYNTHETIC samples: "
            "every sample has synthetic=True",
            what,
            exc,
            self.config.synthetic_samples,
        )
        self._use_synthetic()

    def _open_shards(self, shards: Any) -> None:
        try:
            self._spec = resolve_source(shards, self.config)
        except (SourceError, StorageError) as exc:
            self._fallback(redact(str(shards)), exc)
            return
        self.mode = "shards"

    def _open_hub(self) -> None:
        failed: list[str] = []
        last: BaseException | None = None
        for entry in self.entries:
            split = entry.split if self.split == "train" else self.split
            spec = HFSource(
                source=entry.hub_id, name=entry.config, split=split, revision=entry.revision
            )
            try:
                ds = open_source(spec)
            except (SourceError, StorageError, OSError) as exc:
                failed.append(entry.name)
                last = exc
                continue
            if ds.column_names is not None:
                entry.check_columns(ds.column_names)
            self._streams[entry.name] = ds
        if not self._streams:
            names = ", ".join(e.name for e in self.entries)
            self._fallback(f"the Hugging Face dataset(s) {names}", last)
            return
        if failed:
            log.warning(
                "cannot read %s (%s); streaming only %s",
                ", ".join(failed),
                last,
                ", ".join(self._streams),
            )
            self.entries = [e for e in self.entries if e.name in self._streams]
        self.mode = "hub"

    # -- state -------------------------------------------------------------------------
    @property
    def synthetic(self) -> bool:
        """True when the samples are synthetic (``use_streaming=False`` or the fallback)."""
        return self.mode == "synthetic"

    @property
    def sources(self) -> list[str]:
        """The names of the sources read: registry entries, the shard source, or synthetic."""
        if self.mode == "hub":
            return [e.name for e in self.entries]
        return [self._spec.name]

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next iteration reads (shuffling depends on it)."""
        self._epoch.set(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    # -- iteration ---------------------------------------------------------------------
    def _samples(self) -> Iterator[dict]:
        """The decoded samples of this process (its rank and DataLoader worker); closing
        the iterator stops its threads."""
        world = World.detect(self.rank, self.world)
        epoch = self.epoch
        if self.mode == "hub":
            return _hub_samples(
                list(self.entries), dict(self._streams), self.config, self.decoder, world, epoch
            )
        return _shard_samples(self._spec, self.config, self.decoder, world, epoch)

    def __iter__(self) -> Iterator[dict]:
        it = self._samples()
        self._iterators.add(it)
        return _iterate(it, self)

    def close(self) -> None:
        """Stop every background thread of this dataset's iterators (idempotent)."""
        _close_all(self._iterators)

    def __enter__(self) -> MultimodalDataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- pickling into DataLoader workers --------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_iterators", None)
        state.pop("_finalizer", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        return (
            f"MultimodalDataset(mode={self.mode!r}, sources={self.sources}, "
            f"synthetic={self.synthetic}, cache_size={self.config.cache_size})"
        )


def _close_all(iterators: weakref.WeakSet) -> None:
    for it in list(iterators):
        it.close()


def _iterate(it: Iterator[dict], _owner: MultimodalDataset) -> Iterator[dict]:
    """The consumer side; closing it (end, error, drop, :meth:`MultimodalDataset.close`)
    stops the chain's threads. It holds ``_owner`` so that ``for s in
    MultimodalDataset(...)`` keeps the dataset alive while it runs."""
    try:
        yield from it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
