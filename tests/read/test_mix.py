"""Weighted mixing: proportions, determinism, both exhaustion modes, caps and errors."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wdstream.errors import ConfigError, SourceError
from wdstream.read.mix import mix
from wdstream.read.mixplan import normalise_weights


def _source(name, size):
    counter = range(size) if size is not None else itertools.count()
    return ((name, i) for i in counter)


def _streams(**sizes):
    """``name -> iterator of (name, i)``; a size of None is endless."""
    return {n: _source(n, s) for n, s in sizes.items()}


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_proportions_follow_the_weights(seed):
    weights = {"a": 5, "b": 3, "c": 2}
    out = list(itertools.islice(mix(_streams(a=None, b=None, c=None), weights, seed=seed), 4000))
    counts = Counter(name for name, _ in out)
    for name, w in normalise_weights(weights, weights).items():
        assert abs(counts[name] / 4000 - w) < 0.035, (name, counts)


def test_items_of_each_source_keep_their_order():
    out = list(itertools.islice(mix(_streams(a=None, b=None), {"a": 1, "b": 2}, seed=4), 500))
    for name in "ab":
        idx = [item[1] for n, item in out if n == name]
        assert idx == list(range(len(idx)))
        assert all(item[0] == n for n, item in out)


def test_same_seed_same_sequence_other_seed_other_sequence():
    def run(seed, order=("a", "b", "c")):
        streams = {
            n: s
            for n, s in sorted(
                _streams(a=None, b=None, c=None).items(), key=lambda kv: order.index(kv[0])
            )
        }
        return list(itertools.islice(mix(streams, {"a": 1, "b": 1, "c": 2}, seed=seed), 300))

    assert run(7) == run(7)
    assert run(7) == run(7, order=("c", "a", "b"))  # dict order does not matter
    assert run(7) != run(8)


def test_equal_weights_when_none_given():
    out = list(itertools.islice(mix(_streams(a=None, b=None), None, seed=0), 2000))
    assert abs(Counter(n for n, _ in out)["a"] / 2000 - 0.5) < 0.035


def test_stop_ends_when_any_source_runs_out():
    out = list(mix(_streams(small=10, big=None), {"small": 1, "big": 1}, seed=3))
    counts = Counter(n for n, _ in out)
    assert counts["small"] == 10
    assert 0 < counts["big"] < 60  # the mix ended soon after 'small' ran out, not never


def test_resample_reopens_a_source_that_runs_out():
    opened = Counter()

    def reopen(name):
        opened[name] += 1
        return iter((name, i) for i in range(10))

    out = list(
        itertools.islice(
            mix(
                _streams(small=10, big=None),
                {"small": 1, "big": 1},
                seed=3,
                exhausted="resample",
                reopen=reopen,
            ),
            1000,
        )
    )
    small = [item[1] for n, item in out if n == "small"]
    assert len(small) > 400
    assert small == [i % 10 for i in range(len(small))]  # whole passes, in order
    assert opened == {"small": (len(small) - 1) // 10}  # once per extra pass, never 'big'


def test_caps_stop_taking_from_a_source():
    out = list(
        itertools.islice(
            mix(_streams(a=None, b=None), {"a": 9, "b": 1}, seed=0, caps={"a": 25}), 200
        )
    )
    counts = Counter(n for n, _ in out)
    assert counts == {"a": 25, "b": 175}
    # once every source is capped the mix ends, even with endless sources
    out = list(mix(_streams(a=None, b=None), {"a": 1, "b": 1}, seed=0, caps={"a": 7, "b": 11}))
    assert Counter(n for n, _ in out) == {"a": 7, "b": 11}


def test_a_cap_of_zero_or_a_weight_of_zero_never_draws():
    out = list(
        itertools.islice(
            mix(_streams(a=None, b=None, c=None), {"a": 1, "b": 0, "c": 1}, seed=0, caps={"c": 0}),
            50,
        )
    )
    assert {n for n, _ in out} == {"a"}


def test_caps_with_stop_end_at_the_cap_not_at_exhaustion():
    out = list(mix(_streams(a=5, b=None), {"a": 1, "b": 1}, seed=1, caps={"a": 5, "b": 20}))
    # 'a' reached its cap with its last item, so it left the mix before running out
    assert Counter(n for n, _ in out) == {"a": 5, "b": 20}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weights": {"a": 1, "z": 1}}, "unknown source"),
        ({"weights": {"a": 1}}, "no weight for source"),
        ({"weights": {"a": -1, "b": 1}}, ">= 0"),
        ({"weights": {"a": float("nan"), "b": 1}}, "finite"),
        ({"weights": {"a": 0, "b": 0}}, "all zero"),
        ({"exhausted": "cycle"}, "stop"),
        ({"exhausted": "resample"}, "reopen"),
        ({"caps": {"zz": 3}}, "unknown source"),
        ({"caps": {"a": -2}}, ">= 0"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        mix(_streams(a=3, b=3), **kwargs)


def test_no_sources_is_an_error():
    with pytest.raises(ConfigError, match="no sources"):
        mix({}, None)


def test_a_source_empty_after_reopening_is_a_source_error():
    it = mix(
        _streams(a=2, b=None), None, seed=0, exhausted="resample", reopen=lambda name: iter(())
    )
    with pytest.raises(SourceError, match="'a' is empty after reopening"):
        list(itertools.islice(it, 100))


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=4),
    weights=st.lists(st.integers(1, 5), min_size=4, max_size=4),
    caps=st.lists(st.one_of(st.none(), st.integers(0, 20)), min_size=4, max_size=4),
    seed=st.integers(0, 2**31),
)
def test_every_item_at_most_once_in_order_within_caps(sizes, weights, caps, seed):
    names = [f"s{i}" for i in range(len(sizes))]
    streams = {n: iter(range(s)) for n, s in zip(names, sizes, strict=True)}
    w = dict(zip(names, weights, strict=False))
    c = dict(zip(names, caps, strict=False))
    out = list(mix(streams, w, seed=seed, caps=c))
    for n, size, cap in zip(names, sizes, caps, strict=False):
        got = [i for name, i in out if name == n]
        assert got == list(range(len(got)))
        assert len(got) <= size and (cap is None or len(got) <= cap)
    again = list(
        mix({n: iter(range(s)) for n, s in zip(names, sizes, strict=True)}, w, seed=seed, caps=c)
    )
    assert out == again
