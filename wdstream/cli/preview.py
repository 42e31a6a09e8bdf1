"""``wdstream preview URL --out grid.png``: a picture of the first samples of a source."""

from __future__ import annotations

import argparse
import logging

from ..errors import ConfigError
from ..read.preview import PreviewLayout, preview
from .options import (
    add_allowed_prefix_argument,
    add_storage_option_argument,
    parse_storage_options,
)

__all__ = ["HELP", "add_arguments", "run"]

HELP = (
    "draw a grid of sample images with their captions, plus a line per audio sample "
    "(duration and transcript), from a manifest, a brace pattern or shard URLs"
)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        nargs="+",
        help="manifest folder or manifest.json URL, a brace pattern "
        "(shard-{00000..00009}.tar) or one or more shard URLs",
    )
    parser.add_argument("--out", required=True, help="where to write the PNG (any fsspec URL)")
    parser.add_argument(
        "--samples",
        type=int,
        default=16,
        help="how many samples to draw, from the start (default 16)",
    )
    parser.add_argument("--columns", type=int, default=4, help="grid columns (default 4)")
    parser.add_argument(
        "--thumb", type=int, default=192, help="thumbnail size in pixels (default 192)"
    )
    add_allowed_prefix_argument(parser)
    add_storage_option_argument(parser)


def run(args: argparse.Namespace) -> int:
    if args.columns < 1 or args.thumb < 32:
        raise ConfigError("--columns must be >= 1 and --thumb >= 32")
    source = args.source[0] if len(args.source) == 1 else list(args.source)
    result = preview(
        source,
        args.out,
        samples=args.samples,
        layout=PreviewLayout(columns=args.columns, thumb=args.thumb),
        storage_options=parse_storage_options(args.storage_option) or None,
        allowed_prefixes=args.allowed_prefix,
    )
    log.info(
        "%d samples: %d images in a %dx%d grid, %d audio lines -> %s (%dx%d px)",
        result.samples,
        result.images,
        result.columns,
        result.rows,
        result.audio,
        args.out,
        *result.size,
    )
    return 0
