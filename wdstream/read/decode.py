"""Per-sample decoding: image, audio and text members to tensors. Nothing is ever unpickled.

:class:`SampleDecoder` turns one sample dict from
:func:`wdstream.format.tario.group_samples`
(``{"__key__", "__url__", ext: bytes, ...}``) into model-ready tensors. It runs inside DataLoader
workers, so it pickles small and builds its caches lazily.

Decisions:

- **Images.** Alpha (RGBA, LA, palette with transparency) is composited on **white**: transparent
  images are mostly logos, icons and line art drawn for a light page, and dark strokes vanish on
  black. CMYK uses pillow's conversion (ICC profiles are not applied). 16-bit grayscale (``I;16``,
  and ``I`` as pillow opens 16-bit PNGs) is scaled from 0..65535, not clipped at 255. EXIF
  orientation is applied (on the small output: the crop commutes with the transpose).
  Resizing is bicubic with antialiasing (pillow's ``resize`` filters over the whole
  footprint), the shorter side to ``vision_dim``, then a centre crop; both happen in one
  ``resize(box=...)`` call so the cropped-away pixels are never resampled. JPEGs are decoded in
  draft mode (DCT scaling by 1/2, 1/4 or 1/8) while the shorter side stays >= ``vision_dim``.
- **Decompression bombs.** An image over ``config.max_image_pixels`` is a SampleError
  (reason ``"image too large"``), checked from the header before any pixel is decoded.
- **Audio.** Mono is the mean of the channels. Only the frames needed for
  ``max_audio_length`` output samples (plus a margin for the resampling filter) are decoded.
  Sample rates whose ratio to the target does not reduce to a small fraction are resampled by the
  nearest small fraction (pitch error below 0.1%), so an odd rate cannot blow up the sinc kernel.
- **Text.** Invalid UTF-8 is replaced, not rejected. Absent or blank text is ``"missing text"``.
  Text is cut to ``TEXT_CHARS_PER_TOKEN * max_text_length`` characters before it is tokenized
  (a ``.txt`` member's bytes to four times that before they are decoded), so a huge text costs
  no more than a long one; the tokens kept change only for text averaging more than 8 characters
  per token.
- **Failures.** Any exception while decoding a sample (pillow, soundfile, a ``.json`` nested
  too deep for the parser, a tokenizer error...) becomes a SampleError with a short reason, so
  one sample never ends the epoch. ``KeyboardInterrupt`` and ``SystemExit`` pass through.
- **Pickles.** ``.pyd``/``.pickle``/``.pth`` and any other unknown members are ignored: they
  are never passed to ``pickle`` or ``torch.load``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import warnings
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import SampleError
from ..format.schema import find_member
from .tokenizer import check_vocab, load_tokenizer, pad_token_id

__all__ = [
    "SampleDecoder",
    "decode_image",
    "decode_audio",
    "image_to_rgb",
    "TEXT_JSON_FIELDS",
    "TEXT_CHARS_PER_TOKEN",
    "preload_codecs",
]

log = logging.getLogger(__name__)

TEXT_JSON_FIELDS = ("text", "caption", "transcript")
#: Text is cut to this many characters per ``max_text_length`` token before tokenizing.
TEXT_CHARS_PER_TOKEN = 8
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_BACKGROUND = 255  # alpha is composited on white (see the module docstring)
_MAX_RESAMPLE_TERMS = 1000  # bound on the reduced sample-rate fraction (sinc kernel size)
_MIN_RATE, _MAX_RATE = 1000, 768_000


def _fail(sample: dict, reason: str, detail: Any = None) -> SampleError:
    key = sample.get("__key__", "?")
    url = sample.get("__url__") or "<unknown shard>"
    message = f"{url}: sample {key}: {reason}" + (f" ({detail})" if detail else "")
    return SampleError(
        message, reason=reason, url=url if url != "<unknown shard>" else None, key=key
    )


# --------------------------------------------------------------------------- images


def _open_image(data: bytes, max_pixels: int):
    with warnings.catch_warnings():
        # Our own limit (checked below) replaces pillow's global warning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:  # over pillow's own hard limit
            raise _BombError(str(exc)) from None
    w, h = img.size
    if w * h > max_pixels:
        raise _BombError(
            f"{w}x{h} = {w * h} pixels is over the limit of {max_pixels} (config.max_image_pixels)"
        )
    return img


class _BombError(Exception):
    pass


def image_to_rgb(img):
    """``img`` as a pillow image in ``"RGB"``, ``"L"`` (grayscale, expanded later) or ``"F"``
    (grayscale in [0, 1], from 16/32-bit images). Alpha is composited on white."""
    mode = img.mode
    if mode in ("RGB", "L"):
        return img
    if mode == "P":
        if "transparency" in img.info:
            img, mode = img.convert("RGBA"), "RGBA"
        else:
            return img.convert("RGB")
    if mode in _ALPHA_MODES:
        if mode != "RGBA":
            img = img.convert("RGBA")
        background = Image.new("RGB", img.size, (_BACKGROUND,) * 3)
        background.paste(img, mask=img.getchannel("A"))
        return background
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img, dtype=np.float32) / 65535.0
        return Image.fromarray(np.clip(arr, 0.0, 1.0), "F")
    if mode == "F":
        return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0), "F")
    if mode == "1":
        return img.convert("L")
    return img.convert("RGB")  # CMYK, YCbCr, ... (raises ValueError if pillow cannot)


# EXIF orientation -> pillow transpose method (as in ImageOps.exif_transpose)
_T = Image.Transpose
_TRANSPOSE = {
    2: _T.FLIP_LEFT_RIGHT,
    3: _T.ROTATE_180,
    4: _T.FLIP_TOP_BOTTOM,
    5: _T.TRANSPOSE,
    6: _T.ROTATE_270,
    7: _T.TRANSVERSE,
    8: _T.ROTATE_90,
}


def _orientation(img) -> int:
    """The EXIF orientation found while opening (no pixel decoding: pillow's PNG ``getexif``
    would decode the whole image to look for a late eXIf chunk)."""
    if "exif" not in img.info:
        return 1
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
        return 1


def decode_image(
    data: bytes,
    *,
    size: int,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    max_pixels: int = 89_478_485,
) -> torch.Tensor:
    """Encoded image bytes -> normalised float tensor ``[3, size, size]``.

    Raises ``_BombError`` over ``max_pixels``; pillow's errors for undecodable bytes pass
    through (the decoder maps both to SampleError).
    """
    img = _open_image(data, max_pixels)
    if img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
        # DCT scaling: pillow picks the largest 1/2^k reduction with both sides >= requested.
        img.draft(img.mode, (size, size))
    orientation = _orientation(img)
    img = image_to_rgb(img)
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2.0, (h - side) / 2.0
    img = img.resize(
        (size, size),
        Image.Resampling.BICUBIC,
        box=(left, top, left + side, top + side),
        reducing_gap=3.0,
    )
    if orientation in _TRANSPOSE:
        img = img.transpose(_TRANSPOSE[orientation])
    return _to_tensor(img, size, mean, std)


def _to_tensor(img, size: int, mean, std) -> torch.Tensor:
    """HWC uint8 (or HW float) pillow pixels -> CHW float32, normalised in two in-place passes."""
    arr = np.asarray(img)
    peak = 1.0 if img.mode == "F" else 255.0
    std_arr = np.asarray(std, dtype=np.float32)
    scale = (1.0 / (peak * std_arr)).reshape(3, 1, 1)
    shift = (np.asarray(mean, dtype=np.float32) / std_arr).reshape(3, 1, 1)
    chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    out = np.empty((3, size, size), dtype=np.float32)
    np.multiply(chw, scale, out=out)  # converts, transposes and scales in one pass
    out -= shift
    return torch.from_numpy(out)


# --------------------------------------------------------------------------- audio


def _rate_fraction(orig: int, new: int) -> tuple[int, int]:
    """``(orig', new')`` with ``new'/orig' ~= new/orig`` and both terms small."""
    frac = Fraction(new, orig)
    if frac.denominator > _MAX_RESAMPLE_TERMS or frac.numerator > _MAX_RESAMPLE_TERMS:
        frac = frac.limit_denominator(_MAX_RESAMPLE_TERMS)
        while frac.numerator > _MAX_RESAMPLE_TERMS:  # large upsampling ratios
            frac = Fraction(new, orig).limit_denominator(max(1, frac.denominator // 2))
    return frac.denominator, frac.numerator


def decode_audio(
    data: bytes, *, sample_rate: int, max_length: int, resamplers: dict | None = None
) -> tuple[torch.Tensor, int]:
    """Encoded audio -> (mono float waveform ``[max_length]`` at ``sample_rate``, true length).

    The true length is the resampled clip's length, capped at ``max_length``; the waveform is
    cropped to or zero-padded up to ``max_length``. soundfile errors pass through.
    """
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as f:
        orig = int(f.samplerate)
        if not _MIN_RATE <= orig <= _MAX_RATE:
            raise ValueError(f"unsupported sample rate {orig} Hz")
        total = f.frames if f.frames and f.frames > 0 else None
        need = math.ceil(max_length * orig / sample_rate)
        margin = 64 + need // 100  # the sinc filter looks a few samples ahead
        frames = -1 if total is None or total <= need + margin else need + margin
        x = f.read(frames=frames, dtype="float32", always_2d=True)
    if x.shape[0] == 0:
        raise ValueError("no audio frames")
    mono = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    wave = torch.from_numpy(np.ascontiguousarray(mono))
    n_src = total if total is not None else wave.shape[0]
    if orig != sample_rate:
        o, n = _rate_fraction(orig, sample_rate)
        wave = _resample(wave, o, n, resamplers)
        true_length = min(max_length, math.ceil(n_src * n / o))
    else:
        true_length = min(max_length, n_src)
    out = torch.zeros(max_length, dtype=torch.float32)
    keep = min(max_length, wave.shape[0], true_length)
    out[:keep] = wave[:keep]
    return out, keep


def preload_codecs() -> None:
    """Import the codecs the decoders load on first use (pillow's common image plugins,
    soundfile, torchaudio). Called in the training process before DataLoader workers fork,
    so that each worker inherits them instead of importing them before its first sample
    (about 0.3 s a worker, every epoch when ``persistent_workers`` is off)."""
    Image.preinit()
    import soundfile  # noqa: F401

    with contextlib.suppress(ImportError):  # resampling is the only use; optional there
        import torchaudio.functional  # noqa: F401
        import torchaudio.transforms  # noqa: F401


def _resample(wave: torch.Tensor, orig: int, new: int, cache: dict | None) -> torch.Tensor:
    import torchaudio

    if cache is None:
        return torchaudio.functional.resample(wave, orig, new)
    module = cache.get((orig, new))
    if module is None:
        if len(cache) >= 8:  # a few rates per dataset; keep the kernels small in number
            cache.pop(next(iter(cache)))
        module = cache[(orig, new)] = torchaudio.transforms.Resample(orig, new)
    with torch.no_grad():
        return module(wave)


# --------------------------------------------------------------------------- samples


class SampleDecoder:
    """Decode one sample dict into tensors; every failure is a SampleError with a ``reason``.

    Returns ``{"key", "url", "input_ids" (LongTensor[T <= max_text_length]),
    "pixel_values" ([3, S, S] float or None), "audio" ([max_audio_length] float or None),
    "audio_length" (int), "source" (str or None), "synthetic" (bool)}``.

    ``tokenizer`` defaults to the one ``config.tokenizer`` names; the vocabulary is checked
    against ``config.vocab_size`` here, at construction (start-up), raising ConfigError.
    """

    def __init__(self, config, tokenizer=None):
        self.config = config
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config)
        check_vocab(self.tokenizer, config)
        self._resamplers: dict = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_resamplers"] = {}  # kernels are rebuilt in each worker
        return state

    @property
    def pad_token_id(self) -> int:
        """The id that pads ``input_ids`` in a batch (see :func:`.tokenizer.pad_token_id`)."""
        return pad_token_id(self.tokenizer)

    def __call__(self, sample: dict) -> dict:
        try:
            return self._decode(sample)
        except SampleError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad sample never ends the epoch
            raise _fail(sample, "undecodable sample", f"{type(exc).__name__}: {exc}") from exc

    def _decode(self, sample: dict) -> dict:
        cfg = self.config
        meta = self._json(sample)
        input_ids = self._text(sample, meta)

        pixel_values = None
        image = find_member(sample, "image")
        if image is not None:
            try:
                pixel_values = decode_image(
                    image[1],
                    size=cfg.vision_dim,
                    mean=cfg.image_mean,
                    std=cfg.image_std,
                    max_pixels=cfg.max_image_pixels,
                )
            except _BombError as exc:
                raise _fail(sample, "image too large", exc) from None
            except Exception as exc:  # noqa: BLE001 - pillow raises many kinds
                raise _fail(sample, "undecodable image", f"{image[0]}: {exc}") from exc

        audio, audio_length = None, 0
        member = find_member(sample, "audio")
        if member is not None:
            try:
                audio, audio_length = decode_audio(
                    member[1],
                    sample_rate=cfg.audio_sample_rate,
                    max_length=cfg.max_audio_length,
                    resamplers=self._resamplers,
                )
            except Exception as exc:  # noqa: BLE001 - soundfile/libsndfile errors
                raise _fail(sample, "undecodable audio", f"{member[0]}: {exc}") from exc

        source = meta.get("source") if isinstance(meta.get("source"), str) else None
        if isinstance(sample.get("__source__"), str):
            source = sample["__source__"]
        return {
            "key": str(sample.get("__key__", "")),
            "url": str(sample.get("__url__", "") or ""),
            "input_ids": input_ids,
            "pixel_values": pixel_values,
            "audio": audio,
            "audio_length": int(audio_length),
            "source": source,
            "synthetic": meta.get("synthetic") is True,
        }

    def _json(self, sample: dict) -> dict:
        data = sample.get("json")
        if data is None:
            return {}
        try:
            meta = json.loads(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise _fail(sample, "undecodable json", f"{type(exc).__name__}: {exc}") from exc
        return meta if isinstance(meta, dict) else {}

    def _text(self, sample: dict, meta: dict) -> torch.Tensor:
        text = None
        limit = TEXT_CHARS_PER_TOKEN * self.config.max_text_length
        member = find_member(sample, "text")
        if member is not None:
            raw = member[1]
            # UTF-8 takes at most 4 bytes a character: cut before decoding, then to ``limit``
            text = (
                raw[: 4 * limit].decode("utf-8", errors="replace")
                if isinstance(raw, bytes)
                else str(raw)
            )
        else:
            for name in TEXT_JSON_FIELDS:
                if isinstance(meta.get(name), str):
                    text = meta[name]
                    break
        if text is not None:
            text = text[:limit]
        if text is None or not text.strip():
            raise _fail(
                sample, "missing text", "no txt/caption member and no text or caption in json"
            )
        cfg = self.config
        try:
            ids = self.tokenizer(
                text, truncation=True, max_length=cfg.max_text_length, add_special_tokens=True
            )["input_ids"]
        except Exception as exc:  # noqa: BLE001 - tokenizer errors on odd input
            raise _fail(sample, "untokenizable text", exc) from exc
        if ids and max(ids) >= cfg.vocab_size:
            raise _fail(
                sample,
                "token id out of range",
                f"id {max(ids)} >= config.vocab_size {cfg.vocab_size}",
            )
        return torch.tensor(ids, dtype=torch.long)
