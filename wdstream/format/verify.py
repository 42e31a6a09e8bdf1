"""Re-reading a shard as a stream: its sample count, byte size and sha256, for ``verify``."""

from __future__ import annotations

import hashlib
from typing import Any

from .. import storage
from ..errors import ShardReadError, redact
from .tario import group_samples, iter_members

__all__ = ["verify_shard"]


class _HashingReader:
    """A read-only stream that hashes and counts what passes through it."""

    def __init__(self, f):
        self.f = f
        self.sha = hashlib.sha256()
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.bytes += len(data)
        return data


def verify_shard(url: str, storage_options: dict[str, Any] | None = None) -> tuple[int, int, str]:
    """``(samples, bytes, sha256)`` of a shard, read once as a stream. Raises ShardReadError
    when the tar cannot be read to its end."""
    with storage.open_read(url, storage_options) as f:
        reader = _HashingReader(f)
        try:
            # members are counted, never held: each is read through in bounded chunks
            count = sum(1 for _ in group_samples(iter_members(reader, name=url,
                                                              max_member_bytes=0)))
        except Exception as exc:
            raise ShardReadError(f"shard {redact(url)} cannot be read: {exc}. Convert it again, "
                                 f"or remove it from the manifest", shard=url) from exc
        while reader.read(1 << 20):  # the padding after the end-of-archive blocks
            pass
    return count, reader.bytes, reader.sha.hexdigest()
