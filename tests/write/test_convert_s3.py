"""The converter against a real S3 endpoint on loopback (moto's ThreadedMotoServer over HTTP,
reached through s3fs): round trip, resume, abort, and the credential/bucket errors."""

from __future__ import annotations

import hashlib
import json

import pytest

from wdstream import storage
from wdstream.errors import CredentialsError, StorageError
from wdstream.format.manifest import load_manifest
from wdstream.format.tario import group_samples, iter_members
from wdstream.write.convert import convert

pytestmark = pytest.mark.s3


def _samples(url, opts):
    out = []
    for shard in load_manifest(url, opts).shard_urls():
        with storage.open_read(shard, opts) as f:
            out.extend(group_samples(iter_members(f)))
    return out


def _pending_uploads(fs, bucket="test"):
    return fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])


def test_s3_round_trip_matches_local(small_hf_dataset, s3, tmp_path):
    opts = s3["storage_options"]
    url = "s3://test/run/ds"
    m = convert(
        small_hf_dataset, url, max_samples_per_shard=5, workers=1, quiet=True, storage_options=opts
    )
    local = convert(
        small_hf_dataset, str(tmp_path / "l"), max_samples_per_shard=5, workers=1, quiet=True
    )
    assert m.samples == 48
    assert [(s.url, s.sha256) for s in m.shards] == [(s.url, s.sha256) for s in local.shards]
    fs = s3["fs"]
    for s in m.shards:
        blob = fs.cat_file(f"test/run/ds/{s.url}")
        assert hashlib.sha256(blob).hexdigest() == s.sha256 and len(blob) == s.bytes
    samples = _samples(url, opts)
    assert len({s["__key__"] for s in samples}) == 48
    raw = fs.cat_file("test/run/ds/manifest.json").decode()
    assert "testing" not in raw and "endpoint" not in raw  # no storage options, no secrets
    assert json.loads(raw)["source"]["name"] == small_hf_dataset


def test_s3_failure_mid_partition_publishes_nothing_partial(small_hf_dataset, s3, monkeypatch):
    """A forced error mid-shard: no object for the open shard, no pending multipart upload, no
    record; the re-run completes with every sample once."""
    import wdstream.rows.encode as enc

    opts = s3["storage_options"]
    url = "s3://test/abort"
    real = enc.RowEncoder.__call__
    calls = {"n": 0}

    def failing(self, row, key):
        calls["n"] += 1
        if key == "00001_000000006":  # partition 1, in its second shard
            raise RuntimeError("disk on fire")
        return real(self, row, key)

    monkeypatch.setattr(enc.RowEncoder, "__call__", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        convert(
            small_hf_dataset,
            url,
            max_samples_per_shard=4,
            workers=1,
            quiet=True,
            storage_options=opts,
        )
    fs = s3["fs"]
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[1] for p in fs.find("test/abort"))
    assert "shard-00001-00001.tar" not in names  # the open shard never became an object
    assert "shard-00001-00000.tar" in names  # committed before the error
    assert "part-00001.json" not in names and "part-00000.json" in names
    assert "manifest.json" not in names
    assert _pending_uploads(fs) == []

    monkeypatch.setattr(enc.RowEncoder, "__call__", real)
    m = convert(
        small_hf_dataset, url, max_samples_per_shard=4, workers=1, quiet=True, storage_options=opts
    )
    keys = [s["__key__"] for s in _samples(url, opts)]
    assert m.samples == 48 and len(set(keys)) == 48


def test_resume_on_s3_aborts_pending_uploads_of_unfinished_partitions(small_hf_dataset, s3):
    opts = s3["storage_options"]
    url = "s3://test/res"
    first = convert(
        small_hf_dataset, url, max_samples_per_shard=5, workers=1, quiet=True, storage_options=opts
    )
    fs = s3["fs"]
    # what a killed process leaves on S3: no record, no manifest, an unfinished multipart upload
    fs.rm_file("test/res/_partitions/part-00003.json")
    fs.rm_file("test/res/manifest.json")
    fs.call_s3("create_multipart_upload", Bucket="test", Key="res/shard-00003-00001.tar")
    fs.pipe_file("test/res/shard-00003-00005.tar", b"stale")
    assert len(_pending_uploads(fs)) == 1
    again = convert(
        small_hf_dataset, url, max_samples_per_shard=5, workers=1, quiet=True, storage_options=opts
    )
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in first.shards]
    assert _pending_uploads(fs) == []
    fs.invalidate_cache()
    assert not fs.exists("test/res/shard-00003-00005.tar")


def test_missing_s3_credentials(small_hf_dataset, s3, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    opts = {"client_kwargs": {"endpoint_url": s3["endpoint"]}}
    with pytest.raises(CredentialsError) as e:
        convert(small_hf_dataset, "s3://test/nocreds", storage_options=opts, quiet=True)
    msg = str(e.value)
    assert "s3://test/nocreds" in msg and "AWS_ACCESS_KEY_ID" in msg
    assert "credentials" in msg


def test_wrong_s3_credentials_are_not_logged(small_hf_dataset, s3, caplog):
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    # moto accepts any key unless auth is enforced; a missing bucket is the error users hit
    opts = {
        "client_kwargs": {"endpoint_url": s3["endpoint"]},
        "key": "AKIDSECRETKEY",
        "secret": "very-secret-value",
    }
    with pytest.raises(StorageError) as e:
        convert(small_hf_dataset, "s3://no-such-bucket/x", storage_options=opts, quiet=True)
    assert "no-such-bucket" in str(e.value) and "does not exist" in str(e.value)
    assert "very-secret-value" not in str(e.value) + caplog.text
