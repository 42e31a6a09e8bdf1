"""The data files behind a source's shards, so a worker opens only its own.

``datasets`` resolves every data file of a source when it opens it (about 0.4 ms a file: 40 s
at 100k files, in every process). A source whose shards are its data files (parquet, arrow) is
resolved once, by the driver (:func:`source_files`); each partition carries the few files it
reads (:func:`file_group`) and opens only those (:func:`open_files`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import datasets

from ...rows.source import HFSource, map_load_error

__all__ = ["FILE_BUILDERS", "SourceFiles", "source_files", "file_group", "open_files"]

#: Builders whose streaming shards are plain data files, one per shard, that
#: ``load_dataset(builder, data_files=...)`` reads the same way from a list of them.
FILE_BUILDERS = ("parquet", "arrow")
_CONFIG_FIELDS_NOT_OPTIONS = (
    "name",
    "version",
    "data_dir",
    "data_files",
    "description",
    "features",
)


@dataclass(frozen=True)
class SourceFiles:
    """The data files a worker opens instead of resolving the whole source: the builder, its
    non-default options and the source's features (so every partition's rows are cast exactly
    as the whole source's would be), and the ``paths`` it reads."""

    builder: str
    options: tuple[tuple[str, Any], ...]
    features: Any  # datasets.Features of the whole source
    paths: tuple[str, ...]


def source_files(ds) -> SourceFiles | None:
    """The data files behind ``ds``'s shards, one per shard, in order; None when its shards
    are not plain data files of a :data:`FILE_BUILDERS` builder (then a worker opens the
    whole source)."""
    ex = getattr(ds, "_ex_iterable", None)
    kwargs = getattr(ex, "kwargs", None)
    fn = getattr(ex, "generate_tables_fn", None) or getattr(ex, "generate_examples_fn", None)
    builder = getattr(fn, "__self__", None)
    config = getattr(builder, "config", None)
    name = getattr(getattr(ds, "info", None), "builder_name", None)
    if (
        not isinstance(kwargs, dict)
        or config is None
        or name not in FILE_BUILDERS
        or ds.features is None
        or set(kwargs) - {"files", "row_groups_list"}
    ):
        return None
    files = kwargs.get("files")
    if (
        not isinstance(files, list)
        or not files
        or len(files) != ds.n_shards
        or not all(isinstance(f, str) for f in files)
        or any(g is not None for g in kwargs.get("row_groups_list") or ())
    ):
        return None
    try:
        defaults = type(config)()
        options = tuple(
            (f.name, getattr(config, f.name))
            for f in dataclasses.fields(config)
            if f.name not in _CONFIG_FIELDS_NOT_OPTIONS
            and getattr(config, f.name) != getattr(defaults, f.name)
        )
    except Exception:  # a config that cannot be compared: open the whole source instead
        return None
    return SourceFiles(builder=name, options=options, features=ds.features, paths=tuple(files))


def file_group(n_files: int, n_groups: int, index: int) -> range:
    """The files of group ``index`` when ``n_files`` are split into ``n_groups`` contiguous
    groups, the first ones one larger: ``IterableDataset.shard(n_groups, index,
    contiguous=True)``'s arithmetic."""
    div, mod = divmod(n_files, n_groups)
    start = div * index + min(index, mod)
    return range(start, start + div + (1 if index < mod else 0))


def open_files(spec: HFSource, files: SourceFiles):
    """The rows of ``files.paths`` only, as ``ds.shard(...)`` of the whole source would give
    them (same order, same features). Raises what :func:`~wdstream.rows.source.open_source`
    raises for ``spec``."""
    try:
        return datasets.load_dataset(
            files.builder,
            data_files={spec.split: list(files.paths)},
            split=spec.split,
            streaming=True,
            features=files.features,
            **dict(files.options),
        )
    except Exception as exc:  # datasets raises many types; map them onto ours
        raise map_load_error(exc, spec) from exc
