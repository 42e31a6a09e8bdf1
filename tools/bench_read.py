"""Reading benchmark (issue 3): wdstream's loader against the naive pipelines and the limits.

On the same data (>= 2,000 samples with real-size JPEG images, FLAC audio and a caption), built
once and cached under ``.bench/read-<N>/`` (parquet rows, and the same rows converted to
wdstream shards), in one process:

  (a) ``wdstream.make_loader`` on the manifest;
  (b) a plain webdataset pipeline: ``wds.WebDataset(urls).shuffle().decode("pil")`` then the
      naive decode (full-size RGB decode, resize, crop, copy to tensor, normalise out of place;
      soundfile + torchaudio resample without a kernel cache) and the same collate;
  (c) Hugging Face ``datasets`` streaming from the parquet (the seed project's approach), with
      the naive decode of (b);
  (d) raw tar iteration with no decode (the I/O limit);
  (e) wdstream's decode + collate alone over sample bytes already in memory (the compute limit);

each at 0 and 2 DataLoader workers. Prints samples/s, the ratios a/b, a/c, a/e, and (a)'s
memory (PSS: the process and its workers, shared pages counted once) after each of 3 epochs.
Then (issue 4) exact mode against streaming mode in turns, and the time to the first batch
after resuming halfway through the epoch.

    .venv/bin/python tools/bench_read.py              # 2,000 samples
    .venv/bin/python tools/bench_read.py --samples 256 --workers 0   # a quick run
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHUFFLE_BUFFER = 1000


# --------------------------------------------------------------------------- data


def build_data(n: int, folder: str, rebuild: bool = False) -> tuple[str, str]:
    """Parquet rows under ``folder/parquet`` and the same rows as shards under ``folder/shards``."""
    import shutil

    parquet, shards = os.path.join(folder, "parquet"), os.path.join(folder, "shards")
    done = os.path.join(folder, "DONE")
    if os.path.exists(done) and not rebuild:
        return parquet, shards
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    from wdstream.demo.data import build_parquet_dataset

    t = time.perf_counter()
    build_parquet_dataset(
        parquet,
        n,
        n_files=8,
        image_size=(400, 1000),
        audio_seconds=2.0,
        audio_format="FLAC",
        seed=1,
    )
    print(f"built {n} parquet rows in {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    from wdstream.write.convert import convert

    manifest = convert(parquet, shards, max_samples_per_shard=250, quiet=True, workers=2)
    print(
        f"converted to {len(manifest.shards)} shards in {time.perf_counter() - t:.0f} s", flush=True
    )
    with open(done, "w") as f:
        f.write("ok\n")
    return parquet, shards


def shard_urls(shards: str) -> list[str]:
    from wdstream.format.manifest import load_manifest

    return load_manifest(shards).shard_urls()


# --------------------------------------------------------------------------- naive decode


def naive_image(data_or_img, size: int, mean, std) -> torch.Tensor:
    from PIL import Image

    img = (
        data_or_img if isinstance(data_or_img, Image.Image) else Image.open(io.BytesIO(data_or_img))
    )
    img = img.convert("RGB")  # full-size decode
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize(
        (max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC
    )
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.tensor(np.array(img)).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def naive_audio(data: bytes, rate: int, length: int) -> tuple[torch.Tensor, int]:
    import soundfile as sf
    import torchaudio

    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    wave = torch.from_numpy(x.mean(axis=1))
    if sr != rate:
        wave = torchaudio.functional.resample(wave, sr, rate)
    n = min(length, wave.shape[0])
    out = torch.zeros(length)
    out[:n] = wave[:n]
    return out, n


def naive_decode(key: str, text: str, image, audio: bytes | None, config, tokenizer) -> dict:
    ids = tokenizer(text, truncation=True, max_length=config.max_text_length)["input_ids"]
    pv = (
        naive_image(image, config.vision_dim, config.image_mean, config.image_std)
        if image is not None
        else None
    )
    au, n = (
        naive_audio(audio, config.audio_sample_rate, config.max_audio_length)
        if audio is not None
        else (None, 0)
    )
    return {
        "key": key,
        "input_ids": torch.tensor(ids),
        "pixel_values": pv,
        "audio": au,
        "audio_length": n,
        "source": None,
        "synthetic": False,
    }


def _wds_sample(sample: dict, config, tokenizer) -> dict:
    from wdstream.format.schema import find_member

    image = find_member(sample, "image")
    audio = find_member(sample, "audio")
    text = sample.get("txt")
    text = text.decode() if isinstance(text, bytes) else text
    return naive_decode(
        sample["__key__"],
        text,
        image[1] if image else None,
        audio[1] if audio else None,
        config,
        tokenizer,
    )


def _hf_row(row: dict, config, tokenizer) -> dict:
    image = row.get("image")
    audio = row.get("audio")
    return {
        "sample": naive_decode(
            str(row.get("id")),
            row["text"],
            image["bytes"] if image else None,
            audio["bytes"] if audio else None,
            config,
            tokenizer,
        )
    }


# --------------------------------------------------------------------------- pipelines


def _dl(dataset, workers: int, **kw):
    kw.setdefault("batch_size", None)
    if workers:
        kw.update(num_workers=workers, persistent_workers=False, prefetch_factor=2)
    return torch.utils.data.DataLoader(dataset, **kw)


def pipe_a(shards, parquet, config, tokenizer, workers):
    import wdstream

    loader = wdstream.make_loader(shards, config.replace(num_workers=workers), tokenizer)
    try:
        yield from loader
    finally:
        loader.close()


def pipe_b(shards, parquet, config, tokenizer, workers):
    import webdataset as wds

    from wdstream.read.collate import collate

    fn = functools.partial(_wds_sample, config=config, tokenizer=tokenizer)
    ds = (
        wds.WebDataset(shard_urls(shards), shardshuffle=False, empty_check=False)
        .shuffle(SHUFFLE_BUFFER)
        .decode("pil")
        .map(fn)
        .batched(
            config.batch_size,
            collation_fn=functools.partial(collate, config=config, pad_token_id=0),
            partial=False,
        )
    )
    yield from wds.WebLoader(
        ds,
        batch_size=None,
        num_workers=workers,
        **({"persistent_workers": False} if workers else {}),
    )


def pipe_c(shards, parquet, config, tokenizer, workers):
    import datasets

    from wdstream.read.collate import collate

    ds = datasets.load_dataset(parquet, split="train", streaming=True)
    ds = ds.cast_column("image", datasets.Image(decode=False))
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    ds = ds.shuffle(seed=0, buffer_size=SHUFFLE_BUFFER)
    ds = ds.map(
        functools.partial(_hf_row, config=config, tokenizer=tokenizer),
        remove_columns=["image", "audio", "text", "id", "label"],
    )
    col = functools.partial(collate, config=config, pad_token_id=0)
    yield from _dl(
        ds,
        workers,
        batch_size=config.batch_size,
        drop_last=True,
        collate_fn=lambda rows: col([r["sample"] for r in rows]),
    )


class _RawTar(torch.utils.data.IterableDataset):
    def __init__(self, urls):
        self.urls = urls

    def __iter__(self):
        from wdstream.format.tario import group_samples, iter_members

        info = torch.utils.data.get_worker_info()
        urls = self.urls if info is None else self.urls[info.id :: info.num_workers]
        for url in urls:
            with open(url, "rb") as f:
                yield from group_samples(iter_members(f, name=url))


def pipe_d(shards, parquet, config, tokenizer, workers):
    yield from _dl(
        _RawTar(shard_urls(shards)),
        workers,
        batch_size=config.batch_size,
        collate_fn=lambda s: {"keys": [x["__key__"] for x in s]},
        drop_last=True,
    )


class _InMemory(torch.utils.data.Dataset):
    def __init__(self, samples, decoder):
        self.samples, self.decoder = samples, decoder

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.decoder(self.samples[i])


_MEMORY: list[dict] = []


def pipe_e(shards, parquet, config, tokenizer, workers):
    from wdstream.read.collate import collate
    from wdstream.read.decode import SampleDecoder

    if not _MEMORY:  # main() loads it before timing; this is for direct calls
        _MEMORY.extend(_RawTar(shard_urls(shards)))
    decoder = SampleDecoder(config, tokenizer)
    col = functools.partial(collate, config=config, pad_token_id=0)
    yield from _dl(
        _InMemory(_MEMORY, decoder),
        workers,
        batch_size=config.batch_size,
        collate_fn=col,
        drop_last=True,
        shuffle=False,
    )


PIPES = {
    "a": ("wdstream.make_loader", pipe_a),
    "b": ("plain webdataset, naive decode", pipe_b),
    "c": ("HF datasets streaming parquet, naive decode", pipe_c),
    "d": ("raw tar iteration, no decode (I/O limit)", pipe_d),
    "e": ("wdstream decode+collate over bytes in memory (compute limit)", pipe_e),
}


# --------------------------------------------------------------------------- measuring


def pss_mb(pid: int | None = None) -> float:
    """Proportional set size of ``pid`` (default: this process) plus its child processes, in
    MiB: resident memory with pages shared between the parent and its forked workers counted
    once, not once per process."""
    pid = pid or os.getpid()
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, StopIteration):
            continue
    return total / 1024


def run_one(name: str, shards, parquet, config, tokenizer, workers: int) -> tuple[float, int]:
    fn = PIPES[name][1]
    t = time.perf_counter()
    n = 0
    for batch in fn(shards, parquet, config, tokenizer, workers):
        n += len(batch["keys"])
    return n / (time.perf_counter() - t), n


def memory_over_epochs(shards, config, tokenizer, workers: int, epochs: int = 3) -> list[float]:
    import gc

    import wdstream

    gc.collect()
    out = [pss_mb()]  # before the loader exists
    loader = wdstream.make_loader(shards, config.replace(num_workers=workers), tokenizer)
    try:
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            t, n = time.perf_counter(), 0
            for batch in loader:
                n += len(batch["keys"])
            gc.collect()
            out.append(pss_mb())
            print(
                f"  (a) epoch {epoch}: {n / (time.perf_counter() - t):.1f} samples/s "
                f"(workers={workers}), {out[-1]:.0f} MiB",
                flush=True,
            )
    finally:
        loader.close()
    return out


def exact_vs_streaming(shards, config, tokenizer, workers: int, rounds: int = 3):
    """Issue 4: exact mode against streaming mode (resampled shards, nominal epoch from the
    manifest), in turns A B A B ... so machine noise hits both alike. Returns medians."""
    import statistics

    import wdstream

    rates: dict[str, list[float]] = {"exact": [], "streaming": []}
    for _ in range(rounds):
        for mode in ("exact", "streaming"):
            cfg = config.replace(
                num_workers=workers, exact=(mode == "exact"), persistent_workers=False
            )
            loader = wdstream.make_loader(shards, cfg, tokenizer)
            t, n = time.perf_counter(), 0
            for batch in loader:
                n += len(batch["keys"])
            rates[mode].append(n / (time.perf_counter() - t))
            loader.close()
    return {m: statistics.median(v) for m, v in rates.items()}, rates


def resume_time_to_first_batch(shards, config, tokenizer, workers: int) -> tuple[float, float]:
    """Issue 4: time to the first batch of a fresh epoch, and after resuming halfway."""
    import wdstream

    cfg = config.replace(num_workers=workers, persistent_workers=False)
    t = time.perf_counter()
    loader = wdstream.make_loader(shards, cfg, tokenizer)
    it = iter(loader)
    next(it)
    fresh = time.perf_counter() - t
    for _ in range(len(loader) // 2 - 1):
        next(it)
    state = json.loads(json.dumps(loader.state_dict()))
    loader.close()
    t = time.perf_counter()
    resumed = wdstream.make_loader(shards, cfg, tokenizer)
    resumed.load_state_dict(state)
    next(iter(resumed))
    after = time.perf_counter() - t
    resumed.close()
    return fresh, after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--pipes", default="abcde")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of (a) for memory")
    parser.add_argument("--data", default=os.path.join(ROOT, ".bench"))
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="runs per pipeline; best is kept")
    parser.add_argument(
        "--exact-rounds",
        type=int,
        default=3,
        help="rounds of exact vs streaming mode (issue 4); 0 skips them",
    )
    parser.add_argument(
        "--memory-only",
        action="store_true",
        help="only (a)'s memory over --epochs (run in a fresh process by default)",
    )
    args = parser.parse_args(argv)

    import datasets.config

    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)  # DataLoader workers use one thread; the in-process runs match

    from wdstream.config import Config
    from wdstream.read.tokenizer import load_tokenizer

    parquet, shards = build_data(
        args.samples, os.path.join(args.data, f"read-{args.samples}"), args.rebuild
    )
    config = Config(
        batch_size=args.batch_size, cache_size=SHUFFLE_BUFFER, seed=0, persistent_workers=True
    )
    tokenizer = load_tokenizer(config)
    size = sum(os.path.getsize(u) for u in shard_urls(shards))
    print(
        f"data: {args.samples} samples, {len(shard_urls(shards))} shards, "
        f"{size / 2**20:.0f} MiB; vision_dim={config.vision_dim}, "
        f"max_audio_length={config.max_audio_length}, batch_size={config.batch_size}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    workers_list = [int(w) for w in args.workers.split(",")]
    if args.memory_only:
        mem = memory_over_epochs(shards, config, tokenizer, max(workers_list), args.epochs)
        print(
            f"  (a) memory (PSS of the process + its workers, workers={max(workers_list)}): "
            f"{mem[0]:.0f} MiB before, then after each epoch "
            + ", ".join(f"{m:.0f} MiB" for m in mem[1:]),
            flush=True,
        )
        return 0
    if "e" in args.pipes:  # (e) starts from bytes in memory: load them before any timing
        _MEMORY.extend(_RawTar(shard_urls(shards)))
    results: dict[tuple[str, int], float] = {}
    for workers in workers_list:
        for name in args.pipes:
            rate, n = max(
                run_one(name, shards, parquet, config, tokenizer, workers)
                for _ in range(args.repeat)
            )
            results[name, workers] = rate
            print(
                f"  workers={workers} ({name}) {PIPES[name][0]:<62} {rate:8.1f} samples/s "
                f"({n} samples)",
                flush=True,
            )
        for other in "bce":
            if ("a", workers) in results and (other, workers) in results:
                print(
                    f"  workers={workers} a/{other} = "
                    f"{results['a', workers] / results[other, workers]:.2f}",
                    flush=True,
                )
    if args.exact_rounds:
        for workers in workers_list:
            med, all_rates = exact_vs_streaming(
                shards, config, tokenizer, workers, args.exact_rounds
            )
            print(
                f"  workers={workers} exact mode {med['exact']:.1f} samples/s, streaming mode "
                f"{med['streaming']:.1f} samples/s (medians of {args.exact_rounds}, in turns; "
                f"all: {all_rates}); exact/streaming = {med['exact'] / med['streaming']:.2f}",
                flush=True,
            )
            fresh, after = resume_time_to_first_batch(shards, config, tokenizer, workers)
            print(
                f"  workers={workers} time to first batch: fresh epoch {fresh:.2f} s, after a "
                f"resume halfway through the epoch {after:.2f} s",
                flush=True,
            )
    if args.epochs and "a" in args.pipes:  # a fresh process: nothing left from the runs above
        import subprocess

        subprocess.run(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--memory-only",
                "--samples",
                str(args.samples),
                "--workers",
                str(max(workers_list)),
                "--epochs",
                str(args.epochs),
                "--batch-size",
                str(args.batch_size),
                "--data",
                args.data,
            ],
            check=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
