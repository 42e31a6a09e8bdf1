"""The Ray flake "partially initialized module 'datasets' has no attribute 'utils'" (in
test_cli_executor_ray, only in full runs).

Root cause: when a job stops (a partition raised), the executor cancelled the tasks still
running. ``ray.cancel`` without ``force`` raises KeyboardInterrupt inside the running task, and
a task that was still importing ``datasets`` for the first time (a fresh worker, slow under a
full run's load) left half-initialised ``datasets.*`` modules behind. Ray reuses that worker,
and every later task in it failed on its first ``datasets`` import. Importing again cannot
repair it (``datasets`` registers pyarrow extension types once per process).

Fix: the executor cancels with ``force=True``: the worker of a cancelled running task is
killed, never reused half-done. The first test reproduces the poisoning deterministically in a
fresh process; the second checks that a failed job's running tasks have their workers killed."""

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
    run = subprocess.run([sys.executable, "-c", INTERRUPTED, where], capture_output=True,
                         text=True, timeout=300)
    assert "INTERRUPTED" in run.stdout, run.stderr[-3000:]
    assert "IMPORTED" not in run.stdout
    assert "partially initialized module 'datasets' has no attribute 'utils'" in run.stderr


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _task(folder):
    def fn(task, progress=None):
        if task == 0:  # fails once the other task is under way
            deadline = time.monotonic() + 60
            while not os.path.exists(os.path.join(folder, "pid-1")) and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            raise ValueError("bad data in partition 0")
        with open(os.path.join(folder, "pid-1"), "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)  # a long partition (or a slow first import)
        with open(os.path.join(folder, "finished-1"), "w") as f:
            f.write("not cancelled")
        return task

    return fn


@pytest.mark.ray
@pytest.mark.slow
def test_a_failed_job_kills_the_workers_of_its_running_tasks(tmp_path):
    import ray

    from wdstream.write.executors.ray import RayExecutor

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
    try:
        executor = RayExecutor()
        with pytest.raises(ValueError, match="bad data in partition 0"):
            list(executor.map_unordered(_task(str(tmp_path)), [0, 1]))
        pid = int((tmp_path / "pid-1").read_text())
        deadline = time.monotonic() + 20
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(pid), "the cancelled task's worker is still running"
        assert not (tmp_path / "finished-1").exists()
        executor.close()
    finally:
        if started:
            ray.shutdown()
