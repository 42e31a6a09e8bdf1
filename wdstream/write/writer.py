"""Shard writer: samples in, committed tar shards out, cut by sample count or bytes.

Each shard is streamed to its fsspec URL through :class:`~wdstream.uploads.AtomicFile`, so a shard is
visible only once complete. Its sidecar index (sample offsets) is written right after. The
writer returns one :class:`ShardInfo` per committed shard.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import storage, uploads
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

    On an object store a finished shard commits (its last parts upload, then its index) on a
    thread while the next one is written: up to ``upload_concurrency`` shards are in flight,
    their parts bounded by ``upload_buffer_bytes`` (:class:`~wdstream.uploads.UploadBudget`).
    """

    def __init__(
        self,
        output_url: str,
        partition: int,
        *,
        max_samples: int = 1000,
        max_bytes: int = 256 * 2**20,
        storage_options: dict[str, Any] | None = None,
        upload_concurrency: int | None = None,
        upload_buffer_bytes: int | None = None,
    ):
        self.output_url = output_url.rstrip("/")
        self.partition = partition
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.storage_options = storage_options or {}
        self.fs, self.base_path = storage.url_to_fs(self.output_url, self.storage_options)
        self.shards: list[ShardInfo] = []
        self._seq = 0
        self._file: uploads.AtomicFile | None = None
        self._tar: TarStreamWriter | None = None
        self._offsets: list[int] = []
        self._keys: list[str] = []
        self.upload_concurrency = upload_concurrency or uploads.UPLOAD_CONCURRENCY
        self.upload_buffer_bytes = upload_buffer_bytes
        self._committing: list = []  # futures of shards committing, in shard order
        self._commits = None  # a thread pool, made for the first shard sent to an object store

    @staticmethod
    def sample_size(fields: dict[str, bytes]) -> int:
        """Bytes a sample takes in a tar: a 512-byte header per member plus padded data."""
        return sum(512 + len(v) + (-len(v)) % 512 for v in fields.values())

    def write(self, key: str, fields: dict[str, bytes]) -> None:
        size = self.sample_size(fields)
        # the archive ends with two zero blocks and is padded to a full 10 KiB record
        end = -(-(self._tar.offset + size + 1024) // RECORD) * RECORD if self._tar else 0
        if self._tar is not None and (
            len(self._offsets) >= self.max_samples or end > self.max_bytes
        ):
            self._finish()
        if self._tar is None:
            self._start()
        self._offsets.append(self._tar.write_sample(key, fields))
        self._keys.append(key)

    def _start(self) -> None:
        name = shard_name(self.partition, self._seq)
        path = f"{self.base_path}/{name}"
        self._file = uploads.AtomicFile(
            f"{self.output_url}/{name}",
            fs=self.fs,
            path=path,
            upload_concurrency=self.upload_concurrency,
            upload_buffer_bytes=self.upload_buffer_bytes,
        )
        self._tar = TarStreamWriter(self._file)
        self._offsets, self._keys = [], []

    def _finish(self) -> None:
        assert self._tar is not None and self._file is not None
        end_of_samples = self._tar.offset
        self._tar.close()
        file, offsets, keys, seq = self._file, self._offsets, self._keys, self._seq
        self._seq += 1
        self._file = self._tar = None
        if storage.is_local(self.fs):
            self.shards.append(self._commit(file, offsets + [end_of_samples], keys, seq))
            return
        if self._commits is None:
            self._commits = ThreadPoolExecutor(
                self.upload_concurrency, thread_name_prefix="wdstream-commit"
            )
        while len(self._committing) >= self.upload_concurrency:
            self.shards.append(self._committing.pop(0).result())
        self._committing.append(
            self._commits.submit(self._commit, file, offsets + [end_of_samples], keys, seq)
        )

    def _commit(
        self, file: uploads.AtomicFile, offsets: list[int], keys: list[str], seq: int
    ) -> ShardInfo:
        """Publish a finished shard, then its index; the shard's ShardInfo."""
        file.commit()
        name = shard_name(self.partition, seq)
        index = index_name(name)
        storage.write_bytes(
            f"{self.output_url}/{index}",
            index_bytes(offsets, keys),
            self.storage_options,
            fs=self.fs,  # shared across commit threads
            path=f"{self.base_path}/{index}",
        )
        return ShardInfo(
            url=name,
            samples=len(keys),
            bytes=file.bytes,
            sha256=file.hexdigest(),
            index=index,
            partition=self.partition,
            first_key=keys[0],
            last_key=keys[-1],
        )

    def _wait(self) -> None:
        try:
            while self._committing:
                self.shards.append(self._committing.pop(0).result())
        finally:
            if self._commits is not None:
                self._commits.shutdown(wait=True)
                self._commits = None

    def finish(self) -> None:
        """Close the open shard (if any) and start its commit, without waiting for it: on an
        object store its last parts upload on the commit threads. :meth:`close` waits."""
        if self._tar is not None:
            self._finish()

    def close(self) -> list[ShardInfo]:
        """Commit the open shard (if any) and return every committed shard of this writer."""
        self.finish()
        self._wait()
        return self.shards

    def abort(self) -> None:
        """Discard the open shard: an aborted multipart upload or a removed temp file."""
        if self._file is not None:
            self._file.discard()
        self._file = self._tar = None
        with contextlib.suppress(Exception):
            self._wait()
