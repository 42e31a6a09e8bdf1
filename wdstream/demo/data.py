"""Build small Hugging Face-format multimodal datasets locally (parquet files with Image, Audio
and text features). Used by the demo, the benchmarks and the tests: no Hub, no network.

Images are real JPEG/PNG files, audio real FLAC/WAV/OGG/MP3 clips (soundfile), text a caption.
Rows are split over ``n_files`` parquet files, so ``load_dataset(..., streaming=True)`` gives
``n_files`` source shards (converter partitions).
"""

from __future__ import annotations

import io
import os
import random
from typing import Any

import numpy as np

__all__ = ["build_parquet_dataset", "encode_image", "encode_audio"]


def encode_image(rng: random.Random, width: int, height: int, fmt: str = "JPEG") -> bytes:
    from PIL import Image, ImageDraw

    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    c = [rng.random() for _ in range(3)]
    arr = np.stack(np.broadcast_arrays(x * c[0] + y * (1 - c[0]), x * c[1], y * c[2]), axis=-1)
    noise = np.frombuffer(rng.randbytes(width * height * 3), dtype=np.uint8).reshape(
        height, width, 3
    )
    arr = (0.85 * arr + 0.15 * noise).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        d.rectangle(
            [x0, y0, x0 + width // 5, y0 + height // 5],
            fill=tuple(rng.randrange(256) for _ in range(3)),
        )
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def encode_audio(rng: random.Random, seconds: float, rate: int = 16000, fmt: str = "FLAC") -> bytes:
    import soundfile as sf

    n = max(1, int(seconds * rate))
    t = np.arange(n) / rate
    wave = 0.2 * np.sin(2 * np.pi * rng.choice([220, 330, 440, 660]) * t)
    wave += 0.02 * np.array([rng.uniform(-1, 1) for _ in range(min(n, 64))] * (n // 64 + 1))[:n]
    buf = io.BytesIO()
    subtype = {"FLAC": "PCM_16", "WAV": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}[fmt]
    sf.write(buf, wave.astype(np.float32), rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def build_parquet_dataset(
    folder: str,
    rows: int,
    *,
    n_files: int = 4,
    seed: int = 0,
    image_size: tuple[int, int] = (64, 96),
    with_image: bool = True,
    with_audio: bool = True,
    audio_seconds: float = 0.25,
    audio_format: str = "FLAC",
    corrupt_image_rows: tuple[int, ...] = (),
    corrupt_audio_rows: tuple[int, ...] = (),
    extra_columns: bool = True,
) -> str:
    """Write ``rows`` rows as ``n_files`` parquet files under ``folder/data``; returns ``folder``.

    Columns: ``image`` (Image), ``audio`` (Audio), ``text`` (string), and when
    ``extra_columns`` an ``id`` (int) and ``label`` (string). Image sides are drawn from
    ``image_size`` (min, max). Rows listed in ``corrupt_*_rows`` get undecodable bytes.
    """
    import datasets

    rng = random.Random(seed)
    cols: dict[str, list[Any]] = {"text": []}
    if extra_columns:
        cols["id"], cols["label"] = [], []
    if with_image:
        cols["image"] = []
    if with_audio:
        cols["audio"] = []
    for i in range(rows):
        cols["text"].append(
            f"sample {i}: a {rng.choice(['red', 'blue', 'green'])} "
            f"{rng.choice(['cat', 'dog', 'car', 'tree'])} in the "
            f"{rng.choice(['sun', 'rain', 'snow'])}"
        )
        if extra_columns:
            cols["id"].append(i)
            cols["label"].append(rng.choice(["a", "b", "c"]))
        if with_image:
            w = rng.randint(*image_size)
            h = rng.randint(*image_size)
            data = encode_image(rng, w, h, "PNG" if i % 7 == 3 else "JPEG")
            if i in corrupt_image_rows:
                data = b"\xff\xd8\xff\xe0 this is not a jpeg" + bytes(64)
            cols["image"].append({"bytes": data, "path": None})
        if with_audio:
            data = encode_audio(rng, audio_seconds, fmt=audio_format)
            if i in corrupt_audio_rows:
                data = b"fLaC" + b"\x00garbage" * 16
            cols["audio"].append({"bytes": data, "path": f"clip{i}.{audio_format.lower()}"})
    ds = datasets.Dataset.from_dict(cols)
    if with_image:
        ds = ds.cast_column("image", datasets.Image())
    if with_audio:
        ds = ds.cast_column("audio", datasets.Audio())
    out = os.path.join(folder, "data")
    os.makedirs(out, exist_ok=True)
    per = -(-rows // n_files)
    bars = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # no "Creating parquet from Arrow format" bars
    try:
        for k in range(n_files):
            part = ds.select(range(k * per, min(rows, (k + 1) * per)))
            part.to_parquet(os.path.join(out, f"train-{k:05d}-of-{n_files:05d}.parquet"))
    finally:
        if bars:
            datasets.enable_progress_bars()
    return folder
