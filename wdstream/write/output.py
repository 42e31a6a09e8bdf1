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

import json
import logging
import posixpath
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .. import storage, uploads
from ..errors import ConfigError, CredentialsError, StorageError, redact
from ..format.manifest import MANIFEST_NAME, PARTITIONS_DIR, PartitionRecord
from .plan import JobPlan

__all__ = [
    "Output",
    "RecordLog",
    "CleanupError",
    "JOB_NAME",
    "check_job",
    "claim_job",
    "remove_leftovers",
    "records_per_batch",
]

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


def lists_by_prefix(fs) -> bool:
    """Whether a partition lists its own prefix to clean (object stores with server-side
    prefix listings); otherwise the driver lists the local folder once."""
    return storage.is_s3(fs)


def _retry(what: str, fn: Callable[[], _T], attempts: int = CLEANUP_ATTEMPTS) -> _T:
    """``fn()``, tried ``attempts`` times with a short back-off (cleanup requests are
    idempotent). The last error is raised."""
    for attempt in range(attempts):
        try:
            return fn()
        except (FileNotFoundError, PermissionError, CredentialsError):
            raise
        except Exception as exc:
            if attempt == attempts - 1:
                raise
            log.warning(
                "%s failed (%s: %s); retrying",
                what,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            time.sleep(min(0.5 * 2**attempt, 4.0))
    raise AssertionError("unreachable")


def remove_leftovers(
    url: str,
    partition: int,
    keep: Iterable[str],
    storage_options: dict[str, Any] | None = None,
    *,
    fs=None,
) -> list[str]:
    """After partition ``partition`` committed the files named ``keep`` under the output
    ``url``: list its own prefix (``shard-PPPPP-``, one listing) and remove the files of that
    partition that an earlier, dead attempt committed and this one did not write again.
    Returns the removed names. ``fs``: the output's filesystem, already open."""
    keep = set(keep)
    prefix = f"shard-{partition:05d}-"
    found = storage.list_names(url, storage_options, fs=fs, prefix=prefix)
    stale = [name for name in found if name not in keep]
    for name in stale:
        log.info("removing %s left by an unfinished run", name)
        try:
            _retry(
                f"removing {name}",
                lambda n=name: storage.remove_file(
                    storage.join_url(url, n), storage_options, fs=fs
                ),
            )
        except FileNotFoundError:
            pass
    return stale


class Output:
    """The output folder: records, job file, stale-shard cleanup."""

    def __init__(self, url: str, storage_options: dict[str, Any], *, concurrency: int = 32):
        self.url = url.rstrip("/")
        self.storage_options = storage_options
        self.concurrency = concurrency
        self.fs, self.path = storage.url_to_fs(self.url, storage_options)

    def list(self, folder: str = "") -> list[str]:
        """The names in ``folder`` (relative to OUTPUT; the output itself by default), fresh
        from the store; none when it does not exist."""
        return storage.list_names(
            storage.join_url(self.url, folder) if folder else self.url,
            self.storage_options,
            fs=self.fs,
        )

    def read(self, name: str) -> bytes | None:
        """The object ``name`` (relative to OUTPUT), or None when there is none."""
        return self.read_many([name]).get(name)

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        """``{name: bytes}`` of the objects ``names`` (relative to OUTPUT), read concurrently,
        one GET each, at most ``concurrency`` at a time (:func:`wdstream.storage.read_many`).
        A missing object is left out; another error is raised (StorageError)."""
        out: dict[str, bytes] = {}
        for start in range(0, len(names), 4096):  # bounded memory for the paths and futures
            chunk = names[start : start + 4096]
            urls = [storage.join_url(self.url, name) for name in chunk]
            got = storage.read_many(
                urls, self.storage_options, fs=self.fs, concurrency=self.concurrency
            )
            for name, value in zip(chunk, got, strict=True):
                if isinstance(value, FileNotFoundError):
                    continue
                if isinstance(value, BaseException):
                    raise value
                out[name] = value
        return out

    def records(self) -> dict[int, PartitionRecord]:
        """Every finished partition's record: the ``records-*`` batches, then the part files
        that no batch covers; each group read concurrently."""
        names = self.list(PARTITIONS_DIR)
        parts = {int(m.group(1)): name for name in names if (m := _RECORD_RE.match(name))}
        batches = [name for name in names if _BATCH_RE.match(name)]
        out: dict[int, PartitionRecord] = {}
        for name, data in self.read_many([f"{PARTITIONS_DIR}/{n}" for n in batches]).items():
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
        for data in self.read_many(missing).values():
            rec = PartitionRecord.from_json(data)
            out[rec.partition] = rec
        log.debug(
            "read %d records from %d batches and %d part files",
            len(out),
            len(batches),
            len(missing),
        )
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
        names = self.list()
        stale = [n for n in names if prefixes and n.startswith(prefixes)]
        stale += [n for n in names if _PARTIAL_RE.match(n)]
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
        self._remove([n for n in self.list() if _PARTIAL_RE.match(n)])
        self._sweep_records_dir()

    def _sweep_records_dir(self) -> None:
        self._remove(
            [f"{PARTITIONS_DIR}/{n}" for n in self.list(PARTITIONS_DIR) if _PARTIAL_RE.match(n)]
        )

    def _remove(self, stale: list[str]) -> None:
        """Remove the files ``stale`` (names relative to OUTPUT), each tried a few times."""
        for name in stale:
            shown = posixpath.basename(name)
            log.info("removing %s left by an unfinished run", shown)
            url = storage.join_url(self.url, name)
            try:
                _retry(
                    f"removing {shown}",
                    lambda u=url: storage.remove_file(u, self.storage_options, fs=self.fs),
                )
            except FileNotFoundError:
                pass
            except Exception as exc:
                raise self._cleanup_error(exc, f"remove {shown}") from exc

    def _cleanup_error(self, exc: BaseException, what: str) -> CleanupError:
        # the store's own error, not our translation of it (which names the URL again)
        cause = exc.__cause__ if isinstance(exc, StorageError) and exc.__cause__ else exc
        return CleanupError(
            f"could not {what} under {redact(self.url)} ({type(cause).__name__}: "
            f"{str(cause).splitlines()[0] if str(cause) else ''}) after {CLEANUP_ATTEMPTS} "
            f"tries. Every finished partition is recorded: re-run the same command to clean up "
            f"and write the manifest",
            url=self.url,
        )

    def _abort_uploads(self) -> int:
        """Abort every pending multipart upload under OUTPUT, page by page (at most 1,000 a
        page). An upload already gone counts as aborted. Returns how many were aborted."""
        marker: dict[str, str] | None = None
        aborted = 0
        while True:
            try:
                found, marker = _retry(
                    "listing pending multipart uploads",
                    lambda m=marker: uploads.list_pending_uploads(self.url, fs=self.fs, marker=m),
                )
            except (PermissionError, CredentialsError) as exc:  # may be forbidden; not fatal
                log.warning(
                    "could not list pending multipart uploads under %s (%s); any left "
                    "by a killed run stay invisible but may cost storage until a "
                    "lifecycle rule removes them",
                    redact(self.url),
                    type(exc).__name__,
                )
                return aborted
            except Exception as exc:
                raise self._cleanup_error(exc, "list pending multipart uploads") from exc
            for name, upload_id in found:
                log.info("aborting pending multipart upload of %s", name)
                try:
                    _retry(
                        f"aborting the upload of {name}",
                        lambda n=name, u=upload_id: uploads.abort_upload(
                            storage.join_url(self.url, n), u, fs=self.fs
                        ),
                    )
                except FileNotFoundError:  # NoSuchUpload: already aborted (a lost reply)
                    log.debug("upload of %s was already gone", name)
                except Exception as exc:
                    raise self._cleanup_error(exc, f"abort the pending upload of {name}") from exc
                aborted += 1
            if marker is None:
                return aborted


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
            storage.write_bytes(
                storage.join_url(self.out.url, name),
                json.dumps(doc, separators=(",", ":")).encode(),
                self.out.storage_options,
            )
        except StorageError as exc:  # the part files still hold every record
            log.warning("could not write %s (%s); a resume reads the part files instead", name, exc)
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
                f"by this conversion; choose another OUTPUT or delete it first",
                url=out.url,
            )
        return True
    found = json.loads(data)
    if found != wanted:
        diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        raise ConfigError(
            f"{redact(out.url)} holds a conversion made with other options (differs in "
            f"{diff}: {[found.get(k) for k in diff]} there, {[wanted.get(k) for k in diff]} "
            f"now). Re-run with the same options to resume, or choose another OUTPUT",
            url=out.url,
        )
    return False


def claim_job(out: Output, plan: JobPlan) -> bool:
    """:func:`check_job`, then, for a fresh OUTPUT, take it: its job file is created only where
    none is (:func:`wdstream.storage.create_new`), so of two conversions started at once into
    one new OUTPUT only one takes it. Returns True when this call created the job file (fresh),
    False when OUTPUT holds this same job (resume). Raises ConfigError as check_job does,
    saying when another conversion took OUTPUT first."""
    if not check_job(out, plan):
        return False
    if storage.create_new(
        storage.join_url(out.url, f"{PARTITIONS_DIR}/{JOB_NAME}"),
        json.dumps(plan.to_dict(), indent=1, sort_keys=True).encode(),
        out.storage_options,
        fs=out.fs,
    ):
        return True
    try:  # another conversion created it between the check and now: this job, or another?
        if check_job(out, plan):
            raise ConfigError(
                f"{redact(out.url)}/{PARTITIONS_DIR}/{JOB_NAME} came and went while this "
                f"conversion started; re-run the command",
                url=out.url,
            )
    except ConfigError as exc:
        raise ConfigError(
            f"another conversion into {redact(out.url)} started at the same time and took it "
            f"first: {exc}",
            url=out.url,
        ) from None
    return False
