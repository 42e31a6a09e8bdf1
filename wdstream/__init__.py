"""wdstream: Hugging Face datasets -> WebDataset shards on any fsspec URL -> PyTorch batches.

Write path: ``convert`` (sources/hf.py -> writer.py -> manifest.py).
Read path: ``make_loader`` (split.py -> reading.py -> shuffle.py -> decode.py -> collate.py
-> loader.py).
"""

from __future__ import annotations

from typing import Any

# Eager on purpose: ``wdstream.convert`` and ``wdstream.collate`` are functions that share their
# module's name; importing them here binds the function before anything imports the module.
from .collate import collate  # noqa: E402
from .config import Config, load_config
from .convert import convert  # noqa: E402
from .errors import (
    ConfigError,
    CredentialsError,
    HubUnreachableError,
    SampleError,
    ShardReadError,
    SourceError,
    StorageError,
    TooManyErrors,
    WdstreamError,
)
from .manifest import Manifest, ShardInfo, load_manifest

__version__ = "0.1.0"

__all__ = [
    "Config",
    "load_config",
    "convert",
    "make_loader",
    "Loader",
    "collate",
    "MultimodalDataset",
    "Manifest",
    "ShardInfo",
    "load_manifest",
    "WdstreamError",
    "ConfigError",
    "SourceError",
    "HubUnreachableError",
    "StorageError",
    "CredentialsError",
    "ShardReadError",
    "SampleError",
    "TooManyErrors",
]

_LAZY = {
    "make_loader": ("wdstream.loader", "make_loader"),
    "Loader": ("wdstream.loader", "Loader"),
    "MultimodalDataset": ("wdstream.dataset", "MultimodalDataset"),
}


def __getattr__(name: str) -> Any:
    """Import the heavy parts (torch, datasets) only when they are used."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'wdstream' has no attribute {name!r}")
