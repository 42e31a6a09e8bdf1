"""The CLI's answer to bad input: a one-line error and exit 2, never a traceback or a silent
success (through ``wdstream.cli.main``)."""

from __future__ import annotations

import pytest

from wdstream.cli import main


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out + out.err


def test_missing_config_file(small_hf_dataset, tmp_path, capsys, caplog):
    code, text = _run(
        [
            "convert",
            small_hf_dataset,
            str(tmp_path / "o"),
            "--config",
            str(tmp_path / "missing.yaml"),
        ],
        capsys,
    )
    assert code == 2
    assert "missing.yaml" in caplog.text and "cannot read config file" in caplog.text
    assert not (tmp_path / "o").exists()


def test_config_file_that_is_not_yaml(small_hf_dataset, tmp_path, capsys, caplog):
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers: [1,\n")
    code, _ = _run(["convert", small_hf_dataset, str(tmp_path / "o"), "--config", str(bad)], capsys)
    assert code == 2 and "not valid YAML" in caplog.text


def test_inspect_of_a_broken_tar(tmp_path, capsys, caplog):
    shard = tmp_path / "broken.tar"
    shard.write_bytes(b"this is not a tar archive at all" * 40)
    code, _ = _run(["inspect", str(shard)], capsys)
    assert code == 2
    assert "broken.tar is not a readable tar shard" in caplog.text


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--limit", "-1"], "--limit"),
        (["--limit", "0"], "--limit"),
        (["--workers", "-3"], "--workers"),
        (["--workers", "two"], "--workers"),
        (["--max-samples-per-shard", "0"], "--max-samples-per-shard"),
        (["--validate", "maybe"], "--validate"),
    ],
)
def test_bad_numbers_are_usage_errors(argv, words, small_hf_dataset, tmp_path, capsys):
    code, text = _run(["convert", small_hf_dataset, str(tmp_path / "o"), *argv], capsys)
    assert code == 2 and words in text
    assert not (tmp_path / "o").exists()


def test_bad_values_in_a_config_file_are_errors(small_hf_dataset, tmp_path, capsys, caplog):
    for text in ("limit: -1\n", "workers: -3\n"):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(text)
        code, _ = _run(
            ["convert", small_hf_dataset, str(tmp_path / "o"), "--config", str(cfg)], capsys
        )
        assert code == 2 and text.split(":")[0] in caplog.text
    assert not (tmp_path / "o").exists()


def test_workers_zero_means_one_per_cpu_and_help_says_so(capsys):
    from wdstream.config import Config
    from wdstream.write.executors import make_executor

    code, text = _run(["convert", "--help"], capsys)
    assert code == 0 and "0: one per CPU core" in " ".join(text.split())
    import os

    assert make_executor(Config(workers=0)).workers == (os.cpu_count() or 1)
    assert make_executor(Config(executor="ray", workers=0)).num_cpus is None  # all, not none


def test_unknown_log_level(capsys):
    code, text = _run(["--log-level", "NOPE", "inspect", "x"], capsys)
    assert code == 2 and "NOPE" in text and "DEBUG" in text
    code, _ = _run(["--log-level", "debug", "inspect", "--help"], capsys)
    assert code == 0  # levels are case-insensitive


@pytest.mark.parametrize("command", ["verify", "inspect", "preview", "upgrade"])
def test_a_manifest_naming_shards_outside_its_folder_needs_allowed_prefix(
    command, tmp_path, capsys, caplog
):
    """verify, inspect, preview and upgrade read a manifest as the reader does: shards
    outside its folder are refused (exit 2, one line) unless ``--allowed-prefix`` allows
    them."""
    from helpers import write_outside_manifest

    meta, prefix = write_outside_manifest(str(tmp_path))
    extra = ["--out", str(tmp_path / "p.png")] if command == "preview" else []
    caplog.clear()
    code, _ = _run([command, meta, *extra], capsys)
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "shards[0].url" in errors[0] and "allowed_prefixes" in errors[0]
    assert not (tmp_path / "p.png").exists()
    code, text = _run(
        [command, meta, "--allowed-prefix", "/elsewhere/", "--allowed-prefix", prefix, *extra],
        capsys,
    )
    assert code == 0
    if command == "verify":
        assert "OK: 2 shards, 6 samples match the manifest" in text
    elif command == "inspect":
        assert "samples: 6" in text and "sample 00000_000000000" in text
    elif command == "upgrade":
        assert "rewritten as version 2" in text
    else:
        assert (tmp_path / "p.png").exists()


def _one_error(caplog) -> str:
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return errors[0]


def _v1_shard(**changes) -> dict:
    shard = {"url": "s.tar", "samples": 3, "bytes": 10240, "sha256": "a" * 64, **changes}
    return {"format": "wdstream-manifest", "version": 1, "shards": [shard]}


@pytest.mark.parametrize(
    "manifest, field",
    [
        ({"version": 1, "shards": [1]}, "shards[0]"),
        (_v1_shard(url=None), "shards[0].url"),
        ({"shards": [{"samples": 3, "bytes": 10240, "sha256": "a"}]}, "shards[0].url"),
        (_v1_shard(samples="x"), "shards[0].samples"),
        (_v1_shard(bytes="x", samples=300_000_000), "shards[0].bytes"),
        ({**_v1_shard(samples=300_000_000, bytes=300_000_000 * 512)}, "shards[0].samples"),
        (_v1_shard(url="a\nb.tar"), "shards[0].url"),
        (_v1_shard(index="s\n.idx"), "shards[0].index"),
        (_v1_shard(url="../s.tar"), "shards[0].url"),
        ({"version": 7, "shards": []}, "version"),
    ],
)
def test_upgrade_refuses_a_malformed_manifest_in_one_line(
    tmp_path, capsys, caplog, manifest, field
):
    """Item 13: upgrade checks its input as load_manifest does (tracebacks before, and an
    invalid version 1 became an accepted version 2); nothing is written."""
    import json

    text = json.dumps(manifest)
    (tmp_path / "manifest.json").write_text(text)
    code, _ = _run(["upgrade", str(tmp_path)], capsys)
    assert code == 2
    assert f"'{field}'" in _one_error(caplog)
    assert (tmp_path / "manifest.json").read_text() == text
    assert not (tmp_path / "manifest.details.json").exists()


def test_upgrade_reads_a_manifest_only_up_to_its_bound(tmp_path, capsys, caplog):
    import os

    os.symlink("/dev/zero", tmp_path / "manifest.json")  # read whole, it would never end
    code, _ = _run(["upgrade", str(tmp_path)], capsys)
    assert code == 2 and "larger than" in _one_error(caplog)


@pytest.mark.parametrize("command", ["verify", "inspect", "upgrade"])
@pytest.mark.parametrize(
    "key, value, field",
    [("names", 123, "shards.names"), ("index", 7, "shards.index"), ("count", None, "shards.count")],
)
def test_version_2_type_errors_exit_2_naming_the_field(
    tmp_path, capsys, caplog, command, key, value, field
):
    """Item 14: ``names: 123`` or an int ``index`` were an AttributeError traceback, exit 1."""
    import json

    from wdstream.write.sources.synthetic import write_synthetic

    write_synthetic(str(tmp_path), 6, seed=1, max_samples_per_shard=3)
    head = json.loads((tmp_path / "manifest.json").read_text())
    head["shards"][key] = value
    (tmp_path / "manifest.json").write_text(json.dumps(head))
    code, _ = _run([command, str(tmp_path)], capsys)
    assert code == 2
    assert f"'{field}'" in _one_error(caplog)
