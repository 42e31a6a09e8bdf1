"""Seeded synthetic multimodal samples, and synthetic shards as tar bytes in memory.

The same ``(seed, index)`` always gives the same bytes: text from a fixed word list, a JPEG of a
coloured gradient with a shape, and a WAV tone. Used by ``wdstream synth`` (through
:func:`wdstream.write.sources.synthetic.write_synthetic`), by the reader's loud synthetic
fallback (shards built in memory, never on disk) and by tests.
"""

from __future__ import annotations

import io
import json
import random
import wave
from collections.abc import Iterator
from typing import Any

import numpy as np

from .schema import make_key
from .tario import tar_bytes

__all__ = ["MODALITIES", "synthetic_sample", "synthetic_samples", "synthetic_shards_in_memory"]

_WORDS = (
    "a photo of the red green blue small large cat dog bird car tree house river sky "
    "mountain person sound of music speech rain wind piano guitar drum city street "
    "morning night bright dark quiet loud"
).split()
MODALITIES = ("text", "image", "audio")


def _rng(seed: int, index: int) -> random.Random:
    return random.Random(f"wdstream-synthetic:{seed}:{index}")


def _jpeg(rng: random.Random, size: int) -> bytes:
    from PIL import Image, ImageDraw

    w, h = size + rng.randrange(0, size // 2 + 1), size
    base = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
    ramp = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    arr = (base * (0.3 + 0.7 * ramp)).repeat(h, axis=0).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    x0, y0 = rng.randrange(w // 2), rng.randrange(h // 2)
    draw.ellipse(
        [x0, y0, x0 + w // 3, y0 + h // 3], fill=tuple(rng.randrange(256) for _ in range(3))
    )
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _wav(rng: random.Random, seconds: float, rate: int) -> bytes:
    n = int(seconds * rate)
    freq = rng.choice((220.0, 330.0, 440.0, 550.0, 660.0))
    t = np.arange(n, dtype=np.float64) / rate
    pcm = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def synthetic_sample(
    index: int,
    *,
    seed: int = 0,
    modalities=MODALITIES,
    image_size: int = 64,
    audio_seconds: float = 0.5,
    sample_rate: int = 16000,
) -> dict[str, bytes]:
    """The member dict of synthetic sample ``index`` (``txt``, ``json``, ``jpg``, ``wav``)."""
    unknown = set(modalities) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; choose from {MODALITIES}")
    rng = _rng(seed, index)
    text = " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(4, 16)))
    fields: dict[str, bytes] = {}
    if "text" in modalities:
        fields["txt"] = text.encode()
    if "image" in modalities:
        fields["jpg"] = _jpeg(rng, image_size)
    if "audio" in modalities:
        fields["wav"] = _wav(rng, audio_seconds, sample_rate)
    meta: dict[str, Any] = {"source": "synthetic", "seed": seed, "index": index, "synthetic": True}
    fields["json"] = json.dumps(meta, sort_keys=True).encode()
    return fields


def synthetic_samples(
    n: int, *, seed: int = 0, partition: int = 0, **kwargs: Any
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, fields)`` for samples ``0..n-1``."""
    for i in range(n):
        yield make_key(partition, i), synthetic_sample(i, seed=seed, **kwargs)


def synthetic_shards_in_memory(
    samples: int,
    *,
    seed: int = 0,
    modalities=MODALITIES,
    samples_per_shard: int = 64,
    **kwargs: Any,
) -> list[bytes]:
    """Synthetic shards as tar bytes in memory (the reader's fallback; nothing on disk)."""
    items = list(synthetic_samples(samples, seed=seed, modalities=modalities, **kwargs))
    return [
        tar_bytes(items[i : i + samples_per_shard]) for i in range(0, len(items), samples_per_shard)
    ]
