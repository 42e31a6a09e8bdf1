"""``wdstream inspect URL``: a manifest's summary and the first samples of its first shard."""

from __future__ import annotations

import argparse
import io
import itertools
import json

from PIL import Image

from .. import storage
from ..errors import ShardReadError, redact
from ..format.manifest import is_shard_source, load_manifest
from ..format.schema import modality_of
from ..format.stream import iter_samples
from ..read.lookup import find_sample
from ..write.plan import describe_columns
from .options import (
    add_allowed_prefix_argument,
    add_storage_option_argument,
    parse_storage_options,
)

__all__ = ["HELP", "add_arguments", "run", "describe_member"]

HELP = (
    "print a dataset's manifest summary and its first samples (keys, fields, sizes), "
    "or one sample by its key (--key)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="output folder, its manifest.json, or one .tar shard")
    p.add_argument("--samples", type=int, default=3, help="how many samples to show")
    p.add_argument(
        "--key",
        default=None,
        metavar="KEY",
        help="show the sample with this key (found through the manifest and the shard's "
        "index, read with one ranged GET; shards without an index are scanned)",
    )
    add_allowed_prefix_argument(p)
    add_storage_option_argument(p)


def describe_member(ext: str, data: bytes) -> str:
    """A one-line description of a member: size, and image size or audio length."""
    text = f"{len(data)} B"
    kind = modality_of(ext)
    try:
        if kind == "image":
            with Image.open(io.BytesIO(data)) as img:
                text += f", {img.format} {img.width}x{img.height} {img.mode}"
        elif kind == "audio":
            import soundfile as sf

            info = sf.info(io.BytesIO(data))
            text += f", {info.samplerate} Hz, {info.channels} ch, {info.duration:.2f} s"
        elif kind == "text":
            value = data.decode("utf-8", "replace")
            text += f": {value[:60]!r}"
        elif kind == "json":
            text += f": {json.dumps(json.loads(data), sort_keys=True)[:80]}"
    except Exception as exc:  # a display helper: show what is wrong, do not stop
        text += f" (cannot read: {type(exc).__name__})"
    return text


def print_sample(sample: dict) -> None:
    """A sample as ``inspect`` shows it: its key, then one line per member."""
    print(f"sample {sample['__key__']}")
    for ext in sorted(k for k in sample if not k.startswith("__")):
        print(f"  .{ext}: {describe_member(ext, sample[ext])}")


def run(args: argparse.Namespace) -> int:
    options = parse_storage_options(args.storage_option)
    if args.key is not None:
        sample = find_sample(args.url, args.key, options, allowed_prefixes=args.allowed_prefix)
        print(f"shard: {redact(sample['__url__'])}")
        print_sample(sample)
        return 0
    if is_shard_source(args.url):
        shard_url = storage.expand_urls(args.url)[0]
    else:
        m = load_manifest(args.url, options, allowed_prefixes=args.allowed_prefix)
        print(f"manifest: {storage.join_url(m.base_url, 'manifest.json')}")
        print(
            f"  samples: {m.samples}   shards: {len(m.shards)}   bytes: {m.bytes} "
            f"({m.bytes / 1e6:.1f} MB)"
        )
        print(f"  fields:  {', '.join(m.fields) or '-'}")
        print(f"  source:  {json.dumps(m.source, sort_keys=True)}")
        print(f"  skipped: {json.dumps(m.skipped, sort_keys=True) if m.skipped else 'none'}")
        if isinstance(m.options, dict) and isinstance(m.options.get("columns"), dict):
            print(f"  columns: {describe_columns(m.options['columns'])}")
        if m.options:
            print(f"  options: {json.dumps(m.options, sort_keys=True)}")
        if not m.shards:
            return 0
        first = m.shards[0]
        print(f"  first shard: {first.url} ({first.samples} samples, {first.bytes} B)")
        shard_url = m.shard_urls()[0]
    with storage.open_read(shard_url, options) as f:
        try:
            samples = iter_samples(f, name=shard_url)
            for sample in itertools.islice(samples, max(0, args.samples)):
                print_sample(sample)
        except ShardReadError as exc:
            raise ShardReadError(
                f"{redact(shard_url)} is not a readable tar shard "
                f"({exc.__cause__ or exc}); check it with `wdstream verify`, "
                f"or re-create it",
                shard=shard_url,
            ) from None
    return 0
