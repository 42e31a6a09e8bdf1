"""Reading tar archives: one header parser for the bytes of a span and for a stream.

:func:`split_members` (a span of an uncompressed shard, in memory: the reader's ranged reads)
and :func:`iter_members_at` (a stream, plain or compressed: the reader's whole-shard reads,
``index``, ``verify``, ``inspect``) run the same loop over the same header logic, so they
always agree on where a member starts, what it is named and how long it is.

It reads what Python's ``tarfile`` reads, and is stricter where ``tarfile`` guesses: it
yields the regular members ``tarfile`` yields (same names, same bytes), or raises one of
two errors, each naming the shard and the byte where it stopped:

- :class:`~wdstream.errors.TarTruncatedError` (an ``EOFError``): the archive ends inside a
  header, a member's data or an extended header's chain, or without its end-of-archive
  marker (streams only: a span ends where the caller cut it);
- :class:`~wdstream.errors.TarFormatError` (a ``ValueError``): a bad checksum or number
  field; a negative size, or one over :data:`MAX_TAR_SIZE`; a GNU long name or a pax
  extended header over :data:`MAX_HEADER_BYTES`; a zero-length or malformed pax record; a
  link, directory or device entry with a non-zero size (tar readers disagree on whether its
  data follows, which is how a header is hidden from one reader and shown to another); an
  extended header with no member after it; a sparse member, or a global pax header that
  sets a path or a size (``tarfile`` would apply it to every later member); a corrupt
  compressed stream.

Memory is bounded: a header payload is at most :data:`MAX_HEADER_BYTES`, and a member over
``max_member_bytes`` is read through in chunks of 16 MiB (a stream) or not copied at all (a
span), a :class:`MemberTooLarge` standing in for it. Time is linear in the bytes read: every
header moves the position forward.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import TarFormatError, TarTruncatedError, redact

__all__ = [
    "BLOCK",
    "MAX_HEADER_BYTES",
    "MAX_TAR_SIZE",
    "MemberTooLarge",
    "iter_members",
    "iter_members_at",
    "split_members",
]

BLOCK = 512
#: The most bytes a GNU long name/link or a pax extended header may hold (a path is at most
#: a few KB; a larger one is refused, never read into memory).
MAX_HEADER_BYTES = 64 * 2**10
#: The largest member size taken as real (1 TiB); a larger size field is corruption.
MAX_TAR_SIZE = 2**40
_SKIP_CHUNK = 16 * 2**20  # read-and-discard step over a member not kept (bounded memory)
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")  # regular file, old-style regular file, contiguous file
#: link, symlink, character and block device, directory, FIFO: ``tarfile`` reads no data
#: after these whatever their size says, other readers skip it; only size 0 is unambiguous
_NO_DATA = {b"1": "hard link", b"2": "symlink", b"3": "character device"}
_NO_DATA |= {b"4": "block device", b"5": "directory", b"6": "FIFO"}
_EXTENDED = (b"L", b"K", b"x", b"X", b"g")  # headers that describe the next member
#: number fields that ``tarfile`` parses (and refuses when malformed), besides size and chksum
_NUMBER_FIELDS = ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337), (337, 345))


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


# --------------------------------------------------------------------------- sources


class _Span:
    """A span in memory: reads are slices, skips cost nothing."""

    __slots__ = ("view", "pos", "end")

    def __init__(self, data):
        view = memoryview(data)
        self.view = view if view.format == "B" and view.ndim == 1 else view.cast("B")
        self.pos = 0
        self.end = len(self.view)

    def read(self, n: int) -> bytes:
        start = self.pos
        self.pos = min(start + n, self.end)
        return bytes(self.view[start : self.pos])

    def skip(self, n: int) -> int:
        start = self.pos
        self.pos = min(start + n, self.end)
        return self.pos - start


class _Raw:
    """The caller's stream, with the bytes already looked at (to detect compression) put
    back in front. Remembers an error the stream raised, so that a failing read of the
    store is not mistaken for a corrupt compressed stream."""

    __slots__ = ("f", "head", "error")

    def __init__(self, f: BinaryIO, head: bytes):
        self.f, self.head, self.error = f, head, None

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n is None or n < 0:
                data, self.head = self.head + self._read(-1), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            return data
        return self._read(n)

    def _read(self, n: int) -> bytes:
        try:
            return self.f.read(n)
        except BaseException as exc:
            self.error = exc
            raise


class _Stream:
    """A stream: reads loop until ``n`` bytes or the end, skips read through in chunks.
    ``kind``: the compression (``"gzip"``...) of ``f``, whose errors become tar errors."""

    __slots__ = ("f", "raw", "kind", "where", "pos")

    def __init__(self, f, raw: _Raw, kind: str | None, where: str):
        self.f, self.raw, self.kind, self.where, self.pos = f, raw, kind, where, 0

    def _read(self, n: int) -> bytes:
        if self.kind is None:
            return self.f.read(n)
        try:
            return self.f.read(n)
        except Exception as exc:
            if exc is self.raw.error:
                raise  # the store failed, not the data
            if isinstance(exc, EOFError):
                raise TarTruncatedError(
                    f"{self.where}: the {self.kind} stream ends early, after {self.pos} "
                    f"bytes of tar",
                    shard=self.where,
                ) from exc
            raise TarFormatError(
                f"{self.where}: the {self.kind} stream is corrupt after {self.pos} bytes of "
                f"tar ({type(exc).__name__}: {exc})",
                shard=self.where,
            ) from exc

    def read(self, n: int) -> bytes:
        # never one read of a size a header claims: a buffered file allocates what it is
        # asked for before it knows how much there is
        data = self._read(min(n, _SKIP_CHUNK))
        if 0 < len(data) < n:
            parts, got = [data], len(data)
            while got < n:
                more = self._read(min(n - got, _SKIP_CHUNK))
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> int:
        left = n
        while left > 0:
            chunk = self._read(min(left, _SKIP_CHUNK))
            if not chunk:
                break
            left -= len(chunk)
            self.pos += len(chunk)
        return n - left


def _open_stream(stream: BinaryIO, where: str) -> _Stream:
    """The stream as a tar byte source: gzip, bzip2 and xz are detected by their first bytes
    (as ``tarfile``'s ``r|*`` does) and decompressed as they are read."""
    head = b""
    while len(head) < 10:
        more = stream.read(10 - len(head))
        if not more:
            break
        head += more
    raw = _Raw(stream, head)
    if head.startswith(b"\x1f\x8b\x08"):
        return _Stream(gzip.GzipFile(fileobj=raw, mode="rb"), raw, "gzip", where)
    if head[:3] == b"BZh" and head[4:10] == b"1AY&SY":
        return _Stream(bz2.BZ2File(raw), raw, "bzip2", where)
    if head.startswith((b"\x5d\x00\x00\x80", b"\xfd7zXZ")):
        return _Stream(lzma.LZMAFile(raw), raw, "xz", where)
    return _Stream(raw, raw, None, where)


# --------------------------------------------------------------------------- headers


def _block(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _number(field: bytes) -> int:
    """A header's number field, as ``tarfile`` reads it: octal text, or GNU base-256 when
    the first byte is 0x80 (positive) or 0xff (negative). Raises ValueError."""
    first = field[0]
    if first == 0x80:
        return int.from_bytes(field[1:], "big")
    if first == 0xFF:
        return int.from_bytes(field[1:], "big") - (1 << (8 * len(field) - 8))
    text = field.split(b"\0", 1)[0]
    try:
        return int(text or b"0", 8)
    except ValueError:  # tarfile's own reading (it strips a few more kinds of white space)
        return int(text.decode("ascii").strip() or "0", 8)


def _text(raw: bytes) -> str:
    """A NUL-terminated name field, as ``tarfile`` decodes it."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _check_header(header: bytes, where: str, pos: int) -> int:
    """The size field of a 512-byte header, after checking its checksum (unsigned or
    signed, as ``tarfile`` accepts) and that every number field parses."""
    try:
        stored = _number(header[148:156])
        size = _number(header[124:136])
        if (
            header[100:124].translate(None, _OCTAL)
            or header[136:148].translate(None, _OCTAL)
            or header[329:345].translate(None, _OCTAL)
        ):  # not plain octal text: parse each field (base-256, or not a number)
            for a, b in _NUMBER_FIELDS:
                _number(header[a:b])
    except (ValueError, UnicodeDecodeError):
        raise TarFormatError(
            f"{where}: malformed tar header at byte {pos} (a number field is not a number)",
            shard=where,
        ) from None
    unsigned = sum(header) - sum(header[148:156]) + 256
    if stored != unsigned:
        high = (
            BLOCK
            - 8
            - len(header[:148].translate(None, _HIGH))
            - len(header[156:].translate(None, _HIGH))
        )
        if stored != unsigned - 256 * high:  # signed chars (old Sun and NeXT tars)
            raise TarFormatError(
                f"{where}: bad tar header checksum at byte {pos}; not a tar, or corrupt",
                shard=where,
            )
    return size


_HIGH = bytes(range(128, 256))
_OCTAL = b"01234567 \0"


def _pax_records(data: bytes, where: str, pos: int) -> dict[bytes, bytes]:
    """The records of a pax extended header, ``b"%d %s=%s\\n" % (length, key, value)``
    each (the length counts the whole record), strictly: a record that is empty, shorter
    than its own framing, runs past the header or does not end in a newline is refused.
    NUL padding after the last record is allowed. A repeated key: the last one counts."""
    records: dict[bytes, bytes] = {}
    at, end = 0, len(data)

    def bad(why: str) -> TarFormatError:
        return TarFormatError(
            f"{where}: malformed pax extended header at byte {pos}: {why} (record at "
            f"byte {at} of {end})",
            shard=where,
        )

    while at < end:
        if data[at] == 0:
            if data.count(0, at) != end - at:
                raise bad("a NUL inside its records")
            break
        space = data.find(b" ", at, min(end, at + 21))
        digits = data[at:space] if space > at else b""
        if not digits.isdigit():
            raise bad("a record without a decimal length")
        length = int(digits)
        stop = at + length
        if length == 0:
            raise bad("a record of length 0")
        if length < len(digits) + 4 or stop > end:
            raise bad(f"a record of length {length} that does not fit")
        if data[stop - 1] != 0x0A:
            raise bad("a record that does not end in a newline")
        key, eq, value = data[space + 1 : stop - 1].partition(b"=")
        if not key or not eq:
            raise bad("a record without 'key='")
        records[key] = value
        at = stop
    return records


def _pax_size(value: bytes, where: str, pos: int) -> int:
    if not value.isdigit() or len(value) > 20:
        raise TarFormatError(
            f"{where}: pax extended header at byte {pos} has size {value[:40]!r}, not a "
            f"non-negative decimal number",
            shard=where,
        )
    return int(value)


# --------------------------------------------------------------------------- the loop


def _members(
    src, where: str, max_member_bytes: int | None, *, span: bool
) -> Iterator[tuple[str, bytes | MemberTooLarge, int, int]]:
    """``(name, bytes, offset of its first header, end of its padded data)`` of each
    regular member of ``src`` (:class:`_Span` or :class:`_Stream`). ``span``: the bytes
    may end at any header boundary; otherwise the archive must end with a zero block."""
    first = None  # offset of the first header of the member being read (extended ones too)
    long_name: str | None = None  # from a GNU long name or a pax path: the first one counts
    pax_size: int | None = None
    while True:
        pos = src.pos
        header = src.read(BLOCK)
        if len(header) < BLOCK:
            if first is not None:
                raise TarTruncatedError(
                    f"{where}: truncated at byte {pos}: the extended header at byte {first} "
                    f"has no member after it",
                    shard=where,
                )
            if header:
                raise TarTruncatedError(
                    f"{where}: truncated inside a tar header at byte {pos}", shard=where
                )
            if span:
                return
            raise TarTruncatedError(
                f"{where}: truncated after {pos} bytes (no end-of-archive marker)", shard=where
            )
        if header == _ZERO_BLOCK:
            if first is not None:
                raise TarFormatError(
                    f"{where}: the extended header at byte {first} is followed by the end of "
                    f"the archive, not by a member",
                    shard=where,
                )
            return
        size = _check_header(header, where, pos)
        kind = header[156:157]
        if first is None:
            first = pos
        if kind in _EXTENDED:
            if not 0 <= size <= MAX_HEADER_BYTES:
                raise TarFormatError(
                    f"{where}: the extended header ({kind.decode('latin-1')!r}) at byte {pos} "
                    f"claims {size} bytes; at most {MAX_HEADER_BYTES} are read",
                    shard=where,
                )
            padded = _block(size)
            payload = src.read(padded)
            if len(payload) < padded:
                raise TarTruncatedError(
                    f"{where}: truncated inside the extended header at byte {pos}", shard=where
                )
            if kind == b"L":
                if long_name is None:
                    long_name = _text(payload)  # up to its NUL, padding included, as tarfile
            elif kind != b"K":
                records = _pax_records(payload[:size], where, pos)
                if any(k.startswith(b"GNU.sparse.") for k in records):
                    raise TarFormatError(
                        f"{where}: sparse member at byte {pos}: not supported", shard=where
                    )
                if kind == b"g":
                    if b"path" in records or b"size" in records:
                        raise TarFormatError(
                            f"{where}: the global pax header at byte {pos} sets a path or a "
                            f"size for every later member: not supported",
                            shard=where,
                        )
                else:
                    if long_name is None and b"path" in records:
                        long_name = records[b"path"].decode("utf-8", "surrogateescape")
                        long_name = long_name.rstrip("/")
                    if pax_size is None and b"size" in records:
                        pax_size = _pax_size(records[b"size"], where, pos)
            continue
        if kind == b"S":
            raise TarFormatError(
                f"{where}: sparse member at byte {pos}: not supported", shard=where
            )
        if pax_size is not None:
            size = pax_size
        if not 0 <= size <= MAX_TAR_SIZE:
            raise TarFormatError(
                f"{where}: the tar header at byte {pos} claims a size of {size} bytes",
                shard=where,
            )
        name = _text(header[:100])
        if kind == b"\0" and name.endswith("/"):
            kind = b"5"  # an old-style directory
        start, member_name = first, long_name
        first = long_name = pax_size = None
        if kind in _NO_DATA:
            if size:
                raise TarFormatError(
                    f"{where}: the {_NO_DATA[kind]} entry at byte {pos} has a size of {size} "
                    f"bytes; tar readers disagree on whether data follows it",
                    shard=where,
                )
            continue
        padded = _block(size)
        if kind not in _REGULAR:  # another type: its data is skipped, as tarfile does
            if src.skip(padded) < padded:
                raise TarTruncatedError(
                    f"{where}: truncated inside the data of the entry at byte {pos}", shard=where
                )
            continue
        if member_name is None:
            prefix = header[345:500]
            member_name = name
            if prefix[0]:
                member_name = _text(prefix) + "/" + name
        data_at = src.pos
        if max_member_bytes is not None and size > max_member_bytes:
            got = src.skip(padded)
            data: bytes | MemberTooLarge = MemberTooLarge(member_name, size, max_member_bytes)
        else:
            data = src.read(size)
            got = len(data)
            if got == size:
                got += src.skip(padded - size)
        if got < padded:
            raise TarTruncatedError(
                f"{where}: member {member_name} at byte {pos} truncated "
                f"({min(got, size)} of {size} bytes)",
                shard=where,
            )
        yield member_name, data, start, data_at + padded


def iter_members(
    stream: BinaryIO, *, name: str = "<shard>", max_member_bytes: int | None = None
) -> Iterator[tuple[str, bytes | MemberTooLarge]]:
    """Stream ``(member name, bytes)`` of regular files; plain tar or compressed (gzip,
    bzip2, xz).

    A member over ``max_member_bytes`` is not read into memory: its bytes are read and
    discarded in bounded chunks, and a :class:`MemberTooLarge` stands in for them.
    A truncated archive raises TarTruncatedError (an EOFError), a malformed one
    TarFormatError (a ValueError), each from where it is found; the caller decides whether
    to skip the rest of the shard. An error of ``stream`` itself propagates as it is.
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
    where = redact(name)
    # a generator: nothing is read before the first member is asked for
    yield from _members(_open_stream(stream, where), where, max_member_bytes, span=False)


def split_members(
    data, *, name: str = "<shard>", max_member_bytes: int | None = None
) -> list[tuple[str, bytes | MemberTooLarge]]:
    """``(member name, bytes)`` of the regular files in ``data``, the bytes of a span of an
    uncompressed tar that starts at a header (the same parser as :func:`iter_members`).

    Parsing stops at the end of ``data`` or at a zero block. A member or header cut by the
    end of ``data`` raises TarTruncatedError (an EOFError), a malformed header
    TarFormatError (a ValueError); offsets in their messages count from the span's start.
    """
    where = redact(name)
    return [
        (member, value)
        for member, value, _, _ in _members(_Span(data), where, max_member_bytes, span=True)
    ]
