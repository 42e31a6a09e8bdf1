"""Two ``wdstream convert NEW OUTPUT --append`` of different sources started at the same moment,
round after round (issue 22, item 1): on S3 through the test proxy with 0.15 s of latency per
request (the window between reading the segments and taking one is several round trips), and
on a local folder. Every round ends in one of two ways: both appends exit 0 and both sources
are in the manifest, or one exits 0 and the other exits 2 with the one-line error that another
append holds the segment (and what to do). Never both 0 with a source missing from the
manifest, which is what a plain write of the job file gave.

The segment is taken with the store's create-if-absent request (S3 ``If-None-Match: *``,
``O_EXCL``-like ``link`` locally): ``tests/test_storage.py`` checks that primitive, and
``tests/write/test_append.py`` the same race made deterministic."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from killing import check_complete

from wdstream.demo.data import build_parquet_dataset
from wdstream.format.manifest import load_manifest
from wdstream.write.convert import convert

pytestmark = [pytest.mark.slow]

log = logging.getLogger(__name__)

ROUNDS = 3
BASE, ROWS = 12, 10  # rows of the first conversion, and of each appended source


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The base dataset and two others to append, alike in shape (2 parquet files each), so
    both appends reach their claim at about the same time."""
    root = tmp_path_factory.mktemp("race_sources")
    return [
        build_parquet_dataset(str(root / name), rows, n_files=2, seed=seed)
        for name, rows, seed in (("base", BASE, 0), ("left", ROWS, 1), ("right", ROWS, 2))
    ]


def _cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wdstream", "convert", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def _race(url: str, sources: list[str], options: list[str]) -> list[tuple[int, str]]:
    """Start both appends at once; ``[(exit status, stderr)]`` of each."""
    common = ["--append", "--quiet", "--workers", "1", "--max-samples-per-shard", "4", *options]
    procs = [_cli([src, url, *common]) for src in sources[1:]]
    out = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        out.append((p.returncode, err))
    return out


def _check_round(url: str, sources: list[str], results, opts) -> str:
    """Both in the manifest, or exactly one refused with the clear error: the outcome."""
    codes = [rc for rc, _ in results]
    assert all(rc in (0, 2) for rc in codes), results
    m = load_manifest(url, opts)
    names = [s["source"]["name"] for s in m.source["segments"]]
    if codes == [0, 0]:
        assert sorted(names) == sorted(sources), (names, results)
        check_complete(url, BASE + 2 * ROWS, opts)
        return "both landed"
    assert codes.count(2) == 1, results
    winner = sources[1 + codes.index(0)]
    loser_err = results[codes.index(2)][1]
    assert names == [sources[0], winner], (names, results)
    errors = [line for line in loser_err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, loser_err
    assert "unfinished append" in errors[0] and "wait until it has finished" in errors[0]
    assert url.rstrip("/").split("://")[-1] in errors[0]  # names the output
    check_complete(url, BASE + ROWS, opts)
    # lost the create-if-absent itself, or found the other's job file when it read
    return "lost the claim" if "another append took segment" in errors[0] else "found it taken"


@pytest.mark.s3
def test_two_appends_at_once_on_s3_never_lose_a_source(sources, s3_proxy, s3):
    proxy, opts = s3_proxy
    options = [
        "--storage-option",
        f"endpoint_url={proxy.url}",
        "--storage-option",
        "key=testing",
        "--storage-option",
        "secret=testing",
    ]
    outcomes = []
    for r in range(ROUNDS):
        url = f"s3://test/race{r}"
        proxy.ttfb = 0.0
        convert(
            sources[0],
            url,
            max_samples_per_shard=4,
            workers=1,
            quiet=True,
            storage_options=s3["storage_options"],
        )
        proxy.ttfb = 0.15
        results = _race(url, sources, options)
        proxy.ttfb = 0.0
        outcomes.append(_check_round(url, sources, results, s3["storage_options"]))
    log.info("S3 rounds: %s", outcomes)


def test_two_appends_at_once_locally_never_lose_a_source(sources, tmp_path):
    outcomes = []
    for r in range(ROUNDS):
        url = str(tmp_path / f"race{r}")
        convert(sources[0], url, max_samples_per_shard=4, workers=1, quiet=True)
        outcomes.append(_check_round(url, sources, _race(url, sources, []), {}))
    log.info("local rounds: %s", outcomes)
