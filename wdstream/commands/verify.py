"""``wdstream verify URL``: re-read every shard and check its sample count and sha256."""

from __future__ import annotations

import argparse
import hashlib
import sys

from .convert import add_storage_option_argument, parse_storage_options

__all__ = ["HELP", "add_arguments", "run", "verify_shard"]

HELP = "re-read every shard of a manifest and check sample counts and sha256s"


class _HashingReader:
    """A read-only stream that hashes and counts what passes through it."""

    def __init__(self, f):
        self.f = f
        self.sha = hashlib.sha256()
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.bytes += len(data)
        return data


def verify_shard(url: str, storage_options=None) -> tuple[int, int, str]:
    """``(samples, bytes, sha256)`` of a shard, read once as a stream. Raises ShardReadError
    when the tar cannot be read to its end."""
    from .. import storage
    from ..errors import ShardReadError
    from ..tario import group_samples, iter_members

    with storage.open_read(url, storage_options) as f:
        reader = _HashingReader(f)
        try:
            count = sum(1 for _ in group_samples(iter_members(reader, name=url)))
        except Exception as exc:
            raise ShardReadError(f"shard {url} cannot be read: {exc}", shard=url) from exc
        while reader.read(1 << 20):  # the padding after the end-of-archive blocks
            pass
    return count, reader.bytes, reader.sha.hexdigest()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="output folder or its manifest.json")
    add_storage_option_argument(p)


def run(args: argparse.Namespace) -> int:
    from ..errors import ShardReadError
    from ..manifest import load_manifest

    options = parse_storage_options(args.storage_option)
    m = load_manifest(args.url, options)
    bad = 0
    for info, url in zip(m.shards, m.shard_urls(), strict=True):
        try:
            samples, nbytes, sha = verify_shard(url, options)
        except (ShardReadError, OSError) as exc:
            print(f"FAIL {info.url}: {exc}", file=sys.stderr)
            bad += 1
            continue
        problems = []
        if samples != info.samples:
            problems.append(f"{samples} samples, manifest says {info.samples}")
        if nbytes != info.bytes:
            problems.append(f"{nbytes} bytes, manifest says {info.bytes}")
        if sha != info.sha256:
            problems.append(f"sha256 {sha[:12]}..., manifest says {info.sha256[:12]}...")
        if problems:
            print(f"FAIL {info.url}: {'; '.join(problems)}", file=sys.stderr)
            bad += 1
    if bad:
        print(f"{bad} of {len(m.shards)} shards do not match the manifest", file=sys.stderr)
        return 1
    print(f"OK: {len(m.shards)} shards, {m.samples} samples match the manifest")
    return 0
