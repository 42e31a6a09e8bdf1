"""The reader at scale in CI: a 100M-sample compact manifest (10k shards of 10k), world
2048 x 8 workers. Rank 0 worker 0's plan, ``len()`` and an elastic resume run in a fresh
subprocess so that its peak RSS is its own; the growth must stay far below what a
per-sample plan needs (about 2 GB here). No timing thresholds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARDS, PER_SHARD = 10_000, 10_000

SCRIPT = textwrap.dedent("""
    import json, pickle, resource, sys
    import wdstream
    from wdstream.read.tokenizer import load_tokenizer

    def rss_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def config(**kw):
        return wdstream.Config(batch_size=32, cache_size=1000, num_workers=8, **kw)

    def worker_plan(dataset):  # what a DataLoader worker receives and plans
        ds = pickle.loads(pickle.dumps(dataset))
        slot = ds.slot_plan(ds.epoch, 0)
        return [ds.source.shards[r.shard].url for r in slot.reads], slot.length

    big, small = sys.argv[1], sys.argv[2]
    tok = load_tokenizer("byt5")
    warm = wdstream.make_loader(small, config(), tok, rank=0, world=1)  # imports, set-up
    worker_plan(warm.dataset), len(warm), warm.load_state_dict(warm.state_dict())
    base = rss_mb()
    loader = wdstream.make_loader(big, config(), tok, rank=0, world=2048)
    urls, length = worker_plan(loader.dataset)
    batches = len(loader)
    state = loader.state_dict()
    state["runs"][-1]["batches"] = batches // 2
    resumed = wdstream.make_loader(big, config(), tok, rank=0, world=1536)
    resumed.load_state_dict(state)
    rurls, rlength = worker_plan(resumed.dataset)
    print(json.dumps({"growth_mb": rss_mb() - base, "batches": batches, "length": length,
                      "first": urls[0], "resumed_batches": len(resumed),
                      "resumed_length": rlength, "resumed_reads": len(rurls)}))
""")


def _manifest(folder, shards: int) -> str:
    names = "\n".join(f"shard-{i // 1000:05d}-{i % 1000:05d}.tar" for i in range(shards))
    head = {
        "format": "wdstream-manifest",
        "version": 2,
        "samples": shards * PER_SHARD,
        "bytes": 0,
        "source": {"name": "scale"},
        "details": "manifest.details.json",
        "shards": {
            "count": shards,
            "names": names,
            "samples": [[PER_SHARD, shards]],
            "index": {"suffix": ".idx"},
        },
    }
    os.makedirs(folder)
    path = os.path.join(folder, "manifest.json")
    with open(path, "w") as f:
        json.dump(head, f)
    return path


@pytest.mark.slow
def test_planning_100m_samples_stays_small_in_memory(tmp_path):
    big = _manifest(str(tmp_path / "big"), SHARDS)
    small = _manifest(str(tmp_path / "small"), 1)
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, big, small],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    got = json.loads(done.stdout.strip().splitlines()[-1])
    k = SHARDS * PER_SHARD // (2048 * 32)
    assert got["batches"] == k == 1525
    assert got["length"] == len(range(0, k, 8)) * 32  # worker 0's span: its batches' samples
    assert got["first"].startswith(str(tmp_path / "big" / "shard-"))
    left = SHARDS * PER_SHARD - 2048 * 32 * (k // 2)
    assert got["resumed_batches"] == left // (1536 * 32)
    assert got["resumed_length"] == len(range(0, got["resumed_batches"], 8)) * 32
    assert got["resumed_reads"] >= 1
    assert got["growth_mb"] < 200, got
