"""wdstream: Hugging Face datasets -> WebDataset shards on any fsspec URL -> PyTorch batches.

Two wings over one shard contract:

- write (:mod:`wdstream.write`): ``convert`` — source -> encode -> shard writer -> manifest;
- read (:mod:`wdstream.read`): ``make_loader`` — manifest/URLs -> plan (split + shuffle) ->
  shards -> stages (read-ahead, shuffle, decode) -> collate -> loader;
- the contract (:mod:`wdstream.format`): sample layout, tar I/O, manifest, index.

The heavy parts (torch, datasets) are imported only when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import Config, load_config
from .errors import (
    ConfigError,
    CredentialsError,
    HubUnreachableError,
    NotFoundError,
    SampleError,
    ShardReadError,
    SourceError,
    StorageError,
    TooManyErrors,
    WdstreamError,
)
from .format.manifest import Manifest, ShardInfo, load_manifest

__version__ = "0.1.0"

__all__ = [
    "Config",
    "load_config",
    "convert",
    "make_loader",
    "get_sample",
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
    "NotFoundError",
    "CredentialsError",
    "ShardReadError",
    "SampleError",
    "TooManyErrors",
]

_LAZY = {
    "convert": ("wdstream.write.convert", "convert"),
    "make_loader": ("wdstream.read.loader", "make_loader"),
    "get_sample": ("wdstream.read.lookup", "get_sample"),
    "Loader": ("wdstream.read.loader", "Loader"),
    "collate": ("wdstream.read.collate", "collate"),
    "MultimodalDataset": ("wdstream.compat", "MultimodalDataset"),
}


def __getattr__(name: str) -> Any:
    """Import the heavy parts (torch, datasets) only when they are used."""
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'wdstream' has no attribute {name!r}")
