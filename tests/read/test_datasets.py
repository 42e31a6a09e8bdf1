"""The datasets (read/datasets.py): what each worker reads (a slot plan or a stream plan),
how many batches a rank yields, what a saved state must agree on, and the checks they make
before any worker starts."""

from __future__ import annotations

import functools

import pytest
from helpers import small_config, write_test_shards

from wdstream.errors import ConfigError
from wdstream.read.collate import collate
from wdstream.read.datasets import MixedDataset, ShardDataset, read_plan
from wdstream.read.decode import SampleDecoder
from wdstream.read.planner import Layout, SlotPlan
from wdstream.read.shuffle import StreamPlan
from wdstream.read.sources import resolve_source, synthetic_source


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("dsets"))
    write_test_shards(d, [10, 7, 9], compact=True)
    return d


def make(src, config, **kw):
    decoder = SampleDecoder(config)
    return ShardDataset(src, config, decoder, functools.partial(collate, config=config), **kw)


def test_read_plan_is_a_slot_plan_with_a_manifest_and_a_stream_plan_without(source):
    config = small_config(batch_size=2, num_workers=2)
    src = resolve_source(source, config)
    layout = Layout(world=1, workers=2, batch_size=2, cache_size=8)
    plan = read_plan(src, config, epoch=0, layout=layout, rank=0, worker=1)
    assert isinstance(plan, SlotPlan) and plan.worker == 1 and plan.length == 12
    assert sum(r.count for r in plan.reads) == 12 and plan.window == 8
    stream = read_plan(src, config.replace(exact=False), epoch=0, layout=layout, rank=0, worker=1)
    assert isinstance(stream, StreamPlan) and stream.shards is None  # a nominal epoch: drawn
    urls = [s.url for s in src.shards]
    listed = resolve_source(urls, config)
    one_pass = read_plan(listed, config, epoch=0, layout=layout, rank=0, worker=1)
    assert isinstance(one_pass, StreamPlan) and len(one_pass.shards) == 1  # 3 shards / 2


def test_batches_per_rank_and_identity(source):
    config = small_config(batch_size=4, num_workers=2)
    ds = make(resolve_source(source, config), config, rank=1, world=2)
    assert ds.exact and ds.batches_per_rank(0) == 26 // 8
    assert ds.identity() == {"samples": 26, "shards": 3}
    assert ds.layout() == Layout(
        world=2, workers=2, batch_size=4, cache_size=8, drop_last=True, lanes=32
    )
    padded = make(resolve_source(source, config), config.replace(drop_last=False), world=2)
    assert padded.batches_per_rank(0) == 4  # ceil(26 / 8)
    assert not ds.synthetic and make(synthetic_source(config), config).synthetic


def test_streaming_over_several_ranks_needs_an_epoch_length(source):
    config = small_config()
    urls = [s.url for s in resolve_source(source, config).shards]
    with pytest.raises(ConfigError, match="epoch_length"):
        make(resolve_source(urls, config), config, world=2)
    ds = make(
        resolve_source(urls, config.replace(epoch_length=40)),
        config.replace(epoch_length=40),
        world=2,
    )
    assert not ds.exact and ds.batches_per_rank(0) == 40 // 8


def test_a_worker_count_other_than_planned_is_refused(source):
    config = small_config(num_workers=3)
    ds = make(resolve_source(source, config), config)
    with pytest.raises(ConfigError, match="3 workers per rank but runs under 1"):
        next(iter(ds))


def test_mixing_needs_manifests(source):
    config = small_config(weights={"a": 1, "b": 1})
    src = resolve_source(source, config)
    urls = [s.url for s in src.shards]
    with pytest.raises(ConfigError, match="'b' needs a manifest"):
        MixedDataset(
            {"a": src, "b": resolve_source(urls, config)}, config, SampleDecoder(config), collate
        )
    mixed = MixedDataset({"a": src, "b": src}, config, SampleDecoder(config), collate)
    assert mixed.batches_per_rank(0) > 0 and mixed.layout().drop_last  # batches always full
    assert mixed.identity()["sources"] == {"a": [26, 3], "b": [26, 3]}
