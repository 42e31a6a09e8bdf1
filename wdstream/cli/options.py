"""Option parsing the commands share: ``--storage-option KEY=VALUE``, ``--allowed-prefix`` and
sizes such as ``256MB``."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from ..errors import ConfigError

__all__ = [
    "parse_size",
    "size_argument",
    "parse_storage_options",
    "add_storage_option_argument",
    "add_allowed_prefix_argument",
    "int_argument",
]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str | int) -> int:
    """``"256MB"`` -> 256_000_000, ``"1GiB"`` -> 2**30, ``"4096"`` -> 4096 (KB/MB/GB are
    powers of 1000, KiB/MiB/GiB powers of 1024). Raises ConfigError for anything else."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(
            f"cannot read size {text!r}; write e.g. 256MB, 512MiB, 1GiB or a number of bytes"
        )
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise ConfigError(f"size {text!r} must be positive")
    return value


def _value(text: str) -> Any:
    try:
        return json.loads(text)  # true/false/null, numbers, {...}, [...]
    except ValueError:
        return text


def parse_storage_options(items: list[str] | None) -> dict[str, Any]:
    """``["endpoint_url=http://h:9000", "anon=false", "client_kwargs.region_name=x"]`` ->
    fsspec storage options. ``endpoint_url`` also goes into s3fs's ``client_kwargs``; dotted
    keys make nested dicts; values are read as JSON when they parse (true, 3, {...})."""
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--storage-option {item!r} is not KEY=VALUE")
        value = _value(raw)
        parts = key.split(".")
        target = options
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
        if key == "endpoint_url":
            options.setdefault("client_kwargs", {})["endpoint_url"] = value
    return options


def add_storage_option_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the store's fsspec filesystem, repeatable: S3 (s3fs) "
        "endpoint_url=, key=, secret=, anon=true; GCS (gcsfs) token=KEY.json|anon, project=, "
        "endpoint_url=; Azure (adlfs) connection_string=, account_name= with account_key= or "
        "sas_token=. Prefer each store's environment variables for credentials "
        "(docs/distributed.md)",
    )


def add_allowed_prefix_argument(parser: argparse.ArgumentParser) -> None:
    """``--allowed-prefix PREFIX`` (repeatable, into ``args.allowed_prefix``): for every
    command that reads a manifest, what ``config.allowed_prefixes`` is to the reader."""
    parser.add_argument(
        "--allowed-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="a URL prefix outside the manifest's folder whose shards it may "
        "name (repeatable; as config.allowed_prefixes)",
    )


def size_argument(text: str) -> int:
    """argparse ``type=`` for sizes: :func:`parse_size`, its message shown as the usage error."""
    try:
        return parse_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def int_argument(minimum: int):
    """argparse ``type=`` for an integer of at least ``minimum`` (a usage error, exit 2,
    otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum of {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse
