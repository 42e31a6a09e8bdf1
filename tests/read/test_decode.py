"""Per-sample decoding with real codecs: pillow images in every mode, soundfile audio in every
container, the real ByT5 tokenizer. Nothing is ever unpickled."""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from wdstream.config import Config
from wdstream.errors import SampleError
from wdstream.format.tario import group_samples, iter_members, tar_bytes
from wdstream.read.decode import SampleDecoder, decode_audio

S = 32  # small vision_dim keeps the tests fast
CFG = Config(vision_dim=S, max_audio_length=16000, audio_sample_rate=16000, max_text_length=32)
MEAN = torch.tensor(CFG.image_mean).view(3, 1, 1)
STD = torch.tensor(CFG.image_std).view(3, 1, 1)


@pytest.fixture(scope="module")
def decoder():
    return SampleDecoder(CFG)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _sample(**members) -> dict:
    return {
        "__key__": "00000_000000007",
        "__url__": "s3://bucket/shard-00000-00000.tar",
        "txt": b"a caption",
        **members,
    }


def _pixels(out) -> torch.Tensor:
    """Undo the normalisation: [3, S, S] in [0, 1]."""
    return out["pixel_values"] * STD + MEAN


# --------------------------------------------------------------------------- images


def test_pure_red_gives_the_normalised_red(decoder):
    out = decoder(_sample(png=_encode(Image.new("RGB", (90, 60), (255, 0, 0)), "PNG")))
    pv = out["pixel_values"]
    assert pv.shape == (3, S, S) and pv.dtype == torch.float32 and pv.is_contiguous()
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    for c in range(3):
        torch.testing.assert_close(pv[c], torch.full((S, S), expected[c]), atol=1e-5, rtol=0)


def test_grayscale_gives_equal_channels(decoder):
    arr = np.tile(np.linspace(0, 255, 80, dtype=np.uint8), (50, 1))
    out = decoder(_sample(png=_encode(Image.fromarray(arr, "L"), "PNG")))
    px = _pixels(out)
    torch.testing.assert_close(px[0], px[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(px[1], px[2], atol=1e-5, rtol=0)
    assert px[0, 0, 0] < 0.3 and px[0, 0, -1] > 0.7  # the gradient survives resize and crop


def test_16bit_grayscale_png_is_scaled_not_clipped(decoder):
    arr = np.zeros((40, 40), dtype=np.uint16)
    arr[:, :20] = 1000  # ~0.015 of full scale: would be white (255) if clipped to 8 bits
    arr[:, 20:] = 65535
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    px = _pixels(decoder(_sample(png=_encode(img, "PNG"))))
    torch.testing.assert_close(px[:, :, 0], torch.full((3, S), 1000 / 65535), atol=2e-3, rtol=0)
    torch.testing.assert_close(px[:, :, -1], torch.full((3, S), 1.0), atol=2e-3, rtol=0)


def test_32bit_int_grayscale_is_read_as_16bit_range(decoder):
    img = Image.fromarray(np.full((30, 30), 32768, dtype=np.int32), "I")
    px = _pixels(decoder(_sample(tiff=_encode(img, "TIFF"))))
    torch.testing.assert_close(px, torch.full((3, S, S), 0.5), atol=2e-3, rtol=0)


def test_cmyk_jpeg_gives_rgb(decoder):
    img = Image.new("CMYK", (64, 48), (0, 255, 255, 0))  # red in CMYK
    px = _pixels(decoder(_sample(jpg=_encode(img, "JPEG", quality=95))))
    assert px[0].mean() > 0.95 and px[1].mean() < 0.05 and px[2].mean() < 0.05


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_is_composited_on_white(decoder, fmt):
    img = Image.new("P", (64, 64), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # 0: black (transparent), 1: blue
    img.paste(1, (32, 0, 64, 64))  # right half blue, left half transparent
    data = _encode(img, fmt, transparency=0)
    px = _pixels(decoder(_sample(**{fmt.lower(): data})))
    torch.testing.assert_close(px[:, 16, 2], torch.ones(3), atol=1e-3, rtol=0)  # white
    torch.testing.assert_close(px[:, 16, -3], torch.tensor([0.0, 0.0, 1.0]), atol=1e-3, rtol=0)


def test_palette_without_transparency(decoder):
    img = Image.new("P", (40, 40), 1)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    px = _pixels(decoder(_sample(png=_encode(img, "PNG"))))
    torch.testing.assert_close(
        px, torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, S, S), atol=1e-3, rtol=0
    )


def test_rgba_is_composited_on_white(decoder):
    arr = np.zeros((64, 64, 4), dtype=np.uint8)  # transparent black everywhere
    arr[:, 32:] = (255, 0, 0, 255)  # opaque red on the right
    arr[:20, 32:] = (255, 0, 0, 128)  # half-transparent red at the top right
    px = _pixels(decoder(_sample(png=_encode(Image.fromarray(arr, "RGBA"), "PNG"))))
    torch.testing.assert_close(px[:, 16, 2], torch.ones(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(px[:, -3, -3], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3, rtol=0)
    half = 127 / 255
    torch.testing.assert_close(px[:, 2, -3], torch.tensor([1.0, half, half]), atol=1e-2, rtol=0)


def test_la_is_composited_on_white(decoder):
    arr = np.zeros((40, 40, 2), dtype=np.uint8)
    arr[:, 20:] = (0, 255)  # opaque black on the right, transparent on the left
    px = _pixels(decoder(_sample(png=_encode(Image.fromarray(arr, "LA"), "PNG"))))
    torch.testing.assert_close(px[:, 16, 1], torch.ones(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(px[:, 16, -2], torch.zeros(3), atol=1e-3, rtol=0)


def test_resize_shorter_side_and_centre_crop(decoder):
    # 120 x 40: red | green | blue thirds. The centre crop keeps the green middle only.
    arr = np.zeros((40, 120, 3), dtype=np.uint8)
    arr[:, :40, 0] = arr[:, 40:80, 1] = arr[:, 80:, 2] = 255
    px = _pixels(decoder(_sample(png=_encode(Image.fromarray(arr), "PNG"))))
    torch.testing.assert_close(
        px[:, :, 4:-4],
        torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, S, S - 8),
        atol=2e-2,
        rtol=0,
    )


def test_large_jpeg_uses_draft_and_keeps_shape(decoder):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (700, 900, 3), dtype=np.uint8)
    arr[:, :, 0] = 200  # a constant red channel survives draft decoding and resampling
    out = decoder(_sample(jpg=_encode(Image.fromarray(arr), "JPEG", quality=95)))
    assert out["pixel_values"].shape == (3, S, S)
    assert abs(_pixels(out)[0].mean().item() - 200 / 255) < 0.05


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied(decoder, fmt):
    arr = np.zeros((40, 80, 3), dtype=np.uint8)  # wide image, top half white
    arr[:20] = 255
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display: white ends on the right
    data = _encode(img, fmt, quality=95, exif=exif.tobytes())
    px = _pixels(decoder(_sample(**{fmt.lower(): data})))
    assert px[:, :, -3].mean() > 0.9 and px[:, :, 2].mean() < 0.1


def test_bomb_over_the_configured_limit_is_a_sample_error():
    dec = SampleDecoder(CFG.replace(max_image_pixels=10_000))
    img = Image.new("RGB", (200, 100))  # 20,000 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not a warning: an error
        with pytest.raises(SampleError) as info:
            dec(_sample(png=_encode(img, "PNG")))
    assert info.value.reason == "image too large"
    assert "20000" in str(info.value) and "10000" in str(info.value)
    # Under the limit decodes fine.
    assert (
        dec(_sample(png=_encode(Image.new("RGB", (100, 100)), "PNG")))["pixel_values"] is not None
    )


def test_pillow_global_limit_gives_no_warning_and_its_hard_limit_is_a_sample_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    dec = SampleDecoder(CFG)  # our limit is pillow's default, far above these images
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dec(_sample(png=_encode(Image.new("RGB", (80, 50)), "PNG")))  # 4000: pillow would warn
        with pytest.raises(SampleError) as info:
            dec(_sample(png=_encode(Image.new("RGB", (100, 100)), "PNG")))  # over 2 x 3000
    assert info.value.reason == "image too large"


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff\xe0 not a jpeg" + bytes(64), b"hello"])
def test_undecodable_image(decoder, data):
    with pytest.raises(SampleError) as info:
        decoder(_sample(jpg=data))
    assert info.value.reason == "undecodable image"
    msg = str(info.value)
    assert "s3://bucket/shard-00000-00000.tar" in msg and "00000_000000007" in msg
    assert info.value.key == "00000_000000007"


def test_truncated_jpeg_is_undecodable(decoder):
    rng = np.random.default_rng(1)
    data = _encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(SampleError) as info:
        decoder(_sample(jpg=data[: len(data) // 2]))
    assert info.value.reason == "undecodable image"


# --------------------------------------------------------------------------- audio


def _tone(rate: int, seconds: float, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave, np.zeros_like(wave)], axis=1)


def _audio(wave: np.ndarray, rate: int, fmt: str) -> bytes:
    subtype = {"WAV": "FLOAT", "FLAC": "PCM_24", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}[fmt]
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _peak_hz(wave: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    return float(np.argmax(spectrum) * rate / len(wave))


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
@pytest.mark.parametrize("rate", [8000, 44100])
def test_audio_formats_and_rates(decoder, fmt, rate):
    out = decoder(_sample(**{fmt.lower(): _audio(_tone(rate, 0.5), rate, fmt)}))
    audio = out["audio"]
    assert audio.shape == (16000,) and audio.dtype == torch.float32
    assert out["audio_length"] == 8000  # 0.5 s at 16 kHz
    assert torch.all(audio[8000:] == 0)
    assert abs(_peak_hz(audio[:8000], 16000) - 440) < 5
    rms = audio[1000:7000].pow(2).mean().sqrt().item()
    assert 0.25 < rms < 0.45  # 0.5 / sqrt(2) = 0.354; resampling keeps the level


def test_stereo_is_averaged_to_mono(decoder):
    stereo = _tone(16000, 0.25, channels=2)  # left: tone, right: silence
    out = decoder(_sample(wav=_audio(stereo, 16000, "WAV")))
    torch.testing.assert_close(out["audio"][:4000], torch.from_numpy(stereo[:, 0] / 2))
    assert out["audio_length"] == 4000


def test_crop_keeps_the_first_samples_and_caps_the_length(decoder):
    wave = _tone(16000, 3.0)
    out = decoder(_sample(wav=_audio(wave, 16000, "WAV")))
    assert out["audio_length"] == 16000
    torch.testing.assert_close(out["audio"], torch.from_numpy(wave[:16000]))


def test_partial_read_matches_resampling_the_whole_clip():
    import torchaudio

    wave = _tone(44100, 5.0, freq=1234.0)
    audio, length = decode_audio(_audio(wave, 44100, "WAV"), sample_rate=16000, max_length=16000)
    full = torchaudio.functional.resample(torch.from_numpy(wave), 44100, 16000)[:16000]
    assert length == 16000
    torch.testing.assert_close(audio, full, atol=1e-4, rtol=0)


def test_odd_sample_rate_is_resampled_with_a_small_kernel():
    wave = _tone(44099, 1.0)
    audio, length = decode_audio(_audio(wave, 44099, "WAV"), sample_rate=16000, max_length=20000)
    assert abs(length - round(44099 * 16000 / 44099)) <= 1
    assert torch.all(audio[length:] == 0)
    assert abs(_peak_hz(audio[:length], 16000) - 440) < 2


def test_resample_length_is_exact(decoder):
    for rate, n in [(22050, 11025), (48000, 7), (8000, 1234)]:
        out = decoder(_sample(wav=_audio(_tone(rate, n / rate), rate, "WAV")))
        assert out["audio_length"] == min(16000, -(-n * 16000 // rate))


@pytest.mark.parametrize("data", [b"fLaC" + b"\x00garbage" * 16, b"", b"RIFF1234WAVEjunk"])
def test_undecodable_audio(decoder, data):
    with pytest.raises(SampleError) as info:
        decoder(_sample(flac=data))
    assert info.value.reason == "undecodable audio"
    assert "s3://bucket/shard-00000-00000.tar" in str(info.value)


# --------------------------------------------------------------------------- text and metadata


def test_text_only_sample(decoder):
    out = decoder(_sample())
    assert out["pixel_values"] is None and out["audio"] is None and out["audio_length"] == 0
    assert out["input_ids"].tolist() == decoder.tokenizer("a caption")["input_ids"]
    assert out["key"] == "00000_000000007" and out["url"] == "s3://bucket/shard-00000-00000.tar"
    assert out["source"] is None and out["synthetic"] is False


@pytest.mark.parametrize(
    "members",
    [
        {"caption": b"from caption"},
        {"json": json.dumps({"caption": "from caption"}).encode()},
        {"json": json.dumps({"text": "from caption", "caption": "ignored"}).encode()},
    ],
)
def test_text_from_other_members(decoder, members):
    out = decoder({"__key__": "k", **members})
    assert out["input_ids"].tolist() == decoder.tokenizer("from caption")["input_ids"]


@pytest.mark.parametrize(
    "members", [{}, {"txt": b"   \n"}, {"json": b'{"text": 3}'}, {"jpg": b"x", "cls": b"3"}]
)
def test_missing_text(decoder, members):
    with pytest.raises(SampleError) as info:
        decoder({"__key__": "k1", "__url__": "memory://s.tar", **members})
    assert info.value.reason == "missing text"
    assert "k1" in str(info.value) and "memory://s.tar" in str(info.value)


def test_invalid_utf8_is_replaced(decoder):
    out = decoder({"__key__": "k", "txt": b"caf\xe9"})
    assert out["input_ids"].tolist() == decoder.tokenizer("caf\ufffd")["input_ids"]


def test_token_id_over_vocab_at_decode_time_is_a_sample_error():
    dec = SampleDecoder(CFG)
    dec.config = CFG.replace(vocab_size=100)  # ByT5 letters are ids 100..125
    with pytest.raises(SampleError) as info:
        dec(_sample())
    assert info.value.reason == "token id out of range" and "100" in str(info.value)


def test_undecodable_json(decoder):
    with pytest.raises(SampleError) as info:
        decoder(_sample(json=b"{not json"))
    assert info.value.reason == "undecodable json"


def test_source_and_synthetic_flags(decoder):
    meta = json.dumps({"source": "laion", "synthetic": True}).encode()
    out = decoder(_sample(json=meta))
    assert out["source"] == "laion" and out["synthetic"] is True
    out = decoder({**_sample(json=meta), "__source__": "mix-a"})
    assert out["source"] == "mix-a"
    out = decoder(_sample(json=json.dumps({"synthetic": "yes"}).encode()))
    assert out["synthetic"] is False  # only a JSON true counts


# --------------------------------------------------------------------------- safety


class _CreatesFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_members_are_never_unpickled(tmp_path, decoder):
    proof, target = tmp_path / "proof", tmp_path / "pwned"
    pickle.loads(pickle.dumps(_CreatesFile(str(proof)))).close()
    assert proof.exists()  # the payload does create a file when unpickled
    payload = pickle.dumps(_CreatesFile(str(target)))
    members = {
        "txt": b"hello",
        "pyd": payload,
        "pickle": payload,
        "pth": payload,
        "pkl": payload,
        "json": b'{"source": "x"}',
    }
    shard = tar_bytes([("00000_000000001", members)])
    samples = list(group_samples(iter_members(io.BytesIO(shard))))
    assert len(samples) == 1 and samples[0]["pyd"] == payload
    out = decoder({**samples[0], "__url__": "memory://evil.tar"})
    assert out["input_ids"].numel() > 0
    assert not target.exists()


def test_decoder_pickles_into_workers(decoder):
    clone = pickle.loads(pickle.dumps(decoder))
    sample = _sample(
        wav=_audio(_tone(44100, 0.1), 44100, "WAV"),
        png=_encode(Image.new("RGB", (50, 40), (0, 0, 255)), "PNG"),
    )
    decoder(sample)  # fills the resampler cache; it is not pickled
    assert pickle.loads(pickle.dumps(decoder))._resamplers == {}
    a, b = decoder(sample), clone(sample)
    for name in ("input_ids", "pixel_values", "audio"):
        torch.testing.assert_close(a[name], b[name])


def test_codecs_are_loaded_before_workers_fork(tmp_path):
    """A loader with workers imports the lazily loaded codecs in the training process before
    the DataLoader forks, so no worker imports them before its first sample (a fresh
    interpreter, where nothing imported them yet)."""
    import subprocess
    import sys
    import textwrap

    from helpers import write_test_shards

    url = str(tmp_path / "ds")
    write_test_shards(url, [4, 4])
    code = textwrap.dedent(
        f"""
        import sys
        import wdstream
        from wdstream.config import Config
        loader = wdstream.make_loader({url!r}, Config(
            batch_size=2, num_workers=1, persistent_workers=False, pin_memory="false"))
        before = {{m for m in ("soundfile", "torchaudio") if m in sys.modules}}
        batches = sum(1 for _ in loader)
        after = {{m for m in ("soundfile", "torchaudio") if m in sys.modules}}
        print(sorted(before), sorted(after), batches)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "[] ['soundfile', 'torchaudio'] 4"
