"""The converter on GCS (gcsfs against fake-gcs-server) and Azure (adlfs against Azurite), the
same scenarios as on S3: ``convert`` with 2 workers then ``verify``, ``convert --append``
(the job files' conditional create on each store), and ``index`` on foreign shards with
``--out`` and ``allowed_prefixes``. Nothing partial is ever visible: see
tests/faults/test_kill_convert_clouds.py."""

from __future__ import annotations

import json
import os
import sys

from wdstream import storage
from wdstream.cli import main
from wdstream.format.manifest import load_manifest
from wdstream.write.convert import convert
from wdstream.write.indexer import index_dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_append import ROWS_A, ROWS_B, _append_and_check, second_dataset  # noqa: E402,F401
from test_indexer import exact_epoch_checks, shard_files  # noqa: E402


def cli_options(cloud) -> list[str]:
    """The cloud's storage options as ``--storage-option KEY=VALUE`` arguments."""
    out = []
    for key, value in cloud["storage_options"].items():
        out += ["--storage-option", f"{key}={value}"]
    return out


def test_convert_two_workers_then_verify(small_hf_dataset, cloud, tmp_path, capsys):
    url = f"{cloud['url']}/ds"
    args = ["convert", small_hf_dataset, url, "--workers", "2", "--quiet"]
    args += ["--max-samples-per-shard", "5", *cli_options(cloud)]
    assert main(args) == 0
    assert main(["verify", url, *cli_options(cloud)]) == 0
    m = load_manifest(url, cloud["storage_options"])
    local = convert(
        small_hf_dataset, str(tmp_path / "l"), max_samples_per_shard=5, workers=1, quiet=True
    )
    assert m.samples == 48
    assert [(s.url, s.sha256) for s in m.shards] == [(s.url, s.sha256) for s in local.shards]
    raw = storage.read_bytes(f"{url}/manifest.json", cloud["storage_options"]).decode()
    assert "127.0.0.1" not in raw and "AccountKey" not in raw  # no storage options in it


def test_append_a_second_source(small_hf_dataset, second_dataset, cloud):  # noqa: F811
    """The job file of each segment is created only where none is, by the store's own
    conditional create (GCS ifGenerationMatch=0, Azure If-None-Match: *), never by a
    check-then-write."""
    url = f"{cloud['url']}/app"
    opts = cloud["storage_options"]
    _append_and_check(small_hf_dataset, second_dataset, url, opts)
    job = f"{url}/_partitions/_job-00001.json"
    assert storage.create_new(job, b"{}", opts) is False  # already there: left as it was
    assert json.loads(storage.read_bytes(job, opts)) != {}
    assert storage.create_new(f"{url}/_partitions/new.json", b"{}", opts) is True
    assert load_manifest(url, opts).samples == ROWS_A + ROWS_B


def test_index_foreign_shards_with_out_elsewhere(cloud):
    """The data in its own bucket or container, never written; manifest and indexes in
    another; read back in exact epochs with the prefix the report allows."""
    from clouds import make_bucket, make_container

    opts = cloud["storage_options"]
    if cloud["store"] == "gcs":
        data = f"gs://{make_bucket(cloud['endpoint'])}/part"
    else:
        data = f"az://{make_container(opts['connection_string'])}/part"
    for name, blob in shard_files().items():
        storage.write_bytes(f"{data}/{name}", blob, opts)
    before = storage.find_urls(data, opts)
    out = f"{cloud['url']}/index"
    assert main(["index", data, "--out", out, "--quiet", *cli_options(cloud)]) == 0
    assert storage.find_urls(data, opts) == before
    m = load_manifest(out, opts, allowed_prefixes=[f"{data}/"])
    assert m.samples == 48 and [s.whole for s in m.shards] == [False, False, True]
    assert m.shard_urls()[0] == f"{data}/00000.tar"
    exact_epoch_checks(out, opts, allowed=(f"{data}/",))
    again = index_dataset(data, out, storage_options=opts, quiet=True)
    assert (again.indexed, again.reused) == (0, 3)
