"""manifest.py: manifest and partition-record round trips, URL resolution, load errors."""

from __future__ import annotations

import json

import pytest

from wdstream.errors import SourceError
from wdstream.format.manifest import Manifest, PartitionRecord, ShardInfo, load_manifest

SHARDS = [ShardInfo(url="shard-00000-00000.tar", samples=3, bytes=10240, sha256="a" * 64,
                    index="shard-00000-00000.idx.json", partition=0),
          ShardInfo(url="s3://other/x.tar", samples=2, bytes=20480, sha256="b" * 64)]


def test_manifest_round_trip_and_urls(tmp_path):
    m = Manifest(shards=SHARDS, source={"name": "x", "split": "train"},
                 skipped={"bad_image": 2}, fields=["txt", "jpg"])
    url = m.save(str(tmp_path))
    data = json.loads(open(url).read())
    assert data["samples"] == 5 and data["bytes"] == 30720
    assert data["fields"] == ["jpg", "txt"] and data["skipped"] == {"bad_image": 2}
    back = load_manifest(str(tmp_path))
    assert back.shards == SHARDS and back.source == m.source
    assert back.shard_urls() == [f"{tmp_path}/shard-00000-00000.tar", "s3://other/x.tar"]
    assert back.index_urls() == [f"{tmp_path}/shard-00000-00000.idx.json", None]
    assert load_manifest(url).samples == 5


def test_bad_manifests_name_the_url(tmp_path):
    with pytest.raises(SourceError, match="no wdstream manifest at") as e:
        load_manifest(str(tmp_path / "missing"))
    text = str(e.value)
    assert "missing/manifest.json" in text and text.count("does not exist") == 1
    assert "wdstream convert" in text and "wdstream index" in text and "{00000..00009}" in text
    d = Manifest(shards=SHARDS).to_dict()
    d["samples"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(SourceError, match="not a valid wdstream manifest.*99"):
        load_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(SourceError, match="no 'shards'"):
        load_manifest(str(tmp_path))


def test_partition_record_round_trip():
    rec = PartitionRecord(partition=3, shards=SHARDS[:1], samples=3, skipped={"bad_audio": 1},
                          fields=["flac", "txt"])
    assert PartitionRecord.from_json(rec.to_json()) == rec
