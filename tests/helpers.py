"""Helpers the tests share (import them with ``from helpers import ...``; pytest puts this
folder on ``sys.path`` because ``conftest.py`` lives here)."""

from __future__ import annotations

import dataclasses
import json
import random

from wdstream.config import Config
from wdstream.demo.data import encode_audio, encode_image
from wdstream.format.manifest import Manifest
from wdstream.format.schema import make_key
from wdstream.format.shardtable import save_compact
from wdstream.write.sources.synthetic import write_synthetic
from wdstream.write.writer import ShardWriter

__all__ = ["small_config", "write_test_shards", "read_span", "write_outside_manifest"]


def small_config(**overrides) -> Config:
    """A Config with small decode sizes and no persistent workers, so tests run fast; bind a
    module's own defaults with ``functools.partial(small_config, batch_size=..., ...)``."""
    base = dict(
        batch_size=4,
        num_workers=0,
        cache_size=8,
        vision_dim=16,
        max_audio_length=200,
        max_text_length=16,
        persistent_workers=False,
    )
    base.update(overrides)
    return Config(**base)


def write_test_shards(
    url: str,
    sizes: list[int],
    *,
    storage_options=None,
    seed: int = 0,
    image: bool = True,
    audio: bool = True,
    text: bool = True,
    image_px=(40, 80),
    compact: bool = False,
):
    """Write real (non-synthetic) samples, JPEG/PNG + FLAC + text, as shards of the given
    sizes (one writer partition each) plus a manifest (version 1, or the compact version 2
    with ``compact``); returns the Manifest."""
    rng = random.Random(seed)
    shards = []
    for part, n in enumerate(sizes):
        w = ShardWriter(url, part, max_samples=max(1, n), storage_options=storage_options)
        for row in range(n):
            fields = {}
            if text:
                fields["txt"] = f"caption {part}-{row}".encode()
            if image:
                fields["jpg"] = encode_image(rng, rng.randint(*image_px), rng.randint(*image_px))
            if audio:
                fields["flac"] = encode_audio(rng, 0.1)
            fields["json"] = json.dumps({"source": "testdata", "row": row}).encode()
            w.write(make_key(part, row), fields)
        shards += w.close()
    m = Manifest(shards=shards, source={"name": "testdata"}, base_url=url.rstrip("/"))
    if compact:
        save_compact(m, url, storage_options)
    else:
        m.save(url, storage_options)
    return m


def read_span(shard, first, stop, wanted, budget):
    """The items the reader makes of samples ``wanted`` (ascending, within ``[first, stop)``)
    of one shard (a ShardRef): fetched by a ShardReader, reconciled by span_items."""
    import numpy as np

    from wdstream.read.fetch import ReadOptions, ShardReader
    from wdstream.read.planner import Read
    from wdstream.read.shards import span_items

    reader = ShardReader(ReadOptions(storage_options={}))
    read = Read(0, first, stop, np.asarray(wanted, dtype=np.int64))
    return list(span_items(reader.fetch([shard], [read]), budget))


def write_outside_manifest(folder: str, samples: int = 6) -> tuple[str, str]:
    """Synthetic shards (text, image, audio) in ``folder/data``, and in ``folder/meta`` a
    manifest that names them by their absolute paths: shards outside the manifest's own
    folder, which a reader refuses unless told to allow them. Returns ``(manifest folder,
    the prefix to allow)``."""
    data, meta = f"{folder}/data", f"{folder}/meta"
    m = write_synthetic(data, samples, seed=1, max_samples_per_shard=3)
    shards = [
        dataclasses.replace(s, url=f"{data}/{s.url}", index=f"{data}/{s.index}") for s in m.shards
    ]
    Manifest(shards=shards, source=m.source, fields=m.fields, base_url=meta).save(meta)
    return meta, f"{data}/"
