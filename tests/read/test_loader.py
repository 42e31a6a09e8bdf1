"""The reader end to end on local shards: exact epochs, ranks, resume, determinism, padding."""

from __future__ import annotations

import json
import os
from collections import Counter
from functools import partial

import pytest
import torch
from helpers import small_config, write_test_shards

import wdstream

SIZES = [40, 7, 31, 25]  # uneven shards, 103 samples


loader_config = partial(
    small_config,
    batch_size=4,
    num_workers=2,
    cache_size=16,
    vision_dim=32,
    max_audio_length=400,
    max_text_length=32,
    persistent_workers=False,
)


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    manifest = write_test_shards(str(d), SIZES, compact=True)  # manifest version 2
    return str(d), manifest


def all_keys(manifest):
    from wdstream.format.schema import make_key

    return [make_key(part, row) for part, n in enumerate(SIZES) for row in range(n)]


def epoch_keys(loader):
    return [b["keys"] for b in loader]


def test_exact_epoch_with_workers_delivers_each_sample_once(shards_dir):
    url, manifest = shards_dir
    loader = wdstream.make_loader(url, loader_config())
    batches = epoch_keys(loader)
    flat = [k for b in batches for k in b]
    assert len(batches) == len(loader) == 103 // 4
    assert all(len(b) == 4 for b in batches)
    assert len(set(flat)) == len(flat) == 100
    assert set(flat) <= set(all_keys(manifest))


def test_batch_contents_shapes_and_dtypes(shards_dir):
    url, _ = shards_dir
    batch = next(iter(wdstream.make_loader(url, loader_config(num_workers=0))))
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["audio"].shape == (4, 400) and batch["audio"].dtype == torch.float32
    assert batch["has_image"].all() and batch["has_audio"].all()
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["labels"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert batch["synthetic"] is False
    assert batch["sources"] == ["testdata"] * 4


def test_two_ranks_equal_batches_disjoint_keys(shards_dir):
    url, _ = shards_dir
    per_rank = [
        epoch_keys(wdstream.make_loader(url, loader_config(), rank=r, world=2)) for r in range(2)
    ]
    assert len(per_rank[0]) == len(per_rank[1]) == 103 // 8
    sets = [{k for b in keys for k in b} for keys in per_rank]
    assert not sets[0] & sets[1]
    assert 103 - len(sets[0] | sets[1]) == 103 % 8  # the documented drop


def test_pad_mode_repeats_fewer_than_world_times_batch(shards_dir):
    url, _ = shards_dir
    keys = []
    for r in range(2):
        keys += [
            k
            for b in wdstream.make_loader(url, loader_config(drop_last=False), rank=r, world=2)
            for k in b["keys"]
        ]
    counts = Counter(keys)
    assert len(counts) == 103  # nothing dropped
    assert len(keys) == 8 * -(-103 // 8)
    assert sum(c - 1 for c in counts.values()) < 8


def test_same_seed_same_batches_other_epoch_other_order(shards_dir):
    url, _ = shards_dir
    a = epoch_keys(wdstream.make_loader(url, loader_config()))
    b = epoch_keys(wdstream.make_loader(url, loader_config()))
    assert a == b
    loader = wdstream.make_loader(url, loader_config())
    loader.set_epoch(1)
    c = epoch_keys(loader)
    assert c != a and sorted(sum(c, [])) != [] and len(c) == len(a)
    d = epoch_keys(wdstream.make_loader(url, loader_config(seed=7)))
    assert d != a


@pytest.mark.parametrize("stop", [0, 3, 7])
def test_resume_mid_epoch_with_other_world_and_workers(shards_dir, stop):
    """Run 1: 2 ranks x 2 workers stop after ``stop`` batches; run 2: 1 rank x 3 workers."""
    url, manifest = shards_dir
    seen = []
    state = None
    for r in range(2):
        loader = wdstream.make_loader(url, loader_config(), rank=r, world=2)
        it = iter(loader)
        for _ in range(stop):
            seen += next(it)["keys"]
        if r == 0:
            state = json.loads(json.dumps(loader.state_dict()))  # JSON-serialisable
        loader.close()
    assert len(json.dumps(state)) < 1000
    resumed = wdstream.make_loader(url, loader_config(num_workers=3), rank=0, world=1)
    resumed.load_state_dict(state)
    rest = [k for b in resumed for k in b["keys"]]
    counts = Counter(seen + rest)
    assert max(counts.values()) == 1  # no sample twice
    assert 103 - len(counts) < 4  # fewer than world*batch of the last layout dropped
    assert set(counts) <= set(all_keys(manifest))
    # the next epoch uses the new layout and is whole again
    resumed.set_epoch(1)
    assert len({k for b in resumed for k in b["keys"]}) == 100


def test_state_of_a_finished_epoch_resumes_to_nothing(shards_dir):
    url, _ = shards_dir
    loader = wdstream.make_loader(url, loader_config(num_workers=0))
    n = sum(1 for _ in loader)
    state = loader.state_dict()
    again = wdstream.make_loader(url, loader_config(num_workers=0))
    again.load_state_dict(state)
    assert n == 25 and list(again) == []


def test_state_from_another_dataset_is_refused(shards_dir, tmp_path):
    url, _ = shards_dir
    other = str(tmp_path / "other")
    write_test_shards(other, [5, 5], audio=False)
    state = wdstream.make_loader(url, loader_config()).state_dict()
    with pytest.raises(wdstream.ConfigError, match="samples"):
        wdstream.make_loader(other, loader_config()).load_state_dict(state)


def test_is_filler_marks_exactly_the_padding_repeats(shards_dir):
    url, _ = shards_dir
    real, fillers = [], []
    for r in range(2):
        for b in wdstream.make_loader(url, loader_config(drop_last=False), rank=r, world=2):
            assert b["is_filler"].dtype == torch.bool and b["is_filler"].shape == (4,)
            for key, filler in zip(b["keys"], b["is_filler"].tolist(), strict=True):
                (fillers if filler else real).append(key)
    assert sorted(real) == sorted(set(real)) and len(real) == 103  # masked: each sample once
    assert len(fillers) == 8 * -(-103 // 8) - 103 and set(fillers) <= set(real)
    batches = list(wdstream.make_loader(url, loader_config()))  # drop_last: no filler
    assert not any(b["is_filler"].any() for b in batches)


def test_state_of_the_old_buffer_planner_is_refused_with_what_to_do(shards_dir):
    url, _ = shards_dir
    loader = wdstream.make_loader(url, loader_config(num_workers=0))
    old = {**loader.state_dict(), "version": 1, "epoch": 3}
    with pytest.raises(wdstream.ConfigError, match=r"version 1 \(epoch 3\).*set_epoch"):
        loader.load_state_dict(old)


def test_state_stays_small_after_ten_resumes_and_the_epoch_stays_exact(shards_dir):
    url, _ = shards_dir
    seen, state = [], None
    for i in range(10):  # ten runs of one epoch, alternating layouts, 1 batch each
        loader = wdstream.make_loader(
            url, loader_config(num_workers=i % 3, batch_size=2 + i % 2), rank=0, world=1
        )
        if state is not None:
            loader.load_state_dict(state)
        it = iter(loader)
        seen += next(it)["keys"]
        state = json.loads(json.dumps(loader.state_dict()))
        loader.close()
    assert len(state["runs"]) == 10 and len(json.dumps(state)) < 4096
    last = wdstream.make_loader(url, loader_config(num_workers=0, batch_size=1))
    last.load_state_dict(state)
    seen += [k for b in last for k in b["keys"]]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 103


def test_an_epoch_left_open_ends_quietly_and_the_next_one_is_whole(shards_dir):
    """Breaking out of an epoch and starting the next (its iterator kept, no close) gives the
    next epoch whole; an iterator left open at interpreter exit is closed before the modules
    go (it printed "Exception ignored" tracebacks)."""
    import subprocess
    import sys
    import textwrap

    url, _ = shards_dir
    loader = wdstream.make_loader(url, loader_config(num_workers=0))
    it = iter(loader)
    next(it)
    it = iter(loader)  # the first epoch's generator is dropped here
    assert sum(len(b["keys"]) for b in it) == len(loader) * 4

    code = textwrap.dedent(
        f"""
        import wdstream
        from wdstream.config import Config
        loader = wdstream.make_loader({url!r}, Config(batch_size=4, num_workers=0,
            vision_dim=32, max_audio_length=400, pin_memory="false"))
        it = iter(loader)
        print(len(next(it)["keys"]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4"
    assert "Exception ignored" not in out.stderr and "Traceback" not in out.stderr, out.stderr
