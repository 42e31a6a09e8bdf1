"""checks.py: what a manifest may claim. Hostile counts are refused before anything is
allocated from them (checked in a child process under RLIMIT_AS, so a blow-up fails the test
instead of the machine); every URL a manifest names is confined to its folder, locally and
on S3; and a fuzz of the version-2 head's field types ends in a load or a SourceError, never
another exception (also in a child under RLIMIT_AS).

This file is also the children's script: ``python test_checks.py memory DIR`` and
``python test_checks.py fuzz EXAMPLES``."""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest

import wdstream
from wdstream import storage
from wdstream.errors import SourceError
from wdstream.format.checks import MAX_SHARD_SAMPLES, confined, run_lengths
from wdstream.format.manifest import (
    Manifest,
    ShardInfo,
    load_manifest,
    load_reader_part,
)
from wdstream.format.shardtable import save_compact
from wdstream.write.sources.synthetic import write_synthetic

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
CONFIG = dict(batch_size=4, num_workers=0, cache_size=8, vision_dim=16, max_audio_length=200)
MARGIN = 2**30  # the address space a child may add to what its imports and a warm-up took


def _limit_memory(margin: int = MARGIN) -> None:
    """Cap this process's address space at what it maps now plus ``margin``."""
    with open("/proc/self/status") as f:
        size = int(f.read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + margin, size + margin))


def _child(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.abspath(__file__), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": ROOT},
    )


def _dataset(url: str, storage_options=None) -> None:
    """Two shards of 3 samples (version 2, binary indexes named by the suffix rule)."""
    write_synthetic(url, 6, seed=1, max_samples_per_shard=3, storage_options=storage_options)


def _edit(url: str, change, storage_options=None, name: str = "manifest.json") -> None:
    """Apply ``change`` to the parsed ``name`` beside ``url``'s manifest and write it back."""
    where = storage.join_url(url, name)
    d = json.loads(storage.read_bytes(where, storage_options))
    change(d)
    storage.write_bytes(where, json.dumps(d).encode(), storage_options)


# -- item 11: counts are checked before anything is allocated ------------------------------------
def _runs(repeats: int):
    def change(d):
        d["shards"]["samples"] = [[3, repeats]]

    return change


def _no_sizes(per_shard: int, total_bytes: int | None = None):
    def change(d):
        del d["shards"]["bytes"]
        d["shards"]["samples"] = [[per_shard, 2]]
        d["samples"] = 2 * per_shard
        if total_bytes is not None:
            d["bytes"] = total_bytes

    return change


def _claims(per_shard: int):
    def change(d):
        d["shards"]["samples"] = [[per_shard, 2]]
        d["samples"] = 2 * per_shard

    return change


def _v1_claims(per_shard: int):
    def change(d):
        for s in d["shards"]:
            s["samples"], s["bytes"] = per_shard, per_shard * 512
        d["samples"] = sum(s["samples"] for s in d["shards"])
        d["bytes"] = sum(s["bytes"] for s in d["shards"])

    return change


#: name -> (version 2 edit, or a version-1 edit with "v1:"; the field the error names)
HOSTILE = {
    "runs-5e8": (_runs(5 * 10**8), "shards.samples"),
    "runs-1e12": (_runs(10**12), "shards.samples"),
    "no-sizes-3e8": (_no_sizes(150_000_000, 300_000_000 * 512), "shards[0].samples"),
    "claims-2e55": (_claims(2**54), "shards[0].samples"),
    "v1-3e8": (_v1_claims(150_000_000), "shards[0].samples"),
    # within the per-shard bound, but more than the manifest's total bytes can hold
    "no-sizes-past-total": (_no_sizes(MAX_SHARD_SAMPLES), "samples"),
}


def _write_hostile(folder: str) -> None:
    _dataset(f"{folder}/good")
    for name, (change, _) in HOSTILE.items():
        url = f"{folder}/{name}"
        _dataset(url)
        if name.startswith("v1-"):
            d = load_manifest(url).to_dict()
            change(d)
            storage.write_bytes(f"{url}/manifest.json", json.dumps(d).encode())
        else:
            _edit(url, change)


def _memory_child(folder: str) -> None:
    """Load every manifest of ``folder`` three ways under RLIMIT_AS; print one line each."""
    import torch  # noqa: F401 - what make_loader imports, mapped before the limit

    config = wdstream.Config(**CONFIG)
    next(iter(wdstream.make_loader(f"{folder}/good", config)))  # the lazy imports too
    _limit_memory()
    entries = {
        "load_manifest": load_manifest,
        "load_reader_part": load_reader_part,
        "make_loader": lambda url: next(iter(wdstream.make_loader(url, config))),
    }
    for name in ["good", *HOSTILE]:
        url = f"{folder}/{name}"
        for entry, fn in entries.items():
            try:
                fn(url)
                got = "ACCEPTED"
            except SourceError as exc:
                named = f"{url}/manifest.json" in str(exc)
                got = f"REFUSED {exc.key} {'named' if named else 'unnamed'}"
            except MemoryError:
                got = "MEMORY"
            except Exception as exc:  # noqa: BLE001 - reported to the test, which fails
                got = f"OTHER {type(exc).__name__}"
            print(name, entry, got, flush=True)


def test_claimed_counts_are_refused_before_they_cost_memory(tmp_path):
    """Each hostile manifest is a few KB: a SourceError naming the manifest and the field
    from load_manifest, load_reader_part and make_loader, within 1 GiB of address space over
    what the child mapped after its imports (today: 4.3 GB, 7 TB, or accepted and >5 GB at
    the first read)."""
    _write_hostile(str(tmp_path))
    out = _child("memory", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    entries = ("load_manifest", "load_reader_part", "make_loader")
    want = [f"good {e} ACCEPTED" for e in entries] + [
        f"{name} {e} REFUSED {field} named" for name, (_, field) in HOSTILE.items() for e in entries
    ]
    assert lines == want, out.stderr[-3000:]


def test_a_run_length_column_is_checked_before_it_is_expanded():
    with pytest.raises(SourceError, match="gives more than 4 sample counts for 4 shards"):
        run_lengths([[1, 2], [1, 10**18]], 4, "shards.samples", "m", most=9, what="sample counts")
    with pytest.raises(SourceError, match="gives 3 values for 4 shards"):
        run_lengths([[1, 3]], 4, "f", "m", most=9)
    with pytest.raises(SourceError, match=r"'s\[2\]' is 10, more than a shard may hold"):
        run_lengths([[1, 2], [10, 2]], 4, "f", "m", most=9, each="s[{i}]")
    for bad in ([[1, -1], [1, 5]], [[1, True]], [[1.0, 4]], [[1, 2, 3]], {"a": 4}, [[1, "4"]]):
        with pytest.raises(SourceError, match="'f'"):
            run_lengths(bad, 4, "f", "m", most=9)
    assert run_lengths([[2, 3], [0, 0], [5, 1]], 4, "f", "m", most=9).tolist() == [2, 2, 2, 5]


SHARDS = [
    ShardInfo(url=f"shard-{i}.tar", samples=3, bytes=10240, sha256=f"{i:064x}", index=None)
    for i in range(2)
]


def _v2(tmp_path, change=None, shards=SHARDS) -> str:
    save_compact(Manifest(shards=list(shards)), str(tmp_path))
    if change:
        _edit(str(tmp_path), change)
    return str(tmp_path)


def test_sizes_bound_counts_without_overflow(tmp_path):
    """Counts within the per-shard bound must still fit in their shard's bytes, computed
    without overflow (``samples * 512`` of 2**55 wrapped around in int64), and gzip's ratio
    applies to compressed shards only."""

    def claims(n):
        return _claims(n)

    url = _v2(tmp_path / "a", claims(21))
    with pytest.raises(SourceError, match=r"'shards\[0\].samples' is 21, more than its 10240"):
        load_reader_part(url)
    gz = [ShardInfo(url=f"s{i}.tar.gz", samples=3, bytes=10240, sha256="0") for i in range(2)]
    assert len(load_reader_part(_v2(tmp_path / "b", claims(20640), gz))[1]) == 2
    with pytest.raises(SourceError, match=r"'shards\[0\].samples' is 20641"):
        load_reader_part(_v2(tmp_path / "c", claims(20641), gz))

    def huge_sizes(d):
        d["shards"]["bytes"] = [2**62, 10240]
        d["bytes"] = 2**62 + 10240

    with pytest.raises(SourceError, match=r"'shards\[0\].bytes' is 4611686018427387904"):
        load_reader_part(_v2(tmp_path / "d", huge_sizes))


def test_without_sizes_the_total_bytes_bound_the_samples(tmp_path):
    """A version-2 table without per-shard sizes (still read) is bounded by the per-shard
    limit and by the manifest's total bytes."""
    url = _v2(tmp_path / "a", _no_sizes(20, 2 * 10240))
    _, table = load_reader_part(url)
    assert table.bytes is None and table.samples.tolist() == [20, 20]
    with pytest.raises(SourceError, match="'samples' is 42, more than the manifest's 20480"):
        load_reader_part(_v2(tmp_path / "b", _no_sizes(21, 2 * 10240)))


def _set(path: tuple, value):
    def change(d):
        target = d
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    "path, value, field",
    [
        (("shards", "names"), 123, "shards.names"),
        (("shards", "index"), 7, "shards.index"),
        (("shards", "index"), {"suffix": 7}, "shards.index.suffix"),
        (("shards", "index"), {"suffix": ".idx", "names": "a\nb"}, "shards.index"),
        (("shards", "index"), {"names": "a"}, "shards.index.names"),
        (("shards", "count"), "2", "shards.count"),
        (("shards", "count"), 3, "shards.names"),
        (("shards", "names"), "\nshard-1.tar", "shards.names"),
        (("shards", "samples"), [[3, "2"]], "shards.samples"),
        (("shards", "samples"), 6, "shards.samples"),
        (("shards", "bytes"), [10240, 2.5], "shards[1].bytes"),
        (("shards", "bytes"), "x", "shards.bytes"),
        (("shards", "bytes"), [10240], "shards.bytes"),
        (("samples",), 6.0, "samples"),
        (("bytes",), 1, "bytes"),
        (("details",), 5, "details"),
        (("details",), "s3://other/d.json", "details"),
        (("source",), [1], "source"),
        (("version",), 3, "version"),
        (("shards",), [], "shards"),
    ],
)
def test_malformed_version_2_fields_are_named(tmp_path, path, value, field):
    """Item 14: a wrong type anywhere in the reader part is a SourceError naming the field
    (``names: 123`` and an int ``index`` were a raw AttributeError)."""
    url = _v2(tmp_path, _set(path, value))
    for load in (load_reader_part, load_manifest):
        with pytest.raises(SourceError) as err:
            load(url)
        assert err.value.key == field, err.value
        assert f"{url}/manifest.json is not a valid wdstream manifest" in str(err.value)


def test_a_malformed_details_part_is_named(tmp_path):
    url = _v2(tmp_path)
    _edit(url, _set(("sha256",), ["a"]), name="manifest.details.json")
    with pytest.raises(SourceError, match="manifest.details.json is not a valid.*'sha256'"):
        load_manifest(url)
    _edit(url, _set(("sha256",), ["a", 5]), name="manifest.details.json")
    with pytest.raises(SourceError, match=r"'shards\[1\].sha256' is 5, not a string"):
        load_manifest(url)
    assert len(load_reader_part(url)[1]) == 2  # the reader never reads that part


# -- item 12: every URL a manifest names is confined ---------------------------------------------
def _suffix(value):
    return _set(("shards", "index"), {"suffix": value})


def _index_names(value):
    return _set(("shards", "index"), {"names": value})


def _names(value):
    return _set(("shards", "names"), value)


#: (edit, the field named, the secret's name relative to the dataset's parent folder)
ESCAPES = {
    "index suffix": (_suffix("/../../OUTSIDE_secret.idx"), "shards[0].index"),
    "index suffix after '?'": (_suffix(".idx?/../../../OUTSIDE_secret.idx"), "shards[0].index"),
    "index names": (_index_names("../OUTSIDE_secret.idx\nx.idx"), "shards[0].index"),
    "shard names": (
        _names("shard-00000-00000.tar\n../OUTSIDE_secret.tar"),
        "shards[1].url",
    ),
    "shard name after '?'": (
        _names("shard-00000-00000.tar\nx.tar?/../../OUTSIDE_secret.tar"),
        "shards[1].url",
    ),
    "details": (_set(("details",), "../OUTSIDE_secret.json"), "details"),
}


def _refused_everywhere(url: str, field: str, storage_options=None) -> None:
    for load in (load_reader_part, load_manifest):
        with pytest.raises(SourceError) as err:
            load(url, storage_options)
        assert err.value.key == field, err.value
    config = wdstream.Config(**CONFIG, storage_options=storage_options or {})
    with pytest.raises(SourceError) as err:
        next(iter(wdstream.make_loader(url, config)))
    assert err.value.key == field, err.value


@pytest.mark.parametrize("case", list(ESCAPES))
def test_every_url_from_a_manifest_is_confined_locally(tmp_path, case):
    change, field = ESCAPES[case]
    for name in ("OUTSIDE_secret.idx", "OUTSIDE_secret.tar", "OUTSIDE_secret.json"):
        (tmp_path / name).write_bytes(b"secret")
    url = str(tmp_path / "ds")
    _dataset(url)
    _edit(url, change)
    _refused_everywhere(url, field)


@pytest.mark.s3
@pytest.mark.parametrize("case", list(ESCAPES))
def test_every_url_from_a_manifest_is_confined_on_s3(s3_proxy, case):
    """On S3 the escapes became GETs of other keys (``GET /test/OUTSIDE_secret.idx``); none
    is sent now."""
    proxy, opts = s3_proxy
    change, field = ESCAPES[case]
    for name in ("OUTSIDE_secret.idx", "OUTSIDE_secret.tar", "OUTSIDE_secret.json"):
        storage.write_bytes(f"s3://test/{name}", b"secret", opts)
    url = "s3://test/ds"
    _dataset(url, opts)
    _edit(url, change, opts)
    proxy.reset_counters()
    _refused_everywhere(url, field, opts)
    sent = list(proxy.get_bytes) + [path for path, _ in proxy.ranges]
    assert not [p for p in sent if "secret" in p], sent


def test_an_allowed_prefix_admits_indexes_named_by_the_suffix_rule(tmp_path):
    """Confinement of the suffix rule is the same as for names: inside the folder, or under a
    prefix the user allowed."""
    url = str(tmp_path / "ds")
    _dataset(url)
    _edit(url, _suffix("/../../idx/x.idx"))
    with pytest.raises(SourceError, match=r"'shards\[0\].index'.*'\.\.'"):
        load_reader_part(url, allowed_prefixes=[str(tmp_path)])
    assert confined("a/b.idx", url, ()) is None
    assert confined(f"{tmp_path}/idx/x.idx", url, [f"{tmp_path}/idx"]) is None
    assert "outside" in confined(f"{tmp_path}/idx/x.idx", url, [])
    assert "'..'" in confined("%2e%2e/x.idx", url, ())


# -- item 14: a fuzz of the version-2 head -------------------------------------------------------
def _fuzz_child(examples: int) -> None:
    """Every field of a version-2 manifest (reader part and details part) replaced by a JSON
    value of any type, or removed: loading it gives a table or a SourceError, never another
    exception, in bounded memory; a table that loads names only URLs inside its folder."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    base = "memory://fuzz"
    shards = [
        ShardInfo(
            url=f"shard-{i}.tar",
            samples=3,
            bytes=10240,
            sha256=f"{i:064x}",
            index=f"shard-{i}.idx",
            partition=0,
            first_key="a",
            last_key="b",
        )
        for i in range(3)
    ]
    save_compact(Manifest(shards=shards, source={"name": "x"}, skipped={"bad": 1}), base)
    head = json.loads(storage.read_bytes(f"{base}/manifest.json"))
    details = json.loads(storage.read_bytes(f"{base}/manifest.details.json"))
    listed = copy.deepcopy(head)
    listed["shards"]["index"] = {"names": "shard-0.idx\n\nsub/shard-2.idx"}
    head_paths = (
        [
            (k,)
            for k in (
                "format",
                "version",
                "samples",
                "bytes",
                "source",
                "skipped",
                "fields",
                "options",
                "details",
                "shards",
            )
        ]
        + [("shards", k) for k in ("count", "names", "samples", "bytes", "index")]
        + [
            ("shards", "samples", 0),
            ("shards", "samples", 0, 0),
            ("shards", "samples", 0, 1),
            ("shards", "bytes", 1),
            ("shards", "index", "suffix"),
            ("shards", "index", "names"),
            ("skipped", "bad"),
        ]
    )
    detail_paths = [("count",), ("sha256",), ("bytes",), ("sha256", 1), ("partition", 2)]
    special = st.sampled_from(
        [-1, 0, 3, 2**31, 2**55, 2**63, 2**64, 10**12, "", "\n", "..", "/etc/passwd"]
        + ["s3://other/x", "a\nb", "\ud800", ".idx/../../x", "x.tar?/../../y"]
    )
    scalars = (
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | special
    )
    values = st.recursive(
        scalars,
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
        max_leaves=8,
    )
    removed = object()

    def replaced(doc, path, value):
        doc = copy.deepcopy(doc)
        target = doc
        for key in path[:-1]:
            if isinstance(target, dict) and key in target:
                target = target[key]
            elif isinstance(target, list) and isinstance(key, int) and key < len(target):
                target = target[key]
            else:
                return doc
        key = path[-1]
        if value is removed:
            if isinstance(target, dict):
                target.pop(key, None)
        elif isinstance(target, dict) or (isinstance(target, list) and key < len(target)):
            target[key] = value
        return doc

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        first=st.sampled_from([head, listed]),
        part=st.sampled_from(["head", "details"]),
        head_path=st.sampled_from(head_paths),
        detail_path=st.sampled_from(detail_paths),
        value=values | st.just(removed),
    )
    def loads_or_refuses(first, part, head_path, detail_path, value):
        doc, det = first, details
        if part == "head":
            doc = replaced(first, head_path, value)
        else:
            det = replaced(details, detail_path, value)
        storage.write_bytes(f"{base}/manifest.json", json.dumps(doc).encode())
        storage.write_bytes(f"{base}/manifest.details.json", json.dumps(det).encode())
        try:
            _, table = load_reader_part(base)
        except SourceError:
            pass
        else:
            for i in range(len(table)):
                assert table.url(i).startswith(base + "/"), table.url(i)
                assert (table.index_url(i) or base + "/").startswith(base + "/")
            assert isinstance(table.samples, np.ndarray) and len(table.samples) == len(table)
        try:
            m = load_manifest(base)
        except SourceError:
            pass
        else:
            assert all(u.startswith(base + "/") for u in m.shard_urls())

    _limit_memory()
    loads_or_refuses()
    print("OK", examples)


def test_a_fuzzed_version_2_head_loads_or_is_a_source_error():
    out = _child("fuzz", "400")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert out.stdout.split() == ["OK", "400"]


if __name__ == "__main__":
    if sys.argv[1] == "memory":
        _memory_child(sys.argv[2])
    elif sys.argv[1] == "fuzz":
        _fuzz_child(int(sys.argv[2]))
