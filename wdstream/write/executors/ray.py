"""Run the converter's partitions as Ray tasks, on a local Ray or on an existing cluster.

:class:`RayExecutor` has :class:`~wdstream.write.executors.base.Executor`'s interface, so the converter
does not know which one it runs on: ``map_unordered(fn, tasks, progress=...)`` submits one Ray
task per task (``fn`` and its task are pickled as they are for a process pool) and yields the
results as they finish.

- **Failures.** A task whose worker process or node dies is retried by Ray, up to
  ``max_retries`` times (Ray's ``max_retries``, system failures only). A Python exception in a
  task (bad data, a missing column...) is *not* retried (``retry_exceptions=False``): the job
  stops with that exception, and the tasks not yet finished are cancelled (their workers are
  killed: ``force=True``, so no worker is reused in a half-done state). A task that still
  dies after its retries stops the job with
  :class:`~wdstream.write.executors.base.TaskFailedError`.
- **Progress.** Tasks put their ``(samples, nbytes)`` deltas into a ``ray.util.queue.Queue``
  that the driver drains while it waits, so one ``progress`` callback sees the whole cluster.
  A retried task's earlier reports are taken back when it starts again. The queue's actor is
  placed on the driver's node; if it is lost anyway, the job goes on without progress.
- **Credentials.** A task that has ``without_secrets()`` (see :mod:`wdstream.write.executors.base`) is
  submitted without them; the secrets travel once per job through the object store
  (``ray.put``) and are put back inside the task, so they never appear in the task's
  arguments. The standard AWS environment works as usual: a local Ray's workers inherit the
  driver's environment; on a cluster, use instance roles or ``runtime_env`` env vars.

Ray is an optional extra (``pip install 'wdstream[ray]'``); it is imported only here, and only
when a RayExecutor is made.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ...errors import ConfigError
from .base import Executor, Progress, TaskFailedError

__all__ = ["RayExecutor", "import_ray"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'wdstream[ray]'"


def import_ray():
    """Import ray, or raise ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"the ray executor needs Ray, which is not installed ({exc}); "
                          f"install it with: {INSTALL_HINT}") from exc
    return ray


_REMOTES: dict[str, Any] = {}


def _remote_run(ray) -> Any:
    """The Ray task function, made once per process."""
    if "run" not in _REMOTES:
        _REMOTES["run"] = ray.remote(_run_task)
    return _REMOTES["run"]


def _run_task(fn: Callable[..., Any], task: Any, index: int, queue: Any, job: int,
              secrets: Any) -> Any:
    """Inside a Ray worker: put the secrets back, send progress to the driver's queue, run
    ``fn``. A ``start`` message lets the driver take back what an earlier, dead attempt of
    this task reported; ``job`` tells one ``map_unordered`` call's messages from another's."""
    if secrets:
        task = task.with_secrets(secrets)
    report = None
    if queue is not None:
        lost = []  # progress only: a lost queue (its node died) must not fail the partition

        def send(message: tuple) -> None:
            if not lost:
                try:
                    queue.put_nowait(message)
                except Exception as exc:  # Ray raises several kinds for a dead actor
                    lost.append(exc)
                    log.warning("progress queue unreachable (%s); this task stops reporting",
                                type(exc).__name__)

        send(("start", job, index, 0, 0))

        def report(samples: int, nbytes: int) -> None:
            send(("add", job, index, samples, nbytes))

    return fn(task, progress=report)


class _ProgressBook:
    """On the driver: turns the queue's messages into ``progress`` deltas, per task, so a
    retried task's earlier reports are taken back."""

    def __init__(self, progress: Progress | None, job: int):
        self.progress = progress
        self.job = job
        self.by_task: dict[int, list[int]] = {}

    def drain(self, queue: Any) -> None:
        n = queue.qsize()
        if not n:
            return
        samples = nbytes = 0
        for kind, job, index, s, b in queue.get_nowait_batch(n):
            if job != self.job:  # left by an earlier call's cancelled tasks
                continue
            seen = self.by_task.setdefault(index, [0, 0])
            if kind == "start":
                s, b = -seen[0], -seen[1]
            seen[0] += s
            seen[1] += b
            samples += s
            nbytes += b
        if (samples or nbytes) and self.progress is not None:
            self.progress(samples, nbytes)


class RayExecutor(Executor):
    """Run tasks on Ray: ``address=None`` starts a local Ray with ``num_cpus`` CPUs (all cores
    when None), ``address="auto"`` or ``"ray://host:10001"`` joins an existing cluster. When
    Ray is already initialised in this process, it is used as it is.

    ``max_retries`` bounds Ray's retries of a task whose worker died; Python exceptions are
    never retried. ``cpus_per_task`` is the CPUs Ray reserves for each task. At most
    ``max_in_flight`` tasks are submitted at a time (default: twice what the cluster's CPUs
    run at once, at least 8), so the driver holds a bounded number of tasks and refs whatever
    the number of partitions, and ``tasks`` may be a generator. Raises ConfigError when Ray is
    not installed.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 max_retries: int = 3, *, cpus_per_task: float = 1,
                 max_in_flight: int | None = None):
        self._ray = import_ray()
        self.address = address
        self.num_cpus = num_cpus
        self.max_retries = max(0, int(max_retries))
        self.cpus_per_task = cpus_per_task
        self.max_in_flight = max_in_flight
        self._started = False
        self._queue: Any = None  # progress messages, kept for the executor's lifetime
        self._jobs = 0

    def _ensure_ray(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            self._init_ray()
        if self._queue is None:
            from ray.util.queue import Queue

            self._queue = Queue(actor_options=self._queue_options())

    def _queue_options(self) -> dict[str, Any]:
        """The progress queue's actor lives on the driver's node (soft affinity), so losing
        another node does not lose it."""
        options: dict[str, Any] = {"num_cpus": 0}
        try:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            node = self._ray.get_runtime_context().get_node_id()
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
        except Exception as exc:  # Ray Client or an older Ray: anywhere will do
            log.debug("progress queue placed by Ray (%s)", exc)
        return options

    def _init_ray(self) -> None:
        ray = self._ray
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING,
                 "configure_logging": True}
        if self.address:
            log.info("joining the Ray cluster at %s", self.address)
            # Ray Client (ray://) would forward these to the server's ray.init, with a warning
            ray.init(address=self.address,
                     **({} if self.address.startswith("ray://") else quiet))
        else:
            log.info("starting a local Ray with %s CPUs", self.num_cpus or "all")
            ray.init(num_cpus=self.num_cpus, include_dashboard=False, **quiet)
        self._started = True

    def _in_flight(self) -> int:
        if self.max_in_flight:
            return self.max_in_flight
        try:
            cpus = float(self._ray.cluster_resources().get("CPU", 1))
        except Exception:  # noqa: BLE001 - a sizing hint only
            cpus = 1.0
        return max(8, int(2 * cpus / max(self.cpus_per_task, 1e-3)))

    def map_unordered(self, fn: Callable[..., Any], tasks: Iterable[Any], *,
                      progress: Progress | None = None) -> Iterator[Any]:
        tasks = iter(tasks)
        first = next(tasks, None)
        if first is None:
            return
        self._ensure_ray()
        ray = self._ray
        run = _remote_run(ray).options(max_retries=self.max_retries, retry_exceptions=False,
                                       num_cpus=self.cpus_per_task)
        self._jobs += 1
        queue = self._queue if progress is not None else None
        book = _ProgressBook(progress, self._jobs)
        stored: list[tuple[Any, Any]] = []  # (secrets, ObjectRef): one put per distinct value
        in_flight = self._in_flight()
        refs: dict[Any, tuple[int, Any]] = {}  # submitted, not yet yielded: ref -> (index, task)
        numbered = enumerate(itertools.chain([first], tasks))

        def submit(index: int, task: Any) -> None:
            shipped, secrets_ref = task, None
            if hasattr(task, "without_secrets"):
                shipped, secrets = task.without_secrets()
                if secrets:
                    secrets_ref = next((ref for value, ref in stored if value == secrets), None)
                    if secrets_ref is None:
                        secrets_ref = ray.put(secrets)
                        stored.append((secrets, secrets_ref))
            refs[run.remote(fn, shipped, index, queue, self._jobs, secrets_ref)] = (index, task)

        last_drain = 0.0
        try:
            while True:
                # keep at most in_flight tasks submitted: bounded driver memory, and a
                # ray.wait over a short list, so progress keeps up with 10k+ tasks
                for index, task in itertools.islice(numbered, in_flight - len(refs)):
                    submit(index, task)
                if not refs:
                    break
                done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0.2,
                                   fetch_local=False)
                if not done:
                    done, _ = ray.wait(list(refs), num_returns=1, timeout=0)
                if queue is not None and time.monotonic() - last_drain > 0.2:
                    queue = self._drain(book, queue)
                    last_drain = time.monotonic()
                for ref in done:
                    index, task = refs.pop(ref)
                    book.by_task.pop(index, None)  # finished: nothing of it to take back
                    yield self._result(ref, task)
            if queue is not None:
                self._drain(book, queue)  # a task's reports are all in before it returns
        finally:
            for ref in refs:
                try:
                    # force: a running task's worker is killed, not interrupted where it stands
                    # (a KeyboardInterrupt mid-import leaves a reused worker half-initialised)
                    ray.cancel(ref, force=True)
                except Exception as exc:  # already finished or gone
                    log.debug("could not cancel a Ray task: %s", exc)

    def _drain(self, book: _ProgressBook, queue: Any) -> Any:
        """Drain progress; returns the queue, or None once it is lost (its node died): the
        job goes on without progress."""
        try:
            book.drain(queue)
            return queue
        except self._ray.exceptions.RayError as exc:
            log.warning("lost the progress queue (%s); the job goes on without progress",
                        type(exc).__name__)
            self._queue = None
            return None

    def _result(self, ref: Any, task: Any) -> Any:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            # a Python exception in the task: raise it as itself (its type and message name
            # the partition and the reason), the remote traceback chained for debugging
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from exc
            raise TaskFailedError(f"{task} failed: {exc}") from exc
        except ray.exceptions.RayError as exc:
            raise TaskFailedError(
                f"{task} failed after {self.max_retries + 1} attempt(s): "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. A "
                f"worker or node died (killed, out of memory?); re-run the same command to "
                f"resume from the finished partitions") from exc

    def close(self) -> None:
        """Stop the progress queue; shut Ray down if this executor started it. Idempotent."""
        if self._queue is not None:
            try:
                self._queue.shutdown()
            except Exception as exc:
                log.debug("could not stop the progress queue: %s", exc)
            self._queue = None
        if self._started:
            self._started = False
            self._ray.shutdown()
