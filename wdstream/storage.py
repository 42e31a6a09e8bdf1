"""All I/O goes through fsspec: URLs, storage options, commit-or-abort writes, brace expansion.

A write is published only when it completed: :func:`atomic_write` opens the target with
``autocommit=False`` (a local temp file renamed on commit; an S3 multipart upload completed on
commit and aborted on discard) and never relies on ``__exit__``, which fsspec's buffered files
treat as a commit even while an exception is in flight.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import queue
import threading
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO

import fsspec
import fsspec.core

from .errors import CredentialsError, NotFoundError, StorageError, redact

__all__ = [
    "url_to_fs",
    "join_url",
    "is_absolute_url",
    "expand_urls",
    "AtomicFile",
    "atomic_write",
    "write_bytes",
    "read_bytes",
    "open_read",
    "exists",
    "check_writable",
    "check_readable",
    "translate_error",
]

log = logging.getLogger(__name__)


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None):
    """``(filesystem, path)`` for any fsspec URL, with the user's storage options."""
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open a filesystem for {redact(url)}: {exc}", url=url) from exc


def is_absolute_url(url: str) -> bool:
    return "://" in url or url.startswith("/")


def join_url(base: str, name: str) -> str:
    """``base`` joined with a relative ``name``; an absolute ``name`` is returned as is."""
    if is_absolute_url(name):
        return name
    return base.rstrip("/") + "/" + name


def expand_urls(spec: str | list[str]) -> list[str]:
    """Expand brace patterns (``shard-{000..009}.tar``); lists are expanded element-wise."""
    import braceexpand

    specs = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for s in specs:
        out.extend(braceexpand.braceexpand(s))
    return out


_WRITES = ("write", "commit", "delete", "clean")


def _local_folder(url: str) -> str:
    """The existing folder nearest to a local path (where a permission is missing)."""
    path = os.path.abspath(url.removeprefix("file://"))
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    while folder and not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder or "."


def translate_error(exc: BaseException, url: str, action: str) -> StorageError:
    """Map a filesystem/botocore exception onto a StorageError that names the URL."""
    text = f"{type(exc).__name__}: {exc}"
    shown = redact(url)
    if "NoCredentials" in text or "Unable to locate credentials" in text or \
            "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        return CredentialsError(
            f"cannot {action} {shown}: no valid object-store credentials. Set AWS_ACCESS_KEY_ID/"
            f"AWS_SECRET_ACCESS_KEY (or a profile), or pass --storage-option key=... "
            f"--storage-option secret=...", url=url)
    if isinstance(exc, PermissionError) and ("://" not in url or url.startswith("file://")):
        folder = _local_folder(url)
        return CredentialsError(
            f"cannot {action} {shown}: permission denied by the local file system; check that "
            f"you may {'write to' if action in _WRITES else 'read'} the folder {folder} "
            f"(ls -ld {folder}; chmod or choose another folder)", url=url)
    if isinstance(exc, PermissionError) or "AccessDenied" in text:
        return CredentialsError(
            f"cannot {action} {shown}: access denied; check the credentials' permissions "
            f"for this bucket/prefix", url=url)
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text or "NoSuchKey" in text:
        return NotFoundError(
            f"cannot {action} {shown}: it does not exist (missing bucket or prefix?)", url=url)
    if "Connect" in text or "Could not connect" in text or "EndpointConnectionError" in text:
        return StorageError(
            f"cannot {action} {shown}: connection failed ({type(exc).__name__}); check "
            f"endpoint_url and the network", url=url)
    return StorageError(f"cannot {action} {shown}: {text}", url=url)


class _BackgroundWriter:
    """Writes chunks to a file on a thread, so the producer keeps encoding while a part
    uploads (s3fs uploads a part inside ``write``). At most ``depth`` chunks wait; memory is
    bounded by ``(depth + 2) * chunk`` bytes."""

    def __init__(self, f, chunk: int = 8 * 2**20, depth: int = 2):
        self.f = f
        self.chunk = chunk
        self.pending = bytearray()
        self.q: queue.Queue = queue.Queue(depth)
        self.error: BaseException | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="wdstream-upload", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            data = self.q.get()
            if data is None:
                return
            if self.error is None and not self.stopped.is_set():
                try:
                    self.f.write(data)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the producer
                    self.error = exc

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def write(self, data: bytes) -> None:
        self._check()
        self.pending += data
        if len(self.pending) >= self.chunk:
            self.q.put(bytes(self.pending))
            self.pending.clear()

    def drain(self) -> None:
        """Hand everything written so far to the file, wait for it, and carry on."""
        self.finish()
        self.thread = threading.Thread(target=self._run, name="wdstream-upload", daemon=True)
        self.thread.start()

    def finish(self) -> None:
        """Hand everything to the file and stop the thread; raises the upload's error."""
        if self.pending:
            self.q.put(bytes(self.pending))
            self.pending.clear()
        self.q.put(None)
        self.thread.join()
        self._check()

    def abort(self) -> None:
        self.stopped.set()
        self.pending.clear()
        while True:  # make room for the sentinel without blocking
            try:
                self.q.get_nowait()
            except queue.Empty:
                break
        self.q.put(None)
        self.thread.join()


class AtomicFile:
    """A file that becomes visible at its URL only on :meth:`commit`.

    Opened with ``autocommit=False``: a local temp file renamed on commit, an S3 multipart
    upload completed on commit and aborted on :meth:`discard`. Counts bytes and computes the
    sha256 of what was written, so nothing is read back.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None,
                 *, fs=None, path: str | None = None, background: bool = True):
        import hashlib

        if fs is None:
            fs, path = url_to_fs(url, storage_options)
        self.url = url
        parent = posixpath.dirname(path)
        self._local_tmp: str | None = None
        self._path = path
        try:
            if _is_local(fs):
                # fsspec's local autocommit=False writes to /tmp and *moves* (copies across
                # devices) on commit; we want a same-folder temp name and an atomic rename.
                os.makedirs(parent or ".", exist_ok=True)
                base = posixpath.basename(path)
                self._local_tmp = posixpath.join(parent, f".{base}.partial-{uuid.uuid4().hex[:12]}")
                self._f = open(self._local_tmp, "wb")
            else:
                if parent and not _is_object_store(fs):
                    fs.makedirs(parent, exist_ok=True)
                self._f = fs.open(path, "wb", autocommit=False)
        except Exception as exc:
            raise translate_error(exc, url, "write") from exc
        # object stores upload parts inside write(): do that on a thread, off the encoder's path
        self._bg = _BackgroundWriter(self._f) if background and self._local_tmp is None \
            and _is_object_store(fs) and "memory" not in str(fs.protocol) else None
        self.bytes = 0
        self._sha = hashlib.sha256()
        self.done = False

    def write(self, data: bytes) -> int:
        try:
            if self._bg is not None:
                self._bg.write(data)
            else:
                self._f.write(data)
        except Exception as exc:
            raise translate_error(exc, self.url, "write") from exc
        self._sha.update(data)
        self.bytes += len(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def flush(self) -> None:
        """Push what was written so far to the store (an object store starts its upload)."""
        if self._bg is not None:
            self._bg.drain()
        self._f.flush()

    def commit(self) -> None:
        """Finish the upload and publish the object."""
        try:
            if self._bg is not None:
                self._bg.finish()
            self._f.close()
            if self._local_tmp is not None:
                os.replace(self._local_tmp, self._path)
            else:
                self._f.commit()
        except Exception as exc:
            self.discard()
            raise translate_error(exc, self.url, "commit") from exc
        self.done = True

    def discard(self) -> None:
        """Throw the partial object away; nothing becomes visible. Idempotent."""
        if self.done:
            return
        self.done = True
        if self._bg is not None:
            self._bg.abort()
        if self._local_tmp is not None:
            with contextlib.suppress(Exception):
                self._f.close()
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._local_tmp)
            return
        with contextlib.suppress(Exception):
            self._f.discard()
        # fsspec would commit in close()/__del__ of an autocommit=False file only via commit();
        # mark it closed so no later close() uploads what is left in its buffer.
        with contextlib.suppress(Exception):
            self._f.closed = True


@contextlib.contextmanager
def atomic_write(url: str, storage_options: dict[str, Any] | None = None,
                 *, fs=None, path: str | None = None) -> Iterator[AtomicFile]:
    """Context manager around :class:`AtomicFile`: commit on success, discard on any error."""
    f = AtomicFile(url, storage_options, fs=fs, path=path, background=False)
    try:
        yield f
    except BaseException:
        f.discard()
        raise
    f.commit()


def _is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def _is_object_store(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in ("s3", "s3a", "gs", "gcs", "az", "abfs", "memory") for p in protocols)


def write_bytes(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write a small object atomically (manifest, index, partition record).

    Locally: a same-folder temp file renamed into place. On an object store: one PUT
    (``pipe_file``), which is atomic by itself and, unlike a multipart upload, leaves nothing
    pending when it is interrupted. Raises StorageError/CredentialsError naming the URL.
    """
    fs, path = url_to_fs(url, storage_options)
    if not _is_object_store(fs):
        with atomic_write(url, fs=fs, path=path) as w:
            w.write(data)
        return
    try:
        fs.pipe_file(path, data)
    except Exception as exc:
        raise translate_error(exc, url, "write") from exc


def read_bytes(url: str, storage_options: dict[str, Any] | None = None, *,
               max_bytes: int | None = None) -> bytes:
    """The whole object at ``url``. With ``max_bytes``, at most that many bytes are read: a
    larger object (or an endless one, such as ``/dev/zero``) raises StorageError."""
    fs, path = url_to_fs(url, storage_options)
    try:
        if max_bytes is None:
            return fs.cat_file(path)
        with fs.open(path, "rb") as f:
            size = getattr(f, "size", None)  # known up front on object stores: no GET at all
            data = None if isinstance(size, int) and size > max_bytes else f.read(max_bytes + 1)
    except Exception as exc:
        raise translate_error(exc, url, "read") from exc
    if data is None or len(data) > max_bytes:
        raise StorageError(f"{redact(url)} is larger than {max_bytes} bytes, the most expected "
                           f"there; not reading it", url=url)
    return data


def exists(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = url_to_fs(url, storage_options)
    try:
        return fs.exists(path)
    except Exception as exc:
        raise translate_error(exc, url, "check") from exc


def open_read(url: str, storage_options: dict[str, Any] | None = None, *, offset: int = 0,
              block_size: int | None = None, fs=None, path: str | None = None) -> BinaryIO:
    """Open a shard for streaming reads from ``offset`` (a ranged read on object stores)."""
    if fs is None:
        fs, path = url_to_fs(url, storage_options)
    kwargs: dict[str, Any] = {}
    if block_size and _is_object_store(fs) and "memory" not in str(fs.protocol):
        kwargs = {"block_size": block_size, "cache_type": "readahead"}
    try:
        f = fs.open(path, "rb", **kwargs)
        if offset:
            f.seek(offset)
        return f
    except Exception as exc:
        raise translate_error(exc, url, "read") from exc


def check_writable(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Fail fast, before any work, when ``url`` cannot be written (credentials, bucket, path)."""
    probe = join_url(url, "_wdstream_write_probe")
    try:
        write_bytes(probe, b"ok", storage_options)
    except StorageError as exc:  # name the folder the user gave, not the probe
        cause = exc.__cause__
        raise (translate_error(cause, url, "write") if cause is not None else exc) from cause
    fs, path = url_to_fs(probe, storage_options)
    try:
        fs.rm_file(path)
    except Exception as exc:
        raise translate_error(exc, probe, "delete") from exc


def _fast_fail_options(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Storage options for a one-shot probe: on S3, one attempt and a short connect timeout
    (botocore and s3fs would otherwise retry a refused connection for ~15 s)."""
    opts = dict(storage_options or {})
    if url.startswith(("s3://", "s3a://")):
        ck = dict(opts.get("config_kwargs") or {})
        ck.setdefault("retries", {"max_attempts": 1, "mode": "standard"})
        ck.setdefault("connect_timeout", 5)
        opts["config_kwargs"] = ck
    return opts


def check_readable(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Fail fast when ``url`` (a shard or manifest) cannot be reached or does not exist:
    missing bucket or prefix, no credentials, refused connection. The error names the URL."""
    fs, path = url_to_fs(url, _fast_fail_options(url, storage_options))
    if "s3" in str(fs.protocol):
        fs.retries = 1  # this instance is only used for the probe
    try:
        fs.info(path)
    except Exception as exc:
        raise translate_error(exc, url, "read") from exc
