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
def test_demo_runs_end_to_end_on_loopback_s3(tmp_path, capsys, caplog):
    rc = main(["demo", "--workdir", str(tmp_path), "--samples", "48", "--steps", "3", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, out
    assert "loopback S3 at http://127.0.0.1:" in out
    assert "48 samples" in out
    assert "verify      : 4 of 4 shards match the manifest" in out
    assert "train       : 3 steps" in out
    assert (tmp_path / "preview.png").stat().st_size > 1000
    assert "Hub not reachable" in out  # HF_HUB_OFFLINE=1 in tests: said in one line
    assert out.count("Hub not reachable") == 1 and "Hub not reachable" not in caplog.text
    assert "Creating parquet" not in err + out  # no `datasets` progress bars
    assert "several extensions" not in caplog.text  # the demo names every image .jpg


@pytest.mark.slow
def test_demo_local_store(tmp_path, capsys):
    assert (
        main(
            [
                "demo",
                "--workdir",
                str(tmp_path),
                "--samples",
                "24",
                "--steps",
                "2",
                "--store",
                "local",
                "--quiet",
            ]
        )
        == 0
    )
    assert (tmp_path / "shards" / "manifest.json").exists()


@pytest.mark.slow
@pytest.mark.torchrun
def test_train_example_under_torchrun_two_ranks_with_checkpoint_resume(tmp_path):
    from wdstream.write.sources.synthetic import write_synthetic

    write_synthetic(str(tmp_path / "shards"), 96, max_samples_per_shard=20)
    ckpt = tmp_path / "ckpt.pt"
    base = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        os.path.join(ROOT, "tools", "train_example.py"),
        str(tmp_path / "shards"),
        "--set",
        "batch_size=4",
        "--set",
        "num_workers=1",
        "--set",
        "vision_dim=32",
        "--set",
        "max_audio_length=800",
        "--checkpoint",
        str(ckpt),
        "--save-every",
        "3",
    ]
    first = subprocess.run(base + ["--steps", "3"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "done: 3 steps" in first.stdout and ckpt.exists()
    second = subprocess.run(base + ["--steps", "6"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed at step 3, epoch 0" in second.stdout
    assert "done: 6 steps" in second.stdout


def test_train_example_goes_on_into_the_next_epoch_until_steps(tmp_path):
    """One process, no torchrun: 40 samples / (batch 4 x 1 rank) = 10 steps an epoch;
    --steps 14 goes on into epoch 1 and says why it stopped; --epochs 1 stops at the end of
    epoch 0."""
    from wdstream.write.sources.synthetic import write_synthetic

    write_synthetic(str(tmp_path / "shards"), 40, max_samples_per_shard=20, modalities=("text",))
    base = [
        sys.executable,
        os.path.join(ROOT, "tools", "train_example.py"),
        str(tmp_path / "shards"),
        "--set",
        "batch_size=4",
        "--set",
        "num_workers=0",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    run = subprocess.run(
        base + ["--steps", "14"], capture_output=True, text=True, timeout=300, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "end of epoch 0 (10 steps)" in run.stdout
    assert "done: 14 steps" in run.stdout and "stopped: reached --steps 14" in run.stdout
    capped = subprocess.run(
        base + ["--steps", "14", "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert capped.returncode == 0, capped.stderr[-3000:]
    assert "done: 10 steps" in capped.stdout
    assert "stopped: end of --epochs 1 before --steps 14" in capped.stdout
