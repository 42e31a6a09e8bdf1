"""The local executor: a process pool on this machine, or inline with one worker."""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import multiprocessing
import os
import queue as queue_mod
import threading
from collections.abc import Callable
from typing import Any

from .base import Executor, Progress

__all__ = ["LocalExecutor"]

log = logging.getLogger(__name__)


def _mp_context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


_worker_queue: Any = None


#: exit status of a worker that stops because its driver died
DRIVER_GONE_EXIT = 75


def _init_worker(q: Any, driver_alive: Any = None) -> None:
    global _worker_queue
    _worker_queue = q
    if driver_alive is not None:
        threading.Thread(
            target=_exit_when_driver_dies,
            args=(driver_alive,),
            daemon=True,
            name="wdstream-driver-watch",
        ).start()


def _exit_when_driver_dies(driver_alive: Any) -> None:
    """In a pool worker: block on the read end of a pipe whose only write end the driver
    holds. The driver never writes; the read ends (EOF) when the driver closes it or dies,
    however it dies (kill -9 included). The worker then exits at once, from this thread, so
    nothing more is committed: a shard being written stays a temp file or a pending multipart
    upload, which the next run cleans. (A pool worker is a child of the forkserver, not of
    the driver, so ``PR_SET_PDEATHSIG`` would not fire.)"""
    try:
        driver_alive.recv_bytes()
    except (EOFError, OSError):
        pass
    log.warning(
        "the converter's driver is gone; worker %d stops without committing more", os.getpid()
    )
    logging.shutdown()
    os._exit(DRIVER_GONE_EXIT)


def _report_to_queue(samples: int, nbytes: int) -> None:
    if _worker_queue is not None:
        _worker_queue.put((samples, nbytes))


def _started() -> None:
    """A no-op task: submitting it makes the pool start a worker."""


def _run_in_worker(fn: Callable[..., Any], task: Any) -> Any:
    return fn(task, progress=_report_to_queue)


class LocalExecutor(Executor):
    """A pool of ``workers`` processes on this machine; ``workers=1`` runs tasks inline.

    Workers are started with ``forkserver`` (or ``spawn``), never ``fork``, so each builds its
    own filesystem clients. Progress reports travel through a multiprocessing queue that the
    driver drains while it waits. Each worker watches a pipe from the driver and exits as soon
    as the driver is gone (killed), committing nothing after it. At most ``in_flight`` tasks
    (default: two per worker) are submitted at a time, and ``tasks`` is consumed as they are,
    so it may be a generator.
    """

    def __init__(self, workers: int = 1, in_flight: int | None = None):
        self.workers = max(1, int(workers))
        self.in_flight = max(1, in_flight or 2 * self.workers)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._queue: Any = None
        self._alive: Any = None  # the write end of the workers' driver-liveness pipe
        self._alive_r: Any = None  # its read end, handed to each worker as it starts

    def map_unordered(self, fn, tasks, *, progress=None):
        tasks = iter(tasks)
        first = list(itertools.islice(tasks, 2))
        if self.workers == 1 or len(first) <= 1:
            for task in itertools.chain(first, tasks):
                yield fn(task, progress=progress)
            return
        self._ensure_pool(fn)
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
                    pending, timeout=0.2, return_when=concurrent.futures.FIRST_COMPLETED
                )
                self._drain(progress)
                for future in done:
                    yield future.result()
            self._drain(progress)
        finally:
            for future in pending:
                future.cancel()

    def _ensure_pool(self, fn) -> None:
        if self._pool is not None:
            return
        ctx = _mp_context()
        if ctx.get_start_method() == "forkserver" and getattr(fn, "__module__", None):
            # the fork server imports fn's module (datasets, pyarrow...) once and every
            # worker forks from it ready, instead of each importing it again
            ctx.set_forkserver_preload([fn.__module__])
        self._queue = ctx.Queue()
        self._alive_r, self._alive = ctx.Pipe(duplex=False)
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(self._queue, self._alive_r),
        )

    def start(self, fn) -> None:
        """Start the workers now (for tasks of ``fn``), so their start-up (a fork server that
        imports ``fn``'s module, then the workers) overlaps what the driver does meanwhile."""
        if self.workers == 1:
            return
        self._ensure_pool(fn)
        for _ in range(self.workers):
            self._pool.submit(_started)

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
        if self._alive is not None:  # after the workers have exited: they never see it
            self._alive.close()
            self._alive_r.close()
            self._alive = self._alive_r = None
        if self._queue is not None:
            self._queue.close()
            self._queue = None
