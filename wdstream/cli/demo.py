"""``wdstream demo``: the whole system on this machine (see ``wdstream.demo.run``)."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = (
    "build a small multimodal source, convert it to a loopback S3 (or a local folder), "
    "verify it, train a tiny model on it, and report"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir",
        default="wdstream-demo-out",
        help="folder for the source, the preview and local shards (default ./wdstream-demo-out)",
    )
    p.add_argument("--samples", type=int, default=240, help="rows in the demo source")
    p.add_argument("--steps", type=int, default=10, help="training steps")
    p.add_argument(
        "--store",
        choices=("auto", "s3", "local"),
        default="auto",
        help="auto: loopback S3 when moto is installed, else a local folder",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..demo.run import run_demo  # torch, datasets and moto: only when the demo runs

    report = run_demo(
        args.workdir, samples=args.samples, steps=args.steps, store=args.store, quiet=args.quiet
    )
    print("wdstream demo: done")
    for line in report.lines():
        print("  " + line)
    return 0 if report.verified == report.shards and report.steps > 0 else 1
