"""Hugging Face sources: open a dataset for streaming, map its columns, turn rows into samples.

The write path starts here: :func:`open_source` streams anything ``datasets.load_dataset``
accepts (a Hub id, a local folder, or a builder such as ``parquet`` with ``data_files``), with
Image and Audio columns cast to ``decode=False`` so encoded bytes pass through untouched.
:func:`resolve_columns` finds the image, audio and text columns from the features, and
:class:`RowEncoder` turns one row into the members of one WebDataset sample. Partitions are the
source's own shards (``IterableDataset.n_shards`` / ``.shard(n, i)``).

Rows are read as Arrow record batches (``with_format("arrow").iter(batch_size)``) and their
columns turned into Python lists once per batch, which is much cheaper than one dict per row.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import decimal
import io
import json
import logging
import os
import posixpath
import socket
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import ColumnError, HubUnreachableError, SkipSample, SourceError
from ..schema import audio_ext, image_ext

__all__ = [
    "SourceSpec",
    "ColumnMap",
    "open_source",
    "resolve_columns",
    "iter_rows",
    "RowEncoder",
    "encode_pil_image",
    "check_hub_reachable",
    "TEXT_COLUMN_NAMES",
]

log = logging.getLogger(__name__)

#: Column names taken as the text when no ``--text-column`` is given, in this order.
TEXT_COLUMN_NAMES = ("text", "caption", "captions", "sentence", "transcription", "transcript",
                     "prompt", "description", "content", "title")
#: Builders that read local ``data_files`` and never need the Hub.
_LOCAL_BUILDERS = ("parquet", "csv", "json", "text", "arrow", "webdataset", "imagefolder",
                   "audiofolder", "videofolder", "pandas", "xml", "sql")
#: Lossless PIL modes are saved as PNG; RGB/CMYK/YCbCr (photographs) as JPEG.
_JPEG_MODES = ("RGB", "CMYK", "YCbCr")
HUB_PROBE_TIMEOUT = 3.0


@dataclass(frozen=True)
class SourceSpec:
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


@dataclass(frozen=True)
class ColumnMap:
    """Which columns hold the image, the audio and the text; ``extra`` go into the ``.json``."""

    image: str | None = None
    audio: str | None = None
    text: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    dropped: tuple[str, ...] = field(default=())  # media columns besides the chosen ones
    template: str | None = None  # the text from ``text`` columns by a template (registry)


# --------------------------------------------------------------------------- opening

def _is_local_path(source: str) -> bool:
    return (source.startswith(("/", "./", "../", "~", "file://")) or os.path.isabs(source)
            or os.path.exists(source))


def _needs_hub(spec: SourceSpec) -> bool:
    if _is_local_path(spec.source):
        return False
    if spec.source in _LOCAL_BUILDERS and spec.data_files is not None:
        return False
    return True


def check_hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> None:
    """Raise HubUnreachableError within about ``timeout`` seconds when the Hub cannot be reached.

    Offline mode (``HF_HUB_OFFLINE=1``) counts as unreachable. Otherwise a plain TCP connect to
    ``HF_ENDPOINT`` (DNS included, in a thread so it cannot hang) stands in for the retries
    ``huggingface_hub`` would otherwise spend tens of seconds on.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise HubUnreachableError(
            "the Hugging Face Hub is disabled (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE to "
            "stream from the Hub, or convert a local folder or `parquet` with --data-files")
    endpoint = constants.ENDPOINT
    parsed = urllib.parse.urlparse(endpoint)
    host = parsed.hostname or endpoint
    port = parsed.port or (443 if parsed.scheme == "https" else 80)

    def probe() -> None:
        with socket.create_connection((host, port), timeout=timeout):
            pass

    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        pool.submit(probe).result(timeout=timeout + 0.5)
    except (OSError, concurrent.futures.TimeoutError) as exc:
        raise HubUnreachableError(
            f"cannot reach the Hugging Face Hub at {endpoint} ({type(exc).__name__}: {exc}). "
            f"Check the network or HF_ENDPOINT, or convert a local copy (a folder, or "
            f"`parquet` with --data-files)", url=endpoint) from exc
    finally:
        pool.shutdown(wait=False)


def _map_load_error(exc: BaseException, spec: SourceSpec) -> Exception:
    text = f"{type(exc).__name__}: {exc}"
    if "Couldn't reach" in text or "OfflineMode" in text or "ConnectionError" in text \
            or "ConnectTimeout" in text or "Connection refused" in text:
        return HubUnreachableError(
            f"cannot reach the Hugging Face Hub for {spec.source!r} ({exc}). Check the network "
            f"or HF_ENDPOINT/HF_HUB_OFFLINE, or convert a local copy", url=spec.source)
    if isinstance(exc, (FileNotFoundError, ValueError)) or "NotFound" in text \
            or "doesn't exist" in text or "does not exist" in text:
        return SourceError(
            f"source {spec.source!r} (config={spec.name!r}, split={spec.split!r}, "
            f"data_files={spec.data_files!r}) does not exist or has no data: {exc}. Check the "
            f"dataset id, folder, config name, split and --data-files patterns",
            url=spec.source)
    return SourceError(f"cannot open source {spec.source!r}: {text}", url=spec.source)


def open_source(spec: SourceSpec, *, check_hub: bool = True):
    """``datasets.load_dataset(..., streaming=True)`` for ``spec``, as an IterableDataset.

    Raises SourceError for a source that does not exist, and HubUnreachableError (fast) when
    the source needs the Hub and the Hub cannot be reached.
    """
    import datasets

    if _is_local_path(spec.source) and not os.path.exists(os.path.expanduser(
            spec.source.removeprefix("file://"))):
        raise SourceError(f"source folder {spec.source!r} does not exist; give an existing "
                          f"local folder, a Hub id, or a builder such as `parquet` with "
                          f"--data-files", url=spec.source)
    if check_hub and _needs_hub(spec):
        check_hub_reachable()
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


# --------------------------------------------------------------------------- columns

def _feature_kind(feature: Any) -> str | None:
    import datasets

    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Audio):
        return "audio"
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return "text"
    return None


def resolve_columns(columns: list[str], features: Any = None, *, image: str | None = None,
                    audio: str | None = None, text: tuple[str, ...] | list[str] = ()) -> ColumnMap:
    """Pick the image, audio and text columns (named ones, or found from the features).

    Without names: the first Image feature, the first Audio feature, and the first string
    column whose name is in :data:`TEXT_COLUMN_NAMES` (else the first string column). Every
    other column goes into the sample's ``.json``; further Image/Audio columns are dropped
    (their bytes do not belong in JSON) and reported. Raises ColumnError naming a missing column
    and listing the existing ones.
    """
    columns = list(columns)
    for name in [image, audio, *text]:
        if name is not None and name not in columns:
            raise ColumnError(f"column {name!r} does not exist; the source has {columns}. "
                              f"Pass an existing name to --image-column/--audio-column/"
                              f"--text-column", key=name)
    kinds = {c: _feature_kind(features[c]) if features is not None and c in features else None
             for c in columns}
    if image is None:
        image = next((c for c in columns if kinds[c] == "image"), None)
    if audio is None:
        audio = next((c for c in columns if kinds[c] == "audio"), None)
    if not text:
        strings = [c for c in columns if kinds[c] == "text"]
        named = [c for n in TEXT_COLUMN_NAMES for c in strings if c.lower() == n]
        if features is None:
            named = [c for n in TEXT_COLUMN_NAMES for c in columns if c.lower() == n]
        pick = named[:1] or strings[:1]
        text = tuple(pick)
    chosen = {image, audio, *text}
    dropped = tuple(c for c in columns if c not in chosen and kinds[c] in ("image", "audio"))
    extra = tuple(c for c in columns if c not in chosen and c not in dropped)
    return ColumnMap(image=image, audio=audio, text=tuple(text), extra=extra, dropped=dropped)


def prepare(ds, columns: ColumnMap):
    """Cast the image/audio columns to ``decode=False`` and drop the unused media columns."""
    import datasets

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
    wanted = [c for c in (columns.image, columns.audio, *columns.text, *columns.extra) if c]
    if ds.features is None:
        for row in ds:
            yield {c: row.get(c) for c in wanted}
        return
    import pyarrow.compute as pc

    media = {c for c in (columns.image, columns.audio) if c}
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
    import pyarrow as pa

    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and \
        t.get_field_index("path") >= 0


# --------------------------------------------------------------------------- rows -> samples

def encode_pil_image(img) -> tuple[str, bytes]:
    """Encode a decoded PIL image once: JPEG (quality 95) for RGB/CMYK/YCbCr, PNG otherwise.

    PNG keeps lossless modes (L, LA, P, RGBA, I, 1...) exact; modes PNG cannot hold (F, ...)
    are written as TIFF. Returns ``(ext, bytes)``.
    """
    buf = io.BytesIO()
    if img.mode in _JPEG_MODES:
        img.save(buf, format="JPEG", quality=95)
        return "jpg", buf.getvalue()
    try:
        img.save(buf, format="PNG")
        return "png", buf.getvalue()
    except OSError:
        buf = io.BytesIO()
        img.save(buf, format="TIFF")
        return "tiff", buf.getvalue()


def _encode_array_audio(value: dict) -> tuple[str, bytes]:
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    array = np.asarray(value["array"], dtype=np.float32)
    if array.ndim == 2 and array.shape[0] < array.shape[1]:  # (channels, samples)
        array = array.T
    sf.write(buf, array, int(value["sampling_rate"]), format="FLAC", subtype="PCM_16")
    return "flac", buf.getvalue()


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None  # binary data does not belong in JSON; dropped
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _json_safe(value.tolist())
    return str(value)


def _read_path(path: str) -> bytes:
    import fsspec

    with fsspec.open(path, "rb") as f:
        return f.read()


class RowEncoder:
    """Turn one row (a dict of mapped columns) into WebDataset members.

    ``txt``: the text column(s), joined by newlines, or formed by ``columns.template``. ``json``: ``{"source": name, ...other
    columns}`` made JSON-safe. The image goes under its own format's extension and the audio
    likewise, byte for byte when they arrive encoded. A row whose image or audio is missing
    its bytes or fails a cheap header check (PIL ``open`` + ``verify``; soundfile ``info``),
    raises :class:`SkipSample` with the reason (``bad_image``, ``bad_audio``, ...).
    """

    def __init__(self, columns: ColumnMap, source_name: str, *, verify: bool = True):
        self.columns = columns
        self.source_name = source_name
        self.verify = verify
        self._template = None
        if columns.template:
            from ..registry import TextTemplate

            self._template = TextTemplate(columns.template, f"text template of {source_name}")

    def __call__(self, row: dict[str, Any], key: str) -> dict[str, bytes]:
        fields: dict[str, bytes] = {}
        cols = self.columns
        if cols.template:
            fields["txt"] = self._template.render(row).encode()
        elif cols.text:
            parts = [row.get(c) for c in cols.text]
            fields["txt"] = "\n".join("" if p is None else str(p) for p in parts).encode()
        meta: dict[str, Any] = {"source": self.source_name}
        for c in cols.extra:
            meta[c] = _json_safe(row.get(c))
        fields["json"] = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()
        if cols.image is not None and row.get(cols.image) is not None:
            ext, data = self._image(row[cols.image], key)
            fields[ext] = data
        if cols.audio is not None and row.get(cols.audio) is not None:
            ext, data = self._audio(row[cols.audio], key)
            fields[ext] = data
        return fields

    def _image(self, value: Any, key: str) -> tuple[str, bytes]:
        from PIL import Image

        if isinstance(value, Image.Image):
            return encode_pil_image(value)
        data, path = _encoded_bytes(value, key, "image")
        ext = image_ext(data)
        if self.verify or ext is None:
            try:
                with Image.open(io.BytesIO(data)) as img:
                    fmt = img.format
                    img.verify()
            except Exception as exc:
                raise SkipSample("bad_image", key=key) from exc
            if ext is None:
                ext = {"JPEG": "jpg", "TIFF": "tiff"}.get(fmt or "", (fmt or "img").lower())
        return ext, data

    def _audio(self, value: Any, key: str) -> tuple[str, bytes]:
        if isinstance(value, dict) and value.get("array") is not None:
            return _encode_array_audio(value)
        data, path = _encoded_bytes(value, key, "audio")
        ext = audio_ext(data)
        if ext is None and path:
            suffix = posixpath.splitext(path)[1].lstrip(".").lower()
            ext = suffix or None
        if self.verify:
            import soundfile as sf

            try:
                sf.info(io.BytesIO(data))
            except Exception as exc:
                if ext not in ("mp3", "ogg", "opus", "flac", "wav", None):
                    # A format libsndfile does not read (m4a, aac...): keep it, unverified.
                    return ext, data
                raise SkipSample("bad_audio", key=key) from exc
        if ext is None:
            raise SkipSample("unknown_audio_format", key=key)
        return ext, data


def _encoded_bytes(value: Any, key: str, kind: str) -> tuple[bytes, str | None]:
    """The encoded bytes of an image/audio cell (read from its path when it has no bytes).
    Raises SkipSample(``<kind>_unreadable`` / ``<kind>_empty``)."""
    data, path = _bytes_and_path(value)
    if data is None and path:
        try:
            data = _read_path(path)
        except OSError as exc:
            raise SkipSample(f"{kind}_unreadable", key=key) from exc
    if not data:
        raise SkipSample(f"{kind}_empty", key=key)
    return data, path


def _bytes_and_path(value: Any) -> tuple[bytes | None, str | None]:
    if isinstance(value, dict):
        return value.get("bytes"), value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, str):
        return None, value
    return None, None
