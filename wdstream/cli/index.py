"""``wdstream index SOURCE [--out URL]``: a manifest and per-shard indexes for shards that
wdstream did not write (img2dataset output and the like), so they get exact epochs, resume
and mid-shard reads. The indexing itself lives in :mod:`wdstream.write.indexer`."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from ..config import Config
from ..errors import ConfigError, redact
from ..write.executors import make_executor, merge_secrets, split_secrets
from ..write.indexer import ShardTask, index_dataset
from .options import add_storage_option_argument, parse_storage_options

__all__ = ["HELP", "add_arguments", "run"]

HELP = (
    "index existing WebDataset shards (.tar/.tar.gz) in place: write a manifest and "
    "per-shard indexes, never a shard"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        nargs="+",
        help="a folder or prefix holding .tar/.tar.gz shards (s3://bucket/data/), "
        "a brace pattern ('s3://bucket/data/{00000..00099}.tar'), or several "
        "shard URLs",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="URL",
        help="write the manifest and indexes here instead of beside the shards "
        "(when the data's bucket is read-only); the manifest then names the "
        "shards by their full URLs",
    )
    p.add_argument(
        "--workers", type=int, default=8, help="shards indexed at once (threads; default 8)"
    )
    p.add_argument(
        "--executor",
        choices=("threads", "local", "ray"),
        default="threads",
        help="threads in this process (default), a local process pool, or Ray "
        "tasks (pip install 'wdstream[ray]')",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="Ray cluster to join with --executor ray: 'auto', host:port or "
        "ray://host:10001 (default: start a local Ray)",
    )
    add_storage_option_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


class _Task(ShardTask):
    """A shard task that keeps credentials out of what a cluster executor ships."""

    def without_secrets(self) -> tuple[_Task, dict[str, Any]]:
        public, secrets = split_secrets(self.storage_options)
        return replace(self, storage_options=public), secrets

    def with_secrets(self, secrets: dict[str, Any]) -> _Task:
        return replace(self, storage_options=merge_secrets(self.storage_options, secrets))


class _SecretTasks:
    """Wraps an executor: hands it tasks that can shed their credentials (Ray)."""

    def __init__(self, executor):
        self.executor = executor

    def map_unordered(self, fn, tasks, *, progress=None):
        wrapped = [_Task(**{f: getattr(t, f) for f in t.__dataclass_fields__}) for t in tasks]
        return self.executor.map_unordered(fn, wrapped, progress=progress)


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {args.workers}")
    if args.ray_address is not None and args.executor != "ray":
        raise ConfigError("--ray-address needs --executor ray")
    options = parse_storage_options(args.storage_option)
    source = args.source[0] if len(args.source) == 1 else list(args.source)
    executor = None
    if args.executor != "threads":
        executor = make_executor(
            Config(executor=args.executor, workers=args.workers, ray_address=args.ray_address)
        )
    try:
        report = index_dataset(
            source,
            args.out,
            storage_options=options,
            workers=args.workers,
            executor=_SecretTasks(executor) if executor else None,
            quiet=args.quiet,
        )
    finally:
        if executor is not None:
            executor.close()
    m = report.manifest
    skipped = ", ".join(f"{k}={v}" for k, v in sorted(m.skipped.items())) or "none"
    whole = sum(1 for s in m.shards if s.whole)
    print(
        f"{redact(report.manifest_url)}: {m.samples} samples in {len(m.shards)} shards "
        f"({report.indexed} read, {report.reused} unchanged since the last run); "
        f"skipped: {skipped}"
    )
    if whole:
        print(
            f"{whole} compressed shard(s) are read from their start only (no mid-shard "
            f"reads): see docs/existing-shards.md"
        )
    if report.problems:
        print(
            f"{len(report.problems)} shard(s) with problems (logged above; listed in the "
            f"manifest's source.problems): "
            f"{', '.join(redact(u) for u in list(report.problems)[:5])}"
            f"{' ...' if len(report.problems) > 5 else ''}"
        )
    if report.unusable:
        shown = [ascii(redact(u))[1:-1] for u in list(report.unusable)[:5]]
        print(
            f"{len(report.unusable)} file(s) not indexed (logged above; counted in the "
            f"manifest's skipped): {', '.join(shown)}{' ...' if len(report.unusable) > 5 else ''}"
        )
    if report.outside:
        print(
            "The manifest names shards outside its own folder. Allow the reader to read "
            "them with this line in your config:"
        )
        print(f"allowed_prefixes: [{', '.join(report.prefixes)}]")
    print(f"read it with: wdstream.make_loader({redact(report.out)!r}, config)")
    return 0
