"""Resolving what the user gives (read/sources.py): manifests, brace patterns, URL lists,
dicts of named sources; and the loud synthetic fallback."""

from __future__ import annotations

import logging

import pytest
from helpers import small_config, write_test_shards

from wdstream.errors import ConfigError, NotFoundError, SourceError
from wdstream.read.shards import ShardRefs
from wdstream.read.sources import (
    ShardSource,
    resolve_or_fallback,
    resolve_source,
    resolve_sources,
)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    return str(d), write_test_shards(str(d), [3, 5], compact=True)


def test_a_manifest_gives_counts_and_a_compact_shard_table(ds):
    url, m = ds
    src = resolve_source(url, small_config())
    assert isinstance(src.shards, ShardRefs) and src.has_manifest and not src.synthetic
    assert list(src.sizes) == [3, 5] and src.samples == 8 and src.name == "testdata"
    assert [s.url for s in src.shards] == [f"{url}/{s.url}" for s in m.shards]
    assert src.shards[1].index_url.endswith(".idx") and src.shards[1].bytes == m.shards[1].bytes


def test_patterns_and_lists_give_shards_without_counts(ds):
    url, m = ds
    names = [s.url for s in m.shards]
    pattern = f"{url}/{names[0].rsplit('-', 1)[0]}-{{00000..00000}}.tar"
    src = resolve_source(pattern, small_config())
    assert [s.url for s in src.shards] == [f"{url}/{names[0]}"]
    assert src.samples is None and not src.has_manifest and list(src.sizes) == [0]
    listed = resolve_source([f"{url}/{n}" for n in names], small_config(), name="mine")
    assert listed.name == "mine" and len(listed.shards) == 2


def test_unreadable_sources_are_named(tmp_path):
    with pytest.raises(NotFoundError, match="manifest.json"):
        resolve_source(str(tmp_path / "nothing"), small_config())
    with pytest.raises(SourceError, match="no shard URLs"):
        resolve_source([], small_config())
    with pytest.raises(ConfigError, match="unsupported source"):
        resolve_source(42, small_config())


def test_a_dict_names_each_source_and_an_empty_one_is_refused(ds):
    url, _ = ds
    got = resolve_sources({"b": url, "a": url}, small_config())
    assert sorted(got) == ["a", "b"] and got["a"].name == "a" and got["b"].samples == 8
    single = resolve_sources(url, small_config())
    assert list(single) == ["testdata"]
    with pytest.raises(ConfigError, match="empty"):
        resolve_sources({}, small_config())


def test_the_fallback_is_loud_and_marked(tmp_path, caplog):
    missing = str(tmp_path / "gone")
    with pytest.raises(NotFoundError):
        resolve_or_fallback(missing, small_config())
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        src = resolve_or_fallback(missing, small_config(fallback="synthetic", synthetic_samples=70))
    assert src.synthetic and src.samples == 70 and list(src.sizes) == [64, 6]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "SYNTHETIC" in warnings[0].getMessage()
    assert "gone" in warnings[0].getMessage()
    off = resolve_or_fallback("s3://never/read", small_config(use_streaming=False))
    assert off.synthetic and off.name == "synthetic"


def test_a_shard_source_sums_only_known_counts():
    src = ShardSource("x", [], has_manifest=False)
    assert src.samples is None and list(src.sizes) == []
