"""The per-shard index: written by the writer, read back and checked by the reader."""

from __future__ import annotations

import json

import pytest

from wdstream.format.index import index_bytes, index_name, load_index, parse_index


def test_index_round_trip_and_name(tmp_path):
    (tmp_path / "i.idx.json").write_bytes(index_bytes([0, 1536, 3072], ["a", "b"]))
    idx = load_index(str(tmp_path / "i.idx.json"), samples=2)
    assert idx == {"offsets": [0, 1536, 3072], "keys": ["a", "b"]}
    assert index_name("shard-00001-00002.tar") == "shard-00001-00002.idx.json"
    assert index_name("x.tar.gz") == "x.idx.json"


@pytest.mark.parametrize("doc, samples, match", [
    ({"offsets": [0, 512, 1024], "keys": ["a", "b"]}, 3, "manifest says 3"),
    ({"offsets": [0, 512], "keys": ["a", "b"]}, None, "2 keys for 1 samples"),
    ({"keys": ["a"]}, None, "no 'offsets'"),
    ([1, 2], None, "no 'offsets'"),
])
def test_a_malformed_index_is_refused(doc, samples, match):
    with pytest.raises(ValueError, match=match):
        parse_index(json.dumps(doc).encode(), samples)


def test_an_index_without_keys_is_allowed():
    assert parse_index(b'{"offsets": [0, 512]}', 1) == {"offsets": [0, 512], "keys": None}
