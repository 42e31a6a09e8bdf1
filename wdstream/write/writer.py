"""Shard writer: samples in, committed tar shards out, cut by sample count or bytes.

Each shard is streamed to its fsspec URL through :class:`storage.AtomicFile`, so a shard is
visible only once complete. Its sidecar index (sample offsets) is written right after. The
writer returns one :class:`ShardInfo` per committed shard.
"""

from __future__ import annotations

from typing import Any

from .. import storage
from ..format.index import index_bytes, index_name
from ..format.manifest import ShardInfo
from ..format.tario import RECORD, TarStreamWriter

__all__ = ["ShardWriter", "shard_name"]


def shard_name(partition: int, seq: int) -> str:
    """Deterministic shard file name: the same partition and sequence always give the same name."""
    return f"shard-{partition:05d}-{seq:05d}.tar"


class ShardWriter:
    """Write samples of one partition into shards under ``output_url``.

    A shard is cut before a sample that would take it past ``max_samples`` samples or
    ``max_bytes`` bytes (a sample larger than ``max_bytes`` gets a shard of its own).
    Call :meth:`close` to commit the last shard, or :meth:`abort` to discard it.
    """

    def __init__(self, output_url: str, partition: int, *, max_samples: int = 1000,
                 max_bytes: int = 256 * 2**20, storage_options: dict[str, Any] | None = None):
        self.output_url = output_url.rstrip("/")
        self.partition = partition
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.storage_options = storage_options or {}
        self.fs, self.base_path = storage.url_to_fs(self.output_url, self.storage_options)
        self.shards: list[ShardInfo] = []
        self._seq = 0
        self._file: storage.AtomicFile | None = None
        self._tar: TarStreamWriter | None = None
        self._offsets: list[int] = []
        self._keys: list[str] = []

    @staticmethod
    def sample_size(fields: dict[str, bytes]) -> int:
        """Bytes a sample takes in a tar: a 512-byte header per member plus padded data."""
        return sum(512 + len(v) + (-len(v)) % 512 for v in fields.values())

    def write(self, key: str, fields: dict[str, bytes]) -> None:
        size = self.sample_size(fields)
        # the archive ends with two zero blocks and is padded to a full 10 KiB record
        end = -(-(self._tar.offset + size + 1024) // RECORD) * RECORD if self._tar else 0
        if self._tar is not None and (len(self._offsets) >= self.max_samples or
                                      end > self.max_bytes):
            self._finish()
        if self._tar is None:
            self._start()
        self._offsets.append(self._tar.write_sample(key, fields))
        self._keys.append(key)

    def _start(self) -> None:
        name = shard_name(self.partition, self._seq)
        path = f"{self.base_path}/{name}"
        self._file = storage.AtomicFile(f"{self.output_url}/{name}", fs=self.fs, path=path)
        self._tar = TarStreamWriter(self._file)
        self._offsets, self._keys = [], []

    def _finish(self) -> None:
        assert self._tar is not None and self._file is not None
        end_of_samples = self._tar.offset
        self._tar.close()
        self._file.commit()
        name = shard_name(self.partition, self._seq)
        index = index_name(name)
        storage.write_bytes(f"{self.output_url}/{index}",
                            index_bytes(self._offsets + [end_of_samples], self._keys),
                            self.storage_options)
        self.shards.append(ShardInfo(
            url=name, samples=len(self._offsets), bytes=self._file.bytes,
            sha256=self._file.hexdigest(), index=index, partition=self.partition,
            first_key=self._keys[0], last_key=self._keys[-1]))
        self._seq += 1
        self._file = self._tar = None

    def close(self) -> list[ShardInfo]:
        """Commit the open shard (if any) and return every committed shard of this writer."""
        if self._tar is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Discard the open shard: an aborted multipart upload or a removed temp file."""
        if self._file is not None:
            self._file.discard()
        self._file = self._tar = None
