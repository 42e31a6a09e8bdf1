"""The sample layout: keys, and which member extension holds which modality.

A sample is ``{"__key__": key, "txt": bytes, "json": bytes, <image ext>: bytes,
<audio ext>: bytes}``. Keys have no dots (WebDataset splits the member name at the first dot).
The extension of an encoded image or audio member is its own format's, found from its bytes.
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = [
    "SHARD_EXTS",
    "shard_stem",
    "IMAGE_EXTS",
    "AUDIO_EXTS",
    "TEXT_EXTS",
    "make_key",
    "image_ext",
    "audio_ext",
    "modality_of",
    "find_member",
]

#: Shard file endings: plain tar, and gzip-compressed tar (read from the start only).
SHARD_EXTS = (".tar.gz", ".tgz", ".tar")


def shard_stem(name: str) -> str:
    """A shard's name without its ending: ``dir/shard-00000.tar.gz -> dir/shard-00000``."""
    for ext in SHARD_EXTS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm")
#: Every audio extension the converter writes; all but m4a/aac are opened by soundfile.
AUDIO_EXTS = (
    "flac",
    "wav",
    "mp3",
    "ogg",
    "opus",
    "aiff",
    "aif",
    "aifc",
    "w64",
    "caf",
    "au",
    "snd",
    "nist",
    "sph",
    "voc",
    "svx",
    "ircam",
    "paf",
    "htk",
    "xi",
    "avr",
    "wve",
    "sds",
    "mpc2k",
    "pvf",
)
TEXT_EXTS = ("txt", "text", "caption", "transcript")

_MODALITY = {
    **{e: "image" for e in IMAGE_EXTS},
    **{e: "audio" for e in AUDIO_EXTS},
    **{e: "text" for e in TEXT_EXTS},
    "json": "json",
}
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


_W64_GUID = bytes.fromhex("2e91cf11a5d628db04c10000")  # after b"riff" in a Sony Wave64 file


def audio_ext(data: bytes) -> str | None:
    """The file extension of encoded audio, from its magic bytes; ``None`` if unknown.

    Knows the formats soundfile (libsndfile) reads that have a signature (FLAC, WAV/RF64,
    Ogg Vorbis/Opus, MP3, AIFF/AIFC, Wave64, CAF, AU, NIST, VOC, 8SVX) and MP4/AAC.
    """
    head = data[:16]
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"OggS":
        return "opus" if b"OpusHead" in data[:64] else "ogg"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:4] == b"FORM" and head[8:12] in (b"8SVX", b"16SV"):
        return "svx"
    if head[:4] == b"riff" and head[4:16] == _W64_GUID:
        return "w64"
    if head[:4] == b"caff":
        return "caf"
    if head[:4] == b".snd":
        return "au"
    if head[:7] == b"NIST_1A":
        return "nist"
    if head[:15] == b"Creative Voice ":
        return "voc"
    if head[4:8] == b"ftyp":
        return "m4a"
    if head[:3] == b"ID3":
        return "mp3"
    if len(data) > 1 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0:
        return "aac" if (data[1] & 0x06) == 0 else "mp3"  # ADTS has layer bits 00
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
