"""Hostile shards and manifests: members too large to read, samples that used to end the epoch,
duplicate keys in exact mode, manifests that lie, and index files that never end."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import zlib
from functools import partial

import pytest
from helpers import read_span, small_config, write_test_shards

import wdstream
from wdstream.errors import ErrorBudget, SampleError
from wdstream.format.tario import TarStreamWriter
from wdstream.read.decode import SampleDecoder
from wdstream.read.shards import ShardRef

cfg = partial(
    small_config, batch_size=1, num_workers=0, cache_size=0, shuffle=False, drop_last=False
)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir)
ENV = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(tarfile.GNU_FORMAT)


def write_gz_with_huge_member(path, size: int) -> None:
    """``d0.txt``, then ``d1.txt`` with a ``d1.bin`` of ``size`` zero bytes, then ``d2.txt``,
    gzip-compressed as it is made: a few MB on disk, never ``size`` bytes in memory."""
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = b"\0" * 2**24
    with open(path, "wb") as f:

        def put(data: bytes) -> None:
            f.write(z.compress(data))

        for key in ("d0", "d1"):
            text = f"text {key}".encode()
            put(_header(f"{key}.txt", len(text)) + text + b"\0" * (512 - len(text)))
        put(_header("d1.bin", size))
        for _ in range(size // len(chunk)):
            put(chunk)
        text = b"text d2"
        put(_header("d2.txt", len(text)) + text + b"\0" * (512 - len(text)) + b"\0" * 10240)
        f.write(z.flush())


_MEASURE = r"""
import json, logging, resource, sys
import wdstream
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
url, max_member = sys.argv[1], int(sys.argv[2])
config = wdstream.Config(batch_size=1, num_workers=0, cache_size=0, shuffle=False,
                         drop_last=False, vision_dim=16, max_text_length=16,
                         max_member_bytes=max_member, persistent_workers=False)
loader = wdstream.make_loader(url, config)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
keys, lengths = [], []
for batch in loader:
    keys += batch["keys"]
    lengths += batch["attention_mask"].sum(dim=1).tolist()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"keys": keys, "lengths": lengths, "growth_mb": (after - before) / 1024}))
"""


def _measure(url: str, max_member_bytes: int) -> tuple[dict, str]:
    """Read ``url`` in a fresh process; its keys and how much its peak RSS grew while reading."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, url, str(max_member_bytes)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.mark.slow
def test_huge_member_in_a_small_gz_is_skipped_with_bounded_memory(tmp_path):
    shard = tmp_path / "hostile.tar.gz"
    write_gz_with_huge_member(shard, 768 * 2**20)
    assert shard.stat().st_size < 8 * 2**20
    got, log = _measure(str(shard), 64 * 2**20)
    assert got["keys"] == ["d0", "d2"]  # d1 skipped, the samples after it still read
    assert "member too large" in log and "d1.bin is 805306368 bytes" in log
    assert got["growth_mb"] < 300, got  # reading the member would take 768 MB or more


@pytest.mark.slow
def test_huge_text_is_cut_before_tokenizing_with_bounded_memory(tmp_path):
    text = ("a" * 4095 + "\n").encode() * (32 * 256)  # 32 MiB of text in one .txt member
    shard = tmp_path / "text.tar"
    buf = io.BytesIO()
    w = TarStreamWriter(buf)
    w.write_sample("t0", {"txt": text})
    w.write_sample("t1", {"txt": b"short"})
    w.close()
    shard.write_bytes(buf.getvalue())
    got, _ = _measure(str(shard), 2**30)
    assert got["keys"] == ["t0", "t1"]
    assert got["lengths"][0] == 16  # max_text_length tokens, as before the cut
    # tokenizing all 32 MiB used to take about 650 MB (9.8 GB for 512 MiB)
    assert got["growth_mb"] < 300, got


def test_text_cut_keeps_the_tokens_the_model_sees():
    decoder = SampleDecoder(small_config(max_text_length=16))
    long = {"__key__": "k", "txt": ("é" * 10_000).encode()}
    short = {"__key__": "k", "txt": ("é" * 200).encode()}
    assert decoder(long)["input_ids"].tolist() == decoder(short)["input_ids"].tolist()
    meta = {"__key__": "k", "json": json.dumps({"caption": "x" * 10**6}).encode()}
    assert len(decoder(meta)["input_ids"]) == 16


# -- decode errors never end the epoch ---------------------------------------------------
def test_deeply_nested_json_and_other_crafted_members_are_counted_not_raised(tmp_path, caplog):
    nested = b"[" * 100_000 + b"]" * 100_000
    samples = [
        ("s0", {"txt": b"ok 0"}),
        ("s1", {"txt": b"deep json", "json": nested}),
        ("s2", {"txt": b"deep json 2", "json": b'{"a":' * 50_000 + b"1" + b"}" * 50_000}),
        ("s3", {"txt": b"zlib bomb png", "png": b"\x89PNG\r\n\x1a\n" + b"\0" * 40}),
        ("s4", {"txt": b"bad wav", "wav": b"RIFF\xff\xff\xff\xffWAVEfmt " + b"\1" * 30}),
        ("s5", {"txt": b"huge int", "json": b"1" * 10_000}),
        ("s6", {"txt": b"ok 6"}),
    ]
    buf = io.BytesIO()
    w = TarStreamWriter(buf)
    for key, fields in samples:
        w.write_sample(key, fields)
    w.close()
    (tmp_path / "crafted.tar").write_bytes(buf.getvalue())
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        keys = [
            k for b in wdstream.make_loader(str(tmp_path / "crafted.tar"), cfg()) for k in b["keys"]
        ]
    assert keys == ["s0", "s6"]  # s5's json is a number: text from .txt, but 10k digits fail
    assert "undecodable json" in caplog.text and "RecursionError" in caplog.text
    assert "key s3" in caplog.text and "key s4" in caplog.text


def test_any_exception_in_decoding_becomes_a_sample_error_but_interrupts_pass():
    """A tokenizer stand-in that raises chosen exceptions: the real decoder around it."""

    class Raising:
        def __init__(self, exc):
            self.exc = exc

        def __call__(self, *a, **k):
            raise self.exc

    base = SampleDecoder(small_config())
    sample = {"__key__": "k1", "__url__": "s.tar", "txt": b"hello"}
    for exc in (RecursionError("deep"), MemoryError(), OverflowError("big"), KeyError("x")):
        decoder = SampleDecoder(small_config(), tokenizer=base.tokenizer)
        decoder.tokenizer = Raising(exc)
        with pytest.raises(SampleError) as e:
            decoder(sample)
        assert e.value.key == "k1" and e.value.reason
    # outside the tokenizer's own guard: a failure anywhere in the decoder is a SampleError
    decoder = SampleDecoder(small_config(), tokenizer=base.tokenizer)
    decoder._text = Raising(AttributeError("'NoneType' has no attribute 'x'"))
    with pytest.raises(SampleError, match="undecodable sample.*AttributeError"):
        decoder(sample)
    for exc in (KeyboardInterrupt(), SystemExit(3)):
        decoder._text = Raising(exc)
        with pytest.raises(type(exc)):
            decoder(sample)


# -- duplicate keys in exact mode --------------------------------------------------------------
def _dup_shard(tmp_path, index: str) -> tuple[str, list[str]]:
    """A shard whose samples go d0, d1, d0, d2, with a full index, an index of offsets only, or
    none; returns the dataset folder and the keys in shard order."""
    order = ["d0", "d1", "d0", "d2"]
    buf = io.BytesIO()
    w = TarStreamWriter(buf)
    offsets = [w.write_sample(k, {"txt": f"text {i}".encode()}) for i, k in enumerate(order)]
    offsets.append(w.offset)
    w.close()
    data = buf.getvalue()
    ds = tmp_path / f"dup-{index}"
    ds.mkdir()
    (ds / "s.tar").write_bytes(data)
    shard = {
        "url": "s.tar",
        "samples": 4,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    if index != "none":
        idx = {"offsets": offsets, "keys": order}  # a version-1 (JSON) index, as foreign tools
        if index == "offsets":
            del idx["keys"]
        (ds / "s.idx.json").write_text(json.dumps(idx))
        shard["index"] = "s.idx.json"
    (ds / "manifest.json").write_text(json.dumps({"shards": [shard]}))
    return str(ds), order


@pytest.mark.parametrize("index", ["keys", "offsets", "none"])
def test_duplicate_key_is_a_counted_placeholder_and_positions_do_not_shift(tmp_path, caplog, index):
    ds, _ = _dup_shard(tmp_path, index)
    budget = ErrorBudget(-1)
    ref = ShardRef(
        url=f"{ds}/s.tar", samples=4, index_url=None if index == "none" else f"{ds}/s.idx.json"
    )
    items = read_span(ref, 0, 4, [0, 1, 2, 3], budget)
    assert [i["__key__"] for i in items] == ["d0", "d1", "d0", "d2"]
    assert [i.get("__error__") for i in items] == [None, None, "non-adjacent members", None]
    assert items[3]["txt"] == b"text 3"  # d2 is delivered, at its own position
    assert budget.counts == {"non-adjacent members": 1}
    # a run that starts after the first d0 still knows d0 was seen (index keys, or a read
    # from the shard's start); an index of offsets alone starts at the offset and cannot know
    items = read_span(ref, 2, 4, [2, 3], budget)
    assert [i["__key__"] for i in items] == ["d0", "d2"]
    assert items[1]["txt"] == b"text 3"
    assert ("__error__" in items[0]) == (index != "offsets")
    # end to end: every planned batch, d2 delivered, the duplicate counted and logged
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        loader = wdstream.make_loader(ds, cfg())
        keys = [k for b in loader for k in b["keys"]]
    assert len(keys) == len(loader) == 4 and "d2" in keys and keys[3] == "d2"
    assert keys.count("d0") == 1
    assert "non-adjacent members" in caplog.text and "1 samples not delivered" in caplog.text


# -- manifests that lie ------------------------------------------------------------------------
def _bad_manifest(tmp_path, **shard_changes) -> str:
    url = str(tmp_path / "ds")
    write_test_shards(url, [4], audio=False)
    d = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    d["shards"][0].update(shard_changes)
    d.pop("samples")
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(d))
    return url


@pytest.mark.parametrize(
    "change, field",
    [
        ({"samples": -5}, r"shards\[0\]\.samples"),
        ({"url": 123}, r"shards\[0\]\.url"),
        ({"url": "../../etc/passwd"}, r"shards\[0\]\.url"),
        ({"samples": 300_000_000}, r"shards\[0\]\.samples"),
    ],
)
def test_the_loader_refuses_a_lying_manifest_before_planning(tmp_path, change, field):
    url = _bad_manifest(tmp_path, **change)
    with pytest.raises(wdstream.SourceError, match=field):
        wdstream.make_loader(url, cfg())


def test_verify_and_inspect_print_one_line_not_a_traceback(tmp_path):
    url = _bad_manifest(tmp_path, url=123)
    for command in ("verify", "inspect"):
        out = subprocess.run(
            [sys.executable, "-m", "wdstream", command, url],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
        )
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "shards[0].url" in lines[0] and "manifest.json" in lines[0]


def test_an_index_pointing_at_dev_zero_is_not_read_whole(tmp_path, caplog):
    url = str(tmp_path / "ds")
    m = write_test_shards(url, [6], audio=False)
    index = tmp_path / "ds" / m.shards[0].index
    index.unlink()
    os.symlink("/dev/zero", index)  # inside the dataset's folder, endless
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        keys = [k for b in wdstream.make_loader(url, cfg()) for k in b["keys"]]
    assert len(set(keys)) == 6  # read from the shard's start instead
    assert "no usable index" in caplog.text and "larger than" in caplog.text


def test_a_shard_whose_size_differs_from_the_manifest_is_counted(tmp_path, caplog):
    url = str(tmp_path / "ds")
    m = write_test_shards(url, [4, 4], audio=False)
    with open(tmp_path / "ds" / m.shards[1].url, "ab") as f:
        f.write(b"\0" * 512)
    with caplog.at_level(logging.WARNING, logger="wdstream"):
        loader = wdstream.make_loader(url, cfg())
        keys = [k for b in loader for k in b["keys"]]
    assert len(keys) == 8 and len(set(keys)) == 4  # the other shard's samples fill in
    assert "4 samples not delivered" in caplog.text
    assert f"is {m.shards[1].bytes + 512} bytes, its manifest says" in caplog.text
