"""Opening a Hugging Face source for streaming.

:class:`HFSource` says what to open; :func:`open_source` streams anything
``datasets.load_dataset`` accepts (a Hub id, a local folder, or a builder such as ``parquet``
with ``data_files``). A source that needs the Hub is first checked with the fast probe of
:mod:`wdstream.hub`, so an unreachable Hub fails in seconds instead of after the retries of
``datasets``. What ``load_dataset`` raises is mapped by type onto wdstream's errors
(:func:`map_load_error`). A source's partitions are its own shards
(``IterableDataset.n_shards`` / ``.shard(n, i)``).
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from typing import Any

import datasets
from huggingface_hub.utils import (
    EntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import HubUnreachableError, SourceError
from ..hub import check_hub_reachable

__all__ = [
    "HFSource",
    "open_source",
    "map_load_error",
    "near_local_folder",
    "local_source_path",
    "LOCAL_BUILDERS",
]

#: Builders that read local ``data_files`` and never need the Hub.
LOCAL_BUILDERS = (
    "parquet",
    "csv",
    "json",
    "text",
    "arrow",
    "webdataset",
    "imagefolder",
    "audiofolder",
    "videofolder",
    "pandas",
    "xml",
    "sql",
)

#: The HTTP clients' exceptions for a connection that failed or timed out, by the module that
#: defines them: huggingface_hub talks HTTP through requests (before 1.0), httpx (1.x) or
#: httpx2 (2.x). Only modules already imported are looked up: one that was never imported
#: raised nothing.
_HTTP_NETWORK_ERRORS = (
    ("requests.exceptions", ("ConnectionError", "Timeout")),
    ("httpx", ("ConnectError", "TimeoutException")),
    ("httpx2", ("ConnectError", "TimeoutException")),
)

#: What ``load_dataset`` raises for a source that does not exist or has no data. ``datasets``'
#: DatasetNotFoundError (a Hub id that does not exist, or a private or gated one),
#: DataFilesNotFoundError and EmptyDatasetError (a folder without data files) and
#: huggingface_hub's LocalEntryNotFoundError are FileNotFoundErrors; the Hub's
#: RepositoryNotFoundError, RevisionNotFoundError and EntryNotFoundError come through when
#: ``datasets`` does not wrap them (``hf://`` data files). A config name or a split the source
#: does not have, and ``data_files`` that match nothing, come as plain ValueError: ``datasets``
#: has no type of its own for them (its message names the configs or splits that exist). So
#: every error is told apart by its type; none is matched on its text.
_NOT_FOUND_ERRORS = (
    FileNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    EntryNotFoundError,
    ValueError,
)


@dataclass(frozen=True)
class HFSource:
    """What to open: the arguments of ``datasets.load_dataset`` (always ``streaming=True``)."""

    source: str
    name: str | None = None
    split: str = "train"
    data_files: Any = None  # str, list of str, or {split: patterns}
    revision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description for the manifest (no credentials ever live here)."""
        files = self.data_files
        if isinstance(files, tuple):
            files = list(files)
        return {
            "name": self.source,
            "config": self.name,
            "split": self.split,
            "revision": self.revision,
            "data_files": files,
        }


def _is_local_path(source: str) -> bool:
    return (
        source.startswith(("/", "./", "../", "~", "file://"))
        or os.path.isabs(source)
        or os.path.exists(source)
    )


def _local_path(source: str) -> str:
    return os.path.expanduser(source.removeprefix("file://"))


def local_source_path(source: str) -> str | None:
    """The local path ``source`` names (``~`` expanded, ``file://`` removed), or None when it
    is a Hub id or a builder name."""
    return _local_path(source) if _is_local_path(source) else None


def _needs_hub(spec: HFSource) -> bool:
    if _is_local_path(spec.source):
        return False
    return not (spec.source in LOCAL_BUILDERS and spec.data_files is not None)


def near_local_folder(source: str) -> str | None:
    """A local folder whose name is close to ``source`` (``my_datset`` when ``./my_dataset``
    exists), as ``./my_dataset``; None when there is none or ``source`` exists."""
    path = _local_path(source)
    if os.path.exists(path):
        return None
    parent, name = os.path.split(path.rstrip("/"))
    try:
        folders = [
            d for d in os.listdir(parent or ".") if os.path.isdir(os.path.join(parent or ".", d))
        ]
    except OSError:
        return None
    close = difflib.get_close_matches(name, folders, n=1, cutoff=0.8)
    if not close:
        return None
    return os.path.join(parent, close[0]) if parent else f"./{close[0]}"


def _near_hint(spec: HFSource) -> str:
    near = near_local_folder(spec.source)
    return f". Did you mean the local folder {near!r}?" if near else ""


def _network_errors() -> tuple[type[BaseException], ...]:
    """The exception types of a network failure: the builtin ConnectionError and TimeoutError
    (``datasets`` raises ConnectionError itself for a Hub it "couldn't reach", and
    huggingface_hub's OfflineModeIsEnabled subclasses it), and the imported HTTP clients'."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in _HTTP_NETWORK_ERRORS:
        mod = sys.modules.get(module)
        found += [t for t in (getattr(mod, n, None) for n in names) if isinstance(t, type)]
    return tuple(found)


def map_load_error(exc: BaseException, spec: HFSource) -> SourceError:
    """The wdstream error for ``exc``, raised by ``datasets.load_dataset`` while opening
    ``spec``, told apart by the type of ``exc``.

    HubUnreachableError when offline mode forbids the Hub or the network fails for a source
    that needs the Hub; SourceError naming the source, config, split and data files when it
    does not exist or has no data; SourceError with the original error otherwise (the network
    failing on data files elsewhere, a builder option it does not take, ...).
    """
    text = f"{type(exc).__name__}: {exc}"
    network = isinstance(exc, _network_errors())
    if isinstance(exc, OfflineModeIsEnabled) or (network and _needs_hub(spec)):
        return HubUnreachableError(
            f"cannot reach the Hugging Face Hub for {spec.source!r} ({exc}). Check the network "
            f"or HF_ENDPOINT/HF_HUB_OFFLINE, or convert a local copy{_near_hint(spec)}",
            url=spec.source,
        )
    if network:
        return SourceError(
            f"cannot reach the data of source {spec.source!r} ({text}). Check the network and "
            f"the data files' URLs",
            url=spec.source,
        )
    if isinstance(exc, _NOT_FOUND_ERRORS):
        return SourceError(
            f"source {spec.source!r} (config={spec.name!r}, split={spec.split!r}, "
            f"data_files={spec.data_files!r}) does not exist or has no data: {exc}. Check the "
            f"dataset id, folder, config name, split and --data-files patterns{_near_hint(spec)}",
            url=spec.source,
        )
    return SourceError(f"cannot open source {spec.source!r}: {text}", url=spec.source)


def open_source(spec: HFSource, *, check_hub: bool = True):
    """``datasets.load_dataset(..., streaming=True)`` for ``spec``, as an IterableDataset.

    Raises SourceError for a source that does not exist or has no such config or split, and
    HubUnreachableError (within seconds, before ``datasets`` is asked) when the source needs
    the Hub and the Hub cannot be reached; ``check_hub=False`` skips that probe (a worker
    opening a source its driver already opened).
    """
    local = _is_local_path(spec.source)
    if local and not os.path.exists(_local_path(spec.source)):
        raise SourceError(
            f"source folder {spec.source!r} does not exist; give an existing local folder, a "
            f"Hub id, or a builder such as `parquet` with --data-files",
            url=spec.source,
        )
    if check_hub and _needs_hub(spec):
        try:
            check_hub_reachable(what=repr(spec.source))
        except HubUnreachableError as exc:
            hint = _near_hint(spec)
            if not hint:
                raise
            raise HubUnreachableError(f"{exc}{hint}", url=exc.url) from exc
    kwargs: dict[str, Any] = {"split": spec.split, "streaming": True}
    if spec.data_files is not None:
        files = spec.data_files
        kwargs["data_files"] = list(files) if isinstance(files, tuple) else files
    if spec.revision is not None:
        kwargs["revision"] = spec.revision
    path = _local_path(spec.source) if local else spec.source
    try:
        ds = datasets.load_dataset(path, spec.name, **kwargs)
    except Exception as exc:  # datasets raises many types; map them onto ours
        raise map_load_error(exc, spec) from exc
    if isinstance(ds, datasets.IterableDatasetDict):  # split=None
        raise SourceError(
            f"source {spec.source!r} has splits {list(ds)}; choose one with --split",
            url=spec.source,
        )
    return ds
