"""Pipeline stages: plain generators ``stage(items, **options) -> Iterator``, chained by
:mod:`wdstream.read.pipeline` (and nowhere else).

- :func:`readahead`: pull items on a background thread, in order, a bounded number ahead
  (Hugging Face rows; shards are read ahead by the fetcher, :mod:`wdstream.read.fetch`);
- :func:`window_shuffle`: a slot's span, one window at a time, emitted in the plan's order;
- :func:`decode_stage`: decode each item, passing undecodable ones on as counted :class:`Bad`
  markers so batch boundaries stay where the plan put them;
- :func:`label_stage`: the sample's source, and its synthetic and filler flags;
- :func:`exact_batches`: exactly the planned number of batches, bad items replaced;
- :func:`plain_batches`: batches of the good items (streaming mode);
- :func:`good_samples`: the good items alone (one sample at a time).
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from ..errors import ErrorBudget, SampleError, TooManyErrors, redact

__all__ = [
    "Bad",
    "readahead",
    "window_shuffle",
    "decode_stage",
    "label_stage",
    "exact_batches",
    "plain_batches",
    "good_samples",
    "READAHEAD_THREAD_NAME",
    "FILLER",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Bad:
    """Marks a sample that could not be read or decoded (keeps batch alignment)."""

    __slots__ = ("key", "reason")

    def __init__(self, key: str | None, reason: str):
        self.key, self.reason = key, reason


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


READAHEAD_THREAD_NAME = "wdstream-readahead"
FILLER = "__filler__"  # raw item key: a padding repeat, not a real sample of the epoch


def readahead(items: Iterable[T], depth: int, *, name: str = READAHEAD_THREAD_NAME) -> Iterator[T]:
    """Pull ``items`` in a background thread, at most ``depth`` ahead, keeping their order.

    Shard reads and tar parsing then overlap with decoding (pillow and soundfile release the
    GIL). Errors are re-raised here; closing this generator stops and joins the thread.
    """
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    source = iter(items)

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for x in source:
                if not put(x):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_Raised(exc))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            x = q.get()
            if x is _DONE:
                return
            if isinstance(x, _Raised):
                raise x.exc
            yield x
    finally:
        stop.set()
        thread.join()
        close = getattr(source, "close", None)
        if close is not None:
            close()


def window_shuffle(items: Iterable[T], plan) -> Iterator[T]:
    """Emit a slot's span items (``items``, in read order) window by window in the order of
    ``plan`` (a :class:`wdstream.read.planner.SlotPlan`): hold one window (at most
    ``cache_size`` items), then emit it permuted. Items at filler positions of the span
    (padding repeats) are emitted as copies marked with ``FILLER``."""
    it = iter(items)
    for index, start, stop in plan.windows():
        window: list = list(itertools.islice(it, stop - start))
        if len(window) < stop - start:
            raise AssertionError(
                f"plan promised {stop - start} items in window {index}, got {len(window)}"
            )
        for pos in plan.window_order(index, start, stop).tolist():
            item = window[pos - start]
            window[pos - start] = None
            yield {**item, FILLER: True} if pos >= plan.real else item


def _timed(decoder: Callable[[dict], dict], item: dict) -> tuple[Any, float]:
    """``(decoded sample or the SampleError it raised, seconds)``; other errors propagate."""
    t0 = time.perf_counter()
    try:
        out = decoder(item)
    except SampleError as exc:
        out = exc
    return out, time.perf_counter() - t0


def _decoded(
    items: Iterable[dict], decoder: Callable[[dict], dict], threads: int
) -> Iterator[tuple[dict, bool, Any, float]]:
    """``(item, filler, decoded or SampleError or None, seconds)`` in the order of ``items``;
    with ``threads``, decoded on a pool at most ``2 * threads`` items ahead."""
    if threads <= 0:
        for item in items:
            if "__error__" in item:
                yield item, False, None, 0.0
                continue
            filler = item.pop(FILLER, False)
            yield item, filler, *_timed(decoder, item)
        return
    ahead: collections.deque = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(
        threads, thread_name_prefix="wdstream-decode"
    ) as pool:
        try:
            for item in items:
                if "__error__" in item:
                    ahead.append((item, False, None))
                else:
                    filler = item.pop(FILLER, False)
                    ahead.append((item, filler, pool.submit(_timed, decoder, item)))
                while len(ahead) > 2 * threads:
                    item, filler, fut = ahead.popleft()
                    yield (
                        (item, filler, None, 0.0) if fut is None else (item, filler, *fut.result())
                    )
            while ahead:
                item, filler, fut = ahead.popleft()
                yield (item, filler, None, 0.0) if fut is None else (item, filler, *fut.result())
        finally:
            for _, _, fut in ahead:
                if fut is not None:
                    fut.cancel()


def decode_stage(
    items: Iterable[dict],
    decoder: Callable[[dict], dict],
    budget: ErrorBudget,
    *,
    threads: int = 0,
    counters=None,
) -> Iterator[Any]:
    """Decode each item; undecodable ones are counted, logged and passed on as ``Bad``.

    ``threads``: decode on that many threads, ahead of the consumer, emitting in the order of
    ``items`` (errors counted in that order too). ``counters`` (a
    :class:`~wdstream.read.stats.Counters`) gets the seconds spent decoding. A decoded filler
    keeps the ``FILLER`` mark for :func:`label_stage`."""
    for item, filler, out, seconds in _decoded(items, decoder, threads):
        if counters is not None:
            counters.decode_s += seconds
        if "__error__" in item:
            budget.placeholders += 1  # already counted by the reader
            yield Bad(item.get("__key__"), item["__error__"])
            continue
        if isinstance(out, SampleError):
            exc = out
            reason = exc.reason or "undecodable sample"
            budget.record(
                reason, f"{redact(item.get('__url__', '?'))} key {item.get('__key__')}", exc
            )
            budget.placeholders += 1
            yield Bad(item.get("__key__"), reason)
            continue
        if filler:
            out[FILLER] = True
        yield out


def label_stage(
    items: Iterable[Any],
    source: str | None = None,
    *,
    synthetic: bool = False,
    force_source: bool = False,
) -> Iterator[Any]:
    """Label decoded samples: ``source`` fills the sample's source when its metadata names
    none (``force_source``: always, as when mixing named sources); ``synthetic`` marks
    synthetic data; a ``FILLER`` mark becomes ``filler=True``. :class:`Bad` passes as is."""
    for out in items:
        if isinstance(out, Bad):
            yield out
            continue
        if source is not None and (force_source or not out.get("source")):
            out["source"] = source
        if synthetic:
            out["synthetic"] = True
        if out.pop(FILLER, False):
            out["filler"] = True
        yield out


def exact_batches(
    items: Iterable[Any],
    batch_size: int,
    n_batches: int,
    collate: Callable[[list[dict]], dict],
    borrow: Callable[[], dict | None] | None = None,
) -> Iterator[dict]:
    """Exactly ``n_batches`` batches of ``batch_size`` consecutive items.

    A bad item is replaced by a good sample of the same batch (or the last good one before),
    so batch boundaries stay where the plan put them; the replacement is already counted and
    marked ``filler`` (collated into ``is_filler``). When a slot has no good sample at all,
    ``borrow()`` supplies one from elsewhere.
    """
    it = iter(items)
    last_good: dict | None = None
    waiting: list[list[Any]] = []  # batches with no good sample yet and none before them
    for _ in range(n_batches):
        chunk = list(itertools.islice(it, batch_size))
        if len(chunk) < batch_size:
            raise AssertionError(f"plan promised {batch_size} items, got {len(chunk)}")
        good = [s for s in chunk if not isinstance(s, Bad)]
        if not good and last_good is None:
            waiting.append(chunk)
            continue
        fill = good or [last_good]
        batch = [
            s if not isinstance(s, Bad) else _filler(fill[i % len(fill)])
            for i, s in enumerate(chunk)
        ]
        last_good = good[-1] if good else last_good
        for held in waiting:
            yield collate([_filler(last_good)] * len(held))
        waiting = []
        yield collate(batch)
    if waiting and borrow is not None:
        last_good = borrow()
        if last_good is not None:
            for held in waiting:
                yield collate([_filler(last_good)] * len(held))
            return
    if waiting:
        raise TooManyErrors(
            f"{len(waiting) * batch_size} samples in a row could not be read "
            f"or decoded; no good sample to fill the batches with"
        )


def _filler(sample: dict) -> dict:
    """A copy of ``sample`` standing in for another one: marked as a filler."""
    return {**sample, "filler": True}


def plain_batches(
    items: Iterable[Any],
    batch_size: int,
    collate: Callable[[list[dict]], dict],
    *,
    n_batches: int | None = None,
    drop_last: bool = False,
) -> Iterator[dict]:
    """Batches of the good items; stops after ``n_batches`` when given."""
    batch: list[dict] = []
    count = 0
    for s in items:
        if isinstance(s, Bad):
            continue
        batch.append(s)
        if len(batch) == batch_size:
            yield collate(batch)
            batch = []
            count += 1
            if n_batches is not None and count >= n_batches:
                return
    if batch and not drop_last and n_batches is None:
        yield collate(batch)


def good_samples(items: Iterable[Any]) -> Iterator[dict]:
    """The decoded samples alone: :class:`Bad` markers (already counted) are dropped."""
    for item in items:
        if not isinstance(item, Bad):
            yield item
