"""``wdstream upgrade URL``: rewrite a version-1 manifest in the compact version 2."""

from __future__ import annotations

import argparse

from ..format.manifest import upgrade_manifest
from .options import (
    add_allowed_prefix_argument,
    add_storage_option_argument,
    parse_storage_options,
)

__all__ = ["HELP", "add_arguments", "run"]

HELP = (
    "rewrite an old (version 1) manifest in the compact version 2, from the manifest "
    "alone: no shard is read, the indexes stay as they are; the manifest is checked as "
    "every reader checks it first (exit 2 when it is malformed)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="output folder or its manifest.json")
    add_allowed_prefix_argument(p)
    add_storage_option_argument(p)


def run(args: argparse.Namespace) -> int:
    changed = upgrade_manifest(
        args.url,
        parse_storage_options(args.storage_option),
        allowed_prefixes=args.allowed_prefix,
    )
    print(
        f"{args.url}: "
        + ("manifest rewritten as version 2" if changed else "already version 2; nothing to do")
    )
    return 0
