"""The converter on a local folder: round trip, byte identity, keys, manifest, bad rows,
errors, determinism across workers, re-runs. Sources are small HF parquet datasets built here."""

from __future__ import annotations

import glob
import json
import logging
import os

import pyarrow.parquet as pq
import pytest

from wdstream import storage
from wdstream.errors import (
    ColumnError,
    ConfigError,
    HubUnreachableError,
    SourceError,
    StorageError,
)
from wdstream.format.index import parse_index
from wdstream.format.manifest import load_manifest
from wdstream.format.tario import group_samples, iter_members
from wdstream.write.convert import convert


def read_samples(url, storage_options=None):
    """Every sample of a converted dataset, in manifest order."""
    m = load_manifest(url, storage_options)
    out = []
    for shard_url in m.shard_urls():
        with storage.open_read(shard_url, storage_options) as f:
            out.extend(group_samples(iter_members(f, name=shard_url)))
    return out


def source_rows(folder):
    """Rows of each parquet file (= each partition) as Python dicts, in file order."""
    files = sorted(glob.glob(os.path.join(folder, "data", "*.parquet")))
    return [pq.read_table(f).to_pylist() for f in files]


@pytest.fixture(scope="module")
def converted(small_hf_dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out") / "ds")
    manifest = convert(small_hf_dataset, out, max_samples_per_shard=5, workers=1, quiet=True)
    return out, manifest


def test_round_trip_keeps_every_row_and_its_bytes(small_hf_dataset, converted):
    out, manifest = converted
    samples = read_samples(out)
    parts = source_rows(small_hf_dataset)
    assert manifest.samples == len(samples) == sum(len(p) for p in parts) == 48
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == 48 and all("." not in k for k in keys)
    for s in samples:
        p, r = (int(x) for x in s["__key__"].split("_"))
        row = parts[p][r]
        image = row["image"]["bytes"]
        ext = "png" if image.startswith(b"\x89PNG") else "jpg"
        assert s[ext] == image  # byte for byte, no re-encode
        assert s["flac"] == row["audio"]["bytes"]
        assert s["txt"].decode() == row["text"]
        meta = json.loads(s["json"])
        assert meta == {"source": small_hf_dataset, "id": row["id"], "label": row["label"]}
        assert set(s) == {"__key__", ext, "flac", "txt", "json"}


def test_manifest_describes_the_shards(small_hf_dataset, converted):
    out, manifest = converted
    head = json.loads(open(os.path.join(out, "manifest.json")).read())
    assert head["version"] == 2 and head["shards"]["count"] == 12  # compact: reader part
    assert "sha256" not in json.dumps(head)
    data = load_manifest(out).to_dict()  # with the details part
    assert data["samples"] == 48
    assert data["source"] == {
        "name": small_hf_dataset,
        "config": None,
        "split": "train",
        "revision": None,
        "data_files": None,
    }
    assert data["skipped"] == {}
    assert set(data["fields"]) == {"flac", "jpg", "png", "json", "txt"}
    assert "storage_options" not in json.dumps(data)
    # 4 partitions of 12 rows, 5 per shard -> 3 shards each, in partition order
    assert [s["url"] for s in data["shards"]] == [
        f"shard-{p:05d}-{q:05d}.tar" for p in range(4) for q in range(3)
    ]
    assert [s["samples"] for s in data["shards"]] == [5, 5, 2] * 4
    import hashlib

    for s in data["shards"]:
        blob = open(os.path.join(out, s["url"]), "rb").read()
        assert len(blob) == s["bytes"]
        assert hashlib.sha256(blob).hexdigest() == s["sha256"]
        index = parse_index(open(os.path.join(out, s["index"]), "rb").read(), s["samples"])
        assert len(index["offsets"]) == s["samples"] + 1
    records = sorted(os.listdir(os.path.join(out, "_partitions")))
    batches = [n for n in records if n.startswith("records-")]
    assert [n for n in records if n not in batches] == ["_job.json"] + [
        f"part-{p:05d}.json" for p in range(4)
    ]
    # the driver's batch of the same records (what a resume reads instead of each part file)
    assert len(batches) == 1
    batch = json.loads(open(os.path.join(out, "_partitions", batches[0])).read())
    assert sorted(r["partition"] for r in batch["records"]) == [0, 1, 2, 3]
    assert not [n for n in os.listdir(out) if ".partial-" in n]


def test_rerun_of_a_finished_job_changes_nothing(small_hf_dataset, converted, caplog):
    out, manifest = converted
    before = {
        n: (os.stat(os.path.join(out, n)).st_mtime_ns, open(os.path.join(out, n), "rb").read())
        for n in os.listdir(out)
        if os.path.isfile(os.path.join(out, n))
    }
    with caplog.at_level(logging.INFO, logger="wdstream"):
        again = convert(small_hf_dataset, out, max_samples_per_shard=5, workers=1, quiet=True)
    after = {
        n: (os.stat(os.path.join(out, n)).st_mtime_ns, open(os.path.join(out, n), "rb").read())
        for n in os.listdir(out)
        if os.path.isfile(os.path.join(out, n))
    }
    assert after == before
    assert again.samples == manifest.samples
    assert "is complete" in caplog.text and "nothing to do" in caplog.text


def test_rerun_with_other_options_is_refused(small_hf_dataset, converted):
    out, _ = converted
    with pytest.raises(ConfigError, match="other options.*max_samples_per_shard|other options"):
        convert(small_hf_dataset, out, max_samples_per_shard=7, workers=1, quiet=True)


@pytest.mark.slow
def test_same_output_whatever_the_number_of_workers(small_hf_dataset, converted, tmp_path):
    _, one = converted
    two = convert(
        small_hf_dataset, str(tmp_path / "w2"), max_samples_per_shard=5, workers=2, quiet=True
    )
    assert [(s.url, s.sha256, s.samples) for s in two.shards] == [
        (s.url, s.sha256, s.samples) for s in one.shards
    ]


def test_parquet_builder_with_data_files_and_limit(small_hf_dataset, tmp_path):
    files = sorted(glob.glob(os.path.join(small_hf_dataset, "data", "*.parquet")))
    m = convert(
        "parquet",
        str(tmp_path / "o"),
        data_files=files[:2],
        max_samples_per_shard=100,
        quiet=True,
        workers=1,
    )
    assert m.samples == 24 and m.source["name"] == "parquet"
    assert m.source["data_files"] == files[:2] and m.options["partitions"] == 2
    lim = convert(
        "parquet", str(tmp_path / "lim"), data_files=files, limit=17, quiet=True, workers=1
    )
    samples = read_samples(str(tmp_path / "lim"))
    # the first 17 rows in source order, as one partition: keys as in a full conversion
    assert lim.samples == 17
    first = source_rows(small_hf_dataset)
    expected = [r["text"] for part in first for r in part][:17]
    assert [s["txt"].decode() for s in samples] == expected
    # a larger limit is spread: the 4 files split into ceil(150 / 100) = 2 contiguous groups
    # (2 files each), 75 rows asked of each; every group has only 24
    spread = convert(
        "parquet", str(tmp_path / "spread"), data_files=files, limit=150, quiet=True, workers=2
    )
    assert spread.options["partitions"] == 2 and spread.samples == 48
    again = convert(
        "parquet", str(tmp_path / "spread1"), data_files=files, limit=150, quiet=True, workers=1
    )
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in spread.shards]


def test_limit_takes_a_share_of_each_contiguous_group(small_hf_dataset, tmp_path, monkeypatch):
    import wdstream.write.plan as plan

    monkeypatch.setattr(plan, "LIMIT_ROWS_PER_PARTITION", 10)
    files = sorted(glob.glob(os.path.join(small_hf_dataset, "data", "*.parquet")))
    # 30 rows -> 3 partitions: the 4 files (12 rows each) in groups [0, 1], [2], [3],
    # the first 10 rows of each group
    m = convert(
        "parquet",
        str(tmp_path / "o"),
        data_files=files,
        limit=30,
        quiet=True,
        workers=1,
        max_samples_per_shard=1000,
    )
    rows = [r["text"] for group in source_rows(small_hf_dataset) for r in group]
    assert m.options["partitions"] == 3 and m.samples == 30
    assert [s.partition for s in m.shards] == [0, 1, 2]
    texts = [s["txt"].decode() for s in read_samples(str(tmp_path / "o"))]
    assert texts == rows[0:10] + rows[24:34] + rows[36:46]


def test_shards_cut_at_max_bytes(small_hf_dataset, tmp_path):
    m = convert(
        small_hf_dataset,
        str(tmp_path / "o"),
        max_samples_per_shard=1000,
        max_shard_bytes=40_000,
        quiet=True,
        workers=1,
    )
    assert m.samples == 48
    assert all(s.bytes <= 40_000 for s in m.shards)
    assert len(m.shards) > 4


@pytest.fixture(scope="module")
def corrupt_dataset(tmp_path_factory):
    from wdstream.demo.data import build_parquet_dataset

    folder = str(tmp_path_factory.mktemp("corrupt"))
    return build_parquet_dataset(
        folder, 16, n_files=2, corrupt_image_rows=(2, 11), corrupt_audio_rows=(5,)
    )


def test_corrupt_images_and_audio_are_skipped_and_counted(corrupt_dataset, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        m = convert(corrupt_dataset, str(tmp_path / "o"), quiet=True, workers=1)
    assert m.samples == 13
    assert m.skipped == {"bad_image": 2, "bad_audio": 1}
    data = json.loads(open(tmp_path / "o" / "manifest.json").read())
    assert data["skipped"] == {"bad_audio": 1, "bad_image": 2}
    keys = {s["__key__"] for s in read_samples(str(tmp_path / "o"))}
    # rows 2 and 5 are in partition 0 (rows 0-7), row 11 is row 3 of partition 1
    assert {"00000_000000002", "00000_000000005", "00001_000000003"}.isdisjoint(keys)
    assert "00000_000000003" in keys and len(keys) == 13
    assert "00000_000000002" in caplog.text and "bad_image" in caplog.text


def test_bad_rows_stop_the_job_when_not_skipped(corrupt_dataset, tmp_path):
    from wdstream.errors import TooManyErrors

    with pytest.raises(TooManyErrors, match="bad_image"):
        convert(corrupt_dataset, str(tmp_path / "o"), quiet=True, workers=1, skip_bad_rows=False)
    assert not os.path.exists(tmp_path / "o" / "manifest.json")


# ------------------------------------------------------------------ errors


def test_nonexistent_local_source(tmp_path):
    with pytest.raises(SourceError, match="does not exist") as e:
        convert(str(tmp_path / "nope"), str(tmp_path / "o"), quiet=True)
    assert "nope" in str(e.value)


def test_nonexistent_data_files(tmp_path):
    with pytest.raises(SourceError, match="does not exist or has no data"):
        convert(
            "parquet",
            str(tmp_path / "o"),
            data_files=[str(tmp_path / "none-*.parquet")],
            quiet=True,
        )


def test_unreachable_hub_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachableError, match="HF_HUB_OFFLINE"):
        convert("someone/some-dataset", str(tmp_path / "o"), quiet=True)


def test_unreachable_hub_fails_fast_on_a_closed_port(tmp_path):
    """With offline mode unset and HF_ENDPOINT on a closed port, the error comes in seconds
    (huggingface_hub alone retries for more than 20 s here)."""
    import subprocess
    import sys

    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9")
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_DATASETS_OFFLINE", None)
    code = (
        "from wdstream.write.convert import convert\n"
        "from wdstream.errors import HubUnreachableError\n"
        "try:\n"
        f"    convert('someone/some-dataset', {str(tmp_path / 'o')!r}, quiet=True)\n"
        "except HubUnreachableError as e:\n"
        "    print('ERR', e)\n"
    )
    # a hang would end in TimeoutExpired; how fast it fails is a benchmark's business
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert "ERR" in res.stdout, res.stderr[-2000:]
    assert "127.0.0.1:9" in res.stdout and "cannot reach the Hugging Face Hub" in res.stdout


def test_missing_column_names_it_and_lists_columns(small_hf_dataset, tmp_path):
    with pytest.raises(ColumnError) as e:
        convert(small_hf_dataset, str(tmp_path / "o"), image_column="picture", quiet=True)
    msg = str(e.value)
    assert "'picture'" in msg and "does not exist" in msg
    for col in ("image", "audio", "text", "id", "label"):
        assert f"'{col}'" in msg


def test_unwritable_output(small_hf_dataset, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="cannot write") as e:
        convert(small_hf_dataset, str(blocker / "out"), quiet=True)
    assert "a-file/out" in str(e.value)
