"""The ``wdstream`` command. Each subcommand lives in ``wdstream/cli/<name>.py`` with
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches.
The library never imports this package."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import WdstreamError

__all__ = ["main", "COMMANDS"]

COMMANDS = ("convert", "synth", "inspect", "verify", "preview", "demo")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wdstream",
        description="Hugging Face datasets -> WebDataset shards on any fsspec URL -> PyTorch.")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        metavar="LEVEL",
                        help=f"logging level: {', '.join(LOG_LEVELS)} (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"wdstream.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"wdstream.cli.{name}":
                continue
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except WdstreamError as exc:
        logging.getLogger("wdstream").error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
