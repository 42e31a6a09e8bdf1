"""A task carries its own data files (issue 16): workers never resolve the whole source again.

``datasets`` resolves every data file of a source when it opens it (~0.4 ms a file: 40 s at
100k files, in every worker). For parquet/arrow sources the driver resolves once and each task
opens only its own group of files. These tests check that this gives exactly the rows the whole
source sharded would give, that a conversion's workers open only their files, and that sources
whose shards are not plain files still take the old path.
"""

from __future__ import annotations

import glob
import hashlib
import os

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wdstream import storage
from wdstream.config import Config
from wdstream.rows.source import HFSource, open_source
from wdstream.write import partition as partition_mod
from wdstream.write.convert import convert
from wdstream.write.plan import plan_job
from wdstream.write.sources.files import file_group, open_files, source_files


def _folder(tmp_path, sizes: list[int]) -> str:
    """Parquet files of ``sizes`` rows each; the later files' ``note`` column is all null in
    the first file, so a file opened alone would infer another type than the whole source."""
    folder = tmp_path / "src"
    folder.mkdir()
    row = 0
    for i, n in enumerate(sizes):
        notes = [None] * n if i == 0 else [f"note {row + j}" for j in range(n)]
        pq.write_table(
            pa.table(
                {
                    "text": [f"row {row + j}" for j in range(n)],
                    "id": list(range(row, row + n)),
                    "note": pa.array(notes, type=pa.string()),
                }
            ),
            folder / f"part-{i:03d}.parquet",
        )
        row += n
    return str(folder)


@pytest.mark.parametrize("n_files,n_groups", [(7, 7), (7, 3), (5, 1), (10, 4), (3, 3)])
def test_file_group_is_datasets_contiguous_shard(tmp_path, n_files, n_groups):
    folder = _folder(tmp_path, [2] * n_files)
    ds = open_source(HFSource("parquet", data_files=f"{folder}/*.parquet"))
    files = source_files(ds)
    assert files is not None and len(files.paths) == n_files
    for index in range(n_groups):
        mine = [
            r["id"]
            for r in open_files(
                HFSource("parquet"),
                files.__class__(
                    files.builder,
                    files.options,
                    files.features,
                    files.paths[
                        file_group(n_files, n_groups, index).start : file_group(
                            n_files, n_groups, index
                        ).stop
                    ],
                ),
            )
        ]
        theirs = [r["id"] for r in ds.shard(num_shards=n_groups, index=index, contiguous=True)]
        assert mine == theirs and mine


def test_a_group_of_files_is_cast_to_the_whole_sources_features(tmp_path):
    folder = _folder(tmp_path, [3, 2, 4])
    spec = HFSource(folder)
    plan = plan_job(spec, Config())
    assert plan.files is not None and plan.files.builder == "parquet"
    assert len(plan.files.paths) == plan.n_partitions == 3
    ds = open_source(spec)
    for p in range(plan.n_partitions):
        files = plan.files_of(p)
        assert len(files.paths) == 1
        got = open_files(spec, files)
        assert got.features == ds.features
        assert list(got) == list(ds.shard(num_shards=3, index=p, contiguous=True))


def test_a_limit_plan_gives_each_partition_its_group(tmp_path):
    folder = _folder(tmp_path, [150] * 5)
    plan = plan_job(HFSource("parquet", data_files=f"{folder}/*.parquet"), Config(limit=250))
    assert plan.n_partitions == 3 and plan.source_shards == 5
    assert [len(plan.files_of(p).paths) for p in range(3)] == [2, 2, 1]
    assert [os.path.basename(p) for p in plan.files_of(2).paths] == ["part-004.parquet"]


def _sha256s(url: str) -> dict[str, str]:
    return {
        os.path.basename(p): hashlib.sha256(storage.read_bytes(p)).hexdigest()
        for p in glob.glob(f"{url}/shard-*.tar")
    }


@pytest.mark.parametrize("limit", [None, 9])
def test_workers_open_only_their_files_and_write_the_same_bytes(tmp_path, monkeypatch, limit):
    folder = _folder(tmp_path, [4, 3, 5, 2])
    calls: list[tuple] = []
    real = datasets.load_dataset

    def recording(path, *args, **kwargs):
        calls.append((path, kwargs.get("data_files")))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", recording)
    config = Config(workers=1, max_samples_per_shard=2, limit=limit)
    fast = convert(folder, str(tmp_path / "fast"), config=config)
    # the driver opens the folder once; each partition then opens only its own files
    assert calls[0] == (folder, None)
    opened = [[os.path.basename(p) for p in files["train"]] for _, files in calls[1:]]
    names = [f"part-{i:03d}.parquet" for i in range(4)]
    # one partition a file; a --limit trial of 9 rows is one partition over all four files
    assert sorted(opened) == ([[n] for n in names] if limit is None else [names])

    monkeypatch.setattr(partition_mod, "_OPENED", {})
    monkeypatch.setattr("wdstream.write.plan.source_files", lambda ds: None)  # the old path
    slow = convert(folder, str(tmp_path / "slow"), config=config)
    assert fast.samples == slow.samples == (14 if limit is None else 9)
    assert _sha256s(str(tmp_path / "fast")) == _sha256s(str(tmp_path / "slow"))
    assert len(_sha256s(str(tmp_path / "fast"))) == len(fast.shards)


def test_sources_whose_shards_are_not_files_take_the_old_path(tmp_path):
    ds = datasets.Dataset.from_dict({"text": ["a", "b"]}).to_iterable_dataset(num_shards=2)
    assert source_files(ds) is None
    folder = tmp_path / "jsonl"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"text": "x"}\n')
    assert source_files(open_source(HFSource("json", data_files=str(folder / "*.jsonl")))) is None
