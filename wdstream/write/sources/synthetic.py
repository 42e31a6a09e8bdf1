"""Synthetic shards written through the converter's own writer (``wdstream synth``)."""

from __future__ import annotations

from typing import Any

from ...format.manifest import Manifest
from ...format.shardtable import save_compact
from ...format.synthetic import MODALITIES, synthetic_samples
from ..writer import ShardWriter

__all__ = ["write_synthetic"]


def write_synthetic(
    output_url: str,
    samples: int,
    *,
    seed: int = 0,
    modalities=MODALITIES,
    max_samples_per_shard: int = 1000,
    max_shard_bytes: int = 256 * 2**20,
    storage_options: dict[str, Any] | None = None,
    **kwargs: Any,
):
    """Write ``samples`` synthetic samples as shards plus a manifest; returns the Manifest."""
    writer = ShardWriter(
        output_url,
        0,
        max_samples=max_samples_per_shard,
        max_bytes=max_shard_bytes,
        storage_options=storage_options,
    )
    exts: set[str] = set()
    try:
        for key, fields in synthetic_samples(samples, seed=seed, modalities=modalities, **kwargs):
            exts.update(fields)
            writer.write(key, fields)
        shards = writer.close()
    except BaseException:
        writer.abort()
        raise
    manifest = Manifest(
        shards=shards,
        source={"name": "synthetic", "seed": seed, "modalities": list(modalities)},
        fields=sorted(exts),
        base_url=output_url.rstrip("/"),
    )
    save_compact(manifest, output_url, storage_options)
    return manifest
