"""``wdstream synth OUTPUT --samples N``: seeded synthetic multimodal shards with a manifest."""

from __future__ import annotations

import argparse

from .convert import add_storage_option_argument, parse_size, parse_storage_options

__all__ = ["HELP", "add_arguments", "run"]

HELP = "write seeded synthetic multimodal shards (same seed, same bytes) with a manifest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="output folder URL")
    p.add_argument("--samples", type=int, required=True)
    p.add_argument("--modalities", default="text,image,audio",
                   help="comma-separated subset of text,image,audio")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-samples-per-shard", type=int, default=1000)
    p.add_argument("--max-shard-bytes", type=parse_size, default=256 * 2**20, metavar="SIZE")
    add_storage_option_argument(p)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..sources.synthetic import MODALITIES, write_synthetic
    from ..storage import check_writable

    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown or not modalities:
        raise ConfigError(f"--modalities {args.modalities!r}: unknown {unknown}; choose from "
                          f"{','.join(MODALITIES)}")
    if args.samples <= 0:
        raise ConfigError("--samples must be positive")
    options = parse_storage_options(args.storage_option)
    check_writable(args.output, options)
    manifest = write_synthetic(args.output, args.samples, seed=args.seed, modalities=modalities,
                               max_samples_per_shard=args.max_samples_per_shard,
                               max_shard_bytes=args.max_shard_bytes, storage_options=options)
    print(f"{args.output}: {manifest.samples} synthetic samples in {len(manifest.shards)} "
          f"shards ({manifest.bytes / 1e6:.1f} MB), seed {args.seed}")
    return 0
