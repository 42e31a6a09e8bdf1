"""``wdstream verify URL``: re-read every shard and check its sample count and sha256."""

from __future__ import annotations

import argparse
import sys

from ..errors import ShardReadError
from ..format.manifest import load_manifest
from ..format.verify import verify_shard
from .options import (
    add_allowed_prefix_argument,
    add_storage_option_argument,
    parse_storage_options,
)

__all__ = ["HELP", "add_arguments", "run"]

HELP = "re-read every shard of a manifest and check sample counts and sha256s"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="output folder or its manifest.json")
    add_allowed_prefix_argument(p)
    add_storage_option_argument(p)


def run(args: argparse.Namespace) -> int:
    options = parse_storage_options(args.storage_option)
    m = load_manifest(args.url, options, allowed_prefixes=args.allowed_prefix)
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
