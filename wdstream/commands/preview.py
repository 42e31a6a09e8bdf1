"""``wdstream preview URL --out grid.png``: a picture of the first samples of a source."""

from __future__ import annotations

import argparse
import json
import logging

from ..errors import ConfigError

HELP = ("draw a grid of sample images with their captions, plus a line per audio sample "
        "(duration and transcript), from a manifest, a brace pattern or shard URLs")

log = logging.getLogger(__name__)


def _storage_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="+",
                        help="manifest folder or manifest.json URL, a brace pattern "
                             "(shard-{00000..00009}.tar) or one or more shard URLs")
    parser.add_argument("--out", required=True, help="where to write the PNG (any fsspec URL)")
    parser.add_argument("--samples", type=int, default=16,
                        help="how many samples to draw, from the start (default 16)")
    parser.add_argument("--columns", type=int, default=4, help="grid columns (default 4)")
    parser.add_argument("--thumb", type=int, default=192,
                        help="thumbnail size in pixels (default 192)")
    parser.add_argument("--storage-option", action="append", default=[], type=_storage_option,
                        metavar="KEY=VALUE",
                        help="fsspec storage option (repeatable; JSON values allowed), e.g. "
                             "client_kwargs='{\"endpoint_url\": \"http://127.0.0.1:9000\"}'")


def run(args: argparse.Namespace) -> int:
    from ..preview import PreviewLayout, preview

    if args.columns < 1 or args.thumb < 32:
        raise ConfigError("--columns must be >= 1 and --thumb >= 32")
    source = args.source[0] if len(args.source) == 1 else list(args.source)
    result = preview(source, args.out, samples=args.samples,
                     layout=PreviewLayout(columns=args.columns, thumb=args.thumb),
                     storage_options=dict(args.storage_option) or None)
    log.info("%d samples: %d images in a %dx%d grid, %d audio lines -> %s (%dx%d px)",
             result.samples, result.images, result.columns, result.rows, result.audio,
             args.out, *result.size)
    return 0
