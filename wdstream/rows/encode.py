"""Rows to samples: one row of mapped columns becomes the members of one WebDataset sample.

:class:`RowEncoder` turns a row (the columns a :class:`~wdstream.rows.columns.ColumnMap`
names) into ``{ext: bytes}`` members: encoded images and audio pass through byte for byte under
their own format's extension; decoded ones (PIL images, audio arrays) are encoded once. The
text comes from the text columns or from a :class:`~wdstream.rows.template.TextTemplate` over
them; ``extra`` columns go into the ``.json`` and binary columns become ``<column>.bin``
members, so no byte is lost. A cell given by path is read only inside the source's own folders
or allowed ones (:mod:`wdstream.rows.paths`).
"""

from __future__ import annotations

import datetime
import decimal
import io
import json
import logging
import posixpath
from typing import Any

from .. import storage
from ..errors import ColumnError, SkipSample, redact
from ..format.schema import AUDIO_EXTS, audio_ext, image_ext
from ..format.tario import MAX_MEMBER_BYTES
from .columns import ColumnMap, binary_member, check_member_names, json_key
from .paths import PathOutsideSource, ReadRoots
from .template import TextTemplate
from .validate import (
    SOUNDFILE_EXT,
    audio_is_complete,
    decode_audio,
    decode_image,
    image_is_complete,
)

__all__ = ["RowEncoder", "encode_pil_image", "encoded_bytes"]

log = logging.getLogger(__name__)

#: Audio formats soundfile cannot open; kept unverified (there is no decoder here to check).
_UNVERIFIABLE_AUDIO = ("m4a", "aac", "mp4", "wma")
#: Lossless PIL modes are saved as PNG; RGB/CMYK/YCbCr (photographs) as JPEG.
_JPEG_MODES = ("RGB", "CMYK", "YCbCr")


class _BinaryValue(TypeError):
    """Binary data met where JSON is written (raised by :func:`_json_safe`)."""


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
        raise _BinaryValue  # never dropped silently: the caller names the column
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _json_safe(value.tolist())
    return str(value)


def _read_path(path: str) -> bytes:
    # no storage options: the output's credentials are never sent where a dataset points
    return storage.read_bytes(path, max_bytes=MAX_MEMBER_BYTES)


class RowEncoder:
    """Turn one row (a dict of mapped columns) into WebDataset members.

    ``txt``: the text column(s), joined by newlines, or formed by ``columns.template``.
    ``json``: ``{"source": name, ...other columns}`` made JSON-safe (a column named
    ``source`` goes under ``source_column``: :func:`~wdstream.rows.columns.json_key`); a
    binary column: ``<column>.bin`` (:func:`~wdstream.rows.columns.binary_member`). A cell
    given by path is read only inside ``paths`` (:class:`~wdstream.rows.paths.ReadRoots`;
    None: nowhere), else its row raises :class:`~wdstream.rows.paths.PathOutsideSource`
    (``path_outside_source``; the first one is logged with its column). The image goes under its
    own format's extension and the audio likewise, byte for byte when they arrive encoded;
    ``columns.image_ext``/``audio_ext`` name every one with that extension instead (the bytes
    stay as they are). A row whose image or audio is missing its bytes or fails the checks of
    :mod:`wdstream.rows.validate` (``validate="cheap"``: the file is not cut short, PIL
    ``verify``, soundfile ``info``; ``"full"``: decoded whole; ``verify=False`` skips them)
    raises :class:`~wdstream.errors.SkipSample` with the reason (``bad_image``, ``bad_audio``,
    ...); so does a row with a member over ``format.tario.MAX_MEMBER_BYTES``
    (``member_too_large``). A column holding binary data inside another type, or two columns
    that would give one member, raise :class:`~wdstream.errors.ColumnError`.
    """

    def __init__(
        self,
        columns: ColumnMap,
        source_name: str,
        *,
        verify: bool = True,
        validate: str = "cheap",
        paths: ReadRoots | None = None,
    ):
        self.columns = columns
        self.source_name = source_name
        self.verify = verify
        self.validate = validate
        self.paths = paths if paths is not None else ReadRoots()
        self._outside_logged = False
        check_member_names(columns)
        self._template = (
            TextTemplate(columns.template, f"text template of {source_name}")
            if columns.template
            else None
        )

    def __call__(self, row: dict[str, Any], key: str) -> dict[str, bytes]:
        fields: dict[str, bytes] = {}
        cols = self.columns
        if cols.template:
            fields["txt"] = self._template.render(row).encode()
        elif cols.text:
            parts = [row.get(c) for c in cols.text]
            fields["txt"] = "\n".join("" if p is None else str(p) for p in parts).encode()
        meta: dict[str, Any] = {"source": self.source_name}
        binary: dict[str, str] = {}  # member -> the column it came from
        for c in cols.extra:
            value = row.get(c)
            if isinstance(value, (bytes, bytearray, memoryview)):
                self._put_binary(fields, binary, c, bytes(value))  # a source without features
                continue
            try:
                meta[json_key(c)] = _json_safe(value)
            except _BinaryValue:
                raise ColumnError(
                    f"column {c!r} holds binary data inside a {type(value).__name__}, which "
                    f"cannot be stored in the sample's .json (row {key}). Name it with "
                    f"--image-column/--audio-column if it holds an encoded image or clip, or "
                    f"leave it out with --drop-column {c} (config drop_columns)",
                    key=c,
                ) from None
        for c in cols.binary:
            value = row.get(c)
            if value is not None:
                data, path = _bytes_and_path(value)
                if data is None and path:
                    data, path = self._encoded(value, key, "binary", c)
                if data is not None:
                    self._put_binary(fields, binary, c, data)
        fields["json"] = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()
        if cols.image is not None and row.get(cols.image) is not None:
            ext, data = self._image(row[cols.image], key)
            fields[cols.image_ext or ext] = data
        if cols.audio is not None and row.get(cols.audio) is not None:
            ext, data = self._audio(row[cols.audio], key)
            fields[cols.audio_ext or ext] = data
        for data in fields.values():
            if len(data) > MAX_MEMBER_BYTES:  # readers skip members this large (max_member_bytes)
                raise SkipSample("member_too_large", key=key)
        return fields

    def _put_binary(
        self, fields: dict[str, bytes], binary: dict[str, str], column: str, data: bytes
    ) -> None:
        """``column``'s bytes as its own member; a member another column already gave (two
        names made the same safe name) stops the job: one column's bytes would be lost."""
        member = binary_member(column)
        if member in binary:
            raise ColumnError(
                f"columns {binary[member]!r} and {column!r} would both be written as the member "
                f".{member}, and one would overwrite the other. Leave one out with --drop-column "
                f"(config drop_columns), or rename it in the source",
                key=column,
            )
        binary[member] = column
        fields[member] = data

    def _encoded(self, value: Any, key: str, kind: str, column: str) -> tuple[bytes, str | None]:
        """:func:`encoded_bytes` within ``self.paths``; the first path outside it is logged
        with its column."""
        try:
            return encoded_bytes(value, key, kind, self.paths)
        except PathOutsideSource as exc:
            if not self._outside_logged:
                self._outside_logged = True
                log.warning(
                    "column %r of %s names the file %s, outside the source's folders: not "
                    "read; such rows are skipped and counted as path_outside_source. If you "
                    "trust it, allow its folder with --allow-path DIR (config allow_paths)",
                    column,
                    self.source_name,
                    redact(exc.path),
                )
            raise

    def _image(self, value: Any, key: str) -> tuple[str, bytes]:
        from PIL import Image

        if isinstance(value, Image.Image):
            return encode_pil_image(value)
        data, path = self._encoded(value, key, "image", self.columns.image)
        ext = image_ext(data)
        if self.verify or ext is None:
            if ext is not None and not image_is_complete(ext, data):
                raise SkipSample("bad_image", key=key)  # cut short: header intact, end gone
            try:
                if self.validate == "full":
                    fmt = decode_image(data)
                else:
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
        data, path = self._encoded(value, key, "audio", self.columns.audio)
        ext = audio_ext(data)
        if not self.verify:
            if ext is None and path:  # only an audio extension: never txt, json or an image's
                ext = posixpath.splitext(path)[1].lstrip(".").lower() or None
                ext = ext if ext in AUDIO_EXTS else None
            if ext is None:
                raise SkipSample("unknown_audio_format", key=key)
            return ext, data
        import soundfile as sf

        try:
            info = sf.info(io.BytesIO(data))
        except Exception as exc:
            suffix = posixpath.splitext(path or "")[1].lstrip(".").lower()
            if ext in _UNVERIFIABLE_AUDIO or (ext is None and suffix in _UNVERIFIABLE_AUDIO):
                # a format libsndfile does not read (m4a, aac...): kept, unverified
                return ext or suffix, data
            if ext is None:
                raise SkipSample("unknown_audio_format", key=key) from exc
            raise SkipSample("bad_audio", key=key) from exc
        if ext is None:  # no signature we know, but soundfile reads it: its format names it
            ext = SOUNDFILE_EXT.get(str(info.format).upper())
            if ext is None:
                raise SkipSample("unknown_audio_format", key=key)
        if not audio_is_complete(ext, data):
            raise SkipSample("bad_audio", key=key)
        if self.validate == "full":
            try:
                decode_audio(data)
            except Exception as exc:
                raise SkipSample("bad_audio", key=key) from exc
        return ext, data


def encoded_bytes(
    value: Any, key: str, kind: str, paths: ReadRoots | None = None
) -> tuple[bytes, str | None]:
    """The encoded bytes of an image/audio cell, read from its path when it has no bytes and
    the path lies inside ``paths`` (None: nowhere). Raises PathOutsideSource
    (``path_outside_source``), SkipSample(``<kind>_unreadable`` / ``<kind>_empty``)."""
    data, path = _bytes_and_path(value)
    if data is None and path:
        where = (paths or ReadRoots()).resolve(path)
        if where is None:
            raise PathOutsideSource(path, key=key)
        try:
            data = _read_path(where)
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
