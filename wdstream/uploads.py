"""Streaming uploads that commit or abort: shards written as they are made, published only
when complete.

:class:`AtomicFile` opens the target so that nothing is visible before :meth:`~AtomicFile.commit`:
a local temp file in the same folder renamed on commit; on S3 a multipart upload whose parts
upload concurrently (bounded per process by :class:`UploadBudget`), completed on commit and
aborted on :meth:`~AtomicFile.discard`; on other stores fsspec's ``autocommit=False`` file.
It never relies on ``__exit__``, which fsspec's buffered files treat as a commit even while an
exception is in flight. :func:`list_pending_uploads` and :func:`abort_upload` clean the
multipart uploads that killed writers left pending.

Small objects (manifests, indexes, records) do not come here: :func:`wdstream.storage.write_bytes`
sends them in one request.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .errors import StorageError
from .storage import fs_and_path, is_local, is_object_store, partial_path, translate_error

__all__ = [
    "UPLOAD_CONCURRENCY",
    "UPLOAD_BUFFER_BYTES",
    "UploadBudget",
    "AtomicFile",
    "atomic_write",
    "BackgroundWriter",
    "list_pending_uploads",
    "abort_upload",
]

log = logging.getLogger(__name__)

#: Defaults of Config.upload_concurrency / Config.upload_buffer_bytes.
UPLOAD_CONCURRENCY = 4
UPLOAD_BUFFER_BYTES = 64 * 2**20
_MIN_PART = 5 * 2**20  # S3's smallest part (but the last)
# parts upload while the shard is still being written; a shard below one part is one PUT.
# 16 MiB (the default buffer over the default concurrency): a 64 MiB shard takes 6 requests
# (create, 4 parts, complete), a 12 MiB one a single PUT, where 8 MiB parts took 10 and 4
_MAX_PART = 16 * 2**20


class BackgroundWriter:
    """Writes chunks to a file on a thread, so the producer keeps encoding while a part
    uploads (object stores other than s3fs upload a part inside ``write``). At most ``depth``
    chunks wait; memory is bounded by ``(depth + 2) * chunk`` bytes. An error of the file's
    ``write`` is raised in the producer, by the next :meth:`write` or by :meth:`finish`."""

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
        """Drop what waits, stop the thread; nothing more is written to the file."""
        self.stopped.set()
        self.pending.clear()
        while True:  # make room for the sentinel without blocking
            try:
                self.q.get_nowait()
            except queue.Empty:
                break
        self.q.put(None)
        self.thread.join()


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
        """The process's budget for these bounds (made on first use, then shared)."""
        key = (int(concurrency or UPLOAD_CONCURRENCY), int(buffer_bytes or UPLOAD_BUFFER_BYTES))
        with cls._lock:
            budget = cls._shared.get(key)
            if budget is None:
                budget = cls._shared[key] = cls(*key)
            return budget

    def acquire(self, n: int) -> None:
        """Wait until ``n`` more bytes fit the buffer, then hold them."""
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
        self.pending: list[bytes] = []  # written, not yet a part: joined once, into the part
        self.pending_bytes = 0
        self.upload_id: str | None = None
        self.futures: list = []
        self.error: BaseException | None = None
        self.stopped = False

    def write(self, data) -> None:
        """Keep ``data``; once a part's worth is kept, send it all as one part (a part ends
        where a write ends: at least the budget's part size, at most that plus one write)."""
        if self.error is not None:
            raise self.error
        self.pending.append(bytes(data))
        self.pending_bytes += len(data)
        if self.pending_bytes >= self.budget.part_size:
            self._submit(self._take())

    def _take(self) -> bytes:
        data = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
        self.pending, self.pending_bytes = [], 0
        return data

    def flush(self) -> None:
        """Send what is pending as a part when it may be one (S3: at least 5 MiB)."""
        if self.pending_bytes >= _MIN_PART:
            self._submit(self._take())

    def _submit(self, part: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = self.fs.call_s3(
                "create_multipart_upload", Bucket=self.bucket, Key=self.key
            )["UploadId"]
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
            out = self.fs.call_s3(
                "upload_part",
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=part,
            )
            return {"PartNumber": number, "ETag": out["ETag"]}
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            raise
        finally:
            self.budget.release(len(part))

    def commit(self) -> None:
        if self.upload_id is None:
            self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=self._take())
            return
        if self.pending:
            self._submit(self._take())
        parts = [f.result() for f in self.futures]
        self.fs.call_s3(
            "complete_multipart_upload",
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
        )

    def abort(self) -> None:
        self.stopped = True
        self.pending, self.pending_bytes = [], 0
        for f in self.futures:
            f.cancel()
        for f in self.futures:
            with contextlib.suppress(BaseException):
                f.result()
        if self.upload_id is not None:
            with contextlib.suppress(Exception):
                self.fs.call_s3(
                    "abort_multipart_upload",
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                )


class AtomicFile:
    """A file that becomes visible at its URL only on :meth:`commit`.

    A local temp file renamed on commit, an S3 multipart upload completed on commit and
    aborted on :meth:`discard`, or fsspec's ``autocommit=False`` file elsewhere. Counts bytes
    and computes the sha256 of what was written, so nothing is read back. With ``background``
    on S3 (s3fs), parts upload concurrently, bounded by ``upload_concurrency`` parts and
    ``upload_buffer_bytes`` bytes per process (see :class:`UploadBudget`). Raises
    StorageError/CredentialsError naming the URL when the file cannot be opened, written or
    committed.
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        fs=None,
        path: str | None = None,
        background: bool = True,
        upload_concurrency: int | None = None,
        upload_buffer_bytes: int | None = None,
    ):
        fs, path = fs_and_path(url, storage_options, fs=fs, path=path)
        self.url = url
        parent = posixpath.dirname(path)
        self._local_tmp: str | None = None
        self._path = path
        try:
            if is_local(fs):
                # fsspec's local autocommit=False writes to /tmp and *moves* (copies across
                # devices) on commit; we want a same-folder temp name and an atomic rename.
                os.makedirs(parent or ".", exist_ok=True)
                self._local_tmp = partial_path(path)
                self._f = open(self._local_tmp, "wb")  # noqa: SIM115 - closed on commit
            elif background and hasattr(fs, "call_s3"):  # s3fs: concurrent parts
                self._f = _MultipartWriter(
                    fs, path, UploadBudget.get(upload_concurrency, upload_buffer_bytes)
                )
            else:
                if parent and not is_object_store(fs):
                    fs.makedirs(parent, exist_ok=True)
                self._f = fs.open(path, "wb", autocommit=False)
        except Exception as exc:
            raise translate_error(exc, url, "write") from exc
        # other object stores upload parts inside write(): do that on a thread, off the path
        self._bg = (
            BackgroundWriter(self._f)
            if background
            and self._local_tmp is None
            and not isinstance(self._f, _MultipartWriter)
            and is_object_store(fs)
            and "memory" not in str(fs.protocol)
            else None
        )
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
        """The sha256 of everything written."""
        return self._sha.hexdigest()

    def flush(self) -> None:
        """Push what was written so far to the store (an object store starts its upload)."""
        if self._bg is not None:
            self._bg.drain()
        self._f.flush()

    def commit(self) -> None:
        """Finish the upload and publish the object; on failure discard it and raise."""
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
def atomic_write(
    url: str, storage_options: dict[str, Any] | None = None, *, fs=None, path: str | None = None
) -> Iterator[AtomicFile]:
    """Context manager around :class:`AtomicFile`: commit on success, discard on any error."""
    f = AtomicFile(url, storage_options, fs=fs, path=path, background=False)
    try:
        yield f
    except BaseException:
        f.discard()
        raise
    f.commit()


def list_pending_uploads(
    url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    fs=None,
    marker: dict[str, str] | None = None,
) -> tuple[list[tuple[str, str]], dict[str, str] | None]:
    """One page (at most 1,000) of the multipart uploads pending under the S3 folder ``url``:
    ``([(name below url, upload id), ...], marker of the next page or None)``. Pass the
    marker back for the next page. Raises CredentialsError when listing uploads is not
    allowed, StorageError otherwise, naming the URL."""
    fs, path = fs_and_path(url, storage_options, fs=fs)
    bucket, key, _ = fs.split_path(path)
    prefix = (key.rstrip("/") + "/") if key else ""
    try:
        resp = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **(marker or {}))
    except Exception as exc:
        raise translate_error(exc, url, "list pending uploads under") from exc
    found = [(up["Key"][len(prefix) :], up["UploadId"]) for up in resp.get("Uploads", [])]
    if not resp.get("IsTruncated"):
        return found, None
    return found, {
        "KeyMarker": resp.get("NextKeyMarker", ""),
        "UploadIdMarker": resp.get("NextUploadIdMarker", ""),
    }


def abort_upload(
    url: str, upload_id: str, storage_options: dict[str, Any] | None = None, *, fs=None
) -> None:
    """Abort the pending multipart upload ``upload_id`` of the S3 object ``url``. Raises
    NotFoundError when it is gone already (aborted or completed), StorageError/
    CredentialsError otherwise, naming the URL."""
    fs, path = fs_and_path(url, storage_options, fs=fs)
    bucket, key, _ = fs.split_path(path)
    try:
        fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
    except Exception as exc:
        raise translate_error(exc, url, "abort the upload of") from exc
