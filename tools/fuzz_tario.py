"""Differential fuzzing of wdstream's tar parser (``wdstream/format/tarread.py``) against
Python's ``tarfile``.

    python tools/fuzz_tario.py --seconds 600 [--seed 1] [--memory-gb 1.5] [--save DIR]

Each input is a tar built by ``tarfile`` (ustar, GNU or pax; regular files, directories,
links, devices, long and non-UTF-8 names, pax and global headers; plain, gzip, bzip2 or xz)
or by wdstream's own writer, then, most of the time, mutated: bytes flipped, header fields
set to hostile values with the checksum fixed up (negative and huge base-256 sizes, octal
junk, other type flags, names ending in '/'), crafted headers inserted (pax records of
length 0, too long, without a newline or an '='; GNU long names claiming 3 GiB; a directory
whose data hides a header), blocks deleted or repeated, the archive cut short. On every
input:

- tario (the stream parser, and the span parser on uncompressed bytes) returns members or
  raises TarFormatError/TarTruncatedError: never another exception, never a hang (an alarm
  of ``--timeout`` seconds per input), never MemoryError (the process runs under
  RLIMIT_AS: what it maps after its imports plus ``--memory-gb``);
- the span parser and the stream parser agree (the stream also needs the end-of-archive
  marker);
- wherever ``tarfile`` reads the archive to its end-of-archive marker (and does not fail),
  tario gives the same members (names, bytes, offsets), or refuses the archive with a
  TarFormatError after a prefix of them (tario is stricter than ``tarfile`` by design:
  ambiguous entries, malformed pax records, sparse members);
- an unmutated archive of supported features is read exactly as ``tarfile`` reads it.

The first failure stops the run (``--keep-going`` counts them instead); each failing input
is saved under ``--save``, and so is each input that tario reads and ``tarfile`` does not
(``laxer-*.bin``). The summary counts the inputs and their outcomes.
tests/format/test_tar_differential.py runs the same checks under Hypothesis in CI.
"""

from __future__ import annotations

import argparse
import bz2
import collections
import gzip
import io
import lzma
import os
import random
import resource
import signal
import sys
import tarfile
import time
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from wdstream.errors import TarFormatError, TarTruncatedError  # noqa: E402
from wdstream.format.tario import TarStreamWriter, iter_members_at, split_members  # noqa: E402

BLOCK = 512
COUNTED = (TarFormatError, TarTruncatedError)

# --------------------------------------------------------------------------- drawing


class RandomDraw:
    """Choices from a seeded ``random.Random`` (the long run)."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def boolean(self, p: float = 0.5) -> bool:
        return self.rng.random() < p

    def binary(self, lo: int, hi: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(lo, hi))


class HypothesisDraw:
    """The same choices drawn through Hypothesis (``st.data()``), so failures shrink."""

    def __init__(self, data):
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))

    def choice(self, seq):
        return self.data.draw(self.st.sampled_from(list(seq)))

    def boolean(self, p: float = 0.5) -> bool:
        return self.data.draw(self.st.booleans())

    def binary(self, lo: int, hi: int) -> bytes:
        return self.data.draw(self.st.binary(min_size=lo, max_size=hi))


# --------------------------------------------------------------------------- valid archives

STEMS = ["k0", "a", "dir/sub/k1", "é/ü", "日本語", "x" * 99, "y" * 150, "d/" + "z" * 300, ".h"]
EXTS = ["txt", "jpg", "json", "seg.png", "", "cls"]
FORMATS = [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]
KINDS = [
    tarfile.REGTYPE,
    tarfile.REGTYPE,
    tarfile.REGTYPE,
    tarfile.AREGTYPE,
    tarfile.CONTTYPE,
    tarfile.DIRTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.FIFOTYPE,
    tarfile.CHRTYPE,
]


def _name(draw) -> str:
    if draw.boolean(0.15):
        stem = draw.binary(1, 12).replace(b"\0", b"_").decode("utf-8", "surrogateescape")
    else:
        stem = draw.choice(STEMS) + str(draw.integer(0, 3))
    ext = draw.choice(EXTS)
    # a regular file named ".../" is an old-style directory: not what a valid archive holds
    return (f"{stem}.{ext}" if ext else stem).rstrip("/") or "x"


def build_tar(draw) -> tuple[bytes, str | None]:
    """A valid archive of supported features: ``(plain tar bytes, compression or None)``."""
    if draw.boolean(0.15):  # wdstream's own writer (the converter's shards)
        buf = io.BytesIO()
        w = TarStreamWriter(buf)
        for i in range(draw.integer(0, 4)):
            fields = {draw.choice(EXTS) or "bin": draw.binary(0, 1500) for _ in range(2)}
            w.write_sample(f"{_name(draw).split('.')[0]}-{i}", fields)
        w.close()
        return buf.getvalue(), None
    fmt = draw.choice(FORMATS)
    buf = io.BytesIO()
    global_headers = {}
    if fmt == tarfile.PAX_FORMAT and draw.boolean(0.3):
        global_headers = {"comment": "git " + "0" * draw.integer(0, 60)}
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=global_headers) as tar:
        for _ in range(draw.integer(0, 6)):
            info = tarfile.TarInfo(_name(draw))
            info.type = draw.choice(KINDS)
            info.mtime = draw.integer(0, 2**33)
            data = b""
            if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
                data = draw.binary(0, 1500)
                info.size = len(data)
            elif info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = draw.choice(["a.txt", "../x", "l" * 120])
            if fmt == tarfile.PAX_FORMAT and draw.boolean(0.3):
                info.pax_headers = {"comment": "c" * draw.integer(0, 300)}
            try:
                tar.addfile(info, io.BytesIO(data) if data else None)
            except ValueError:  # a name ustar cannot hold
                continue
        if global_headers:  # a global header needs a member after it
            info = tarfile.TarInfo("last.txt")
            info.size = 4
            tar.addfile(info, io.BytesIO(b"last"))
    return buf.getvalue(), draw.choice([None] * 7 + ["gzip", "bzip2", "xz"])


def compress(plain: bytes, kind: str | None) -> bytes:
    if kind == "gzip":
        return gzip.compress(plain, mtime=0)
    if kind == "bzip2":
        return bz2.compress(plain)
    if kind == "xz":
        return lzma.compress(plain)
    return plain


# --------------------------------------------------------------------------- mutations


def _checksum(header: bytearray, signed: bool = False) -> None:
    header[148:156] = b" " * 8
    total = sum(header) if not signed else sum(b - 256 if b > 127 else b for b in header)
    header[148:156] = b"%06o\0 " % (total & 0o777777)


def _base256(n: int, width: int) -> bytes:
    if n < 0:
        return b"\xff" + (n + (1 << (8 * width - 8))).to_bytes(width - 1, "big")
    return b"\x80" + n.to_bytes(width - 1, "big")


def _header(name: bytes, kind: bytes, size_field: bytes) -> bytearray:
    h = bytearray(BLOCK)
    h[: len(name[:100])] = name[:100]
    h[100:108] = b"0000644\0"
    h[108:124] = b"0000000\0" * 2
    h[124:136] = size_field
    h[136:148] = b"14500000000\0"
    h[156:157] = kind
    h[257:265] = b"ustar\x0000"
    _checksum(h)
    return h


def _record(key: bytes, value: bytes, mangle: int = 0) -> bytes:
    """A pax record ``b"%d %s=%s\n"`` whose length counts itself (off by ``mangle``)."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + len(str(len(body)))
    length = len(body) + len(str(length))
    return str(length + mangle).encode() + body


HOSTILE_RECORDS = [
    b"0 path=a\n",
    b"5 a=b\n",
    b"100 path=x\n",
    b"12 path=abc",
    b"8 noeq\n",
    b"11 path=a\0b\n",
    b"-5 path=x\n",
    b"x path=a\n",
    b"\0\0\0\0",
    b"9 =empty\n",
]
PAX_VALUES = [
    (b"path", b"p.txt"),
    (b"path", b"p.txt/"),
    (b"path", b"\xff\xfe.jpg"),
    (b"size", b"-5"),
    (b"size", b"abc"),
    (b"size", b"99999999999999999999999"),
    (b"size", b"3221225472"),
    (b"size", b"0"),
    (b"size", b"1"),
    (b"size", b"600"),
    (b"hdrcharset", b"BINARY"),
    (b"comment", b"x" * 40),
    (b"GNU.sparse.major", b"1"),
    (b"GNU.sparse.size", b"100"),
    (b"mtime", b"1.5"),
]
SIZE_VALUES = [
    lambda: _base256(-512, 12),
    lambda: _base256(-1024, 12),
    lambda: _base256(-(2**40), 12),
    lambda: _base256(2**80, 12),
    lambda: _base256(3 * 2**30, 12),
    lambda: b"-0000001000\0",
    lambda: b"+0000001000\0",
    lambda: b"0o1000\0\0\0\0\0\0",
    lambda: b"  1000  \0\0\0\0",
    lambda: b"99999999999\0",
    lambda: b"\x81" + bytes(11),
    lambda: b"1_000\0\0\0\0\0\0\0",
    lambda: b"%011o\0" % 0,
    lambda: b"%011o\0" % 512,
    lambda: b"%011o\0" % 1,
    lambda: b"%011o\0" % 100000,
]
TYPE_VALUES = [b"0", b"\0", b"1", b"2", b"3", b"5", b"6", b"7", b"L", b"K", b"x", b"g", b"X"]
TYPE_VALUES += [b"S", b"V", b"D", b"M", b"N", b"A"]


def _headers(buf: bytearray) -> list[int]:
    """Offsets of the blocks that pass a header checksum."""
    out = []
    for at in range(0, len(buf) - BLOCK + 1, BLOCK):
        block = bytes(buf[at : at + BLOCK])
        if block.count(0) == BLOCK:
            continue
        try:
            stored = int(block[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            continue
        if stored in tarfile.calc_chksums(block):
            out.append(at)
    return out


def _crafted(draw) -> bytes:
    """A crafted header (and payload) to insert before a member."""
    what = draw.integer(0, 6)
    if what == 0:  # a pax header with valid and hostile records
        records = b""
        for _ in range(draw.integer(1, 3)):
            if draw.boolean(0.4):
                records += draw.choice(HOSTILE_RECORDS)
            else:
                key, value = draw.choice(PAX_VALUES)
                records += _record(key, value, draw.choice([0, 0, 0, 1, -1, 50]))
        head = _header(
            b"././@PaxHeader", draw.choice([b"x", b"g", b"X"]), b"%011o\0" % len(records)
        )
        return bytes(head) + records + bytes(-len(records) % BLOCK)
    if what == 1:  # a GNU long name (its size honest, or claiming 3 GiB)
        name = draw.choice([b"long.txt\0", b"n" * 300 + b".jpg\0", b"", b"\xff.bin"])
        claim = len(name) if draw.boolean(0.6) else 3 * 2**30
        size = b"%011o\0" % claim if claim < 8**11 else _base256(claim, 12)
        head = _header(b"././@LongLink", draw.choice([b"L", b"K"]), size)
        return bytes(head) + name + bytes(-len(name) % BLOCK)
    if what == 2:  # a directory (or link) whose "data" hides a header
        hidden = _header(b"hidden.txt", b"0", b"%011o\0" % 5)
        payload = bytes(hidden) + b"boo!!" + bytes(BLOCK - 5)
        kind = draw.choice([b"5", b"1", b"2", b"\0", b"6"])
        name = b"d/" if kind == b"\0" else b"d"
        return bytes(_header(name, kind, b"%011o\0" % len(payload))) + payload
    if what == 3:  # a negative or absurd size
        size = draw.choice(SIZE_VALUES)()
        return bytes(_header(b"neg.txt", draw.choice([b"0", b"5", b"x", b"L"]), size)) + bytes(
            BLOCK
        )
    if what == 4:
        return bytes(BLOCK)
    if what == 5:
        return draw.binary(BLOCK, BLOCK)
    return bytes(_header(b"plain.txt", b"0", b"%011o\0" % 3)) + b"abc" + bytes(BLOCK - 3)


def mutate(draw, plain: bytes) -> bytes:
    """``plain`` with one to three mutations."""
    buf = bytearray(plain)
    for _ in range(draw.integer(1, 3)):
        heads = _headers(buf) or [0]
        op = draw.integer(0, 7)
        if op == 0 and buf:  # flip a byte
            i = draw.integer(0, len(buf) - 1)
            buf[i] ^= draw.integer(1, 255)
        elif op in (1, 2) and len(buf) >= BLOCK:  # a header field, checksum fixed up
            at = draw.choice(heads)
            h = bytearray(buf[at : at + BLOCK])
            if len(h) < BLOCK:
                continue
            field = draw.integer(0, 5)
            if field == 0:
                h[124:136] = draw.choice(SIZE_VALUES)()
            elif field == 1:
                h[156:157] = draw.choice(TYPE_VALUES)
            elif field == 2:
                name = draw.choice([b"dir/", b"", b"a.txt", b"\xff\xfe.jpg", b"x" * 100])
                h[0:100] = name + bytes(100 - len(name))
            elif field == 3:
                h[345:500] = draw.choice([b"pre", b"", b"\xff"]).ljust(155, b"\0")
            elif field == 4:
                h[draw.choice([100, 108, 136, 329])] = draw.choice([ord("+"), ord("9"), 0x80, 0xFF])
            else:
                h[257:265] = draw.choice([b"ustar  \0", b"ustar\x0000", bytes(8)])
            if draw.boolean(0.9):
                _checksum(h, signed=draw.boolean(0.1))
            buf[at : at + BLOCK] = h
        elif op == 3:  # insert a crafted header before a member
            at = draw.choice(heads)
            buf[at:at] = _crafted(draw)
        elif op == 4 and buf:  # cut short
            del buf[draw.integer(0, len(buf) - 1) :]
        elif op == 5 and len(buf) >= 2 * BLOCK:  # delete or repeat blocks
            n = len(buf) // BLOCK
            a = draw.integer(0, n - 1)
            b = draw.integer(a + 1, min(n, a + 3))
            chunk = buf[a * BLOCK : b * BLOCK]
            if draw.boolean():
                del buf[a * BLOCK : b * BLOCK]
            else:
                buf[a * BLOCK : a * BLOCK] = chunk
        elif op == 6:  # junk after the end
            buf += draw.binary(0, 700)
        else:  # a header's size shifted by some blocks (the structure moves)
            at = draw.choice(heads)
            h = bytearray(buf[at : at + BLOCK])
            if len(h) == BLOCK:
                try:
                    size = int(bytes(h[124:135]).split(b"\0")[0] or b"0", 8)
                except ValueError:
                    size = 0
                size = max(0, size + draw.choice([-513, -1, 1, 512, 1024, 5000]))
                h[124:136] = b"%011o\0" % size
                _checksum(h)
                buf[at : at + BLOCK] = h
    return bytes(buf)


def make_input(draw) -> tuple[bytes, bytes, bool, int | None]:
    """``(input bytes, plain tar bytes, valid, max_member_bytes)``: ``valid`` when unmutated."""
    plain, kind = build_tar(draw)
    valid = draw.boolean(0.25)
    if not valid:
        plain = mutate(draw, plain)
    limit = draw.choice([None, None, None, 1024, 0])
    return compress(plain, kind), plain, valid, limit


# --------------------------------------------------------------------------- checking


class Hang(Exception):
    """tario ran past the alarm."""


def _on_alarm(signum, frame):
    raise Hang("tario ran past its time limit on this input")


def _run(fn, seconds: float):
    """``(members, error)`` of tario, under an alarm; members collected up to an error."""
    got: list = []
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        for m in fn():
            got.append(_show(m))
        return got, None
    except COUNTED as exc:
        return got, exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _show(member) -> tuple:
    name, data = member[0], member[1]
    value = data if isinstance(data, bytes) else ("too large", data.size)
    return (name, value) + tuple(member[2:])


def _plain_prefix(data: bytes) -> bytes:
    """What a reader can decompress of ``data`` (all of it when it is not compressed)."""
    if data.startswith(b"\x1f\x8b\x08"):
        out = io.BytesIO()
        d = zlib.decompressobj(31)
        try:
            out.write(d.decompress(data))
            while d.unused_data.startswith(b"\x1f\x8b"):
                rest = d.unused_data
                d = zlib.decompressobj(31)
                out.write(d.decompress(rest))
        except zlib.error:
            pass
        return out.getvalue()
    for prefix, module in ((b"BZh", bz2), (b"\xfd7zXZ", lzma), (b"\x5d\x00\x00\x80", lzma)):
        if data.startswith(prefix):
            d = module.BZ2Decompressor() if module is bz2 else lzma.LZMADecompressor()
            try:
                return d.decompress(data)
            except (OSError, EOFError, lzma.LZMAError):
                return b""
    return data


def tarfile_members(plain: bytes, limit: int | None, seconds: float = 5.0):
    """``(members, clean)`` as ``tarfile`` reads them (stream mode); ``clean`` when it read
    to an end-of-archive zero block without an error and every member was comparable.
    (``tarfile`` itself can spin: at the end of a stream it seeks past a huge size forever.)"""
    members = []
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        with tarfile.open(fileobj=io.BytesIO(plain), mode="r|") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                if info.sparse is not None or info.size > len(plain):
                    return members, False
                data = tar.extractfile(info).read()
                end = info.offset_data + -(-info.size // BLOCK) * BLOCK
                value = data if limit is None or info.size <= limit else ("too large", info.size)
                members.append((info.name, value, info.offset, end))
            clean = plain[tar.offset : tar.offset + BLOCK] == bytes(BLOCK)
    except Exception:  # noqa: BLE001 - any failure of tarfile: nothing to compare with
        return members, False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return members, clean


def check(data: bytes, plain: bytes, valid: bool, limit: int | None, seconds: float = 5.0) -> str:
    """Check one input; returns its outcome, raises AssertionError on a violation."""
    stream, stream_err = _run(
        lambda: iter_members_at(io.BytesIO(data), name="fuzz.tar", max_member_bytes=limit),
        seconds,
    )
    compressed = data != plain
    if not compressed:
        span, span_err = _run(
            lambda: [
                (n, v) for n, v in split_members(plain, name="fuzz.tar", max_member_bytes=limit)
            ],
            seconds,
        )
        names = [m[:2] for m in stream]
        if stream_err is None:
            assert span_err is None and span == names, ("span != stream", span_err, span, names)
        elif span_err is None:
            assert isinstance(stream_err, TarTruncatedError), ("stream fails alone", stream_err)
            assert "no end-of-archive marker" in str(stream_err), stream_err
            assert names == span, ("span != stream before the end", span, names)
    ref, clean = tarfile_members(_plain_prefix(data) if compressed else plain, limit, seconds / 5)
    if valid:
        assert clean, "tarfile cannot read an unmutated archive (a generator bug)"
        assert stream_err is None, ("a valid archive refused", stream_err)
    if not clean:
        return "tarfile fails; tario ok" if stream_err is None else "both fail"
    tar = _plain_prefix(data) if compressed else plain
    if stream_err is None:
        _same(stream, ref, tar)
        return "same members"
    assert isinstance(stream_err, TarFormatError), ("truncated where tarfile ends", stream_err)
    _same(stream, ref[: len(stream)], tar)
    return f"tario stricter: {_kind(stream_err)}"


def _same(mine: list, ref: list, tar: bytes) -> None:
    assert [m[:2] for m in mine] == [r[:2] for r in ref], ("members differ", mine, ref)
    assert [m[3] for m in mine] == [r[3] for r in ref], ("member ends differ", mine, ref)
    for m, r in zip(mine, ref, strict=True):
        # a chain that opens with a global header: tarfile starts the member after it
        assert m[2] == r[2] or tar[m[2] + 156 : m[2] + 157] == b"g", ("starts differ", m, r)


def _kind(exc: Exception) -> str:
    text = str(exc).split(": ", 1)[-1]
    for word in (
        "checksum",
        "number field",
        "claims a size",
        "pax",
        "sparse",
        "global",
        "entry at byte",
        "extended header",
        "stream",
    ):
        if word in text:
            return word
    return text[:40]


# --------------------------------------------------------------------------- the long run


def limit_memory(margin_gb: float) -> None:
    """RLIMIT_AS: what this process maps now plus ``margin_gb``."""
    with open("/proc/self/status") as f:
        size = int(f.read().split("VmSize:")[1].split()[0]) * 1024
    limit = size + int(margin_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _save(folder: str, name: str, data: bytes) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-gb", type=float, default=1.5)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per input")
    p.add_argument("--save", default="fuzz-failures", help="folder for failing inputs")
    p.add_argument("--keep-going", action="store_true")
    args = p.parse_args(argv)
    limit_memory(args.memory_gb)
    rng = random.Random(args.seed)
    outcomes: collections.Counter[str] = collections.Counter()
    failures = 0
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < args.seconds:
        n += 1
        data, plain, valid, limit = make_input(RandomDraw(rng))
        try:
            outcome = check(data, plain, valid, limit, args.timeout)
            outcomes[outcome] += 1
            if outcome == "tarfile fails; tario ok":  # kept for a look: tario the laxer one
                _save(args.save, f"laxer-{args.seed}-{n}.bin", data)
        except (AssertionError, Exception) as exc:  # noqa: BLE001 - every failure is saved
            failures += 1
            outcomes[f"FAILED: {type(exc).__name__}"] += 1
            path = _save(args.save, f"input-{args.seed}-{n}.bin", data)
            print(f"input {n}: {type(exc).__name__}: {str(exc)[:2000]} (saved {path})")
            if not args.keep_going:
                break
    took = time.monotonic() - start
    print(f"{n} inputs in {took:.0f} s ({n / took:.0f}/s), seed {args.seed}, {failures} failures")
    for outcome, count in outcomes.most_common():
        print(f"  {count:8d}  {outcome}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
