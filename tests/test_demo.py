"""The README's main job (``wdstream demo``) and tools/train_example.py under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from wdstream.cli import main

ROOT = os.path.dirname(os.path.dirname(__file__))


@pytest.mark.slow
@pytest.mark.s3
def test_demo_runs_end_to_end_on_loopback_s3(tmp_path, capsys):
    rc = main(["demo", "--workdir", str(tmp_path), "--samples", "48", "--steps", "3",
               "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "loopback S3 at http://127.0.0.1:" in out
    assert "48 samples" in out
    assert "verify      : 4 of 4 shards match the manifest" in out
    assert "train       : 3 steps" in out
    assert (tmp_path / "preview.png").stat().st_size > 1000
    assert "Hub not reachable" in out  # HF_HUB_OFFLINE=1 in tests: said in one line


@pytest.mark.slow
def test_demo_local_store(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--samples", "24", "--steps", "2",
                 "--store", "local", "--quiet"]) == 0
    assert (tmp_path / "shards" / "manifest.json").exists()


@pytest.mark.slow
@pytest.mark.torchrun
def test_train_example_under_torchrun_two_ranks_with_checkpoint_resume(tmp_path):
    from wdstream.write.sources.synthetic import write_synthetic

    write_synthetic(str(tmp_path / "shards"), 96, max_samples_per_shard=20)
    ckpt = tmp_path / "ckpt.pt"
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            os.path.join(ROOT, "tools", "train_example.py"), str(tmp_path / "shards"),
            "--set", "batch_size=4", "--set", "num_workers=1", "--set", "vision_dim=32",
            "--set", "max_audio_length=800", "--checkpoint", str(ckpt), "--save-every", "3"]
    first = subprocess.run(base + ["--steps", "3"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "done: 3 steps" in first.stdout and ckpt.exists()
    second = subprocess.run(base + ["--steps", "6"], capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed at step 3, epoch 0" in second.stdout
    assert "done: 6 steps" in second.stdout
