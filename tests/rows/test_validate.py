"""Checks of images and audio at conversion: truncated files are skipped and counted (cheap
structural checks by default, a full decode with ``validate="full"``), and every audio format
soundfile reads passes through under its own extension, end to end to a loader batch."""

from __future__ import annotations

import io

import numpy as np
import pytest

from wdstream import storage
from wdstream.config import Config
from wdstream.errors import ConfigError, SkipSample
from wdstream.format.manifest import load_manifest
from wdstream.format.tario import group_samples, iter_members
from wdstream.rows.columns import ColumnMap
from wdstream.rows.encode import RowEncoder
from wdstream.rows.validate import audio_is_complete, image_is_complete
from wdstream.write.convert import convert


def _image(fmt: str, size=(64, 48)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _clip(fmt: str, subtype: str | None = None, seconds: float = 0.1, rate: int = 16000):
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


# ------------------------------------------------------------------ images


@pytest.mark.parametrize(
    "fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"), ("BMP", "bmp")]
)
def test_truncated_images_are_bad_and_whole_ones_pass(fmt, ext):
    data = _image(fmt)
    assert image_is_complete(ext, data)
    assert image_is_complete(ext, data + b"\x00" * 100)  # trailing padding is allowed
    cut = data[: len(data) // 3]
    assert not image_is_complete(ext, cut)
    enc = RowEncoder(ColumnMap(image="i"), "src")
    assert ext in enc({"i": {"bytes": data, "path": None}}, "k")
    with pytest.raises(SkipSample, match="bad_image"):
        enc({"i": {"bytes": cut, "path": None}}, "k")


def test_jpeg_with_appended_data_still_passes():
    data = _image("JPEG") + b"trailer written by some cameras"
    assert image_is_complete("jpg", data)


def test_full_validation_decodes_what_the_cheap_checks_cannot_see():
    """A JPEG whose Huffman table is garbage but whose header and end are intact passes the
    cheap checks; ``validate="full"`` decodes it and skips it."""
    data = bytearray(_image("JPEG"))
    dht = data.find(b"\xff\xc4")
    for k in range(dht + 5, dht + 21):
        data[k] = 0xFF if k % 2 else 0x01
    broken = bytes(data)
    cheap = RowEncoder(ColumnMap(image="i"), "src")
    assert "jpg" in cheap({"i": broken}, "k")
    full = RowEncoder(ColumnMap(image="i"), "src", validate="full")
    with pytest.raises(SkipSample, match="bad_image"):
        full({"i": broken}, "k")
    assert "jpg" in full({"i": _image("JPEG")}, "k")


def test_validate_setting_and_conversion_counts_truncated_images(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(ConfigError, match="validate"):
        Config(validate="paranoid")
    good = _image("JPEG")
    rows = [
        {
            "image": {"bytes": good if i % 3 else good[: len(good) // 3], "path": None},
            "text": f"t{i}",
        }
        for i in range(9)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    files = [str(tmp_path / "a.parquet")]
    for level in ("cheap", "full"):
        m = convert(
            "parquet",
            str(tmp_path / level),
            data_files=files,
            quiet=True,
            workers=1,
            validate=level,
        )
        assert m.samples == 6 and m.skipped == {"bad_image": 3}


# ------------------------------------------------------------------ audio formats

FORMATS = [
    ("AIFF", None, "aiff"),
    ("W64", None, "w64"),
    ("CAF", None, "caf"),
    ("AU", None, "au"),
    ("WAV", None, "wav"),
    ("FLAC", None, "flac"),
    ("NIST", None, "nist"),
    ("VOC", "PCM_16", "voc"),
]


@pytest.mark.parametrize("fmt,subtype,ext", FORMATS, ids=[f[0] for f in FORMATS])
def test_every_soundfile_format_keeps_its_extension(fmt, subtype, ext):
    data = _clip(fmt, subtype)
    enc = RowEncoder(ColumnMap(audio="a"), "src")
    fields = enc({"a": {"bytes": data, "path": None}}, "k")
    assert fields[ext] == data
    full = RowEncoder(ColumnMap(audio="a"), "src", validate="full")
    assert full({"a": data}, "k")[ext] == data


def test_truncated_wav_and_aiff_are_bad_audio():
    for fmt, ext in (("WAV", "wav"), ("AIFF", "aiff")):
        data = _clip(fmt)
        assert audio_is_complete(ext, data) and not audio_is_complete(ext, data[:200])
        with pytest.raises(SkipSample, match="bad_audio"):
            RowEncoder(ColumnMap(audio="a"), "src")({"a": data[:200]}, "k")


def test_unreadable_audio_is_unknown_format():
    with pytest.raises(SkipSample, match="unknown_audio_format"):
        RowEncoder(ColumnMap(audio="a"), "src")({"a": b"\x01\x02 not audio at all" * 10}, "k")


def test_aiff_w64_caf_au_end_to_end_to_a_loader_batch(tmp_path):
    """Real clips of each format, generated here, in a parquet audio column: converted with
    their extensions, then decoded by the reader into a batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wdstream.read.loader import make_loader

    formats = [("AIFF", "aiff"), ("W64", "w64"), ("CAF", "caf"), ("AU", "au")]
    rows = [
        {
            "audio": {"bytes": _clip(fmt, seconds=0.05 * (i + 1)), "path": None},
            "text": f"clip {fmt}",
        }
        for i, (fmt, _) in enumerate(formats)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    out = str(tmp_path / "out")
    m = convert("parquet", out, data_files=[str(tmp_path / "a.parquet")], quiet=True, workers=1)
    assert m.samples == 4 and not m.skipped
    with storage.open_read(m.shard_urls()[0]) as f:
        members = [
            sorted(k for k in s if not k.startswith("__")) for s in group_samples(iter_members(f))
        ]
    assert members == [sorted(["json", "txt", ext]) for _, ext in formats]

    config = Config(
        batch_size=4,
        num_workers=0,
        shuffle=False,
        drop_last=False,
        max_audio_length=16000,
        audio_sample_rate=16000,
    )
    batch = next(iter(make_loader(load_manifest(out).base_url, config)))
    assert batch["has_audio"].tolist() == [True] * 4
    lengths = batch["audio_lengths"].tolist()
    assert lengths == [800, 1600, 2400, 3200]  # each clip decoded whole
    assert float(batch["audio"][0, :800].abs().max()) > 0.1
