"""The sample layout: keys, and which member extension holds which modality.

A sample is ``{"__key__": key, "txt": bytes, "json": bytes, <image ext>: bytes,
<audio ext>: bytes}``. Keys have no dots (WebDataset splits the member name at the first dot).
The extension of an encoded image or audio member is its own format's, found from its bytes.
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = [
    "IMAGE_EXTS",
    "AUDIO_EXTS",
    "TEXT_EXTS",
    "make_key",
    "image_ext",
    "audio_ext",
    "modality_of",
    "find_member",
]

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm")
AUDIO_EXTS = ("flac", "wav", "mp3", "ogg", "opus")
TEXT_EXTS = ("txt", "text", "caption", "transcript")

_MODALITY = {**{e: "image" for e in IMAGE_EXTS}, **{e: "audio" for e in AUDIO_EXTS},
             **{e: "text" for e in TEXT_EXTS}, "json": "json"}
MODALITY_BY_EXT = MappingProxyType(_MODALITY)


def make_key(partition: int, row: int) -> str:
    """Deterministic, unique, dot-free key: the partition and the row within it."""
    return f"{partition:05d}_{row:09d}"


def image_ext(data: bytes) -> str | None:
    """The file extension of an encoded image, from its magic bytes; ``None`` if unknown."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def audio_ext(data: bytes) -> str | None:
    """The file extension of encoded audio, from its magic bytes; ``None`` if unknown."""
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"OggS":
        return "opus" if b"OpusHead" in data[:64] else "ogg"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0):
        return "mp3"
    return None


def modality_of(ext: str) -> str | None:
    """``"image"``, ``"audio"``, ``"text"``, ``"json"`` or ``None`` for a member extension."""
    return MODALITY_BY_EXT.get(ext.lower().rsplit(".", 1)[-1])


def find_member(sample: dict, modality: str) -> tuple[str, bytes] | None:
    """The first member of ``sample`` that holds ``modality``, as ``(ext, bytes)``."""
    for ext, value in sample.items():
        if ext.startswith("__"):
            continue
        if modality_of(ext) == modality:
            return ext, value
    return None
