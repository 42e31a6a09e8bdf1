"""Columns of a Hugging Face dataset -> member names: which column holds the image, the audio
and the text, and how each column becomes a member of the sample.

:func:`resolve_columns` finds the image, audio and text columns from the features, and from
the layout and content of columns without HF feature types (a parquet written by plain
pyarrow); the answer is a :class:`ColumnMap`. The image and the audio go under their format's
extension, the text under ``txt``, ``extra`` columns into the ``.json`` and other binary
columns under :func:`binary_member` (``<column>.bin``), so no byte is lost. :func:`prepare`
casts the media columns to ``decode=False`` (encoded bytes pass through untouched) and
:func:`iter_rows` reads the mapped columns as Arrow record batches, turned into Python lists
once per batch, which is much cheaper than one dict per row.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ColumnError
from ..format.schema import AUDIO_EXTS, IMAGE_EXTS, audio_ext, image_ext

__all__ = [
    "ColumnMap",
    "binary_member",
    "json_key",
    "check_member_names",
    "SOURCE_KEY",
    "TEXT_COLUMN_NAMES",
    "resolve_columns",
    "sample_binary_values",
    "prepare",
    "iter_rows",
]

#: Column names taken as the text when no ``--text-column`` is given, in this order.
TEXT_COLUMN_NAMES = (
    "text",
    "caption",
    "captions",
    "sentence",
    "transcription",
    "transcript",
    "prompt",
    "description",
    "content",
    "title",
)


@dataclass(frozen=True)
class ColumnMap:
    """Which column becomes which member: the image and the audio (under their format's
    extension, or ``image_ext``/``audio_ext``), the text (``txt``, from ``text`` or by
    ``template``); ``extra`` columns go into the ``.json``, ``binary`` ones become
    ``<column>.bin`` (:func:`binary_member`) and ``dropped`` ones are left out."""

    image: str | None = None
    audio: str | None = None
    text: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    dropped: tuple[str, ...] = field(default=())  # media columns besides the chosen ones
    template: str | None = None  # the text from ``text`` columns by a template (registry)
    image_ext: str | None = None  # one member name for every image (bytes untouched)
    audio_ext: str | None = None  # one member name for every audio clip (bytes untouched)
    binary: tuple[str, ...] = ()  # other binary columns: a member each, ``<column>.bin``


def binary_member(column: str) -> str:
    """The member extension of a binary column: ``<column>.bin``, the name made safe (no dots,
    slashes or spaces; WebDataset splits a member name at its first dot)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", column).strip("_") or "column"
    return f"{safe}.bin"


#: The ``.json`` key of the dataset's name; a column of that name goes under ``source_column``.
SOURCE_KEY = "source"
_SOURCE_COLUMN_KEY = "source_column"


def json_key(column: str) -> str:
    """The key of column ``column`` in the sample's ``.json``: its name, except that a column
    named ``source`` goes under ``source_column`` (``source`` holds the dataset's name, which
    readers use to label and mix samples)."""
    return _SOURCE_COLUMN_KEY if column == SOURCE_KEY else column


def check_member_names(columns: ColumnMap) -> None:
    """Raise ColumnError when two columns would be written under one name, one overwriting
    the other in every row: two binary columns whose safe names are equal (``a.b`` and
    ``a b`` are both ``a_b.bin``), or a column named ``source`` beside one named
    ``source_column`` (both are ``source_column`` in the ``.json``). The other members cannot
    collide: ``txt`` and ``json`` are fixed, the image's and the audio's extensions are from
    disjoint lists, and binary members end in ``.bin``, which none of those do."""
    seen: dict[str, str] = {}
    for c in columns.binary:
        member = binary_member(c)
        if member in seen:
            raise ColumnError(
                f"columns {seen[member]!r} and {c!r} would both be written as the member "
                f".{member} (a member name keeps letters, digits, '_' and '-'), so one would "
                f"overwrite the other in every row. Leave one out with --drop-column "
                f"{c!r} (config drop_columns), or rename it in the source",
                key=c,
            )
        seen[member] = c
    if SOURCE_KEY in columns.extra and _SOURCE_COLUMN_KEY in columns.extra:
        raise ColumnError(
            f"columns {SOURCE_KEY!r} and {_SOURCE_COLUMN_KEY!r} would both be stored under "
            f"{_SOURCE_COLUMN_KEY!r} in the sample's .json ({SOURCE_KEY!r} holds the "
            f"dataset's name there). Leave one out with --drop-column {_SOURCE_COLUMN_KEY} "
            f"(config drop_columns), or rename it in the source",
            key=_SOURCE_COLUMN_KEY,
        )


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
    return (
        isinstance(feature, dict)
        and "bytes" in feature
        and "path" in feature
        and isinstance(feature["bytes"], datasets.Value)
        and feature["bytes"].dtype in ("binary", "large_binary")
    )


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


def sample_binary_values(
    ds, exclude: tuple[str, ...] | list[str] = (), rows: int = 16
) -> dict[str, Any]:
    """The first non-null ``(bytes, path)`` of each binary or bytes/path struct column of
    ``ds`` (without HF feature type) within its first ``rows`` rows, for
    :func:`resolve_columns`."""
    found: dict[str, Any] = {}
    features = ds.features or {}
    columns = [c for c, f in features.items() if c not in exclude and _feature_kind(f) == "binary"]
    if not columns:
        return found
    table = next(iter(ds.select_columns(columns).with_format("arrow").iter(batch_size=rows)), None)
    if table is None:
        return found
    for c in columns:
        col = table.column(c)
        if _is_bytes_path_struct(col.type):
            values = zip(
                pc.struct_field(col, "bytes").to_pylist(),
                pc.struct_field(col, "path").to_pylist(),
                strict=True,
            )
        else:
            values = ((v, None) for v in col.to_pylist())
        found[c] = next(((b, p) for b, p in values if b or p), None)
    return found


def resolve_columns(
    columns: list[str],
    features: Any = None,
    *,
    image: str | None = None,
    audio: str | None = None,
    text: tuple[str, ...] | list[str] = (),
    samples: dict[str, Any] | None = None,
    drop: tuple[str, ...] | list[str] = (),
) -> ColumnMap:
    """Pick the image, audio and text columns (named ones, or found from the features).

    Without names: the first Image feature, the first Audio feature, and the first string
    column whose name is in :data:`TEXT_COLUMN_NAMES` (else the first string column). A column
    without HF feature type is media by layout and content too: a binary column or a
    ``{bytes, path}`` struct whose first value (``samples``: column -> ``(bytes, path)``, see
    :func:`sample_binary_values`) starts with an image or audio signature. Other binary
    columns become members of their own (``binary``: ``<column>.bin``), never ``null`` in the
    ``.json``. Every other column goes into the sample's ``.json``; further image/audio columns
    and the ``drop`` columns are left out (``dropped``) and reported.

    Raises ColumnError naming a missing column and listing the existing ones, for a column
    holding binary data nested inside another type (it cannot go into JSON), and for two
    columns that would be written under one name (:func:`check_member_names`), naming the
    flag that leaves one out.
    """
    columns = list(columns)
    for name in [image, audio, *text, *drop]:
        if name is not None and name not in columns:
            raise ColumnError(
                f"column {name!r} does not exist; the source has {columns}. "
                f"Pass an existing name to --image-column/--audio-column/"
                f"--text-column/--drop-column",
                key=name,
            )
    kinds = {
        c: _feature_kind(features[c]) if features is not None and c in features else None
        for c in columns
    }
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
    dropped = tuple(
        c for c in columns if c not in chosen and (c in drop or kinds[c] in ("image", "audio"))
    )
    rest = [c for c in columns if c not in chosen and c not in dropped]
    nested = [c for c in rest if kinds[c] == "nested_binary"]
    if nested:
        raise ColumnError(
            f"column {nested[0]!r} holds binary data inside a {features[nested[0]]!r}, which "
            f"cannot be stored in the sample's .json. Leave it out with --drop-column "
            f"{nested[0]} (config drop_columns), or name it with --image-column/--audio-column "
            f"if it holds one encoded image or clip",
            key=nested[0],
        )
    binary = tuple(c for c in rest if kinds[c] == "binary")
    extra = tuple(c for c in rest if c not in binary)
    found = ColumnMap(
        image=image, audio=audio, text=tuple(text), extra=extra, dropped=dropped, binary=binary
    )
    check_member_names(found)
    return found


def prepare(ds, columns: ColumnMap):
    """Cast the image/audio columns to ``decode=False`` and remove the ``dropped`` columns.

    The chosen image and audio pass their encoded bytes through untouched. Dropped media
    columns are cast too: ``datasets`` decodes every column of a row before it removes any,
    which would decode each dropped image, and fail on a dropped clip where no audio decoder
    (torchcodec) is installed.
    """
    features = ds.features
    if features is not None:
        for col in (columns.image, columns.audio, *columns.dropped):
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
    wanted = [
        c
        for c in (columns.image, columns.audio, *columns.text, *columns.extra, *columns.binary)
        if c
    ]
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
                lists[c] = [
                    {"bytes": b, "path": p}
                    for b, p in zip(
                        pc.struct_field(col, "bytes").to_pylist(),
                        pc.struct_field(col, "path").to_pylist(),
                        strict=True,
                    )
                ]
            else:
                lists[c] = col.to_pylist()
        for i in range(table.num_rows):
            yield {c: lists[c][i] for c in wanted}


def _is_bytes_path_struct(t) -> bool:
    return (
        pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and t.get_field_index("path") >= 0
    )
