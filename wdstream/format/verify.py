"""Re-reading a shard as a stream, for ``verify``: its sample count, byte size and sha256,
and whether its index describes it.

:func:`check_shard` is what ``wdstream verify`` runs for each shard of a manifest: one
streaming pass (:func:`~wdstream.format.scan.scan_shard`, never past the size the store
lists), then the manifest's count, size and sha256, and the shard's index sample by sample
(each sample's offset, the end, and each key or key hash), so an index that belongs to
another shard, or that a later write replaced, cannot pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import storage
from ..errors import ShardReadError, StorageError
from .index import key_hash, load_index
from .scan import ShardScan, scan_shard
from .stream import HashingReader, ShardStream, iter_samples

__all__ = ["verify_shard", "check_shard", "check_index"]


def verify_shard(url: str, storage_options: dict[str, Any] | None = None) -> tuple[int, int, str]:
    """``(samples, bytes, sha256)`` of a shard, read once as a stream (never past the size
    the store lists). Raises ShardReadError when the tar cannot be read to its end,
    StorageError when it cannot be opened."""
    size = storage.file_identity(url, storage_options)[0]
    with ShardStream(url, storage_options, size=size) as f:
        reader = HashingReader(f)
        try:
            # members are counted, never held: each is read through in bounded chunks
            count = sum(1 for _ in iter_samples(reader, name=url, max_member_bytes=0))
        except ShardReadError as exc:
            raise ShardReadError(
                f"{exc}. Convert it again, or remove it from the manifest", shard=url
            ) from exc.__cause__
        reader.drain()  # the padding after the end-of-archive blocks
    return count, reader.bytes, reader.hexdigest()


def check_shard(
    url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    samples: int,
    nbytes: int,
    sha256: str | None,
    index_url: str | None = None,
) -> list[str]:
    """What is wrong with the shard at ``url`` against what its manifest says (``samples``,
    ``nbytes``, ``sha256``; None: not recorded) and against its index at ``index_url``:
    one line per problem, none when it matches. Raises StorageError when the shard cannot
    be opened or read (after retries)."""
    scan = scan_shard(url, storage_options)
    problems = list(scan.problems)
    if len(scan.keys) != samples:
        problems.append(f"{len(scan.keys)} samples, manifest says {samples}")
    if scan.bytes != nbytes:
        problems.append(f"{scan.bytes} bytes, manifest says {nbytes}")
    if sha256 is not None and scan.sha256 != sha256:
        problems.append(f"sha256 {scan.sha256[:12]}..., manifest says {sha256[:12]}...")
    if index_url is not None:
        problems += check_index(scan, index_url, storage_options, samples=samples)
    return problems


def check_index(
    scan: ShardScan,
    index_url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    samples: int | None = None,
) -> list[str]:
    """How the index at ``index_url`` differs from the shard ``scan`` read: its sample
    count, each sample's offset and the end (all inside the shard), each key (version 1)
    or key hash (version 2). One line (the first difference), or none."""
    name = index_url.rsplit("/", 1)[-1]
    try:
        idx = load_index(index_url, storage_options, samples=samples)
    except (StorageError, ValueError) as exc:
        return [f"index {name}: {exc}"]
    offsets = [int(o) for o in idx["offsets"]]
    if len(offsets) != len(scan.offsets):
        return [
            f"index {name} has {len(offsets) - 1} samples, the shard {len(scan.offsets) - 1}: "
            f"it is not this shard's index"
        ]
    if not scan.whole and offsets[-1] > scan.bytes:
        return [f"index {name} ends at byte {offsets[-1]}, past the shard's {scan.bytes} bytes"]
    if idx.get("keys") is not None:
        ids, mine = list(idx["keys"]), list(scan.keys)
    else:
        ids = np.asarray(idx["key_hashes"]).tolist()
        mine = [key_hash(k) for k in scan.keys]
    for i, (a, b) in enumerate(zip(offsets, scan.offsets, strict=True)):
        if a != b:
            what = "the end" if i == len(scan.keys) else f"sample {i}"
            return [
                f"index {name} puts {what} at byte {a}, the shard at byte {b}: it is not this "
                f"shard's index (rebuild it: `wdstream index`, or convert again)"
            ]
    for i, (a, b) in enumerate(zip(ids, mine, strict=True)):
        if a != b:
            return [
                f"index {name} names another key for sample {i} ({scan.keys[i]!r} in the "
                f"shard): it is not this shard's index"
            ]
    return []
