"""What the kill tests share: start the slowed conversion (tests/scripts/slow_convert.py) in
its own process, find its descendants (forkserver, pool workers), list what an output holds,
and check a finished output (manifest verifies, every sample once, nothing partial)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from wdstream import storage
from wdstream.format.manifest import load_manifest
from wdstream.format.tario import group_samples, iter_members
from wdstream.format.verify import verify_shard

SCRIPT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, "scripts", "slow_convert.py"
)


def start_conversion(source, output, workers, options=None, delay=0.05, config=None):
    env = {
        **os.environ,
        "WDSTREAM_TEST_ROW_DELAY": str(delay),
        "WDSTREAM_TEST_CONVERT_ARGS": json.dumps(config or {}),
    }
    args = [sys.executable, SCRIPT, source, output, str(workers)]
    if options:
        args.append(json.dumps(options))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _proc_stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])  # state, ppid


def descendants(pid):
    """The pids of every live process below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _proc_stat(int(name))
            if stat is not None:
                children.setdefault(stat[1], []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_when_visible(child, url, options, target, poll=0.01):
    """SIGKILL the conversion ``child`` once ``target`` objects are visible under ``url`` (or
    leave it if it finished first; at most 120 s). Returns ``(its descendants seen while it
    ran, whether it had finished)``; ``child`` is reaped either way."""
    try:
        deadline = time.monotonic() + 120
        below: set[int] = set()
        while (
            time.monotonic() < deadline
            and child.poll() is None
            and len(listing(url, options)) < target
        ):
            below.update(descendants(child.pid))
            time.sleep(poll)
        below.update(descendants(child.pid))
        finished = child.poll() is not None
        if not finished:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    return below, finished


def alive(pids):
    """Those of ``pids`` still running (a zombie waiting to be reaped is not running)."""
    out = []
    for pid in pids:
        stat = _proc_stat(pid)
        if stat is not None and stat[0] not in ("Z", "X"):
            out.append(pid)
    return out


def wait_gone(pids, timeout):
    """Wait until none of ``pids`` runs; returns those still running at the timeout."""
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(pids)


def listing(url, options=None):
    """``{relative name: size}`` of every object under ``url`` (temp files included)."""
    fs, path = storage.url_to_fs(url, options or {})
    fs.invalidate_cache()
    try:
        found = fs.find(path, detail=True, withdirs=False)
    except FileNotFoundError:
        return {}
    return {name[len(path) :].lstrip("/"): info.get("size") for name, info in found.items()}


def pending_uploads(options, bucket="test"):
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    uploads, kwargs = [], {}
    while True:
        resp = fs.call_s3("list_multipart_uploads", Bucket=bucket, **kwargs)
        uploads += resp.get("Uploads", [])
        if not resp.get("IsTruncated"):
            return uploads
        kwargs = {"KeyMarker": resp["NextKeyMarker"], "UploadIdMarker": resp["NextUploadIdMarker"]}


def check_complete(url, rows, options=None):
    """The output is a finished dataset: every shard verifies against the manifest, every
    sample is there once, and nothing partial is left. Returns the manifest."""
    m = load_manifest(url, options)
    keys = []
    for shard, info in zip(m.shard_urls(), m.shards, strict=True):
        assert verify_shard(shard, options) == (info.samples, info.bytes, info.sha256), shard
        with storage.open_read(shard, options) as f:
            keys.extend(s["__key__"] for s in group_samples(iter_members(f)))
    assert len(keys) == len(set(keys)) == m.samples == rows, (len(keys), len(set(keys)), rows)
    names = listing(url, options)
    assert not [n for n in names if ".partial-" in n], names
    assert sorted(n for n in names if n.endswith(".tar")) == sorted(s.url for s in m.shards)
    return m
