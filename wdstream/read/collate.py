"""Batch collation: decoded samples (text-only, image-text, audio-text, mixed) into one dict.

A missing modality is zeros with its ``has_*`` flag false, so every batch has the same keys and
shapes. Use it as a DataLoader ``collate_fn`` as it is (``collate_fn=wdstream.collate``: sizes
come from the samples) or with
``functools.partial(collate, config=config, pad_token_id=pad_token_id(tokenizer))``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..config import Config
from ..errors import SampleError

__all__ = ["collate", "IGNORE_INDEX"]

IGNORE_INDEX = -100  # labels at padding positions (torch's cross-entropy default ignore_index)


def collate(
    samples: list[dict], config: Config | None = None, pad_token_id: int = 0
) -> dict[str, Any]:
    """Stack decoded samples (from :class:`wdstream.read.decode.SampleDecoder`) into a batch.

    Returns ``input_ids``, ``attention_mask``, ``labels`` ``[B, T]`` long (T: the longest text in
    the batch; labels are -100 at padding), ``pixel_values`` ``[B, 3, S, S]`` float and
    ``has_image`` ``[B]`` bool, ``audio`` ``[B, L]`` float, ``audio_lengths`` ``[B]`` long and
    ``has_audio`` ``[B]`` bool, ``is_filler`` ``[B]`` bool (True for a sample that is not a new
    sample of the epoch: a padding repeat with ``drop_last=False``, or a good sample standing in
    for a bad one in exact mode; mask these out when evaluating), ``keys`` and ``sources``
    (lists) and ``synthetic`` (True if any sample is synthetic). Raises SampleError for an empty
    batch.

    Without ``config``, the image side and the audio length are those of the samples (the
    decoder made them all the same), and the defaults of :class:`~wdstream.Config` for a
    modality no sample has.
    """
    if not samples:
        raise SampleError("cannot collate an empty batch")
    b = len(samples)
    size, length = _sizes(samples, config)
    longest = max(1, max(len(s["input_ids"]) for s in samples))

    input_ids = torch.full((b, longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((b, longest), dtype=torch.long)
    # the large arrays are filled by numpy, on this thread: torch parallelises each row's
    # copy over its intra-op threads, which cost 10-50 times more (60 ms against 3 ms a
    # batch of 32 images on 2 cores, far worse when the cores are busy)
    pixel_values = np.empty((b, 3, size, size), dtype=np.float32)
    has_image = torch.zeros(b, dtype=torch.bool)
    audio = np.empty((b, length), dtype=np.float32)
    audio_lengths = torch.zeros(b, dtype=torch.long)
    has_audio = torch.zeros(b, dtype=torch.bool)

    for i, s in enumerate(samples):
        ids = s["input_ids"]
        n = len(ids)
        input_ids[i, :n] = ids
        attention_mask[i, :n] = 1
        if s.get("pixel_values") is not None:
            pixel_values[i] = _array(s["pixel_values"])
            has_image[i] = True
        else:
            pixel_values[i] = 0
        if s.get("audio") is not None:
            audio[i] = _array(s["audio"])
            audio_lengths[i] = int(s.get("audio_length", length))
            has_audio[i] = True
        else:
            audio[i] = 0

    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": torch.from_numpy(pixel_values),
        "has_image": has_image,
        "audio": torch.from_numpy(audio),
        "audio_lengths": audio_lengths,
        "has_audio": has_audio,
        "is_filler": torch.tensor([bool(s.get("filler")) for s in samples], dtype=torch.bool),
        "keys": [s["key"] for s in samples],
        "sources": [s.get("source") for s in samples],
        "synthetic": any(bool(s.get("synthetic")) for s in samples),
    }


def _array(value) -> np.ndarray:
    """A sample's tensor (or array) as a numpy array, without a copy when it is one already."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _sizes(samples: list[dict], config: Config | None) -> tuple[int, int]:
    """``(image side, audio length)``: from ``config``, else from the first sample that has
    the modality, else the Config defaults."""
    if config is not None:
        return config.vision_dim, config.max_audio_length
    defaults = Config()
    size = next(
        (int(s["pixel_values"].shape[-1]) for s in samples if s.get("pixel_values") is not None),
        defaults.vision_dim,
    )
    length = next(
        (int(s["audio"].shape[-1]) for s in samples if s.get("audio") is not None),
        defaults.max_audio_length,
    )
    return size, length
