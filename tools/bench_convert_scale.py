"""Benchmark the converter's driver at scale: planning, resuming, finishing, memory, Ray.

    .venv/bin/python tools/bench_convert_scale.py --sizes 2000,10000 --seeded 100000 --ray 2000

The source is a folder of N one-row parquet files (N partitions; cached under ``.bench/``),
given as ``parquet --data-files DIR/*.parquet`` (``--folder-source``: as the folder itself,
where ``datasets`` tries ~66 patterns against every file, about 6 ms a file).
The output is S3: moto on 127.0.0.1, in this process, behind the shared S3 test proxy
(``tools/s3proxy.py``, 30 ms to first byte, ``--ttfb``). Every driver runs in a child process
(``python -m wdstream convert ... --workers 2``), whose peak RSS (``VmHWM``, the driver alone,
not its workers) is read from /proc. Moments are taken at the proxy, which sees every request:

* **planning** (``--sizes``): from the child's start to the first request of a partition
  (its shard, or on a resume its own-prefix listing); the child is then killed. This includes
  Python's start-up and imports (``imports`` column: start -> first request at all).
* **resuming** (``--sizes`` and ``--seeded``): the output is seeded as a job killed halfway
  would leave it: the job file (made by the planning run), a part record for each of the first
  N/2 partitions, the driver's ``records-*`` batches covering all but the last partial batch
  of them (5 shards a record). Shards are not seeded: the resume never lists or reads them.
  Measured: start -> first new partition running.
* **finishing** (``--seeded``): seeded with all but 4 partitions done; the driver runs those 4
  for real. Measured: the last partition's record written -> the driver has written
  manifest.json and exited (the manifest names N x 5 shards: 500k at N = 100k). The driver's
  peak RSS here is the job's worst case (every record in memory, the manifest serialised).
* **Ray** (``--ray N``): a fresh job of N partitions converted for real on a local Ray (2 CPUs)
  and with the local executor (2 workers): wall time per partition, and the difference
  (``--ray-only``: the Ray job alone).
  ``--ray-tasks M``: M no-op tasks through RayExecutor (the driver's own overhead per task,
  its RSS, and how many progress updates arrived).

Timings on a shared 2-core machine are noisy: each figure is one run (``--repeat`` for more,
the median is reported). Results are printed as a markdown table and written to
``.bench/convert_scale.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from urllib.parse import unquote

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, ROOT)

import s3proxy  # noqa: E402

BUCKET = "bench"
FOLDER_SOURCE = False  # --folder-source: SOURCE is the folder (datasets infers its patterns)
SHARDS_PER_RECORD = 5


# --------------------------------------------------------------------------- source


def make_source(n: int) -> str:
    """A folder of ``n`` one-row parquet files, cached under .bench/."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = os.path.join(ROOT, ".bench", f"tiny-{n}")
    marker = os.path.join(folder, "DONE")
    if os.path.exists(marker):
        return folder
    os.makedirs(folder, exist_ok=True)
    t0 = time.monotonic()
    for i in range(n):
        pq.write_table(
            pa.table({"text": [f"row {i}"], "id": [i]}),
            os.path.join(folder, f"part-{i:06d}.parquet"),
        )
    open(marker, "w").close()
    print(f"made {n} parquet files in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return folder


# --------------------------------------------------------------------------- S3 + proxy


class Recorder:
    """A proxy rule that injects nothing and notes ``(time, method, target)`` per request."""

    def __init__(self):
        self.events: list[tuple[float, str, str]] = []

    def __call__(self, info):
        self.events.append((time.monotonic(), info.method, unquote(f"{info.path}?{info.query}")))
        return None

    def clear(self):
        self.events = []

    def first(self, pred, after: float = 0.0) -> float | None:
        for t, method, target in list(self.events):
            if t >= after and pred(method, target):
                return t
        return None

    def last(self, pred) -> float | None:
        found = None
        for t, method, target in list(self.events):
            if pred(method, target):
                found = t
        return found


def is_partition_request(method: str, target: str) -> bool:
    path, _, query = target.partition("?")
    return "/shard-" in path or "prefix=" in query and "shard-" in query


class S3:
    def __init__(self, ttfb: float):
        import s3fs

        self.server, self.moto_url = s3proxy.start_moto()
        self.proxy = s3proxy.S3Proxy(self.moto_url, ttfb=ttfb, jitter=0.0, bandwidth=None)
        self.proxy.start()
        self.recorder = Recorder()
        self.proxy.faults = self.recorder
        self.fs = s3fs.S3FileSystem(
            skip_instance_cache=True, **s3proxy.storage_options(self.moto_url)
        )
        self.fs.mkdir(BUCKET)

    def backend(self):
        from moto.s3.models import s3_backends

        return s3_backends["123456789012"]["global"]

    def put(self, key: str, data: bytes) -> None:
        """Seed an object straight into moto (no HTTP): as if the job had written it."""
        self.backend().put_object(BUCKET, key, data)

    def clear(self, prefix: str) -> None:
        backend = self.backend()
        bucket = backend.get_bucket(BUCKET)
        for key in [k for k in list(bucket.keys.keys()) if k.startswith(prefix)]:
            backend.delete_object(BUCKET, key)
        for up in list(bucket.multiparts.values()):
            if up.key_name.startswith(prefix):
                del bucket.multiparts[up.id]

    def close(self):
        self.proxy.stop()
        s3proxy.stop_moto(self.server)


# --------------------------------------------------------------------------- driver runs


def vm_hwm(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


_DRIVER = """
import resource, sys, json
from wdstream.cli import main
rc = main(json.loads(sys.argv[1]))
with open(sys.argv[2], "w") as f:
    json.dump({"rc": rc, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, f)
sys.exit(rc)
"""


def run_driver(
    s3: S3,
    source: str,
    prefix: str,
    *,
    stop_at_first_partition: bool,
    extra: list[str] = (),
    timeout: float = 3600,
) -> dict:
    """Run ``wdstream convert`` in a child; returns its moments (relative to its start)."""
    endpoint = json.dumps({"endpoint_url": s3.proxy.url})
    src = [source] if FOLDER_SOURCE else ["parquet"]
    files = [] if FOLDER_SOURCE else ["--data-files", f"{source}/*.parquet"]
    argv = [
        "convert",
        *src,
        f"s3://{BUCKET}/{prefix}",
        *files,
        "--quiet",
        "--workers",
        "2",
        "--storage-option",
        f"client_kwargs={endpoint}",
        *extra,
    ]
    result_file = os.path.join(ROOT, ".bench", f"driver-{os.getpid()}.json")
    if os.path.exists(result_file):
        os.remove(result_file)
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "RAY_ADDRESS": "local",
    }  # a Ray of its own, whatever else runs on the machine
    s3.recorder.clear()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, json.dumps(argv), result_file],
        env=env,
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    hwm = 0.0
    first = manifest_seen = None
    bucket = s3.backend().get_bucket(BUCKET)
    manifest_key = f"{prefix}/manifest.json"
    try:
        while proc.poll() is None:
            hwm = max(hwm, vm_hwm(proc.pid) or 0.0)
            if manifest_seen is None and manifest_key in bucket.keys:
                manifest_seen = time.monotonic()
            first = first or s3.recorder.first(is_partition_request)
            if stop_at_first_partition and first is not None:
                break
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"driver still running after {timeout} s")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            hwm = max(hwm, vm_hwm(proc.pid) or 0.0)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    end = time.monotonic()
    if manifest_seen is None and manifest_key in bucket.keys:
        manifest_seen = end
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0 and not (stop_at_first_partition and proc.returncode == -9):
        raise RuntimeError(f"driver failed ({proc.returncode}): {err[-3000:]}")
    if os.path.exists(result_file):
        with open(result_file) as f:
            hwm = max(hwm, json.load(f)["maxrss_mb"])
    first = first or s3.recorder.first(is_partition_request)
    any_request = s3.recorder.first(lambda m, t: True)
    last_record = s3.recorder.last(lambda m, t: m == "PUT" and "/_partitions/part-" in t)
    manifest = s3.recorder.last(
        lambda m, t: m == "PUT" and t.split("?")[0].endswith("/manifest.json")
    )

    def rel(t):
        return None if t is None else round(t - t0, 2)

    # the driver's own start-up ends with the listing of pending uploads (clean)
    ready = s3.recorder.first(lambda m, t: m == "GET" and "?uploads" in t)
    return {
        "imports_s": rel(any_request),
        "driver_ready_s": rel(ready),
        "first_partition_s": rel(first),
        "last_record_s": rel(last_record),
        "manifest_put_s": rel(manifest),
        "manifest_written_s": rel(manifest_seen),
        "exit_s": round(end - t0, 2),
        "driver_rss_mb": round(hwm),
        "rc": proc.returncode,
        "requests": len(s3.recorder.events),
    }


# --------------------------------------------------------------------------- seeding


def fake_record(p: int) -> dict:
    shards = []
    for q in range(SHARDS_PER_RECORD):
        name = f"shard-{p:05d}-{q:05d}.tar"
        shards.append(
            {
                "url": name,
                "samples": 1,
                "bytes": 10240,
                "sha256": hashlib.sha256(name.encode()).hexdigest(),
                "index": f"shard-{p:05d}-{q:05d}.idx.json",
                "partition": p,
                "first_key": f"{p:05d}{q:07d}",
                "last_key": f"{p:05d}{q:07d}",
            }
        )
    return {
        "partition": p,
        "shards": shards,
        "samples": SHARDS_PER_RECORD,
        "skipped": {},
        "fields": ["json", "txt"],
    }


def seed(s3: S3, prefix: str, n: int, done: range) -> dict:
    """What a job killed with ``done`` recorded leaves (plus its job file, already there):
    part files, and the driver's batches of all but the last partial batch."""
    from wdstream.write.output import records_per_batch

    t0 = time.monotonic()
    per = records_per_batch(n)
    batch: list[dict] = []
    seq = 0
    for p in done:
        rec = fake_record(p)
        s3.put(
            f"{prefix}/_partitions/part-{p:05d}.json",
            json.dumps(rec, indent=1, sort_keys=True).encode(),
        )
        batch.append(rec)
        if len(batch) == per:
            s3.put(
                f"{prefix}/_partitions/records-5eed00000000-{seq:05d}.json",
                json.dumps(
                    {"format": "wdstream-records", "records": batch}, separators=(",", ":")
                ).encode(),
            )
            seq, batch = seq + 1, []
    return {
        "seeded_records": len(done),
        "batches": seq,
        "stragglers": len(batch),
        "seed_s": round(time.monotonic() - t0, 1),
    }


# --------------------------------------------------------------------------- phases


def time_records(s3: S3, prefix: str) -> dict:
    """In this process, through the proxy: the listing of ``_partitions/`` alone, then the
    whole ``Output.records()`` (listing + batches + stragglers): what the resume's driver
    spends on records, apart from planning and worker start-up."""
    import s3fs

    from wdstream.write.output import Output

    opts = s3proxy.storage_options(s3.proxy.url)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    t0 = time.monotonic()
    names = fs.ls(f"{BUCKET}/{prefix}/_partitions", detail=False)
    t1 = time.monotonic()
    records = Output(f"s3://{BUCKET}/{prefix}", opts).records()
    t2 = time.monotonic()
    return {
        "listed": len(names),
        "list_s": round(t1 - t0, 1),
        "records": len(records),
        "records_s": round(t2 - t1, 1),
    }


def phase_plan_and_resume(s3: S3, n: int, seeded_only: bool) -> dict:
    source = make_source(n)
    prefix = f"scale-{n}"
    s3.clear(prefix)
    out = {"partitions": n}
    plan = run_driver(s3, source, prefix, stop_at_first_partition=True)
    out["plan"] = plan
    s3.clear(f"{prefix}/shard-")
    for key in [
        k
        for k in s3.backend().get_bucket(BUCKET).keys
        if k.startswith(f"{prefix}/_partitions/part-")
    ]:
        s3.backend().delete_object(BUCKET, key)
    out["seed_resume"] = seed(s3, prefix, n, range(n // 2))
    out["records_read"] = time_records(s3, prefix)
    out["resume"] = run_driver(s3, source, prefix, stop_at_first_partition=True)
    s3.clear(f"{prefix}/shard-")
    s3.clear(f"{prefix}/_partitions/")
    return out


def phase_finish(s3: S3, n: int) -> dict:
    source = make_source(n)
    prefix = f"scale-{n}"
    s3.clear(prefix)
    run_driver(s3, source, prefix, stop_at_first_partition=True)  # writes the job file
    s3.clear(f"{prefix}/shard-")
    for key in [
        k
        for k in s3.backend().get_bucket(BUCKET).keys
        if k.startswith(f"{prefix}/_partitions/part-")
    ]:
        s3.backend().delete_object(BUCKET, key)
    out = {"partitions": n, "seed_finish": seed(s3, prefix, n, range(n - 4))}
    fin = run_driver(s3, source, prefix, stop_at_first_partition=False)
    fin["finish_s"] = (
        round(fin["manifest_written_s"] - fin["last_record_s"], 2)
        if fin["last_record_s"] is not None and fin["manifest_written_s"]
        else None
    )
    out["finish"] = fin
    s3.clear(prefix)
    return out


def phase_ray(s3: S3, n: int, ray_only: bool = False) -> dict:
    source = make_source(n)
    out = {"partitions": n}
    runs = (("local", []), ("ray", ["--executor", "ray"]))
    for name, extra in runs[1:] if ray_only else runs:
        prefix = f"ray-{n}-{name}"
        s3.clear(prefix)
        r = run_driver(s3, source, prefix, stop_at_first_partition=False, extra=extra)
        span = r["last_record_s"] - r["first_partition_s"]
        r["per_partition_ms"] = round(1000 * span / n, 1)
        out[name] = r
        s3.clear(prefix)
    if "local" in out:
        out["ray_overhead_ms"] = round(
            out["ray"]["per_partition_ms"] - out["local"]["per_partition_ms"], 1
        )
    return out


def phase_ray_tasks(m: int) -> dict:
    """``m`` no-op tasks through RayExecutor in a child: its overhead per task and RSS."""
    code = f"""
import json, resource, sys, time
from wdstream.write.executors.ray import RayExecutor
def _noop(task, progress=None):  # defined in __main__: Ray pickles it by value
    if progress is not None:
        progress(1, 1)
    return task
ex = RayExecutor(num_cpus=2)
seen = [0, 0]
def progress(s, b):
    seen[0] += s; seen[1] += 1
list(ex.map_unordered(_noop, range(16), progress=progress))  # warm the workers
seen = [0, 0]
t0 = time.monotonic()
n = sum(1 for _ in ex.map_unordered(_noop, range({m}), progress=progress))
dt = time.monotonic() - t0
ex.close()
print(json.dumps({{"tasks": n, "s": round(dt, 1), "per_task_ms": round(1000 * dt / n, 2),
                  "progress_samples": seen[0], "progress_updates": seen[1],
                  "driver_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                         / 1024)}}))
"""
    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_ADDRESS": "local"}
    res = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def median_runs(fn, repeat: int):
    runs = [fn() for _ in range(repeat)]
    return runs[0] if repeat == 1 else {"runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes", default="2000,10000", help="partitions for planning + resuming (comma-separated)"
    )
    ap.add_argument(
        "--seeded",
        default="100000",
        help="partitions for resuming + finishing from seeded state ('' to skip)",
    )
    ap.add_argument("--ray", type=int, default=0, help="partitions of the Ray comparison")
    ap.add_argument("--ray-tasks", type=int, default=0, help="no-op tasks through Ray")
    ap.add_argument(
        "--ray-only",
        action="store_true",
        help="with --ray: the Ray job only, not the local pool's beside it",
    )
    ap.add_argument("--ttfb", type=float, default=0.03)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument(
        "--folder-source",
        action="store_true",
        help="pass the folder as SOURCE instead of parquet --data-files DIR/*.parquet",
    )
    ap.add_argument(
        "--finish-only", action="store_true", help="with --seeded: only the finishing phase"
    )
    ap.add_argument(
        "--records-only",
        type=int,
        default=0,
        help="only seed N/2 records and time the listing and Output.records()",
    )
    args = ap.parse_args()
    if args.records_only:
        s3 = S3(args.ttfb)
        try:
            prefix = f"records-{args.records_only}"
            seeded = seed(s3, prefix, args.records_only, range(args.records_only // 2))
            print(
                json.dumps({"partitions": args.records_only, **seeded, **time_records(s3, prefix)})
            )
        finally:
            s3.close()
        return
    global FOLDER_SOURCE
    FOLDER_SOURCE = args.folder_source
    results: dict = {"ttfb": args.ttfb, "cpus": os.cpu_count()}
    s3 = S3(args.ttfb)
    try:
        for n in [int(x) for x in args.sizes.split(",") if x]:
            results[f"plan_resume_{n}"] = median_runs(
                lambda n=n: phase_plan_and_resume(s3, n, False), args.repeat
            )
            print(json.dumps(results[f"plan_resume_{n}"]), file=sys.stderr)
        for n in [int(x) for x in args.seeded.split(",") if x]:
            if not args.finish_only:
                results[f"plan_resume_{n}"] = phase_plan_and_resume(s3, n, True)
                print(json.dumps(results[f"plan_resume_{n}"]), file=sys.stderr)
            results[f"finish_{n}"] = phase_finish(s3, n)
            print(json.dumps(results[f"finish_{n}"]), file=sys.stderr)
        if args.ray:
            results[f"ray_{args.ray}"] = phase_ray(s3, args.ray, args.ray_only)
            print(json.dumps(results[f"ray_{args.ray}"]), file=sys.stderr)
    finally:
        s3.close()
    if args.ray_tasks:
        results[f"ray_tasks_{args.ray_tasks}"] = phase_ray_tasks(args.ray_tasks)
    path = os.path.join(ROOT, ".bench", "convert_scale.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))
    _ = statistics  # medians when --repeat > 1 are taken by hand from the runs


if __name__ == "__main__":
    main()
