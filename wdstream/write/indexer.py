"""``wdstream index`` as a job: index shards that wdstream did not write, in parallel, so
exact epochs, resume and mid-shard reads work on them as on converted shards. No shard is
written or changed.

- :func:`list_shards` turns a brace pattern, a list of URLs or a prefix into shard URLs;
- :func:`index_shard` scans one shard once (:func:`wdstream.format.scan.scan_shard`: its
  keys, offsets, size and sha256, bad tails and repeated keys left out and reported), writes
  its index and returns a :class:`ShardResult`;
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
from ..format.index import index_bytes, index_name, key_hash, max_index_bytes, parse_index
from ..format.keyindex import KEYS_NAME, key_index_bytes
from ..format.manifest import MANIFEST_NAME, Manifest, ShardInfo, is_shard_source
from ..format.scan import scan_shard
from ..format.schema import SHARD_EXTS

__all__ = [
    "SHARD_EXTS",
    "STATE_NAME",
    "ShardTask",
    "ShardResult",
    "IndexState",
    "list_shards",
    "shard_root",
    "plan_index",
    "index_shard",
    "build_manifest",
    "IndexReport",
    "index_dataset",
    "outside_prefixes",
]

log = logging.getLogger(__name__)

STATE_NAME = "_index_state.json"
TOOL = "wdstream index"  # the manifest's options.tool: who wrote it


def _is_local_url(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def list_shards(
    source: str | list[str] | tuple[str, ...], storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Shard URLs from a brace pattern, a list of URLs, or a prefix (every ``.tar``/``.tar.gz``/
    ``.tgz`` below it, sorted). Raises SourceError when there are none."""
    if isinstance(source, (list, tuple)) or is_shard_source(source):
        urls = storage.expand_urls(list(source) if isinstance(source, tuple) else source)
    else:
        urls = [u for u in storage.find_urls(source, storage_options) if u.endswith(SHARD_EXTS)]
    if not urls:
        raise SourceError(
            f"no .tar/.tar.gz shards in {redact(str(source))}: give a folder or "
            f"prefix that holds them, a brace pattern such as "
            f"'s3://bucket/data/{{00000..00099}}.tar', or a list of URLs",
            url=str(source),
        )
    return urls


def shard_root(urls: list[str]) -> str:
    """The deepest folder that holds every shard URL."""
    parents = [posixpath.dirname(u) for u in urls]
    root = parents[0]
    for p in parents[1:]:
        while not (p == root or p.startswith(root.rstrip("/") + "/")):
            up = posixpath.dirname(root)
            if up == root or up.endswith(":"):  # "s3:" / "/" : nothing in common
                break
            root = up
    return root


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
    (same size and ukey) whose index is there is not read again. Raises StorageError when the
    shard cannot be opened, ShardReadError when it changed while it was read.
    ``progress(samples, bytes)`` is called once at the end (the executors' progress protocol).
    """
    opts = task.storage_options
    size, ukey = storage.file_identity(task.url, opts)
    if task.previous is not None:
        prev = ShardResult.from_dict(task.previous)
        if (prev.size, prev.ukey, prev.info.url, prev.info.index) == (
            size,
            ukey,
            task.manifest_url,
            task.index,
        ) and storage.exists(task.index_url, opts):
            prev.reused = True
            if progress is not None:
                progress(prev.info.samples, prev.info.bytes)
            return prev
    shown = redact(task.url)
    scan = scan_shard(task.url, opts)
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
    absolute URL. Indexes go under the output, mirroring the shards' folders."""
    root = shard_root(urls)
    out = (out or root).rstrip("/")
    tasks = []
    for url in urls:
        # below the common folder: its path there; else (shards in several buckets) its
        # whole path, so that index names never collide
        rel = (
            url[len(root) + 1 :]
            if url.startswith(root + "/")
            else url.split("://", 1)[-1].lstrip("/")
        )
        idx = index_name(rel)
        inside = url.startswith(out + "/")
        name = url[len(out) + 1 :] if inside else _absolute(url)
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


def _absolute(url: str) -> str:
    if _is_local_url(url) and not url.startswith("file://"):
        return posixpath.abspath(url)
    return url


def build_manifest(results: list[ShardResult], out: str, source: Any) -> Manifest:
    """The manifest of indexed shards, in the order of ``results``; ``skipped`` sums what the
    shards left out and ``source["problems"]`` says where."""
    skipped: dict[str, int] = {}
    problems = []
    for r in results:
        for kind, n in r.skipped.items():
            skipped[kind] = skipped.get(kind, 0) + n
        if r.problems:
            problems.append({"shard": redact(r.url), "problems": r.problems})
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

    @property
    def outside(self) -> bool:
        """True when the manifest names shards outside its own folder (``--out``)."""
        return bool(self.prefixes)


def outside_prefixes(urls: list[str], out: str) -> list[str]:
    """The folders (``.../``) of the shards that are not below ``out``: what a reader must be
    allowed to read besides the manifest's own folder. One folder when they share one."""
    outside = [u for u in urls if not u.startswith(out.rstrip("/") + "/")]
    if not outside:
        return []
    root = shard_root(outside)
    if all(u.startswith(root + "/") for u in outside):
        folders = [root]
    else:
        folders = sorted({posixpath.dirname(u) for u in outside})
    return [_absolute(f).rstrip("/") + "/" for f in folders]


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
    last_save = time.monotonic()
    runner = (
        executor.map_unordered(index_shard, tasks, progress=progress)
        if executor is not None
        else _threads(index_shard, tasks, workers=workers, progress=progress)
    )
    try:
        for result in runner:
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
    ordered = [results[u] for u in urls]
    manifest = build_manifest(ordered, out, source)
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
