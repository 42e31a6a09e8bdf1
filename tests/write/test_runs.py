"""Runs of partitions (wdstream/write/runs.py): a worker converts partitions in turn, each one's
commit beside the next one's rows. Which partitions a run holds; a failure in a run stops it
with the failing partition's own error, the partitions before it keep their records, and a
re-run finishes with the bytes of an uninterrupted run."""

from __future__ import annotations

import os

import pytest

from wdstream import storage
from wdstream.demo.data import build_parquet_dataset
from wdstream.errors import StorageError, TooManyErrors
from wdstream.write.convert import convert
from wdstream.write.runs import MAX_RUN, PartitionRun, make_runs, run_length


def test_runs_hold_consecutive_partitions_once_each():
    for n in range(0, 40):
        for workers in (1, 2, 3, 16):
            length = run_length(n, workers)
            assert 1 <= length <= MAX_RUN
            runs = list(make_runs(iter(range(n)), length))
            assert [t for run in runs for t in run.tasks] == list(range(n))
            assert all(len(run.tasks) == length for run in runs[:-1])
            if n and n <= workers * MAX_RUN:  # one run a worker when it fits
                assert len(runs) <= workers


def test_a_runs_secrets_travel_apart():
    from wdstream.write.partition import ConvertTask

    opts = {"key": "K", "secret": "S", "client_kwargs": {"endpoint_url": "http://x"}}
    tasks = tuple(
        ConvertTask(
            spec=None,
            columns=None,
            partition=p,
            n_partitions=2,
            output_url="s3://b/o",
            max_samples_per_shard=1,
            max_shard_bytes=1,
            storage_options=opts,
        )
        for p in range(2)
    )
    shipped, secrets = PartitionRun(tasks).without_secrets()
    assert secrets == {"key": "K", "secret": "S"}
    assert all(
        t.storage_options == {"client_kwargs": {"endpoint_url": "http://x"}} for t in shipped.tasks
    )
    assert "S" not in repr(shipped).replace("'S", "")  # storage options are out of repr
    assert [t.storage_options for t in shipped.with_secrets(secrets).tasks] == [opts, opts]


def _records(out):
    folder = os.path.join(out, "_partitions")
    return sorted(n for n in os.listdir(folder) if n.startswith("part-"))


def _shards(m):
    return [(s.url, s.samples, s.sha256) for s in m.shards]


def test_a_failed_commit_stops_the_run_naming_its_partition(
    small_hf_dataset, tmp_path, monkeypatch
):
    """Partition 1's record cannot be written (while partition 2 writes its rows): the run
    stops with partition 1's error; partition 0 keeps its record, no later one has one."""
    real = storage.write_bytes

    def failing(url, *args, **kwargs):
        if url.endswith("part-00001.json"):
            raise StorageError(f"cannot write {url}: injected")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(storage, "write_bytes", failing)
    out = str(tmp_path / "out")
    with pytest.raises(StorageError, match=r"^partition 1 of 4: cannot write .*injected"):
        convert(small_hf_dataset, out, workers=1, max_samples_per_shard=5, quiet=True)
    assert _records(out) == ["part-00000.json"]
    monkeypatch.setattr(storage, "write_bytes", real)
    again = convert(small_hf_dataset, out, workers=1, max_samples_per_shard=5, quiet=True)
    clean = convert(
        small_hf_dataset, str(tmp_path / "clean"), workers=1, max_samples_per_shard=5, quiet=True
    )
    assert _shards(again) == _shards(clean)
    assert _records(out) == [f"part-{p:05d}.json" for p in range(4)]


def test_a_bad_row_stops_the_run_and_the_partition_before_keeps_its_record(tmp_path):
    """Partition 2 meets a bad row (skip_bad_rows off) while partition 1 commits: the error
    names partition 2, partition 1's commit finishes and its record stays."""
    source = build_parquet_dataset(str(tmp_path / "src"), 48, n_files=4, corrupt_image_rows=(30,))
    out = str(tmp_path / "out")
    with pytest.raises(TooManyErrors, match=r"^partition 2 of 4: "):
        convert(source, out, workers=1, skip_bad_rows=False, max_samples_per_shard=5, quiet=True)
    assert _records(out) == ["part-00000.json", "part-00001.json"]


class _Written:
    def __init__(self, task):
        self.task, self.aborted = task, False

    def abort(self):
        self.aborted = True


def test_an_earlier_commit_failure_stops_the_rows_of_the_next_partition(monkeypatch):
    """Partition 0's commit fails while partition 1 writes rows: the next check stops
    partition 1 (its uploads aborted), the run raises partition 0's own error, and partition
    2 never starts."""
    import threading

    from wdstream.write import runs

    started, written = [], {}
    failed = threading.Event()

    def write_partition(task, progress=None, check=None):
        started.append(task)
        written[task] = w = _Written(task)
        if task == 1:
            failed.wait()
            while True:  # rows go on until the check raises
                try:
                    check()
                except BaseException:
                    w.abort()  # as write_partition aborts its writer
                    raise
                threading.Event().wait(0.01)
        return w

    cause = OSError("the store's own error")
    error = StorageError("partition 0 of 3: cannot write: injected")
    error.__cause__ = cause

    def finish_partition(w):
        if w.task == 0:
            failed.set()
            raise error
        return w.task

    monkeypatch.setattr(runs, "write_partition", write_partition)
    monkeypatch.setattr(runs, "finish_partition", finish_partition)
    with pytest.raises(StorageError) as e:
        runs.convert_run(PartitionRun((0, 1, 2)))
    assert e.value is error and e.value.__cause__ is cause
    assert started == [0, 1] and written[1].aborted
