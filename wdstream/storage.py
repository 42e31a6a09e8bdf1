"""All I/O goes through fsspec, and through this module: URLs and filesystems, reads, small
writes, listings, fail-fast probes, and the one mapping of store errors onto wdstream's.

Every function raises StorageError (NotFoundError, CredentialsError) naming the URL, never a
bare botocore or fsspec error. A small object (:func:`write_bytes`) is written in one request
or renamed into place, so it is never seen half written; :func:`create_new` writes one only
where nothing is yet (each store's own conditional create); streaming uploads that commit or
abort (shards) live in :mod:`wdstream.uploads`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import inspect
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Sequence
from typing import Any, BinaryIO

import fsspec
import fsspec.asyn
import fsspec.core

from . import stores
from .errors import CredentialsError, NotFoundError, StorageError, redact

log = logging.getLogger(__name__)

__all__ = [
    "url_to_fs",
    "fs_and_path",
    "fs_path",
    "join_url",
    "is_absolute_url",
    "expand_urls",
    "is_local",
    "is_object_store",
    "is_s3",
    "partial_path",
    "write_bytes",
    "create_new",
    "read_bytes",
    "read_many",
    "read_range",
    "open_read",
    "download",
    "exists",
    "file_identity",
    "list_names",
    "find_urls",
    "remove_file",
    "check_writable",
    "as_write_error",
    "check_readable",
    "check_reachable",
    "translate_error",
]


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None):
    """``(filesystem, path)`` for any fsspec URL, with the user's storage options and the
    store's rules (:mod:`wdstream.stores`: request timeouts, gcsfs's switch). Raises
    StorageError when no filesystem can be made for it (unknown protocol; a missing extra,
    named), CredentialsError when its credentials are unusable."""
    stores.prepare(url, storage_options)
    options = stores.client_options(url, storage_options)
    try:
        cls = stores.filesystem_class(url, storage_options)
        if cls is not None:
            return cls(**options), fsspec.core.strip_protocol(url)
        return fsspec.core.url_to_fs(url, **options)
    except Exception as exc:
        missing = stores.missing_package_error(url, exc)
        if missing is not None:
            raise missing from exc
        credentials = stores.credentials_error(exc, url, "open")
        if credentials is not None:
            raise credentials from exc
        if isinstance(exc, (ImportError, ValueError)):
            raise StorageError(
                f"cannot open a filesystem for {redact(url)}: {exc}", url=url
            ) from exc
        raise


def fs_path(fs, url: str) -> str:
    """The path of ``url`` on ``fs``, a filesystem :func:`url_to_fs` made for a URL of the same
    protocol: what ``url_to_fs(url)`` would give as the path, without making or looking up a
    filesystem (so threads can share one). Raises StorageError for an unknown protocol."""
    try:
        return fsspec.core.strip_protocol(url)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open a filesystem for {redact(url)}: {exc}", url=url) from exc


def fs_and_path(
    url: str, storage_options: dict[str, Any] | None = None, *, fs=None, path: str | None = None
):
    """``(filesystem, path)`` of ``url``: ``fs`` and ``path`` as given (a filesystem already
    open, shared), the path worked out on ``fs`` when only ``fs`` is, else :func:`url_to_fs`."""
    if fs is None:
        return url_to_fs(url, storage_options)
    return fs, path if path is not None else fs_path(fs, url)


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


def _protocols(fs) -> tuple[str, ...]:
    return tuple(fs.protocol) if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)


def is_local(fs) -> bool:
    """Whether ``fs`` is the local file system."""
    protocols = _protocols(fs)
    return "file" in protocols or "local" in protocols


def is_object_store(fs) -> bool:
    """Whether ``fs`` is an object store (S3, GCS, Azure, or fsspec's ``memory://``): no
    folders to make, a whole object written by one PUT is atomic."""
    return any(p in ("s3", "s3a", "gs", "gcs", "az", "abfs", "memory") for p in _protocols(fs))


def is_s3(fs) -> bool:
    """Whether ``fs`` is S3 (s3fs): server-side prefix listings, multipart uploads."""
    return any(p in ("s3", "s3a") for p in _protocols(fs))


def _is_gcs(fs) -> bool:
    return any(p in ("gs", "gcs") for p in _protocols(fs))


def _is_azure(fs) -> bool:
    return any(p in ("az", "abfs", "abfss") for p in _protocols(fs))


def partial_path(path: str) -> str:
    """A temp name beside ``path`` for a file being written (``.NAME.partial-HEX``): renamed
    to ``path`` when complete; what a killed writer leaves under it is swept up later."""
    parent, base = posixpath.split(path)
    return posixpath.join(parent, f".{base}.partial-{uuid.uuid4().hex[:12]}")


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
    credentials = stores.credentials_error(exc, url, action)
    if credentials is not None:
        return credentials
    if isinstance(exc, PermissionError) and ("://" not in url or url.startswith("file://")):
        folder = _local_folder(url)
        return CredentialsError(
            f"cannot {action} {shown}: permission denied by the local file system; check that "
            f"you may {'write to' if action in _WRITES else 'read'} the folder {folder} "
            f"(ls -ld {folder}; chmod or choose another folder)",
            url=url,
        )
    if (
        isinstance(exc, PermissionError)
        or "AccessDenied" in text
        or "AuthorizationPermissionMismatch" in text
        or "Forbidden" in text
    ):
        return CredentialsError(
            f"cannot {action} {shown}: access denied; check the credentials' permissions "
            f"for this bucket/prefix",
            url=url,
        )
    if (
        isinstance(exc, FileNotFoundError)
        or "NoSuchBucket" in text
        or "NoSuchKey" in text
        or "ContainerNotFound" in text
        or "BlobNotFound" in text
        or "ResourceNotFoundError" in text
    ):
        return NotFoundError(
            f"cannot {action} {shown}: it does not exist (missing bucket or prefix?)", url=url
        )
    if (
        "Connect" in text
        or "Could not connect" in text
        or "EndpointConnectionError" in text
        or "ServiceRequestError" in text
    ):
        return StorageError(
            f"cannot {action} {shown}: connection failed ({type(exc).__name__}); check "
            f"endpoint_url and the network",
            url=url,
        )
    return StorageError(f"cannot {action} {shown}: {text}", url=url)


def write_bytes(
    url: str,
    data: bytes,
    storage_options: dict[str, Any] | None = None,
    *,
    fs=None,
    path: str | None = None,
) -> None:
    """Write a small object atomically (manifest, index, partition record).

    Locally: a same-folder temp file (:func:`partial_path`) renamed into place. On an object
    store: one PUT (``pipe_file``), which is atomic by itself and, unlike a multipart upload,
    leaves nothing pending when it is interrupted. Elsewhere: fsspec's ``autocommit=False``
    file, committed once written. Raises StorageError/CredentialsError naming the URL.
    ``fs`` and ``path``: a filesystem already open (another thread's, shared), for ``url``.
    """
    fs, path = fs_and_path(url, storage_options, fs=fs, path=path)
    if is_object_store(fs):
        try:
            fs.pipe_file(path, data)
        except Exception as exc:
            raise translate_error(exc, url, "write") from exc
        return
    if is_local(fs):
        _write_local(url, path, data)
        return
    try:
        parent = posixpath.dirname(path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        f = fs.open(path, "wb", autocommit=False)
        f.write(data)
    except Exception as exc:
        raise translate_error(exc, url, "write") from exc
    try:
        f.close()
        f.commit()
    except Exception as exc:
        with contextlib.suppress(Exception):
            f.discard()
        raise translate_error(exc, url, "commit") from exc


def _write_local(url: str, path: str, data: bytes) -> None:
    tmp = partial_path(path)
    try:
        os.makedirs(posixpath.dirname(path) or ".", exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
    except Exception as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise translate_error(exc, url, "write") from exc
    try:
        os.replace(tmp, path)
    except Exception as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise translate_error(exc, url, "commit") from exc


# --------------------------------------------------------------------- create if absent
#
# A claim (the job file of a conversion or of an append's segment) must be taken by one
# writer only: "read what is there, then write" lets two writers both see the name free and
# the second silently replace the first. Each store offers one request that creates an object
# only where none exists, and fails otherwise; :func:`create_new` uses it, one small function
# per store below:
#   S3     PutObject with ``If-None-Match: *`` (AWS since 2024-08; moto honours it: 412
#          PreconditionFailed), sent through ``call_s3`` so every s3fs release sends it;
#   GCS    an upload with ``ifGenerationMatch=0`` (gcsfs ``pipe_file(mode="create")``);
#   Azure  Put Blob with ``If-None-Match: *`` (adlfs ``pipe_file(overwrite=False)``);
#   local  a hard link from a complete temp file: ``link`` fails with EEXIST, as
#          ``O_CREAT|O_EXCL`` does, but publishes the whole file at once, where O_EXCL creates
#          the name first and a concurrent reader could find it empty. A file system without
#          hard links gets ``O_CREAT|O_EXCL`` itself.
# A request whose reply was lost and that is retried finds its own object there and answers
# "exists": the caller reads what is there and tells its own claim from another's.
# A store without any of these (another fsspec file system, an S3-compatible endpoint that
# answers NotImplemented) is written after an existence check, with a WARNING: a race between
# two writers is then not detected.

_CONFLICT_TRIES = 5  # S3 answers 409 ConditionalRequestConflict while another is in progress


def create_new(
    url: str,
    data: bytes,
    storage_options: dict[str, Any] | None = None,
    *,
    fs=None,
    path: str | None = None,
) -> bool:
    """Write the small object ``url`` (its whole bytes at once, as :func:`write_bytes`) only
    if nothing is there yet, in one atomic step of the store. Returns True when this call
    created it, False when an object was already there (left as it was, whoever wrote it).
    Raises StorageError/CredentialsError naming the URL."""
    fs, path = fs_and_path(url, storage_options, fs=fs, path=path)
    if is_local(fs):
        return _create_local(url, path, data)
    if is_s3(fs):
        return _create_s3(fs, url, path, data)
    if _is_gcs(fs):
        return _create_gcs(fs, url, path, data)
    if _is_azure(fs):
        return _create_azure(fs, url, path, data)
    if "memory" in _protocols(fs):  # one process: its "xb" open is the check and the create
        return _created(lambda: fs.pipe_file(path, data, mode="create"), url)
    return _create_unguarded(fs, url, path, data, "this file system has no conditional create")


def _created(write, url: str) -> bool:
    """Run a conditional ``write``: True once it wrote, False when the store said the object
    exists (FileExistsError)."""
    try:
        write()
    except FileExistsError:
        return False
    except Exception as exc:
        raise translate_error(exc, url, "write") from exc
    return True


def _create_local(url: str, path: str, data: bytes) -> bool:
    tmp = partial_path(path)
    try:
        os.makedirs(posixpath.dirname(path) or ".", exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:  # no hard links here (some network or FUSE file systems)
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    except Exception as exc:
        raise translate_error(exc, url, "write") from exc
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _s3_error_code(exc: BaseException) -> str:
    """The S3 error code behind an s3fs error (its cause is botocore's ClientError)."""
    for err in (exc, exc.__cause__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            return str((response.get("Error") or {}).get("Code") or "")
    return ""


def _create_s3(fs, url: str, path: str, data: bytes) -> bool:
    bucket, key, _ = fs.split_path(path)
    for attempt in range(_CONFLICT_TRIES):
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except FileExistsError:
            return False
        except Exception as exc:
            code = _s3_error_code(exc)
            if code in ("PreconditionFailed", "412"):
                return False
            if code == "ConditionalRequestConflict" and attempt < _CONFLICT_TRIES - 1:
                time.sleep(0.2 * 2**attempt)
                continue
            if code in ("NotImplemented", "501"):
                return _create_unguarded(
                    fs, url, path, data, "this S3 endpoint does not support If-None-Match"
                )
            if type(exc).__name__ == "ParamValidationError":  # botocore before 1.35.16
                return _create_unguarded(
                    fs, url, path, data, "this botocore cannot send If-None-Match (1.35.16+ can)"
                )
            raise translate_error(exc, url, "write") from exc
        finally:
            fs.invalidate_cache(path)
    raise AssertionError("unreachable")


def _create_gcs(fs, url: str, path: str, data: bytes) -> bool:
    if "mode" not in inspect.signature(fs._pipe_file).parameters:  # gcsfs before 2024.12
        return _create_unguarded(fs, url, path, data, "this gcsfs has no pipe_file(mode=)")
    return _created(lambda: fs.pipe_file(path, data, mode="create"), url)


def _create_azure(fs, url: str, path: str, data: bytes) -> bool:
    return _created(lambda: fs.pipe_file(path, data, overwrite=False), url)


def _create_unguarded(fs, url: str, path: str, data: bytes, why: str) -> bool:
    log.warning(
        "%s: %s; writing %s after checking that it does not exist, so two writers at the "
        "same moment are not told apart (run one convert --append at a time on this output)",
        type(fs).__name__,
        why,
        redact(url),
    )
    if exists(url, fs=fs, path=path):
        return False
    write_bytes(url, data, fs=fs, path=path)
    return True


def read_bytes(
    url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    max_bytes: int | None = None,
    fs=None,
    path: str | None = None,
) -> bytes:
    """The whole object at ``url``. With ``max_bytes``, at most that many bytes are read: a
    larger object (or an endless one, such as ``/dev/zero``) raises StorageError; memory
    follows what is there, never the bound (a local file is read a chunk at a time, an object
    store answers the range with the bytes it has). ``fs`` and ``path``: a filesystem
    already open for ``url``."""
    fs, path = fs_and_path(url, storage_options, fs=fs, path=path)
    try:
        if max_bytes is None:
            return fs.cat_file(path)
        if is_local(fs):
            with fs.open(path, "rb") as f:
                data = _read_up_to(f, max_bytes + 1)
        else:
            try:  # one ranged GET (no HEAD first): at most max_bytes + 1 bytes of any object
                data = fs.cat_file(path, start=0, end=max_bytes + 1)
            except Exception:
                if fs.info(path).get("size") != 0:  # S3 refuses a range of an empty object
                    raise
                data = b""
    except Exception as exc:
        raise translate_error(exc, url, "read") from exc
    if len(data) > max_bytes:
        raise StorageError(
            f"{redact(url)} is larger than {max_bytes} bytes, the most expected "
            f"there; not reading it",
            url=url,
        )
    return data


def read_range(
    url: str,
    start: int,
    end: int,
    storage_options: dict[str, Any] | None = None,
    *,
    fs=None,
    path: str | None = None,
) -> bytes:
    """Bytes ``[start, end)`` of the object at ``url`` in one ranged GET (no HEAD first);
    fewer when the object ends before ``end``. Raises StorageError/NotFoundError naming the
    URL."""
    fs, path = fs_and_path(url, storage_options, fs=fs, path=path)
    kwargs = {"max_concurrency": 1} if is_s3(fs) and _cat_file_splits(fs) else {}
    try:
        return fs.cat_file(path, start=start, end=end, **kwargs)
    except Exception as exc:
        raise translate_error(exc, url, "read") from exc


def _read_up_to(f, n: int, chunk: int = 2**20) -> bytes:
    """At most ``n`` bytes of ``f``, read a chunk at a time (``f.read(n)`` would allocate
    ``n`` bytes first, whatever the file holds)."""
    parts, got = [], 0
    while got < n:
        data = f.read(min(chunk, n - got))
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _cat_file_splits(fs) -> bool:
    """Whether this s3fs's ``_cat_file`` takes ``max_concurrency`` (and splits a GET after a
    HEAD unless it is 1)."""
    try:
        return "max_concurrency" in inspect.signature(fs._cat_file).parameters
    except (TypeError, ValueError):
        return False


def read_many(
    urls: Sequence[str],
    storage_options: dict[str, Any] | None = None,
    *,
    fs=None,
    concurrency: int = 32,
) -> list[bytes | StorageError]:
    """The bytes of each of ``urls``, in order, read concurrently with one GET each.

    On an async filesystem (s3fs) at most ``concurrency`` requests at a time on its event
    loop (fsspec's batched ``cat`` would first check that every path exists, and s3fs's
    ``cat_file`` asks for the size: a HEAD each); otherwise on up to ``concurrency`` threads.
    An object that cannot be read gives, in its place, the StorageError that says why
    (NotFoundError when it does not exist); nothing is raised for it. ``fs``: a filesystem
    already open for these URLs (they share its protocol).
    """
    if not urls:
        return []
    fs = fs if fs is not None else url_to_fs(urls[0], storage_options)[0]
    paths = [fs_path(fs, u) for u in urls]
    concurrency = max(1, int(concurrency))
    if getattr(fs, "async_impl", False):
        # s3fs 2026.3 and later ask for the size first (a HEAD) unless told not to split
        # the GET; earlier releases make one GET and know no such argument
        kwargs = {"max_concurrency": 1} if is_s3(fs) and _cat_file_splits(fs) else {}

        async def gather() -> list[Any]:
            gate = asyncio.Semaphore(concurrency)

            async def one(path: str) -> bytes:
                async with gate:
                    return await fs._cat_file(path, **kwargs)

            return await asyncio.gather(*(one(p) for p in paths), return_exceptions=True)

        got = fsspec.asyn.sync(fs.loop, gather)
    else:

        def one(path: str) -> Any:
            try:
                return fs.cat_file(path)
            except Exception as exc:  # noqa: BLE001 - returned in the object's place
                return exc

        if len(paths) <= 1:
            got = [one(p) for p in paths]
        else:
            with concurrent.futures.ThreadPoolExecutor(min(concurrency, len(paths))) as pool:
                got = list(pool.map(one, paths))
    return [
        _caused(translate_error(value, url, "read"), value)
        if isinstance(value, BaseException)
        else value
        for url, value in zip(urls, got, strict=True)
    ]


def _caused(error: StorageError, cause: BaseException) -> StorageError:
    """``error`` with the store's own exception as its cause, as ``raise ... from`` sets it
    (for an error returned in an object's place, not raised)."""
    error.__cause__ = cause
    return error


def exists(
    url: str, storage_options: dict[str, Any] | None = None, *, fs=None, path: str | None = None
) -> bool:
    """Whether an object or folder is at ``url``. Raises StorageError when the store cannot
    be asked (credentials, connection)."""
    fs, path = fs_and_path(url, storage_options, fs=fs, path=path)
    try:
        return fs.exists(path)
    except Exception as exc:
        raise translate_error(exc, url, "check") from exc


def file_identity(url: str, storage_options: dict[str, Any] | None = None) -> tuple[int, str]:
    """``(size, ukey)`` of the object at ``url``, from a fresh look at the store (not a cached
    listing); ``ukey`` is fsspec's store-neutral ETag, which changes when the object does.
    Raises StorageError/NotFoundError naming the URL."""
    fs, path = url_to_fs(url, storage_options)
    try:
        fs.invalidate_cache(path)
        return int(fs.size(path)), str(fs.ukey(path))
    except Exception as exc:
        raise translate_error(exc, url, "read") from exc


def open_read(
    url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    offset: int = 0,
    block_size: int | None = None,
    fs=None,
    path: str | None = None,
) -> BinaryIO:
    """Open a shard for streaming reads from ``offset`` (a ranged read on object stores)."""
    fs, path = fs_and_path(url, storage_options, fs=fs, path=path)
    kwargs: dict[str, Any] = {}
    if block_size and is_object_store(fs) and "memory" not in str(fs.protocol):
        kwargs = {"block_size": block_size, "cache_type": "readahead"}
    try:
        f = fs.open(path, "rb", **kwargs)
        if offset:
            f.seek(offset)
        return f
    except Exception as exc:
        raise translate_error(exc, url, "read") from exc


def download(
    url: str,
    local_path: str,
    storage_options: dict[str, Any] | None = None,
    *,
    fs=None,
    path: str | None = None,
) -> None:
    """Copy the object at ``url`` whole to the local file ``local_path``. It goes to a temp
    name beside ``local_path`` first (:func:`partial_path`) and is renamed into place, so
    ``local_path`` never holds part of the object, and a failed copy leaves nothing. Raises
    StorageError/NotFoundError/CredentialsError naming the URL."""
    fs, path = fs_and_path(url, storage_options, fs=fs, path=path)
    tmp = partial_path(local_path)
    try:
        fs.get_file(path, tmp)
        os.replace(tmp, local_path)
    except Exception as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise translate_error(exc, url, "download") from exc


def list_names(
    url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    fs=None,
    path: str | None = None,
    prefix: str | None = None,
) -> list[str]:
    """The names directly in the folder ``url`` (files and folders), fresh from the store: no
    cached listing is used, and none is kept (s3fs keeps a dict per listed object). With
    ``prefix``: only the files whose names start with it, listed by prefix on the server
    where the store can (S3: one listing of that prefix, not of the whole folder). A folder
    that does not exist lists as empty. Raises StorageError naming the URL."""
    fs, path = fs_and_path(url, storage_options, fs=fs, path=path)
    try:
        fs.invalidate_cache(path)
        if prefix is None:
            found = fs.ls(path, detail=False)
        else:
            found = fs.find(path, maxdepth=1, prefix=prefix)
    except FileNotFoundError:
        return []
    except Exception as exc:
        raise translate_error(exc, url, "list") from exc
    finally:
        fs.invalidate_cache(path)
    names = [posixpath.basename(p.rstrip("/")) for p in found]
    return [n for n in names if prefix is None or n.startswith(prefix)]


def find_urls(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The URLs of every file below the folder or prefix ``url``, at any depth, sorted.
    Raises StorageError naming the URL (a missing folder finds nothing)."""
    fs, path = url_to_fs(url, storage_options)
    try:
        found = fs.find(path)
    except Exception as exc:
        raise translate_error(exc, url, "list") from exc
    base = url.rstrip("/")
    root = path.rstrip("/")
    return [base + p[len(root) :] for p in sorted(found) if p.startswith(root + "/")]


def remove_file(
    url: str, storage_options: dict[str, Any] | None = None, *, fs=None, path: str | None = None
) -> None:
    """Delete the object or file at ``url``. Raises NotFoundError when there is none,
    StorageError/CredentialsError otherwise, naming the URL."""
    fs, path = fs_and_path(url, storage_options, fs=fs, path=path)
    try:
        fs.rm_file(path)
    except Exception as exc:
        raise translate_error(exc, url, "delete") from exc


def check_reachable(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Fail within seconds when the store behind ``url`` cannot be reached (refused
    connection, unknown host), with one StorageError naming the URL and the endpoint
    (:func:`wdstream.stores.check_reachable`); then, on GCS, make sure the credentials give
    a token (one try: gcsfs would retry a rejected key for half a minute). Raises
    StorageError/CredentialsError."""
    stores.check_reachable(url, storage_options)
    if stores.store_of(url) is stores.GCS:
        fs, _ = url_to_fs(url, storage_options)
        credentials = getattr(fs, "credentials", None)
        try:
            if credentials is not None:
                credentials.maybe_refresh()
        except Exception as exc:
            raise translate_error(exc, url, "open") from exc


def check_writable(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Fail fast, before any work, when ``url`` cannot be written (credentials, bucket, path,
    an endpoint that cannot be reached)."""
    check_reachable(url, storage_options)
    probe = join_url(url, "_wdstream_write_probe")
    try:
        write_bytes(probe, b"ok", storage_options)
    except StorageError as exc:  # name the folder the user gave, not the probe
        raise as_write_error(exc, url) from exc.__cause__
    # another job starting on the same output at once (two appends) may remove it first
    with contextlib.suppress(NotFoundError):
        remove_file(probe, storage_options)


def as_write_error(exc: StorageError, url: str) -> StorageError:
    """``exc``, raised for an object under the folder ``url``, said of the folder itself as a
    write (``cannot write URL: ...``), as :func:`check_writable` says it: the error a user
    reads when an output cannot be written, whichever of its objects was asked for first."""
    cause = exc.__cause__
    return translate_error(cause, url, "write") if cause is not None else exc


def check_readable(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Fail fast when ``url`` (a shard or manifest) cannot be reached or does not exist:
    missing bucket or prefix, no credentials, refused connection, unknown host. The error
    names the URL (and the endpoint, when it cannot be reached)."""
    check_reachable(url, storage_options)
    fs, path = url_to_fs(url, stores.fast_fail_options(url, storage_options))
    if stores.store_of(url) is stores.S3:
        fs.retries = 1  # this instance is only used for the probe
    try:
        fs.info(path)
    except Exception as exc:
        raise translate_error(exc, url, "read") from exc
