"""The local executor: a process pool on this machine, or inline with one worker."""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import multiprocessing
import queue as queue_mod
from collections.abc import Callable
from typing import Any

from .base import Executor, Progress

__all__ = ["LocalExecutor"]

log = logging.getLogger(__name__)


def _mp_context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


_worker_queue: Any = None


def _init_worker(q: Any) -> None:
    global _worker_queue
    _worker_queue = q


def _report_to_queue(samples: int, nbytes: int) -> None:
    if _worker_queue is not None:
        _worker_queue.put((samples, nbytes))


def _run_in_worker(fn: Callable[..., Any], task: Any) -> Any:
    return fn(task, progress=_report_to_queue)


class LocalExecutor(Executor):
    """A pool of ``workers`` processes on this machine; ``workers=1`` runs tasks inline.

    Workers are started with ``forkserver`` (or ``spawn``), never ``fork``, so each builds its
    own filesystem clients. Progress reports travel through a multiprocessing queue that the
    driver drains while it waits. At most ``in_flight`` tasks (default: two per worker) are
    submitted at a time, and ``tasks`` is consumed as they are, so it may be a generator.
    """

    def __init__(self, workers: int = 1, in_flight: int | None = None):
        self.workers = max(1, int(workers))
        self.in_flight = max(1, in_flight or 2 * self.workers)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._queue: Any = None

    def map_unordered(self, fn, tasks, *, progress=None):
        tasks = iter(tasks)
        first = list(itertools.islice(tasks, 2))
        if self.workers == 1 or len(first) <= 1:
            for task in itertools.chain(first, tasks):
                yield fn(task, progress=progress)
            return
        if self._pool is None:
            ctx = _mp_context()
            if ctx.get_start_method() == "forkserver" and getattr(fn, "__module__", None):
                # the fork server imports fn's module (datasets, torch...) once and every
                # worker forks from it ready, instead of each importing it again
                ctx.set_forkserver_preload([fn.__module__])
            self._queue = ctx.Queue()
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=ctx,
                initializer=_init_worker, initargs=(self._queue,))
        # at most in_flight tasks submitted at a time: the driver holds a bounded number of
        # tasks and futures however many partitions the job has
        tasks = itertools.chain(first, tasks)
        pending: set[concurrent.futures.Future] = set()
        try:
            while True:
                for task in itertools.islice(tasks, self.in_flight - len(pending)):
                    pending.add(self._pool.submit(_run_in_worker, fn, task))
                if not pending:
                    break
                done, pending = concurrent.futures.wait(
                    pending, timeout=0.2, return_when=concurrent.futures.FIRST_COMPLETED)
                self._drain(progress)
                for future in done:
                    yield future.result()
            self._drain(progress)
        finally:
            for future in pending:
                future.cancel()

    def _drain(self, progress: Progress | None) -> None:
        while True:
            try:
                samples, nbytes = self._queue.get_nowait()
            except (queue_mod.Empty, OSError, ValueError):
                return
            if progress is not None:
                progress(samples, nbytes)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._queue is not None:
            self._queue.close()
            self._queue = None
