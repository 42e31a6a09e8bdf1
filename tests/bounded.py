"""Running a test's target in a child process under RLIMIT_AS and a timeout, so a blow-up or
a hang fails the test instead of the machine running it.

The child's code calls ``limit_memory()`` after its imports (torch alone maps ~3 GB of
address space): the limit is what the child maps then plus ``margin`` (1.5 GB by default).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
TOOLS = os.path.join(ROOT, "tools")

PREAMBLE = '''
import resource as _resource
import signal as _signal


def limit_memory(margin=1536 * 2**20):
    """RLIMIT_AS: what this process maps now plus ``margin`` bytes."""
    with open("/proc/self/status") as f:
        size = int(f.read().split("VmSize:")[1].split()[0]) * 1024
    _resource.setrlimit(_resource.RLIMIT_AS, (size + margin, size + margin))


class Hang(Exception):
    """The code under an ``alarm`` ran past its seconds."""


def _on_alarm(signum, frame):
    raise Hang("ran past its time limit")


def alarm(seconds):
    """Raise Hang in this thread after ``seconds`` (0: cancel)."""
    _signal.signal(_signal.SIGALRM, _on_alarm)
    _signal.setitimer(_signal.ITIMER_REAL, seconds)
'''


def run_child(code: str, *args: str, timeout: float = 120, env: dict | None = None):
    """Run ``code`` (after :data:`PREAMBLE`) in a fresh Python with ``args``; returns the
    CompletedProcess. A child still running after ``timeout`` seconds is killed and the test
    fails, saying so."""
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([ROOT, TOOLS]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        **(env or {}),
    }
    try:
        return subprocess.run(
            [sys.executable, "-c", PREAMBLE + code, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environ,
        )
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-2000:]
        pytest.fail(f"the child ran past {timeout} s (a hang): {tail!r}")
