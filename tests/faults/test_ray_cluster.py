"""A simulated two-node Ray cluster (``ray.cluster_utils.Cluster``), reached through the CLI's
``--ray-address``: the worker node is removed (killed, not drained) while partitions run on
it, and the job still finishes, with the same shards and sha256s as a local run.

The cluster's workers get tests/faults/slow_site on their PYTHONPATH and a row delay, so the
partitions are still running when the node goes."""

from __future__ import annotations

import os
import threading
import time

import pytest

from wdstream.format.manifest import load_manifest
from wdstream.write.convert import convert

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SLOW_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slow_site")


def _shards(manifest):
    return [(s.url, s.samples, s.bytes, s.sha256) for s in manifest.shards]


def test_node_removed_mid_job_the_job_still_finishes(small_hf_dataset, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from wdstream.cli import main

    if ray.is_initialized():
        ray.shutdown()
    env = {
        "PYTHONPATH": os.pathsep.join([SLOW_SITE, os.environ.get("PYTHONPATH", "")]),
        "WDSTREAM_TEST_ROW_DELAY": "0.1",
    }
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "env_vars": env, "include_dashboard": False},
    )
    try:
        worker_node = cluster.add_node(num_cpus=1, env_vars=env)
        cluster.wait_for_nodes()
        out = str(tmp_path / "ray")
        removed = threading.Event()

        def remove_when_running():
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                names = os.listdir(out) if os.path.isdir(out) else []
                if any(n.startswith(".shard-") or n.startswith("shard-") for n in names):
                    cluster.remove_node(worker_node, allow_graceful=False)
                    removed.set()
                    return
                time.sleep(0.02)

        remover = threading.Thread(target=remove_when_running, daemon=True)
        remover.start()
        assert (
            main(
                [
                    "convert",
                    small_hf_dataset,
                    out,
                    "--ray-address",
                    cluster.address,
                    "--max-samples-per-shard",
                    "5",
                    "--quiet",
                ]
            )
            == 0
        )
        remover.join(timeout=10)
        assert removed.is_set()  # the node really went while the job ran
        assert not cluster.worker_nodes
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    local = convert(
        small_hf_dataset, str(tmp_path / "local"), max_samples_per_shard=5, workers=1, quiet=True
    )
    m = load_manifest(out)
    assert m.samples == local.samples == 48
    assert _shards(m) == _shards(local)
    names = os.listdir(out)
    assert not [n for n in names if ".partial-" in n], names
