"""Pipeline stages: read-ahead keeps order, forwards errors, and leaves no thread behind;
exact batching keeps batch boundaries when samples are bad."""

from __future__ import annotations

import threading

import pytest

from wdstream.read.stages import Bad, exact_batches, readahead


def live_readahead_threads():
    return [t for t in threading.enumerate() if t.name == "wdstream-readahead" and t.is_alive()]


def test_readahead_keeps_order_and_bounds_lead():
    produced = []

    def source():
        for i in range(200):
            produced.append(i)
            yield i

    out = []
    for x in readahead(source(), 8):
        out.append(x)
        assert len(produced) - len(out) <= 8 + 2  # queue depth, plus one in hand each side
    assert out == list(range(200))
    assert live_readahead_threads() == []


def test_readahead_reraises_errors_from_the_reader():
    def source():
        yield 1
        raise OSError("shard went away")

    with pytest.raises(OSError, match="shard went away"):
        list(readahead(source(), 4))
    assert live_readahead_threads() == []


def test_readahead_stops_its_thread_when_the_consumer_breaks():
    closed = []

    def source():
        try:
            yield from range(10_000)
        finally:
            closed.append(True)

    gen = readahead(source(), 4)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()
    assert live_readahead_threads() == [] and closed == [True]


def test_readahead_thread_is_named_and_stops_when_the_iterator_is_dropped():
    import gc
    import itertools

    def named(name):
        return [t for t in threading.enumerate() if t.name == name and t.is_alive()]

    gen = readahead(itertools.count(), 4, name="wdstream-test-ahead")
    assert next(gen) == 0 and len(named("wdstream-test-ahead")) == 1
    del gen
    gc.collect()
    assert named("wdstream-test-ahead") == []


def test_exact_batches_replace_bad_items_in_place():
    good = [{"key": str(i)} for i in range(6)]
    items = [good[0], Bad("x", "undecodable image"), good[2], good[3], Bad("y", "r"), good[5]]
    batches = list(exact_batches(items, 3, 2, lambda b: [s["key"] for s in b]))
    assert batches == [["0", "2", "2"], ["3", "5", "5"]]  # a good sample of the same batch
    flags = list(exact_batches(items, 3, 2, lambda b: [bool(s.get("filler")) for s in b]))
    assert flags == [[False, True, False], [False, True, False]]  # the stand-ins are marked
    assert not any("filler" in s for s in good)  # the originals are not


def test_exact_batches_borrow_when_a_slot_has_nothing_good():
    items = [Bad(None, "unreadable shard")] * 4
    batches = list(
        exact_batches(items, 2, 2, lambda b: [s["key"] for s in b], borrow=lambda: {"key": "b"})
    )
    assert batches == [["b", "b"], ["b", "b"]]
    flags = list(
        exact_batches(
            items, 2, 2, lambda b: [s.get("filler") for s in b], borrow=lambda: {"key": "b"}
        )
    )
    assert flags == [[True, True], [True, True]]
