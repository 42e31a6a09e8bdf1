"""The loader's saved state (read/state.py): version 3 with the epoch's order (lanes) and a
fingerprint of the data; version 2 states resume exactly in the order they were saved in;
malformed states are a ConfigError, in bounded memory."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import Counter
from functools import partial

import pytest
from helpers import small_config, write_test_shards

import wdstream
from wdstream.errors import ConfigError
from wdstream.format.schema import make_key
from wdstream.read.planner import Layout, epoch_plan

SIZES = [30, 11, 25, 18]
cfg = partial(small_config, batch_size=4, num_workers=0, cache_size=12)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("state"))
    write_test_shards(d, SIZES, compact=True, audio=False, image_px=(8, 12))
    return d


def keys(loader, n=None):
    """The keys of the first ``n`` batches (all without ``n``); the loader hands out no more."""
    out = []
    for batch in loader:
        out.append(batch["keys"])
        if len(out) == n:
            break
    return out


def test_a_state_records_the_order_and_the_data_and_resumes_exactly(ds):
    loader = wdstream.make_loader(ds, cfg())
    first = keys(loader, 5)
    state = json.loads(json.dumps(loader.state_dict()))
    assert state["version"] == 3 and state["runs"][0]["lanes"] == 32
    assert isinstance(state["fingerprint"], str) and len(json.dumps(state)) < 1000
    resumed = wdstream.make_loader(ds, cfg(shuffle_lanes=4, num_workers=2))  # another layout
    resumed.load_state_dict(state)
    rest = keys(resumed)
    seen = Counter(k for b in first + rest for k in b)
    assert set(seen.values()) == {1} and len(seen) == sum(SIZES) // 4 * 4
    # the resumed epoch keeps the order it was saved in: lanes of the first run, not the new
    again = wdstream.make_loader(ds, cfg(num_workers=2))
    again.load_state_dict(state)
    assert keys(again) == rest


def test_a_version_2_state_resumes_exactly_in_its_own_order(ds):
    """A state saved before lanes (version 2: runs without 'lanes', no fingerprint) resumes
    in the order of that release: shard after shard, windows that grow in every span."""
    old = Layout(world=1, workers=1, batch_size=4, cache_size=12, drop_last=True)  # lanes 0
    pool = epoch_plan(SIZES, seed=0, epoch=2, layout=old)
    plan = pool.slot(old, 0, 0)
    span = [make_key(r.shard, i) for r in plan.reads for i in range(r.first, r.stop)]
    taken = [span[i] for i in plan.emission()[: 7 * 4]]  # 7 batches of the old order
    state = {
        "version": 2,
        "epoch": 2,
        "seed": 0,
        "shuffle": True,
        "samples": sum(SIZES),
        "shards": len(SIZES),
        "runs": [{**{k: v for k, v in old.to_dict().items() if k != "lanes"}, "batches": 7}],
    }
    loader = wdstream.make_loader(ds, cfg(num_workers=2))
    loader.load_state_dict(state)
    rest = [k for b in keys(loader) for k in b]
    assert sorted(taken + rest) == sorted({*taken, *rest})  # no sample twice
    assert len(taken) + len(rest) == sum(SIZES) // 4 * 4  # and none missing


def test_a_state_of_other_data_with_the_same_counts_is_refused(ds, tmp_path):
    other = str(tmp_path / "other")
    write_test_shards(other, SIZES, compact=True, audio=False, image_px=(8, 12), seed=1)
    state = wdstream.make_loader(ds, cfg()).state_dict()
    renamed = str(tmp_path / "renamed")  # the same data under other shard names
    os.makedirs(renamed)
    head = json.loads(open(os.path.join(ds, "manifest.json")).read())
    names = head["shards"]["names"].split("\n")
    for name in names:
        idx = name.rsplit(".", 1)[0] + ".idx"
        for f in (name, idx):
            os.link(os.path.join(ds, f), os.path.join(renamed, "x" + f))
    head["shards"]["names"] = "\n".join("x" + n for n in names)
    head.pop("details")
    with open(os.path.join(renamed, "manifest.json"), "w") as f:
        json.dump(head, f)
    with pytest.raises(ConfigError, match="other data"):
        wdstream.make_loader(renamed, cfg()).load_state_dict(state)
    wdstream.make_loader(other, cfg()).load_state_dict(state)  # same names: accepted


def test_a_state_without_fingerprint_loads_with_one_warning(ds, caplog):
    state = wdstream.make_loader(ds, cfg()).state_dict()
    del state["fingerprint"]
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        wdstream.make_loader(ds, cfg()).load_state_dict(state)
    assert sum("no fingerprint" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    "change, field",
    [
        ({"epoch": "3"}, "epoch"),
        ({"epoch": -1}, "epoch"),
        ({"runs": "x"}, "runs"),
        ({"runs": []}, "runs"),
        ({"runs": [{"world": 1}]}, "runs[0].workers"),
        (
            {
                "runs": [
                    {"world": 1, "workers": 1.5, "batch_size": 4, "cache_size": 12, "batches": 1}
                ]
            },
            "runs[0].workers",
        ),
        (
            {
                "runs": [
                    {"world": 1, "workers": True, "batch_size": 4, "cache_size": 12, "batches": 1}
                ]
            },
            "runs[0].workers",
        ),
        (
            {
                "runs": [
                    {
                        "world": 1,
                        "workers": 100000000,
                        "batch_size": 4,
                        "cache_size": 12,
                        "batches": 1,
                    }
                ]
            },
            "runs[0].workers",
        ),
        (
            {
                "runs": [
                    {"world": 1, "workers": 1, "batch_size": 4, "cache_size": 12, "batches": 10**6}
                ]
            },
            "runs",
        ),
        (
            {
                "runs": [
                    {
                        "world": 1,
                        "workers": 1,
                        "batch_size": 4,
                        "cache_size": 12,
                        "drop_last": "yes",
                        "batches": 1,
                    }
                ]
            },
            "runs[0].drop_last",
        ),
        ({"version": 9}, "version"),
    ],
)
def test_malformed_states_are_a_config_error_naming_the_field(ds, change, field):
    state = {**wdstream.make_loader(ds, cfg()).state_dict(), **change}
    with pytest.raises(ConfigError) as err:
        wdstream.make_loader(ds, cfg()).load_state_dict(state)
    assert err.value.key == field, err.value


CHILD = """
import json, resource, sys
import wdstream
loader = wdstream.make_loader(sys.argv[1], wdstream.Config(batch_size=4, num_workers=0,
                              cache_size=12, vision_dim=16, max_audio_length=200))
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 1536 * 2**20, size + 1536 * 2**20))
state = loader.state_dict()
for run in json.loads(sys.argv[2]):
    try:
        loader.load_state_dict({**state, "runs": [run]})
        print("ACCEPTED")
    except wdstream.ConfigError as exc:
        print("REFUSED", exc.key)
"""


def test_a_few_hundred_bytes_of_state_never_cost_gigabytes(ds):
    """Run in a child under RLIMIT_AS (1.5 GB above what it uses after its imports), so a
    blow-up fails the test instead of the machine."""
    runs = [
        {
            "world": 4096,
            "workers": 64,
            "batch_size": 1,
            "cache_size": 2**31,
            "lanes": 0,
            "batches": 2**40,
        },
        {"world": 2**18, "workers": 1, "batch_size": 1, "cache_size": 2**31, "batches": 0},
        {
            "world": 1,
            "workers": 4096,
            "batch_size": 2**24,
            "cache_size": 2**31,
            "lanes": 2**16,
            "batches": 2**48,
        },
    ]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, ds, json.dumps(runs)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # more batches than the epoch has: refused; 2**18 slots that took nothing yet: planned
    assert out.stdout.split() == ["REFUSED", "runs", "ACCEPTED", "REFUSED", "runs"]
