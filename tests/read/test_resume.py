"""Resume: a conversion killed mid-shard (SIGKILL of a real process), then re-run, ends with
the same manifest as an uninterrupted run: no duplicate, no missing sample, and no partial
shard visible at any moment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import threading
import time

import pytest

from wdstream.format.manifest import load_manifest
from wdstream.write.convert import convert

# The child converts with one worker (inline) and a RowEncoder slowed to 30 ms per row, so the
# parent can kill it while a shard of partition >= 1 is half written. The slowdown is only in
# this test's child process.
CHILD = """
import sys, time
import datasets
datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
import wdstream.rows.encode as enc
_call = enc.RowEncoder.__call__
def slow(self, row, key):
    time.sleep(0.03)
    return _call(self, row, key)
enc.RowEncoder.__call__ = slow
from wdstream.write.convert import convert
convert(sys.argv[1], sys.argv[2], max_samples_per_shard=4, workers=1, quiet=True)
print("FINISHED")
"""


class TarWatcher(threading.Thread):
    """Polls OUTPUT; every visible ``.tar`` must be a complete archive at the moment it is seen."""

    def __init__(self, folder):
        super().__init__(daemon=True)
        self.folder = folder
        self.stop = threading.Event()
        self.bad: list[str] = []
        self.checked = 0

    def run(self):
        while not self.stop.is_set():
            try:
                names = os.listdir(self.folder)
            except FileNotFoundError:
                names = []
            for name in names:
                if not name.endswith(".tar"):
                    continue
                try:
                    with tarfile.open(os.path.join(self.folder, name)) as t:
                        members = t.getmembers()
                    if not members:
                        self.bad.append(f"{name}: empty")
                    self.checked += 1
                except FileNotFoundError:
                    continue  # removed by the cleanup of a resumed run
                except (tarfile.TarError, EOFError, OSError) as exc:
                    self.bad.append(f"{name}: {exc}")
            time.sleep(0.005)


def _keys(url):
    from wdstream import storage
    from wdstream.format.tario import group_samples, iter_members

    keys = []
    for shard in load_manifest(url).shard_urls():
        with storage.open_read(shard) as f:
            keys.extend(s["__key__"] for s in group_samples(iter_members(f)))
    return keys


@pytest.mark.slow
def test_killed_conversion_resumes_to_the_same_result(small_hf_dataset, tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    watcher = TarWatcher(out)
    watcher.start()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, small_hf_dataset, out],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    killed_with = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and child.poll() is None:
            parts = (
                os.listdir(os.path.join(out, "_partitions"))
                if os.path.isdir(os.path.join(out, "_partitions"))
                else []
            )
            partial = [
                n for n in os.listdir(out) if ".partial-" in n and not n.startswith(".shard-00000-")
            ]
            if "part-00000.json" in parts and partial:
                child.send_signal(signal.SIGKILL)
                killed_with = (sorted(parts), partial)
                break
            time.sleep(0.002)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert killed_with is not None, child.stderr.read().decode()[-3000:]
    assert child.returncode == -signal.SIGKILL
    # what the kill left: a finished partition 0, a half-written shard of partition 1
    assert "manifest.json" not in os.listdir(out)
    assert any(n.startswith(".shard-00001-") for n in os.listdir(out)), os.listdir(out)

    manifest = convert(small_hf_dataset, out, max_samples_per_shard=4, workers=1, quiet=True)
    watcher.stop.set()
    watcher.join()
    assert watcher.bad == [] and watcher.checked > 0

    clean = convert(
        small_hf_dataset, str(tmp_path / "clean"), max_samples_per_shard=4, workers=1, quiet=True
    )
    assert [(s.url, s.samples, s.sha256) for s in manifest.shards] == [
        (s.url, s.samples, s.sha256) for s in clean.shards
    ]
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 48
    assert sorted(keys) == sorted(_keys(str(tmp_path / "clean")))
    # nothing outside the manifest: no stray .tar, no temp file
    listed = {s.url for s in manifest.shards}
    tars = {n for n in os.listdir(out) if n.endswith(".tar")}
    assert tars == listed
    assert not [n for n in os.listdir(out) if ".partial-" in n]


def test_resume_removes_stale_shards_and_temp_files(small_hf_dataset, tmp_path):
    out = tmp_path / "out"
    first = convert(small_hf_dataset, str(out), max_samples_per_shard=5, workers=1, quiet=True)
    # simulate a crash in partition 2: no record, no manifest, a committed shard from a
    # different (older) attempt, an extra stale shard and a temp file left behind
    os.remove(out / "_partitions" / "part-00002.json")
    os.remove(out / "manifest.json")
    (out / "shard-00002-00000.tar").write_bytes(b"old attempt")
    (out / "shard-00002-00007.tar").write_bytes(b"stale")
    (out / ".shard-00002-00003.tar.partial-0123456789ab").write_bytes(b"half")
    again = convert(small_hf_dataset, str(out), max_samples_per_shard=5, workers=1, quiet=True)
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in first.shards]
    names = os.listdir(out)
    assert "shard-00002-00007.tar" not in names
    assert not [n for n in names if ".partial-" in n]
    assert (out / "shard-00002-00000.tar").read_bytes() != b"old attempt"


def test_manifest_rewritten_when_only_it_is_missing(small_hf_dataset, tmp_path):
    out = tmp_path / "out"
    first = convert(small_hf_dataset, str(out), max_samples_per_shard=5, workers=1, quiet=True)
    before = {n: (out / n).stat().st_mtime_ns for n in os.listdir(out) if n.endswith(".tar")}
    os.remove(out / "manifest.json")
    again = convert(small_hf_dataset, str(out), max_samples_per_shard=5, workers=1, quiet=True)
    assert again.to_dict() == first.to_dict()
    assert {
        n: (out / n).stat().st_mtime_ns for n in os.listdir(out) if n.endswith(".tar")
    } == before  # no shard rewritten
