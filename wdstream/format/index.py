"""The per-shard index: the byte offset and key of every sample, beside the shard.

Version 2, ``<shard stem>.idx`` (binary, little-endian; what :func:`index_bytes` writes)::

    b"WDSIDX" 0x00 0x02  magic and version (8 bytes)
    uint64 n            samples
    int64  offsets[n+1] each sample's first tar header, then the end of the last sample
    uint64 hashes[n]    :func:`key_hash` of each sample's key

16 bytes per sample, read with ``np.frombuffer`` (no parsing); a reader checks each key it
reads against its hash. Version 1, ``<shard stem>.idx.json`` (older conversions, still read):
``{"offsets": [...], "keys": [...]}``. A reader that starts at sample ``i`` of a shard issues
one ranged read from ``offsets[i]``.

``"whole": true`` (version 1 only, which :func:`index_bytes` writes for such shards) marks a
shard that cannot be read from the middle (``.tar.gz``): its offsets are positions in the
uncompressed stream, for information only, and a reader reads it from its start, skipping to
the samples it wants.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from .. import storage
from .schema import shard_stem

__all__ = [
    "index_name",
    "index_bytes",
    "parse_index",
    "load_index",
    "key_hash",
    "max_index_bytes",
    "sample_span_bytes",
    "parse_sample_span",
    "INDEX_MAGIC",
]

INDEX_MAGIC = b"WDSIDX\x00\x02"
_HEAD = 16  # a version-2 index: magic (8 bytes), sample count (u8), offsets (i8), hashes (u8)
#: Bound on an index's size: a fixed slack plus, per sample, an offset and a long key.
_INDEX_SLACK = 4096
_INDEX_BYTES_PER_SAMPLE = 600
_INDEX_BYTES_UNKNOWN = 64 * 2**20  # when the sample count is not known


def index_name(shard_name: str) -> str:
    """The index file name beside a shard: ``shard-00000-00000.tar -> ....idx``."""
    return shard_stem(shard_name) + ".idx"


def key_hash(key: str) -> int:
    """The 64-bit hash of a sample key stored in a version-2 index: of the key's bytes as
    the tar holds them (tar names are decoded with ``surrogateescape``, so a name that is
    not UTF-8 hashes as its own bytes, the same when it is indexed and when it is read)."""
    raw = key.encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


def index_bytes(offsets: list[int], keys: list[str], *, whole: bool = False) -> bytes:
    """The serialised index of a shard (version 2): sample start offsets, the end offset,
    and the keys' hashes. ``whole``: the shard is read from its start only (compressed);
    such an index is written as version 1 (JSON), which carries that flag."""
    if whole:
        return json.dumps(
            {"offsets": [int(o) for o in offsets], "keys": list(keys), "whole": True}
        ).encode()
    if len(offsets) != len(keys) + 1:
        raise ValueError(f"{len(offsets)} offsets for {len(keys)} keys: give the end too")
    n = np.array([len(keys)], dtype="<u8")
    hashes = np.array([key_hash(k) for k in keys], dtype="<u8")
    return b"".join(
        [INDEX_MAGIC, n.tobytes(), np.asarray(offsets, dtype="<i8").tobytes(), hashes.tobytes()]
    )


def sample_span_bytes(position: int) -> tuple[int, int]:
    """The bytes ``[start, end)`` of a version-2 index that hold sample ``position``'s start
    and end offsets (the next sample's start): one ranged read gives both."""
    at = _HEAD + 8 * position
    return at, at + 16


def parse_sample_span(raw: bytes) -> tuple[int, int] | None:
    """``(start, end)`` from the 16 bytes :func:`sample_span_bytes` names; None when fewer
    came (the index ends before them)."""
    if len(raw) != 16:
        return None
    start, end = np.frombuffer(raw, dtype="<i8", count=2)
    return int(start), int(end)


def _parse_binary(data: bytes, samples: int | None) -> dict[str, Any]:
    if len(data) < _HEAD:
        raise ValueError("the index is truncated")
    n = int(np.frombuffer(data, dtype="<u8", count=1, offset=8)[0])
    if len(data) != _HEAD + 8 * (n + 1) + 8 * n:
        raise ValueError(f"the index is {len(data)} bytes, {n} samples need {_HEAD + 16 * n + 8}")
    if samples is not None and n != samples:
        raise ValueError(f"index has {n} samples, manifest says {samples}")
    offsets = np.frombuffer(data, dtype="<i8", count=n + 1, offset=_HEAD)
    if (offsets < 0).any() or (np.diff(offsets) < 0).any():
        raise ValueError("the index's offsets are not ascending non-negative integers")
    hashes = np.frombuffer(data, dtype="<u8", count=n, offset=_HEAD + 8 * (n + 1))
    return {"offsets": offsets, "keys": None, "key_hashes": hashes}


def parse_index(data: bytes, samples: int | None = None) -> dict[str, Any]:
    """``{"offsets": [...], "keys": [...] or None[, "whole": True]}`` from index bytes. Raises
    ValueError when it is malformed or does not hold ``samples`` samples. A version-2 (binary) index gives
    ``offsets`` and ``key_hashes`` as arrays and ``keys`` None."""
    if data[:8] == INDEX_MAGIC:
        return _parse_binary(data, samples)
    idx = json.loads(data)
    offsets = idx.get("offsets") if isinstance(idx, dict) else None
    if not isinstance(offsets, list) or not offsets:
        raise ValueError("the index has no 'offsets' list")
    if not all(type(o) is int and o >= 0 for o in offsets) or any(
        a > b for a, b in zip(offsets, offsets[1:], strict=False)
    ):
        raise ValueError("the index's 'offsets' are not ascending non-negative integers")
    if samples is not None and len(offsets) != samples + 1:
        raise ValueError(f"index has {len(offsets) - 1} samples, manifest says {samples}")
    keys = idx.get("keys")
    if keys is not None and (not isinstance(keys, list) or len(keys) != len(offsets) - 1):
        raise ValueError(
            f"index has {len(keys) if isinstance(keys, list) else 'no list of'} "
            f"keys for {len(offsets) - 1} samples"
        )
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


def load_index(
    url: str, storage_options: dict[str, Any] | None = None, *, samples: int | None = None
) -> dict[str, Any]:
    """Read and check a shard's index (see :func:`parse_index`); at most
    :func:`max_index_bytes` bytes are read (StorageError past that)."""
    data = storage.read_bytes(url, storage_options, max_bytes=max_index_bytes(samples))
    return parse_index(data, samples)
