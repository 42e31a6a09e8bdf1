"""The compact manifest (version 2): reader part as columns, details part, upgrade from
version 1, and the shard table the reader plans from."""

from __future__ import annotations

import json
import pickle

import pytest

from wdstream.errors import SourceError
from wdstream.format.manifest import (
    Manifest,
    ShardInfo,
    load_manifest,
    load_reader_part,
    upgrade_manifest,
)
from wdstream.format.shardtable import (
    DETAILS_NAME,
    load_shard_table,
    save_compact,
)

SHARDS = [
    ShardInfo(
        url=f"shard-00000-{i:05d}.tar",
        samples=n,
        bytes=10240 * (i + 1),
        sha256=f"{i:064x}",
        index=f"shard-00000-{i:05d}.idx",
        partition=0,
        first_key=f"k{i}a",
        last_key=f"k{i}z",
    )
    for i, n in enumerate([5, 5, 5, 3, 0, 5])
]


def test_compact_round_trip_keeps_every_field(tmp_path):
    m = Manifest(shards=SHARDS, source={"name": "x"}, skipped={"bad": 1}, fields=["txt"])
    save_compact(m, str(tmp_path))
    head = json.loads((tmp_path / "manifest.json").read_text())
    assert head["version"] == 2 and head["samples"] == 23 and head["details"] == DETAILS_NAME
    assert head["shards"]["samples"] == [[5, 3], [3, 1], [0, 1], [5, 1]]  # run-length
    assert head["shards"]["index"] == {"suffix": ".idx"}
    assert "sha256" not in json.dumps(head)  # only the details part has them
    back = load_manifest(str(tmp_path))
    assert back.shards == SHARDS and back.source == m.source and back.skipped == m.skipped
    assert back.index_urls()[1] == f"{tmp_path}/shard-00000-00001.idx"


def test_reader_part_is_a_small_table(tmp_path):
    save_compact(Manifest(shards=SHARDS, source={"name": "x"}), str(tmp_path))
    (tmp_path / DETAILS_NAME).unlink()  # the reader never needs it
    head, table = load_shard_table(str(tmp_path / "manifest.json"))
    assert head["source"] == {"name": "x"} and len(table) == 6
    assert table.samples.tolist() == [5, 5, 5, 3, 0, 5]
    assert table.url(3) == f"{tmp_path}/shard-00000-00003.tar"
    assert table.index_url(5) == f"{tmp_path}/shard-00000-00005.idx"
    assert pickle.loads(pickle.dumps(table)).url(2) == table.url(2)
    with pytest.raises(SourceError, match="per-shard part"):
        load_manifest(str(tmp_path))  # the full manifest needs the details part


def test_indexes_following_no_rule_and_absolute_urls(tmp_path):
    shards = [
        ShardInfo(url="a.tar", samples=2, bytes=10240, sha256="0", index="idx/a.idx"),
        ShardInfo(url="s3://b/x.tar", samples=1, bytes=10240, sha256="1", index=None),
    ]
    save_compact(Manifest(shards=shards), str(tmp_path))
    _, table = load_shard_table(str(tmp_path / "manifest.json"))
    assert table.index_url(0) == f"{tmp_path}/idx/a.idx" and table.index_url(1) is None
    assert table.url(1) == "s3://b/x.tar"
    assert load_manifest(str(tmp_path), allowed_prefixes=["s3://b/"]).shards == shards
    # the reader's part is confined like the whole manifest: another bucket needs the user's leave
    with pytest.raises(SourceError, match=r"shards\[1\].url.*allowed_prefixes"):
        load_reader_part(str(tmp_path))
    _, table = load_reader_part(str(tmp_path), allowed_prefixes=["s3://b/"])
    assert len(table) == 2


def test_upgrade_from_version_1_reads_no_shard(tmp_path):
    v1 = [ShardInfo(**{**s.__dict__, "index": s.index + ".json"}) for s in SHARDS]
    Manifest(shards=v1, source={"name": "old"}).save(str(tmp_path))
    _, old_table = load_shard_table(str(tmp_path / "manifest.json"))  # v1 read as a table
    assert upgrade_manifest(str(tmp_path)) is True  # no shard file exists: none was read
    assert upgrade_manifest(str(tmp_path)) is False  # already version 2
    head = json.loads((tmp_path / "manifest.json").read_text())
    assert head["version"] == 2 and head["shards"]["index"] == {"suffix": ".idx.json"}
    _, table = load_shard_table(str(tmp_path / "manifest.json"))
    assert [table.index_url(i) for i in range(6)] == [old_table.index_url(i) for i in range(6)]
    assert load_manifest(str(tmp_path)).shards == v1


def test_a_bad_compact_manifest_names_the_url(tmp_path):
    save_compact(Manifest(shards=SHARDS), str(tmp_path))
    head = json.loads((tmp_path / "manifest.json").read_text())
    head["shards"]["samples"] = [[5, 2]]
    (tmp_path / "manifest.json").write_text(json.dumps(head))
    with pytest.raises(SourceError, match="manifest.json is not a valid.*2 sample counts for 6"):
        load_shard_table(str(tmp_path / "manifest.json"))


@pytest.mark.parametrize("details", ["../elsewhere.json", "/dev/zero", "sub/d.json"])
def test_the_details_part_must_lie_beside_the_manifest(tmp_path, details):
    save_compact(Manifest(shards=SHARDS), str(tmp_path))
    head = json.loads((tmp_path / "manifest.json").read_text())
    head["details"] = details
    (tmp_path / "manifest.json").write_text(json.dumps(head))
    with pytest.raises(SourceError, match="'details' must name a file beside the manifest"):
        load_manifest(str(tmp_path))


def test_the_reader_part_carries_sizes_and_refuses_impossible_counts(tmp_path):
    save_compact(Manifest(shards=SHARDS), str(tmp_path))
    _, table = load_reader_part(str(tmp_path))
    assert table.bytes.tolist() == [s.bytes for s in SHARDS]  # checked when a shard opens
    head = json.loads((tmp_path / "manifest.json").read_text())
    head["shards"]["samples"] = [[10**8, 1], [5, 2], [3, 1], [0, 1], [5, 1]]
    head["samples"] = sum(n * r for n, r in head["shards"]["samples"])
    (tmp_path / "manifest.json").write_text(json.dumps(head))
    with pytest.raises(SourceError, match=r"'shards\[0\].samples' is 100000000, more than"):
        load_reader_part(str(tmp_path))
