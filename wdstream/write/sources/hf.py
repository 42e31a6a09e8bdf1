"""Hugging Face sources: open a dataset for streaming and find its columns.

The write path starts here: :func:`open_source` streams anything ``datasets.load_dataset``
accepts (a Hub id, a local folder, or a builder such as ``parquet`` with ``data_files``), with
Image and Audio columns cast to ``decode=False`` so encoded bytes pass through untouched.
:func:`resolve_columns` finds the image, audio and text columns from the features, and from
the layout and content of columns without HF feature types (a parquet written by pyarrow).
Partitions are the source's own shards (``IterableDataset.n_shards`` / ``.shard(n, i)``).

Rows are read as Arrow record batches (``with_format("arrow").iter(batch_size)``) and their
columns turned into Python lists once per batch, which is much cheaper than one dict per row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import ColumnError, HubUnreachableError, SourceError
from ...format.schema import AUDIO_EXTS, IMAGE_EXTS, audio_ext, image_ext
from ...hub import check_hub_reachable
from ..encode import ColumnMap

__all__ = [
    "HFSource",
    "open_source",
    "resolve_columns",
    "sample_binary_values",
    "prepare",
    "iter_rows",
    "without_torch",
    "TEXT_COLUMN_NAMES",
    "LOCAL_BUILDERS",
    "near_local_folder",
    "SourceFiles",
    "source_files",
    "file_group",
    "open_files",
]

log = logging.getLogger(__name__)

#: Column names taken as the text when no ``--text-column`` is given, in this order.
TEXT_COLUMN_NAMES = ("text", "caption", "captions", "sentence", "transcription", "transcript",
                     "prompt", "description", "content", "title")
#: Builders that read local ``data_files`` and never need the Hub.
LOCAL_BUILDERS = _LOCAL_BUILDERS = ("parquet", "csv", "json", "text", "arrow", "webdataset", "imagefolder",
                   "audiofolder", "videofolder", "pandas", "xml", "sql")


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
        return {"name": self.source, "config": self.name, "split": self.split,
                "revision": self.revision, "data_files": files}


# --------------------------------------------------------------------------- opening

def _is_local_path(source: str) -> bool:
    return (source.startswith(("/", "./", "../", "~", "file://")) or os.path.isabs(source)
            or os.path.exists(source))


def _needs_hub(spec: HFSource) -> bool:
    if _is_local_path(spec.source):
        return False
    if spec.source in _LOCAL_BUILDERS and spec.data_files is not None:
        return False
    return True


def near_local_folder(source: str) -> str | None:
    """A local folder whose name is close to ``source`` (``my_datset`` when ``./my_dataset``
    exists), as ``./my_dataset``; None when there is none or ``source`` exists."""
    path = os.path.expanduser(source.removeprefix("file://"))
    if os.path.exists(path):
        return None
    parent, name = os.path.split(path.rstrip("/"))
    try:
        folders = [d for d in os.listdir(parent or ".")
                   if os.path.isdir(os.path.join(parent or ".", d))]
    except OSError:
        return None
    close = difflib.get_close_matches(name, folders, n=1, cutoff=0.8)
    if not close:
        return None
    return os.path.join(parent, close[0]) if parent else f"./{close[0]}"


def _near_hint(spec: HFSource) -> str:
    near = near_local_folder(spec.source)
    return f". Did you mean the local folder {near!r}?" if near else ""


def _map_load_error(exc: BaseException, spec: HFSource) -> Exception:
    text = f"{type(exc).__name__}: {exc}"
    if "Couldn't reach" in text or "OfflineMode" in text or "ConnectionError" in text \
            or "ConnectTimeout" in text or "Connection refused" in text:
        return HubUnreachableError(
            f"cannot reach the Hugging Face Hub for {spec.source!r} ({exc}). Check the network "
            f"or HF_ENDPOINT/HF_HUB_OFFLINE, or convert a local copy{_near_hint(spec)}",
            url=spec.source)
    if isinstance(exc, (FileNotFoundError, ValueError)) or "NotFound" in text \
            or "doesn't exist" in text or "does not exist" in text:
        return SourceError(
            f"source {spec.source!r} (config={spec.name!r}, split={spec.split!r}, "
            f"data_files={spec.data_files!r}) does not exist or has no data: {exc}. Check the "
            f"dataset id, folder, config name, split and --data-files patterns{_near_hint(spec)}",
            url=spec.source)
    return SourceError(f"cannot open source {spec.source!r}: {text}", url=spec.source)


@contextlib.contextmanager
def without_torch() -> Iterator[None]:
    """Open and iterate streaming datasets without importing torch.

    ``datasets`` imports torch (about 0.5 GB and seconds in every process) only to put an
    IterableDataset's epoch in shared memory for a DataLoader's persistent workers; a
    conversion never hands its datasets to a DataLoader. While torch is not imported yet, this
    tells ``datasets`` it is absent, and restores the setting after. A process that already
    imported torch (a training script) is left as it is.
    """
    global _WITHOUT_TORCH_DEPTH, _TORCH_AVAILABLE_BEFORE
    with _WITHOUT_TORCH_LOCK:  # re-entrant across threads: the first in saves, the last out
        if _WITHOUT_TORCH_DEPTH == 0:  # restores (conversions may overlap on threads)
            if "torch" in sys.modules:
                _TORCH_AVAILABLE_BEFORE = None  # leave it as it is
            else:
                _TORCH_AVAILABLE_BEFORE = datasets.config.TORCH_AVAILABLE
                datasets.config.TORCH_AVAILABLE = False
        _WITHOUT_TORCH_DEPTH += 1
    try:
        yield
    finally:
        with _WITHOUT_TORCH_LOCK:
            _WITHOUT_TORCH_DEPTH -= 1
            if _WITHOUT_TORCH_DEPTH == 0 and _TORCH_AVAILABLE_BEFORE is not None:
                datasets.config.TORCH_AVAILABLE = _TORCH_AVAILABLE_BEFORE


_WITHOUT_TORCH_LOCK = threading.Lock()
_WITHOUT_TORCH_DEPTH = 0
_TORCH_AVAILABLE_BEFORE: bool | None = None


def open_source(spec: HFSource, *, check_hub: bool = True):
    """``datasets.load_dataset(..., streaming=True)`` for ``spec``, as an IterableDataset.

    Raises SourceError for a source that does not exist, and HubUnreachableError (fast) when
    the source needs the Hub and the Hub cannot be reached.
    """
    if _is_local_path(spec.source) and not os.path.exists(os.path.expanduser(
            spec.source.removeprefix("file://"))):
        raise SourceError(f"source folder {spec.source!r} does not exist; give an existing "
                          f"local folder, a Hub id, or a builder such as `parquet` with "
                          f"--data-files", url=spec.source)
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
    try:
        ds = datasets.load_dataset(os.path.expanduser(spec.source.removeprefix("file://"))
                                   if _is_local_path(spec.source) else spec.source,
                                   spec.name, **kwargs)
    except Exception as exc:  # datasets raises many types; map them onto ours
        raise _map_load_error(exc, spec) from exc
    if isinstance(ds, datasets.IterableDatasetDict):  # split=None
        raise SourceError(f"source {spec.source!r} has splits {list(ds)}; choose one with "
                          f"--split", url=spec.source)
    return ds


# --------------------------------------------------------------------------- one partition's files

#: Builders whose streaming shards are plain data files, one per shard, that
#: ``load_dataset(builder, data_files=...)`` reads the same way from a list of them.
FILE_BUILDERS = ("parquet", "arrow")
_CONFIG_FIELDS_NOT_OPTIONS = ("name", "version", "data_dir", "data_files", "description",
                              "features")


@dataclass(frozen=True)
class SourceFiles:
    """How a worker opens only its own data files, instead of resolving the whole source.

    ``datasets`` resolves every data file of a source when it opens it (about 0.4 ms a file:
    40 s at 100k files, in every process). A source whose shards are its data files (parquet,
    arrow) is resolved once, by the driver, and each task carries the few ``paths`` it reads,
    with the builder, its non-default options and the source's features (so every
    partition's rows are cast exactly as the whole source's would be).
    """

    builder: str
    options: tuple[tuple[str, Any], ...]
    features: Any  # datasets.Features of the whole source
    paths: tuple[str, ...]


def source_files(ds) -> SourceFiles | None:
    """The data files behind ``ds``'s shards, one per shard, in order; None when its shards
    are not plain data files of a :data:`FILE_BUILDERS` builder (then a worker opens the
    whole source, as before)."""
    ex = getattr(ds, "_ex_iterable", None)
    kwargs = getattr(ex, "kwargs", None)
    fn = getattr(ex, "generate_tables_fn", None) or getattr(ex, "generate_examples_fn", None)
    builder = getattr(fn, "__self__", None)
    config = getattr(builder, "config", None)
    name = getattr(getattr(ds, "info", None), "builder_name", None)
    if not isinstance(kwargs, dict) or config is None or name not in FILE_BUILDERS \
            or ds.features is None or set(kwargs) - {"files", "row_groups_list"}:
        return None
    files = kwargs.get("files")
    if not isinstance(files, list) or not files or len(files) != ds.n_shards \
            or not all(isinstance(f, str) for f in files) \
            or any(g is not None for g in kwargs.get("row_groups_list") or ()):
        return None
    try:
        defaults = type(config)()
        options = tuple((f.name, getattr(config, f.name)) for f in dataclasses.fields(config)
                        if f.name not in _CONFIG_FIELDS_NOT_OPTIONS
                        and getattr(config, f.name) != getattr(defaults, f.name))
    except Exception:  # a config that cannot be compared: open the whole source instead
        return None
    return SourceFiles(builder=name, options=options, features=ds.features,
                       paths=tuple(files))


def file_group(n_files: int, n_groups: int, index: int) -> range:
    """The files of group ``index`` when ``n_files`` are split into ``n_groups`` contiguous
    groups, the first ones one larger: ``IterableDataset.shard(n_groups, index,
    contiguous=True)``'s arithmetic."""
    div, mod = divmod(n_files, n_groups)
    start = div * index + min(index, mod)
    return range(start, start + div + (1 if index < mod else 0))


def open_files(spec: HFSource, files: SourceFiles):
    """The rows of ``files.paths`` only, as ``ds.shard(...)`` of the whole source would give
    them (same order, same features)."""
    try:
        return datasets.load_dataset(files.builder, data_files={spec.split: list(files.paths)},
                                     split=spec.split, streaming=True,
                                     features=files.features, **dict(files.options))
    except Exception as exc:  # datasets raises many types; map them onto ours
        raise _map_load_error(exc, spec) from exc


# --------------------------------------------------------------------------- columns

def _feature_kind(feature: Any) -> str | None:
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Audio):
        return "audio"
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return "text"
    if isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary"):
        return "binary"
    if _is_bytes_path_feature(feature):
        return "binary"  # HF's own media layout, written without HF metadata
    if _holds_binary(feature):
        return "nested_binary"
    return None


def _is_bytes_path_feature(feature: Any) -> bool:
    """A ``{bytes: binary, path: string}`` struct: the layout of HF Image/Audio columns, as
    plain pyarrow or pandas write it (no ``huggingface`` schema metadata)."""
    return isinstance(feature, dict) and "bytes" in feature and "path" in feature and \
        isinstance(feature["bytes"], datasets.Value) and \
        feature["bytes"].dtype in ("binary", "large_binary")


def _holds_binary(feature: Any) -> bool:
    if isinstance(feature, datasets.Value):
        return feature.dtype in ("binary", "large_binary")
    if isinstance(feature, dict):
        return any(_holds_binary(f) for f in feature.values())
    if isinstance(feature, (list, tuple)):
        return any(_holds_binary(f) for f in feature)
    inner = getattr(feature, "feature", None)  # List, Sequence, LargeList
    return inner is not None and _holds_binary(inner)


def _content_kind(data: bytes | None, path: str | None) -> str | None:
    """``"image"`` / ``"audio"`` from an encoded value's signature (else its path's suffix)."""
    if data:
        if image_ext(data) is not None:
            return "image"
        if audio_ext(data) is not None:
            return "audio"
        return None
    suffix = os.path.splitext(path or "")[1].lstrip(".").lower()
    return "image" if suffix in IMAGE_EXTS else "audio" if suffix in AUDIO_EXTS else None


def sample_binary_values(ds, exclude: tuple[str, ...] | list[str] = (),
                         rows: int = 16) -> dict[str, Any]:
    """The first non-null ``(bytes, path)`` of each binary or bytes/path struct column of
    ``ds`` (without HF feature type) within its first ``rows`` rows, for
    :func:`resolve_columns`."""
    found: dict[str, Any] = {}
    features = ds.features or {}
    columns = [c for c, f in features.items() if c not in exclude and
               _feature_kind(f) == "binary"]
    if not columns:
        return found
    table = next(iter(ds.select_columns(columns).with_format("arrow").iter(batch_size=rows)),
                 None)
    if table is None:
        return found
    for c in columns:
        col = table.column(c)
        if _is_bytes_path_struct(col.type):
            values = zip(pc.struct_field(col, "bytes").to_pylist(),
                         pc.struct_field(col, "path").to_pylist(), strict=True)
        else:
            values = ((v, None) for v in col.to_pylist())
        found[c] = next(((b, p) for b, p in values if b or p), None)
    return found


def resolve_columns(columns: list[str], features: Any = None, *, image: str | None = None,
                    audio: str | None = None, text: tuple[str, ...] | list[str] = (),
                    samples: dict[str, Any] | None = None,
                    drop: tuple[str, ...] | list[str] = ()) -> ColumnMap:
    """Pick the image, audio and text columns (named ones, or found from the features).

    Without names: the first Image feature, the first Audio feature, and the first string
    column whose name is in :data:`TEXT_COLUMN_NAMES` (else the first string column). A column
    without HF feature type is media by layout and content too: a binary column or a
    ``{bytes, path}`` struct whose first value (``samples``: column -> ``(bytes, path)``, see
    :func:`sample_binary_values`) starts with an image or audio signature. Other binary
    columns become members of their own (``binary``: ``<column>.bin``), never ``null`` in the
    ``.json``. Every other column goes into the sample's ``.json``; further image/audio columns
    and the ``drop`` columns are left out (``dropped``) and reported.

    Raises ColumnError naming a missing column and listing the existing ones, and for a column
    holding binary data nested inside another type (it cannot go into JSON), naming the flag
    that leaves it out.
    """
    columns = list(columns)
    for name in [image, audio, *text, *drop]:
        if name is not None and name not in columns:
            raise ColumnError(f"column {name!r} does not exist; the source has {columns}. "
                              f"Pass an existing name to --image-column/--audio-column/"
                              f"--text-column/--drop-column", key=name)
    kinds = {c: _feature_kind(features[c]) if features is not None and c in features else None
             for c in columns}
    typed = [c for c in columns if kinds[c] in ("image", "audio") and c not in drop]
    samples = samples or {}
    for c in columns:
        if kinds[c] in ("binary", None) and samples.get(c) is not None:
            kinds[c] = _content_kind(*samples[c]) or "binary"
    # an HF Image/Audio feature first, then a column found by its content
    ranked = typed + [c for c in columns if c not in typed and c not in drop]
    if image is None:
        image = next((c for c in ranked if kinds[c] == "image"), None)
    if audio is None:
        audio = next((c for c in ranked if kinds[c] == "audio"), None)
    if not text:
        strings = [c for c in columns if kinds[c] == "text" and c not in drop]
        named = [c for n in TEXT_COLUMN_NAMES for c in strings if c.lower() == n]
        if features is None:
            named = [c for n in TEXT_COLUMN_NAMES for c in columns if c.lower() == n]
        pick = named[:1] or strings[:1]
        text = tuple(pick)
    chosen = {image, audio, *text}
    dropped = tuple(c for c in columns if c not in chosen and
                    (c in drop or kinds[c] in ("image", "audio")))
    rest = [c for c in columns if c not in chosen and c not in dropped]
    nested = [c for c in rest if kinds[c] == "nested_binary"]
    if nested:
        raise ColumnError(
            f"column {nested[0]!r} holds binary data inside a {features[nested[0]]!r}, which "
            f"cannot be stored in the sample's .json. Leave it out with --drop-column "
            f"{nested[0]} (config drop_columns), or name it with --image-column/--audio-column "
            f"if it holds one encoded image or clip", key=nested[0])
    binary = tuple(c for c in rest if kinds[c] == "binary")
    extra = tuple(c for c in rest if c not in binary)
    return ColumnMap(image=image, audio=audio, text=tuple(text), extra=extra, dropped=dropped,
                     binary=binary)


def prepare(ds, columns: ColumnMap):
    """Cast the image/audio columns to ``decode=False`` and drop the unused media columns."""
    features = ds.features
    if features is not None:
        for col in (columns.image, columns.audio):
            if col is None:
                continue
            feat = features[col]
            if isinstance(feat, datasets.Image) and feat.decode:
                ds = ds.cast_column(col, datasets.Image(decode=False))
            elif isinstance(feat, datasets.Audio) and feat.decode:
                ds = ds.cast_column(col, datasets.Audio(decode=False))
    if columns.dropped:
        ds = ds.remove_columns(list(columns.dropped))
    return ds


def iter_rows(ds, columns: ColumnMap, batch_size: int = 64) -> Iterator[dict[str, Any]]:
    """Rows of ``ds`` as dicts of the mapped columns.

    With known features, rows come from Arrow record batches: each column is turned into a
    Python list once per batch and media columns are reduced to their bytes/path without a
    dict per row. Without features (a generator of Python objects), rows pass as they are.
    """
    wanted = [c for c in (columns.image, columns.audio, *columns.text, *columns.extra,
                          *columns.binary) if c]
    if ds.features is None:
        for row in ds:
            yield {c: row.get(c) for c in wanted}
        return
    media = {c for c in (columns.image, columns.audio, *columns.binary) if c}
    for table in ds.with_format("arrow").iter(batch_size=batch_size):
        lists: dict[str, list[Any]] = {}
        for c in wanted:
            col = table.column(c)
            if c in media and _is_bytes_path_struct(col.type):
                lists[c] = [{"bytes": b, "path": p} for b, p in zip(
                    pc.struct_field(col, "bytes").to_pylist(),
                    pc.struct_field(col, "path").to_pylist(), strict=True)]
            else:
                lists[c] = col.to_pylist()
        for i in range(table.num_rows):
            yield {c: lists[c][i] for c in wanted}


def _is_bytes_path_struct(t) -> bool:
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and \
        t.get_field_index("path") >= 0

