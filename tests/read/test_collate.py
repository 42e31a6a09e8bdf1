"""Batch collation of mixed text-only, image-text and audio-text samples."""

from __future__ import annotations

import functools
import io

import pytest
import torch
from PIL import Image

from wdstream.config import Config
from wdstream.errors import SampleError
from wdstream.format.synthetic import synthetic_sample
from wdstream.read.collate import IGNORE_INDEX, collate
from wdstream.read.decode import SampleDecoder
from wdstream.read.tokenizer import pad_token_id

CFG = Config(vision_dim=32, max_audio_length=4000, max_text_length=24)


@pytest.fixture(scope="module")
def decoder():
    return SampleDecoder(CFG)


@pytest.fixture(scope="module")
def mixed(decoder):
    """Decoded samples: text-only, image-text, audio-text, all three (synthetic)."""
    png = io.BytesIO()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(png, "PNG")
    full = synthetic_sample(3, image_size=40, audio_seconds=0.1)
    raw = [
        {"__key__": "t", "txt": b"hi"},
        {"__key__": "i", "txt": b"a red picture, longer text", "png": png.getvalue()},
        {"__key__": "a", "txt": b"a tone", "wav": full["wav"], "json": b'{"source": "tones"}'},
        {"__key__": "s", "__url__": "memory://syn.tar", **full},
    ]
    return [decoder(s) for s in raw]


def test_mixed_batch_shapes_dtypes_and_flags(decoder, mixed):
    batch = collate(mixed, CFG, pad_token_id=pad_token_id(decoder.tokenizer))
    b, t = 4, max(len(s["input_ids"]) for s in mixed)
    assert batch["input_ids"].shape == (b, t) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].shape == (b, t) and batch["attention_mask"].dtype == torch.long
    assert batch["labels"].shape == (b, t) and batch["labels"].dtype == torch.long
    assert batch["pixel_values"].shape == (b, 3, 32, 32)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["audio"].shape == (b, 4000) and batch["audio"].dtype == torch.float32
    assert batch["audio_lengths"].dtype == torch.long
    assert batch["has_image"].tolist() == [False, True, False, True]
    assert batch["has_audio"].tolist() == [False, False, True, True]
    assert batch["keys"] == ["t", "i", "a", "s"]
    assert batch["sources"] == [None, None, "tones", "synthetic"]
    assert batch["synthetic"] is True
    # Missing modalities are zeros; present ones are the decoded tensors.
    assert torch.all(batch["pixel_values"][[0, 2]] == 0)
    assert torch.all(batch["audio"][[0, 1]] == 0)
    assert batch["audio_lengths"].tolist() == [0, 0, 1600, 1600]  # 0.1 s at 16 kHz
    torch.testing.assert_close(batch["pixel_values"][1], mixed[1]["pixel_values"])
    torch.testing.assert_close(batch["audio"][2], mixed[2]["audio"])


def test_padding_mask_and_labels(mixed):
    batch = collate(mixed, CFG, pad_token_id=7)
    for i, s in enumerate(mixed):
        n = len(s["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == s["input_ids"].tolist()
        assert torch.all(batch["input_ids"][i, n:] == 7)
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (
            batch["input_ids"].shape[1] - n
        )
        assert batch["labels"][i, :n].tolist() == s["input_ids"].tolist()
        assert torch.all(batch["labels"][i, n:] == IGNORE_INDEX)
    assert int(batch["attention_mask"][0].sum()) == len(mixed[0]["input_ids"]) == 3  # "hi" + EOS


def test_not_synthetic_when_no_sample_is(mixed):
    batch = collate(mixed[:3], CFG)
    assert batch["synthetic"] is False and batch["input_ids"].shape[1] == max(
        len(s["input_ids"]) for s in mixed[:3]
    )


def test_as_dataloader_collate_fn(decoder, mixed):
    fn = functools.partial(collate, config=CFG, pad_token_id=pad_token_id(decoder.tokenizer))
    loader = torch.utils.data.DataLoader(mixed, batch_size=2, collate_fn=fn)
    batches = list(loader)
    assert [b["keys"] for b in batches] == [["t", "i"], ["a", "s"]]
    assert batches[1]["has_audio"].tolist() == [True, True]


def test_empty_batch_is_an_error():
    with pytest.raises(SampleError, match="empty"):
        collate([], CFG)


def test_collate_without_a_config_takes_sizes_from_the_samples(decoder, mixed):
    """``collate_fn=wdstream.collate`` works as it is (no config, no partial)."""
    import wdstream

    batch = wdstream.collate(mixed)
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["audio"].shape == (4, 4000)
    assert torch.equal(batch["input_ids"], collate(mixed, CFG)["input_ids"])
    text_only = wdstream.collate([mixed[0]])
    assert text_only["pixel_values"].shape == (1, 3, Config().vision_dim, Config().vision_dim)
    dl = torch.utils.data.DataLoader(mixed, batch_size=2, collate_fn=wdstream.collate)
    assert [b["keys"] for b in dl] == [["t", "i"], ["a", "s"]]
