"""``wdstream synth OUTPUT --samples N``: seeded synthetic multimodal shards with a manifest."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..format.synthetic import MODALITIES
from ..storage import check_writable
from ..write.sources.synthetic import write_synthetic
from .options import add_storage_option_argument, parse_storage_options, size_argument

__all__ = ["HELP", "add_arguments", "run"]

HELP = "write seeded synthetic multimodal shards (same seed, same bytes) with a manifest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="output folder URL")
    p.add_argument("--samples", type=int, required=True, help="how many samples to write")
    p.add_argument(
        "--modalities",
        default="text,image,audio",
        help="comma-separated subset of text,image,audio",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the samples: the same seed writes the same bytes (default 0)",
    )
    p.add_argument(
        "--max-samples-per-shard",
        type=int,
        default=1000,
        help="cut a shard after this many samples (default 1000)",
    )
    p.add_argument(
        "--max-shard-bytes",
        type=size_argument,
        default=256 * 2**20,
        metavar="SIZE",
        help="cut a shard before it grows past this size, e.g. 256MB (default 256MiB)",
    )
    add_storage_option_argument(p)


def run(args: argparse.Namespace) -> int:
    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown or not modalities:
        raise ConfigError(
            f"--modalities {args.modalities!r}: unknown {unknown}; choose from "
            f"{','.join(MODALITIES)}"
        )
    if args.samples <= 0:
        raise ConfigError("--samples must be positive")
    options = parse_storage_options(args.storage_option)
    check_writable(args.output, options)
    manifest = write_synthetic(
        args.output,
        args.samples,
        seed=args.seed,
        modalities=modalities,
        max_samples_per_shard=args.max_samples_per_shard,
        max_shard_bytes=args.max_shard_bytes,
        storage_options=options,
    )
    print(
        f"{args.output}: {manifest.samples} synthetic samples in {len(manifest.shards)} "
        f"shards ({manifest.bytes / 1e6:.1f} MB), seed {args.seed}"
    )
    return 0
