"""Shards written by wdstream load with plain webdataset and with the `datasets` webdataset
builder (local shards; that builder does not read s3:// URLs, see docs/converter.md)."""

from __future__ import annotations

import json

import pytest

from wdstream.write.convert import convert


@pytest.fixture(scope="module")
def shards(small_hf_dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("compat") / "o")
    m = convert(small_hf_dataset, out, max_samples_per_shard=7, workers=1, quiet=True)
    return m, m.shard_urls()


def test_plain_webdataset_reads_every_sample(shards):
    import webdataset as wds

    manifest, urls = shards
    ds = wds.WebDataset(urls, shardshuffle=False)
    samples = list(ds)
    assert len(samples) == manifest.samples == 48
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == 48 and keys[0] == "00000_000000000"
    for s in samples:
        assert "txt" in s and "flac" in s and ("jpg" in s or "png" in s)
        assert json.loads(s["json"])["id"] == int(s["txt"].split(b":")[0].split()[1])
    decoded = next(iter(wds.WebDataset(urls[:1], shardshuffle=False).decode("pil")))
    img = decoded.get("jpg") or decoded.get("png")
    assert img.size[0] > 0


def test_datasets_webdataset_builder_streams_them(shards):
    """Mixed image formats (jpg and png members) need explicit features: the builder infers
    them from the first 5 samples only. FLAC is read as binary because the builder's Audio
    feature needs torchcodec to *encode* even undecoded bytes, and torchcodec is absent here."""
    import datasets

    manifest, urls = shards
    features = datasets.Features(
        {
            "__key__": datasets.Value("string"),
            "__url__": datasets.Value("string"),
            "jpg": datasets.Image(),
            "png": datasets.Image(),
            "flac": datasets.Value("binary"),
            "txt": datasets.Value("string"),
            "json": {
                "id": datasets.Value("int64"),
                "label": datasets.Value("string"),
                "source": datasets.Value("string"),
            },
        }
    )
    assert set(manifest.fields) == {"jpg", "png", "flac", "txt", "json"}
    ds = datasets.load_dataset(
        "webdataset", data_files={"train": urls}, split="train", streaming=True, features=features
    )
    rows = list(ds)
    assert len(rows) == 48
    first = rows[0]
    assert first["__key__"] == "00000_000000000"
    assert first["txt"].startswith("sample 0:")
    assert first["json"]["id"] == 0
    assert first["flac"][:4] == b"fLaC"
    assert sum(r["png"] is not None for r in rows) + sum(r["jpg"] is not None for r in rows) == 48
    assert rows[3]["png"].size[0] > 0


def test_datasets_webdataset_builder_infers_homogeneous_shards(tmp_path):
    import datasets

    from wdstream.write.sources.synthetic import write_synthetic

    m = write_synthetic(
        str(tmp_path / "s"), 10, modalities=("text", "image"), max_samples_per_shard=4
    )
    ds = datasets.load_dataset(
        "webdataset", data_files={"train": m.shard_urls()}, split="train", streaming=True
    )
    rows = list(ds)
    assert len(rows) == 10 and rows[0]["__key__"] == "00000_000000000"
    assert rows[0]["jpg"].size[1] == 64 and rows[9]["json"]["index"] == 9
