"""The ``wdstream`` command. Each subcommand lives in ``wdstream/cli/<name>.py`` with
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches.
The library never imports this package."""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys

from ..errors import WdstreamError

__all__ = ["main", "COMMANDS"]

COMMANDS = ("convert", "index", "synth", "inspect", "verify", "upgrade", "preview", "demo")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors name the closest valid option or command, and show the
    usage of the subcommand an unknown option was given to (not the top-level usage)."""

    commands: dict[str, argparse.ArgumentParser]

    def parse_args(self, args=None, namespace=None):
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            sub = getattr(self, "commands", {}).get(getattr(ns, "command", None), self)
            sub.error(f"unrecognized arguments: {' '.join(extra)}{_suggest(sub, extra)}")
        return ns

    def error(self, message: str):
        if "invalid choice" in message:
            bad = message.split("invalid choice: ", 1)[-1].split(" (", 1)[0].strip("'")
            choices = [
                c
                for a in self._actions
                for c in (a.choices or ())
                if isinstance(a.choices, (dict, list, tuple))
            ]
            close = difflib.get_close_matches(bad, [str(c) for c in choices], n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        super().error(message)


def _suggest(parser: argparse.ArgumentParser, extra: list[str]) -> str:
    options = [o for a in parser._actions for o in a.option_strings]
    hints = []
    for item in extra:
        if item.startswith("--"):
            close = difflib.get_close_matches(item.split("=", 1)[0], options, n=1, cutoff=0.6)
            if close:
                hints.append(f"did you mean {close[0]} (for {item.split('=', 1)[0]})?")
    return "; " + "; ".join(hints) if hints else ""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="wdstream",
        description="Hugging Face datasets -> WebDataset shards on any fsspec URL -> PyTorch.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help=f"logging level of wdstream's own messages: {', '.join(LOG_LEVELS)} (default INFO)",
    )
    parser.add_argument(
        "--library-log-level",
        default="WARNING",
        type=str.upper,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help="logging level of the libraries wdstream uses (the Azure SDK, gcsfs, fsspec, "
        "botocore, datasets...; default WARNING: at INFO the Azure SDK logs every request "
        "with its headers)",
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="what to do (wdstream COMMAND --help for its options)",
    )
    parser.commands = {}
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
        parser.commands[name] = p
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # the root logger (every library's) stays at --library-log-level; only wdstream's own
    # loggers follow --log-level
    logging.basicConfig(
        level=getattr(logging, args.library_log_level),
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("wdstream").setLevel(getattr(logging, args.log_level))
    try:
        return int(args._run(args) or 0)
    except WdstreamError as exc:
        logging.getLogger("wdstream").error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
