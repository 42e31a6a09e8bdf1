"""Conversion on Ray: a real local Ray (``ray.init(num_cpus=2)``, started once for
the module) converts multi-partition local HF datasets, to the loopback S3 (moto over HTTP)
and to a local folder. The output equals the local executor's, byte for byte; a task whose
worker is SIGKILLed is retried and the job still ends complete; a data error names its
partition and is not retried; credentials never travel in a task's arguments."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from wdstream import storage
from wdstream.config import Config
from wdstream.errors import ConfigError, TooManyErrors
from wdstream.format.manifest import load_manifest
from wdstream.format.tario import group_samples, iter_members
from wdstream.write.convert import convert
from wdstream.write.partition import ConvertTask, convert_partition

SECRET_KEY = "AKIARAYTESTKEY000001"
SECRET = "ray-test-secret-do-not-log-7f3a"


def _shards(manifest):
    return [(s.url, s.samples, s.bytes, s.sha256, s.first_key, s.last_key) for s in manifest.shards]


def _keys(url, opts=None):
    keys = []
    for shard in load_manifest(url, opts).shard_urls():
        with storage.open_read(shard, opts) as f:
            keys.extend(s["__key__"] for s in group_samples(iter_members(f)))
    return keys


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """A local Ray with 2 CPUs for the whole module. Started after the S3 server fixture has
    set the AWS variables, so its workers inherit them, as on any local Ray."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """48 rows in 4 parquet files (4 partitions), a corrupt image in partition 2 (row 30)."""
    from wdstream.demo.data import build_parquet_dataset

    return build_parquet_dataset(
        str(tmp_path_factory.mktemp("rayds")), 48, n_files=4, corrupt_image_rows=(30,)
    )


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """The local executor's output (1 worker, inline): what every run must reproduce."""
    out = str(tmp_path_factory.mktemp("ref") / "ds")
    return out, convert(dataset, out, max_samples_per_shard=5, workers=1, quiet=True)


class _Spy:
    """Wraps the Ray task function of executors_ray: records the arguments of every
    ``.remote(...)`` call (what Ray stores and ships), then submits it for real."""

    def __init__(self, remote):
        self.remote_fn = remote
        self.calls: list[tuple] = []

    def options(self, **kw):
        submit = self.remote_fn.options(**kw)
        spy = self

        class _Submit:
            def remote(self, *args):
                spy.calls.append(args)
                return submit.remote(*args)

        return _Submit()


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.s3
def test_ray_to_s3_equals_local_executor_and_keeps_secrets_out_of_task_args(
    ray_local, dataset, reference, s3, monkeypatch
):
    from ray import cloudpickle

    import wdstream.write.executors.ray as er

    convert_mod = sys.modules[
        "wdstream.write.convert"
    ]  # the package exports a function of that name

    spy = _Spy(er._remote_run(ray_local))
    monkeypatch.setattr(er, "_remote_run", lambda ray: spy)
    reported = {"samples": 0, "bytes": 0}

    class Bar(convert_mod._Bar):
        def __call__(self, samples, nbytes):
            reported["samples"] += samples
            reported["bytes"] += nbytes
            super().__call__(samples, nbytes)

    monkeypatch.setattr(convert_mod, "_Bar", Bar)
    # credentials in storage options (moto accepts any key); distinct from the env's
    opts = {"client_kwargs": {"endpoint_url": s3["endpoint"]}, "key": SECRET_KEY, "secret": SECRET}
    url = "s3://test/ray/ds"
    m = convert(
        dataset, url, max_samples_per_shard=5, quiet=True, storage_options=opts, executor="ray"
    )
    ref_out, ref = reference

    assert m.samples == ref.samples == 47 and m.skipped == {"bad_image": 1}
    assert _shards(m) == _shards(ref)  # same names, counts, bytes and sha256s
    keys = _keys(url, opts)
    assert keys == _keys(ref_out) and len(set(keys)) == 47
    # one progress stream for the whole job, over every partition
    assert reported["samples"] == 47 and reported["bytes"] > 0

    # what Ray got for each task: fn, the task without secrets, index, queue, job, a reference
    assert sorted(call[1].partition for call in spy.calls) == [0, 1, 2, 3]
    for fn, task, _index, _queue, _job, secrets_ref in spy.calls:
        assert fn is convert_partition and isinstance(task, ConvertTask)
        blob = cloudpickle.dumps(task) + repr(task).encode() + str(task).encode()
        assert SECRET.encode() not in blob and SECRET_KEY.encode() not in blob
        assert task.storage_options == {"client_kwargs": {"endpoint_url": s3["endpoint"]}}
        assert isinstance(secrets_ref, ray_local.ObjectRef)
        # the secrets travel apart, through the object store, once for the job
        assert ray_local.get(secrets_ref) == {"key": SECRET_KEY, "secret": SECRET}
    assert len({call[5] for call in spy.calls}) == 1
    raw = s3["fs"].cat_file("test/ray/ds/manifest.json")
    assert SECRET.encode() not in raw and SECRET_KEY.encode() not in raw


def _die_once(marker, partition):
    """A partition function that SIGKILLs its own worker process the first time it runs
    ``partition``, once that partition has committed a shard and half-written the next (the
    directory listing at that moment is saved in ``marker``); afterwards it converts."""

    def fn(task, progress=None):
        from wdstream.write import writer

        if task.partition == partition and not os.path.exists(marker):
            real = writer.ShardWriter.write

            def write(self, key, fields):
                if self._seq == 1 and len(self._offsets) == 2:
                    with open(marker, "w") as f:
                        f.write("\n".join(sorted(os.listdir(task.output_url))))
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(self, key, fields)

            writer.ShardWriter.write = write
        with open(marker + ".attempts", "a") as f:
            f.write(f"{task.partition}\n")
        return convert_partition(task, progress=progress)

    return fn


@pytest.mark.ray
@pytest.mark.slow
def test_killed_task_is_retried_and_the_job_ends_complete(ray_local, dataset, reference, tmp_path):
    from wdstream.write.executors.ray import RayExecutor

    marker = str(tmp_path / "killed")
    fn = _die_once(marker, partition=1)

    class KillOnce(RayExecutor):
        def map_unordered(self, _fn, tasks, *, progress=None):
            return super().map_unordered(fn, tasks, progress=progress)

    out = str(tmp_path / "out")
    m = convert(dataset, out, max_samples_per_shard=5, quiet=True, executor=KillOnce(max_retries=2))
    # the worker really died mid-partition: one shard committed, the next half written
    at_kill = open(marker).read().split()
    assert "shard-00001-00000.tar" in at_kill
    assert any(n.startswith(".shard-00001-00001.tar.partial-") for n in at_kill), at_kill
    attempts = open(marker + ".attempts").read().split()
    assert attempts.count("1") == 2 and all(attempts.count(p) == 1 for p in "023")
    # complete, no duplicates, the same bytes as the local executor, nothing stale left
    ref_out, ref = reference
    assert _shards(m) == _shards(ref)
    keys = _keys(out)
    assert keys == _keys(ref_out) and len(keys) == len(set(keys)) == 47
    names = os.listdir(out)
    assert not [n for n in names if ".partial-" in n], names
    assert sorted(n for n in names if n.endswith(".tar")) == sorted(s.url for s in m.shards)
    assert sorted(
        n for n in os.listdir(os.path.join(out, "_partitions")) if not n.startswith("records-")
    ) == [  # records-*: the driver's batches
        "_job.json",
        "part-00000.json",
        "part-00001.json",
        "part-00002.json",
        "part-00003.json",
    ]


@pytest.mark.ray
@pytest.mark.slow
def test_data_error_names_the_partition_and_is_not_retried(ray_local, dataset, tmp_path):
    from wdstream.write.executors.ray import RayExecutor

    log = str(tmp_path / "attempts")

    def counting(task, progress=None):
        with open(log, "a") as f:
            f.write(f"{task.partition}\n")
        return convert_partition(task, progress=progress)

    class Counting(RayExecutor):
        def map_unordered(self, _fn, tasks, *, progress=None):
            return super().map_unordered(counting, tasks, progress=progress)

    out = str(tmp_path / "out")
    with pytest.raises(TooManyErrors, match=r"partition 2 of 4: .*bad_image") as e:
        convert(
            dataset,
            out,
            max_samples_per_shard=5,
            quiet=True,
            skip_bad_rows=False,
            executor=Counting(max_retries=3),
        )
    assert "00002_000000006" in str(e.value)  # the row's key (row 30 = partition 2, row 6)
    assert open(log).read().split().count("2") == 1  # a Python exception is not retried
    assert "manifest.json" not in os.listdir(out)
    assert "part-00002.json" not in os.listdir(os.path.join(out, "_partitions"))


@pytest.mark.ray
@pytest.mark.slow
def test_cli_executor_ray(ray_local, dataset, reference, tmp_path):
    from wdstream.cli import main

    out = str(tmp_path / "cli")
    assert (
        main(
            [
                "convert",
                dataset,
                out,
                "--executor",
                "ray",
                "--quiet",
                "--max-samples-per-shard",
                "5",
            ]
        )
        == 0
    )
    assert _shards(load_manifest(out)) == _shards(reference[1])
    assert ray_local.is_initialized()  # a Ray it did not start is left running


def test_cli_maps_executor_options(monkeypatch):
    from wdstream.cli import build_parser
    from wdstream.cli import convert as cmd

    seen = {}

    def fake_convert(source, output, *, config, **kw):  # records the Config the CLI builds
        seen["config"] = config
        raise ConfigError("stop here")

    monkeypatch.setattr(cmd, "convert", fake_convert)
    parser = build_parser()
    for argv, want in [
        ([], ("local", None)),
        (["--executor", "ray"], ("ray", None)),
        (["--ray-address", "auto"], ("ray", "auto")),
        (["--executor", "ray", "--ray-address", "10.0.0.1:6379"], ("ray", "10.0.0.1:6379")),
    ]:
        args = parser.parse_args(["convert", "someone/src", "out", *argv])
        with pytest.raises(ConfigError, match="stop here"):
            cmd.run(args)
        assert (seen["config"].executor, seen["config"].ray_address) == want
    args = parser.parse_args(
        ["convert", "someone/src", "out", "--executor", "local", "--ray-address", "auto"]
    )
    with pytest.raises(ConfigError, match="--ray-address needs --executor ray"):
        cmd.run(args)


def test_without_ray_the_error_says_how_to_install(monkeypatch, small_hf_dataset, tmp_path):
    """Ray is installed here, so its absence is simulated: ``sys.modules["ray"] = None``
    makes ``import ray`` raise ImportError, as on a machine without the extra."""
    from wdstream.write.executors import make_executor

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'wdstream\[ray\]'"):
        make_executor(Config(executor="ray"))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"pip install 'wdstream\[ray\]'"):
        convert(small_hf_dataset, str(out), executor="ray", quiet=True)
    assert not out.exists()  # it said so before any work


def test_secrets_split_and_merge_back():
    from wdstream.write.executors import merge_secrets, split_secrets

    opts = {
        "key": "K",
        "secret": "S",
        "token": "T",
        "anon": False,
        "client_kwargs": {
            "endpoint_url": "http://h:9000",
            "aws_session_token": "X",
            "region_name": "r",
        },
        "config_kwargs": {"retries": {"max_attempts": 2}},
    }
    public, secrets = split_secrets(opts)
    assert public == {
        "anon": False,
        "client_kwargs": {"endpoint_url": "http://h:9000", "region_name": "r"},
        "config_kwargs": {"retries": {"max_attempts": 2}},
    }
    assert secrets == {
        "key": "K",
        "secret": "S",
        "token": "T",
        "client_kwargs": {"aws_session_token": "X"},
    }
    assert merge_secrets(public, secrets) == opts


@pytest.mark.slow
def test_tasks_are_taken_as_earlier_ones_finish(ray_local):
    """However many tasks, at most ``max_in_flight`` are submitted at a time: the tasks come
    from a generator that is read as results come back, and every result and every progress
    report arrives."""
    from wdstream.write.executors.ray import RayExecutor

    pulled, reports = [], []

    def echo(task, progress=None):  # local: Ray pickles it by value (workers lack tests/)
        if progress is not None:
            progress(1, 1)
        return task

    def tasks():
        for i in range(200):
            pulled.append(i)
            yield i

    ex = RayExecutor(max_in_flight=5)
    got = []
    for result in ex.map_unordered(echo, tasks(), progress=lambda s, b: reports.append(s)):
        got.append(result)
        assert len(pulled) - len(got) <= 5
    ex.close()
    assert sorted(got) == list(range(200))
    assert sum(reports) == 200
