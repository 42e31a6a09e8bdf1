"""MultimodalDataset: the seed API on wdstream — shards, Hugging Face streaming (local parquet
standing in for the Hub, which is unreachable here), synthetic data, the fallback, cleanup."""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import threading
from collections import Counter
from types import MappingProxyType, SimpleNamespace

import pytest
import torch

from wdstream.compat import PREFETCH_THREAD_NAME, MultimodalDataset
from wdstream.config import Config
from wdstream.errors import ConfigError
from wdstream.format.manifest import Manifest
from wdstream.format.synthetic import synthetic_samples
from wdstream.registry import Entry
from wdstream.write.writer import ShardWriter

N_SHARD_SAMPLES = 13


@pytest.fixture(scope="module")
def cfg():
    return Config(
        vision_dim=32, max_audio_length=1600, synthetic_samples=16, batch_size=4, cache_size=8
    )


def _write_shards(url: str, n: int, storage_options=None) -> list[str]:
    """Real (non-synthetic) shards + manifest: synthetic members, json says source 'local'."""
    writer = ShardWriter(url, 0, max_samples=5, storage_options=storage_options)
    keys = []
    for key, fields in synthetic_samples(n, seed=1, image_size=40, audio_seconds=0.1):
        fields["json"] = json.dumps({"source": "local"}).encode()
        writer.write(key, fields)
        keys.append(key)
    Manifest(shards=writer.close(), source={"name": "local"}, base_url=url).save(
        url, storage_options
    )
    return keys


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("shards") / "local")
    return folder, _write_shards(folder, N_SHARD_SAMPLES)


@pytest.fixture(scope="module")
def local_registry(small_hf_dataset):
    """Registry entries whose 'Hub id' is a local parquet folder (48 rows, 4 files)."""
    return MappingProxyType(
        {
            "local_vision": Entry(
                name="local_vision",
                hub_id=small_hf_dataset,
                task_types=("vision", "audio"),
                image_column="image",
                audio_column="audio",
                text_template="{label}: {text}",
                columns=("image", "audio", "text", "label", "id"),
                default=True,
            ),
            "local_text": Entry(
                name="local_text",
                hub_id=small_hf_dataset,
                task_types=("text",),
                text_template="{text}",
                default=True,
            ),
            "local_other": Entry(
                name="local_other",
                hub_id=small_hf_dataset,
                task_types=("text",),
                text_template="#{id} {text}",
            ),
        }
    )


def _prefetch_threads() -> list[threading.Thread]:
    """The reader's threads alive now: the Hub chain's read-ahead thread (PREFETCH_THREAD_NAME)
    and the shard chain's fetch threads (``wdstream-fetch_*``)."""
    return [
        t
        for t in threading.enumerate()
        if t.is_alive() and (t.name == PREFETCH_THREAD_NAME or t.name.startswith("wdstream-fetch"))
    ]


def _text(tok, sample) -> str:
    return tok.decode(sample["input_ids"], skip_special_tokens=True)


@pytest.fixture(autouse=True)
def _no_threads_left_behind():
    yield
    gc.collect()
    assert _prefetch_threads() == []


# --- seed case 1: streaming on, with shards ----------------------------------------------------
def test_streaming_with_shards_reads_every_sample_once(cfg, shard_dir):
    folder, keys = shard_dir
    ds = MultimodalDataset(
        config=cfg,
        tokenizer=None,
        split="train",
        use_streaming=True,
        cache_size=1000,
        shards=folder,
    )
    assert (ds.mode, ds.synthetic, ds.sources) == ("shards", False, ["local"])
    samples = list(ds)
    assert sorted(s["key"] for s in samples) == keys
    for s in samples:
        assert s["pixel_values"].shape == (3, 32, 32)
        assert s["audio"].shape == (1600,) and s["audio_length"] == 1600
        assert s["source"] == "local" and s["synthetic"] is False


def test_shards_as_brace_pattern_and_from_the_config(cfg, shard_dir):
    folder, keys = shard_dir
    pattern = folder + "/shard-00000-{00000..00002}.tar"
    assert sorted(s["key"] for s in MultimodalDataset(cfg, None, shards=pattern)) == keys
    old_style = SimpleNamespace(
        vocab_size=384, vision_dim=24, max_audio_length=800, shards=folder, unrelated_setting=True
    )
    ds = MultimodalDataset(old_style, None)
    samples = list(ds)
    assert ds.mode == "shards" and len(samples) == len(keys)
    assert samples[0]["pixel_values"].shape == (3, 24, 24)
    assert samples[0]["audio"].shape == (800,)


def test_dataloader_with_workers_batches_shards_with_the_readers_collate(cfg, shard_dir):
    folder, keys = shard_dir
    ds = MultimodalDataset(cfg, None, shards=folder, cache_size=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=ds.collate_fn, num_workers=2)
    seen = []
    for batch in loader:
        assert batch["pixel_values"].shape[1:] == (3, 32, 32)
        assert batch["has_image"].all() and batch["has_audio"].all()
        assert batch["labels"].shape == batch["input_ids"].shape
        assert batch["synthetic"] is False
        seen += batch["keys"]
    assert sorted(seen) == keys
    assert multiprocessing.active_children() == []  # the workers are gone


def test_epochs_reshuffle_shards(cfg, shard_dir):
    folder, keys = shard_dir
    ds = MultimodalDataset(cfg, None, shards=folder, cache_size=13)
    first = [s["key"] for s in ds]
    ds.set_epoch(1)
    second = [s["key"] for s in ds]
    assert sorted(first) == sorted(second) == keys
    assert first != second
    ds.set_epoch(0)
    assert [s["key"] for s in ds] == first


@pytest.mark.s3
def test_shards_on_s3(cfg, s3):
    url = "s3://test/local"
    keys = _write_shards(url, 6, s3["storage_options"])
    ds = MultimodalDataset(cfg.replace(storage_options=s3["storage_options"]), None, shards=url)
    assert ds.mode == "shards"
    assert sorted(s["key"] for s in ds) == keys


def test_unreachable_shards_fall_back_to_synthetic_with_one_warning(cfg, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        ds = MultimodalDataset(cfg, None, shards=str(tmp_path / "missing"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "SYNTHETIC" in warnings[0].getMessage()
    samples = list(ds)
    assert ds.synthetic and len(samples) == cfg.synthetic_samples
    assert all(s["synthetic"] is True for s in samples)


# --- seed case 2: streaming off -> synthetic ---------------------------------------------------
def test_streaming_off_gives_synthetic_data(cfg, caplog):
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        ds = MultimodalDataset(
            config=cfg, tokenizer=None, dataset_name="open_platypus", use_streaming=False
        )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # asked for, no alarm
    samples = list(ds)
    assert ds.mode == "synthetic" and len(samples) == cfg.synthetic_samples
    assert all(s["synthetic"] is True and s["pixel_values"].shape == (3, 32, 32) for s in samples)
    batch = ds.collate_fn(samples[:4])
    assert batch["synthetic"] is True and batch["input_ids"].shape[0] == 4


# --- seed case 3: automatic selection by task type (Hub unreachable here) ------------------------
@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"task_type": "code"}, ["python_code_18k", "mbpp"]),
        (
            {"dataset_name": "all", "task_type": "code", "cache_size": 2000},
            ["python_code_18k", "mbpp", "humaneval"],
        ),
        (
            {"dataset_name": "open_platypus", "use_streaming": True, "cache_size": 1000},
            ["open_platypus"],
        ),
    ],
)
def test_automatic_selection_falls_back_to_synthetic_with_one_warning(
    cfg, caplog, kwargs, expected
):
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        ds = MultimodalDataset(config=cfg, tokenizer=None, **kwargs)
    assert [e.name for e in ds.entries] == expected
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert all(name in message for name in expected) and "SYNTHETIC" in message
    samples = list(ds)
    assert ds.synthetic and len(samples) == cfg.synthetic_samples
    assert all(s["synthetic"] is True for s in samples)


def test_automatic_selection_streams_the_default_set(
    cfg, local_registry, small_hf_dataset, tokenizer_byt5
):
    import datasets

    ds = MultimodalDataset(cfg, tokenizer_byt5, task_type="vision", registry=local_registry)
    assert (ds.mode, ds.sources, ds.synthetic) == ("hub", ["local_vision"], False)
    rows = list(
        datasets.load_dataset(small_hf_dataset, split="train", streaming=True).select_columns(
            ["text", "label"]
        )
    )
    expected = sorted(f"{r['label']}: {r['text']}" for r in rows)
    samples = list(ds)
    assert sorted(_text(tokenizer_byt5, s) for s in samples) == expected
    for s in samples:
        assert s["source"] == "local_vision" and s["synthetic"] is False
        assert s["pixel_values"].shape == (3, 32, 32) and s["audio"].shape == (1600,)
        assert s["key"].startswith("local_vision_") and "." not in s["key"]


def test_hub_streaming_split_over_dataloader_workers(cfg, local_registry):
    ds = MultimodalDataset(cfg, None, dataset_name="local_text", registry=local_registry)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=ds.collate_fn, num_workers=2)
    keys = [k for batch in loader for k in batch["keys"]]
    assert len(keys) == len(set(keys)) == 48
    assert all(not batch["has_image"].any() for batch in loader)
    assert multiprocessing.active_children() == []


def test_all_of_a_type_is_mixed_by_weight_with_caps(cfg, local_registry):
    mixed = cfg.replace(
        weights={"local_text": 3, "local_other": 1},
        max_samples_per_dataset=5,
        mix_exhausted="stop",
        shuffle=False,
    )
    ds = MultimodalDataset(
        mixed, None, dataset_name="all", task_type="text", registry=local_registry
    )
    assert ds.sources == ["local_text", "local_other"]
    assert Counter(s["source"] for s in ds) == {"local_text": 5, "local_other": 5}
    # without caps, 'stop' ends the mix when the first source runs out (48 rows each)
    ds = MultimodalDataset(
        cfg.replace(weights={"local_text": 3, "local_other": 1}),
        None,
        dataset_name="all",
        task_type="text",
        registry=local_registry,
    )
    counts = Counter(s["source"] for s in ds)
    assert counts["local_text"] == 48 and 0 < counts["local_other"] < 48


def test_selection_errors(cfg, local_registry):
    with pytest.raises(ConfigError, match="local_vision"):
        MultimodalDataset(cfg, None, dataset_name="nope", registry=local_registry)
    with pytest.raises(ConfigError, match="vision"):
        MultimodalDataset(cfg, None, task_type="pictures")
    with pytest.raises(ConfigError, match="vocab_size"):
        MultimodalDataset(cfg.replace(vocab_size=100), None, use_streaming=False)


# --- cleanup -------------------------------------------------------------------------------
def test_thread_stops_at_the_end_of_iteration(cfg):
    ds = MultimodalDataset(cfg, None, use_streaming=False)
    it = iter(ds)
    next(it)
    assert len(_prefetch_threads()) >= 1
    rest = list(it)
    assert len(rest) == cfg.synthetic_samples - 1
    assert _prefetch_threads() == []


def test_close_stops_every_iterator(cfg):
    ds = MultimodalDataset(cfg, None, use_streaming=False)
    a, b = iter(ds), iter(ds)
    next(a), next(b)
    assert len(_prefetch_threads()) >= 2
    ds.close()
    assert _prefetch_threads() == []
    with pytest.raises(StopIteration):
        next(a)
    with MultimodalDataset(cfg, None, use_streaming=False) as ds2:
        it = iter(ds2)
        next(it)
    assert _prefetch_threads() == []


def test_dropping_the_iterator_or_the_dataset_stops_the_thread(cfg, local_registry):
    ds = MultimodalDataset(cfg, None, dataset_name="local_text", registry=local_registry)
    it = iter(ds)
    next(it)
    assert len(_prefetch_threads()) == 1
    del it
    gc.collect()
    assert _prefetch_threads() == []

    ds = MultimodalDataset(cfg, None, use_streaming=False)
    it = iter(ds)
    next(it)
    del ds, it
    gc.collect()
    assert _prefetch_threads() == []


def test_errors_in_the_thread_reach_the_consumer(cfg, shard_dir, monkeypatch):
    import wdstream.compat as module

    def broken(*args, **kwargs):
        yield from ()
        raise RuntimeError("boom in the reader")

    folder, _ = shard_dir
    ds = MultimodalDataset(cfg, None, shards=folder)
    monkeypatch.setattr(module, "_shard_samples", broken)  # a stand-in reader that fails
    with pytest.raises(RuntimeError, match="boom in the reader"):
        list(ds)
    assert _prefetch_threads() == []


@pytest.fixture(scope="module")
def tokenizer_byt5():
    import transformers

    return transformers.ByT5Tokenizer()
