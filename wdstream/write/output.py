"""The output folder of a conversion: partition records, the job file, and cleaning what
unfinished attempts left (stale shards, temp files, pending multipart uploads)."""

from __future__ import annotations

import json
import logging
import posixpath
import re
from typing import Any

from .. import storage
from ..errors import ConfigError, NotFoundError, redact
from ..format.manifest import MANIFEST_NAME, PARTITIONS_DIR, PartitionRecord
from .plan import JobPlan

__all__ = ["Output", "JOB_NAME", "check_job"]

log = logging.getLogger(__name__)

JOB_NAME = "_job.json"  # in OUTPUT/_partitions: the options the partitions were made with
_RECORD_RE = re.compile(r"^part-(\d{5,})\.json$")
_PARTIAL_RE = re.compile(r"^\..+\.partial-[0-9a-f]+$")


class Output:
    """The output folder: records, job file, stale-shard cleanup."""

    def __init__(self, url: str, storage_options: dict[str, Any]):
        self.url = url.rstrip("/")
        self.storage_options = storage_options
        self.fs, self.path = storage.url_to_fs(self.url, storage_options)

    def _ls(self, path: str) -> list[str]:
        try:
            self.fs.invalidate_cache(path)
            return [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise storage.translate_error(exc, self.url, "list") from exc

    def read(self, name: str) -> bytes | None:
        try:
            return storage.read_bytes(storage.join_url(self.url, name), self.storage_options)
        except NotFoundError:
            return None

    def records(self) -> dict[int, PartitionRecord]:
        out = {}
        for name in self._ls(f"{self.path}/{PARTITIONS_DIR}"):
            m = _RECORD_RE.match(name)
            if m:
                data = self.read(f"{PARTITIONS_DIR}/{name}")
                if data is not None:
                    out[int(m.group(1))] = PartitionRecord.from_json(data)
        return out

    def clean(self, pending: set[int]) -> None:
        """Before a run (nothing may be running): remove what unfinished partitions left
        (their committed shards and indexes, without a record), then :meth:`sweep`."""
        prefixes = tuple(f"shard-{p:05d}-" for p in pending)
        if prefixes:
            self._remove([f"{self.path}/{name}" for name in self._ls(self.path)
                          if name.startswith(prefixes)])
        self.sweep()

    def sweep(self) -> None:
        """Remove what dead attempts left that never became visible: local ``.partial-*``
        temp files and (S3) pending multipart uploads of shards. Only while no partition of
        this output is running (before a run, or once all its partitions are done)."""
        stale = [f"{self.path}/{name}" for name in self._ls(self.path) if _PARTIAL_RE.match(name)]
        stale += [f"{self.path}/{PARTITIONS_DIR}/{name}"
                  for name in self._ls(f"{self.path}/{PARTITIONS_DIR}") if _PARTIAL_RE.match(name)]
        self._remove(stale)
        self._abort_uploads(("shard-",))

    def _remove(self, stale: list[str]) -> None:
        for path in stale:
            log.info("removing %s left by an unfinished run", posixpath.basename(path))
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass
            except Exception as exc:
                raise storage.translate_error(exc, self.url, "clean") from exc

    def _abort_uploads(self, prefixes: tuple[str, ...]) -> None:
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) \
            else (self.fs.protocol,)
        if not any(p in ("s3", "s3a") for p in protocols):
            return
        bucket, _, key_prefix = self.path.partition("/")
        prefix = (key_prefix.rstrip("/") + "/") if key_prefix else ""
        try:
            resp = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        except Exception as exc:  # listing uploads may be forbidden; not fatal
            log.warning("could not list pending multipart uploads under %s (%s); any left by "
                        "a killed run stay invisible but may cost storage until a lifecycle "
                        "rule removes them", redact(self.url), type(exc).__name__)
            return
        for up in resp.get("Uploads", []):
            name = up["Key"][len(prefix):]
            if name.startswith(prefixes):
                log.info("aborting pending multipart upload of %s", name)
                self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=up["Key"],
                                UploadId=up["UploadId"])


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
