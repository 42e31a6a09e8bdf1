"""Smoke test of tools/bench_peers.py: with a tiny source and whichever peers import
in this interpreter, it converts, reads back from a local folder and the loopback S3, and writes
its table into the "Peers" section of a markdown file (other sections kept) and its plot.
The figures themselves are not checked."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "bench_peers.py")
PEERS = {"mds": "streaming", "litdata": "litdata"}


@pytest.mark.slow
@pytest.mark.s3
def test_bench_peers_writes_table_and_plot(tmp_path):
    installed = {name for name, module in PEERS.items() if importlib.util.find_spec(module)}
    systems = ["wdstream", "webdataset", "hf-parquet", *PEERS]
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    md, png = tmp_path / "benchmarks.md", tmp_path / "img" / "throughput.png"
    mark = "<!-- notes below are kept when bench_peers.py rewrites this section -->"
    md.write_text(
        "# Benchmarks\n\n## Reading\n\nkeep me\n\n## Peers\n\nold table\n\n"
        f"{mark}\n\nhand-written notes\n\n## Later\n\nkeep me too\n"
    )
    cmd = [
        sys.executable,
        TOOL,
        "--samples",
        "16",
        "--rounds",
        "1",
        "--workers",
        "0",
        "--batch-size",
        "4",
        "--stores",
        "local,s3",
        "--systems",
        ",".join(systems),
        "--cache",
        str(tmp_path / "cache"),
        "--out-md",
        str(md),
        "--out-png",
        str(png),
        "--timeout",
        "300",
        "--wdstream-set",
        "cache_size=8",
    ]
    if not has_matplotlib:
        cmd.append("--no-plot")
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    text = md.read_text()
    assert "## Reading\n\nkeep me\n" in text and "## Later\n\nkeep me too\n" in text
    assert "old table" not in text and text.count("## Peers") == 1
    assert f"{mark}\n\nhand-written notes\n\n## Later" in text
    peers = text.split("## Peers", 1)[1].split("## Later", 1)[0]
    assert "tools/bench_peers.py --samples 16" in peers  # the exact command
    assert "--wdstream-set cache_size=8" in peers  # an ablation is part of the command
    rows = [line.split("|")[1:-1] for line in peers.splitlines() if line.startswith("| ")]
    read_rows = [r for r in rows if len(r) == 15 and r[0].strip() in systems]
    for store in ("local", "s3"):
        for name in systems:  # every system keeps its row, installed or not
            row = next(r for r in read_rows if r[0].strip() == name and r[1].strip() == store)
            if name in PEERS and name not in installed:
                assert "not installed" in row[3]
            else:  # a measured rate and its ratio to wdstream, and the CPU it took
                assert float(row[3]) > 0, row
                assert row[5].strip().endswith("×"), row
                assert float(row[11]) > 0 and row[12].strip().endswith("×"), row
        wd = next(r for r in read_rows if r[0].strip() == "wdstream" and r[1].strip() == store)
        assert wd[5].strip() == "1.00×"
    for name in set(PEERS) - installed:  # the output says what is missing and how to get it
        assert f"{name}: " in run.stdout and "install" in run.stdout
    if has_matplotlib:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not png.exists()


def _tool():
    spec = importlib.util.spec_from_file_location("bench_peers", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_wdstream_set_takes_config_settings_as_yaml():
    tool = _tool()
    assert tool._settings(["cache_size=100", "shuffle_lanes=1", "pin_memory=false"]) == {
        "cache_size": 100,
        "shuffle_lanes": 1,
        "pin_memory": False,
    }
    for bad in ("cache_sise=100", "cache_size"):
        with pytest.raises(ValueError, match=bad):
            tool._settings([bad])
