"""Appending a second source to a finished output (``convert(..., append=True)``, ``wdstream
convert --append``): a manifest covering both, the first job's files untouched, every sample
read once, crash-safe (a SIGKILL mid-append, then the same command, completes it), a re-run
is a no-op, and clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import wdstream
from wdstream import storage
from wdstream.cli import main
from wdstream.demo.data import build_parquet_dataset
from wdstream.errors import ConfigError
from wdstream.format.manifest import load_manifest
from wdstream.rows.source import HFSource
from wdstream.write.convert import convert
from wdstream.write.output import Output, claim_job
from wdstream.write.plan import plan_job
from wdstream.write.segments import same_source, start_append

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from faults.killing import SCRIPT, check_complete, listing  # noqa: E402
from helpers import small_config  # noqa: E402

ROWS_A, ROWS_B = 48, 30


@pytest.fixture(scope="module")
def second_dataset(tmp_path_factory):
    """30 rows in 3 parquet files (other content than ``small_hf_dataset``): 3 partitions."""
    return build_parquet_dataset(str(tmp_path_factory.mktemp("hfds_b")), ROWS_B, n_files=3, seed=1)


def _state(url, opts):
    """``{name: (sha256, mtime or ETag)}`` of every object under ``url``."""
    fs, path = storage.url_to_fs(url, opts)
    fs.invalidate_cache()
    out = {}
    for name, info in fs.find(path, detail=True).items():
        stamp = (info.get("ETag"), str(info.get("LastModified") or info.get("mtime")))
        out[name[len(path) :].lstrip("/")] = (hashlib.sha256(fs.cat_file(name)).hexdigest(), stamp)
    return out


def _loader_keys(url, opts):
    config = small_config(batch_size=2, shuffle=False, drop_last=False, storage_options=opts)
    # 78 samples: batches of 2 need no padding (drop_last=False pads by repeating)
    return [k for batch in wdstream.make_loader(url, config) for k in batch["keys"]]


def _append_and_check(a, b, url, opts):
    first = convert(a, url, max_samples_per_shard=5, workers=1, quiet=True, storage_options=opts)
    before = _state(url, opts)
    m = convert(
        b, url, max_samples_per_shard=4, workers=1, quiet=True, storage_options=opts, append=True
    )
    assert m.samples == ROWS_A + ROWS_B
    assert [s.url for s in m.shards[: len(first.shards)]] == [s.url for s in first.shards]
    assert [s.sha256 for s in m.shards[: len(first.shards)]] == [s.sha256 for s in first.shards]
    assert sum(s.samples for s in m.shards[len(first.shards) :]) == ROWS_B
    # every object of the first job (shards, indexes, records, its details part) untouched
    after = _state(url, opts)
    changed = sorted(n for n, v in before.items() if after.get(n) != v)
    assert changed == ["manifest.json"], changed
    assert "manifest.details.json" in after and "manifest.details-00001.json" in after
    assert "_partitions/_job-00001.json" in after
    # the segments are recorded
    segments = m.source["segments"]
    assert [s["first_partition"] for s in segments] == [0, 4]
    assert [s["partitions"] for s in segments] == [4, 3]
    assert segments[1]["source"]["name"] == b
    assert segments[0]["options"]["max_samples_per_shard"] == 5
    assert segments[1]["options"]["max_samples_per_shard"] == 4
    # the shards verify, every key once: in the shards, and read through the loader
    check_complete(url, ROWS_A + ROWS_B, opts)
    keys = _loader_keys(url, opts)
    assert len(keys) == len(set(keys)) == ROWS_A + ROWS_B
    assert {k[:5] for k in keys} == {f"{p:05d}" for p in range(7)}
    # re-running the append, or the first conversion, is a no-op
    assert (
        convert(
            b,
            url,
            max_samples_per_shard=4,
            workers=1,
            quiet=True,
            storage_options=opts,
            append=True,
        ).samples
        == ROWS_A + ROWS_B
    )
    assert (
        convert(
            a, url, max_samples_per_shard=5, workers=1, quiet=True, storage_options=opts
        ).samples
        == ROWS_A + ROWS_B
    )
    assert (
        convert(
            a,
            url,
            max_samples_per_shard=5,
            workers=1,
            quiet=True,
            storage_options=opts,
            append=True,
        ).samples
        == ROWS_A + ROWS_B
    )
    assert _state(url, opts) == after
    return m


def test_append_local(small_hf_dataset, second_dataset, tmp_path, capsys):
    url = str(tmp_path / "out")
    _append_and_check(small_hf_dataset, second_dataset, url, {})
    assert main(["verify", url]) == 0
    assert main(["inspect", url]) == 0
    assert "segments" in capsys.readouterr().out


def test_append_s3(small_hf_dataset, second_dataset, s3):
    opts = s3["storage_options"]
    url = "s3://test/appended"
    _append_and_check(small_hf_dataset, second_dataset, url, opts)
    assert (
        main(
            [
                "verify",
                url,
                "--storage-option",
                f"endpoint_url={s3['endpoint']}",
                "--storage-option",
                "key=testing",
                "--storage-option",
                "secret=testing",
            ]
        )
        == 0
    )


def test_append_three_segments_and_cli(small_hf_dataset, second_dataset, tmp_path):
    url = str(tmp_path / "out")
    third = build_parquet_dataset(str(tmp_path / "c"), 8, n_files=2, seed=2)
    assert main(["convert", small_hf_dataset, url, "--quiet"]) == 0
    assert main(["convert", second_dataset, url, "--append", "--quiet"]) == 0
    assert main(["convert", third, url, "--append", "--quiet", "--max-samples-per-shard", "3"]) == 0
    m = load_manifest(url)
    assert m.samples == ROWS_A + ROWS_B + 8
    assert [s["first_partition"] for s in m.source["segments"]] == [0, 4, 7]
    check_complete(url, ROWS_A + ROWS_B + 8)


def test_append_errors(small_hf_dataset, second_dataset, tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no finished conversion"):
        convert(second_dataset, missing, quiet=True, append=True)
    # a conversion that never finished (its job file, no manifest)
    unfinished = str(tmp_path / "unfinished")
    storage.write_bytes(
        storage.join_url(unfinished, "_partitions/_job.json"),
        json.dumps(plan_job(HFSource(small_hf_dataset), small_config()).to_dict()).encode(),
    )
    with pytest.raises(ConfigError, match="unfinished conversion"):
        convert(second_dataset, unfinished, quiet=True, append=True)
    # an append that died right after its job file: another source is refused, the same
    # one finishes it
    url = str(tmp_path / "out")
    convert(small_hf_dataset, url, max_samples_per_shard=5, workers=1, quiet=True)
    config = small_config(max_samples_per_shard=4, workers=1)
    seg = start_append(Output(url, {}), plan_job(HFSource(second_dataset), config))
    assert (seg.index, seg.first_partition, seg.fresh) == (1, 4, True)
    third = build_parquet_dataset(str(tmp_path / "c"), 8, n_files=2, seed=2)
    with pytest.raises(ConfigError, match="unfinished append") as err:
        convert(third, url, max_samples_per_shard=4, workers=1, quiet=True, append=True)
    assert "segment 1" in str(err.value) and "same source" in str(err.value)
    with pytest.raises(ConfigError, match="unfinished append"):  # other options
        convert(second_dataset, url, max_samples_per_shard=6, workers=1, quiet=True, append=True)
    assert load_manifest(url).samples == ROWS_A  # nothing changed the finished dataset
    m = convert(second_dataset, url, max_samples_per_shard=4, workers=1, quiet=True, append=True)
    assert m.samples == ROWS_A + ROWS_B
    check_complete(url, ROWS_A + ROWS_B)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_kill_mid_append_then_rerun(small_hf_dataset, second_dataset, tmp_path, request, where):
    """SIGKILL the appending process (a real process, slowed down) once some of the new
    shards are visible, twice, then re-run the same append: every sample of both sources
    once, the first job's files untouched, the old manifest whole until the end."""
    opts = request.getfixturevalue("s3")["storage_options"] if where == "s3" else {}
    url = "s3://test/killed" if where == "s3" else str(tmp_path / "out")
    # slow_convert.py's own options: max_samples_per_shard=3, workers as given
    convert(
        small_hf_dataset, url, max_samples_per_shard=3, workers=1, quiet=True, storage_options=opts
    )
    before = _state(url, opts)

    def new_shards():
        return len(
            [
                n
                for n in listing(url, opts)
                if n.endswith(".tar")
                and n.startswith(("shard-00004", "shard-00005", "shard-00006"))
            ]
        )

    for more in (1, 2):  # the second kill interrupts the resume of the first
        target = min(new_shards() + more, 11)
        env = {**os.environ, "WDSTREAM_TEST_ROW_DELAY": "0.1", "WDSTREAM_TEST_APPEND": "1"}
        args = [sys.executable, SCRIPT, second_dataset, url, "2"]
        if opts:
            args.append(json.dumps(opts))
        child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and child.poll() is None and new_shards() < target:
                time.sleep(0.01)
            assert child.poll() is None, child.communicate()[1].decode()[-2000:]
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
        assert load_manifest(url, opts).samples == ROWS_A  # the old manifest, still whole
    m = convert(
        second_dataset,
        url,
        max_samples_per_shard=3,
        workers=2,
        quiet=True,
        storage_options=opts,
        append=True,
    )
    assert m.samples == ROWS_A + ROWS_B
    check_complete(url, ROWS_A + ROWS_B, opts)
    after = _state(url, opts)
    assert sorted(n for n, v in before.items() if after.get(n) != v) == ["manifest.json"]
    keys = _loader_keys(url, opts)
    assert len(keys) == len(set(keys)) == ROWS_A + ROWS_B


# --------------------------------------------- two appends at once (issue 22, item 1)


def _claim_first(monkeypatch, run_other):
    """Make ``run_other()`` happen between an append's reading of the segments and its
    creating the next job file: the race of two appends started at once, made exact."""
    original = storage.create_new
    pending = [run_other]

    def create_new(*args, **kwargs):
        if pending:
            pending.pop()()
        return original(*args, **kwargs)

    monkeypatch.setattr(storage, "create_new", create_new)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_append_that_loses_its_segment_to_another_is_refused(
    small_hf_dataset, second_dataset, tmp_path, request, monkeypatch, where
):
    """Append B reads the segments, then append C takes segment 1 before B creates its job
    file: B is refused (ConfigError, nothing written), C's job file is untouched. Once C has
    finished, B's command appends it as segment 2: both sources land."""
    opts = request.getfixturevalue("s3")["storage_options"] if where == "s3" else {}
    url = "s3://test/race" if where == "s3" else str(tmp_path / "out")
    third = build_parquet_dataset(str(tmp_path / "c"), 8, n_files=2, seed=2)
    kw = dict(max_samples_per_shard=4, workers=1, quiet=True, storage_options=opts)
    convert(small_hf_dataset, url, **kw)
    config = small_config(max_samples_per_shard=4, workers=1, storage_options=opts)
    other = plan_job(HFSource(third), config)
    _claim_first(monkeypatch, lambda: start_append(Output(url, opts), other))
    with pytest.raises(ConfigError) as err:
        convert(second_dataset, url, append=True, **kw)
    message = str(err.value)
    assert "another append took segment 1" in message and "unfinished append" in message
    assert "wait until it has finished" in message and url.split("://")[-1] in message
    job = json.loads(storage.read_bytes(f"{url}/_partitions/_job-00001.json", opts))
    assert job["source"]["name"] == third  # the winner's claim stands
    assert load_manifest(url, opts).samples == ROWS_A
    convert(third, url, append=True, **kw)  # the winner finishes
    m = convert(second_dataset, url, append=True, **kw)  # the loser, re-run: segment 2
    assert [s["source"]["name"] for s in m.source["segments"]] == [
        small_hf_dataset,
        third,
        second_dataset,
    ]
    check_complete(url, ROWS_A + 8 + ROWS_B, opts)


def test_an_append_that_loses_to_a_finished_append_takes_the_next_segment(
    small_hf_dataset, second_dataset, tmp_path, monkeypatch
):
    """When the append that took the segment has already finished by the time the loser
    reads again, the loser takes the next segment: both land, no error."""
    url = str(tmp_path / "out")
    third = build_parquet_dataset(str(tmp_path / "c"), 8, n_files=2, seed=2)
    kw = dict(max_samples_per_shard=4, workers=1, quiet=True)
    convert(small_hf_dataset, url, **kw)
    _claim_first(monkeypatch, lambda: convert(third, url, append=True, **kw))
    m = convert(second_dataset, url, append=True, **kw)
    assert [s["source"]["name"] for s in m.source["segments"]] == [
        small_hf_dataset,
        third,
        second_dataset,
    ]
    check_complete(url, ROWS_A + 8 + ROWS_B, {})


def test_two_new_conversions_into_one_output_only_one_takes_it(
    small_hf_dataset, second_dataset, tmp_path, monkeypatch
):
    """Two plain conversions of different sources into one new OUTPUT at once: the job file is
    created only where none is, so the second is refused instead of mixing its partitions
    with the first's."""
    url = str(tmp_path / "out")
    kw = dict(max_samples_per_shard=4, workers=1, quiet=True)
    other = plan_job(HFSource(second_dataset), small_config(max_samples_per_shard=4, workers=1))
    _claim_first(monkeypatch, lambda: claim_job(Output(url, {}), other))
    with pytest.raises(ConfigError, match="another conversion into .* started at the same time"):
        convert(small_hf_dataset, url, **kw)
    assert convert(second_dataset, url, **kw).samples == ROWS_B
    check_complete(url, ROWS_B)


# ------------------------------------------- the same source again (issue 22, item 4)


def test_appending_the_same_source_again_is_refused_unless_allowed(
    small_hf_dataset, tmp_path, monkeypatch, caplog
):
    url = str(tmp_path / "out")
    convert(small_hf_dataset, url, max_samples_per_shard=5, workers=1, quiet=True)
    # the same source with other options would add its 48 rows again
    with pytest.raises(ConfigError, match="already holds source") as err:
        convert(small_hf_dataset, url, max_samples_per_shard=7, workers=1, quiet=True, append=True)
    assert "--allow-duplicate-source" in str(err.value) and "segment 0" in str(err.value)
    # named another way (relative, with ./ and ..): still the same folder
    monkeypatch.chdir(tmp_path)
    parent, name = os.path.split(small_hf_dataset)
    relative = os.path.join(os.path.relpath(parent, tmp_path), ".", name)
    with pytest.raises(ConfigError, match="already holds source"):
        convert(relative, url, limit=10, workers=1, quiet=True, append=True)
    # the CLI: exit 2, one line
    caplog.clear()
    rc = main(["convert", small_hf_dataset, url, "--append", "--quiet", "--limit", "10"])
    assert rc == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0].getMessage()
    assert "--allow-duplicate-source" in errors[0].getMessage()
    assert main(["convert", small_hf_dataset, url, "--allow-duplicate-source", "--quiet"]) == 2
    assert load_manifest(url).samples == ROWS_A  # nothing changed
    # allowed: the rows are there twice, as asked
    args = ["convert", small_hf_dataset, url, "--append", "--quiet", "--limit", "10"]
    assert main([*args, "--allow-duplicate-source"]) == 0
    assert load_manifest(url).samples == ROWS_A + 10
    # re-running that same append is a no-op, with or without the flag
    assert main(args) == 0 and main([*args, "--allow-duplicate-source"]) == 0
    assert load_manifest(url).samples == ROWS_A + 10
    check_complete(url, ROWS_A + 10)


def test_same_source_means_name_config_split_and_data_files(tmp_path):
    base = {"name": "parquet", "config": None, "split": "train", "revision": None}
    files = {**base, "data_files": ["./d/b.parquet", "d/a.parquet"]}
    assert same_source(files, {**base, "data_files": ["d/a.parquet", "d/b.parquet"]})
    assert same_source(files, {**files, "revision": "v2"})  # another revision: same rows
    assert not same_source(files, {**base, "data_files": ["d/a.parquet"]})
    assert not same_source(files, {**files, "split": "test"})
    assert not same_source(files, {**files, "config": "other"})
    assert not same_source({**base, "name": "a/b"}, {**base, "name": "a/c"})
    assert same_source({**base, "data_files": "x.csv"}, {**base, "data_files": ["x.csv"]})
