"""The key index of a dataset: which shard, and which sample in it, holds a key, for datasets
whose keys are not ordered across shards (foreign shards indexed by ``wdstream index``).

``manifest.keys`` beside ``manifest.json`` (binary, little-endian)::

    b"WDSKEYS" 0x01     magic and version (8 bytes)
    uint64 n            entries: one per sample
    uint64 shards       the number of shards of the manifest it was built for
    uint64 block        entries per block (:data:`BLOCK`)
    uint64 fences[m]    the first hash of each block, m = ceil(n / block)
    entries[n]          (uint64 key hash, uint32 shard, uint32 position), sorted

Key hashes are :func:`wdstream.format.index.key_hash` (the shard indexes' own). A lookup
reads the header and fences (one ranged read of :data:`HEAD_BYTES`; a second one past about
33M samples), then the one or two blocks whose fences bracket the hash (one ranged read of
64 KiB): two requests whatever the dataset's size, or one when the whole file fits in
:data:`HEAD_BYTES` (up to about 4,000 samples). 16 bytes per sample: 1.6 GB for 100M samples.
A hash is not a key: every candidate is checked against the sample's own key when it is read.
A converted dataset needs no key index: its keys (``make_key``) are ordered, and each shard's
first and last key in the manifest's details part find its shard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

__all__ = [
    "KEYS_NAME",
    "KEYS_MAGIC",
    "BLOCK",
    "HEAD_BYTES",
    "ENTRY",
    "key_index_bytes",
    "lookup_hash",
]

KEYS_NAME = "manifest.keys"
KEYS_MAGIC = b"WDSKEYS\x01"
BLOCK = 4096  # entries per block: a block is 64 KiB
HEAD_BYTES = 64 * 2**10  # the first ranged read: header, fences (and small files whole)
_HEADER = 32
ENTRY = np.dtype([("hash", "<u8"), ("shard", "<u4"), ("position", "<u4")])

#: ``read(start, end) -> bytes``: a ranged read of the key index (``end`` past the end of
#: the file reads to its end).
Reader = Callable[[int, int], bytes]


def key_index_bytes(per_shard_hashes: Iterable[np.ndarray], shards: int) -> bytes:
    """The key index of a dataset from each shard's key hashes, in manifest order (a uint64
    array per shard, as a version-2 shard index holds them)."""
    parts = []
    for shard, hashes in enumerate(per_shard_hashes):
        entries = np.empty(len(hashes), dtype=ENTRY)
        entries["hash"] = np.asarray(hashes, dtype="<u8")
        entries["shard"] = shard
        entries["position"] = np.arange(len(hashes), dtype="<u4")
        parts.append(entries)
    entries = np.concatenate(parts) if parts else np.empty(0, dtype=ENTRY)
    entries = entries[np.argsort(entries, order=("hash", "shard", "position"), kind="stable")]
    fences = entries["hash"][::BLOCK].astype("<u8")
    header = np.array([len(entries), shards, BLOCK], dtype="<u8")
    return b"".join([KEYS_MAGIC, header.tobytes(), fences.tobytes(), entries.tobytes()])


def lookup_hash(read: Reader, h: int, *, shards: int) -> list[tuple[int, int]]:
    """The ``(shard, position)`` of every entry whose hash is ``h``, in manifest order, read
    from a key index through ``read``. Raises ValueError when the file is not a key index,
    is truncated, or was built for another number of shards than ``shards`` (stale)."""
    head = read(0, HEAD_BYTES)
    if len(head) < _HEADER or head[:8] != KEYS_MAGIC:
        raise ValueError("not a wdstream key index")
    n, built_for, block = (int(v) for v in np.frombuffer(head, dtype="<u8", count=3, offset=8))
    if built_for != shards:
        raise ValueError(f"built for {built_for} shards, the manifest has {shards}")
    if block <= 0:
        raise ValueError("its block size is 0")
    blocks = -(-n // block)
    entries_at = _HEADER + 8 * blocks
    total = entries_at + ENTRY.itemsize * n
    if len(head) < min(total, HEAD_BYTES):
        raise ValueError("it is truncated")
    if len(head) < entries_at:
        head += read(len(head), entries_at)
        if len(head) < entries_at:
            raise ValueError("it is truncated")
    fences = np.frombuffer(head, dtype="<u8", count=blocks, offset=_HEADER)
    first = max(0, int(np.searchsorted(fences, h, side="left")) - 1)
    last = max(0, int(np.searchsorted(fences, h, side="right")) - 1)
    start = entries_at + ENTRY.itemsize * first * block
    end = min(total, entries_at + ENTRY.itemsize * (last + 1) * block)
    data = head[start:end] if end <= len(head) else read(start, end)
    if len(data) != end - start:
        raise ValueError("it is truncated")
    entries = np.frombuffer(data, dtype=ENTRY)
    lo, hi = (
        np.searchsorted(entries["hash"], h, side="left"),
        np.searchsorted(entries["hash"], h, side="right"),
    )
    found = entries[lo:hi]
    return [(int(e["shard"]), int(e["position"])) for e in found]
