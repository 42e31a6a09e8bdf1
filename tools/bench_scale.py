"""How the interval planner (wdstream/read/planner.py) scales: time and memory to plan one
worker's reads, the batch count, an elastic resume and the size of the resume state, at
10M..5B samples in shards of 10k, for world 2048 x 8 workers, batch 32, cache_size 1000;
also a mixed epoch (3 sources sharing the samples, stop mode) resumed onto 1536 x 8: its
batch count and rank 0 worker 0's reads of every source.

Each measurement runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own; the
growth is measured from that subprocess's RSS after imports, and compared with the same
measurement for a 1-shard plan.

    python tools/bench_scale.py                      # 10M,100M,1B,5B
    python tools/bench_scale.py --sizes 10M,100M
    python tools/bench_scale.py --quality            # mixing quality: windows vs buffer

Nothing is written to disk: shard sizes are built in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SHARD = 10_000
WORLD, WORKERS, BATCH, CACHE = 2048, 8, 32, 1000
NEW_WORLD = 1536
GOALS = {"reads_s": 2.0, "reads_mb": 150.0, "batches_s": 0.2, "resume_s": 5.0,
         "resume_mb": 300.0, "state_bytes": 4096}
UNITS = {"K": 10**3, "M": 10**6, "B": 10**9}


def parse_count(text: str) -> int:
    text = text.strip().upper()
    return int(float(text[:-1]) * UNITS[text[-1]]) if text[-1] in UNITS else int(text)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sizes(samples: int):
    import numpy as np

    n_shards = max(1, -(-samples // SHARD))
    sizes = np.full(n_shards, SHARD, dtype=np.int64)
    sizes[-1] = samples - SHARD * (n_shards - 1)
    return sizes


def _layout(world: int):
    from wdstream.read.planner import Layout

    return Layout(world=world, workers=WORKERS, batch_size=BATCH, cache_size=CACHE,
                  drop_last=True)


def _state(samples: int, n_shards: int, history) -> dict:
    """A loader state as ``Loader.state_dict`` writes it (one entry per run of the epoch)."""
    runs = [{**layout.to_dict(), "batches": k} for layout, k in history]
    return {"version": 1, "epoch": 0, "seed": 0, "shuffle": True, "samples": samples,
            "shards": n_shards, "runs": runs}


def measure(kind: str, samples: int) -> dict:
    """One measurement, in this process (run by a fresh subprocess per call)."""
    import numpy as np  # noqa: F401 - imported before the baseline

    from wdstream.read.planner import epoch_plan

    base = _rss_mb()
    t0 = time.perf_counter()
    sizes = _sizes(samples)
    old = _layout(WORLD)
    out: dict = {}
    if kind == "reads":
        plan = epoch_plan(sizes, seed=0, epoch=0).slot(old, 0, 0)
        out["reads"] = len(plan.reads)
    elif kind == "batches":
        out["batches"] = epoch_plan(sizes, seed=0, epoch=0).batches_per_rank(old)
    elif kind == "resume":
        k = epoch_plan(sizes, seed=0, epoch=0).batches_per_rank(old)
        t0 = time.perf_counter()  # the resume itself: from the state's history
        pool = epoch_plan(sizes, seed=0, epoch=0, history=[(old, k // 2)])
        plan = pool.slot(_layout(NEW_WORLD), 0, 0)
        out["reads"] = len(plan.reads)
    elif kind == "state":
        history = []
        pool = epoch_plan(sizes, seed=0, epoch=0)
        for i in range(10):  # ten resumes in one epoch, alternating world sizes
            layout = _layout(WORLD if i % 2 == 0 else NEW_WORLD)
            k = pool.batches_per_rank(layout) // 10
            history.append((layout, k))
            pool = pool.after_batches(layout, k)
        out["state_bytes"] = len(json.dumps(_state(samples, len(sizes), history)))
        t0 = time.perf_counter()  # a new worker's plan from that state
        pool = epoch_plan(sizes, seed=0, epoch=0, history=history)
        plan = pool.slot(_layout(NEW_WORLD), 0, 0)
        out["reads"] = len(plan.reads)
    elif kind == "mixed":  # 3 sources sharing the samples, stop mode, resumed halfway
        from wdstream.read.mixplan import mixed_epoch

        third = _sizes(max(1, samples // 3))
        sources = {"a": third, "b": third, "c": third}
        weights = {"a": 0.5, "b": 0.3, "c": 0.2}
        plan, _ = mixed_epoch(sources, weights, seed=0, epoch=0, layout=old)
        plan, pools = mixed_epoch(sources, weights, seed=0, epoch=0, layout=_layout(NEW_WORLD),
                                  history=[(old, plan.batches // 2)])
        out["batches"] = plan.batches
        out["reads"] = sum(len(pools[n].slot(plan.split(n), 0, 0).reads) for n in sources)
    else:
        raise ValueError(kind)
    out["seconds"] = time.perf_counter() - t0
    out["rss_mb"] = _rss_mb() - base
    return out


def run_one(kind: str, samples: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--one", kind, "--samples", str(samples)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def human(n: int) -> str:
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def table(counts: list[int]) -> None:
    base = {k: run_one(k, SHARD) for k in ("reads", "resume", "mixed")}
    print(f"world {WORLD} x {WORKERS} workers, batch {BATCH}, cache_size {CACHE}, shards of "
          f"{SHARD}, drop_last; resume {WORLD}x{WORKERS} -> {NEW_WORLD}x{WORKERS} stopped "
          f"halfway. RSS: peak growth in a fresh process over a 1-shard plan "
          f"(1-shard plan itself: reads +{base['reads']['rss_mb']:.1f} MB, "
          f"resume +{base['resume']['rss_mb']:.1f} MB).")
    head = (f"{'samples':>8} {'shards':>7} | {'reads s':>8} {'reads MB':>8} | "
            f"{'batches s':>9} | {'resume s':>8} {'resume MB':>9} | {'state B':>7} "
            f"{'10-res s':>8} | {'mixed s':>7} {'mixed MB':>8} | worst ratio to goal")
    print(head)
    print("-" * len(head))
    for n in counts:
        r = {k: run_one(k, n) for k in ("reads", "batches", "resume", "state", "mixed")}
        vals = {"reads_s": r["reads"]["seconds"],
                "reads_mb": r["reads"]["rss_mb"] - base["reads"]["rss_mb"],
                "batches_s": r["batches"]["seconds"], "resume_s": r["resume"]["seconds"],
                "resume_mb": r["resume"]["rss_mb"] - base["resume"]["rss_mb"],
                "state_bytes": r["state"]["state_bytes"]}
        ratios = {k: vals[k] / GOALS[k] for k in GOALS}
        worst = max(ratios, key=ratios.get)
        print(f"{human(n):>8} {len(_sizes(n)):>7} | {vals['reads_s']:8.3f} "
              f"{vals['reads_mb']:8.1f} | {vals['batches_s']:9.4f} | {vals['resume_s']:8.3f} "
              f"{vals['resume_mb']:9.1f} | {vals['state_bytes']:7d} "
              f"{r['state']['seconds']:8.3f} | {r['mixed']['seconds']:7.3f} "
              f"{r['mixed']['rss_mb'] - base['mixed']['rss_mb']:8.1f} | {worst} "
              f"{ratios[worst]:.3f}")
        print("         ratios to goals: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))


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
    parser.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.samples)))
    elif args.quality:
        quality()
    else:
        table([parse_count(s) for s in args.sizes.split(",")])


if __name__ == "__main__":
    main()
