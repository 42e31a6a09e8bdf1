"""Mixing arithmetic (read/mixplan.py): the one check of mixing weights, per-step counts that
do not depend on how many steps are drawn, each source's split over the slots, and the window
each source gets of a worker's cache_size."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wdstream.errors import ConfigError
from wdstream.read.mixplan import (
    mix_plan,
    mix_weights,
    normalise_weights,
    source_window,
    step_counts,
)
from wdstream.read.planner import Layout


def test_weights_are_normalised_and_equal_when_absent():
    assert normalise_weights(["a", "b"], None) == {"a": 0.5, "b": 0.5}
    assert normalise_weights(["a", "b"], {"a": 3, "b": 1}) == {"a": 0.75, "b": 0.25}
    assert mix_weights(["b", "a"], {"a": 3, "b": 1}).tolist() == [0.25, 0.75]  # names' order


@pytest.mark.parametrize(
    "weights, match",
    [
        ({"a": 1, "c": 1}, "unknown source"),
        ({"a": 1}, "no weight for source"),
        ({"a": -1, "b": 1}, "finite number >= 0"),
        ({"a": float("nan"), "b": 1}, "finite number >= 0"),
        ({"a": True, "b": 1}, "finite number >= 0"),
        ({"a": 0, "b": 0}, "all zero"),
    ],
)
def test_bad_weights_are_a_config_error_naming_the_source(weights, match):
    with pytest.raises(ConfigError, match=match):
        normalise_weights(["a", "b"], weights)
    with pytest.raises(ConfigError, match=match):  # planned mixes use the same check
        mix_weights(["a", "b"], weights)


def test_an_unknown_mix_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="stop"):
        mix_plan({"a": 10}, None, seed=0, epoch=0, layout=Layout(1, 1, 2, 4), mode="cycle")


@given(start=st.integers(0, 3000), length=st.integers(0, 200), seed=st.integers(0, 50))
def test_a_steps_counts_do_not_depend_on_the_steps_drawn_with_it(start, length, seed):
    probs = np.array([0.2, 0.5, 0.3])
    part = step_counts(probs, 8, seed=seed, epoch=1, generation=0, start=start, stop=start + length)
    whole = step_counts(probs, 8, seed=seed, epoch=1, generation=0, start=0, stop=start + length)
    assert (part == whole[start:]).all()
    assert (part.sum(axis=1) == 8).all()


def test_each_source_is_split_over_the_slots_by_its_counts():
    layout = Layout(world=2, workers=3, batch_size=8, cache_size=90)
    plan = mix_plan({"a": 500, "b": 300}, {"a": 2, "b": 1}, seed=3, epoch=0, layout=layout)
    assert plan.batches > 0 and (plan.counts.sum(axis=1) == 8).all()
    for s, name in enumerate(plan.names):
        split = plan.split(name)
        assert sum(split.lengths) == int(plan.counts[:, s].sum())  # every step's samples
        assert split.window == source_window(90, 2) == 45  # the worker's cache, shared
    # the mix ends before a step that some source cannot fill on every rank
    used = plan.counts.sum(axis=0) * layout.world
    assert (used <= np.array([500, 300])).all()
    unshuffled = mix_plan({"a": 500, "b": 300}, None, seed=3, epoch=0, layout=layout, shuffle=False)
    assert unshuffled.split("a").window == 1  # not shuffled: windows of one sample
