"""The reader against a real S3 endpoint on loopback (moto server over HTTP): ranged reads
that start mid-shard, and multi-rank runs under torchrun with a mid-epoch resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from helpers import write_test_shards

import wdstream
from wdstream.format.index import parse_index
from wdstream.format.schema import make_key

pytestmark = pytest.mark.s3
HERE = os.path.join(os.path.dirname(__file__), os.pardir)  # tests/, where scripts/ lives


def test_slot_starting_mid_shard_reads_only_from_its_offset(s3, s3_proxy):
    """Counted at the S3 test proxy, which serves ranged GETs from its own copy of each
    object, as S3 does: a slot that starts mid-shard downloads only its span."""
    opts = s3["storage_options"]
    m = write_test_shards(
        "s3://test/big", [64], storage_options=opts, audio=False, image_px=(200, 260)
    )
    shard = m.shards[0]
    index = parse_index(s3["fs"].cat_file(f"test/big/{shard.index}"), 64)  # binary index
    keys_all = [make_key(0, row) for row in range(64)]
    start = int(index["offsets"][32])  # rank 1 of 2 starts at sample 32 of the one shard
    assert start > shard.bytes / 3
    proxy, via_proxy = s3_proxy
    block = 32 * 1024
    config = wdstream.Config(
        batch_size=4,
        num_workers=0,
        cache_size=8,
        vision_dim=16,
        max_text_length=16,
        storage_options=via_proxy,
        read_block_size=block,
        shuffle=False,
    )
    keys = [
        k for b in wdstream.make_loader("s3://test/big", config, rank=1, world=2) for k in b["keys"]
    ]
    assert keys == keys_all[32:]
    fetched = proxy.counts["/test/big/" + shard.url]
    assert fetched <= shard.bytes - start + 2 * block  # its span, plus read-ahead
    assert fetched < shard.bytes - start / 2  # the first part was never downloaded
    proxy.counts.clear()
    keys0 = [
        k for b in wdstream.make_loader("s3://test/big", config, rank=0, world=2) for k in b["keys"]
    ]
    assert keys0 == keys_all[:32]
    assert proxy.counts["/test/big/" + shard.url] <= start + 2 * block  # stops at its end


def test_full_path_s3_two_workers_shapes_keys(s3):
    opts = s3["storage_options"]
    m = write_test_shards("s3://test/ds", [9, 14, 5], storage_options=opts)
    config = wdstream.Config(
        batch_size=4,
        num_workers=2,
        cache_size=8,
        vision_dim=24,
        max_audio_length=300,
        max_text_length=24,
        storage_options=opts,
    )
    loader = wdstream.make_loader("s3://test/ds/manifest.json", config)
    batches = list(loader)
    keys = [k for b in batches for k in b["keys"]]
    assert len(batches) == len(loader) == 7
    assert len(set(keys)) == 28
    assert batches[0]["pixel_values"].shape == (4, 3, 24, 24)
    assert batches[0]["audio"].shape == (4, 300)
    assert m.samples == 28


def torchrun(args, env_extra=None, nproc=2):
    env = {**os.environ, **(env_extra or {})}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        os.path.join(HERE, "scripts", "ddp_reader.py"),
        *args,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.torchrun
def test_torchrun_two_ranks_equal_batches_disjoint_keys(s3, tmp_path):
    opts = s3["storage_options"]
    m = write_test_shards("s3://test/tr", [30, 3, 18], storage_options=opts, audio=False)
    torchrun(
        ["s3://test/tr", str(tmp_path), "--workers", "2", "--storage-options", json.dumps(opts)]
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == ranks[0]["len"] == 51 // 8
    keys = [set(k for b in r["batches"] for k in b) for r in ranks]
    assert not keys[0] & keys[1]
    assert m.samples - len(keys[0] | keys[1]) == 51 % 8


@pytest.mark.slow
@pytest.mark.torchrun
def test_torchrun_stop_then_resume_on_one_rank_three_workers(s3, tmp_path):
    """Run 1: 2 ranks x 2 workers stop at step 3 and save; run 2: 1 rank x 3 workers resumes.
    Union of keys = the manifest's keys, each once, apart from the documented drop."""
    opts = s3["storage_options"]
    m = write_test_shards("s3://test/rs", [25, 11, 30], storage_options=opts, audio=False)
    all_keys = [make_key(p, row) for p, s in enumerate(m.shards) for row in range(s.samples)]
    run1, run2 = tmp_path / "run1", tmp_path / "run2"
    run1.mkdir()
    run2.mkdir()
    torchrun(
        [
            "s3://test/rs",
            str(run1),
            "--workers",
            "2",
            "--stop",
            "3",
            "--storage-options",
            json.dumps(opts),
        ]
    )
    torchrun(
        [
            "s3://test/rs",
            str(run2),
            "--workers",
            "3",
            "--resume",
            str(run1 / "state.json"),
            "--storage-options",
            json.dumps(opts),
        ],
        nproc=1,
    )
    seen = []
    for r in range(2):
        seen += [k for b in json.loads((run1 / f"rank{r}.json").read_text())["batches"] for k in b]
    assert len(seen) == 2 * 3 * 4
    seen += [k for b in json.loads((run2 / "rank0.json").read_text())["batches"] for k in b]
    counts = Counter(seen)
    assert max(counts.values()) == 1
    assert set(counts) <= set(all_keys)
    assert len(all_keys) - len(counts) < 4  # dropped: fewer than world*batch of run 2


@pytest.mark.slow
@pytest.mark.torchrun
def test_same_seed_same_batches_across_fresh_runs(s3, tmp_path):
    opts = s3["storage_options"]
    write_test_shards("s3://test/det", [13, 20], storage_options=opts, audio=False)
    outs = []
    for i in range(2):
        out = tmp_path / f"r{i}"
        out.mkdir()
        torchrun(
            ["s3://test/det", str(out), "--workers", "2", "--storage-options", json.dumps(opts)]
        )
        outs.append([json.loads((out / f"rank{r}.json").read_text())["batches"] for r in range(2)])
    assert outs[0] == outs[1]
