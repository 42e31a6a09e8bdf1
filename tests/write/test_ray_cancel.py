"""How a Ray job stops its tasks in flight when one fails: cooperatively, never with
``ray.cancel``.

Two flakes, both from ``ray.cancel``:

- Without ``force`` (until stop 17): ``ray.cancel`` raises KeyboardInterrupt inside the running
  task. A task still importing ``datasets`` for the first time (a fresh worker, slow under a full
  run's load) left half-initialised ``datasets.*`` modules behind; Ray reused that worker, and
  every later task in it failed with "partially initialized module 'datasets' has no attribute
  'utils'" (seen in test_cli_executor_ray, only in full runs). Importing again cannot repair it.
  The first test reproduces this deterministically in a fresh process.
- With ``force=True`` (stop 18): the cancel races with the task's reply inside Ray's driver
  code, which then fails its own check ("Check failed: it != submissible_tasks_.end() Tried to
  complete task that was not pending", ray-project/ray#54798) and ends the driver process with
  exit status 1: the whole pytest run died at test_cli_executor_ray, after
  test_data_error_names_the_partition_and_is_not_retried had cancelled its tasks.

Fix: the executor marks the job stopped on its channel actor; each task in flight learns it at
its start or its next progress report and unwinds (a partition aborts its open shard, as on any
error); the driver waits for them. The second test checks that, with ``ray.cancel`` made to fail
the test if it is called."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

INTERRUPTED = textwrap.dedent("""
    import importlib.abc, sys

    class Interrupt(importlib.abc.MetaPathFinder):
        fired = False

        def find_spec(self, name, path=None, target=None):
            if name == sys.argv[1] and not Interrupt.fired:
                Interrupt.fired = True
                raise KeyboardInterrupt  # what ray.cancel() without force does to a task
            return None

    sys.meta_path.insert(0, Interrupt())
    try:
        import wdstream.write.partition
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
    sys.meta_path.pop(0)
    import wdstream.write.partition  # the same worker's next task
    print("IMPORTED")
""")


@pytest.mark.parametrize("where", ["datasets.packaged_modules", "datasets.features.audio"])
def test_an_interrupted_first_import_poisons_the_process(where):
    """Why a cancelled worker must not be reused: reproduced in a fresh process."""
    run = subprocess.run(
        [sys.executable, "-c", INTERRUPTED, where], capture_output=True, text=True, timeout=300
    )
    assert "INTERRUPTED" in run.stdout, run.stderr[-3000:]
    assert "IMPORTED" not in run.stdout
    assert "partially initialized module 'datasets' has no attribute 'utils'" in run.stderr


def _task(folder):
    """Task 0 fails once task 1 runs; every other task reports progress for a minute (a long
    partition) and records whether it was stopped."""

    def fn(task, progress=None):
        from wdstream.write.executors.ray import JobStopped

        if task == 0:
            deadline = time.monotonic() + 60
            while (
                not os.path.exists(os.path.join(folder, "running-1"))
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            raise ValueError("bad data in partition 0")
        with open(os.path.join(folder, f"running-{task}"), "w") as f:
            f.write(str(os.getpid()))
        try:
            for _ in range(1200):
                progress(1, 1)
                time.sleep(0.05)
        except JobStopped:
            with open(os.path.join(folder, f"stopped-{task}"), "w") as f:
                f.write("stopped")
            raise
        with open(os.path.join(folder, f"finished-{task}"), "w") as f:
            f.write("not stopped")
        return task

    return fn


@pytest.mark.ray
@pytest.mark.slow
def test_a_failed_job_stops_its_tasks_in_flight_without_ray_cancel(tmp_path, monkeypatch):
    import ray

    from wdstream.write.executors.ray import RayExecutor

    cancels = []  # ray.cancel can crash the driver (ray#54798): it must not be called
    monkeypatch.setattr(ray, "cancel", lambda *a, **kw: cancels.append((a, kw)))
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        # 2 CPUs, 4 tasks in flight: tasks 0 and 1 run, 2 and 3 wait for a CPU
        executor = RayExecutor(max_in_flight=4)
        with pytest.raises(ValueError, match="bad data in partition 0"):
            list(executor.map_unordered(_task(str(tmp_path)), range(4), progress=lambda s, b: None))
        assert cancels == []
        names = sorted(os.listdir(tmp_path))
        # the driver returned after its tasks stopped: task 1 was stopped at a report, and
        # tasks 2 and 3 either never ran fn (stopped at their start) or were stopped likewise
        assert "stopped-1" in names, names
        assert not [n for n in names if n.startswith("finished-")], names
        for t in (2, 3):
            assert (f"running-{t}" in names) == (f"stopped-{t}" in names), names
        # the executor (and its workers) are still usable for the next job
        assert sorted(executor.map_unordered(lambda t, progress=None: t * 2, range(3))) == [0, 2, 4]
        executor.close()
    finally:
        if started:
            ray.shutdown()
