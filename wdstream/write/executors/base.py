"""The executor interface: run a picklable partition function over tasks, here or elsewhere.

The converter only talks to :class:`Executor`: ``map_unordered(fn, tasks, progress=...)``
yields each task's result as it finishes, and ``fn`` is called as ``fn(task, progress=report)``
where ``report(samples, nbytes)`` carries progress back to the driver. :class:`~wdstream.write.executors.local.LocalExecutor`
is a process pool (``forkserver``/``spawn``: s3fs is not fork-safe) or, with one worker, runs
inline. :class:`~wdstream.write.executors.ray.RayExecutor` implements the same two methods.

A task may carry secrets (credentials in storage options). A cluster executor must not put
them into the task arguments it ships (Ray keeps and may show those), so a task can offer
``task.without_secrets() -> (public_task, secrets)`` and ``public_task.with_secrets(secrets)
-> task``; :func:`split_secrets` / :func:`merge_secrets` do it for a storage-options dict.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ...errors import WdstreamError, is_secret_name

__all__ = ["Executor", "Progress", "TaskFailedError", "split_secrets", "merge_secrets"]

#: ``progress(samples, nbytes)``: deltas since the last call.
Progress = Callable[[int, int], None]


class TaskFailedError(WdstreamError, RuntimeError):
    """A task could not finish for a reason outside its own code (its worker or node died,
    after the executor's retries)."""


def split_secrets(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split storage options into ``(public, secrets)``, nested dicts (``client_kwargs``,
    ``config_kwargs``) included; a key whose name looks like a credential
    (:func:`wdstream.errors.is_secret_name`) is a secret.
    ``merge_secrets(public, secrets)`` gives ``options`` back."""
    public: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    for name, value in options.items():
        if isinstance(value, dict):
            pub, sec = split_secrets(value)
            public[name] = pub
            if sec:
                secrets[name] = sec
        elif is_secret_name(name):
            secrets[name] = value
        else:
            public[name] = value
    return public, secrets


def merge_secrets(public: dict[str, Any], secrets: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`split_secrets`."""
    out = dict(public)
    for name, value in secrets.items():
        if isinstance(value, dict) and isinstance(out.get(name), dict):
            out[name] = merge_secrets(out[name], value)
        else:
            out[name] = value
    return out


class Executor(abc.ABC):
    """Runs ``fn(task, progress=report)`` for every task; results come back in finishing order."""

    @abc.abstractmethod
    def map_unordered(
        self, fn: Callable[..., Any], tasks: Iterable[Any], *, progress: Progress | None = None
    ) -> Iterator[Any]:
        """Yield ``fn(task)`` results as tasks finish. The first failure is raised (with the
        task's own exception) and the tasks not yet started are cancelled."""

    def close(self) -> None:  # noqa: B027 (optional hook, a no-op by default)
        """Release workers. Idempotent."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
