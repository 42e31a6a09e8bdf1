"""Executors that run the converter's partitions, chosen by name (``config.executor``).

``local``: a process pool on this machine (:mod:`.local`). ``ray``: Ray tasks on a local Ray or
a cluster (:mod:`.ray`; the ``ray`` extra, imported only when chosen). The registry is a
read-only mapping of name -> factory(config), as fsspec's registry is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import MappingProxyType

from ...config import Config
from ...errors import ConfigError
from .base import Executor, Progress, TaskFailedError, merge_secrets, split_secrets
from .local import LocalExecutor

__all__ = [
    "Executor",
    "Progress",
    "TaskFailedError",
    "LocalExecutor",
    "split_secrets",
    "merge_secrets",
    "EXECUTORS",
    "make_executor",
    "check_executor",
]


def _local(config: Config) -> Executor:
    return LocalExecutor(config.workers or os.cpu_count() or 1)


def _ray(config: Config) -> Executor:
    from .ray import RayExecutor  # ray is an optional extra

    return RayExecutor(address=config.ray_address, num_cpus=config.workers or None)  # 0: all


EXECUTORS: MappingProxyType[str, Callable[[Config], Executor]] = MappingProxyType(
    {"local": _local, "ray": _ray}
)


def check_executor(config: Config) -> None:
    """Raise ConfigError before any work when ``config.executor`` is unknown or, for ``ray``,
    when Ray is not installed (saying how to install it)."""
    if config.executor not in EXECUTORS:
        raise ConfigError(
            f"executor {config.executor!r} is not available; use one of {sorted(EXECUTORS)}",
            key="executor",
        )
    if config.executor == "ray":
        from .ray import import_ray  # ray is an optional extra

        import_ray()


def make_executor(config: Config) -> Executor:
    """The executor ``config.executor`` names, sized by ``config.workers``."""
    check_executor(config)
    return EXECUTORS[config.executor](config)
