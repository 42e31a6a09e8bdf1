"""The read chains (read/pipeline.py), with a trivial decoder on real local shards: every
chain delivers what its plan says, in the plan's order, whatever the fetch settings; bad
samples keep their place; a slot with nothing readable borrows."""

from __future__ import annotations

from collections import Counter

import oracle
import pytest
from helpers import small_config, write_test_shards

from wdstream.errors import ErrorBudget, SampleError
from wdstream.format.schema import make_key
from wdstream.read import pipeline
from wdstream.read.fetch import ReadOptions, ShardReader
from wdstream.read.planner import Layout, epoch_plan
from wdstream.read.shuffle import stream_plan
from wdstream.read.sources import resolve_source

SIZES = [9, 14, 5, 12]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pipe"))
    write_test_shards(d, SIZES, compact=True, audio=False, image_px=(8, 12))
    return resolve_source(d, small_config())


def decode(item):
    return {"key": item["__key__"], "source": None}


def reader(requests=8, block=1 << 20):
    return ShardReader(ReadOptions(storage_options={}, requests=requests, block_size=block))


def keys_of(source, read):
    return [
        make_key(read.shard, i)
        for i in (range(read.first, read.stop) if read.wanted is None else read.wanted)
    ]


@pytest.mark.parametrize("requests, block", [(0, 1 << 20), (8, 1), (3, 2000)])
def test_exact_chain_emits_each_slot_in_the_oracles_order(source, requests, block):
    layout = Layout(world=2, workers=2, batch_size=3, cache_size=7)
    pool = epoch_plan(source.sizes, seed=4, epoch=1)
    seen: Counter = Counter()
    for rank in range(2):
        for worker in range(2):
            plan = pool.slot(layout, rank, worker)
            span = [k for r in plan.reads for k in keys_of(source, r)]
            expected = [span[i] for i in oracle.emission(plan.length, 7, plan.seed)]
            batches = list(
                pipeline.exact(
                    plan,
                    source,
                    reader(requests, block),
                    decode,
                    ErrorBudget(0),
                    collate=list,
                    batch_size=3,
                )
            )
            got = [s["key"] for b in batches for s in b]
            assert got == expected[: len(got)] and len(batches) == plan.length // 3
            assert all(s["source"] == source.name for b in batches for s in b)
            seen.update(got)
    assert all(n == 1 for n in seen.values()) and sum(seen.values()) == 36  # 40 // 12 * 12


def test_bad_samples_keep_their_place_as_marked_fillers(source):
    def picky(item):
        if item["__key__"].endswith("1"):
            raise SampleError("no", reason="undecodable image")
        return decode(item)

    plan = epoch_plan(source.sizes, seed=0, epoch=0).slot(Layout(1, 1, 4, 8), 0, 0)
    budget = ErrorBudget(-1)
    batches = list(
        pipeline.exact(plan, source, reader(), picky, budget, collate=list, batch_size=4)
    )
    assert len(batches) == 10 and all(len(b) == 4 for b in batches)
    bad = sum(1 for b in batches for s in b if s.get("filler"))
    assert bad == budget.counts["undecodable image"] == budget.placeholders > 0
    assert not any(s["key"].endswith("1") for b in batches for s in b if not s.get("filler"))


def test_a_slot_with_nothing_readable_borrows_a_good_sample(source):
    first_shard = make_key(0, 0).rsplit("_", 1)[0]

    def only_first_shard(item):
        if not item["__key__"].startswith(first_shard):
            raise SampleError("no", reason="undecodable image")
        return decode(item)

    got = pipeline.borrow(source, reader(), only_first_shard, ErrorBudget(-1))
    assert got["key"] == make_key(0, 0)


def test_streaming_chain_reads_each_shard_once_split_over_workers(source):
    urls = [s.url for s in source.shards]
    listed = resolve_source(urls, small_config())
    keys: Counter = Counter()
    for worker in range(3):
        plan = stream_plan(
            len(urls),
            seed=1,
            epoch=0,
            rank=0,
            worker=worker,
            workers=3,
            shuffle=True,
            cache_size=6,
            endless=False,
        )
        out = list(
            pipeline.streaming(
                plan,
                listed,
                reader(),
                decode,
                ErrorBudget(0),
                collate=list,
                batch_size=5,
                n_batches=None,
                drop_last=False,
            )
        )
        keys.update(s["key"] for b in out for s in b)
    assert sorted(keys) == sorted(make_key(p, r) for p, n in enumerate(SIZES) for r in range(n))
    assert set(keys.values()) == {1}


def test_samples_chain_drops_bad_ones_and_counts_them(source):
    plan = epoch_plan(source.sizes, seed=0, epoch=0).slot(Layout(1, 1, 1, 4), 0, 0)

    def picky(item):
        if item["__key__"] == make_key(1, 3):
            raise SampleError("no", reason="missing text")
        return decode(item)

    budget = ErrorBudget(-1)
    got = [s["key"] for s in pipeline.samples(plan, source, reader(), picky, budget)]
    assert len(got) == sum(SIZES) - 1 and make_key(1, 3) not in got
    assert budget.counts == {"missing text": 1}
