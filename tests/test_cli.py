"""The convert, synth, inspect and verify commands, through ``wdstream.cli.main``."""

from __future__ import annotations

import json
import os

import pytest

from wdstream.cli import main
from wdstream.cli.options import parse_size, parse_storage_options
from wdstream.errors import ConfigError
from wdstream.format.manifest import load_manifest


def test_parse_size():
    assert parse_size("256MB") == 256_000_000
    assert parse_size("1GiB") == 2**30
    assert parse_size("512 KiB") == 512 * 1024
    assert parse_size("4096") == 4096
    assert parse_size("1.5MB") == 1_500_000
    for bad in ("12XB", "", "MB", "-1MB", "0"):
        with pytest.raises(ConfigError):
            parse_size(bad)


def test_parse_storage_options():
    opts = parse_storage_options(
        [
            "endpoint_url=http://127.0.0.1:9000",
            "anon=false",
            "default_block_size=5242880",
            "client_kwargs.region_name=x",
            "key=AK",
        ]
    )
    assert opts == {
        "endpoint_url": "http://127.0.0.1:9000",
        "anon": False,
        "default_block_size": 5242880,
        "key": "AK",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "x"},
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_storage_options(["novalue"])


def test_convert_command_local(small_hf_dataset, tmp_path, capsys):
    out = str(tmp_path / "o")
    rc = main(
        [
            "convert",
            small_hf_dataset,
            out,
            "--max-samples-per-shard",
            "10",
            "--max-shard-bytes",
            "1MB",
            "--workers",
            "1",
            "--quiet",
            "--text-column",
            "text",
            "--text-column",
            "label",
        ]
    )
    assert rc == 0
    assert "48 samples" in capsys.readouterr().out
    assert json.loads(open(os.path.join(out, "manifest.json")).read())["version"] == 2
    m = load_manifest(out).to_dict()  # the compact form read back in full
    assert m["samples"] == 48 and m["options"]["max_shard_bytes"] == 1_000_000
    assert m["options"]["columns"]["text"] == ["text", "label"]
    assert [s["samples"] for s in m["shards"]] == [10, 2] * 4


def test_convert_command_with_yaml_and_errors(small_hf_dataset, tmp_path, capsys, caplog):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_samples_per_shard: 6\nworkers: 1\nquiet: true\n")
    out = str(tmp_path / "o")
    assert main(["convert", small_hf_dataset, out, "--config", str(cfg)]) == 0
    assert (
        json.loads(open(os.path.join(out, "manifest.json")).read())["options"][
            "max_samples_per_shard"
        ]
        == 6
    )
    rc = main(
        [
            "convert",
            small_hf_dataset,
            str(tmp_path / "o2"),
            "--audio-column",
            "sound",
            "--quiet",
            "--workers",
            "1",
        ]
    )
    assert rc == 2
    assert "'sound' does not exist" in caplog.text
    cfg.write_text("max_sample_per_shard: 6\n")
    assert main(["convert", small_hf_dataset, out, "--config", str(cfg)]) == 2
    assert "max_samples_per_shard" in caplog.text


@pytest.mark.s3
def test_convert_command_s3_with_endpoint_option(small_hf_dataset, s3):
    rc = main(
        [
            "convert",
            small_hf_dataset,
            "s3://test/cli",
            "--workers",
            "1",
            "--quiet",
            "--storage-option",
            f"endpoint_url={s3['endpoint']}",
            "--storage-option",
            "key=testing",
            "--storage-option",
            "secret=testing",
        ]
    )
    assert rc == 0
    m = json.loads(s3["fs"].cat_file("test/cli/manifest.json"))
    assert m["samples"] == 48
    assert (
        main(["verify", "s3://test/cli", "--storage-option", f"endpoint_url={s3['endpoint']}"]) == 0
    )


def test_synth_same_seed_same_bytes(tmp_path, capsys):
    a, b, c = (str(tmp_path / n) for n in "abc")
    assert main(["synth", a, "--samples", "12", "--seed", "3", "--max-samples-per-shard", "5"]) == 0
    assert main(["synth", b, "--samples", "12", "--seed", "3", "--max-samples-per-shard", "5"]) == 0
    assert (
        main(
            [
                "synth",
                c,
                "--samples",
                "12",
                "--seed",
                "4",
                "--max-samples-per-shard",
                "5",
                "--modalities",
                "text,image",
            ]
        )
        == 0
    )
    ma, mb, mc = (load_manifest(x).to_dict() for x in (a, b, c))
    assert ma["samples"] == 12 and len(ma["shards"]) == 3
    assert [s["sha256"] for s in ma["shards"]] == [s["sha256"] for s in mb["shards"]]
    assert [s["sha256"] for s in ma["shards"]] != [s["sha256"] for s in mc["shards"]]
    assert set(ma["fields"]) == {"txt", "jpg", "wav", "json"}
    assert set(mc["fields"]) == {"txt", "jpg", "json"}
    assert main(["synth", a, "--samples", "3", "--modalities", "smell"]) == 2


def test_inspect_prints_summary_and_samples(small_hf_dataset, tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["convert", small_hf_dataset, out, "--workers", "1", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["inspect", out, "--samples", "2"]) == 0
    text = capsys.readouterr().out
    assert "samples: 48" in text and "shards: 4" in text
    assert "sample 00000_000000000" in text and "sample 00000_000000001" in text
    assert "sample 00000_000000002" not in text
    assert ".jpg:" in text and "JPEG" in text and "x" in text.split(".jpg:")[1].split("\n")[0]
    assert ".flac:" in text and "16000 Hz" in text
    assert ".txt:" in text and "sample 0:" in text
    shard = os.path.join(out, "shard-00001-00000.tar")
    assert main(["inspect", shard, "--samples", "1"]) == 0
    assert "sample 00001_000000000" in capsys.readouterr().out


def test_verify_ok_then_names_the_bad_shard(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["synth", str(out), "--samples", "9", "--max-samples-per-shard", "3"]) == 0
    assert main(["verify", str(out)]) == 0
    assert "OK: 3 shards, 9 samples" in capsys.readouterr().out
    shard = out / "shard-00000-00001.tar"
    blob = bytearray(shard.read_bytes())
    blob[700] ^= 0xFF  # a flipped bit inside member data: count unchanged, sha256 differs
    shard.write_bytes(bytes(blob))
    assert main(["verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert "shard-00000-00001.tar" in err and "sha256" in err
    assert "shard-00000-00000.tar" not in err
    # a truncated shard: fewer samples or unreadable, named too
    shard2 = out / "shard-00000-00002.tar"
    shard2.write_bytes(shard2.read_bytes()[:1024])
    assert main(["verify", str(out)]) == 1
    assert "shard-00000-00002.tar" in capsys.readouterr().err


def test_upgrade_rewrites_an_old_manifest_and_the_reader_reads_it(tmp_path, capsys):
    import json

    from helpers import small_config, write_test_shards

    import wdstream

    out = tmp_path / "old"
    write_test_shards(str(out), [6, 3], audio=False)  # a version-1 manifest
    (out / "manifest.details.json").write_text("stale")  # overwritten, never read as is
    before = [b["keys"] for b in wdstream.make_loader(str(out), small_config(batch_size=3))]
    assert main(["upgrade", str(out)]) == 0
    assert "rewritten as version 2" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["version"] == 2
    assert main(["upgrade", str(out)]) == 0 and "already" in capsys.readouterr().out
    after = [b["keys"] for b in wdstream.make_loader(str(out), small_config(batch_size=3))]
    assert after == before and len(after) == 3
    assert main(["verify", str(out)]) == 0  # sha256s moved to the details part
