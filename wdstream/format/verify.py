"""Re-reading a shard as a stream: its sample count, byte size and sha256, for ``verify``."""

from __future__ import annotations

from typing import Any

from .. import storage
from ..errors import ShardReadError
from .stream import HashingReader, iter_samples

__all__ = ["verify_shard"]


def verify_shard(url: str, storage_options: dict[str, Any] | None = None) -> tuple[int, int, str]:
    """``(samples, bytes, sha256)`` of a shard, read once as a stream. Raises ShardReadError
    when the tar cannot be read to its end, StorageError when it cannot be opened."""
    with storage.open_read(url, storage_options) as f:
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
