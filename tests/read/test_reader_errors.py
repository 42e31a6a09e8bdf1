"""Bad data, unreachable sources, the synthetic fallback, foreign shards and cleanup."""

from __future__ import annotations

import gc
import io
import json
import logging
import multiprocessing
import os
import tarfile
import threading
import time
from functools import partial

import pytest
from helpers import small_config, write_test_shards

import wdstream
from wdstream.demo.data import encode_image

cfg = partial(
    small_config,
    batch_size=2,
    num_workers=0,
    cache_size=4,
    vision_dim=16,
    max_audio_length=200,
    max_text_length=16,
    persistent_workers=False,
)


def write_tar(path, members, gz=False):
    """A foreign shard written with plain tarfile (no wdstream involved)."""
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def img2dataset_members(n, start=0):
    import random

    rng = random.Random(start)
    out = []
    for i in range(start, start + n):
        key = f"{i:09d}"
        out += [
            (f"{key}.jpg", encode_image(rng, 30, 20)),
            (f"{key}.txt", f"photo {i}".encode()),
            (f"{key}.json", json.dumps({"url": f"http://x/{i}.jpg", "caption": "c"}).encode()),
        ]
    return out


# -- foreign shards ------------------------------------------------------------------------
def test_reads_img2dataset_style_tar_and_tar_gz(tmp_path):
    write_tar(tmp_path / "a-000.tar", img2dataset_members(5))
    write_tar(tmp_path / "a-001.tar.gz", img2dataset_members(4, start=5), gz=True)
    urls = [str(tmp_path / "a-000.tar"), str(tmp_path / "a-001.tar.gz")]
    keys = [k for b in wdstream.make_loader(urls, cfg(drop_last=False)) for k in b["keys"]]
    assert sorted(keys) == [f"{i:09d}" for i in range(9)]
    batch = next(iter(wdstream.make_loader(str(tmp_path / "a-000.tar"), cfg())))
    assert batch["has_image"].all() and not batch["has_audio"].any()
    assert batch["pixel_values"].shape == (2, 3, 16, 16)


def test_brace_pattern_source(tmp_path):
    for s in range(3):
        write_tar(tmp_path / f"p-{s:03d}.tar", img2dataset_members(2, start=10 * s))
    loader = wdstream.make_loader(str(tmp_path / "p-{000..002}.tar"), cfg())
    assert len([k for b in loader for k in b["keys"]]) == 6


# -- bad data ------------------------------------------------------------------------------
def test_corrupt_samples_are_skipped_counted_and_logged(tmp_path, caplog):
    members = img2dataset_members(6)
    members[0] = ("000000000.jpg", b"\xff\xd8\xff not really a jpeg")  # undecodable image
    members = [m for m in members if m[0] not in ("000000002.txt", "000000002.json")]  # no text
    members += [("000000009.flac", b"fLaC garbage"), ("000000009.txt", b"bad audio")]
    members += [("000000003.cls", b"1")]  # non-adjacent member of an earlier key
    write_tar(tmp_path / "bad.tar", members)
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        keys = [
            k
            for b in wdstream.make_loader(str(tmp_path / "bad.tar"), cfg(drop_last=False))
            for k in b["keys"]
        ]
    assert sorted(keys) == ["000000001", "000000003", "000000004", "000000005"]
    text = caplog.text
    assert "bad.tar key 000000000" in text and "image" in text
    assert "key 000000002" in text and "text" in text
    assert "key 000000009" in text and "audio" in text
    assert "non-adjacent members" in text and "key 000000003" in text
    assert "skipped" in text


def test_truncated_shard_is_skipped_with_its_url(tmp_path, caplog):
    write_tar(tmp_path / "good.tar", img2dataset_members(4))
    write_tar(tmp_path / "cut.tar", img2dataset_members(4, start=4))
    data = (tmp_path / "cut.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 3])
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        keys = [
            k
            for b in wdstream.make_loader(
                [str(tmp_path / "good.tar"), str(tmp_path / "cut.tar")], cfg(drop_last=False)
            )
            for k in b["keys"]
        ]
    assert set(keys) >= {f"{i:09d}" for i in range(4)}
    assert len(keys) < 8
    assert "cut.tar" in caplog.text and "unreadable shard" in caplog.text


def test_truncated_shard_in_exact_mode_keeps_batches_equal(tmp_path):
    url = str(tmp_path / "ds")
    m = write_test_shards(url, [10, 10], audio=False)
    victim = tmp_path / "ds" / m.shards[1].url
    victim.write_bytes(victim.read_bytes()[:3000])
    loader = wdstream.make_loader(url, cfg(num_workers=2, batch_size=2))
    batches = list(loader)
    assert len(batches) == len(loader) == 10  # every planned batch is still delivered
    assert all(len(b["keys"]) == 2 for b in batches)
    real = [
        k for b in batches for k, f in zip(b["keys"], b["is_filler"].tolist(), strict=True) if not f
    ]
    fillers = sum(int(b["is_filler"].sum()) for b in batches)
    assert len(set(real)) == len(real) and 10 <= len(real) < 20  # the cut samples are fillers
    assert fillers == 20 - len(real)


def test_error_tolerance_stops_the_loader_with_counts(tmp_path):
    members = []
    for i in range(8):
        members += [(f"{i:03d}.jpg", b"\xff\xd8\xff junk"), (f"{i:03d}.txt", b"t")]
    write_tar(tmp_path / "junk.tar", members)
    with pytest.raises(wdstream.TooManyErrors, match="exceed the tolerance of 3"):
        list(wdstream.make_loader(str(tmp_path / "junk.tar"), cfg(error_tolerance=3)))
    # in a worker process too: the error reaches the training loop, no silent death
    with pytest.raises(Exception, match="tolerance"):
        list(
            wdstream.make_loader(str(tmp_path / "junk.tar"), cfg(error_tolerance=3, num_workers=1))
        )


# -- unreachable sources and the fallback ----------------------------------------------
def test_missing_local_manifest_is_an_error_naming_the_url(tmp_path):
    with pytest.raises(wdstream.StorageError, match=str(tmp_path / "nothing")):
        wdstream.make_loader(str(tmp_path / "nothing"), cfg())


@pytest.mark.s3
def test_missing_bucket_missing_prefix_no_credentials_refused_connection(s3, monkeypatch):
    opts = s3["storage_options"]
    with pytest.raises(wdstream.StorageError, match="s3://no-such-bucket/x/manifest.json"):
        wdstream.make_loader("s3://no-such-bucket/x", cfg(storage_options=opts))
    with pytest.raises(wdstream.StorageError, match="does not exist"):
        wdstream.make_loader("s3://test/missing-prefix", cfg(storage_options=opts))
    refused = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}, "key": "k", "secret": "s"}
    with pytest.raises(
        wdstream.StorageError,
        match=r"endpoint http://127.0.0.1:9 is not reachable \(connection refused\)",
    ):
        wdstream.make_loader("s3://test/x", cfg(storage_options=refused))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    no_creds = {"client_kwargs": {"endpoint_url": s3["endpoint"]}}
    with pytest.raises(wdstream.CredentialsError, match="credentials"):
        wdstream.make_loader("s3://test/x", cfg(storage_options=no_creds))


@pytest.mark.s3
def test_synthetic_fallback_warns_once_and_flags_batches(s3, caplog):
    opts = s3["storage_options"]
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        loader = wdstream.make_loader(
            "s3://test/not-there",
            cfg(
                storage_options=opts,
                fallback="synthetic",
                synthetic_samples=10,
                modalities=("text", "image"),
            ),
        )
        batches = list(loader)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "SYNTHETIC" in warnings[0].getMessage()
    assert "s3://test/not-there" in warnings[0].getMessage()
    assert len(batches) == 5 and all(b["synthetic"] is True for b in batches)
    assert loader.synthetic


def test_real_data_is_not_flagged_and_use_streaming_false_is_synthetic(tmp_path):
    url = str(tmp_path / "ds")
    write_test_shards(url, [6], audio=False)
    assert all(b["synthetic"] is False for b in wdstream.make_loader(url, cfg()))
    loader = wdstream.make_loader(url, cfg(use_streaming=False, synthetic_samples=8))
    batches = list(loader)
    assert len(batches) == 4 and all(b["synthetic"] for b in batches)


def test_no_unpickling_of_shard_members(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    members = img2dataset_members(2)
    members.insert(1, ("000000000.pyd", pickle.dumps(Evil())))
    members.insert(1, ("000000000.pickle", pickle.dumps(Evil())))
    write_tar(tmp_path / "evil.tar", members)
    keys = [k for b in wdstream.make_loader(str(tmp_path / "evil.tar"), cfg()) for k in b["keys"]]
    assert len(keys) == 2 and not marker.exists()


# -- cleanup ---------------------------------------------------------------------------
@pytest.mark.parametrize("persistent", [False, True])
def test_break_delete_and_exceptions_leave_no_process_or_thread(tmp_path, persistent):
    url = str(tmp_path / "ds")
    write_test_shards(url, [20, 20], audio=False)
    threads_before = set(threading.enumerate())
    loader = wdstream.make_loader(url, cfg(num_workers=2, persistent_workers=persistent))
    for i, _ in enumerate(loader):
        if i == 2:
            break
    with pytest.raises(RuntimeError):
        for _ in loader:
            raise RuntimeError("training step failed")
    del loader
    gc.collect()
    assert multiprocessing.active_children() == []
    # closed multiprocessing queues end their feeder threads asynchronously: allow a moment
    deadline = time.monotonic() + 10
    while True:
        leftover = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        if not leftover or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert leftover == []
    with wdstream.make_loader(url, cfg(num_workers=2, persistent_workers=True)) as loader:
        next(iter(loader))
    assert multiprocessing.active_children() == []
    assert os.getpid()  # the test process is unharmed
