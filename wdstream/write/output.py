"""The output folder of a conversion: partition records, the job file, and cleaning what
unfinished attempts left (stale shards, temp files, pending multipart uploads).

Records. A partition writes ``_partitions/part-NNNNN.json`` once its shards are committed: its
presence means "done". The driver also folds the records it receives into a few larger
objects, ``_partitions/records-JOB-SSSSS.json`` (:class:`RecordLog`, about a hundred for a
whole job), so a resume reads those and only the part files that no batch covers (at most one
batch's worth plus those in flight when the job stopped), all of them concurrently, one GET
each.

Cleaning. Nothing lists the whole output on an object store: before and after a run the driver
aborts the pending multipart uploads under the output prefix (a listing of *uploads*, not of
objects), and a resumed partition lists its own prefix (``shard-PPPPP-``) when it is done and
removes what it did not write again (:func:`remove_leftovers`). On a local folder, where a
listing is cheap, the driver removes pending partitions' files and temp files in one pass.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import json
import logging
import posixpath
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .. import storage
from ..errors import ConfigError, StorageError, redact
from ..format.manifest import MANIFEST_NAME, PARTITIONS_DIR, PartitionRecord
from .plan import JobPlan

__all__ = ["Output", "RecordLog", "CleanupError", "JOB_NAME", "check_job", "remove_leftovers",
           "records_per_batch"]

log = logging.getLogger(__name__)

JOB_NAME = "_job.json"  # in OUTPUT/_partitions: the options the partitions were made with
_RECORD_RE = re.compile(r"^part-(\d{5,})\.json$")
_BATCH_RE = re.compile(r"^records-[0-9a-f]+-\d{5,}\.json$")
_PARTIAL_RE = re.compile(r"^\..+\.partial-[0-9a-f]+$")
BATCH_FORMAT = "wdstream-records"
CLEANUP_ATTEMPTS = 4  # tries of each cleanup request, beyond the client's own retries
_T = TypeVar("_T")


class CleanupError(StorageError):
    """What dead attempts left could not be cleaned (after retries). Every shard is committed
    and recorded; re-running the same command cleans and writes the manifest."""


def records_per_batch(n_partitions: int) -> int:
    """How many records one ``records-*.json`` batch holds: about a hundred batches for a job,
    10 to 1,000 records each. A resume reads at most ~``n/1000`` listing pages, ~100 batches
    and one batch's worth of part files (plus those in flight when the job stopped)."""
    return min(1000, max(10, -(-n_partitions // 100)))


def _cat_file_splits(fs) -> bool:
    """Whether this s3fs's ``_cat_file`` takes ``max_concurrency`` (and splits a GET after a
    HEAD unless it is 1)."""
    try:
        return "max_concurrency" in inspect.signature(fs._cat_file).parameters
    except (TypeError, ValueError):
        return False


def _is_s3(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in ("s3", "s3a") for p in protocols)


def lists_by_prefix(fs) -> bool:
    """Whether a partition lists its own prefix to clean (object stores with server-side
    prefix listings); otherwise the driver lists the local folder once."""
    return _is_s3(fs)


def _retry(what: str, fn: Callable[[], _T], attempts: int = CLEANUP_ATTEMPTS) -> _T:
    """``fn()``, tried ``attempts`` times with a short back-off (cleanup requests are
    idempotent). The last error is raised."""
    for attempt in range(attempts):
        try:
            return fn()
        except (FileNotFoundError, PermissionError):
            raise
        except Exception as exc:
            if attempt == attempts - 1:
                raise
            log.warning("%s failed (%s: %s); retrying", what, type(exc).__name__,
                        str(exc).splitlines()[0] if str(exc) else "")
            time.sleep(min(0.5 * 2 ** attempt, 4.0))
    raise AssertionError("unreachable")


def remove_leftovers(fs, base_path: str, partition: int, keep: Iterable[str],
                     url: str = "") -> list[str]:
    """After partition ``partition`` committed the files named ``keep``: list its own prefix
    (``shard-PPPPP-``, one listing) and remove the files of that partition that an earlier,
    dead attempt committed and this one did not write again. Returns the removed names."""
    keep = set(keep)
    prefix = f"shard-{partition:05d}-"
    try:
        fs.invalidate_cache(base_path)
        found = fs.find(base_path, maxdepth=1, prefix=prefix)
    except FileNotFoundError:
        return []
    except Exception as exc:
        raise storage.translate_error(exc, url or base_path, "list") from exc
    stale = [p for p in found if posixpath.basename(p) not in keep
             and posixpath.basename(p).startswith(prefix)]
    for path in stale:
        log.info("removing %s left by an unfinished run", posixpath.basename(path))
        try:
            _retry(f"removing {posixpath.basename(path)}", lambda p=path: fs.rm_file(p))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise storage.translate_error(exc, url or base_path, "clean") from exc
    return [posixpath.basename(p) for p in stale]


class Output:
    """The output folder: records, job file, stale-shard cleanup."""

    def __init__(self, url: str, storage_options: dict[str, Any], *, concurrency: int = 32):
        self.url = url.rstrip("/")
        self.storage_options = storage_options
        self.concurrency = concurrency
        self.fs, self.path = storage.url_to_fs(self.url, storage_options)

    def _ls(self, path: str) -> list[str]:
        try:
            self.fs.invalidate_cache(path)
            return [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise storage.translate_error(exc, self.url, "list") from exc
        finally:  # s3fs keeps a dict per listed object: 100 MB for 100k records
            self.fs.invalidate_cache(path)

    def read(self, name: str) -> bytes | None:
        """The object ``name`` (relative to OUTPUT), or None when there is none."""
        return self._read_many([name]).get(name)

    def _read_many(self, names: list[str]) -> dict[str, bytes]:
        """``{name: bytes}`` of the objects ``names`` (relative to OUTPUT), read concurrently,
        one GET each: on an async filesystem (s3fs) at most ``concurrency`` requests at a time
        on its event loop (fsspec's batched ``cat`` would first check that every path exists,
        and s3fs's ``cat_file`` asks for its size: a HEAD each), otherwise a pool of threads.
        A missing object is left out."""
        out: dict[str, bytes] = {}
        for start in range(0, len(names), 4096):  # bounded memory for the paths and futures
            chunk = names[start:start + 4096]
            paths = [f"{self.path}/{name}" for name in chunk]
            for name, value in zip(chunk, self._cat_files(paths), strict=True):
                if isinstance(value, FileNotFoundError):
                    continue
                if isinstance(value, BaseException):
                    raise storage.translate_error(value, storage.join_url(self.url, name),
                                                  "read") from value
                out[name] = value
        return out

    def _cat_files(self, paths: list[str]) -> list[Any]:
        """The bytes of each path, or the exception reading it raised, in order."""
        fs = self.fs
        if getattr(fs, "async_impl", False):
            from fsspec.asyn import _run_coros_in_chunks, sync

            # s3fs 2026.3 and later ask for the size first (a HEAD) unless told not to split
            # the GET; earlier releases make one GET and know no such argument
            kwargs = {"max_concurrency": 1} if _is_s3(fs) and _cat_file_splits(fs) else {}

            async def gather() -> list[Any]:
                return await _run_coros_in_chunks([fs._cat_file(p, **kwargs) for p in paths],
                                                  batch_size=self.concurrency, nofiles=True,
                                                  return_exceptions=True)

            return sync(fs.loop, gather)

        def one(path: str) -> Any:
            try:
                return fs.cat_file(path)
            except Exception as exc:  # noqa: BLE001 - returned, raised by the caller
                return exc

        if len(paths) <= 1:
            return [one(p) for p in paths]
        with concurrent.futures.ThreadPoolExecutor(min(self.concurrency, len(paths))) as pool:
            return list(pool.map(one, paths))

    def records(self) -> dict[int, PartitionRecord]:
        """Every finished partition's record: the ``records-*`` batches, then the part files
        that no batch covers; each group read concurrently."""
        names = self._ls(f"{self.path}/{PARTITIONS_DIR}")
        parts = {int(m.group(1)): name for name in names if (m := _RECORD_RE.match(name))}
        batches = [name for name in names if _BATCH_RE.match(name)]
        out: dict[int, PartitionRecord] = {}
        for name, data in self._read_many([f"{PARTITIONS_DIR}/{n}" for n in batches]).items():
            try:
                doc = json.loads(data)
                recs = [PartitionRecord.from_dict(r) for r in doc["records"]]
            except (ValueError, KeyError, TypeError) as exc:  # a bad batch: use the parts
                log.warning("ignoring %s (%s); reading its partitions' own records", name, exc)
                continue
            for rec in recs:
                if rec.partition in parts:  # a batch names only recorded partitions
                    out[rec.partition] = rec
        missing = [f"{PARTITIONS_DIR}/{parts[p]}" for p in sorted(parts) if p not in out]
        for data in self._read_many(missing).values():
            rec = PartitionRecord.from_json(data)
            out[rec.partition] = rec
        log.debug("read %d records from %d batches and %d part files", len(out), len(batches),
                  len(missing))
        return out

    def clean(self, pending: Iterable[int]) -> None:
        """Before a run (nothing may be running): make room for the pending partitions.

        On an object store: abort every pending multipart upload under OUTPUT (a resumed
        partition removes its own stale shards, :func:`remove_leftovers`). On a local folder:
        remove the pending partitions' committed shards and indexes and every temp file, in
        one listing. Raises CleanupError when it cannot."""
        if lists_by_prefix(self.fs):
            self._abort_uploads()
            return
        prefixes = tuple(f"shard-{p:05d}-" for p in pending)
        names = self._ls(self.path)
        stale = [f"{self.path}/{n}" for n in names if prefixes and n.startswith(prefixes)]
        stale += [f"{self.path}/{n}" for n in names if _PARTIAL_RE.match(n)]
        self._remove(stale)
        self._sweep_records_dir()

    def sweep(self) -> None:
        """Remove what dead attempts left that never became visible: local ``.partial-*``
        temp files and (S3) pending multipart uploads under OUTPUT. Only while no partition
        of this output is running (before a run, or once all its partitions are done).
        Raises CleanupError when it cannot, after retries."""
        if lists_by_prefix(self.fs):
            self._abort_uploads()
            return
        self._remove([f"{self.path}/{n}" for n in self._ls(self.path) if _PARTIAL_RE.match(n)])
        self._sweep_records_dir()

    def _sweep_records_dir(self) -> None:
        self._remove([f"{self.path}/{PARTITIONS_DIR}/{n}"
                      for n in self._ls(f"{self.path}/{PARTITIONS_DIR}") if _PARTIAL_RE.match(n)])

    def _remove(self, stale: list[str]) -> None:
        for path in stale:
            log.info("removing %s left by an unfinished run", posixpath.basename(path))
            try:
                _retry(f"removing {posixpath.basename(path)}", lambda p=path: self.fs.rm_file(p))
            except FileNotFoundError:
                pass
            except Exception as exc:
                raise self._cleanup_error(exc, f"remove {posixpath.basename(path)}") from exc

    def _cleanup_error(self, exc: BaseException, what: str) -> CleanupError:
        return CleanupError(
            f"could not {what} under {redact(self.url)} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}) after {CLEANUP_ATTEMPTS} tries. "
            f"Every finished partition is recorded: re-run the same command to clean up and "
            f"write the manifest", url=self.url)

    def _abort_uploads(self) -> int:
        """Abort every pending multipart upload under OUTPUT, page by page (at most 1,000 a
        page: KeyMarker/UploadIdMarker). An upload already gone counts as aborted. Returns
        how many were aborted."""
        bucket, _, key_prefix = self.path.partition("/")
        prefix = (key_prefix.rstrip("/") + "/") if key_prefix else ""
        markers: dict[str, str] = {}
        aborted = 0
        while True:
            try:
                resp = _retry("listing pending multipart uploads", lambda m=dict(markers):
                              self.fs.call_s3("list_multipart_uploads", Bucket=bucket,
                                              Prefix=prefix, **m))
            except PermissionError as exc:  # listing uploads may be forbidden; not fatal
                log.warning("could not list pending multipart uploads under %s (%s); any left "
                            "by a killed run stay invisible but may cost storage until a "
                            "lifecycle rule removes them", redact(self.url), type(exc).__name__)
                return aborted
            except Exception as exc:
                raise self._cleanup_error(exc, "list pending multipart uploads") from exc
            for up in resp.get("Uploads", []):
                log.info("aborting pending multipart upload of %s", up["Key"][len(prefix):])
                try:
                    _retry(f"aborting the upload of {up['Key'][len(prefix):]}", lambda u=up:
                           self.fs.call_s3("abort_multipart_upload", Bucket=bucket,
                                           Key=u["Key"], UploadId=u["UploadId"]))
                except FileNotFoundError:  # NoSuchUpload: already aborted (a lost reply)
                    log.debug("upload of %s was already gone", up["Key"])
                except Exception as exc:
                    raise self._cleanup_error(
                        exc, f"abort the pending upload of {up['Key'][len(prefix):]}") from exc
                aborted += 1
            if not resp.get("IsTruncated"):
                return aborted
            markers = {"KeyMarker": resp.get("NextKeyMarker", ""),
                       "UploadIdMarker": resp.get("NextUploadIdMarker", "")}


class RecordLog:
    """The driver's batches of records: :meth:`add` each record it receives; every
    ``per_batch`` records (and at :meth:`flush`) they go up as one ``records-JOB-SSSSS.json``.
    A batch only repeats records that are already committed as part files, so losing one
    costs a resume some reads, never a partition."""

    def __init__(self, out: Output, job: str, per_batch: int):
        self.out = out
        self.job = job
        self.per_batch = max(1, per_batch)
        self.pending: list[PartitionRecord] = []
        self.seq = 0

    def add(self, record: PartitionRecord) -> None:
        self.pending.append(record)
        if len(self.pending) >= self.per_batch:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        doc = {"format": BATCH_FORMAT, "records": [r.to_dict() for r in self.pending]}
        name = f"{PARTITIONS_DIR}/records-{self.job}-{self.seq:05d}.json"
        try:
            storage.write_bytes(storage.join_url(self.out.url, name),
                                json.dumps(doc, separators=(",", ":")).encode(),
                                self.out.storage_options)
        except StorageError as exc:  # the part files still hold every record
            log.warning("could not write %s (%s); a resume reads the part files instead",
                        name, exc)
        self.seq += 1
        self.pending = []


def check_job(out: Output, plan: JobPlan) -> bool:
    """Compare with the job already in OUTPUT; returns True when OUTPUT is a fresh folder."""
    wanted = plan.to_dict()
    data = out.read(f"{PARTITIONS_DIR}/{JOB_NAME}")
    if data is None:
        if out.read(MANIFEST_NAME) is not None:
            raise ConfigError(
                f"{redact(out.url)} already holds a dataset (manifest.json) that was not made "
                f"by this conversion; choose another OUTPUT or delete it first", url=out.url)
        return True
    found = json.loads(data)
    if found != wanted:
        diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        raise ConfigError(
            f"{redact(out.url)} holds a conversion made with other options (differs in "
            f"{diff}: {[found.get(k) for k in diff]} there, {[wanted.get(k) for k in diff]} "
            f"now). Re-run with the same options to resume, or choose another OUTPUT",
            url=out.url)
    return False
