"""``wdstream index``: exact epochs on shards wdstream did not write (img2dataset-style shards,
written here with plain ``tarfile``), on local disk and on a real S3 endpoint (moto), with bad
shards, a ``.tar.gz``, a re-run that reads only changed shards, and a read-only source."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import stat
import tarfile
from collections import Counter

import pytest
from helpers import small_config

import wdstream
from wdstream.cli import main
from wdstream.demo.data import encode_image
from wdstream.format.index import key_hash, load_index
from wdstream.format.manifest import load_manifest
from wdstream.write.indexer import index_dataset, list_shards

SIZES = (20, 12, 16)  # the last one gzip-compressed: 48 samples = 2 ranks x 4 x 6 batches


def img2dataset_tar(shard: int, n: int, *, seed: int = 0) -> bytes:
    """A shard as img2dataset writes one: ``{shard:05d}{i:04d}.jpg/.txt/.json``, written by
    plain ``tarfile`` (PAX headers, its own padding), not by wdstream."""
    rng = random.Random(seed * 1000 + shard)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(n):
            key = f"{shard:05d}{i:04d}"
            meta = {"key": key, "url": f"http://example.com/{key}.jpg", "status": "success"}
            for ext, data in (
                ("jpg", encode_image(rng, rng.randint(16, 40), 24)),
                ("txt", f"a photo number {shard}-{i}".encode()),
                ("json", json.dumps(meta).encode()),
            ):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def shard_files(sizes=SIZES) -> dict[str, bytes]:
    """``{name: bytes}``; the last shard as ``.tar.gz``."""
    out = {}
    for s, n in enumerate(sizes):
        data = img2dataset_tar(s, n)
        if s == len(sizes) - 1:
            out[f"{s:05d}.tar.gz"] = gzip.compress(data, mtime=0)
        else:
            out[f"{s:05d}.tar"] = data
    return out


def all_keys(sizes=SIZES) -> list[str]:
    return [f"{s:05d}{i:04d}" for s, n in enumerate(sizes) for i in range(n)]


def write_local(folder, files: dict[str, bytes]) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


def keys_of(loader) -> list[list[str]]:
    return [list(b["keys"]) for b in loader]


def exact_epoch_checks(source: str, opts: dict, allowed: tuple[str, ...] = ()) -> None:
    """2 ranks x 2 workers read every sample exactly once; a run stopped after 2 batches per
    rank and resumed from ``state_dict()`` delivers exactly the rest. ``allowed``: the
    prefixes ``index --out`` said to allow (shards outside the manifest's folder)."""
    config = small_config(
        num_workers=2, batch_size=4, storage_options=opts, allowed_prefixes=list(allowed)
    )
    epoch = []
    for rank in range(2):
        with wdstream.make_loader(source, config, rank=rank, world=2) as loader:
            assert len(loader) == 6
            epoch += [k for b in keys_of(loader) for k in b]
    assert sorted(epoch) == all_keys()

    first, state = [], None
    for rank in range(2):
        with wdstream.make_loader(source, config, rank=rank, world=2) as loader:
            loader.set_epoch(1)
            it = iter(loader)
            for _ in range(2):
                first += list(next(it)["keys"])
            state = loader.state_dict()
            it.close()
    rest = []
    for rank in range(2):
        with wdstream.make_loader(source, config, rank=rank, world=2) as loader:
            loader.load_state_dict(state)
            rest += [k for b in keys_of(loader) for k in b]
    assert len(first) == 16
    assert Counter(first + rest) == Counter(all_keys())


def test_index_local_img2dataset_shards_then_exact_epochs_and_resume(tmp_path, capsys):
    data = tmp_path / "laion"
    write_local(data, shard_files())
    before = {p: (tmp_path / "laion" / p).read_bytes() for p in os.listdir(data)}
    assert main(["index", str(data), "--workers", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "48 samples in 3 shards" in out and "1 compressed shard" in out
    m = load_manifest(str(data))
    assert [s.samples for s in m.shards] == list(SIZES)
    assert [s.whole for s in m.shards] == [False, False, True]
    assert m.skipped == {}
    for name, data_bytes in before.items():  # no shard touched
        assert (data / name).read_bytes() == data_bytes
    import hashlib

    assert m.shards[2].sha256 == hashlib.sha256(before["00002.tar.gz"]).hexdigest()
    assert m.shards[0].bytes == len(before["00000.tar"])
    idx = load_index(str(data / m.shards[0].index), samples=20)
    assert idx["keys"] is None  # version 2: the key hashes, checked as each key is read
    assert idx["key_hashes"].tolist() == [key_hash(k) for k in all_keys()[:20]]
    assert load_index(str(data / m.shards[2].index))["whole"] is True
    exact_epoch_checks(str(data), {})


def test_mid_shard_reads_start_at_the_indexed_offsets(tmp_path):
    """A slot that starts mid-shard reads from the index's offset in a foreign tar (PAX)."""
    data = tmp_path / "d"
    write_local(data, {"00000.tar": img2dataset_tar(0, 20)})
    index_dataset(str(data), quiet=True)
    config = small_config(shuffle=False, batch_size=5)
    keys = [k for b in wdstream.make_loader(str(data), config, rank=1, world=2) for k in b["keys"]]
    assert keys == all_keys((20,))[10:]


def test_rerun_reads_only_new_or_changed_shards(tmp_path):
    data = tmp_path / "d"
    write_local(data, shard_files())
    first = index_dataset(str(data), quiet=True)
    assert (first.indexed, first.reused) == (3, 0)
    again = index_dataset(str(data), quiet=True)
    assert (again.indexed, again.reused) == (0, 3)
    assert again.manifest.to_dict() == first.manifest.to_dict()
    write_local(
        data, {"00001.tar": img2dataset_tar(1, 7, seed=5), "00003.tar": img2dataset_tar(3, 4)}
    )
    third = index_dataset(str(data), quiet=True)
    assert (third.indexed, third.reused) == (2, 2)
    assert [s.samples for s in third.manifest.shards] == [20, 7, 16, 4]


def test_bad_shards_are_indexed_up_to_the_last_whole_sample_and_reported(tmp_path, capsys, caplog):
    data = tmp_path / "d"
    good = img2dataset_tar(0, 10)
    # cut inside sample 6's text: samples 0..5 are whole, and sample 5 is followed by a
    # whole member of sample 6, so a reader can tell it ended
    with tarfile.open(fileobj=io.BytesIO(good)) as t:
        cut = next(m for m in t.getmembers() if m.name == "000000006.txt").offset_data + 10
    dup = io.BytesIO()
    with tarfile.open(fileobj=dup, mode="w") as tar:
        for key, ext in (
            ("a", "jpg"),
            ("a", "txt"),
            ("b", "jpg"),
            ("b", "txt"),
            ("a", "json"),
            ("c", "txt"),
            ("b", "txt"),
            ("d", "txt"),
        ):
            body = (
                encode_image(random.Random(1), 16, 16)
                if ext == "jpg"
                else (b"{}" if ext == "json" else f"text of {key}".encode())
            )
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    write_local(
        data,
        {
            "00000.tar": good[:cut],
            "00001.tar": dup.getvalue(),
            "00002.tar.gz": gzip.compress(img2dataset_tar(2, 8))[:-300],
        },
    )
    assert main(["index", str(data), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "3 shard(s) with problems" in out and "truncated or corrupt shard=2" in out
    assert "truncated" in caplog.text and "comes back after other keys" in caplog.text
    m = load_manifest(str(data))
    counts = [s.samples for s in m.shards]
    assert counts[0] == 6
    assert counts[1] == 4  # a, b, c, d: the later "a" and "b" are left out
    assert 0 <= counts[2] < 8
    assert m.skipped == {"truncated or corrupt shard": 2, "duplicate or non-adjacent key": 2}
    assert [p["shard"] for p in m.source["problems"]] == [
        str(data / n) for n in ("00000.tar", "00001.tar", "00002.tar.gz")
    ]
    # reading: every indexed sample exactly once, nothing from the bad tails
    config = small_config(batch_size=1, num_workers=0, shuffle=True)
    loader = wdstream.make_loader(str(data), config)
    got = [k for b in loader for k in b["keys"]]
    expected = all_keys((6,)) + ["a", "b", "c", "d"] + all_keys((0, 0, counts[2]))
    assert sorted(got) == sorted(expected)


def test_list_shards_prefix_pattern_and_list(tmp_path):
    write_local(tmp_path / "a", {"00000.tar": b"x", "00001.tar.gz": b"x", "notes.txt": b"x"})
    write_local(tmp_path / "a" / "sub", {"00002.tar": b"x"})
    base = str(tmp_path / "a")
    assert list_shards(base) == [
        f"{base}/00000.tar",
        f"{base}/00001.tar.gz",
        f"{base}/sub/00002.tar",
    ]
    assert list_shards(f"{base}/{{00000..00001}}.tar") == [f"{base}/00000.tar", f"{base}/00001.tar"]
    with pytest.raises(wdstream.SourceError, match="no .tar/.tar.gz shards"):
        list_shards(str(tmp_path / "a" / "sub" / "none"))


def test_read_only_local_source_with_out_elsewhere(tmp_path, capsys):
    data, out = tmp_path / "ro", tmp_path / "meta"
    write_local(data, shard_files())
    listing = sorted(os.listdir(data))
    os.chmod(data, stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.geteuid() != 0:  # root writes anyway
            assert main(["index", str(data), "--quiet"]) == 2
        assert (
            main(
                [
                    "index",
                    f"{data}/{{00000..00001}}.tar",
                    f"{data}/00002.tar.gz",
                    "--out",
                    str(out),
                    "--quiet",
                ]
            )
            == 0
        )
        text = capsys.readouterr().out
        assert f"allowed_prefixes: [{data}/]" in text
        assert sorted(os.listdir(data)) == listing
        m = load_manifest(str(out), allowed_prefixes=[f"{data}/"])
        assert m.shard_urls() == [f"{data}/00000.tar", f"{data}/00001.tar", f"{data}/00002.tar.gz"]
        with pytest.raises(wdstream.SourceError, match="allowed_prefixes"):
            load_manifest(str(out))  # the manifest cannot grant itself access
        exact_epoch_checks(str(out), {}, allowed=(f"{data}/",))
    finally:
        os.chmod(data, stat.S_IRWXU)


@pytest.mark.s3
@pytest.mark.slow
def test_index_on_s3_read_only_bucket_with_out_elsewhere(s3):
    """The data in its own bucket, never written; manifest and indexes in another."""
    fs, opts = s3["fs"], s3["storage_options"]
    fs.mkdir("laion")
    for name, data in shard_files().items():
        fs.pipe_file(f"laion/part/{name}", data)
    before = sorted(fs.find("laion"))
    report = index_dataset(
        "s3://laion/part", "s3://test/laion-index", storage_options=opts, workers=3, quiet=True
    )
    assert report.outside and report.prefixes == ["s3://laion/part/"]
    fs.invalidate_cache()
    assert sorted(fs.find("laion")) == before
    m = load_manifest("s3://test/laion-index", opts, allowed_prefixes=report.prefixes)
    assert m.samples == 48 and [s.whole for s in m.shards] == [False, False, True]
    assert m.shard_urls()[0] == "s3://laion/part/00000.tar"
    exact_epoch_checks("s3://test/laion-index", opts, allowed=tuple(report.prefixes))
    again = index_dataset(
        "s3://laion/part", "s3://test/laion-index", storage_options=opts, quiet=True
    )
    assert (again.indexed, again.reused) == (0, 3)


@pytest.mark.s3
def test_index_in_place_on_s3(s3):
    fs, opts = s3["fs"], s3["storage_options"]
    for name, data in shard_files().items():
        fs.pipe_file(f"test/ds/{name}", data)
    report = index_dataset("s3://test/ds/{00000..00001}.tar", storage_options=opts, quiet=True)
    assert not report.outside
    m = load_manifest("s3://test/ds", opts)
    assert [s.url for s in m.shards] == ["00000.tar", "00001.tar"]
    config = small_config(storage_options=opts, batch_size=4)
    keys = [k for b in wdstream.make_loader("s3://test/ds", config) for k in b["keys"]]
    assert sorted(keys) == all_keys()[:32]


@pytest.mark.ray
@pytest.mark.slow
def test_index_on_ray_gives_the_same_manifest(tmp_path):
    """One Ray task per shard (a local Ray with 2 CPUs); the same manifest as threads."""
    ray = pytest.importorskip("ray")
    a, b = tmp_path / "a", tmp_path / "b"
    write_local(a, shard_files())
    write_local(b, shard_files())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        assert main(["index", str(a), "--executor", "ray", "--workers", "2", "--quiet"]) == 0
    finally:
        ray.shutdown()
    assert main(["index", str(b), "--quiet"]) == 0
    ma, mb = load_manifest(str(a)), load_manifest(str(b))
    assert [s.__dict__ for s in ma.shards] == [s.__dict__ for s in mb.shards]


def test_index_tasks_shed_credentials_for_cluster_executors():
    from wdstream.cli.index import _Task

    task = _Task(
        url="s3://b/0.tar",
        index_url="s3://o/0.idx.json",
        manifest_url="s3://b/0.tar",
        index="0.idx.json",
        storage_options={"key": "AK", "secret": "S", "client_kwargs": {"endpoint_url": "x"}},
    )
    public, secrets = task.without_secrets()
    assert public.storage_options == {"client_kwargs": {"endpoint_url": "x"}}
    assert "AK" not in repr(public) and public.with_secrets(secrets) == task


def test_a_converted_output_is_not_reindexed_in_place(tmp_path, caplog):
    from helpers import write_test_shards

    write_test_shards(str(tmp_path / "conv"), [3], audio=False)
    assert main(["index", str(tmp_path / "conv"), "--quiet"]) == 2
    assert "`wdstream convert` wrote" in caplog.text and "--out" in caplog.text
    assert main(["index", str(tmp_path / "conv"), "--out", str(tmp_path / "o"), "--quiet"]) == 0


def test_shards_in_several_folders_keep_distinct_index_names(tmp_path, capsys):
    write_local(tmp_path / "x" / "a", {"00000.tar": img2dataset_tar(0, 3)})
    write_local(tmp_path / "y" / "a", {"00000.tar": img2dataset_tar(1, 2)})
    out = tmp_path / "idx"
    assert (
        main(
            [
                "index",
                str(tmp_path / "x" / "a" / "00000.tar"),
                str(tmp_path / "y" / "a" / "00000.tar"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert f"allowed_prefixes: [{tmp_path}/]" in capsys.readouterr().out
    m = load_manifest(str(out), allowed_prefixes=[f"{tmp_path}/"])
    assert [s.index for s in m.shards] == ["x/a/00000.idx", "y/a/00000.idx"]
    config = small_config(batch_size=1, allowed_prefixes=[f"{tmp_path}/"])
    keys = [k for b in wdstream.make_loader(str(out), config) for k in b["keys"]]
    assert sorted(keys) == ["000000000", "000000001", "000000002", "000010000", "000010001"]


# -- index names never collide; verify checks each index against its shard --------------------
def test_shards_with_one_stem_get_distinct_indexes(tmp_path):
    """``a.tar`` and ``a.tar.gz`` (and ``A.tar`` on a disk that ignores case) used to share
    one index: the reader then read one of them with the other's offsets."""
    data = tmp_path / "d"
    write_local(
        data,
        {
            "a.tar": img2dataset_tar(0, 5),
            "a.tar.gz": gzip.compress(img2dataset_tar(1, 3), mtime=0),
            "A.tar": img2dataset_tar(2, 4),
        },
    )
    report = index_dataset(str(data), quiet=True)
    names = [s.index for s in report.manifest.shards]
    assert len({n.casefold() for n in names}) == 3, names
    assert all(n.endswith(".idx") and n[:2] in ("a-", "A-") for n in names), names
    keys = [
        k for b in wdstream.make_loader(str(data), small_config(batch_size=1)) for k in b["keys"]
    ]
    assert sorted(keys) == sorted(all_keys((5,)) + all_keys((0, 3)) + all_keys((0, 0, 4)))
    assert main(["verify", str(data)]) == 0


def test_verify_fails_an_index_that_is_not_its_shards(tmp_path, capsys):
    data = tmp_path / "d"
    write_local(data, {"00000.tar": img2dataset_tar(0, 6), "00001.tar": img2dataset_tar(1, 6)})
    m = index_dataset(str(data), quiet=True).manifest
    assert main(["verify", str(data)]) == 0
    capsys.readouterr()
    # the other shard's index: same count, other offsets and keys
    (data / m.shards[1].index).write_bytes((data / m.shards[0].index).read_bytes())
    assert main(["verify", str(data)]) == 1
    err = capsys.readouterr().err
    assert "FAIL 00001.tar: index 00001.idx" in err and "not this shard's index" in err
    assert "00000.tar" not in err


@pytest.mark.s3
def test_shards_in_two_buckets_with_one_path_keep_their_own_indexes(s3):
    """``s3://test/other/y.tar`` and ``s3://other/y.tar`` were both given ``other/y.idx``:
    index and verify passed, and reading delivered 20 of 40 samples."""
    fs, opts = s3["fs"], s3["storage_options"]
    fs.mkdir("other")
    fs.pipe_file("test/other/y.tar", img2dataset_tar(0, 20))
    fs.pipe_file("other/y.tar", img2dataset_tar(1, 20))
    urls = ["s3://test/other/y.tar", "s3://other/y.tar"]
    report = index_dataset(urls, "s3://test/idx", storage_options=opts, quiet=True)
    names = [s.index for s in report.manifest.shards]
    assert len(set(names)) == 2 and all(n.startswith("other/y-") for n in names), names
    allowed = ["s3://test/other/", "s3://other/"]
    config = small_config(storage_options=opts, batch_size=4, allowed_prefixes=allowed)
    keys = [k for b in wdstream.make_loader("s3://test/idx", config) for k in b["keys"]]
    assert sorted(keys) == sorted(all_keys((20,)) + all_keys((0, 20)))
    endpoint = ["--storage-option", f"endpoint_url={s3['endpoint']}"]
    prefixes = [x for p in allowed for x in ("--allowed-prefix", p)]
    assert main(["verify", "s3://test/idx", *endpoint, *prefixes]) == 0


# -- member names that are not UTF-8 ----------------------------------------------------------
def test_member_names_that_are_not_utf8_are_indexed_and_read(tmp_path, capsys):
    """A key's hash is that of its bytes as the tar holds them (``surrogateescape``), when it
    is indexed and when the reader checks it: ``key.encode()`` raised UnicodeEncodeError."""
    buf = io.BytesIO()
    keys = ["k\udcff\udcfe0", "ok1", "\udce9t\udce92", "ok3"]
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for k in keys:
            info = tarfile.TarInfo(f"{k}.txt")
            data = b"caption " + k.encode("utf-8", "surrogateescape")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    write_local(tmp_path / "d", {"00000.tar": buf.getvalue()})
    assert main(["index", str(tmp_path / "d"), "--quiet"]) == 0
    assert "4 samples in 1 shards" in capsys.readouterr().out
    config = small_config(batch_size=1, shuffle=False)
    got = [k for b in wdstream.make_loader(str(tmp_path / "d"), config) for k in b["keys"]]
    assert got == keys
    # a slot that starts mid-shard checks each key against its hash
    got = [
        k
        for b in wdstream.make_loader(str(tmp_path / "d"), config, rank=1, world=2)
        for k in b["keys"]
    ]
    assert got == keys[2:]
    assert main(["verify", str(tmp_path / "d")]) == 0


# -- what is not a shard, and names a manifest cannot hold -------------------------------------
INDEX_CHILD = r"""
import sys
from wdstream.cli import main
sys.exit(main(["index", *sys.argv[1:], "--quiet"]))
"""


def test_devices_fifos_and_folders_named_tar_are_skipped_not_read(tmp_path):
    """A symlink to /dev/zero named z.tar made ``index`` read forever (and a FIFO block
    forever); only regular files are indexed, and never past their listed size."""
    from bounded import run_child

    data = tmp_path / "d"
    write_local(data, {"00000.tar": img2dataset_tar(0, 4), "00001.tar": img2dataset_tar(1, 3)})
    os.symlink("/dev/zero", data / "z.tar")
    os.mkfifo(data / "f.tar")
    os.symlink(data / "00001.tar", data / "link.tar")  # a link to a shard is that shard
    out = run_child(INDEX_CHILD, str(data), timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 file(s) not indexed" in out.stdout
    assert "z.tar: not a regular file (a character device)" in out.stderr
    assert "f.tar: not a regular file (a FIFO)" in out.stderr
    m = load_manifest(str(data))
    assert [s.url for s in m.shards] == ["00000.tar", "00001.tar", "link.tar"]
    assert m.skipped == {"not a regular file": 2}
    keys = [
        k for b in wdstream.make_loader(str(data), small_config(batch_size=1)) for k in b["keys"]
    ]
    assert sorted(keys) == sorted(all_keys((4, 3)) + all_keys((0, 3)))


@pytest.mark.parametrize(
    "name, why",
    [
        (b"a\nb.tar", "a newline"),
        (b"\xff\xfe.tar", "not UTF-8"),
        (b"a::b.tar", "'::' (fsspec URL chaining)"),
    ],
)
def test_a_name_a_manifest_cannot_hold_is_skipped_and_the_rest_stays_readable(
    tmp_path, capsys, caplog, name, why
):
    """A shard named with a newline used to be indexed (exit 0), and then ``make_loader``
    refused the whole dataset (the compact manifest joins names with newlines); a name that
    is not UTF-8 or holds '::' broke it the same way."""
    data = tmp_path / "d"
    write_local(data, {"00000.tar": img2dataset_tar(0, 4), "00001.tar": img2dataset_tar(1, 3)})
    with open(os.path.join(os.fsencode(str(data)), name), "wb") as f:
        f.write(img2dataset_tar(2, 5))
    assert main(["index", str(data), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "7 samples in 2 shards" in out and "1 file(s) not indexed" in out
    assert f"name a manifest cannot hold: {why}" in caplog.text
    m = load_manifest(str(data))
    assert m.skipped == {"name a manifest cannot hold": 1}
    assert m.source["problems"][0]["problems"] == [
        f"not indexed: name a manifest cannot hold: {why}"
    ]
    keys = [
        k for b in wdstream.make_loader(str(data), small_config(batch_size=1)) for k in b["keys"]
    ]
    assert sorted(keys) == all_keys((4, 3))
    assert main(["upgrade", str(data)]) == 0  # the compact form holds it too
    keys = [
        k for b in wdstream.make_loader(str(data), small_config(batch_size=1)) for k in b["keys"]
    ]
    assert sorted(keys) == all_keys((4, 3))
