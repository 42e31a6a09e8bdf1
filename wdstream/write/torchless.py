"""Converting without torch: a process-wide switch that keeps ``datasets`` from importing it.

``datasets`` imports torch (about 0.5 GB and seconds in every process) only to put an
IterableDataset's epoch in shared memory for a DataLoader's persistent workers; a conversion
never hands its datasets to a DataLoader. :func:`without_torch` tells ``datasets`` torch is
absent while a conversion opens and reads its sources.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

import datasets

__all__ = ["without_torch"]

_LOCK = threading.Lock()
_DEPTH = 0
_TORCH_AVAILABLE_BEFORE: bool | None = None


@contextlib.contextmanager
def without_torch() -> Iterator[None]:
    """Open and iterate streaming datasets without importing torch.

    While torch is not imported yet, ``datasets.config.TORCH_AVAILABLE`` is False inside the
    block and restored after it. Re-entrant across threads (conversions may overlap on threads
    of one process): the first one in saves the setting, the last one out restores it. A
    process that already imported torch (a training script) is left as it is.
    """
    global _DEPTH, _TORCH_AVAILABLE_BEFORE
    with _LOCK:
        if _DEPTH == 0:
            if "torch" in sys.modules:
                _TORCH_AVAILABLE_BEFORE = None  # leave it as it is
            else:
                _TORCH_AVAILABLE_BEFORE = datasets.config.TORCH_AVAILABLE
                datasets.config.TORCH_AVAILABLE = False
        _DEPTH += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0 and _TORCH_AVAILABLE_BEFORE is not None:
                datasets.config.TORCH_AVAILABLE = _TORCH_AVAILABLE_BEFORE
