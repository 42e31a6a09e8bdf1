"""The per-shard index: written by the writer, read back and checked by the reader."""

from __future__ import annotations

import json

import pytest

from wdstream.format.index import index_bytes, index_name, key_hash, load_index, parse_index


def test_index_round_trip_and_name(tmp_path):
    data = index_bytes([0, 1536, 3072], ["a", "b"])
    assert len(data) == 16 + 8 * 3 + 8 * 2  # binary: 16 bytes per sample
    (tmp_path / "i.idx").write_bytes(data)
    idx = load_index(str(tmp_path / "i.idx"), samples=2)
    assert idx["offsets"].tolist() == [0, 1536, 3072] and idx["keys"] is None
    assert idx["key_hashes"].tolist() == [key_hash("a"), key_hash("b")]
    assert key_hash("a") != key_hash("b")
    assert index_name("shard-00001-00002.tar") == "shard-00001-00002.idx"
    assert index_name("x.tar.gz") == "x.idx"


def test_version_1_json_index_is_still_read(tmp_path):
    (tmp_path / "i.idx.json").write_text(
        json.dumps({"offsets": [0, 1536, 3072], "keys": ["a", "b"]})
    )
    idx = load_index(str(tmp_path / "i.idx.json"), samples=2)
    assert idx == {"offsets": [0, 1536, 3072], "keys": ["a", "b"]}


@pytest.mark.parametrize(
    "cut, samples, match", [(0, 3, "manifest says 3"), (-8, None, "need"), (10, None, "truncated")]
)
def test_a_malformed_binary_index_is_refused(cut, samples, match):
    data = index_bytes([0, 512, 1024], ["a", "b"])
    data = data[:cut] if cut < 0 else data[:cut] if cut else data
    with pytest.raises(ValueError, match=match):
        parse_index(data, samples)


@pytest.mark.parametrize(
    "doc, samples, match",
    [
        ({"offsets": [0, 512, 1024], "keys": ["a", "b"]}, 3, "manifest says 3"),
        ({"offsets": [0, 512], "keys": ["a", "b"]}, None, "2 keys for 1 samples"),
        ({"keys": ["a"]}, None, "no 'offsets'"),
        ([1, 2], None, "no 'offsets'"),
    ],
)
def test_a_malformed_index_is_refused(doc, samples, match):
    with pytest.raises(ValueError, match=match):
        parse_index(json.dumps(doc).encode(), samples)


def test_an_index_without_keys_is_allowed():
    assert parse_index(b'{"offsets": [0, 512]}', 1) == {"offsets": [0, 512], "keys": None}
