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
    python tools/bench_scale.py --quality            # shuffle quality (issue 21's table)
    python tools/bench_scale.py --quality --plot docs/img/shuffle-quality.png
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
GOALS = {
    "first_s": 2.0,
    "first_mb": 150.0,
    "len_s": 0.2,
    "resume_s": 5.0,
    "resume_mb": 300.0,
    "manifest_s": 1.5,
    "manifest_mb": 300.0,
    "state_bytes": 4096,
}
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
    head = {
        "format": "wdstream-manifest",
        "version": 2,
        "samples": samples,
        "bytes": 0,
        "source": {"name": name},
        "skipped": {},
        "fields": ["txt"],
        "options": {},
        "details": "manifest.details.json",
        "shards": {"count": n, "names": names, "samples": pairs, "index": {"suffix": ".idx"}},
    }
    os.makedirs(folder, exist_ok=True)
    url = os.path.join(folder, "manifest.json")
    with open(url, "w") as f:
        json.dump(head, f)
    return url


def _config(world: int, **kw):
    from wdstream.config import Config

    return Config(
        batch_size=BATCH,
        cache_size=CACHE,
        num_workers=WORKERS,
        drop_last=True,
        persistent_workers=True,
        **kw,
    )


def _worker_plan(dataset, worker: int = 0) -> tuple[int, object]:
    """What a DataLoader worker does before its first read: receive the dataset (pickled, as
    under spawn) and plan its slot; returns its reads and the first ShardRef."""
    from wdstream.read.datasets import MixedDataset

    ds = pickle.loads(pickle.dumps(dataset))
    if isinstance(ds, MixedDataset):
        mix, pools = ds.plan(ds.epoch)
        reads = [pools[n].slot(mix.split(n), ds.rank, worker).reads for n in mix.names]
        first = ds.sources[mix.names[0]].shards[reads[0][0].shard] if reads[0] else None
        return sum(len(r) for r in reads), first
    slot = ds.slot_plan(ds.epoch, worker)  # a 1-shard manifest leaves this slot empty
    return len(slot.reads), ds.source.shards[slot.reads[0].shard] if slot.reads else None


def _state(samples: int, n_shards: int, runs: list) -> dict:
    return {
        "version": 2,
        "epoch": 0,
        "seed": 0,
        "shuffle": True,
        "samples": samples,
        "shards": n_shards,
        "runs": runs,
    }


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
        state = {
            **loader.state_dict(),
            "runs": [{**loader.dataset.layout().to_dict(), "batches": k // 2}],
        }
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
    print(
        f"world {WORLD} x {WORKERS} workers, batch {BATCH}, cache_size {CACHE}, shards of "
        f"{SHARD}, drop_last; resume {WORLD}x{WORKERS} -> {NEW_WORLD}x{WORKERS} stopped "
        f"halfway. RSS: peak growth in a fresh process, less the same run on a 1-shard "
        f"manifest (first read +{base['first']['rss_mb']:.1f} MB, resume "
        f"+{base['resume']['rss_mb']:.1f} MB, manifest +{base['manifest']['rss_mb']:.1f} MB)"
    )
    head = (
        f"{'samples':>8} {'shards':>7} {'manifest':>8} | {'first s':>7} {'first MB':>8} | "
        f"{'len s':>6} | {'resume s':>8} {'resume MB':>9} | {'load s':>6} {'load MB':>7} | "
        f"{'state B':>7} | {'mixed s':>7} {'mixed MB':>8} | worst ratio to goal"
    )
    print(head)
    print("-" * len(head))
    for n in counts:
        url = write_manifest(os.path.join(folder, human(n)), n)
        mixed = os.path.join(folder, human(n) + "-mix")
        for name in "abc":
            write_manifest(os.path.join(mixed, name), max(1, n // 3), name=name)
        r = {k: run_one(k, url) for k in ("manifest", "first", "len", "resume", "state")}
        r["mixed"] = run_one("mixed", mixed)
        vals = {
            "first_s": r["first"]["seconds"],
            "first_mb": r["first"]["rss_mb"] - base["first"]["rss_mb"],
            "len_s": r["len"]["seconds"],
            "resume_s": r["resume"]["seconds"],
            "resume_mb": r["resume"]["rss_mb"] - base["resume"]["rss_mb"],
            "manifest_s": r["manifest"]["seconds"],
            "manifest_mb": r["manifest"]["rss_mb"] - base["manifest"]["rss_mb"],
            "state_bytes": r["state"]["state_bytes"],
        }
        ratios = {k: vals[k] / GOALS[k] for k in GOALS}
        worst = max(ratios, key=ratios.get)
        size_mb = os.path.getsize(url) / 1e6
        print(
            f"{human(n):>8} {r['manifest']['shards']:>7} {size_mb:6.1f}MB | "
            f"{vals['first_s']:7.3f} {vals['first_mb']:8.1f} | {vals['len_s']:6.4f} | "
            f"{vals['resume_s']:8.3f} {vals['resume_mb']:9.1f} | {vals['manifest_s']:6.3f} "
            f"{vals['manifest_mb']:7.1f} | {vals['state_bytes']:7d} | "
            f"{r['mixed']['seconds']:7.3f} {r['mixed']['rss_mb']:8.1f} | {worst} "
            f"{ratios[worst]:.3f}"
        )
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


def _batch_stats(emitted_shards, batch: int) -> tuple[float, float]:
    """``(shards per batch, same-shard pair rate)`` over the whole batches of an emission."""
    import numpy as np

    n = len(emitted_shards) // batch
    parts = [emitted_shards[i * batch : (i + 1) * batch] for i in range(n)]
    return (
        float(np.mean([len(np.unique(p)) for p in parts])),
        float(np.mean([_pair_rate(p) for p in parts])),
    )


def _buffer_shuffle():
    from wdstream.read.shuffle import buffer_shuffle

    return buffer_shuffle


#: The cases of issue 21's goal table: (name, shard sizes, layout args, slots measured).
QUALITY_CASES = {
    "laion": (
        "LAION proportions: 480 shards of 10k, 16 ranks (a slot spans ~30 shards)",
        [10_000] * 480,
        dict(world=16, workers=1),
        [(3, 0), (11, 0)],
    ),
    "30x10k": (
        "30 shards of 10k, one slot (300k samples, as a user tried it)",
        [10_000] * 30,
        dict(world=1, workers=1),
        [(0, 0)],
    ),
    "docs": ("100 shards of 1,000, one slot", [1_000] * 100, dict(world=1, workers=1), [(0, 0)]),
    "peers": (
        "bench_peers' dataset: 8 shards of 175, 2 workers (a slot spans ~4 shards)",
        [175] * 8,
        dict(world=1, workers=2),
        [(0, 0), (0, 1)],
    ),
    "small": (
        "10M samples (1,000 shards of 10k), 2048 x 8: about 610 samples a slot",
        [10_000] * 1000,
        dict(world=2048, workers=8),
        [(r, w) for r in (5, 700, 1500, 2047) for w in (0, 3, 7)],
    ),
}


def _slot_shards(sizes, layout, rank, worker, epoch):
    """The shard of every sample a slot emits, in emission order, and of its reads in read
    order, and the slot's number of reads."""
    import numpy as np

    from wdstream.read.planner import epoch_plan

    plan = epoch_plan(sizes, seed=0, epoch=epoch, layout=layout).slot(layout, rank, worker)
    read_order = np.concatenate([np.full(r.count, r.shard) for r in plan.reads])
    return read_order[plan.emission()], read_order, len(plan.reads), plan.seed


def quality_case(key: str, cache: int = 1000, batch: int = 32, epochs: int = 2) -> dict:
    """Shards per batch and same-shard pairs of every method on one case, averaged over the
    case's slots and ``epochs`` epochs; plus the plan's reads per 1,000 samples."""
    import numpy as np

    from wdstream.read.planner import Layout

    _, sizes, args, slots = QUALITY_CASES[key]
    buffer_shuffle = _buffer_shuffle()
    rows: dict[str, list] = {}
    for epoch in range(epochs):
        for rank, worker in slots:
            for name, lanes in (
                ("lanes 32 (default)", 32),
                ("lanes 64", 64),
                ("windows (0.1.x)", 0),
            ):
                layout = Layout(batch_size=batch, cache_size=cache, lanes=lanes, **args)
                emitted, read, n_reads, seed = _slot_shards(sizes, layout, rank, worker, epoch)
                rows.setdefault(name, []).append(
                    (*_batch_stats(emitted, batch), 1000 * n_reads / len(read))
                )
                if lanes == 0:  # the old order's slot, shuffled the other ways
                    order = np.fromiter(
                        buffer_shuffle(range(len(read)), cache, seed),
                        dtype=np.int64,
                        count=len(read),
                    )
                    rows.setdefault("buffer_shuffle", []).append(
                        (*_batch_stats(read[order], batch), float("nan"))
                    )
                    full = np.random.default_rng(seed).permutation(len(read))
                    rows.setdefault("full shuffle of the slot", []).append(
                        (*_batch_stats(read[full], batch), float("nan"))
                    )
    return {
        name: tuple(float(np.mean([r[i] for r in rs])) for i in range(3))
        for name, rs in rows.items()
    }


def quality(cases=("laion", "30x10k", "docs", "small"), plot: str | None = None) -> None:
    """The shuffle-quality table of issue 21 (and, with ``plot``, shards per batch against
    cache_size for the LAION case): deterministic figures, no timing."""
    print(
        "shuffle quality: batch 32, cache_size 1000, 2 epochs; 'reads' = contiguous runs "
        "the plan reads per 1,000 samples (the fetcher joins runs that continue each other)"
    )
    print("| case | method | shards per batch | same-shard pairs | reads per 1k samples |")
    print("|---|---|---|---|---|")
    for key in cases:
        title = QUALITY_CASES[key][0]
        for name, (spb, pairs, reads) in quality_case(key).items():
            shown = "" if reads != reads else f"{reads:.1f}"
            print(f"| {title} | {name} | {spb:.2f} | {pairs:.3f} | {shown} |")
            title = ""
    if plot:
        _quality_plot(plot)


def delivered(
    samples: int = 300_000, per_shard: int = 10_000, folder: str | None = None, **overrides
) -> dict:
    """Issue 21's user test: ``samples`` synthetic text samples in shards of ``per_shard``
    (``wdstream synth --modalities text --max-samples-per-shard``), read by ``make_loader``
    with the default settings but batch 32 and 0 workers; shards per batch and same-shard
    pairs of the batches it delivers, next to the planner's simulation of the same slot."""
    import numpy as np

    import wdstream
    from wdstream.write.sources.synthetic import write_synthetic

    tmp = folder or tempfile.mkdtemp(prefix="wdstream-delivered-")
    try:
        if not os.path.exists(os.path.join(tmp, "manifest.json")):
            write_synthetic(tmp, samples, modalities=("text",), max_samples_per_shard=per_shard)
        config = wdstream.load_config(batch_size=32, num_workers=0, **overrides)
        loader = wdstream.make_loader(tmp, config)
        shards = [np.array([int(k.split("_")[1]) // per_shard for k in b["keys"]]) for b in loader]
        spb = float(np.mean([len(np.unique(b)) for b in shards]))
        pairs = float(np.mean([_pair_rate(b) for b in shards]))
        (row,) = loader.stats()
        return {
            "batches": len(shards),
            "shards_per_batch": spb,
            "same_shard_pairs": pairs,
            "get_requests": row["get_requests"],
            "index_requests": row["index_requests"],
            "mean_request_bytes": row["bytes_read"] / max(1, row["get_requests"]),
        }
    finally:
        if folder is None:
            shutil.rmtree(tmp, ignore_errors=True)


def _quality_plot(path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    caches = [100, 250, 500, 1000, 2000, 4000]
    lines: dict[str, list] = {}
    for cache in caches:
        for name, (spb, _, _) in quality_case("laion", cache=cache, epochs=1).items():
            lines.setdefault(name, []).append(spb)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, ys in lines.items():
        ax.plot(caches, ys, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xticks(caches, [str(c) for c in caches])
    ax.set_xlabel("cache_size (samples a worker holds to shuffle)")
    ax.set_ylabel("distinct shards per batch of 32")
    ax.set_title("Shards per batch at LAION proportions (a slot spans ~30 shards of 10k)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10M,100M,1B,5B")
    parser.add_argument("--quality", action="store_true", help="measure mixing quality only")
    parser.add_argument(
        "--plot", help="with --quality: write shards per batch against cache_size to this PNG"
    )
    parser.add_argument(
        "--delivered",
        action="store_true",
        help="with --quality: also read 300k synthetic text samples in 30 "
        "shards with make_loader and measure the delivered batches",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="fresh subprocesses per measurement; medians are printed",
    )
    parser.add_argument(
        "--tmp",
        help="folder for the synthetic manifests (default: a temp folder, removed at the end)",
    )
    args = parser.parse_args(argv)
    global REPEAT
    REPEAT = max(1, args.repeat)
    if args.one:
        print(json.dumps(measure(args.one, args.url)))
    elif args.quality:
        quality(plot=args.plot)
        if args.delivered:
            for lanes in (32, 1):
                got = delivered(shuffle_lanes=lanes)
                print(
                    f"delivered by make_loader, shuffle_lanes {lanes}: "
                    f"{got['shards_per_batch']:.2f} shards per batch, "
                    f"{got['same_shard_pairs']:.3f} same-shard pairs over {got['batches']} "
                    f"batches; {got['get_requests']} GETs ({got['index_requests']} of "
                    f"indexes), {got['mean_request_bytes'] / 1e6:.2f} MB each"
                )
    else:
        folder = args.tmp or tempfile.mkdtemp(prefix="wdstream-scale-")
        try:
            table([parse_count(s) for s in args.sizes.split(",")], folder)
        finally:
            if not args.tmp:
                shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
