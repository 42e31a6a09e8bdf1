"""The installable package: a wheel built from this checkout, installed into a fresh venv (on
top of the test venv's packages, ``--no-deps``), works outside the checkout: the registry and
the default config ship inside it, ``--registry`` overrides the registry, and
``python -m wdstream`` is the command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def test_package_data_is_the_configs_folder():
    """``wdstream/data/*.yaml`` (what the wheel ships) are links to ``configs/`` (what people
    edit), so the two can never differ."""
    for name in ("datasets.yaml", "default.yaml"):
        shipped = os.path.join(ROOT, "wdstream", "data", name)
        assert os.path.realpath(shipped) == os.path.realpath(os.path.join(ROOT, "configs", name))


def _run(cmd, cwd, env, timeout=300):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


def _parquet_registry(tmp_path) -> str:
    import datasets

    entries = {}
    for name, rows in (("instruct_a", 5), ("instruct_b", 3)):
        folder = tmp_path / "sources" / name / "data"
        folder.mkdir(parents=True)
        datasets.Dataset.from_dict(
            {
                "instruction": [f"{name} task {i}" for i in range(rows)],
                "output": [f"answer {i}" for i in range(rows)],
            }
        ).to_parquet(str(folder / "train-0.parquet"))
        entries[name] = {
            "hub_id": str(folder.parent),
            "task_types": ["code"],
            "text_template": "{instruction}\n{output}",
            "columns": ["instruction", "output"],
        }
    reg = tmp_path / "my-registry.yaml"
    reg.write_text(json.dumps({"datasets": entries}))
    return str(reg)


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_outside_the_checkout(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv*",
            "__pycache__",
            "build",
            "dist",
            "*.egg-info",
            ".pytest_cache",
            ".ruff_cache",
            ".hypothesis",
            ".bench",
            ".gl",
            ".whl",
            "wdstream-demo-out",
        ),
    )
    wheels = tmp_path / "wheels"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "WDSTREAM_DATASETS", "VIRTUAL_ENV")
    }
    env.update(
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(src),
        ],
        tmp_path,
        env,
    )
    (wheel,) = wheels.glob("wdstream-*.whl")
    with zipfile.ZipFile(wheel) as z:
        for name in ("datasets.yaml", "default.yaml"):
            with open(os.path.join(ROOT, "configs", name), "rb") as f:
                assert z.read(f"wdstream/data/{name}") == f.read()

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    py = str(venv / "bin" / "python")
    purelib = _run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env
    ).stdout.strip()
    with open(os.path.join(purelib, "test-venv.pth"), "w") as f:  # torch, datasets, pip...
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    _run([py, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], tmp_path, env)
    work = tmp_path / "elsewhere"
    work.mkdir()
    wdstream = str(venv / "bin" / "wdstream")

    out = _run(
        [
            py,
            "-c",
            "import wdstream, wdstream.registry as r; c = wdstream.load_config(); "
            "print(wdstream.__file__); print(r.registry_path()); "
            "print(c == wdstream.Config(), 'open_platypus' in r.get_registry())",
        ],
        work,
        env,
    ).stdout.split("\n")
    assert out[0].startswith(purelib) and out[1].startswith(purelib)
    assert out[2] == "True True"

    reg = _parquet_registry(tmp_path)
    _run(
        [
            wdstream,
            "convert",
            "instruct_a",
            str(tmp_path / "one"),
            "--registry",
            reg,
            "--workers",
            "1",
            "--quiet",
        ],
        work,
        env,
    )
    assert json.loads((tmp_path / "one" / "manifest.json").read_text())["samples"] == 5
    _run(
        [
            wdstream,
            "convert",
            "--task-type",
            "code",
            "--all",
            str(tmp_path / "all"),
            "--workers",
            "1",
            "--quiet",
        ],
        work,
        {**env, "WDSTREAM_DATASETS": reg},
    )
    for name, n in (("instruct_a", 5), ("instruct_b", 3)):
        assert json.loads((tmp_path / "all" / name / "manifest.json").read_text())["samples"] == n

    helptext = _run([py, "-m", "wdstream", "--help"], work, env).stdout
    assert "convert" in helptext and "index" in helptext
    bad = subprocess.run(
        [wdstream, "convert", "open_platypu", str(tmp_path / "x")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "Did you mean 'open_platypus'?" in bad.stderr
    assert not (tmp_path / "x").exists()
