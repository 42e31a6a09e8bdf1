"""The local executor: a process pool on this machine, or inline with one worker."""

from __future__ import annotations

import concurrent.futures
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
    driver drains while it waits.
    """

    def __init__(self, workers: int = 1):
        self.workers = max(1, int(workers))
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._queue: Any = None

    def map_unordered(self, fn, tasks, *, progress=None):
        tasks = list(tasks)
        if self.workers == 1 or len(tasks) <= 1:
            for task in tasks:
                yield fn(task, progress=progress)
            return
        if self._pool is None:
            ctx = _mp_context()
            self._queue = ctx.Queue()
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=min(self.workers, len(tasks)), mp_context=ctx,
                initializer=_init_worker, initargs=(self._queue,))
        pending = {self._pool.submit(_run_in_worker, fn, task) for task in tasks}
        try:
            while pending:
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
