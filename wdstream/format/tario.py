"""Deterministic tar writing, and tar members grouped into WebDataset samples.

Writing: members get a fixed mtime, uid/gid 0, no user names, and a sorted order, so the same
samples always give the same bytes. The byte offset of each sample's first header is returned,
so readers can start mid-shard with a ranged read.

Reading: members come from :mod:`wdstream.format.tarread` (one header parser for spans and
streams, re-exported here) and are grouped into samples by WebDataset's key rule: the key is
the member path up to the first dot of its base name.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterable, Iterator

from .tarread import MemberTooLarge, iter_members, iter_members_at, split_members

__all__ = [
    "TarStreamWriter",
    "split_key",
    "iter_members",
    "iter_members_at",
    "split_members",
    "group_samples",
    "MemberTooLarge",
    "MTIME",
    "MAX_MEMBER_BYTES",
]

MTIME = 1_700_000_000  # fixed member mtime, so archives are byte-for-byte reproducible
BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(BLOCK)
RECORD = tarfile.RECORDSIZE
#: The largest member the converter writes (a larger cell is refused and counted). Readers skip
#: members over ``config.max_member_bytes``, whose default is twice this.
MAX_MEMBER_BYTES = 512 * 2**20
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def split_key(name: str) -> tuple[str, str] | None:
    """``"dir/abc.seg.jpg" -> ("dir/abc", "seg.jpg")``; ``None`` for names with no extension."""
    m = _KEY_RE.match(name)
    return (m.group(1), m.group(2)) if m else None


def _header_tarfile(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = MTIME
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


#: tarfile's header of a member with an empty name and size 0: the converter's headers differ
#: from it only in the name, the size and the checksum (made from it, so the bytes stay what
#: tarfile writes whatever its version).
_TEMPLATE = _header_tarfile("", 0)
_SIZE_FIELD = slice(124, 136)
_CHKSUM_FIELD = slice(148, 156)
_TEMPLATE_SUM = sum(_TEMPLATE[:148]) + 8 * 32 + sum(_TEMPLATE[156:]) - sum(_TEMPLATE[124:136])


def member_header(name: str, size: int) -> bytes:
    """The 512-byte GNU tar header of a regular member (fixed mtime, mode 0444, uid/gid 0),
    byte for byte what ``tarfile`` writes; names over 100 bytes or sizes past 8 GiB go
    through ``tarfile`` itself (a GNU long-name header)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 100 or size >= 8**11:
        return _header_tarfile(name, size)
    size_field = b"%011o\0" % size
    chksum = _TEMPLATE_SUM + sum(raw) + sum(size_field)
    head = bytearray(_TEMPLATE)
    head[: len(raw)] = raw
    head[_SIZE_FIELD] = size_field
    head[_CHKSUM_FIELD] = b"%06o\0 " % chksum
    return bytes(head)


class TarStreamWriter:
    """Writes samples as tar members to a binary stream; never seeks.

    ``write_sample`` returns the offset of the sample's first header; ``close`` writes the
    end-of-archive blocks and pads to a full record (as ``tarfile`` does).
    """

    def __init__(self, stream):
        self.stream = stream
        self.offset = 0

    def _write(self, data: bytes) -> None:
        self.stream.write(data)
        self.offset += len(data)

    def write_sample(self, key: str, fields: dict[str, bytes]) -> int:
        """Write a sample's members (one write of the stream: a write per header, member and
        padding cost the converter a tenth of its CPU in Python calls); returns its offset."""
        start = self.offset
        pieces = []
        for ext in sorted(fields):
            data = fields[ext]
            pieces.append(member_header(f"{key}.{ext}", len(data)))
            pieces.append(data)
            pad = (-len(data)) % BLOCK
            if pad:
                pieces.append(_ZERO_BLOCK[:pad])
        self._write(b"".join(pieces))
        return start

    def close(self) -> int:
        """Finish the archive; returns the total size in bytes."""
        self._write(b"\0" * (2 * BLOCK))
        pad = (-self.offset) % RECORD
        if pad:
            self._write(b"\0" * pad)
        return self.offset


def group_samples(
    members: Iterable[tuple], *, offsets: bool = False
) -> Iterator[dict[str, bytes | str | int]]:
    """Group adjacent members with the same key into ``{"__key__": key, ext: bytes, ...}``.

    A sample with a member over the size limit (:class:`MemberTooLarge`) carries
    ``"__error__"``: the reason, for the reader to count; that member is left out.

    A key that reappears after another key started yields a second sample with that key;
    callers that need unique keys check for it (foreign shards with non-adjacent members).
    Names without an extension are ignored, as in webdataset.

    ``members`` are ``(name, bytes)`` pairs (:func:`iter_members`, :func:`split_members`), or
    with ``offsets`` the ``(name, bytes, start, end)`` of :func:`iter_members_at`; each sample
    then also carries ``"__offset__"``, the offset of its first member's header, and
    ``"__end__"``, the end of its last member's padded data.
    """
    current: dict[str, bytes | str | int] | None = None
    for member in members:
        name, data = member[0], member[1]
        parts = split_key(name)
        if parts is None:
            continue
        key, ext = parts
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key}
            if offsets:
                current["__offset__"] = member[2]
        if offsets:
            current["__end__"] = member[3]
        if isinstance(data, MemberTooLarge):
            current.setdefault("__error__", data.reason)
            continue
        if ext in current:
            # A duplicate extension inside one sample: keep the first, as webdataset does.
            continue
        current[ext] = data
    if current is not None:
        yield current


def tar_bytes(samples: Iterable[tuple[str, dict[str, bytes]]]) -> bytes:
    """A whole archive in memory (tests and synthetic in-memory shards)."""
    buf = io.BytesIO()
    w = TarStreamWriter(buf)
    for key, fields in samples:
        w.write_sample(key, fields)
    w.close()
    return buf.getvalue()
