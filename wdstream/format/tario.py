"""Deterministic tar writing and streaming tar reading, grouped into WebDataset samples.

Writing: members get a fixed mtime, uid/gid 0, no user names, and a sorted order, so the same
samples always give the same bytes. The byte offset of each sample's first header is returned,
so readers can start mid-shard with a ranged read.

Reading: members are streamed (``tarfile`` stream mode, gzip detected) and grouped into samples
by WebDataset's key rule: the key is the member path up to the first dot of its base name.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO

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
RECORD = tarfile.RECORDSIZE
#: The largest member the converter writes (a larger cell is refused and counted). Readers skip
#: members over ``config.max_member_bytes``, whose default is twice this.
MAX_MEMBER_BYTES = 512 * 2**20
_SKIP_CHUNK = 16 * 2**20  # read-and-discard step over a skipped member (bounded memory)
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


class MemberTooLarge:
    """Stands in for the bytes of a member over the size limit (never read into memory)."""

    __slots__ = ("name", "size", "limit")

    def __init__(self, name: str, size: int, limit: int):
        self.name, self.size, self.limit = name, size, limit

    def __repr__(self) -> str:
        return f"MemberTooLarge({self.name!r}, {self.size})"

    @property
    def reason(self) -> str:
        return f"member {self.name} is {self.size} bytes, over max_member_bytes {self.limit}"


def iter_members(
    stream: BinaryIO, *, name: str = "<shard>", max_member_bytes: int | None = None
) -> Iterator[tuple[str, bytes | MemberTooLarge]]:
    """Stream ``(member name, bytes)`` of regular files; plain tar or gzip-compressed.

    A member over ``max_member_bytes`` is not read into memory: its bytes are read and
    discarded in bounded chunks, and a :class:`MemberTooLarge` stands in for them.
    Truncation or corruption raises ``tarfile.ReadError``/``EOFError`` from where it is found;
    the caller decides whether to skip the rest of the shard.
    """
    for member, data, _start, _end in iter_members_at(
        stream, name=name, max_member_bytes=max_member_bytes
    ):
        yield member, data


def iter_members_at(
    stream: BinaryIO, *, name: str = "<shard>", max_member_bytes: int | None = None
) -> Iterator[tuple[str, bytes | MemberTooLarge, int, int]]:
    """As :func:`iter_members`, with the member's byte range in the (uncompressed) archive:
    ``(name, bytes, offset of its first header, end of its padded data)``."""
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if not info.isreg():
                continue
            f = tar.extractfile(info)
            if max_member_bytes is not None and info.size > max_member_bytes:
                got = 0
                while f is not None:
                    chunk = f.read(_SKIP_CHUNK)
                    if not chunk:
                        break
                    got += len(chunk)
                if got != info.size:
                    raise EOFError(
                        f"{name}: member {info.name} truncated ({got} of {info.size} bytes)"
                    )
                end = info.offset_data + info.size + (-info.size) % BLOCK
                yield (
                    info.name,
                    MemberTooLarge(info.name, info.size, max_member_bytes),
                    info.offset,
                    end,
                )
                continue
            data = f.read() if f is not None else b""
            if len(data) != info.size:
                raise EOFError(
                    f"{name}: member {info.name} truncated ({len(data)} of {info.size} bytes)"
                )
            end = info.offset_data + info.size + (-info.size) % BLOCK
            yield info.name, data, info.offset, end
        # tarfile ends quietly when the data stops at or inside a header; a complete archive
        # ends with a zero block, which tarfile has then read in full.
        pos = getattr(tar.fileobj, "pos", None)
        if pos is not None and pos < tar.offset + BLOCK:
            raise EOFError(f"{name}: truncated after {tar.offset} bytes (no end-of-archive marker)")


def _number(field: bytes) -> int:
    """A tar header's numeric field: octal text, or GNU base-256 when the top bit is set."""
    if field[:1] and field[0] & 0x80:
        n = int.from_bytes(field[1:], "big")
        return n - (1 << (8 * len(field) - 8)) if field[0] & 0x40 else n
    text = field.split(b"\0", 1)[0].strip(b" ")
    return int(text, 8) if text else 0


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header, if any."""
    path = None
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "surrogateescape")
        pos += length
    return path


def split_members(
    data, *, name: str = "<shard>", max_member_bytes: int | None = None
) -> list[tuple[str, bytes | MemberTooLarge]]:
    """``(member name, bytes)`` of the regular files in ``data``, the bytes of a span of an
    uncompressed tar that starts at a header: a minimal parser, no ``tarfile`` objects.

    512-byte headers (name, size, typeflag, checksum checked); GNU long names
    (``././@LongLink``, type ``L``) and pax headers (``x``: their ``path``) apply to the next
    member; other types are skipped. Parsing stops at the end of ``data`` or at a zero block.
    A member whose data runs past the end raises EOFError; a bad checksum raises ValueError.
    """
    view = memoryview(data)
    end = len(view)
    pos = 0
    out: list[tuple[str, bytes | MemberTooLarge]] = []
    long_name: str | None = None
    while pos + BLOCK <= end:
        header = bytes(view[pos : pos + BLOCK])
        if header == _ZERO_BLOCK:
            break
        stored = _number(header[148:156])
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise ValueError(f"{name}: bad tar header checksum at byte {pos} of the span")
        size = _number(header[124:136])
        kind = header[156:157]
        start = pos + BLOCK
        stop = start + size
        if stop > end:
            raise EOFError(
                f"{name}: member at byte {pos} of the span truncated "
                f"({end - start} of {size} bytes)"
            )
        pos = stop + (-size) % BLOCK
        if kind == b"L":
            long_name = (
                bytes(view[start:stop]).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            )
            continue
        if kind == b"x":
            long_name = _pax_path(bytes(view[start:stop])) or long_name
            continue
        if kind not in (b"0", b"\0", b"7"):
            long_name = None
            continue
        if long_name is not None:
            member, long_name = long_name, None
        else:
            member = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            prefix = header[345:500].split(b"\0", 1)[0]
            if header[257:262] == b"ustar" and prefix:
                member = prefix.decode("utf-8", "surrogateescape") + "/" + member
        if max_member_bytes is not None and size > max_member_bytes:
            out.append((member, MemberTooLarge(member, size, max_member_bytes)))
        else:
            out.append((member, bytes(view[start:stop])))
    else:
        if pos < end:
            raise EOFError(f"{name}: span truncated inside a tar header at byte {pos}")
    return out


_ZERO_BLOCK = bytes(BLOCK)


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
