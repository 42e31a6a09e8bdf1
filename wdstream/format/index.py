"""The per-shard index: the byte offset and key of every sample, beside the shard.

``<shard stem>.idx.json`` holds ``{"offsets": [...], "keys": [...]}``: the offset of each
sample's first tar header plus, last, the end of the last sample. A reader that starts at
sample ``i`` of a shard issues one ranged read from ``offsets[i]``, and checks the keys it
finds against ``keys``.

``"whole": true`` marks a shard that cannot be read from the middle (``.tar.gz``): its offsets
are positions in the uncompressed stream, for information only, and a reader reads it from its
start, skipping to the samples it wants.
"""

from __future__ import annotations

import json
from typing import Any

from .. import storage

__all__ = ["index_name", "index_bytes", "parse_index", "load_index", "max_index_bytes"]

#: Bound on an index's size: a fixed slack plus, per sample, an offset and a long key.
_INDEX_SLACK = 4096
_INDEX_BYTES_PER_SAMPLE = 600
_INDEX_BYTES_UNKNOWN = 64 * 2**20  # when the sample count is not known


def index_name(shard_name: str) -> str:
    """The index file name beside a shard: ``shard-00000-00000.tar -> ....idx.json``."""
    for ext in (".tar.gz", ".tgz", ".tar"):
        if shard_name.endswith(ext):
            return shard_name[: -len(ext)] + ".idx.json"
    return shard_name + ".idx.json"


def index_bytes(offsets: list[int], keys: list[str], *, whole: bool = False) -> bytes:
    """The serialised index of a shard: sample start offsets, the end offset, and the keys;
    ``whole``: the shard is read from its start only (compressed)."""
    doc: dict[str, Any] = {"offsets": offsets, "keys": keys}
    if whole:
        doc["whole"] = True
    return json.dumps(doc).encode()


def parse_index(data: bytes, samples: int | None = None) -> dict[str, Any]:
    """``{"offsets": [...], "keys": [...] or None[, "whole": True]}`` from index bytes. Raises ValueError when it
    is malformed or does not hold ``samples`` samples."""
    idx = json.loads(data)
    offsets = idx.get("offsets") if isinstance(idx, dict) else None
    if not isinstance(offsets, list) or not offsets:
        raise ValueError("the index has no 'offsets' list")
    if not all(type(o) is int and o >= 0 for o in offsets) or \
            any(a > b for a, b in zip(offsets, offsets[1:], strict=False)):
        raise ValueError("the index's 'offsets' are not ascending non-negative integers")
    if samples is not None and len(offsets) != samples + 1:
        raise ValueError(f"index has {len(offsets) - 1} samples, manifest says {samples}")
    keys = idx.get("keys")
    if keys is not None and (not isinstance(keys, list) or len(keys) != len(offsets) - 1):
        raise ValueError(f"index has {len(keys) if isinstance(keys, list) else 'no list of'} "
                         f"keys for {len(offsets) - 1} samples")
    if keys is not None and not all(isinstance(k, str) for k in keys):
        raise ValueError("the index's 'keys' are not all strings")
    out = {"offsets": offsets, "keys": keys}
    if idx.get("whole"):
        out["whole"] = True
    return out


def max_index_bytes(samples: int | None) -> int:
    """The most bytes an index of ``samples`` samples may take (a larger one is refused)."""
    if samples is None:
        return _INDEX_BYTES_UNKNOWN
    return _INDEX_SLACK + _INDEX_BYTES_PER_SAMPLE * max(0, samples)


def load_index(url: str, storage_options: dict[str, Any] | None = None, *,
               samples: int | None = None) -> dict[str, Any]:
    """Read and check a shard's index (see :func:`parse_index`); at most
    :func:`max_index_bytes` bytes are read (StorageError past that)."""
    data = storage.read_bytes(url, storage_options, max_bytes=max_index_bytes(samples))
    return parse_index(data, samples)
