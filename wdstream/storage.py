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
from concurrent.futures import ThreadPoolExecutor
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


#: Defaults of Config.upload_concurrency / Config.upload_buffer_bytes.
UPLOAD_CONCURRENCY = 4
UPLOAD_BUFFER_BYTES = 64 * 2**20
_MIN_PART = 5 * 2**20  # S3's smallest part (but the last)
_MAX_PART = 8 * 2**20  # parts upload while the shard is still being written


class UploadBudget:
    """A process's upload threads and the bytes they may hold: at most ``concurrency`` parts
    upload at once, and the parts handed over but not yet uploaded total at most
    ``buffer_bytes`` (one part is always let through, so a part larger than the buffer cannot
    block forever). Shared by every open upload of the process, so several shards of one
    worker upload at once under one bound."""

    _shared: dict[tuple[int, int], UploadBudget] = {}
    _lock = threading.Lock()

    def __init__(self, concurrency: int, buffer_bytes: int):
        self.concurrency = max(1, int(concurrency))
        self.buffer_bytes = max(1, int(buffer_bytes))
        self.part_size = max(_MIN_PART, min(_MAX_PART, self.buffer_bytes // self.concurrency))
        self.pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="wdstream-upload")
        self._cond = threading.Condition()
        self.used = 0

    @classmethod
    def get(cls, concurrency: int | None = None, buffer_bytes: int | None = None) -> UploadBudget:
        key = (int(concurrency or UPLOAD_CONCURRENCY), int(buffer_bytes or UPLOAD_BUFFER_BYTES))
        with cls._lock:
            budget = cls._shared.get(key)
            if budget is None:
                budget = cls._shared[key] = cls(*key)
            return budget

    def acquire(self, n: int) -> None:
        with self._cond:
            while self.used and self.used + n > self.buffer_bytes:
                self._cond.wait()
            self.used += n

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


class _MultipartWriter:
    """An S3 object written as a multipart upload whose parts upload concurrently on the
    process's :class:`UploadBudget` (bounded by bytes). Nothing is staged on disk. An object
    smaller than one part is sent by one PUT on :meth:`commit` (atomic, nothing pending on
    a kill); a larger one becomes visible only at ``complete_multipart_upload``, and
    :meth:`abort` aborts it."""

    def __init__(self, fs, path: str, budget: UploadBudget):
        self.fs = fs
        self.bucket, self.key, _ = fs.split_path(path)
        self.budget = budget
        self.pending = bytearray()
        self.upload_id: str | None = None
        self.futures: list = []
        self.error: BaseException | None = None
        self.stopped = False

    def write(self, data) -> None:
        if self.error is not None:
            raise self.error
        self.pending += data
        size = self.budget.part_size
        while len(self.pending) >= size:
            self._submit(bytes(self.pending[:size]))
            del self.pending[:size]

    def flush(self) -> None:
        """Send what is pending as a part when it may be one (S3: at least 5 MiB)."""
        if len(self.pending) >= _MIN_PART:
            self._submit(bytes(self.pending))
            self.pending.clear()

    def _submit(self, part: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = self.fs.call_s3("create_multipart_upload", Bucket=self.bucket,
                                             Key=self.key)["UploadId"]
        number = len(self.futures) + 1
        self.budget.acquire(len(part))
        try:
            self.futures.append(self.budget.pool.submit(self._upload, number, part))
        except BaseException:
            self.budget.release(len(part))
            raise

    def _upload(self, number: int, part: bytes) -> dict:
        try:
            if self.stopped:
                raise StorageError("upload aborted")
            out = self.fs.call_s3("upload_part", Bucket=self.bucket, Key=self.key,
                                  UploadId=self.upload_id, PartNumber=number, Body=part)
            return {"PartNumber": number, "ETag": out["ETag"]}
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            raise
        finally:
            self.budget.release(len(part))

    def commit(self) -> None:
        if self.upload_id is None:
            self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key,
                            Body=bytes(self.pending))
            self.pending.clear()
            return
        if self.pending:
            self._submit(bytes(self.pending))
            self.pending.clear()
        parts = [f.result() for f in self.futures]
        self.fs.call_s3("complete_multipart_upload", Bucket=self.bucket, Key=self.key,
                        UploadId=self.upload_id, MultipartUpload={"Parts": parts})

    def abort(self) -> None:
        self.stopped = True
        self.pending.clear()
        for f in self.futures:
            f.cancel()
        for f in self.futures:
            with contextlib.suppress(BaseException):
                f.result()
        if self.upload_id is not None:
            with contextlib.suppress(Exception):
                self.fs.call_s3("abort_multipart_upload", Bucket=self.bucket, Key=self.key,
                                UploadId=self.upload_id)


class AtomicFile:
    """A file that becomes visible at its URL only on :meth:`commit`.

    Opened with ``autocommit=False``: a local temp file renamed on commit, an S3 multipart
    upload completed on commit and aborted on :meth:`discard`. Counts bytes and computes the
    sha256 of what was written, so nothing is read back. With ``background`` on S3 (s3fs),
    parts upload concurrently, bounded by ``upload_concurrency`` parts and
    ``upload_buffer_bytes`` bytes per process (see :class:`UploadBudget`).
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None,
                 *, fs=None, path: str | None = None, background: bool = True,
                 upload_concurrency: int | None = None, upload_buffer_bytes: int | None = None):
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
            elif background and hasattr(fs, "call_s3"):  # s3fs: concurrent parts
                self._f = _MultipartWriter(fs, path, UploadBudget.get(upload_concurrency,
                                                                      upload_buffer_bytes))
            else:
                if parent and not _is_object_store(fs):
                    fs.makedirs(parent, exist_ok=True)
                self._f = fs.open(path, "wb", autocommit=False)
        except Exception as exc:
            raise translate_error(exc, url, "write") from exc
        # other object stores upload parts inside write(): do that on a thread, off the path
        self._bg = _BackgroundWriter(self._f) if background and self._local_tmp is None \
            and not isinstance(self._f, _MultipartWriter) and _is_object_store(fs) \
            and "memory" not in str(fs.protocol) else None
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
            if isinstance(self._f, _MultipartWriter):
                self._f.commit()
                self.done = True
                return
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
        if isinstance(self._f, _MultipartWriter):
            self._f.abort()
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


def write_bytes(url: str, data: bytes, storage_options: dict[str, Any] | None = None, *,
                fs=None, path: str | None = None) -> None:
    """Write a small object atomically (manifest, index, partition record).

    Locally: a same-folder temp file renamed into place. On an object store: one PUT
    (``pipe_file``), which is atomic by itself and, unlike a multipart upload, leaves nothing
    pending when it is interrupted. Raises StorageError/CredentialsError naming the URL.
    ``fs`` and ``path``: a filesystem already open (another thread's, shared), for ``url``.
    """
    if fs is None:
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
        try:  # one ranged GET (no HEAD first): at most max_bytes + 1 bytes of any object
            data = fs.cat_file(path, start=0, end=max_bytes + 1)
        except Exception:
            if fs.info(path).get("size") != 0:  # S3 refuses a range of an empty object
                raise
            data = b""
    except Exception as exc:
        raise translate_error(exc, url, "read") from exc
    if len(data) > max_bytes:
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


def is_object_store(fs) -> bool:
    """Whether ``fs`` is an object store (S3, GCS, Azure, memory)."""
    return _is_object_store(fs)


def fs_path(fs, url: str) -> str:
    """The path of ``url`` within ``fs`` (the URL without its protocol)."""
    return fs._strip_protocol(url)


def download(url: str, local_path: str, storage_options: dict[str, Any] | None = None) -> None:
    """Copy the object at ``url`` to ``local_path``. Raises StorageError naming the URL."""
    fs, path = url_to_fs(url, storage_options)
    try:
        fs.get_file(path, local_path)
    except Exception as exc:
        raise translate_error(exc, url, "cache") from exc
