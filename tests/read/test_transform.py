"""``make_loader(..., transform=fn)``: a per-sample augmentation in the workers, seeded from
``(config.seed, epoch, source, key)`` so it keeps the reader's determinism."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import small_config, write_test_shards

import wdstream
from wdstream.errors import SampleError
from wdstream.read.transform import transform_seed


def jitter(sample, generator, *, scale=1.0):
    """A random brightness shift and flip, all drawn from ``generator``."""
    pixels = sample["pixel_values"]
    shift = torch.rand((), generator=generator) * scale
    if torch.rand((), generator=generator) < 0.5:
        pixels = pixels.flip(-1)
    sample["pixel_values"] = pixels + shift
    sample["shift"] = float(shift)
    return sample


def record_shift(sample, generator):
    jitter(sample, generator)
    sample["key"] = f"{sample['key']}|{sample['shift']:.6f}"  # keys carry the draw


def reject_odd(sample, generator):
    if int(sample["key"][-1]) % 2:
        raise SampleError("rejected by the transform", reason="transform")
    return sample


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("tf") / "ds")
    write_test_shards(url, [10, 14], audio=False)
    return url


def batches(url, epoch=0, transform=jitter, **overrides):
    config = small_config(**{"num_workers": 2, "batch_size": 4, **overrides})
    with wdstream.make_loader(url, config, transform=transform) as loader:
        loader.set_epoch(epoch)
        return list(loader)


def test_same_seed_same_augmented_batches_other_epoch_other_draws(shards):
    a, b = batches(shards), batches(shards)
    assert len(a) == 6
    for x, y in zip(a, b, strict=True):
        assert x["keys"] == y["keys"] and torch.equal(x["pixel_values"], y["pixel_values"])
    plain = batches(shards, transform=None)
    assert [p["keys"] for p in plain] == [x["keys"] for x in a]
    assert not torch.equal(plain[0]["pixel_values"], a[0]["pixel_values"])
    later = batches(shards, epoch=1)
    first = {k: x["pixel_values"][i] for x in a for i, k in enumerate(x["keys"])}
    second = {k: x["pixel_values"][i] for x in later for i, k in enumerate(x["keys"])}
    assert set(first) == set(second)  # the same samples, augmented differently
    assert sum(not torch.equal(first[k], second[k]) for k in first) > len(first) // 2


def test_the_draw_of_a_sample_depends_on_its_key_not_on_workers_or_order(shards):
    two = batches(shards, transform=record_shift)
    one = batches(shards, transform=record_shift, num_workers=0, cache_size=0)
    draws = {k for b in two for k in b["keys"]}
    assert draws == {k for b in one for k in b["keys"]}
    key, shift = sorted(draws)[0].split("|")
    g = torch.Generator()
    g.manual_seed(transform_seed(0, 0, "testdata", key))  # the manifest's source name
    assert f"{float(torch.rand((), generator=g)):.6f}" == shift


def test_a_partial_pickles_and_a_sample_error_counts_as_a_bad_sample(shards):
    out = batches(shards, transform=functools.partial(jitter, scale=0.0), num_workers=2)
    assert len(out) == 6
    kept = batches(shards, transform=reject_odd, num_workers=0)
    assert all(int(k[-1]) % 2 == 0 for b in kept for k in b["keys"])


def exits(sample, generator):
    if sample["key"].endswith("3"):
        raise SystemExit(3)
    return sample


@pytest.mark.parametrize("workers", [0, 2])
def test_a_transform_that_exits_is_named_not_a_lost_worker(shards, workers):
    """SystemExit in a transform would end a DataLoader worker (torch then reports a lost
    worker or a missing shared-memory file): it reaches the training loop as a TransformError
    naming the transform, the exit and the sample."""
    from wdstream.read.transform import TransformError

    with pytest.raises(TransformError, match=r"transform exits raised SystemExit\(3\) on sample"):
        batches(shards, transform=exits, num_workers=workers)
