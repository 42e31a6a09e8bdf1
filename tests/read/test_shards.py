"""Shard reading: the local shard cache (LRU, byte bound) and shards over plain HTTP."""

from __future__ import annotations

import os
import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import read_span, small_config, write_test_shards

import wdstream

cfg = partial(
    small_config,
    batch_size=4,
    num_workers=0,
    cache_size=8,
    vision_dim=16,
    max_audio_length=100,
    max_text_length=16,
)


def test_shard_cache_keeps_recent_shards_within_its_byte_bound(tmp_path):
    src = str(tmp_path / "ds")
    m = write_test_shards(src, [8, 8, 8], audio=False)
    biggest = max(s.bytes for s in m.shards)
    cache_dir = tmp_path / "cache"
    config = cfg(local_cache_dir=str(cache_dir), local_cache_bytes=2 * biggest + 10)
    keys0 = [k for b in wdstream.make_loader(src, config) for k in b["keys"]]
    cached = [f for f in os.listdir(cache_dir) if ".partial-" not in f]
    assert 1 <= len(cached) <= 2  # LRU eviction keeps it under the bound
    assert sum(os.path.getsize(cache_dir / f) for f in cached) <= 2 * biggest + 10
    # the cached copies are byte-identical to the shards
    by_name = {s.url: s for s in m.shards}
    for f in cached:
        name = f.split("-", 1)[1]
        assert (cache_dir / f).read_bytes() == (tmp_path / "ds" / name).read_bytes()
        assert by_name[name].bytes == os.path.getsize(cache_dir / f)
    keys1 = [k for b in wdstream.make_loader(src, config) for k in b["keys"]]
    assert keys0 == keys1 and len(set(keys0)) == 24


def test_shard_cache_under_churn_from_many_fetch_threads(tmp_path):
    """Lanes read six shards in turn through a cache that holds one: eight fetch threads
    download, evict and open at once, and every sample still arrives, none skipped."""
    src = str(tmp_path / "ds")
    m = write_test_shards(src, [9] * 6, audio=False, image_px=(8, 12))
    config = cfg(
        local_cache_dir=str(tmp_path / "cache"),
        read_ahead_requests=8,
        local_cache_bytes=max(s.bytes for s in m.shards),
        cache_size=24,
        shuffle_lanes=6,
        batch_size=6,
    )
    loader = wdstream.make_loader(src, config)
    keys = [k for b in loader for k in b["keys"]]
    assert sorted(keys) == sorted({*keys}) and len(keys) == 54
    assert loader.stats()[0]["skipped"] == {}


class RangeHandler(SimpleHTTPRequestHandler):
    """http.server plus single byte ranges (what fsspec's HTTP filesystem asks for)."""

    def log_message(self, *args):
        pass

    def send_head(self):
        m = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if not m or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        start = int(m.group(1))
        end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
        f = open(path, "rb")  # noqa: SIM115 - closed by copyfile's caller
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = end - start + 1
        return _Limited(f, end - start + 1)


class _Limited:
    def __init__(self, f, n):
        self.f, self.n = f, n

    def read(self, size=-1):
        if self.n <= 0:
            return b""
        data = self.f.read(self.n if size < 0 else min(size, self.n))
        self.n -= len(data)
        return data

    def close(self):
        self.f.close()


@pytest.fixture
def http_root(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_manifest_over_http_in_exact_mode(http_root):
    root, url = http_root
    write_test_shards(str(root / "ds"), [10, 7])
    loader = wdstream.make_loader(f"{url}/ds/manifest.json", cfg(num_workers=2), rank=1, world=2)
    batches = list(loader)
    assert len(batches) == len(loader) == 17 // 8
    assert all(b["pixel_values"].shape == (4, 3, 16, 16) for b in batches)


def test_missing_http_source_names_the_url(http_root):
    _, url = http_root
    with pytest.raises(wdstream.StorageError, match=f"{url}/nothing/manifest.json"):
        wdstream.make_loader(f"{url}/nothing", cfg())


def test_a_shard_that_does_not_match_its_binary_index_is_a_counted_error(tmp_path):
    """Key hashes in the index catch a shard replaced under its manifest: every sample of
    the read becomes an error item naming the shard, never a wrong sample."""
    from wdstream.errors import ErrorBudget
    from wdstream.read.shards import ShardRef
    from wdstream.write.writer import ShardWriter

    infos = {}
    for folder, prefix in (("a", "key"), ("b", "kez")):  # same sizes, other keys
        w = ShardWriter(str(tmp_path / folder), 0)
        for i in range(4):
            w.write(f"{prefix}{i}", {"txt": b"caption"})
        infos[folder] = w.close()[0]
    shard = ShardRef(
        url=str(tmp_path / "a" / infos["a"].url),
        samples=4,
        index_url=str(tmp_path / "a" / infos["a"].index),
    )
    good = read_span(shard, 1, 4, [1, 3], ErrorBudget(-1))
    assert [s["__key__"] for s in good] == ["key1", "key3"]
    (tmp_path / "a" / infos["a"].url).write_bytes((tmp_path / "b" / infos["b"].url).read_bytes())
    bad = read_span(shard, 1, 4, [1, 3], ErrorBudget(-1))
    assert all("__error__" in x and "not the key its index names" in x["__error__"] for x in bad)


def test_a_dataset_over_a_large_compact_manifest_pickles_small(tmp_path):
    """Workers receive a shard table (arrays and one blob of names), not a ShardRef each."""
    import pickle

    import numpy as np

    from wdstream.format.shardtable import ShardTable
    from wdstream.read.datasets import ShardDataset, ShardSource
    from wdstream.read.shards import ShardRefs

    n = 100_000
    names = "\n".join(f"shard-{i // 1000:05d}-{i % 1000:05d}.tar" for i in range(n))
    table = ShardTable(str(tmp_path), names, np.full(n, 10_000), {"suffix": ".idx"})
    source = ShardSource("big", ShardRefs(table), has_manifest=True)
    ds = ShardDataset(source, wdstream.Config(num_workers=2), None, None, rank=3, world=8)
    size = len(pickle.dumps(ds))
    assert size < 48 * n  # about 41 bytes a shard: name, offset and count
    back = pickle.loads(pickle.dumps(ds))
    assert back.source.shards[n - 1].url == f"{tmp_path}/shard-00099-00999.tar"
    assert back.source.shards[5].index_url == f"{tmp_path}/shard-00000-00005.idx"
    assert back.batches_per_rank(0) == n * 10_000 // (8 * wdstream.Config().batch_size)


def test_version_1_manifest_with_json_indexes_still_reads_mid_shard(tmp_path, caplog):
    """An old conversion: manifest version 1 and ``.idx.json`` indexes (offsets and keys)."""
    import json

    from wdstream.format.index import parse_index
    from wdstream.format.manifest import Manifest

    url = str(tmp_path / "old")
    m = write_test_shards(url, [10, 6], audio=False, image=False)
    shards = []
    for s in m.shards:
        idx = parse_index((tmp_path / "old" / s.index).read_bytes(), s.samples)
        keys = [f"{s.partition:05d}_{row:09d}" for row in range(s.samples)]
        name = s.index + ".json"
        (tmp_path / "old" / name).write_text(
            json.dumps({"offsets": idx["offsets"].tolist(), "keys": keys})
        )
        (tmp_path / "old" / s.index).unlink()
        shards.append(type(s)(**{**s.__dict__, "index": name}))
    Manifest(shards=shards, source={"name": "old"}).save(url)
    config = cfg(shuffle=False, batch_size=4)
    with caplog.at_level("WARNING"):
        keys = [
            k
            for r in range(2)
            for b in wdstream.make_loader(url, config, rank=r, world=2)
            for k in b["keys"]
        ]
    assert "no usable index" not in caplog.text  # rank 1 started at sample 8 by its offset
    assert sorted(keys) == sorted(
        f"{p:05d}_{row:09d}" for p, n in ((0, 10), (1, 6)) for row in range(n)
    )
