"""Concurrent ranged reads (read/fetch.py), the minimal tar parser, decode threads and
loader.stats(): bounds counted at the S3 test proxy, and keys identical whatever the
read-ahead and decode settings."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from helpers import write_test_shards

import wdstream
from wdstream.format.index import parse_index
from wdstream.format.tario import iter_members, split_members, tar_bytes


def cfg(**kw):
    base = dict(
        batch_size=4,
        num_workers=0,
        cache_size=8,
        vision_dim=16,
        max_audio_length=200,
        max_text_length=16,
        seed=3,
    )
    base.update(kw)
    return wdstream.Config(**base)


def keys_of(url, config, **kw):
    return [k for b in wdstream.make_loader(url, config, **kw) for k in b["keys"]]


# -- the minimal tar parser ------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_split_members_matches_tarfile(fmt):
    names = ["dir/" + "x" * 150 + ".jpg", "dir/" + "x" * 150 + ".txt", "short.cls", "é/ü.txt"]
    if fmt == tarfile.USTAR_FORMAT:
        names = ["d" * 120 + "/k.jpg", "short.cls", "é/ü.txt"]  # ustar: prefix + name
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for i, name in enumerate(names):
            info = tarfile.TarInfo(name)
            info.size = 700 * i
            tar.addfile(info, io.BytesIO(bytes([i]) * info.size))
    data = buf.getvalue()
    assert split_members(data) == list(iter_members(io.BytesIO(data)))


def test_split_members_of_a_span_and_its_errors():
    data = tar_bytes([(f"k{i}", {"jpg": b"j" * (100 * i), "txt": b"t"}) for i in range(6)])
    whole = split_members(data)
    assert [n for n, _ in whole][:4] == ["k0.jpg", "k0.txt", "k1.jpg", "k1.txt"]
    with pytest.raises(EOFError):
        split_members(data[: 4 * 512 + 50])  # k1.jpg's data cut short
    with pytest.raises(EOFError):
        split_members(data[: 3 * 512 + 50])  # cut inside k1.jpg's header
    bad = bytearray(data)
    bad[0] ^= 1  # the name changes, the checksum no longer matches
    with pytest.raises(ValueError, match="checksum"):
        split_members(bytes(bad))
    big = split_members(data, max_member_bytes=250)
    assert [type(d).__name__ for n, d in big if n == "k5.jpg"] == ["MemberTooLarge"]


# -- requests in flight, counted at the proxy ------------------------------------------------
@pytest.mark.s3
@pytest.mark.slow
def test_requests_in_flight_reach_and_keep_the_bound_and_stats_match_the_proxy(s3, s3_proxy):
    opts = s3["storage_options"]
    m = write_test_shards("s3://test/ra", [12, 12, 12], storage_options=opts, audio=False)
    proxy, via_proxy = s3_proxy
    proxy.ttfb = 0.03  # every GET waits, as on S3: requests pile up only if sent together
    for bound in (1, 3):
        config = cfg(
            storage_options=via_proxy, read_ahead_requests=bound, read_block_size=1, shuffle=False
        )  # one sample per ranged GET
        loader = wdstream.make_loader("s3://test/ra", config)
        proxy.reset_counters()
        keys = [k for b in loader for k in b["keys"]]
        snap = proxy.stats()
        assert len(keys) == 36
        assert snap["max_in_flight"] == bound  # the bound holds, and is reached
        (row,) = loader.stats()
        assert row["samples"] == 36 and row["batches"] == 9
        assert row["get_requests"] == snap["gets"] == 36 + 3  # a GET per sample, per index
        span_bytes = sum(s.bytes for s in m.shards) - 3 * 1024  # shards less their end blocks
        assert row["bytes_read"] >= span_bytes * 0.9
        assert row["bytes_read"] == sum(snap["get_bytes"].values())
        assert row["io_wait_s"] >= 0 and row["decode_s"] > 0 and row["samples_per_s"] > 0


@pytest.mark.s3
def test_bytes_bound_limits_requests_in_flight(s3, s3_proxy):
    opts = s3["storage_options"]
    m = write_test_shards("s3://test/rb", [16], storage_options=opts, audio=False)
    index = parse_index(s3["fs"].cat_file(f"test/rb/{m.shards[0].index}"), 16)
    sample = int(max(index["offsets"][1:] - index["offsets"][:-1]))
    proxy, via_proxy = s3_proxy
    proxy.ttfb = 0.03
    config = cfg(
        storage_options=via_proxy,
        read_ahead_requests=8,
        read_block_size=1,
        read_ahead_bytes=2 * sample,
        shuffle=False,
    )
    loader = wdstream.make_loader("s3://test/rb", config)
    proxy.reset_counters()
    assert len(keys_of_loader(loader)) == 16
    # two samples' bytes at most (a size check's HEAD, which fetches no bytes, may be beside)
    assert proxy.stats()["max_gets_in_flight"] <= 2


@pytest.mark.s3
def test_fetch_threads_share_one_filesystem(s3, s3_proxy, monkeypatch):
    """fsspec before 2026.3 caches a filesystem per thread, and every new s3fs instance builds
    a client of its own (0.1-0.3 s): with one per fetch thread the first batch waited for
    eight of them. Here every ``url_to_fs`` call makes a new filesystem, as there in each new
    thread: the reader must ask once per protocol and share it across its fetch threads."""
    from wdstream import storage

    opts = s3["storage_options"]
    write_test_shards("s3://test/rc", [6, 6, 6, 6], storage_options=opts, audio=False)
    proxy, via_proxy = s3_proxy
    proxy.ttfb = 0.02
    loader = wdstream.make_loader(
        "s3://test/rc", cfg(storage_options=via_proxy, read_ahead_requests=8, shuffle=False)
    )
    made = []
    real = storage.url_to_fs

    def fresh(url, options=None):
        fs, path = real(url, dict(options or {}, skip_instance_cache=True))
        made.append(fs)
        return fs, path

    monkeypatch.setattr(storage, "url_to_fs", fresh)
    assert len(keys_of_loader(loader)) == 24
    assert len(made) == 1  # one filesystem for the epoch, shared by every fetch thread


@pytest.mark.s3
def test_one_request_goes_first_then_the_fetch_threads(s3, s3_proxy):
    """s3fs and botocore set up their request machinery on the first requests, without a
    lock: eight threads starting at once in a fresh worker each did it (about 1 s before the
    worker's first response on loopback S3). A reader sends one request, waits for it, then
    fans out: no second request reaches the store before the first one's answer."""
    import time

    opts = s3["storage_options"]
    write_test_shards("s3://test/rd", [8, 8, 8], storage_options=opts, audio=False)
    proxy, via_proxy = s3_proxy
    ttfb = 0.15
    proxy.ttfb = ttfb
    loader = wdstream.make_loader(
        "s3://test/rd", cfg(storage_options=via_proxy, read_ahead_requests=8, shuffle=False)
    )
    arrivals = []

    def log(info):
        arrivals.append((time.monotonic(), info.method, info.path))
        return None

    proxy.faults = log
    try:
        assert len(keys_of_loader(loader)) == 24
    finally:
        proxy.faults = None
    # the first shard's index, which the first span needs anyway; no HEAD before it
    assert arrivals[0][1] == "GET" and arrivals[0][2].endswith(".idx")
    assert arrivals[1][0] - arrivals[0][0] >= 0.8 * ttfb  # the others waited for its answer
    assert len(arrivals) >= 6  # then the rest: sizes, indexes and spans


@pytest.mark.s3
def test_requests_before_a_workers_first_sample_are_pinned(s3, s3_proxy):
    """make_loader asks for the manifest twice (a fast-failing probe, then the reader part);
    a worker's first sample then costs two round trips: its first shard's index, alone, and
    its first span, which does not wait for the shard's size check (a HEAD beside it)."""
    opts = s3["storage_options"]
    write_test_shards("s3://test/rq", [8, 8, 8], storage_options=opts, audio=False, compact=True)
    proxy, via_proxy = s3_proxy
    proxy.reset_counters()
    loader = wdstream.make_loader("s3://test/rq", cfg(storage_options=via_proxy))
    made = [(m, p.rsplit("/", 1)[-1]) for _, m, p, _ in proxy.stats()["log"]]
    assert made == [("HEAD", "manifest.json"), ("GET", "manifest.json")]
    proxy.reset_counters()
    next(iter(loader))
    log = [(m, p.rsplit("/", 1)[-1]) for _, m, p, _ in proxy.stats()["log"]]
    first_span = next(i for i, (m, p) in enumerate(log) if m == "GET" and p.endswith(".tar"))
    assert log[0][0] == "GET" and log[0][1].endswith(".idx")
    # before the first span: its index, then (on fetch threads, beside it) the next shards'
    # indexes and the shards' size checks; no span of another shard, no second index of one
    before = log[1:first_span]
    assert all((m, p[-4:]) in {("GET", ".idx"), ("HEAD", ".tar")} for m, p in before), log
    assert len(before) <= 2 * 3 and len(set(before)) == len(before), log


@pytest.mark.s3
def test_spans_go_out_while_the_consumer_waits_for_one(s3, s3_proxy, s3proxy):
    """When the index of another shard arrives while the consumer waits for a span, the
    spans it unblocks are sent at once, not after the awaited one: fetch threads never idle
    while the consumer waits (at an epoch's start this was one span's transfer time for
    every other lane). The proxy answers the first span after 3 s and the other shards'
    indexes after 0.3 s: the other shards' spans must reach it while the first one is held
    (a reader that sent them only after the first one's answer sends them 3 s later)."""
    import time

    opts = s3["storage_options"]
    write_test_shards("s3://test/ov", [8, 8, 8], storage_options=opts, audio=False)
    proxy, via_proxy = s3_proxy
    loader = wdstream.make_loader("s3://test/ov", cfg(storage_options=via_proxy))
    held, indexes, spans = 3.0, [], []  # spans: (arrival, shard)

    def rule(info):  # called under the proxy's lock: it must not block
        name = info.path.rsplit("/", 1)[-1]
        if info.method == "GET" and name.endswith(".idx"):
            indexes.append(name)  # the first one goes alone; the others come late
            return s3proxy.Fault("slow", delay=0.3) if len(indexes) > 1 else None
        if info.method == "GET" and name.endswith(".tar") and info.range:
            spans.append((time.monotonic(), name))
            return s3proxy.Fault("slow", delay=held) if len(spans) == 1 else None
        return None

    proxy.faults = rule
    try:
        keys = keys_of_loader(loader)
    finally:
        proxy.faults = None
    assert len(keys) == 24 and len(set(keys)) == 24
    (t_first, first), others = spans[0], [(t, n) for t, n in spans[1:] if n != spans[0][1]]
    assert {n for _, n in others} == {f"shard-0000{i}-00000.tar" for i in range(3)} - {first}
    # both other shards' first spans went out while the first was held, not after its answer
    assert all(t - t_first < held / 2 for t, _ in others[:2]), spans


def keys_of_loader(loader):
    return [k for b in loader for k in b["keys"]]


# -- the same keys whatever the read-ahead and decode settings --------------------------------
@pytest.fixture(scope="module")
def local_ds(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("fetch") / "ds")
    write_test_shards(url, [9, 14, 5, 11], seed=1)
    return url


@pytest.mark.parametrize("workers", [0, 2])
def test_keys_identical_with_read_ahead_and_decode_threads(local_ds, workers):
    runs = {}
    for ra, threads in ((0, 0), (1, 0), (8, 0), (8, 4), (1, 4)):
        config = cfg(
            num_workers=workers,
            read_ahead_requests=ra,
            decode_threads=threads,
            read_block_size=4096,
        )
        runs[ra, threads] = keys_of(local_ds, config)
    first = runs[0, 0]
    assert len(first) == 36 and len(set(first)) == 36
    assert all(keys == first for keys in runs.values())


def test_resume_is_the_same_with_read_ahead_and_decode_threads(local_ds):
    def seen_and_rest(config):
        loader = wdstream.make_loader(local_ds, config)
        seen = []
        for i, b in enumerate(loader):
            seen += b["keys"]
            if i == 2:
                state = loader.state_dict()
                break
        loader.close()
        resumed = wdstream.make_loader(local_ds, config)
        resumed.load_state_dict(state)
        return seen, keys_of_loader(resumed)

    slow = seen_and_rest(cfg(read_ahead_requests=1, decode_threads=0))
    fast = seen_and_rest(cfg(read_ahead_requests=8, decode_threads=4, read_block_size=4096))
    assert fast == slow
    assert sorted(fast[0] + fast[1]) == sorted(keys_of(local_ds, cfg()))  # the rest, exactly


def test_shards_without_an_index_read_the_same(tmp_path, local_ds):
    with_index = keys_of(local_ds, cfg())
    url = str(tmp_path / "ds")
    m = write_test_shards(url, [9, 14, 5, 11], seed=1)
    for s in m.shards:
        os.remove(os.path.join(url, s.index))
    assert keys_of(url, cfg(read_ahead_requests=8, decode_threads=2)) == with_index


def test_decode_threads_keep_order_and_count_bad_samples_in_order():
    from wdstream.errors import ErrorBudget, SampleError
    from wdstream.read.stages import Bad, decode_stage

    def decoder(item):
        if item["__key__"] in ("k3", "k7"):
            raise SampleError("broken", reason="undecodable image")
        return {"key": item["__key__"]}

    def items():
        for i in range(20):
            yield (
                {"__error__": "unreadable shard", "__key__": f"k{i}"}
                if i == 11
                else {"__key__": f"k{i}", "__url__": "u"}
            )

    out = {}
    for threads in (0, 4):
        budget = ErrorBudget(-1)
        got = list(decode_stage(items(), decoder, budget, threads=threads))
        out[threads] = (
            [g.key if isinstance(g, Bad) else g["key"] for g in got],
            [isinstance(g, Bad) for g in got],
            dict(budget.counts),
            budget.placeholders,
        )
    assert out[0] == out[4]
    assert out[0][1].count(True) == 3 and out[0][3] == 3


# -- reads that continue each other in a shard share one request ------------------------------
def test_reads_continuing_in_the_same_shard_are_fetched_with_one_request(tmp_path):
    """Interleaved lanes read shard A, then B, then A's next samples: the fetcher fetches A's
    two reads with one ranged GET (within 1.25 requests' bytes), and the items are exactly
    those of one request per read."""
    import numpy as np

    from wdstream.errors import ErrorBudget
    from wdstream.read.fetch import ReadOptions, ShardReader
    from wdstream.read.planner import Read
    from wdstream.read.shards import span_items
    from wdstream.read.sources import resolve_source
    from wdstream.read.stats import Counters

    write_test_shards(str(tmp_path), [40, 40], image=False, audio=False)
    src = resolve_source(str(tmp_path), cfg())
    reads = [
        Read(0, 0, 10),
        Read(1, 0, 10),
        Read(0, 10, 20),
        Read(1, 10, 20),
        Read(0, 20, 25, np.array([20, 22, 24])),
        Read(0, 30, 40),
    ]

    def run(block):
        counters = Counters()
        reader = ShardReader(
            ReadOptions(storage_options={}, requests=4, block_size=block, max_bytes=1 << 30)
        )
        items = list(span_items(reader.fetch(src.shards, reads, counters), ErrorBudget(0)))
        return [(i["__key__"], i["txt"]) for i in items], counters

    big, together = run(1 << 20)
    one, apart = run(1)  # one sample per request: nothing to share
    assert big == one and len(big) == 10 + 10 + 10 + 10 + 3 + 10
    assert apart.get_requests - apart.index_requests == 53  # a GET per wanted sample
    # A[0:10]+A[10:20] and B[0:10]+B[10:20] together; the subset and A[30:40] apart
    assert together.get_requests - together.index_requests == 4
    assert together.index_requests == apart.index_requests == 2


def test_a_reads_last_request_takes_a_small_tail_with_it(tmp_path):
    """A read just over the request size is one request (up to 1.25 times it), not a full
    request and a small tail: chunks of interleaved lanes are often a little larger than a
    request, and each would otherwise cost two."""
    import numpy as np

    from wdstream.errors import ErrorBudget
    from wdstream.format.index import parse_index
    from wdstream.read.fetch import ReadOptions, ShardReader
    from wdstream.read.planner import Read
    from wdstream.read.shards import span_items
    from wdstream.read.sources import resolve_source
    from wdstream.read.stats import Counters

    m = write_test_shards(str(tmp_path), [20], image=False, audio=False)
    src = resolve_source(str(tmp_path), cfg())
    offsets = parse_index((tmp_path / m.shards[0].index).read_bytes(), 20)["offsets"]
    span = int(offsets[20] - offsets[0])

    def requests(block):
        counters = Counters()
        reader = ShardReader(ReadOptions(storage_options={}, requests=2, block_size=block))
        items = list(
            span_items(reader.fetch(src.shards, [Read(0, 0, 20)], counters), ErrorBudget(0))
        )
        assert [i["__key__"] for i in items] == [f"00000_{r:09d}" for r in range(20)]
        return counters.get_requests - counters.index_requests

    assert requests(int(np.ceil(span / 1.2))) == 1  # 1.2 requests' bytes: one request
    assert requests(span // 2 + 1) == 2  # twice as large: two
