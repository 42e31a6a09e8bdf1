"""How the reader scales with the number of samples: a worker's start-up, ``len(loader)``, an
elastic resume, the manifest's reader part and the resume state, at 10M..5B samples in shards
of 10k, for world 2048 x 8 workers, batch 32, cache_size 1000, drop_last, rank 0 worker 0.

It writes synthetic compact manifests (version 2; no shard files: nothing here reads a
sample) to a temp folder and measures through the reader's own path, each measurement in a
fresh subprocess so its peak RSS (``ru_maxrss``) is its own, as growth over the RSS after
imports and a warm-up loader on a 100-sample manifest (one-time set-up: torch, the decoder,
the tokenizer):

- ``manifest``: :func:`wdstream.format.shardtable.load_shard_table` (the reader part);
- ``first read``: ``make_loader`` (manifest, shard table), the dataset pickled to a worker
  and unpickled there, and that worker's slot plan up to its first read (the ShardRef and
  byte range it would open); RSS compared with the same run on a 1-shard manifest;
- ``len``: ``len(loader)`` on a built loader;
- ``resume``: ``load_state_dict`` of a 2048 x 8 state stopped halfway, on a 1536 x 8 loader,
  and one new worker's plan (dataset round trip included);
- ``state``: ``state_dict()`` bytes after 10 resumes in one epoch (alternating layouts);
- ``mixed``: 3 compact manifests mixed by weight (stop mode), resumed onto 1536 x 8: the
  batch count and rank 0 worker 0's plan of every source.

    python tools/bench_scale.py                      # 10M,100M,1B,5B
    python tools/bench_scale.py --sizes 10M,100M --repeat 3   # medians of 3 processes each
    python tools/bench_scale.py --quality            # mixing quality: windows vs buffer
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SHARD = 10_000
WORLD, WORKERS, BATCH, CACHE = 2048, 8, 32, 1000
NEW_WORLD = 1536
GOALS = {"first_s": 2.0, "first_mb": 150.0, "len_s": 0.2, "resume_s": 5.0,
         "resume_mb": 300.0, "manifest_s": 1.5, "manifest_mb": 300.0, "state_bytes": 4096}
UNITS = {"K": 10**3, "M": 10**6, "B": 10**9}


def parse_count(text: str) -> int:
    text = text.strip().upper()
    return int(float(text[:-1]) * UNITS[text[-1]]) if text[-1] in UNITS else int(text)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_manifest(folder: str, samples: int, name: str = "synthetic") -> str:
    """A compact (version 2) manifest of ``samples`` in shards of SHARD; returns its URL."""
    n = max(1, -(-samples // SHARD))
    last = samples - SHARD * (n - 1)
    pairs = [[SHARD, n - 1], [last, 1]] if n > 1 else [[last, 1]]
    names = "\n".join(f"shard-{i // 10_000:05d}-{i % 10_000:05d}.tar" for i in range(n))
    head = {"format": "wdstream-manifest", "version": 2, "samples": samples, "bytes": 0,
            "source": {"name": name}, "skipped": {}, "fields": ["txt"], "options": {},
            "details": "manifest.details.json",
            "shards": {"count": n, "names": names, "samples": pairs,
                       "index": {"suffix": ".idx"}}}
    os.makedirs(folder, exist_ok=True)
    url = os.path.join(folder, "manifest.json")
    with open(url, "w") as f:
        json.dump(head, f)
    return url


def _config(world: int, **kw):
    from wdstream.config import Config

    return Config(batch_size=BATCH, cache_size=CACHE, num_workers=WORKERS, drop_last=True,
                  persistent_workers=True, **kw)


def _worker_plan(dataset, worker: int = 0) -> tuple[int, object]:
    """What a DataLoader worker does before its first read: receive the dataset (pickled, as
    under spawn) and plan its slot; returns its reads and the first ShardRef."""
    ds = pickle.loads(pickle.dumps(dataset))
    if hasattr(ds, "parts"):
        mix, pools = ds.plan(ds.epoch)
        reads = [pools[n].slot(mix.split(n), ds.rank, worker).reads for n in mix.names]
        first = ds.parts[mix.names[0]].source.shards[reads[0][0].shard] if reads[0] else None
        return sum(len(r) for r in reads), first
    slot = ds.slot_plan(ds.epoch, worker)  # a 1-shard manifest leaves this slot empty
    return len(slot.reads), ds.source.shards[slot.reads[0].shard] if slot.reads else None


def _state(samples: int, n_shards: int, runs: list) -> dict:
    return {"version": 2, "epoch": 0, "seed": 0, "shuffle": True, "samples": samples,
            "shards": n_shards, "runs": runs}


def measure(kind: str, url: str) -> dict:
    """One measurement, in this process (run by a fresh subprocess per call)."""
    import numpy as np  # noqa: F401 - imported before the baseline

    import wdstream
    from wdstream.format.shardtable import load_shard_table
    from wdstream.read.tokenizer import load_tokenizer

    tok = load_tokenizer("byt5")
    with tempfile.TemporaryDirectory() as warm:  # imports and one-time set-up, not measured
        w = wdstream.make_loader(write_manifest(warm, 100), _config(1), tok, rank=0, world=1)
        _worker_plan(w.dataset)
        len(w)
        w.load_state_dict(w.state_dict())
    base = _rss_mb()
    out: dict = {}
    t0 = time.perf_counter()
    if kind == "manifest":
        _, table = load_shard_table(url)
        out["shards"] = len(table)
    elif kind == "first":
        loader = wdstream.make_loader(url, _config(WORLD), tok, rank=0, world=WORLD)
        out["reads"], first = _worker_plan(loader.dataset)
        out["url"] = first and os.path.basename(first.url)
    elif kind == "len":
        loader = wdstream.make_loader(url, _config(WORLD), tok, rank=0, world=WORLD)
        t0 = time.perf_counter()
        out["batches"] = len(loader)
    elif kind == "resume":
        loader = wdstream.make_loader(url, _config(WORLD), tok, rank=0, world=WORLD)
        k = len(loader)
        state = {**loader.state_dict(), "runs": [
            {**loader.dataset.layout().to_dict(), "batches": k // 2}]}
        new = wdstream.make_loader(url, _config(NEW_WORLD), tok, rank=0, world=NEW_WORLD)
        base = _rss_mb()
        t0 = time.perf_counter()
        new.load_state_dict(state)
        out["batches"] = len(new)
        out["reads"], _ = _worker_plan(new.dataset)
    elif kind == "state":
        state = None
        for i in range(10):  # ten runs of one epoch, alternating world sizes
            world = WORLD if i % 2 == 0 else NEW_WORLD
            loader = wdstream.make_loader(url, _config(world), tok, rank=0, world=world)
            if state is not None:
                loader.load_state_dict(state)
            state = loader.state_dict()
            state["runs"][-1]["batches"] = len(loader) // 10  # as if it ran that far
        out["state_bytes"] = len(json.dumps(state))
        t0 = time.perf_counter()  # a new worker's plan from that state
        loader = wdstream.make_loader(url, _config(NEW_WORLD), tok, rank=0, world=NEW_WORLD)
        loader.load_state_dict(state)
        out["reads"], _ = _worker_plan(loader.dataset)
    elif kind == "mixed":  # url: a folder holding a, b and c
        sources = {n: os.path.join(url, n) for n in "abc"}
        cfg = _config(WORLD, weights={"a": 0.5, "b": 0.3, "c": 0.2})
        loader = wdstream.make_loader(sources, cfg, tok, rank=0, world=WORLD)
        state = {**loader.state_dict()}
        state["runs"][-1]["batches"] = len(loader) // 2
        new = wdstream.make_loader(sources, cfg, tok, rank=0, world=NEW_WORLD)
        new.load_state_dict(state)
        out["batches"] = len(new)
        out["reads"], _ = _worker_plan(new.dataset)
    else:
        raise ValueError(kind)
    out["seconds"] = time.perf_counter() - t0
    out["rss_mb"] = _rss_mb() - base
    return out


REPEAT = 1


def run_one(kind: str, url: str) -> dict:
    """The measurement in REPEAT fresh subprocesses: the median of each figure."""
    import statistics

    cmd = [sys.executable, os.path.abspath(__file__), "--one", kind, "--url", url]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs = []
    for _ in range(REPEAT):
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    out = dict(runs[0])
    for key in ("seconds", "rss_mb"):
        out[key] = statistics.median(r[key] for r in runs)
    return out


def human(n: int) -> str:
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def table(counts: list[int], folder: str) -> None:
    one = write_manifest(os.path.join(folder, "one"), SHARD)
    base = {k: run_one(k, one) for k in ("first", "resume", "manifest")}
    print(f"world {WORLD} x {WORKERS} workers, batch {BATCH}, cache_size {CACHE}, shards of "
          f"{SHARD}, drop_last; resume {WORLD}x{WORKERS} -> {NEW_WORLD}x{WORKERS} stopped "
          f"halfway. RSS: peak growth in a fresh process, less the same run on a 1-shard "
          f"manifest (first read +{base['first']['rss_mb']:.1f} MB, resume "
          f"+{base['resume']['rss_mb']:.1f} MB, manifest +{base['manifest']['rss_mb']:.1f} MB)")
    head = (f"{'samples':>8} {'shards':>7} {'manifest':>8} | {'first s':>7} {'first MB':>8} | "
            f"{'len s':>6} | {'resume s':>8} {'resume MB':>9} | {'load s':>6} {'load MB':>7} | "
            f"{'state B':>7} | {'mixed s':>7} {'mixed MB':>8} | worst ratio to goal")
    print(head)
    print("-" * len(head))
    for n in counts:
        url = write_manifest(os.path.join(folder, human(n)), n)
        mixed = os.path.join(folder, human(n) + "-mix")
        for name in "abc":
            write_manifest(os.path.join(mixed, name), max(1, n // 3), name=name)
        r = {k: run_one(k, url) for k in ("manifest", "first", "len", "resume", "state")}
        r["mixed"] = run_one("mixed", mixed)
        vals = {"first_s": r["first"]["seconds"],
                "first_mb": r["first"]["rss_mb"] - base["first"]["rss_mb"],
                "len_s": r["len"]["seconds"], "resume_s": r["resume"]["seconds"],
                "resume_mb": r["resume"]["rss_mb"] - base["resume"]["rss_mb"],
                "manifest_s": r["manifest"]["seconds"],
                "manifest_mb": r["manifest"]["rss_mb"] - base["manifest"]["rss_mb"],
                "state_bytes": r["state"]["state_bytes"]}
        ratios = {k: vals[k] / GOALS[k] for k in GOALS}
        worst = max(ratios, key=ratios.get)
        size_mb = os.path.getsize(url) / 1e6
        print(f"{human(n):>8} {r['manifest']['shards']:>7} {size_mb:6.1f}MB | "
              f"{vals['first_s']:7.3f} {vals['first_mb']:8.1f} | {vals['len_s']:6.4f} | "
              f"{vals['resume_s']:8.3f} {vals['resume_mb']:9.1f} | {vals['manifest_s']:6.3f} "
              f"{vals['manifest_mb']:7.1f} | {vals['state_bytes']:7d} | "
              f"{r['mixed']['seconds']:7.3f} {r['mixed']['rss_mb']:8.1f} | {worst} "
              f"{ratios[worst]:.3f}")
        print("         ratios to goals: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
        shutil.rmtree(mixed)
        os.remove(url)


# -- mixing quality --------------------------------------------------------------------------

def _pair_rate(shards_of_batch) -> float:
    """Fraction of the pairs of samples in a batch that come from the same shard."""
    import numpy as np

    _, counts = np.unique(shards_of_batch, return_counts=True)
    n = len(shards_of_batch)
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


def _stats(name: str, order, shard_of, batch: int, first_batch_reads: int) -> dict:
    """``order[e]``: read position of the item emitted ``e``-th."""
    import numpy as np

    dist = np.abs(np.arange(len(order)) - order)
    emitted_shards = shard_of[order]
    n_batches = len(order) // batch
    rates = [_pair_rate(emitted_shards[i * batch:(i + 1) * batch]) for i in range(n_batches)]
    distinct = [len(set(emitted_shards[i * batch:(i + 1) * batch].tolist()))
                for i in range(n_batches)]
    return {"method": name, "mean": float(dist.mean()), "p50": float(np.median(dist)),
            "p90": float(np.percentile(dist, 90)), "p99": float(np.percentile(dist, 99)),
            "max": int(dist.max()), "same_shard_pairs": float(np.mean(rates)),
            "shards_per_batch": float(np.mean(distinct)), "first_batch_reads": first_batch_reads}


def _buffer_first_batch_reads(n: int, cache: int, seed: int, batch: int) -> int:
    """Items today's buffer_shuffle reads before it has emitted a whole first batch."""
    buffer_shuffle = _buffer_shuffle()
    read = 0

    def source():
        nonlocal read
        for i in range(n):
            read += 1
            yield i

    for emitted, _ in enumerate(buffer_shuffle(source(), cache, seed), start=1):
        if emitted == batch:
            return read
    return read


def _buffer_shuffle():
    try:
        from wdstream.read.shuffle import buffer_shuffle
    except ImportError:
        from wdstream.shuffle import buffer_shuffle
    return buffer_shuffle


def _interleaved(shard_of, n_shards: int, per_shard: int, lanes: int, block: int):
    """What-if read order: groups of ``lanes`` consecutive shards of the span read round robin
    in blocks of ``block`` samples (not what the planner does; see the quality table)."""
    import numpy as np

    order = []
    for g in range(0, n_shards, lanes):
        group = [np.arange(i * per_shard, (i + 1) * per_shard)
                 for i in range(g, min(g + lanes, n_shards))]
        for t in range(0, per_shard, block):
            order.extend(np.concatenate([lane[t:t + block] for lane in group]))
    return shard_of[np.asarray(order)]


def quality(n_shards: int = 100, per_shard: int = 1000, cache: int = CACHE, batch: int = BATCH,
            seeds: int = 5) -> None:
    """|emit - read| and same-shard pairs per batch: windows vs buffer_shuffle vs a full
    shuffle of the epoch (unbounded memory), one slot, averaged over ``seeds`` epochs."""
    import numpy as np

    from wdstream.read.planner import Layout, epoch_plan

    buffer_shuffle = _buffer_shuffle()
    n = n_shards * per_shard
    rows: dict[str, list[dict]] = {}
    for epoch in range(seeds):
        pool = epoch_plan([per_shard] * n_shards, seed=0, epoch=epoch)
        plan = pool.slot(Layout(1, 1, batch, cache), 0, 0)
        shard_of = np.concatenate([np.full(r.count, r.shard) for r in plan.reads])
        windows = plan.emission()
        first = next(b for _, a, b in plan.windows() if b >= batch)
        seed = plan.seed
        buffer = np.fromiter(buffer_shuffle(range(n), cache, seed), dtype=np.int64, count=n)
        full = np.random.default_rng(seed).permutation(n)
        runs = [("windows", windows, first, shard_of)]
        for lanes in (4, 8):
            what_if = _interleaved(shard_of, n_shards, per_shard, lanes, max(1, cache // lanes))
            runs.append((f"what-if {lanes} lanes", windows, first, what_if))
        for name, order, first_reads, shards in (
                *runs,
                ("buffer_shuffle", buffer, _buffer_first_batch_reads(n, cache, seed, batch),
                 shard_of),
                ("full shuffle", full, n, shard_of)):
            rows.setdefault(name, []).append(_stats(name, order, shards, batch, first_reads))
    print(f"mixing quality: {n_shards} shards x {per_shard} samples, cache_size {cache}, batch "
          f"{batch}, one slot, mean of {seeds} epochs. 'what-if N lanes': the same windows over "
          f"a read order that interleaves N shards in blocks of cache_size/N (a possible "
          f"follow-up, simulated here, not implemented by the planner)")
    head = (f"{'method':>18} | {'|emit-read| mean':>16} {'p50':>7} {'p90':>7} {'p99':>7} "
            f"{'max':>7} | {'same-shard pairs':>16} {'shards/batch':>12} | "
            f"{'reads before 1st batch':>22}")
    print(head)
    print("-" * len(head))
    for name, rs in rows.items():
        m = {k: float(np.mean([r[k] for r in rs])) for k in rs[0] if k != "method"}
        print(f"{name:>18} | {m['mean']:16.1f} {m['p50']:7.0f} {m['p90']:7.0f} {m['p99']:7.0f} "
              f"{m['max']:7.0f} | {m['same_shard_pairs']:16.3f} {m['shards_per_batch']:12.2f} | "
              f"{m['first_batch_reads']:22.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10M,100M,1B,5B")
    parser.add_argument("--quality", action="store_true", help="measure mixing quality only")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=1,
                        help="fresh subprocesses per measurement; medians are printed")
    parser.add_argument("--tmp", help="folder for the synthetic manifests (default: a temp "
                                      "folder, removed at the end)")
    args = parser.parse_args(argv)
    global REPEAT
    REPEAT = max(1, args.repeat)
    if args.one:
        print(json.dumps(measure(args.one, args.url)))
    elif args.quality:
        quality()
    else:
        folder = args.tmp or tempfile.mkdtemp(prefix="wdstream-scale-")
        try:
            table([parse_count(s) for s in args.sizes.split(",")], folder)
        finally:
            if not args.tmp:
                shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
