"""Checks of encoded images and audio at conversion, so a broken file is skipped and counted
once here instead of by every reader, every epoch.

``cheap`` (the default) costs a scan of the bytes and a header parse: a JPEG must end with its
EOI marker after its last scan (trailing padding or appended data allowed), a PNG must hold its
IEND chunk, a GIF must end with its trailer, a WebP/BMP/WAV/AIFF must be at least as long as
its header says; then PIL's ``verify`` (images) or soundfile's ``info`` (audio). ``full``
decodes every image and every clip completely.
"""

from __future__ import annotations

import io

__all__ = [
    "VALIDATE_LEVELS",
    "image_is_complete",
    "audio_is_complete",
    "decode_image",
    "decode_audio",
    "SOUNDFILE_EXT",
]

VALIDATE_LEVELS = ("cheap", "full")

#: soundfile's ``info.format`` -> the extension the member is written under.
SOUNDFILE_EXT = {
    "WAV": "wav",
    "WAVEX": "wav",
    "RF64": "wav",
    "FLAC": "flac",
    "OGG": "ogg",
    "MP3": "mp3",
    "MPEG": "mp3",
    "AIFF": "aiff",
    "W64": "w64",
    "CAF": "caf",
    "AU": "au",
    "NIST": "nist",
    "VOC": "voc",
    "SVX": "svx",
    "IRCAM": "ircam",
    "PAF": "paf",
    "HTK": "htk",
    "XI": "xi",
    "AVR": "avr",
    "WVE": "wve",
    "SDS": "sds",
    "MPC2K": "mpc2k",
    "PVF": "pvf",
}

_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk's type and its (constant) CRC


def _declared_size_fits(data: bytes, little: bool) -> bool:
    """RIFF/FORM-style files: bytes 4..8 hold the size after the first 8 bytes."""
    size = int.from_bytes(data[4:8], "little" if little else "big")
    if size in (0, 0xFFFFFFFF):  # streamed writers leave it unset
        return True
    return len(data) >= size + 8


def image_is_complete(ext: str, data: bytes) -> bool:
    """False when the bytes of an image of format ``ext`` are visibly cut short."""
    if ext in ("jpg", "jpeg"):
        # the main image's EOI comes after its last start-of-scan; an EXIF thumbnail's EOI
        # comes before it, so a truncated file does not pass by its thumbnail
        return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") >= 0
    if ext == "png":
        return data.rfind(_PNG_IEND) > 8
    if ext == "gif":
        return data.rstrip(b"\x00").endswith(b";")
    if ext == "webp":
        return _declared_size_fits(data, little=True)
    if ext == "bmp":
        size = int.from_bytes(data[2:6], "little")
        return size == 0 or len(data) >= size
    return True


def audio_is_complete(ext: str, data: bytes) -> bool:
    """False when the container of an audio clip says it is longer than its bytes."""
    if ext == "wav" and data[:4] == b"RIFF":
        return _declared_size_fits(data, little=True)
    if ext == "aiff":
        return _declared_size_fits(data, little=False)
    return True


def decode_image(data: bytes) -> str | None:
    """Decode the whole image (raises on any error); returns PIL's format name."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.format


def decode_audio(data: bytes) -> None:
    """Decode the whole clip with soundfile (raises on any error)."""
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as f:
        while len(f.read(65536, dtype="float32")):
            pass
