"""format/tarread.py: one header parser for spans and streams, and hostile tars.

Each hostile archive is read in a child process under RLIMIT_AS, with an alarm per case, by
both entry points the reader uses (``split_members`` on a span, ``iter_members`` on a
stream): a hang, a blow-up or an uncounted exception fails the test, not the machine.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest
from bounded import run_child

from wdstream.errors import TarFormatError, TarTruncatedError
from wdstream.format.tario import iter_members, iter_members_at, split_members, tar_bytes

B = 512


def _checksum(h: bytearray) -> bytearray:
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return h


def header(name: bytes, size: int | bytes, kind: bytes = b"0") -> bytes:
    """A ustar header; ``size`` as a number (octal) or the raw 12-byte field."""
    h = bytearray(B)
    h[: len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:124] = b"0000000\0" * 2
    h[124:136] = size if isinstance(size, bytes) else b"%011o\0" % size
    h[136:148] = b"14500000000\0"
    h[156:157] = kind
    h[257:265] = b"ustar\x0000"
    return bytes(_checksum(h))


def member(name: bytes, data: bytes, kind: bytes = b"0") -> bytes:
    return header(name, len(data), kind) + data + bytes(-len(data) % B)


def pax(records: bytes, kind: bytes = b"x") -> bytes:
    return member(b"././@PaxHeader", records, kind)


def base256(n: int) -> bytes:
    if n < 0:
        return b"\xff" + (n + (1 << 88)).to_bytes(11, "big")
    return b"\x80" + n.to_bytes(11, "big")


END = bytes(2 * B)
A = member(b"a.txt", b"first")
C = member(b"c.txt", b"last")
HIDDEN = member(b"hidden.txt", b"boo")

#: name -> (archive, the error both parsers raise, words its message holds)
HOSTILE = {
    # the span parser jumped back to the first header, forever (2.1 GB after 120 s)
    "negative size, base-256": (
        A + header(b"b.txt", base256(-1536)) + C + END,
        "TarFormatError",
        "claims a size of -1536 bytes",
    ),
    "negative size, octal text": (
        A + header(b"b.txt", b"-0000003000\0") + C + END,
        "TarFormatError",
        "claims a size of -1536 bytes",
    ),
    "absurd size": (
        A + header(b"b.txt", base256(2**80)) + C + END,
        "TarFormatError",
        f"claims a size of {2**80} bytes",
    ),
    # the pax parser used to loop forever on a record of length 0
    "pax record of length 0": (
        A + pax(b"0 path=x.txt\n") + C + END,
        "TarFormatError",
        "a record of length 0",
    ),
    "pax record past its header": (
        A + pax(b"99 path=x.txt\n") + C + END,
        "TarFormatError",
        "does not fit",
    ),
    "pax record without a newline": (
        A + pax(b"13 path=x.txtX") + C + END,
        "TarFormatError",
        "does not end in a newline",
    ),
    "pax record without a key": (
        A + pax(b"7 =abc\n") + C + END,
        "TarFormatError",
        "without 'key='",
    ),
    "pax size that is not a number": (
        A + pax(b"13 size=-100\n") + C + END,
        "TarFormatError",
        "not a non-negative decimal number",
    ),
    # a directory whose data hides a header: tarfile read it, the span parser skipped it
    "directory hiding a header": (
        A + member(b"d/", HIDDEN, b"5") + C + END,
        "TarFormatError",
        "directory entry at byte 1024 has a size of 1024 bytes",
    ),
    "old-style directory hiding a header": (
        A + member(b"d/", HIDDEN, b"\0") + C + END,
        "TarFormatError",
        "directory entry",
    ),
    "symlink hiding a header": (
        A + member(b"l", HIDDEN, b"2") + C + END,
        "TarFormatError",
        "symlink entry",
    ),
    "bad checksum mid-archive": (
        A + member(b"b.txt", b"x")[:148] + b"0000001\0" + member(b"b.txt", b"x")[156:] + C + END,
        "TarFormatError",
        "bad tar header checksum at byte 1024",
    ),
    "long name over 64 KiB": (
        A + member(b"././@LongLink", b"n" * (100 * 1024) + b".txt\0", b"L") + C + END,
        "TarFormatError",
        "claims 102405 bytes; at most 65536",
    ),
    "long name claiming 3 GiB": (
        A + header(b"././@LongLink", base256(3 * 2**30), b"L") + b"x" * B + C + END,
        "TarFormatError",
        "claims 3221225472 bytes",
    ),
    "pax header over 64 KiB": (
        A + pax(b"65549 comment=" + b"c" * 65534 + b"\n") + C + END,
        "TarFormatError",
        "at most 65536",
    ),
    "extended header with no member": (
        A + pax(b"14 path=x.txt\n") + END,
        "TarFormatError",
        "followed by the end of the archive",
    ),
    "sparse member": (A + member(b"s.bin", b"x", b"S") + C + END, "TarFormatError", "sparse"),
    "global header that renames every member": (
        A + pax(b"14 path=x.txt\n", b"g") + C + END,
        "TarFormatError",
        "global pax header",
    ),
    "member cut short": (
        A + header(b"b.txt", 5000) + b"x" * 600,
        "TarTruncatedError",
        "member b.txt at byte 1024 truncated (600 of 5000 bytes)",
    ),
    "header cut short": (A + member(b"b.txt", b"x")[:300], "TarTruncatedError", "inside"),
}

CHILD = r"""
import io, json, sys
from wdstream.format.tario import iter_members, split_members
limit_memory()
cases = json.load(open(sys.argv[1]))
out = {}
for name, hexdata in cases.items():
    data = bytes.fromhex(hexdata)
    got = {}
    for how, run in (
        ("span", lambda: split_members(data, name="s3://u:pw@b/x.tar", max_member_bytes=2**20)),
        ("stream", lambda: list(iter_members(io.BytesIO(data), name="s3://u:pw@b/x.tar"))),
    ):
        alarm(10)
        try:
            members = run()
            got[how] = ["ok", [m[0] for m in members]]
        except BaseException as exc:
            got[how] = [type(exc).__name__, str(exc)[:300]]
        finally:
            alarm(0)
    out[name] = got
print(json.dumps(out))
"""


def test_hostile_tars_end_in_one_counted_error_from_both_parsers(tmp_path):
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps({k: v[0].hex() for k, v in HOSTILE.items()}))
    out = run_child(CHILD, str(cases), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for name, (_, error, words) in HOSTILE.items():
        for how in ("span", "stream"):
            kind, message = got[name][how]
            assert kind == error, (name, how, got[name])
            assert words in message, (name, how, message)
            # it names the shard, credentials left out
            assert message.startswith("s3://***@b/x.tar: ") and "pw" not in message, message


def test_both_parsers_read_what_tarfile_reads():
    """Ustar prefixes, GNU long names, pax paths and sizes, old-style regular files,
    contiguous files, links and directories (size 0), signed checksums: the same members,
    by both parsers, as tarfile."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind in (
            ("p/" + "x" * 120 + ".txt", b"long", tarfile.REGTYPE),
            ("dir", b"", tarfile.DIRTYPE),
            ("ü/é.json", b"{}", tarfile.REGTYPE),
            ("l.txt", b"", tarfile.SYMTYPE),
            ("c.bin", b"c" * 700, tarfile.CONTTYPE),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(data)
            info.pax_headers = {"comment": "x"}
            tar.addfile(info, io.BytesIO(data) if data else None)
    gnu = io.BytesIO()
    with tarfile.open(fileobj=gnu, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("g/" + "y" * 200 + ".txt", "short.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"gnu"))
    ustar = io.BytesIO()
    with tarfile.open(fileobj=ustar, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("a" * 90 + "/" + "b" * 90 + ".txt")  # split into a prefix
        info.size = 2
        tar.addfile(info, io.BytesIO(b"us"))
    old = bytearray(member(b"old.txt", b"v7", b"\0"))
    old[5] = 0xE9  # a high byte: a signed checksum (old Sun tars) is accepted too
    old[148:156] = b" " * 8
    old[148:156] = b"%06o\0 " % sum(b - 256 if b > 127 else b for b in old[:B])
    for data in (buf.getvalue(), gnu.getvalue(), ustar.getvalue(), bytes(old) + END):
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            want = [(m.name, t.extractfile(m).read()) for m in t.getmembers() if m.isreg()]
        assert [(n, bytes(d)) for n, d in split_members(data)] == want
        assert list(iter_members(io.BytesIO(data))) == want
        assert list(iter_members(io.BytesIO(gzip.compress(data)))) == want


def test_offsets_of_extended_headers_start_at_the_first_one():
    data = pax(b"14 path=x.txt\n") + member(b"ignored", b"abc") + C + END
    got = list(iter_members_at(io.BytesIO(data)))
    assert [(m[0], m[2], m[3]) for m in got] == [("x.txt", 0, 4 * B), ("c.txt", 4 * B, 6 * B)]


def test_a_span_may_end_at_a_header_but_a_stream_needs_its_end_marker():
    data = A + C
    assert [m[0] for m in split_members(data)] == ["a.txt", "c.txt"]
    with pytest.raises(TarTruncatedError, match="no end-of-archive marker"):
        list(iter_members(io.BytesIO(data), name="s.tar"))
    assert [m[0] for m in iter_members(io.BytesIO(data + END))] == ["a.txt", "c.txt"]


def test_a_corrupt_gzip_stream_is_a_format_error_and_a_failing_store_is_not():
    data = gzip.compress(tar_bytes([("k", {"txt": b"x" * 5000})]))
    bad = data[:30] + bytes(b ^ 0x55 for b in data[30:60]) + data[60:]
    with pytest.raises((TarFormatError, TarTruncatedError), match="gzip stream"):
        list(iter_members(io.BytesIO(bad), name="s.tar.gz"))

    class Failing(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 20:
                raise ConnectionResetError("reset by peer")
            return super().read(min(n, 16) if n and n > 0 else 16)

    with pytest.raises(ConnectionResetError):  # the store's error, as it is: retried above
        list(iter_members(Failing(data), name="s.tar.gz"))


def test_members_over_the_limit_are_never_read_whole_from_a_stream():
    """The stream is never asked for more than 16 MiB at once (a buffered file allocates what
    it is asked for), and a member over the limit is read through in such chunks."""

    class Counting(io.BytesIO):
        biggest = 0

        def read(self, n=-1):
            Counting.biggest = max(Counting.biggest, n)
            return super().read(n)

    big = tar_bytes([("k", {"bin": bytes(40 * 2**20), "txt": b"t"})])
    got = list(iter_members(Counting(big), max_member_bytes=2**20))
    assert got[0][1].size == 40 * 2**20 and got[1] == ("k.txt", b"t")
    assert Counting.biggest <= 16 * 2**20
    Counting.biggest = 0
    assert len(list(iter_members(Counting(big)))[0][1]) == 40 * 2**20  # no limit: read whole
    assert Counting.biggest <= 16 * 2**20
