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
