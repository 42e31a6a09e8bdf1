"""make_loader with several named sources mixed by weight."""

from __future__ import annotations

from collections import Counter
from functools import partial

import pytest
from helpers import small_config, write_test_shards

import wdstream

cfg = partial(
    small_config,
    batch_size=8,
    num_workers=2,
    cache_size=16,
    vision_dim=8,
    max_audio_length=100,
    max_text_length=16,
    persistent_workers=False,
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    out = {}
    for name, sizes in (("big", [400, 400, 400]), ("small", [150, 150])):
        url = str(root / name)
        write_test_shards(url, sizes, image=False, audio=False)
        out[name] = url
    return out


def test_mixing_proportions_sources_recorded_and_deterministic(sources):
    config = cfg(weights={"big": 3.0, "small": 1.0}, mix_exhausted="resample", epoch_length=1200)
    loader = wdstream.make_loader(sources, config)
    batches = list(loader)
    assert len(batches) == len(loader) == 150
    names = Counter(s for b in batches for s in b["sources"])
    assert set(names) == {"big", "small"}
    share = names["big"] / sum(names.values())
    assert abs(share - 0.75) < 0.04  # 1,200 draws: 3 sigma is about 0.037
    big_keys = [
        k for b in batches for k, s in zip(b["keys"], b["sources"], strict=True) if s == "big"
    ]
    assert len(big_keys) == len(set(big_keys))  # one pass over big: no repeat
    again = [b["keys"] for b in wdstream.make_loader(sources, config)]
    assert again == [b["keys"] for b in batches]


def test_stop_mode_ends_at_the_first_exhausted_source_with_equal_ranks(sources):
    config = cfg(weights={"big": 1.0, "small": 1.0}, mix_exhausted="stop")
    per_rank = [list(wdstream.make_loader(sources, config, rank=r, world=2)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    keys = [
        (s, k)
        for batches in per_rank
        for b in batches
        for k, s in zip(b["keys"], b["sources"], strict=True)
    ]
    assert len(keys) == len(set(keys))  # stop mode never repeats (keys are per source)
    names = Counter(s for batches in per_rank for b in batches for s in b["sources"])
    # equal weights: the epoch ends when 'small' (300 samples) runs out in some slot, so most
    # of it is delivered, and about as much of 'big'
    assert 240 <= names["small"] <= 300
    assert abs(names["big"] - names["small"]) <= 0.25 * names["small"]


def test_caps_hold(sources):
    config = cfg(
        weights={"big": 1.0, "small": 1.0},
        mix_exhausted="resample",
        epoch_length=1600,
        max_samples_per_dataset=200,
    )
    names = Counter(s for b in wdstream.make_loader(sources, config) for s in b["sources"])
    assert names == {"small": 200, "big": 200}  # both capped: the mix ends there


def test_unknown_weight_name_is_an_error(sources):
    with pytest.raises(wdstream.ConfigError, match="unknown source"):
        wdstream.make_loader(sources, cfg(weights={"huge": 1.0, "big": 1.0, "small": 1.0}))


@pytest.mark.parametrize("mode", ["stop", "resample"])
def test_mixed_epoch_resumes_exactly_on_another_layout(sources, mode):
    """Stop a 2-rank mixed epoch after 5 batches, resume on 1 rank with 3 workers: nothing
    delivered is repeated, and the epoch keeps its end rule (stop: a source ran out;
    resample: its length)."""
    import json

    config = cfg(weights={"big": 2.0, "small": 1.0}, mix_exhausted=mode, epoch_length=960)
    seen, state = Counter(), None
    for r in range(2):
        loader = wdstream.make_loader(sources, config, rank=r, world=2)
        it = iter(loader)
        for _ in range(5):
            b = next(it)
            seen.update(zip(b["sources"], b["keys"], strict=True))
        state = json.loads(json.dumps(loader.state_dict())) if r == 0 else state
        loader.close()
    resumed = wdstream.make_loader(sources, config.replace(num_workers=3), rank=0, world=1)
    resumed.load_state_dict(state)
    rest = Counter((s, k) for b in resumed for k, s in zip(b["keys"], b["sources"], strict=True))
    if mode == "stop":  # no repeats; it ends when a source cannot fill another batch
        got = Counter(s for s, _ in seen + rest)
        assert max((seen + rest).values()) == 1
        assert min(1200 - got["big"], 300 - got["small"]) < 8 and got["small"] > 200
    else:  # the resampled epoch keeps its length
        assert sum((seen + rest).values()) // 8 == 960 // 8
    with pytest.raises(wdstream.ConfigError, match="weights"):
        other = wdstream.make_loader(sources, config.replace(weights={"big": 1.0, "small": 1.0}))
        other.load_state_dict(state)
