"""``image_ext``/``audio_ext`` (``--image-ext``/``--audio-ext``): one member extension per
modality for the whole dataset, bytes untouched, so that ``datasets.load_dataset("webdataset")``
loads sources that mix JPEG, PNG and WEBP, or WAV and FLAC. Pillow and soundfile (and
webdataset's and datasets' decoders, which call them) read the format from the bytes."""

from __future__ import annotations

import copy
import glob
import io
import logging
import random

import pytest
import soundfile as sf
from helpers import small_config
from PIL import Image

import wdstream
from wdstream.demo.data import encode_audio, encode_image
from wdstream.errors import ConfigError
from wdstream.write.convert import convert

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")
AUDIO_FORMATS = ("WAV", "FLAC")


@pytest.fixture(scope="module")
def mixed_source(tmp_path_factory):
    """9 rows in 1 parquet file; images cycle JPEG/PNG/WEBP, audio WAV/FLAC."""
    import datasets

    rng = random.Random(3)
    rows = 9
    images = [encode_image(rng, 24 + i, 20, IMAGE_FORMATS[i % 3]) for i in range(rows)]
    audio = [encode_audio(rng, 0.05, fmt=AUDIO_FORMATS[i % 2]) for i in range(rows)]
    ds = (
        datasets.Dataset.from_dict(
            {
                "text": [f"row {i}" for i in range(rows)],
                "image": [{"bytes": b, "path": None} for b in images],
                "audio": [{"bytes": b, "path": f"clip{i}"} for i, b in enumerate(audio)],
            }
        )
        .cast_column("image", datasets.Image())
        .cast_column("audio", datasets.Audio())
    )
    folder = tmp_path_factory.mktemp("mixed")
    (folder / "data").mkdir()
    ds.to_parquet(str(folder / "data" / "train-0.parquet"))
    return str(folder), images, audio


def load_webdataset(folder, **kwargs):
    import datasets

    files = sorted(glob.glob(f"{folder}/*.tar"))
    return datasets.load_dataset("webdataset", data_files={"train": files}, split="train", **kwargs)


def load_keeping_audio_bytes(folder):
    """``datasets``' webdataset builder, as users call it, but with the audio member read as
    bytes: its Audio feature needs torchcodec to encode any row, and torchcodec is not
    installed here (see /work/shared/ENVIRONMENT.md). The streaming load infers the features
    exactly as the full load does, and that is where mixed member types are refused."""
    import datasets

    features = load_webdataset(folder, streaming=True).features
    assert isinstance(features["flac"], datasets.Audio)
    features["flac"] = datasets.Value("binary")
    return load_webdataset(folder, features=features)


def test_default_names_each_member_by_its_format_and_warns_with_the_option(
    mixed_source, tmp_path, caplog
):
    src, _, _ = mixed_source
    out = str(tmp_path / "default")
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        m = convert(src, out, workers=1, quiet=True)
    assert {"jpg", "png", "webp", "wav", "flac"} <= set(m.fields)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("jpg, png, webp" in w and "--image-ext jpg" in w for w in warnings)
    assert any("flac, wav" in w and "--audio-ext flac" in w for w in warnings)
    with pytest.raises(ValueError, match="don't share the same prefix or the same types"):
        load_webdataset(out, streaming=True)  # what the option is for


def test_mixed_audio_alone_is_refused_too(mixed_source, tmp_path):
    src, _, _ = mixed_source
    out = str(tmp_path / "images-only")
    convert(src, out, workers=1, quiet=True, image_ext="jpg")
    with pytest.raises(ValueError, match="don't share the same prefix or the same types"):
        load_webdataset(out, streaming=True)


def test_one_extension_per_modality_loads_in_datasets_with_bytes_untouched(
    mixed_source, tmp_path, caplog
):
    import datasets

    src, images, audio = mixed_source
    out = str(tmp_path / "one")
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        m = convert(src, out, workers=1, quiet=True, image_ext="jpg", audio_ext="flac")
    assert not [r for r in caplog.records if "extensions" in r.getMessage()]
    assert set(m.fields) == {"jpg", "flac", "txt", "json"}
    assert m.options["columns"]["image_ext"] == "jpg"

    ds = load_keeping_audio_bytes(out)
    assert isinstance(ds.features["jpg"], datasets.Image)
    rows = list(ds)
    assert len(rows) == 9
    for i, row in enumerate(rows):  # keys follow the source order
        img = row["jpg"]  # decoded by pillow from the bytes, whatever the name says
        assert img.format == IMAGE_FORMATS[i % 3] and img.size == (24 + i, 20)
        assert row["flac"] == audio[i]
        assert sf.info(io.BytesIO(row["flac"])).format == AUDIO_FORMATS[i % 2]
        wave, rate = sf.read(io.BytesIO(row["flac"]))  # soundfile decodes by content
        assert rate == 16000 and len(wave) == 800
    raw = ds.cast_column("jpg", datasets.Image(decode=False))
    assert [r["jpg"]["bytes"] for r in raw] == images

    import webdataset as wds  # webdataset's own decoders also go by content

    shard = sorted(glob.glob(f"{out}/*.tar"))[0]
    decoded = list(wds.WebDataset(shard, shardshuffle=False).decode("pil"))
    assert len(decoded) == 9
    for i, sample in enumerate(decoded):  # a PNG or WEBP named .jpg: the same pixels
        expected = Image.open(io.BytesIO(images[i])).convert("RGB")
        assert sample["jpg"].tobytes() == expected.tobytes()

    config = small_config(shuffle=False, batch_size=9, storage_options={})
    (batch,) = list(wdstream.make_loader(out, config))
    assert bool(batch["has_image"].all()) and bool(batch["has_audio"].all())


def test_an_extension_of_the_wrong_modality_is_refused():
    with pytest.raises(ConfigError, match="image_ext 'flac' is not one of"):
        wdstream.Config(image_ext="flac")
    assert wdstream.Config(image_ext=".JPG").image_ext == "jpg"
    copy.deepcopy(wdstream.Config(audio_ext="wav"))
