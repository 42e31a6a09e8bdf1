"""The optional local shard cache (``config.local_cache_dir``): whole shards kept in a local
folder, bounded in bytes, least recently used out. The fetcher reads cached shards from there
(ranged reads become seeks in the local file), from several threads at once: a shard is
downloaded once per process however many threads ask for it, and a file is opened before
another thread can evict it (an open file stays readable after its name is removed)."""

from __future__ import annotations

import hashlib
import os
import posixpath
import threading
from typing import Any, BinaryIO

from .. import storage
from ..errors import StorageError, redact

__all__ = ["LocalCache"]


class LocalCache:
    """A local folder of whole shards, bounded in bytes, least recently used out.

    Safe for several processes: downloads go to a temp name and are renamed into place.
    """

    def __init__(self, folder: str, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        os.makedirs(folder, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def _path(self, url: str) -> str:
        digest = hashlib.sha256(url.encode()).hexdigest()[:24]
        return os.path.join(self.folder, digest + "-" + posixpath.basename(url.split("?")[0]))

    def get(self, url: str, storage_options: dict[str, Any] | None) -> str:
        """A local path holding the whole shard (downloaded on a miss). Raises StorageError
        naming the URL when the download fails. Another thread may evict it: to read it, use
        :meth:`open`."""
        f = self.open(url, storage_options)
        f.close()
        return self._path(url)

    def open(self, url: str, storage_options: dict[str, Any] | None) -> BinaryIO:
        """The cached shard, open for reading: downloaded on a miss (once per process, however
        many threads ask), and opened before this thread evicts anything. Raises StorageError
        naming the URL when the download fails."""
        path = self._path(url)
        with self._lock:
            lock = self._locks.setdefault(path, threading.Lock())
        for _ in range(5):
            with lock:
                if not os.path.exists(path):
                    storage.download(url, path, storage_options)  # a temp name, then renamed
                try:
                    f = open(path, "rb")  # noqa: SIM115 - closed by the caller
                except FileNotFoundError:  # evicted by another thread just now: again
                    continue
                os.utime(f.fileno())  # the open file: its name may be gone already
            self._evict(keep=path)  # an open file stays readable after its name is removed
            return f
        raise StorageError(
            f"{redact(url)} was evicted from the local cache {self.folder} "
            f"five times while it was opened: raise local_cache_bytes",
            url=url,
        )

    def _evict(self, keep: str) -> None:
        entries = []
        for name in os.listdir(self.folder):
            p = os.path.join(self.folder, name)
            if ".partial-" in name:
                continue
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue
            entries.append((st.st_atime, st.st_size, p))
        total = sum(e[1] for e in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            try:
                os.remove(p)
                total -= size
            except FileNotFoundError:
                pass
