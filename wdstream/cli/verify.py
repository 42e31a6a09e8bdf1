"""``wdstream verify URL``: re-read every shard and check its sample count, size and sha256,
and that its index describes it."""

from __future__ import annotations

import argparse
import sys

from ..errors import ShardReadError
from ..format.manifest import load_manifest
from ..format.verify import check_shard
from .options import (
    add_allowed_prefix_argument,
    add_storage_option_argument,
    parse_storage_options,
)

__all__ = ["HELP", "add_arguments", "run"]

HELP = "re-read every shard of a manifest and check sample counts, sha256s and indexes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="output folder or its manifest.json")
    add_allowed_prefix_argument(p)
    add_storage_option_argument(p)


def run(args: argparse.Namespace) -> int:
    options = parse_storage_options(args.storage_option)
    m = load_manifest(args.url, options, allowed_prefixes=args.allowed_prefix)
    bad = 0
    for info, url, index_url in zip(m.shards, m.shard_urls(), m.index_urls(), strict=True):
        try:
            problems = check_shard(
                url,
                options,
                samples=info.samples,
                nbytes=info.bytes,
                sha256=info.sha256,
                index_url=index_url,
            )
        except (ShardReadError, OSError) as exc:
            print(f"FAIL {info.url}: {exc}", file=sys.stderr)
            bad += 1
            continue
        if problems:
            print(f"FAIL {info.url}: {'; '.join(problems)}", file=sys.stderr)
            bad += 1
    if bad:
        print(f"{bad} of {len(m.shards)} shards do not match the manifest", file=sys.stderr)
        return 1
    print(f"OK: {len(m.shards)} shards, {m.samples} samples match the manifest")
    return 0
