"""Run the converter's partitions as Ray tasks, on a local Ray or on an existing cluster.

:class:`RayExecutor` has :class:`~wdstream.write.executors.base.Executor`'s interface, so the converter
does not know which one it runs on: ``map_unordered(fn, tasks, progress=...)`` submits one Ray
task per task (``fn`` and its task are pickled as they are for a process pool) and yields the
results as they finish.

- **Failures.** A task whose worker process or node dies is retried by Ray, up to
  ``max_retries`` times (Ray's ``max_retries``, system failures only). A Python exception in a
  task (bad data, a missing column...) is *not* retried (``retry_exceptions=False``): the job
  stops with that exception. A task that still dies after its retries stops the job with
  :class:`~wdstream.write.executors.base.TaskFailedError`.
- **Stopping.** When the job stops, its tasks in flight are stopped cooperatively, never with
  ``ray.cancel``: the driver marks the job stopped on the channel actor below; a task not yet
  started raises :class:`JobStopped` before it runs ``fn``, and a running one raises it from
  its next progress report (a partition reports at most every 0.25 s while it converts), so
  the partition aborts its open shard as on any error. The driver waits for them, at most
  ``stop_timeout`` seconds. ``ray.cancel`` is avoided on purpose: without ``force`` it raises
  KeyboardInterrupt wherever the task stands (a worker interrupted in its first ``import
  datasets`` is reused half-initialised), and with ``force`` it races with the task's reply in
  Ray's own driver code (``Check failed: it != submissible_tasks_.end() Tried to complete
  task that was not pending``, ray-project/ray#54798), which kills the driver process.
- **Progress.** Tasks send their ``(samples, nbytes)`` deltas to a small channel actor that
  the driver drains while it waits, so one ``progress`` callback sees the whole cluster.
  A retried task's earlier reports are taken back when it starts again. The channel's actor is
  placed on the driver's node; if it is lost anyway, the job goes on without progress (and
  its tasks can no longer be stopped early: they finish, which is harmless).
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

__all__ = ["JobStopped", "RayExecutor", "import_ray"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'wdstream[ray]'"


def import_ray():
    """Import ray, or raise ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"the ray executor needs Ray, which is not installed ({exc}); "
            f"install it with: {INSTALL_HINT}"
        ) from exc
    return ray


class JobStopped(Exception):
    """Raised inside a Ray task whose job has stopped (another task failed): the task does no
    more work and commits nothing more."""


class _Channel:
    """A Ray actor between the driver and its tasks: tasks ``put`` progress messages, the
    driver ``take``s them, and ``stop(job)`` marks a job stopped, which each task learns from
    the answer to its next ``put``."""

    def __init__(self) -> None:
        self._messages: list[tuple] = []
        self._stopped: set[int] = set()

    def put(self, message: tuple) -> bool:
        """Store ``message`` (``(kind, job, index, samples, nbytes)``); True when its job has
        stopped."""
        self._messages.append(message)
        return message[1] in self._stopped

    def take(self) -> list[tuple]:
        messages, self._messages = self._messages, []
        return messages

    def stop(self, job: int) -> None:
        self._stopped.add(job)


_REMOTES: dict[str, Any] = {}


def _remote_run(ray) -> Any:
    """The Ray task function, made once per process."""
    if "run" not in _REMOTES:
        _REMOTES["run"] = ray.remote(_run_task)
    return _REMOTES["run"]


def _run_task(
    fn: Callable[..., Any], task: Any, index: int, channel: Any, job: int, secrets: Any
) -> Any:
    """Inside a Ray worker: put the secrets back, report to the driver's channel, run ``fn``.
    A ``start`` message lets the driver take back what an earlier, dead attempt of this task
    reported; ``job`` tells one ``map_unordered`` call's messages from another's. Once the
    job has stopped, JobStopped is raised at the start or from a progress report, unwinding
    ``fn`` (a partition aborts its open shard), and the task returns None."""
    import ray

    if secrets:
        task = task.with_secrets(secrets)
    lost = [] if channel is not None else [None]  # a lost channel must not fail the partition

    def send(message: tuple) -> None:
        if lost:
            return
        try:
            stopped = ray.get(channel.put.remote(message))
        except Exception as exc:  # Ray raises several kinds for a dead actor
            lost.append(exc)
            log.warning(
                "the driver's channel is unreachable (%s); this task stops reporting",
                type(exc).__name__,
            )
            return
        if stopped:
            raise JobStopped(f"task {index}: its job stopped (another task failed)")

    def report(samples: int, nbytes: int) -> None:
        send(("add", job, index, samples, nbytes))

    try:
        send(("start", job, index, 0, 0))
        return fn(task, progress=report)
    except JobStopped:
        # returned, not raised: the driver no longer reads this job's results, and Ray would
        # log an "unhandled error" for each failed result nobody reads
        log.info("task %d stopped: its job stopped", index)
        return None


class _ProgressBook:
    """On the driver: turns the channel's messages into ``progress`` deltas, per task, so a
    retried task's earlier reports are taken back."""

    def __init__(self, progress: Progress | None, job: int):
        self.progress = progress
        self.job = job
        self.by_task: dict[int, list[int]] = {}

    def drain(self, messages: list[tuple]) -> None:
        samples = nbytes = 0
        for kind, job, index, s, b in messages:
            if job != self.job:  # left by an earlier call's stopped tasks
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
    the number of partitions, and ``tasks`` may be a generator. When a job stops, the driver
    waits at most ``stop_timeout`` seconds for its tasks in flight to stop (see the module's
    "Stopping"). Raises ConfigError when Ray is not installed.
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        max_retries: int = 3,
        *,
        cpus_per_task: float = 1,
        max_in_flight: int | None = None,
        stop_timeout: float = 30.0,
    ):
        self._ray = import_ray()
        self.address = address
        self.num_cpus = num_cpus
        self.max_retries = max(0, int(max_retries))
        self.cpus_per_task = cpus_per_task
        self.max_in_flight = max_in_flight
        self.stop_timeout = stop_timeout
        self._started = False
        self._channel: Any = None  # the _Channel actor, kept for the executor's lifetime
        self._jobs = 0

    def _ensure_ray(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            self._init_ray()
        if self._channel is None:
            self._channel = ray.remote(_Channel).options(**self._channel_options()).remote()

    def _channel_options(self) -> dict[str, Any]:
        """The channel's actor lives on the driver's node (soft affinity), so losing
        another node does not lose it."""
        options: dict[str, Any] = {"num_cpus": 0}
        try:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            node = self._ray.get_runtime_context().get_node_id()
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
        except Exception as exc:  # Ray Client or an older Ray: anywhere will do
            log.debug("channel placed by Ray (%s)", exc)
        return options

    def _init_ray(self) -> None:
        ray = self._ray
        quiet = {
            "log_to_driver": False,
            "logging_level": logging.WARNING,
            "configure_logging": True,
        }
        if self.address:
            log.info("joining the Ray cluster at %s", self.address)
            # Ray Client (ray://) would forward these to the server's ray.init, with a warning
            ray.init(address=self.address, **({} if self.address.startswith("ray://") else quiet))
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

    def map_unordered(
        self, fn: Callable[..., Any], tasks: Iterable[Any], *, progress: Progress | None = None
    ) -> Iterator[Any]:
        tasks = iter(tasks)
        first = next(tasks, None)
        if first is None:
            return
        self._ensure_ray()
        ray = self._ray
        run = _remote_run(ray).options(
            max_retries=self.max_retries, retry_exceptions=False, num_cpus=self.cpus_per_task
        )
        self._jobs += 1
        job = self._jobs
        channel = self._channel
        book = _ProgressBook(progress, job)
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
            refs[run.remote(fn, shipped, index, channel, job, secrets_ref)] = (index, task)

        last_drain = 0.0
        try:
            while True:
                # keep at most in_flight tasks submitted: bounded driver memory, and a
                # ray.wait over a short list, so progress keeps up with 10k+ tasks
                for index, task in itertools.islice(numbered, in_flight - len(refs)):
                    submit(index, task)
                if not refs:
                    break
                done, _ = ray.wait(
                    list(refs), num_returns=len(refs), timeout=0.2, fetch_local=False
                )
                if not done:
                    done, _ = ray.wait(list(refs), num_returns=1, timeout=0)
                if channel is not None and time.monotonic() - last_drain > 0.2:
                    channel = self._drain(book, channel)
                    last_drain = time.monotonic()
                for ref in done:
                    index, task = refs.pop(ref)
                    book.by_task.pop(index, None)  # finished: nothing of it to take back
                    yield self._result(ref, task)
            if channel is not None:
                self._drain(book, channel)  # a task's reports are all in before it returns
        finally:
            if refs:
                self._stop(job, list(refs), channel)

    def _stop(self, job: int, refs: list[Any], channel: Any) -> None:
        """The job stopped with tasks in flight: mark it stopped on the channel, so each of
        them raises JobStopped at its start or its next report, and wait for them, at most
        ``stop_timeout`` seconds. No ``ray.cancel``: see the module's "Stopping"."""
        ray = self._ray
        if channel is None:
            log.warning(
                "%d Ray task(s) of the stopped job cannot be told to stop (the channel "
                "is lost); they finish on their own",
                len(refs),
            )
            return
        try:
            ray.get(channel.stop.remote(job), timeout=10)
        except Exception as exc:  # the channel's node died: nothing can be told
            log.warning(
                "could not tell %d Ray task(s) to stop (%s); they finish on their own",
                len(refs),
                type(exc).__name__,
            )
            return
        _, running = ray.wait(
            refs, num_returns=len(refs), timeout=self.stop_timeout, fetch_local=False
        )
        if running:
            log.warning(
                "%d Ray task(s) of the stopped job still run after %.0f s; they stop "
                "at their next progress report, or finish",
                len(running),
                self.stop_timeout,
            )

    def _drain(self, book: _ProgressBook, channel: Any) -> Any:
        """Drain progress; returns the channel, or None once it is lost (its node died): the
        job goes on without progress."""
        try:
            book.drain(self._ray.get(channel.take.remote()))
            return channel
        except self._ray.exceptions.RayError as exc:
            log.warning(
                "lost the progress channel (%s); the job goes on without progress",
                type(exc).__name__,
            )
            self._channel = None
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
                f"resume from the finished partitions"
            ) from exc

    def close(self) -> None:
        """Stop the channel's actor; shut Ray down if this executor started it. Idempotent."""
        if self._channel is not None:
            try:
                self._ray.kill(self._channel)
            except Exception as exc:
                log.debug("could not stop the channel actor: %s", exc)
            self._channel = None
        if self._started:
            self._started = False
            self._ray.shutdown()
