"""``wdstream convert SOURCE OUTPUT``: a Hugging Face dataset -> WebDataset shards + manifest."""

from __future__ import annotations

import argparse
import difflib
import os
from typing import Any

from .. import registry
from ..config import load_config
from ..errors import ConfigError
from ..rows.source import LOCAL_BUILDERS, near_local_folder
from ..storage import join_url
from ..write.convert import convert, convert_entry
from ..write.plan import describe_columns
from .options import (
    add_storage_option_argument,
    int_argument,
    parse_storage_options,
    size_argument,
)

__all__ = ["HELP", "add_arguments", "run"]

HELP = "convert a Hugging Face dataset into WebDataset shards with a manifest (resumable)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        nargs="?",
        help="Hub id (owner/name), registry name (see "
        "--registry), local dataset folder, or builder (e.g. parquet) "
        "with --data-files; with --all, leave it out",
    )
    p.add_argument(
        "output",
        nargs="?",
        help="output folder URL: s3://bucket/prefix, a local path, memory://...",
    )
    p.add_argument(
        "--task-type",
        default=None,
        choices=None,
        help="with --all: convert every registry dataset of this task type into OUTPUT/<name>/",
    )
    p.add_argument(
        "--all",
        action="store_true",
        dest="all_of_type",
        help="convert every registry dataset of --task-type",
    )
    p.add_argument(
        "--text-template",
        default=None,
        help="form the text from columns, e.g. '{instruction}\\n{output}'",
    )
    p.add_argument("--name", default=None, help="dataset config name")
    p.add_argument("--split", default=None, help="split (default: train)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    p.add_argument(
        "--data-files",
        nargs="+",
        default=None,
        metavar="PATTERN",
        help="data files / glob patterns for a builder source",
    )
    p.add_argument(
        "--image-column",
        default=None,
        metavar="COLUMN",
        help="column holding the image (default: the first Image feature)",
    )
    p.add_argument(
        "--audio-column",
        default=None,
        metavar="COLUMN",
        help="column holding the audio (default: the first Audio feature)",
    )
    p.add_argument(
        "--text-column",
        action="append",
        default=None,
        dest="text_columns",
        help="text column (repeatable; several are joined by newlines)",
    )
    p.add_argument(
        "--drop-column",
        action="append",
        default=None,
        dest="drop_columns",
        metavar="COLUMN",
        help="leave a source column out of the samples (repeatable)",
    )
    p.add_argument(
        "--validate",
        choices=("cheap", "full"),
        default=None,
        help="checks of each image and audio clip: cheap structural checks (default: "
        "not cut short, header parses) or full (decode every one)",
    )
    p.add_argument(
        "--limit",
        type=int_argument(1),
        default=None,
        metavar="N",
        help="convert about N rows for a trial: the first N/P rows of each of P = "
        "ceil(N/100) contiguous groups of source shards (one group: the "
        "first N rows)",
    )
    p.add_argument(
        "--max-samples-per-shard",
        type=int_argument(1),
        default=None,
        metavar="N",
        help="start a new shard after N samples (default 1000)",
    )
    p.add_argument(
        "--max-shard-bytes",
        type=size_argument,
        default=None,
        metavar="SIZE",
        help="e.g. 256MB, 1GiB",
    )
    p.add_argument(
        "--workers",
        type=int_argument(0),
        default=None,
        help="processes (default, or 0: one per CPU core); with a local Ray, its CPUs",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default=None,
        help="where partitions run: a local process pool (default) or Ray tasks "
        "(pip install 'wdstream[ray]')",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="Ray cluster to join: 'auto', host:port or ray://host:10001 (implies "
        "--executor ray; without it, --executor ray starts a local Ray)",
    )
    p.add_argument(
        "--image-ext",
        default=None,
        metavar="EXT",
        help="name every image member .EXT (e.g. jpg), whatever its format, so that "
        "datasets.load_dataset('webdataset') accepts mixed JPEG/PNG/WEBP; the "
        "bytes are untouched (default: each image's own format)",
    )
    p.add_argument(
        "--audio-ext",
        default=None,
        metavar="EXT",
        help="name every audio member .EXT (e.g. flac), whatever its format (default: "
        "each clip's own format)",
    )
    p.add_argument(
        "--registry",
        default=None,
        metavar="YAML",
        help="dataset registry file for registry names and --all (default: "
        "$WDSTREAM_DATASETS, else the registry shipped with wdstream)",
    )
    add_storage_option_argument(p)
    p.add_argument(
        "--append",
        action="store_true",
        help="add SOURCE to the finished dataset in OUTPUT (new shards and a "
        "manifest covering both; nothing finished is rewritten; re-run the "
        "same command to resume it)",
    )
    p.add_argument(
        "--allow-duplicate-source",
        action="store_true",
        help="with --append: append SOURCE even when an earlier segment holds the same source "
        "(name, config, split, data files) made with other options; its rows are then in "
        "OUTPUT twice (default: refused)",
    )
    p.add_argument(
        "--allow-path",
        action="append",
        default=None,
        dest="allow_paths",
        metavar="DIR",
        help="a folder (local, or a URL prefix such as s3://bucket/media/) from which media "
        "cells given by path may be read, besides the source's own folder (repeatable; "
        "config allow_paths). A path anywhere else is not read: its row is skipped and "
        "counted as path_outside_source",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--config",
        default=None,
        metavar="YAML",
        help="config file (wdstream.Config keys); options above win",
    )


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    for name in (
        "image_column",
        "audio_column",
        "limit",
        "max_samples_per_shard",
        "max_shard_bytes",
        "workers",
        "image_ext",
        "audio_ext",
        "validate",
    ):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.text_columns:
        overrides["text_columns"] = tuple(args.text_columns)
    if args.drop_columns:
        overrides["drop_columns"] = tuple(args.drop_columns)
    if args.allow_duplicate_source and not args.append:
        raise ConfigError("--allow-duplicate-source only applies with --append")
    if args.allow_paths:
        overrides["allow_paths"] = tuple(args.allow_paths)
    if args.storage_option:
        overrides["storage_options"] = parse_storage_options(args.storage_option)
    if args.quiet:
        overrides["quiet"] = True
    if args.executor is not None:
        overrides["executor"] = args.executor
    if args.ray_address is not None:
        if args.executor == "local":
            raise ConfigError("--ray-address needs --executor ray (or no --executor)")
        overrides["executor"] = "ray"
        overrides["ray_address"] = args.ray_address
    if args.text_template is not None:
        overrides["text_template"] = args.text_template.replace("\\n", "\n")
    config = load_config(args.config, **overrides)
    for output, manifest in _convert_all(args, config):
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(manifest.skipped.items())) or "none"
        print(
            f"{output}: {manifest.samples} samples in {len(manifest.shards)} shards "
            f"({manifest.bytes / 1e6:.1f} MB); skipped: {skipped}"
        )
    return 0


def _convert_all(args: argparse.Namespace, config):
    """Yield ``(output, manifest)``: one dataset, a registry name, or a whole task type."""
    if args.all_of_type:
        if not args.task_type:
            raise ConfigError("--all needs --task-type (e.g. --task-type code --all OUTPUT)")
        output = args.output or args.source
        if args.output is not None and args.source is not None:
            raise ConfigError("with --all give only OUTPUT, not a source")
        reg = registry.get_registry(args.registry)
        for entry in registry.select_datasets("all", args.task_type, registry=reg):
            url = join_url(output, entry.name)
            yield (
                url,
                convert_entry(
                    entry,
                    url,
                    config,
                    on_plan=_print_plan,
                    append=args.append,
                    allow_duplicate_source=args.allow_duplicate_source,
                ),
            )
        return
    if args.output is None:
        raise ConfigError("give SOURCE and OUTPUT (or --task-type T --all OUTPUT)")
    entry = _registry_entry(args.source, args.registry, args.data_files)
    if entry is not None:
        yield (
            args.output,
            convert_entry(
                entry,
                args.output,
                config,
                on_plan=_print_plan,
                append=args.append,
                allow_duplicate_source=args.allow_duplicate_source,
            ),
        )
        return
    yield (
        args.output,
        convert(
            args.source,
            args.output,
            name=args.name,
            split=args.split,
            data_files=args.data_files,
            revision=args.revision,
            config=config,
            on_plan=_print_plan,
            append=args.append,
            allow_duplicate_source=args.allow_duplicate_source,
        ),
    )


def _print_plan(plan) -> None:
    """Show the column mapping before the job starts, so a wrong one is seen at once."""
    print(
        f"{plan.spec.source}: {plan.n_partitions} partition(s); columns: "
        f"{describe_columns(plan.columns)}",
        flush=True,
    )


def _registry_entry(source: str, path: str | None, data_files):
    """The registry entry named ``source``, or None for a Hub id (``owner/name``), a local
    path or a builder with ``--data-files``. A bare name that is none of these must be in the
    registry: ConfigError otherwise (never a silent Hub lookup)."""
    if "/" in source or os.sep in source or os.path.exists(os.path.expanduser(source)):
        return None
    if data_files is not None and source in LOCAL_BUILDERS:
        return None
    reg = registry.get_registry(path)
    entry = reg.get(source)
    if entry is not None:
        return entry
    close = difflib.get_close_matches(source, list(reg), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    near = near_local_folder(source)
    if near:
        hint += f" A local folder {near!r} exists: did you mean it?"
    where = path or os.environ.get("WDSTREAM_DATASETS") or "the registry shipped with wdstream"
    raise ConfigError(
        f"{source!r} is not a dataset of {where} (it has: {', '.join(sorted(reg)) or 'none'})."
        f"{hint} Give a registry name, a Hub id as owner/name, a local folder, or a builder "
        f"such as parquet with --data-files; --registry PATH reads your own registry",
        key=source,
    )
