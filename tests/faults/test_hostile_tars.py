"""Hostile tars against every reader of whole shards, in bounded memory: ``index``, ``verify``
and the reader (exact and streaming) on a 14 MB ``.tar.gz`` whose GNU long-name header claims
3 GiB (and holds them), a ``.tar.gz`` with a 3 GiB member, and a 3 GiB ``.tar`` (sparse on
disk). They used to take over 5 GB (``tarfile`` reads long names whole); the child runs
under RLIMIT_AS (what it maps after importing torch, plus 1.5 GB)."""

from __future__ import annotations

import json
import struct
import tarfile
import zlib

import pytest
from bounded import run_child

G3 = 3 * 2**30
CHUNK = 16 * 2**20


def _header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(tarfile.GNU_FORMAT)


def _text(name: str, text: bytes) -> bytes:
    return _header(name, len(text)) + text + bytes(-len(text) % 512)


def write_gz(path, parts) -> None:
    """A gzip file of ``parts`` (bytes, or an int: that many zero bytes), one deflate stream
    made in seconds: 16 MiB of zeros is compressed once and its blocks repeated (after a full
    flush each copy stands alone)."""
    z = zlib.compressobj(1, zlib.DEFLATED, -15)
    once = zlib.compressobj(1, zlib.DEFLATED, -15)
    zeros = bytes(CHUNK)
    block = once.compress(zeros) + once.flush(zlib.Z_FULL_FLUSH)
    crc = size = 0
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")
        for part in parts:
            if isinstance(part, int):
                n, rest = divmod(part, CHUNK)
                f.write(z.flush(zlib.Z_FULL_FLUSH))
                for _ in range(n):
                    f.write(block)
                    crc = zlib.crc32(zeros, crc)
                size += n * CHUNK
                part = bytes(rest)
            f.write(z.compress(part))
            crc = zlib.crc32(part, crc)
            size += len(part)
        f.write(z.flush())
        f.write(struct.pack("<II", crc, size & 0xFFFFFFFF))


CHILD = r"""
import json, logging, sys
import wdstream
from wdstream.format.manifest import load_manifest
from wdstream.format.verify import check_shard
from wdstream.write.indexer import index_dataset

wdstream.make_loader, wdstream.Config  # torch is imported before the limit
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
limit_memory()
folder = sys.argv[1]
out = {}
report = index_dataset(folder, quiet=True, workers=1)
out["samples"] = {s.url: s.samples for s in report.manifest.shards}
out["skipped"] = report.manifest.skipped
m = load_manifest(folder)
out["verify"] = {
    info.url: check_shard(
        url, samples=info.samples, nbytes=info.bytes, sha256=info.sha256, index_url=index
    )
    for info, url, index in zip(m.shards, m.shard_urls(), m.index_urls())
}
config = dict(batch_size=1, num_workers=0, cache_size=0, shuffle=False, drop_last=True,
              vision_dim=16, max_text_length=16, persistent_workers=False)
for mode, source in (("exact", folder), ("streaming", sorted(m.shard_urls()))):
    config["exact"] = mode == "exact"
    loader = wdstream.make_loader(source, wdstream.Config(**config))
    out[mode] = sorted(k for batch in loader for k in batch["keys"])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_index_verify_and_read_3_gib_claims_in_bounded_memory(tmp_path):
    long_name = [_text("a0.txt", b"zero"), _header("././@LongLink", G3, b"L"), G3]
    write_gz(tmp_path / "long.tar.gz", [*long_name, _text("a1.txt", b"one"), bytes(1024)])
    big = [_text("b0.txt", b"zero"), _header("b1.bin", G3), G3, _text("b1.txt", b"one")]
    write_gz(tmp_path / "big.tar.gz", [*big, _text("b2.txt", b"two"), bytes(1024)])
    with open(tmp_path / "sparse.tar", "wb") as f:
        f.write(_text("c0.txt", b"zero") + _header("c1.bin", G3))
        f.seek(G3, 1)  # a hole: 3 GiB of zeros that take no disk
        f.write(_text("c1.txt", b"one") + _text("c2.txt", b"two") + bytes(1024))
    assert (tmp_path / "long.tar.gz").stat().st_size < 20 * 2**20
    out = run_child(CHILD, str(tmp_path), timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # the long name is refused where it starts; members over the limit are read through
    assert got["samples"] == {"big.tar.gz": 3, "long.tar.gz": 0, "sparse.tar": 3}
    assert got["skipped"] == {"truncated or corrupt shard": 1}
    assert got["verify"]["big.tar.gz"] == [] and got["verify"]["sparse.tar"] == []
    assert "claims 3221225472 bytes; at most 65536" in got["verify"]["long.tar.gz"][0]
    assert "claims 3221225472 bytes" in out.stderr
    # the reader skips the 3 GiB members (over max_member_bytes) and counts them; in exact
    # mode another sample of the batch takes the place of each
    assert len(got["exact"]) == 6 and set(got["exact"]) == {"b0", "b2", "c0", "c2"}
    assert got["streaming"] == ["b0", "b2", "c0", "c2"]
    assert "member b1.bin is 3221225472 bytes, over max_member_bytes" in out.stderr


# -- a shard changed under its index: the exact reader's spans meet the hostile header ---------
def _checksum(h: bytearray) -> bytes:
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _negative_size(header: bytes) -> bytes:
    """``header`` with a base-256 size of -512: the span parser used to step from this
    header back to itself, forever (2.1 GB after 120 s)."""
    h = bytearray(header)
    h[124:136] = b"\xff" + ((1 << 88) - 512).to_bytes(11, "big")
    return _checksum(h)


def _pax_of_length_0(header: bytes) -> bytes:
    """A pax header and its record block, ``0 path=x.txt``: the pax parser used to loop on
    it forever."""
    h = bytearray(header)
    h[:100] = b"././@PaxHeader".ljust(100, b"\0")
    h[124:136] = b"%011o\0" % 512
    h[156:157] = b"x"
    return _checksum(h) + b"0 path=x.txt\n".ljust(512, b"\0")


READ_CHILD = r"""
import json, logging, sys
import wdstream

wdstream.make_loader, wdstream.Config  # torch is imported before the limit
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
limit_memory()
alarm(100)  # a hang ends as Hang, a traceback and rc 1, before the parent's timeout
out = {}
for workers in (0, 2):
    config = wdstream.Config(batch_size=2, num_workers=workers, cache_size=0, shuffle=False,
                             vision_dim=16, max_text_length=16, persistent_workers=False,
                             error_tolerance=-1)
    loader = wdstream.make_loader(sys.argv[1], config)
    keys = [k for batch in loader for k in batch["keys"]]
    out[workers] = {"keys": keys, "stats": loader.stats()}
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, words",
    [(_negative_size, "claims a size of -512 bytes"), (_pax_of_length_0, "a record of length 0")],
)
def test_a_hostile_header_under_an_index_is_counted_by_the_exact_reader(tmp_path, damage, words):
    """Item 6 end to end: a shard whose bytes changed under its index (same size, so the
    reader's size check passes) to hide a header with a negative size, or a pax record of
    length 0. The exact reader, with 0 and 2 workers, ends in bounded time and memory,
    delivers the other samples and counts the damaged one; verify fails the shard."""
    from wdstream.cli import main
    from wdstream.format.index import parse_index
    from wdstream.format.tario import tar_bytes
    from wdstream.write.indexer import index_dataset

    keys = [f"{s:05d}{i:04d}" for s in range(2) for i in range(6)]
    for s in range(2):
        samples = [(k, {"txt": k.encode() * 150, "json": b"{}"}) for k in keys[6 * s : 6 * s + 6]]
        (tmp_path / f"{s:05d}.tar").write_bytes(tar_bytes(samples))
    m = index_dataset(str(tmp_path), quiet=True).manifest
    assert main(["verify", str(tmp_path)]) == 0
    offsets = parse_index((tmp_path / m.shards[1].index).read_bytes())["offsets"]
    shard = bytearray((tmp_path / "00001.tar").read_bytes())
    at = int(offsets[3])  # sample 00001003's first header
    bad = damage(bytes(shard[at : at + 512]))
    shard[at : at + len(bad)] = bad
    (tmp_path / "00001.tar").write_bytes(bytes(shard))

    out = run_child(READ_CHILD, str(tmp_path), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for workers in ("0", "2"):
        delivered, rows = set(got[workers]["keys"]), got[workers]["stats"]
        placeholders = sum(row["placeholders"] for row in rows)
        # every batch is whole; the damaged sample is never delivered, and is counted
        assert len(got[workers]["keys"]) == 12, (workers, got[workers])
        assert "000010003" not in delivered and set(keys[:6]) <= delivered
        assert len(delivered) + placeholders == 12, (workers, sorted(delivered), rows)
        assert any(row["skipped"] for row in rows), rows
    assert f"00001.tar: unreadable shard ({tmp_path}/00001.tar: " in out.stderr
    assert words in out.stderr, out.stderr[-3000:]
    assert main(["verify", str(tmp_path)]) == 1
