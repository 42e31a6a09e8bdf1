"""The optional local shard cache (``config.local_cache_dir``): whole shards kept in a local
folder, bounded in bytes, least recently used out. The fetcher reads cached shards from there
(ranged reads become seeks in the local file)."""

from __future__ import annotations

import hashlib
import os
import posixpath
from typing import Any

from .. import storage

__all__ = ["LocalCache"]


class LocalCache:
    """A local folder of whole shards, bounded in bytes, least recently used out.

    Safe for several processes: downloads go to a temp name and are renamed into place.
    """

    def __init__(self, folder: str, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        os.makedirs(folder, exist_ok=True)

    def _path(self, url: str) -> str:
        digest = hashlib.sha256(url.encode()).hexdigest()[:24]
        return os.path.join(self.folder, digest + "-" + posixpath.basename(url.split("?")[0]))

    def get(self, url: str, storage_options: dict[str, Any] | None) -> str:
        """A local path holding the whole shard (downloaded on a miss). Raises StorageError
        naming the URL when the download fails."""
        path = self._path(url)
        if os.path.exists(path):
            os.utime(path)
            return path
        storage.download(url, path, storage_options)  # to a temp name, renamed when whole
        self._evict(keep=path)
        return path

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
