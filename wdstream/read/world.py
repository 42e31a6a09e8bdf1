"""Where this process reads from: its rank and world size, and its DataLoader worker.

One :class:`World` answers all four questions, from torch.distributed when it is initialised,
else the ``RANK``/``WORLD_SIZE`` variables that torchrun sets, and from
``torch.utils.data.get_worker_info()`` inside a DataLoader worker. :class:`SharedEpoch` carries
the epoch from the main process to persistent workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["World", "SharedEpoch"]


@dataclass(frozen=True)
class World:
    """Rank and world size of this process; worker and worker count inside a DataLoader."""

    rank: int = 0
    world: int = 1
    worker: int = 0
    workers: int = 1

    @staticmethod
    def ranks() -> tuple[int, int]:
        """``(rank, world_size)``: torch.distributed when initialised, else RANK/WORLD_SIZE."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    @staticmethod
    def dataloader_worker() -> tuple[int, int]:
        """``(worker, workers)`` inside a DataLoader worker; ``(0, 1)`` in the main process."""
        info = torch.utils.data.get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    @classmethod
    def detect(cls, rank: int | None = None, world: int | None = None) -> World:
        """This process's world; ``rank``/``world`` override what is detected."""
        r, w = cls.ranks()
        worker, workers = cls.dataloader_worker()
        return cls(
            rank=r if rank is None else rank,
            world=w if world is None else world,
            worker=worker,
            workers=workers,
        )

    @property
    def slot(self) -> int:
        """This worker's index among all ``world * workers`` readers."""
        return self.rank * self.workers + self.worker

    @property
    def slots(self) -> int:
        return self.world * self.workers


class SharedEpoch:
    """An epoch number in shared memory: set in the main process, read by persistent
    DataLoader workers (which were forked or spawned before it changed)."""

    def __init__(self, epoch: int = 0):
        self._t = torch.full((1,), int(epoch), dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        self._t[0] = int(epoch)

    def get(self) -> int:
        return int(self._t[0])
