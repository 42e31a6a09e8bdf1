"""The read chains: the one module that chains the stages of :mod:`wdstream.read.stages`.

Every chain takes explicit arguments (what a slot reads, a reader, a decode function, an error
budget, options) and returns an iterator; nothing here holds a dataset.

exact (a manifest)::

    slot plan -> fetch (reader) -> span items -> window shuffle -> decode -> label
              -> exact batches

streaming (no manifest, or ``exact=False``)::

    stream plan -> fetch whole shards -> samples -> shuffle buffer -> decode -> label
                -> plain batches

mixed (several manifests): each source's slot as in exact mode up to its label, then each
step's batch drawn from the sources by the mix plan -> exact batches.

For :class:`wdstream.MultimodalDataset`: :func:`samples` (a slot's good decoded samples, one
at a time) and :func:`hub_samples` (Hugging Face rows mixed, buffered, decoded, read ahead on
one thread).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..errors import ErrorBudget, SourceError, redact
from .fetch import ShardReader
from .mix import mix
from .mixplan import MixPlan
from .planner import Read, SlotPlan
from .shards import Fetched, span_items
from .shuffle import StreamPlan, buffer_shuffle, stream_reads
from .sources import ShardSource
from .stages import (
    Bad,
    decode_stage,
    exact_batches,
    good_samples,
    label_stage,
    plain_batches,
    readahead,
    window_shuffle,
)
from .stats import Counters

__all__ = [
    "Plan",
    "items",
    "decoded",
    "exact",
    "streaming",
    "mixed",
    "samples",
    "borrow",
    "hub_samples",
]

log = logging.getLogger(__name__)

Decode = Callable[[dict], dict]
Plan = SlotPlan | StreamPlan


def items(
    plan: Plan,
    source: ShardSource,
    reader: ShardReader,
    budget: ErrorBudget,
    counters: Counters | None = None,
) -> Iterator[dict]:
    """A slot's raw items in emission order: its reads fetched, reconciled, and shuffled (the
    window shuffle of a slot plan, the buffer of a stream plan)."""
    shards = source.shards
    if isinstance(plan, SlotPlan):
        return window_shuffle(
            span_items(reader.fetch(shards, plan.iter_reads(), counters), budget), plan
        )
    if plan.shards is None and not len(shards):
        raise SourceError(f"source {source.name!r} has no shards")
    fetched = reader.fetch(shards, stream_reads(plan, len(shards)), counters)
    if plan.shards is None:
        got = _resampled(fetched, budget, source.name, len(shards))
    else:
        got = span_items(fetched, budget)
    return buffer_shuffle(got, plan.buffer, plan.seed) if plan.shuffle else got


def decoded(
    plan: Plan,
    source: ShardSource,
    reader: ShardReader,
    decode: Decode,
    budget: ErrorBudget,
    *,
    threads: int = 0,
    counters: Counters | None = None,
    force_source: bool = False,
) -> Iterator[Any]:
    """A slot's decoded and labelled samples in emission order, :class:`Bad` markers included
    (a placeholder per planned sample that could not be read or decoded)."""
    raw = items(plan, source, reader, budget, counters)
    out = decode_stage(raw, decode, budget, threads=threads, counters=counters)
    return label_stage(out, source.name, synthetic=source.synthetic, force_source=force_source)


def exact(
    plan: SlotPlan,
    source: ShardSource,
    reader: ShardReader,
    decode: Decode,
    budget: ErrorBudget,
    *,
    collate: Callable,
    batch_size: int,
    threads: int = 0,
    counters: Counters | None = None,
) -> Iterator[dict]:
    """Exactly the slot's planned batches (``plan.length // batch_size``), bad samples
    replaced; a slot with no good sample at all borrows one from the source."""
    n_batches = plan.length // batch_size
    if n_batches == 0:
        return iter(())
    out = decoded(plan, source, reader, decode, budget, threads=threads, counters=counters)
    return exact_batches(
        out, batch_size, n_batches, collate, borrow=lambda: borrow(source, reader, decode, budget)
    )


def streaming(
    plan: StreamPlan,
    source: ShardSource,
    reader: ShardReader,
    decode: Decode,
    budget: ErrorBudget,
    *,
    collate: Callable,
    batch_size: int,
    n_batches: int | None,
    drop_last: bool,
    threads: int = 0,
    counters: Counters | None = None,
) -> Iterator[dict]:
    """Batches of the good samples of a streaming slot; ``n_batches`` of them (None: until
    the pass ends)."""
    if n_batches == 0:
        return iter(())
    out = decoded(plan, source, reader, decode, budget, threads=threads, counters=counters)
    return plain_batches(out, batch_size, collate, n_batches=n_batches, drop_last=drop_last)


def mixed(
    mix_plan: MixPlan,
    steps: Sequence[int],
    slots: Mapping[str, SlotPlan],
    sources: Mapping[str, ShardSource],
    reader: ShardReader,
    decoders: Mapping[str, Decode],
    budget: ErrorBudget,
    *,
    collate: Callable,
    batch_size: int,
    threads: int = 0,
    counters: Counters | None = None,
) -> Iterator[dict]:
    """Batches mixing several sources: step ``steps[i]``'s batch takes its samples from the
    sources in the order the mix plan draws them, each source's samples in its slot's
    emission order; every step yields one batch, bad samples replaced."""
    if not steps:
        return iter(())
    streams = [
        decoded(
            slots[name],
            sources[name],
            reader,
            decoders[name],
            budget,
            threads=threads,
            counters=counters,
            force_source=True,
        )
        for name in mix_plan.names
    ]

    def drawn() -> Iterator[Any]:
        for step in steps:
            for s in mix_plan.batch_sources(step).tolist():
                yield next(streams[s])

    first = mix_plan.names[0]
    return exact_batches(
        drawn(),
        batch_size,
        len(steps),
        collate,
        borrow=lambda: borrow(sources[first], reader, decoders[first], budget),
    )


def samples(
    plan: Plan,
    source: ShardSource,
    reader: ShardReader,
    decode: Decode,
    budget: ErrorBudget,
    *,
    threads: int = 0,
) -> Iterator[dict]:
    """A slot's good decoded samples, one at a time (bad ones counted and dropped)."""
    return good_samples(decoded(plan, source, reader, decode, budget, threads=threads))


def borrow(
    source: ShardSource, reader: ShardReader, decode: Decode, budget: ErrorBudget
) -> dict | None:
    """The first good sample of the source: fills a slot none of whose samples could be read,
    so that its rank still yields every planned batch (DDP must not hang)."""
    reads = (Read(i, 0, None) for i in range(len(source.shards)))
    raw = span_items(reader.fetch(source.shards, reads), budget)
    out = label_stage(decode_stage(raw, decode, budget), source.name, synthetic=source.synthetic)
    for item in out:
        if not isinstance(item, Bad):
            out.close()
            log.warning(
                "no readable sample in a slot's span; repeating %s to keep the batch count",
                item.get("key"),
            )
            return item
    return None


def hub_samples(
    members: Callable[[str, int], Iterable[dict]],
    names: Sequence[str],
    decode: Decode,
    budget: ErrorBudget,
    *,
    weights: Mapping[str, float] | None,
    seed: int,
    exhausted: str,
    caps: Mapping[str, int] | None,
    shuffle: bool,
    buffer: int,
    ahead: int,
    thread_name: str,
) -> Iterator[dict]:
    """Good decoded samples streamed from Hugging Face: ``members(name, pass_no)`` gives one
    pass over a source's rows as member dicts; several sources are mixed by weight, then
    shuffled in a buffer, decoded and read ahead (``ahead`` samples) on one thread."""
    passes = dict.fromkeys(names, 0)

    def reopen(name: str) -> Iterable[dict]:
        passes[name] += 1
        return members(name, passes[name])

    drawn = (
        item
        for _, item in mix(
            {n: iter(members(n, 0)) for n in names},
            weights or None,
            seed=seed,
            exhausted=exhausted,
            reopen=reopen,
            caps=caps,
        )
    )
    raw = buffer_shuffle(drawn, buffer, seed) if shuffle else drawn
    out = good_samples(label_stage(decode_stage(raw, decode, budget)))
    return readahead(out, ahead, name=thread_name)


def _resampled(
    fetched: Iterator[Fetched], budget: ErrorBudget, name: str, n_shards: int
) -> Iterator[dict]:
    """The samples of shards drawn forever; SourceError when no draw yields a sample for
    longer than any run of bad luck could explain."""
    empty_draws = 0
    for got in fetched:
        found = False
        for sample in span_items((got,), budget):
            found = True
            yield sample
        empty_draws = 0 if found else empty_draws + 1
        if empty_draws > 3 * n_shards + 10:
            raise SourceError(
                f"no readable sample in {empty_draws} shard draws from {name!r}; "
                f"last tried {redact(got.shard.url)}",
                url=got.shard.url,
            )
