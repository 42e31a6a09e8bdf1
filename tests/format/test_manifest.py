"""manifest.py: manifest and partition-record round trips, URL resolution, load errors."""

from __future__ import annotations

import json
import os

import pytest

from wdstream.errors import SourceError, StorageError
from wdstream.format.index import load_index
from wdstream.format.manifest import (
    Manifest,
    PartitionRecord,
    ShardInfo,
    load_manifest,
    upgrade_manifest,
)

SHARDS = [
    ShardInfo(
        url="shard-00000-00000.tar",
        samples=3,
        bytes=10240,
        sha256="a" * 64,
        index="shard-00000-00000.idx.json",
        partition=0,
    ),
    ShardInfo(url="s3://other/x.tar", samples=2, bytes=20480, sha256="b" * 64),
]


def test_manifest_round_trip_and_urls(tmp_path):
    m = Manifest(
        shards=SHARDS,
        source={"name": "x", "split": "train"},
        skipped={"bad_image": 2},
        fields=["txt", "jpg"],
    )
    url = m.save(str(tmp_path))
    data = json.loads(open(url).read())
    assert data["samples"] == 5 and data["bytes"] == 30720
    assert data["fields"] == ["jpg", "txt"] and data["skipped"] == {"bad_image": 2}
    with pytest.raises(SourceError, match=r"shards\[1\].url.*outside the manifest's folder"):
        load_manifest(str(tmp_path))  # another bucket: only when the user allows it
    back = load_manifest(str(tmp_path), allowed_prefixes=["s3://other/"])
    assert back.shards == SHARDS and back.source == m.source
    assert back.shard_urls() == [f"{tmp_path}/shard-00000-00000.tar", "s3://other/x.tar"]
    assert back.index_urls() == [f"{tmp_path}/shard-00000-00000.idx.json", None]
    assert load_manifest(url, allowed_prefixes=["s3://other"]).samples == 5


def test_bad_manifests_name_the_url(tmp_path):
    with pytest.raises(SourceError, match="no wdstream manifest at") as e:
        load_manifest(str(tmp_path / "missing"))
    text = str(e.value)
    assert "missing/manifest.json" in text and text.count("does not exist") == 1
    assert "wdstream convert" in text and "wdstream index" in text and "{00000..00009}" in text
    d = Manifest(shards=SHARDS[:1]).to_dict()
    d["samples"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(SourceError, match="not a valid wdstream manifest.*99"):
        load_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(SourceError, match="no 'shards'"):
        load_manifest(str(tmp_path))


def test_partition_record_round_trip():
    rec = PartitionRecord(
        partition=3, shards=SHARDS[:1], samples=3, skipped={"bad_audio": 1}, fields=["flac", "txt"]
    )
    assert PartitionRecord.from_json(rec.to_json()) == rec


# -- hostile manifests ---------------------------------------------------------------------------
def _good() -> dict:
    return Manifest(
        shards=[
            ShardInfo(
                url="shard-0.tar", samples=3, bytes=10240, sha256="a" * 64, index="shard-0.idx.json"
            )
        ]
    ).to_dict()


def _shard(**changes) -> dict:
    d = _good()
    d["shards"][0].update(changes)
    d.pop("samples")
    d.pop("bytes")
    return d


@pytest.mark.parametrize(
    "d, field, problem",
    [
        (_shard(samples=-5), r"shards\[0\]\.samples", "negative"),
        (_shard(samples=True), r"shards\[0\]\.samples", "not an integer"),
        (_shard(samples=2.5), r"shards\[0\]\.samples", "not an integer"),
        (_shard(bytes="10240"), r"shards\[0\]\.bytes", "not an integer"),
        (_shard(url=123), r"shards\[0\]\.url", "is 123, not a string"),
        (_shard(index=["x"]), r"shards\[0\]\.index", "not a string or null"),
        (
            _shard(samples=300_000_000),
            r"shards\[0\]\.samples",
            "more than its 10240 bytes can hold",
        ),
        (
            _shard(url="s.tar.gz", bytes=100, samples=300_000),
            r"shards\[0\]\.samples",
            "at most 201",
        ),
        ({**_good(), "source": ["x"]}, "'source'", "is a list, not a dict"),
        ({**_good(), "samples": 4}, "'samples'", "sum to 3"),
        ({**_good(), "bytes": -1}, "'bytes'", "sum to 10240"),
        ({**_good(), "skipped": {"bad_image": -2}}, r"skipped\.bad_image", "non-negative"),
        ({**_good(), "fields": [1]}, "'fields'", "other than strings"),
        ({"shards": {"a": 1}}, "'shards'", "not a list"),
        ({"shards": ["x"]}, r"shards\[0\]'", "not an object"),
        ([1, 2], "top level", "is a list"),
        (_shard(url=None), r"shards\[0\]\.url", "not a string"),
    ],
)
def test_malformed_manifests_are_refused_naming_the_field(tmp_path, d, field, problem):
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(SourceError, match=f"{field}.*{problem}") as e:
        load_manifest(str(tmp_path))
    assert f"{tmp_path}/manifest.json" in str(e.value)  # names the manifest too


@pytest.mark.parametrize(
    "url, allowed, ok",
    [
        ("shard-0.tar", [], True),
        ("sub/shard-0.tar", [], True),
        ("{root}/shard-0.tar", [], True),  # absolute, inside its own folder
        ("../../etc/passwd", [], False),
        ("sub/../../x.tar", [], False),
        ("sub/../shard-0.tar", [], False),  # any '..' is refused, even one that stays inside
        ("/etc/passwd", [], False),
        ("s3://other-bucket/x.tar", [], False),
        ("s3://laion/shards/x.tar", ["s3://laion/shards/"], True),
        ("s3://laion/shards/x.tar", ["s3://laion/shards"], True),
        ("s3://laion/shards-evil/x.tar", ["s3://laion/shards"], False),
        ("s3://laion/shards/../private/x.tar", ["s3://laion/shards/"], False),
        ("gs://laion/shards/x.tar", ["s3://laion/shards/"], False),
        ("x.tar::s3://other/y.tar", [], False),
        ("", [], False),
        ("x.tar?/../../etc/passwd", [], False),  # a '..' after '?' is resolved too
        ("x.tar?v=/../../etc/passwd", [], False),
        ("%2e%2e/x.tar", [], False),  # escaped dots, resolved by HTTP servers
        ("sub/x.tar?versionId=3", [], True),
    ],
)
def test_shard_urls_are_confined_to_the_manifest_folder_or_allowed_prefixes(
    tmp_path, url, allowed, ok
):
    root = str(tmp_path / "ds")
    os.makedirs(root)
    d = _shard(url=url.format(root=root), index=None)
    with open(f"{root}/manifest.json", "w") as f:
        json.dump(d, f)
    if ok:
        assert load_manifest(root, allowed_prefixes=allowed).shards[0].url == d["shards"][0]["url"]
    else:
        with pytest.raises(SourceError, match=r"shards\[0\]\.url"):
            load_manifest(root, allowed_prefixes=allowed)


def test_a_manifest_cannot_grant_itself_access(tmp_path):
    d = _shard(url="/etc/passwd", index="../idx.json")
    d["options"] = {"allowed_prefixes": ["/"]}
    d["allowed_prefixes"] = ["/"]
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(SourceError, match=r"shards\[0\]\.url.*config.allowed_prefixes"):
        load_manifest(str(tmp_path))
    d["shards"][0]["url"] = "shard-0.tar"
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(SourceError, match=r"shards\[0\]\.index.*'\.\.'"):
        load_manifest(str(tmp_path))


def test_index_and_manifest_reads_are_bounded(tmp_path):
    with pytest.raises(StorageError, match="larger than 5896 bytes"):
        load_index("/dev/zero", samples=3)  # would never end if read whole
    (tmp_path / "x.idx.json").write_bytes(b" " * 6000)
    with pytest.raises(StorageError, match="larger than"):
        load_index(str(tmp_path / "x.idx.json"), samples=3)
    (tmp_path / "x.idx.json").write_text(json.dumps({"offsets": [0, 512, -1, 2048]}))
    with pytest.raises(ValueError, match="ascending non-negative"):
        load_index(str(tmp_path / "x.idx.json"), samples=3)
    os.symlink("/dev/zero", tmp_path / "manifest.json")
    with pytest.raises(SourceError, match="cannot read manifest.*larger than"):
        load_manifest(str(tmp_path))


@pytest.mark.parametrize(
    "d",
    [
        [1, 2],
        {"shards": [1]},
        _shard(url=None),
        _shard(samples="x"),
        _shard(bytes="x", samples=300_000_000),
        _shard(samples=300_000_000, bytes=300_000_000 * 512),
        _shard(index="../idx.json"),
        {**_good(), "version": 3},
        {**_good(), "version": 2},
    ],
)
def test_upgrade_checks_a_manifest_exactly_as_load_manifest_does(tmp_path, d):
    """Item 13: the same SourceError (URL, field, words) before anything is written."""
    text = json.dumps(d)
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(SourceError) as loaded:
        load_manifest(str(tmp_path))
    with pytest.raises(SourceError) as upgraded:
        upgrade_manifest(str(tmp_path))
    assert str(upgraded.value) == str(loaded.value) and upgraded.value.key == loaded.value.key
    assert (tmp_path / "manifest.json").read_text() == text
    assert not (tmp_path / "manifest.details.json").exists()
