"""``wdstream.get_sample`` and ``wdstream inspect --key``: one sample by its key, through the
manifest's key ranges (converted datasets) or the key index (``wdstream index``), read with one
ranged GET; the requests counted at the S3 test proxy; a scan, said out loud, where there is no
index; NotFoundError for a key that is not there; the same on GCS and Azure."""

from __future__ import annotations

import logging
import os
import sys

import numpy as np
import pytest

import wdstream
from wdstream import storage
from wdstream.cli import main
from wdstream.format.keyindex import BLOCK, KEYS_NAME, key_index_bytes, lookup_hash
from wdstream.format.manifest import load_manifest
from wdstream.format.tario import group_samples, iter_members
from wdstream.write.convert import convert
from wdstream.write.indexer import index_dataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "write"))
from test_indexer import all_keys, shard_files  # noqa: E402


def every_sample(url, opts=None, allowed=()):
    """``{key: sample}`` of a dataset, read shard by shard from the start."""
    out = {}
    m = load_manifest(url, opts, allowed_prefixes=allowed)
    for shard in m.shard_urls():
        with storage.open_read(shard, opts) as f:
            for sample in group_samples(iter_members(f)):
                out[sample["__key__"]] = {**sample, "__url__": shard}
    return out


@pytest.fixture(scope="module")
def converted(small_hf_dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("lookup") / "ds")
    convert(small_hf_dataset, out, max_samples_per_shard=5, workers=1, quiet=True)
    return out


def write_foreign(url, opts=None):
    for name, data in shard_files().items():
        storage.write_bytes(f"{url}/{name}", data, opts)


def test_every_key_of_a_converted_dataset(converted, caplog):
    expected = every_sample(converted)
    assert len(expected) == 48
    for key, sample in expected.items():
        assert wdstream.get_sample(converted, key) == sample
    assert "scanning" not in caplog.text


def test_a_missing_key_names_the_key_and_the_source(converted):
    for key in ("00009_000000000", "00000_000000999", "", "zzz", "00001_000000005x"):
        with pytest.raises(wdstream.NotFoundError) as e:
            wdstream.get_sample(converted, key)
        assert repr(key) in str(e.value) and converted in str(e.value)
        assert e.value.key == key


def test_decode_gives_what_the_reader_gives(converted):
    sample = wdstream.get_sample(converted, "00002_000000003", decode=True)
    assert sample["key"] == "00002_000000003"
    assert sample["pixel_values"].shape[0] == 3 and sample["input_ids"].ndim == 1
    assert sample["url"].endswith(".tar")


def test_inspect_key_prints_the_sample(converted, capsys):
    assert main(["inspect", converted, "--key", "00003_000000011"]) == 0
    text = capsys.readouterr().out
    assert "sample 00003_000000011" in text and ".jpg:" in text and "shard-00003-" in text
    assert main(["inspect", converted, "--key", "nope"]) == 2  # NotFoundError, one line


def test_foreign_shards_through_the_key_index(tmp_path, caplog):
    data, out = str(tmp_path / "data"), str(tmp_path / "idx")
    write_foreign(data)
    index_dataset(data, out, quiet=True)
    assert os.path.exists(os.path.join(out, KEYS_NAME))
    allowed = [f"{data}/"]
    expected = every_sample(out, allowed=allowed)
    assert sorted(expected) == all_keys()  # the .tar.gz one included
    for key, sample in expected.items():
        assert wdstream.get_sample(out, key, allowed_prefixes=allowed) == sample
    assert "scanning" not in caplog.text
    with pytest.raises(wdstream.NotFoundError):
        wdstream.get_sample(out, "000009999", allowed_prefixes=allowed)
    # without the key index, a scan, said out loud
    os.remove(os.path.join(out, KEYS_NAME))
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        assert wdstream.get_sample(out, "000010003", allowed_prefixes=allowed)["__key__"]
    assert "no key index" in caplog.text and "scanning" in caplog.text


def test_a_stale_key_index_is_not_trusted(tmp_path, caplog):
    data, out = str(tmp_path / "data"), str(tmp_path / "idx")
    write_foreign(data)
    index_dataset(data, out, quiet=True)
    # built for other shards: refused as stale, and the scan still finds the key
    storage.write_bytes(os.path.join(out, KEYS_NAME), key_index_bytes([np.arange(3)], 1))
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        got = wdstream.get_sample(out, "000000004", allowed_prefixes=[f"{data}/"])
    assert got["__key__"] == "000000004" and "unusable" in caplog.text


def test_shards_without_a_manifest_are_scanned_with_a_warning(tmp_path, caplog, capsys):
    data = str(tmp_path / "data")
    write_foreign(data)
    pattern = f"{data}/{{00000..00001}}.tar"
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        assert wdstream.get_sample(pattern, "000010002")["__key__"] == "000010002"
    assert "scanning" in caplog.text
    with pytest.raises(wdstream.NotFoundError):
        wdstream.get_sample(pattern, "000020002")  # in the .tar.gz, not in the pattern


@pytest.mark.parametrize("n", [10, BLOCK * 3 + 7])
def test_key_index_format_finds_every_entry_in_two_reads(n):
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=n, dtype=np.uint64)
    hashes[2] = hashes[n - 1] = hashes[1]  # a hash in three places: each is a candidate
    split = [hashes[: n // 3], hashes[n // 3 :]]
    blob = key_index_bytes(split, 2)
    reads = []

    def read(start, end):
        reads.append((start, end))
        return blob[start:end]

    for i in (0, 1, n // 3, n - 2):
        reads.clear()
        found = lookup_hash(read, int(hashes[i]), shards=2)
        where = (0, i) if i < n // 3 else (1, i - n // 3)
        assert where in found
        assert len(reads) <= 2 and all(e - s <= 2 * BLOCK * 16 + 65536 for s, e in reads)
    assert lookup_hash(read, int(hashes[1]), shards=2) == [(0, 1), (0, 2), (1, n - 1 - n // 3)]
    assert lookup_hash(read, 12345, shards=2) == [] or 12345 in hashes
    with pytest.raises(ValueError, match="built for 2 shards"):
        lookup_hash(read, 1, shards=3)


@pytest.mark.s3
def test_requests_counted_at_the_s3_proxy(small_hf_dataset, s3, s3_proxy):
    """A converted dataset (version 2): the manifest, its details part, the shard's index and
    the sample, one GET each, the last a ranged GET of the sample's bytes alone. Foreign shards
    with a key index: the manifest, the key index, 16 bytes of the shard's index, the sample."""
    proxy, via = s3_proxy
    opts = s3["storage_options"]
    convert(
        small_hf_dataset, "s3://test/lk", max_samples_per_shard=5, quiet=True, storage_options=opts
    )
    write_foreign("s3://test/raw", opts)
    index_dataset("s3://test/raw", "s3://test/raw-idx", storage_options=opts, quiet=True)
    for source, key, allowed in (
        ("s3://test/lk", "00002_000000007", ()),
        ("s3://test/raw-idx", "000010009", ("s3://test/raw/",)),
    ):
        proxy.log.clear()
        proxy.requests.clear()
        sample = wdstream.get_sample(source, key, via, allowed_prefixes=allowed)
        assert sample["__key__"] == key
        gets = [(path, rng) for _, method, path, rng in proxy.log if method == "GET"]
        assert dict(proxy.requests) == {"GET": 4}, proxy.log
        assert gets[-1][0].endswith(sample["__url__"].split("/", 3)[3])
        start, end = (int(v) for v in gets[-1][1].split("=")[1].split("-"))
        size = sum(len(v) for k, v in sample.items() if not k.startswith("__"))
        assert size < end + 1 - start < size + 512 * 8  # the sample's members, headers, padding


def test_lookup_on_each_cloud(small_hf_dataset, cloud, s3proxy, caplog, capsys):
    """As on S3, counted at a proxy in front of the emulator: 4 GETs for a converted dataset
    and 4 for foreign shards with a key index, the last sending the sample's bytes alone;
    ``inspect --key`` through the same store; a missing key; shards without a manifest
    scanned with a WARNING."""
    from clouds import origin, through

    opts = cloud["storage_options"]
    url = f"{cloud['url']}/lk"
    convert(small_hf_dataset, url, max_samples_per_shard=5, quiet=True, storage_options=opts)
    raw, out = f"{cloud['url']}/raw", f"{cloud['url']}/raw-idx"
    write_foreign(raw, opts)
    index_dataset(raw, out, storage_options=opts, quiet=True)
    expected = every_sample(url, opts)
    with s3proxy.S3Proxy(origin(cloud), ttfb=0.0, jitter=0.0, bandwidth=None, cache=False) as px:
        via = through(cloud, px.url)
        for source, key, shard, gets in (
            (url, "00000_000000000", f"{url}/shard-00000-", 4),
            (url, "00001_000000006", f"{url}/shard-00001-", 4),
            (url, "00003_000000011", f"{url}/shard-00003-", 4),
            (out, "000000019", f"{raw}/00000.tar", 4),
            (out, "000010000", f"{raw}/00001.tar", 4),
            (out, "000020007", f"{raw}/00002.tar.gz", None),  # compressed: read from its start
        ):
            px.reset_counters()
            allowed = [f"{raw}/"] if source == out else []
            got = wdstream.get_sample(source, key, via, allowed_prefixes=allowed)
            assert got["__key__"] == key and got["__url__"].startswith(shard)
            if source == url:
                assert got == expected[key]
            if gets is None:
                continue
            assert dict(px.requests) == {"GET": gets}, px.log
            path, sent = px.log[-1][2], px.get_bytes[px.log[-1][2]]
            assert path.replace("%2F", "/").endswith(got["__url__"].split("/", 3)[3])
            size = sum(len(v) for k, v in got.items() if not k.startswith("__"))
            assert size < sent < size + 512 * 8, (sent, size)
        with pytest.raises(wdstream.NotFoundError):
            wdstream.get_sample(url, "00004_000000000", via)
    args = [a for k, v in opts.items() for a in ("--storage-option", f"{k}={v}")]
    assert main(["inspect", url, "--key", "00001_000000006", *args]) == 0
    printed = capsys.readouterr().out
    assert "sample 00001_000000006" in printed and f"shard: {url}/shard-00001-" in printed
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        got = wdstream.get_sample(f"{raw}/{{00000..00001}}.tar", "000010002", opts)
    assert got["__key__"] == "000010002" and "scanning" in caplog.text
