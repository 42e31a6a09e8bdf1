"""``wdstream index`` as a job: index shards that wdstream did not write, in parallel, so
exact epochs, resume and mid-shard reads work on them as on converted shards. No shard is
written or changed.

- :mod:`wdstream.write.shardlist` lists the shards (:func:`list_shards`) and says which
  are not indexed (:func:`unusable_shard`: not a regular file, or a name a manifest cannot
  hold: skipped and counted);
- :func:`plan_index` gives every shard an index name no other shard has;
- :func:`index_shard` scans one shard once (:func:`wdstream.format.scan.scan_shard`: its
  keys, offsets, size and sha256, bad tails and repeated keys left out and reported; never
  past the size the store lists; transient read errors retried), writes its index and
  returns a :class:`ShardResult`;
- :func:`build_manifest` puts the results together into a :class:`Manifest`;
- :class:`IndexState` is the small ``_index_state.json`` that lets a re-run skip shards whose
  size and ``ukey`` (fsspec's store-neutral ETag) have not changed;
- :func:`index_dataset` runs it all: threads (or an executor), a progress bar, the state
  saved as it goes, and the manifest.
"""

from __future__ import annotations

import json
import logging
import posixpath
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import storage
from ..errors import (
    ConfigError,
    CredentialsError,
    ShardReadError,
    SourceError,
    StorageError,
    redact,
)
from ..format.index import index_bytes, key_hash, max_index_bytes, parse_index
from ..format.keyindex import KEYS_NAME, key_index_bytes
from ..format.manifest import MANIFEST_NAME, Manifest, ShardInfo
from ..format.scan import scan_shard
from ..format.schema import SHARD_EXTS
from .shardlist import (
    absolute,
    index_names,
    list_shards,
    outside_prefixes,
    shard_root,
    show_name,
    unusable_shard,
)

__all__ = [
    "SHARD_EXTS",
    "STATE_NAME",
    "ShardTask",
    "ShardResult",
    "IndexState",
    "list_shards",
    "unusable_shard",
    "shard_root",
    "plan_index",
    "index_shard",
    "build_manifest",
    "IndexReport",
    "ShardFailure",
    "index_shard_or_failure",
    "index_dataset",
    "outside_prefixes",
]

log = logging.getLogger(__name__)

STATE_NAME = "_index_state.json"
TOOL = "wdstream index"  # the manifest's options.tool: who wrote it
TRUNCATED = "truncated or corrupt shard"  # scan's count of a shard whose tar ends early


@dataclass
class ShardTask:
    """One shard to index: where it is, where its index goes, and the name the manifest
    gives it. Picklable; ``storage_options`` are never logged."""

    url: str
    index_url: str
    manifest_url: str  # relative to the manifest's folder, or absolute
    index: str  # the index's name in the manifest, relative like manifest_url
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    previous: dict[str, Any] | None = None  # an earlier ShardResult: reused when unchanged


@dataclass
class ShardResult:
    """What indexing one shard found; ``problems`` lists what was left out and why."""

    url: str
    info: ShardInfo
    size: int
    ukey: str
    whole: bool = False
    problems: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    reused: bool = False  # unchanged since the last run: not read again (not serialised)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "info": asdict(self.info),
            "size": self.size,
            "ukey": self.ukey,
            "whole": self.whole,
            "problems": self.problems,
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardResult:
        return cls(
            url=d["url"],
            info=ShardInfo.from_dict(d["info"]),
            size=int(d["size"]),
            ukey=str(d["ukey"]),
            whole=bool(d.get("whole")),
            problems=list(d.get("problems", [])),
            skipped=dict(d.get("skipped", {})),
        )


def index_shard(task: ShardTask, progress: Callable[[int, int], None] | None = None) -> ShardResult:
    """Read ``task.url`` once, write its index to ``task.index_url``, return what was found.

    A truncated or corrupt shard is indexed up to its last whole sample; a non-adjacent or
    duplicate key is left out. Both are listed in ``problems`` and counted in ``skipped``
    (see :func:`~wdstream.format.scan.scan_shard`). A shard unchanged since ``task.previous``
    (same size and ukey) whose index is there is not read again, unless it was found
    truncated. Raises StorageError when the shard cannot be opened or its reads keep failing
    (after retries), ShardReadError when it changed while it was read.
    ``progress(samples, bytes)`` is called once at the end (the executors' progress protocol).
    """
    opts = task.storage_options
    size, ukey = storage.file_identity(task.url, opts)
    if task.previous is not None:
        prev = ShardResult.from_dict(task.previous)
        if (
            (prev.size, prev.ukey, prev.info.url, prev.info.index)
            == (size, ukey, task.manifest_url, task.index)
            # a shard found truncated is read again: an earlier version took a failed read
            # for a truncated shard and kept it
            and TRUNCATED not in prev.skipped
            and storage.exists(task.index_url, opts)
        ):
            prev.reused = True
            if progress is not None:
                progress(prev.info.samples, prev.info.bytes)
            return prev
    shown = redact(task.url)
    scan = scan_shard(task.url, opts, size=size)
    for text in scan.problems:
        log.warning("%s: %s", shown, text)
    if scan.bytes != size:
        raise ShardReadError(
            f"{shown}: read {scan.bytes} bytes but the store lists {size}; "
            f"it changed or the read failed midway. Run the index again",
            shard=task.url,
        )
    keys = scan.keys
    storage.write_bytes(task.index_url, index_bytes(scan.offsets, keys, whole=scan.whole), opts)
    info = ShardInfo(
        url=task.manifest_url,
        samples=len(keys),
        bytes=scan.bytes,
        sha256=scan.sha256,
        index=task.index,
        first_key=keys[0] if keys else None,
        last_key=keys[-1] if keys else None,
        whole=scan.whole,
    )
    if progress is not None:
        progress(len(keys), scan.bytes)
    return ShardResult(
        url=task.url,
        info=info,
        size=size,
        ukey=ukey,
        whole=scan.whole,
        problems=scan.problems,
        skipped=scan.skipped,
    )


def plan_index(
    urls: list[str], out: str | None, storage_options: dict[str, Any] | None = None
) -> tuple[str, list[ShardTask]]:
    """``(output folder, one task per shard)``. The output defaults to the shards' folder;
    the manifest names a shard relative to it when the shard lies below it, else by its
    absolute URL. Indexes go under the output, mirroring the shards' folders; no two shards
    get the same index name (see :func:`index_names`)."""
    root = shard_root(urls)
    out = (out or root).rstrip("/")
    tasks = []
    for url, idx in zip(urls, index_names(urls, root), strict=True):
        inside = url.startswith(out + "/")
        name = url[len(out) + 1 :] if inside else absolute(url)
        tasks.append(
            ShardTask(
                url=url,
                index_url=storage.join_url(out, idx),
                manifest_url=name,
                index=idx,
                storage_options=dict(storage_options or {}),
            )
        )
    return out, tasks


def build_manifest(
    results: list[ShardResult],
    out: str,
    source: Any,
    unusable: dict[str, str] | None = None,
) -> Manifest:
    """The manifest of indexed shards, in the order of ``results``; ``skipped`` sums what the
    shards left out (and the files not indexed, ``unusable``: URL -> why) and
    ``source["problems"]`` says where."""
    skipped: dict[str, int] = {}
    problems = []
    for r in results:
        for kind, n in r.skipped.items():
            skipped[kind] = skipped.get(kind, 0) + n
        if r.problems:
            problems.append({"shard": redact(r.url), "problems": r.problems})
    for url, why in (unusable or {}).items():
        kind = why.split(":", 1)[0].split(" (", 1)[0]
        skipped[kind] = skipped.get(kind, 0) + 1
        problems.append({"shard": show_name(url), "problems": [f"not indexed: {why}"]})
    whole = sum(1 for r in results if r.whole)
    src = {
        "name": posixpath.basename(out.rstrip("/")) or "shards",
        "indexed": True,
        "from": redact(source if isinstance(source, str) else f"{len(results)} URLs"),
        "whole_only_shards": whole,
        "problems": problems,
    }
    return Manifest(
        shards=[r.info for r in results],
        source=src,
        skipped=skipped,
        options={"tool": TOOL},
        base_url=out,
    )


class IndexState:
    """``OUTPUT/_index_state.json``: the result of every shard indexed so far, with the size
    and ukey it had, so a re-run redoes only new or changed shards."""

    def __init__(self, out: str, storage_options: dict[str, Any] | None = None):
        self.url = storage.join_url(out, STATE_NAME)
        self.storage_options = storage_options
        self.results: dict[str, ShardResult] = {}

    def load(self) -> IndexState:
        try:
            data = storage.read_bytes(self.url, self.storage_options)
        except FileNotFoundError:
            return self
        try:
            doc = json.loads(data)
            self.results = {d["url"]: ShardResult.from_dict(d) for d in doc.get("shards", [])}
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring %s (%s); indexing every shard again", redact(self.url), exc)
            self.results = {}
        return self

    def add(self, result: ShardResult) -> None:
        self.results[result.url] = result

    def save(self) -> None:
        doc = {
            "format": "wdstream-index-state",
            "version": 1,
            "shards": [r.to_dict() for r in self.results.values()],
        }
        storage.write_bytes(self.url, json.dumps(doc).encode(), self.storage_options)


@dataclass
class IndexReport:
    """What :func:`index_dataset` did: the manifest, where it went, and what it found."""

    manifest: Manifest
    manifest_url: str
    out: str
    data_root: str  # the deepest folder holding every shard
    prefixes: list[str] = field(default_factory=list)  # folders of shards outside ``out``
    indexed: int = 0  # shards read in this run
    reused: int = 0  # shards unchanged since the last run, not read again
    problems: dict[str, list[str]] = field(default_factory=dict)  # shard URL -> problems
    unusable: dict[str, str] = field(default_factory=dict)  # files not indexed: URL -> why

    @property
    def outside(self) -> bool:
        """True when the manifest names shards outside its own folder (``--out``)."""
        return bool(self.prefixes)


@dataclass
class ShardFailure:
    """A shard that could not be read in this run (its reads kept failing, or it changed
    while it was read): nothing is recorded for it, so the next run reads it again."""

    url: str
    error: str


def index_shard_or_failure(
    task: ShardTask, progress: Callable[[int, int], None] | None = None
) -> ShardResult | ShardFailure:
    """:func:`index_shard`, with a read that failed for good returned as a
    :class:`ShardFailure` instead of raised, so the other shards go on. Credentials that are
    refused still stop the job."""
    try:
        return index_shard(task, progress)
    except CredentialsError:
        raise
    except (StorageError, ShardReadError) as exc:
        return ShardFailure(task.url, str(exc))


def _threads(fn, tasks, *, workers: int, progress=None):
    with ThreadPoolExecutor(
        max_workers=max(1, workers), thread_name_prefix="wdstream-index"
    ) as pool:
        futures = [pool.submit(fn, t, progress) for t in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def _check_not_a_conversion(out: str, opts: dict[str, Any]) -> None:
    """Refuse to replace a manifest that ``wdstream convert`` wrote (it has its indexes)."""
    url = storage.join_url(out, MANIFEST_NAME)
    try:
        doc = json.loads(storage.read_bytes(url, opts))
    except (FileNotFoundError, ValueError):
        return
    if isinstance(doc, dict) and doc.get("options", {}).get("tool") != TOOL:
        raise ConfigError(
            f"{redact(url)} is a manifest that `wdstream convert` wrote: these shards are indexed "
            f"already, read them as they are (make_loader({redact(out)!r}, config)); to index "
            f"them anyway, give --out with another folder",
            url=url,
        )


def write_key_index(manifest: Manifest, out: str, storage_options: dict[str, Any]) -> str:
    """Write ``OUT/manifest.keys`` (:mod:`wdstream.format.keyindex`): every key's shard and
    position, from the shards' own indexes (read concurrently, one GET each), so that
    :func:`wdstream.get_sample` finds a key in a few requests although the keys of foreign
    shards are not ordered. Returns its URL. Raises StorageError when an index cannot be
    read, SourceError when one is malformed."""
    import numpy as np

    base = manifest.base_url or out
    urls = [storage.join_url(base, s.index) if s.index else None for s in manifest.shards]
    wanted = [u for u in urls if u is not None]
    blobs = dict(zip(wanted, storage.read_many(wanted, storage_options), strict=True))
    per_shard = []
    for shard, url in zip(manifest.shards, urls, strict=True):
        if url is None:
            per_shard.append(np.empty(0, dtype="<u8"))
            continue
        data = blobs[url]
        if isinstance(data, BaseException):
            raise data
        if len(data) > max_index_bytes(shard.samples):
            raise SourceError(f"index {redact(url)} is larger than its bound", url=url)
        try:
            index = parse_index(data, shard.samples)
        except ValueError as exc:
            raise SourceError(f"index {redact(url)} is malformed: {exc}", url=url) from exc
        if index.get("keys") is not None:
            per_shard.append(np.array([key_hash(k) for k in index["keys"]], dtype="<u8"))
        else:
            per_shard.append(index["key_hashes"])
    url = storage.join_url(out, KEYS_NAME)
    storage.write_bytes(url, key_index_bytes(per_shard, len(manifest.shards)), storage_options)
    return url


def index_dataset(
    source: str | list[str],
    out: str | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    workers: int = 8,
    executor: Any = None,
    quiet: bool = False,
    save_every: float = 30.0,
) -> IndexReport:
    """Index existing shards and write ``OUT/manifest.json`` (``OUT`` defaults to the shards'
    folder) with an index per shard under ``OUT``. No shard is written.

    ``workers`` threads read shards in parallel (the work is I/O); or give ``executor`` (any
    object with the write executors' ``map_unordered(fn, tasks, progress=...)``). A re-run
    reads only shards that are new or whose size or ukey changed (``OUT/_index_state.json``,
    saved every ``save_every`` seconds and at the end, so a killed run loses little).

    Raises SourceError when there are no shards, StorageError/CredentialsError when ``OUT``
    cannot be written (give another ``out``) or a shard cannot be opened.
    """
    opts = dict(storage_options or {})
    urls = list_shards(source, opts)
    out, tasks = plan_index(urls, out, opts)
    root = shard_root(urls)
    unusable = {}
    for task in tasks:
        why = unusable_shard(task.url, task.manifest_url) or unusable_shard(task.url, task.index)
        if why:
            unusable[task.url] = why
            log.warning("not indexing %s: %s", show_name(task.url), why)
    if unusable:
        tasks = [t for t in tasks if t.url not in unusable]
        urls = [u for u in urls if u not in unusable]
        if not tasks:
            raise SourceError(
                f"none of the {len(unusable)} files in {show_name(str(source))} can be "
                f"indexed: {next(iter(unusable.values()))}",
                url=str(source),
            )
    try:
        storage.check_writable(out, opts)
    except StorageError as exc:
        hint = (
            " (the data's own folder: give --out with a folder you can write)"
            if out == root
            else ""
        )
        raise type(exc)(f"{exc}{hint}", url=out) from exc
    _check_not_a_conversion(out, opts)
    state = IndexState(out, opts).load()
    for task in tasks:
        prev = state.results.get(task.url)
        task.previous = prev.to_dict() if prev is not None else None
    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), unit=" shards", desc="index", dynamic_ncols=True)
    lock = threading.Lock()
    counts = {"samples": 0}

    def progress(samples: int, nbytes: int) -> None:
        with lock:
            counts["samples"] += samples
            if bar is not None:
                bar.set_postfix_str(f"{counts['samples']} samples", refresh=False)
                bar.update(1)

    results: dict[str, ShardResult] = {}
    failures: dict[str, str] = {}
    last_save = time.monotonic()
    runner = (
        executor.map_unordered(index_shard_or_failure, tasks, progress=progress)
        if executor is not None
        else _threads(index_shard_or_failure, tasks, workers=workers, progress=progress)
    )
    try:
        for result in runner:
            if isinstance(result, ShardFailure):
                failures[result.url] = result.error
                log.warning("%s", result.error)
                continue
            results[result.url] = result
            state.add(result)
            if not result.reused and time.monotonic() - last_save > save_every:
                state.save()
                last_save = time.monotonic()
    finally:
        if bar is not None:
            bar.close()
        if results:
            try:
                state.save()
            except (StorageError, CredentialsError) as exc:  # do not hide the first error
                log.warning("could not save %s: %s", redact(state.url), exc)
    if failures:
        first = next(iter(failures.values()))
        raise StorageError(
            f"{len(failures)} of {len(tasks)} shards could not be read ({first}); the others "
            f"are saved in {redact(state.url)}: run the same command again to read the rest "
            f"(no manifest written)",
            url=next(iter(failures)),
        )
    ordered = [results[u] for u in urls]
    manifest = build_manifest(ordered, out, source, unusable)
    write_key_index(manifest, out, opts)  # before the manifest it is for
    manifest_url = manifest.save(out, opts)
    report = IndexReport(
        manifest=manifest,
        manifest_url=manifest_url,
        out=out,
        data_root=root,
        prefixes=outside_prefixes(urls, out),
        indexed=sum(1 for r in ordered if not r.reused),
        reused=sum(1 for r in ordered if r.reused),
        problems={r.url: r.problems for r in ordered if r.problems},
        unusable=unusable,
    )
    log.info(
        "indexed %s: %d samples in %d shards (%d read, %d unchanged); skipped %s",
        redact(manifest_url),
        manifest.samples,
        len(ordered),
        report.indexed,
        report.reused,
        manifest.skipped or "none",
    )
    return report
