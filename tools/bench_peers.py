"""wdstream against its peers (issue 7): convert one source with each system's own writer, then
read it back with the same decode, in turns, from a local folder and from a loopback S3.

Systems (a row each, always; a system that is not installed, or cannot do a setting, says so):

  wdstream     ``wdstream.write.convert.convert`` -> ``wdstream.make_loader`` (its WebLoader)
  webdataset   ``wds.ShardWriter`` (local, then uploaded by its ``post=`` hook) ->
               ``wds.WebDataset(...).shuffle().map().batched()`` + ``wds.WebLoader``
  hf-parquet   ``datasets.Dataset.from_parquet(...).to_parquet(url)`` ->
               ``load_dataset("parquet", streaming=True)`` + torch DataLoader
  mds          mosaicml-streaming ``MDSWriter`` (local, then uploaded) -> ``StreamingDataset`` +
               its ``StreamingDataLoader``
  litdata      ``litdata.optimize`` (local chunks, then uploaded) -> ``StreamingDataset`` + its
               ``StreamingDataLoader``

The source is a Hugging Face parquet dataset built by ``wdstream.sources.sample_data`` (real-size
JPEG/PNG images of 400-1000 px, 2 s FLAC clips, a caption), cached under ``.bench/``. Every
system stores the same bytes (no re-encoding) and every reader applies the same function to
each sample: ``wdstream.read.decode.SampleDecoder`` (resize + centre crop to 224, audio to 16 kHz,
ByT5 tokenization) then ``wdstream.collate.collate``, at the same batch size, with shuffling on.

Each conversion and each read runs in a child process (``--python`` picks its interpreter, so
peers that cannot share a venv with wdstream still run the same timing loop); its peak RSS is
the sum over the child and its DataLoader workers, sampled every 0.1 s. Reads run in turns
(round 1: A B C ..., round 2: A B C ...) so machine noise hits every system alike. A read's
samples/s is the samples of one full epoch over the time from building the loader to the last
batch; "first batch" is the time from building the loader to the first batch. S3 is a moto
server on 127.0.0.1 started here; peers that only read from S3 via a local cache get a fresh,
empty cache for every read.

    .venv-bench/bin/python tools/bench_peers.py                  # 3,000 samples, 3 rounds
    .venv/bin/python tools/bench_peers.py --samples 60 --rounds 1 --out-md /tmp/p.md \\
        --out-png /tmp/p.png                                      # a smoke run

The peers are installed by ``pip install 'wdstream[bench]'`` (see docs/benchmarks.md, "Peers",
for the exact line that works beside torch 2.14.1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 2**20
SHARD_BYTES = 64 * MB  # one target shard/chunk size for every writer
SHUFFLE_BUFFER = 1000
BUCKET = "bench"
READ_STORES = ("local", "s3", "s3-latency")  # s3-latency: the s3 data via tools/s3proxy.py
LATENCY_TTFB, LATENCY_JITTER, LATENCY_BANDWIDTH = 0.03, 0.01, 80e6  # as a real bucket, roughly
DECODE_LIMIT_STORE = "memory"  # the decode limit reads rows already in memory
SECTION = "## Peers"
NOTES_MARK = "<!-- notes below are kept when bench_peers.py rewrites this section -->"
INSTALL = (
    "python3 -m venv .venv-bench && .venv-bench/bin/pip install -e '.[bench]' "
    "'moto[server]==5.2.6' ray==2.60.0 mosaicml-streaming==0.13.0 litdata==0.2.76 "
    "torch==2.14.1 'torchaudio==2.11.*' torchvision==0.29.1 transformers==4.57.6 "
    "'numpy==2.1.*' datasets==4.8.5 fsspec==2026.1.0 s3fs==2026.1.0"
)


@dataclass(frozen=True)
class System:
    """One benchmarked system: how to check it is installed, and what it cannot do."""

    name: str
    module: str  # imported to check that the system is installed
    install: str  # what to install when it is not
    s3: str | None = None  # None: reads/writes the loopback S3; else why not
    audio: str | None = None  # None: keeps the audio bytes; else why not
    notes: str = ""


SYSTEMS = {
    s.name: s
    for s in [
        System(
            "wdstream",
            "wdstream.read.loader",
            "pip install -e .",
            notes="writes straight to the store; streams shards (ranged GETs)",
        ),
        System(
            "webdataset",
            "webdataset",
            "pip install webdataset",
            notes="writes locally, uploads each shard (post= hook); reads S3 through an "
            "fsspec opener registered in gopen_schemes (it has no s3:// opener)",
        ),
        System(
            "hf-parquet",
            "datasets",
            "pip install datasets",
            notes="Dataset.from_parquet (local arrow cache) then to_parquet(url); "
            "load_dataset('parquet', streaming=True)",
        ),
        System(
            "mds",
            "streaming",
            "pip install 'wdstream[bench]' (mosaicml-streaming)",
            notes="MDSWriter writes locally, then uploads; reads download whole shards "
            "to a local cache (S3_ENDPOINT_URL)",
        ),
        System(
            "litdata",
            "litdata",
            "pip install 'wdstream[bench]' (litdata)",
            notes="optimize writes chunks locally, then uploads; reads download chunks "
            "to a local cache (storage_options endpoint_url). Its obstore transfers "
            "refuse a plain-HTTP endpoint and litdata has no switch for it, so the "
            "tool adds obstore's allow_http for the loopback endpoint",
        ),
    ]
}


# =========================================================================== source data


def build_source(cache: str, n: int) -> str:
    """The Hugging Face parquet dataset under ``cache/source`` (built once, then reused)."""
    folder = os.path.join(cache, "source")
    done = os.path.join(folder, "DONE")
    if os.path.exists(done):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    from wdstream.demo.data import build_parquet_dataset

    t = time.perf_counter()
    build_parquet_dataset(
        folder, n, n_files=8, image_size=(400, 1000), audio_seconds=2.0, audio_format="FLAC", seed=1
    )
    with open(done, "w") as f:
        f.write(f"{n}\n")
    print(f"built the source: {n} rows in {time.perf_counter() - t:.0f} s ({folder})", flush=True)
    return folder


def source_files(source: str) -> list[str]:
    data = os.path.join(source, "data")
    return sorted(os.path.join(data, f) for f in os.listdir(data) if f.endswith(".parquet"))


def iter_parquet_file(path: str):
    """``(key, {"img": bytes, "audio": bytes, "txt": str})`` for each row of one parquet file."""
    import pyarrow.parquet as pq

    stem = os.path.basename(path).split(".")[0]
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(
        batch_size=64, columns=["image", "audio", "text"]
    ):
        for rec in batch.to_pylist():
            yield (
                f"{stem}_{row:07d}",
                {"img": rec["image"]["bytes"], "audio": rec["audio"]["bytes"], "txt": rec["text"]},
            )
            row += 1


def iter_source(source: str):
    for path in source_files(source):
        yield from iter_parquet_file(path)


def tar_fields(fields: dict) -> dict:
    """Source fields as WebDataset members named by their real format (png stays png)."""
    from wdstream.format.schema import audio_ext, image_ext

    return {
        image_ext(fields["img"]) or "jpg": fields["img"],
        audio_ext(fields["audio"]) or "flac": fields["audio"],
        "txt": fields["txt"].encode(),
    }


# =========================================================================== stores


@dataclass
class Store:
    """Where a system's data lives: a local folder or the loopback S3."""

    kind: str  # "local" | "s3"
    root: str  # local folder, or s3://bucket
    endpoint: str | None = None
    label: str | None = None  # the store's name in results: "s3-latency" reads s3 via the proxy

    @property
    def name(self) -> str:
        return self.label or self.kind

    @property
    def storage_options(self) -> dict:
        if self.kind != "s3":
            return {}
        return {
            "client_kwargs": {"endpoint_url": self.endpoint},
            "key": "testing",
            "secret": "testing",
        }

    def url(self, system: str) -> str:
        return f"{self.root}/{system}"

    def fs(self):
        import fsspec

        return fsspec.core.url_to_fs(self.root, **self.storage_options)[0]

    def path(self, url: str) -> str:
        """``url``'s path on :meth:`fs` (fsspec's public ``strip_protocol``)."""
        import fsspec.core

        return fsspec.core.strip_protocol(url)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "root": self.root,
            "endpoint": self.endpoint,
            "label": self.label,
        }


def storage_bytes(store: Store, url: str) -> int:
    fs = store.fs()
    path = store.path(url)
    if not fs.exists(path):
        return 0
    return sum(info["size"] for info in fs.find(path, detail=True).values())


def remove_tree(store: Store, url: str) -> None:
    fs = store.fs()
    path = store.path(url)
    with contextlib.suppress(FileNotFoundError):
        if fs.exists(path):
            fs.rm(path, recursive=True)


def list_files(url: str, store: Store, suffix: str) -> list[str]:
    fs = store.fs()
    path = store.path(url)
    found = sorted(p for p in fs.find(path) if p.endswith(suffix))
    return [f"s3://{p}" if store.kind == "s3" else p for p in found]


def start_s3():
    """A moto S3 server on 127.0.0.1 (a free port) with an empty bucket; (server, endpoint)."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    store = Store("s3", f"s3://{BUCKET}", endpoint)
    store.fs().mkdir(BUCKET)
    return server, endpoint


# =========================================================================== writers (child)


def write_wdstream(source: str, url: str, store: Store, staging: str, workers: int) -> None:
    from wdstream.write.convert import convert

    convert(
        source,
        url,
        workers=workers,
        quiet=True,
        max_shard_bytes=SHARD_BYTES,
        max_samples_per_shard=10**7,
        storage_options=store.storage_options,
    )


def write_webdataset(source: str, url: str, store: Store, staging: str, workers: int) -> None:
    import webdataset as wds

    fs = store.fs()
    remote = store.path(url)
    local = url if store.kind == "local" else staging
    os.makedirs(local, exist_ok=True)

    def upload(path: str) -> None:  # webdataset's hook for remote stores
        if store.kind == "s3":
            fs.put_file(path, f"{remote}/{os.path.basename(path)}")
            os.remove(path)

    with wds.ShardWriter(
        os.path.join(local, "shard-%06d.tar"),
        maxsize=SHARD_BYTES,
        maxcount=10**7,
        post=upload,
        verbose=0,
    ) as sink:
        for key, fields in iter_source(source):
            sink.write({"__key__": key, **tar_fields(fields)})


def write_hf_parquet(source: str, url: str, store: Store, staging: str, workers: int) -> None:
    import datasets

    for i, path in enumerate(source_files(source)):
        ds = datasets.Dataset.from_parquet(path, cache_dir=os.path.join(staging, "hf-cache"))
        ds.to_parquet(f"{url}/train-{i:05d}.parquet", storage_options=store.storage_options)
        ds.cleanup_cache_files()
        del ds
        shutil.rmtree(os.path.join(staging, "hf-cache"), ignore_errors=True)


def write_mds(source: str, url: str, store: Store, staging: str, workers: int) -> None:
    from streaming import MDSWriter

    out = url if store.kind == "local" else (staging, url)
    columns = {"key": "str", "img": "bytes", "audio": "bytes", "txt": "str"}
    with MDSWriter(
        out=out, columns=columns, size_limit=SHARD_BYTES, progress_bar=False, exist_ok=True
    ) as sink:
        for key, fields in iter_source(source):
            sink.write({"key": key, **fields})


def _litdata_rows(path: str):
    for key, fields in iter_parquet_file(path):
        yield {"key": key, **fields}


def _litdata_allow_http(store: Store) -> None:
    """litdata moves chunks with obstore, which refuses plain-HTTP endpoints unless its client
    options say ``allow_http``; litdata has no setting for it, so it is added here for the
    loopback (http://127.0.0.1) endpoint only. Real S3 endpoints are HTTPS and need nothing."""
    if store.kind == "s3" and store.endpoint and store.endpoint.startswith("http://"):
        from litdata.streaming import downloader

        downloader._OBSTORE_CLIENT_OPTIONS = {
            **downloader._OBSTORE_CLIENT_OPTIONS,
            "allow_http": True,
        }


def write_litdata(source: str, url: str, store: Store, staging: str, workers: int) -> None:
    import litdata

    _litdata_allow_http(store)

    os.environ["DATA_OPTIMIZER_CACHE_FOLDER"] = os.path.join(staging, "chunks")
    os.environ["DATA_OPTIMIZER_DATA_CACHE_FOLDER"] = os.path.join(staging, "data")
    litdata.optimize(
        fn=_litdata_rows,
        inputs=source_files(source),
        output_dir=url,
        chunk_bytes=SHARD_BYTES,
        num_workers=workers,
        mode="overwrite",
        storage_options=({"endpoint_url": store.endpoint} if store.kind == "s3" else {}),
        verbose=False,
        start_method="fork",
    )


def write_raw_limit(source: str, url: str, store: Store, staging: str, workers: int) -> None:
    """The raw limit of a conversion: the same rows read with pyarrow and the same bytes written
    as tar shards of the same size, one write per shard, in one process; no checks, no index,
    no manifest, no resume."""
    import io
    import tarfile

    fs = store.fs()
    remote = store.path(url)
    fs.makedirs(remote, exist_ok=True)
    buf = io.BytesIO()
    tar = tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT)
    n = 0

    def flush() -> None:
        nonlocal buf, tar, n
        tar.close()
        fs.pipe_file(f"{remote}/raw-{n:06d}.tar", buf.getvalue())
        n += 1
        buf = io.BytesIO()
        tar = tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT)

    for key, fields in iter_source(source):
        for ext, data in tar_fields(fields).items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if buf.tell() >= SHARD_BYTES:
            flush()
    if buf.tell():
        flush()


WRITERS = {
    "wdstream": write_wdstream,
    "webdataset": write_webdataset,
    "hf-parquet": write_hf_parquet,
    "mds": write_mds,
    "litdata": write_litdata,
    "raw-limit": write_raw_limit,
}


# =========================================================================== readers (child)


class DecodeCollate:
    """The one decode for every system: SampleDecoder on each sample, then collate."""

    def __init__(self, config, tokenizer):
        from wdstream.read.decode import SampleDecoder
        from wdstream.read.tokenizer import pad_token_id

        self.decoder = SampleDecoder(config, tokenizer)
        self.config = config
        self.pad = pad_token_id(tokenizer)

    def sample(self, row: dict) -> dict:
        """A row of a column store ({key, img, audio, txt}) as a WebDataset-style sample."""
        if "__key__" in row:
            return self.decoder(row)
        txt = row["txt"]
        return self.decoder(
            {
                "__key__": row["key"],
                "jpg": row["img"],
                "flac": row["audio"],
                "txt": txt.encode() if isinstance(txt, str) else txt,
            }
        )

    def batch(self, samples: list[dict]) -> dict:
        from wdstream.read.collate import collate

        return collate(samples, self.config, pad_token_id=self.pad)

    def __call__(self, rows: list[dict]) -> dict:
        return self.batch([self.sample(r) for r in rows])


def _dl_kwargs(workers: int) -> dict:
    kw = {"num_workers": workers}
    if workers:
        kw.update(persistent_workers=False, prefetch_factor=2)
    return kw


def read_wdstream(url, store, config, tokenizer, workers, cache):
    import wdstream

    loader = wdstream.make_loader(
        url,
        config.replace(
            num_workers=workers, persistent_workers=False, storage_options=store.storage_options
        ),
        tokenizer,
    )
    return loader, loader.close


def _fsspec_gopen(storage_options: dict):
    def opener(url, mode="rb", bufsize=8192, **_):
        import fsspec

        return fsspec.open(url, mode, **storage_options).open()

    return opener


def _hf_row(row: dict) -> dict:
    return {
        "key": row.get("key") or "",
        "img": row["image"]["bytes"],
        "audio": row["audio"]["bytes"],
        "txt": row["text"],
    }


def read_webdataset(url, store, config, tokenizer, workers, cache):
    import webdataset as wds

    if store.kind == "s3":
        sys.modules["webdataset.gopen"].gopen_schemes["s3"] = _fsspec_gopen(store.storage_options)
    urls = list_files(url, store, ".tar")
    dc = DecodeCollate(config, tokenizer)
    ds = (
        wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False, seed=config.seed)
        .shuffle(SHUFFLE_BUFFER)
        .map(dc.sample)
        .batched(config.batch_size, collation_fn=dc.batch, partial=False)
    )
    return wds.WebLoader(ds, batch_size=None, **_dl_kwargs(workers)), None


def read_hf_parquet(url, store, config, tokenizer, workers, cache):
    import datasets
    import torch

    files = list_files(url, store, ".parquet")
    ds = datasets.load_dataset(
        "parquet",
        data_files={"train": files},
        split="train",
        streaming=True,
        storage_options=dict(store.storage_options),
    )
    ds = ds.cast_column("image", datasets.Image(decode=False))
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    ds = ds.select_columns(["image", "audio", "text"])
    ds = ds.shuffle(seed=config.seed, buffer_size=SHUFFLE_BUFFER).map(_hf_row)
    dc = DecodeCollate(config, tokenizer)
    return torch.utils.data.DataLoader(
        ds, batch_size=config.batch_size, drop_last=True, collate_fn=dc, **_dl_kwargs(workers)
    ), None


def read_mds(url, store, config, tokenizer, workers, cache):
    from streaming import StreamingDataLoader, StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    if store.kind == "s3":
        ds = StreamingDataset(
            remote=url,
            local=cache,
            shuffle=True,
            shuffle_seed=config.seed,
            batch_size=config.batch_size,
        )
    else:
        ds = StreamingDataset(
            local=url, shuffle=True, shuffle_seed=config.seed, batch_size=config.batch_size
        )
    loader = StreamingDataLoader(
        ds,
        batch_size=config.batch_size,
        drop_last=True,
        collate_fn=DecodeCollate(config, tokenizer),
        **_dl_kwargs(workers),
    )
    return loader, None


def read_litdata(url, store, config, tokenizer, workers, cache):
    import litdata

    _litdata_allow_http(store)
    if store.kind == "s3":
        ds = litdata.StreamingDataset(
            url,
            cache_dir=cache,
            shuffle=True,
            seed=config.seed,
            storage_options={"endpoint_url": store.endpoint},
        )
    else:
        ds = litdata.StreamingDataset(url, shuffle=True, seed=config.seed)
    loader = litdata.StreamingDataLoader(
        ds,
        batch_size=config.batch_size,
        drop_last=True,
        collate_fn=DecodeCollate(config, tokenizer),
        **_dl_kwargs(workers),
    )
    return loader, None


class _InMemory:
    """Rows already in memory, for the decode limit (a map-style dataset)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def read_decode_limit(rows, config, tokenizer, workers):
    """The decode limit: the same decode and collate over rows already in memory (read before
    the clock starts), shuffled, through a torch DataLoader with the same workers. No I/O, no
    parsing: what any reader can reach with this many processes."""
    import torch

    return torch.utils.data.DataLoader(
        _InMemory(rows),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=DecodeCollate(config, tokenizer),
        **_dl_kwargs(workers),
    ), None


READERS = {
    "wdstream": read_wdstream,
    "webdataset": read_webdataset,
    "hf-parquet": read_hf_parquet,
    "mds": read_mds,
    "litdata": read_litdata,
}


# =========================================================================== child entry


def child_main(job: dict) -> dict:
    """Run one conversion or one read epoch in this process; returns its measurements."""
    import datasets.config

    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    store = Store(**job["store"])
    if job["kind"] == "convert":
        t = time.perf_counter()
        WRITERS[job["system"]](job["source"], job["url"], store, job["staging"], job["workers"])
        return {"seconds": time.perf_counter() - t}

    from wdstream.config import Config
    from wdstream.read.tokenizer import load_tokenizer

    config = Config(batch_size=job["batch_size"], pin_memory="false", seed=0)
    if job.get("wdstream_set"):  # --wdstream-set: an ablation of wdstream's read settings
        config = config.replace(**job["wdstream_set"])
    tokenizer = load_tokenizer(config)
    if job["system"] == "decode-limit":
        rows = [{"key": k, **f} for k, f in iter_source(job["source"])]
        t0 = time.perf_counter()
        loader, close = read_decode_limit(rows, config, tokenizer, job["workers"])
    else:
        t0 = time.perf_counter()
        loader, close = READERS[job["system"]](
            job["url"], store, config, tokenizer, job["workers"], job["cache"]
        )
    first = None
    samples = batches = 0
    shape = None
    limit = job.get("max_batches") or None
    try:
        for batch in loader:
            if limit is not None and batches >= limit:
                break
            if first is None:
                first = time.perf_counter() - t0
                shape = {k: list(v.shape) for k, v in batch.items() if hasattr(v, "shape")}
            samples += len(batch["keys"])
            batches += 1
    finally:
        if close is not None:
            close()
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "first_batch": first,
        "samples": samples,
        "batches": batches,
        "shapes": shape,
    }


# =========================================================================== parent: jobs


def _tree_memory(pid: int) -> tuple[int, int]:
    """``(RSS, PSS)`` in bytes of ``pid`` and all its descendants (Linux /proc). PSS divides
    each shared page among the processes that map it, so a tree of forked workers is not
    charged several times for the libraries they share (RSS is)."""
    rss = pss = 0
    stack, seen = [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
                        break
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
            continue
    return rss, pss


def _dir_bytes(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def run_child(python: str, job: dict, timeout: float, watch_dir: str | None = None) -> dict:
    """Run ``job`` in a child ``python``; adds peak RSS (and peak size of ``watch_dir``)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
        job_path = f.name
    out_path = job_path + ".out"
    cmd = [python, os.path.abspath(__file__), "--child", job_path, out_path]
    env = dict(
        os.environ,
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        S3_ENDPOINT_URL=job["store"].get("endpoint") or "",
        LITDATA_DISABLE_VERSION_CHECK="1",
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = {"rss": 0, "pss": 0, "disk": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss, pss = _tree_memory(proc.pid)
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            if watch_dir:
                peak["disk"] = max(peak["disk"], _dir_bytes(watch_dir))
            done.wait(0.1)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        log += f"\ntimed out after {timeout:.0f} s"
    finally:
        done.set()
        watcher.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child and what it waited for
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    try:
        with open(out_path) as f:
            result = json.load(f)
    except (OSError, ValueError):
        result = {"error": _last_error(log)}
    for p in (job_path, out_path):
        with contextlib.suppress(OSError):
            os.remove(p)
    result["peak_rss"] = peak["rss"]
    result["peak_pss"] = peak["pss"]
    result["cpu_s"] = cpu  # user + system seconds of the child's whole process tree
    if watch_dir:
        result["peak_disk"] = peak["disk"]
    if proc.returncode and "error" not in result:
        result["error"] = _last_error(log)
    return result


def _last_error(log: str) -> str:
    lines = [ln.strip() for ln in (log or "").strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln or "timed out" in ln]
    return (errors[-1] if errors else (lines[-1] if lines else "no output"))[:200]


def available(python: str, system: System) -> str | None:
    """None if ``system`` imports in ``python``, else the reason (the import error)."""
    r = subprocess.run(
        [python, "-c", f"import {system.module}"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    if r.returncode == 0:
        return None
    return (r.stderr.strip().splitlines() or ["import failed"])[-1][:160]


# =========================================================================== parent: run


@dataclass
class Results:
    systems: list[str]
    missing: dict[str, str] = field(default_factory=dict)
    convert: dict = field(default_factory=dict)  # (system, store) -> result
    reads: dict = field(default_factory=dict)  # (system, store, workers) -> [results]
    storage: dict = field(default_factory=dict)  # (system, store) -> bytes
    loads: list = field(default_factory=list)  # per round: the machine's load (see load_now)

    def save(self, path: str) -> None:
        data = {
            "systems": self.systems,
            "missing": self.missing,
            "convert": {"|".join(k): v for k, v in self.convert.items()},
            "reads": {f"{s}|{st}|{w}": v for (s, st, w), v in self.reads.items()},
            "storage": {"|".join(k): v for k, v in self.storage.items()},
            "loads": self.loads,
        }
        with open(path, "w") as f:
            json.dump(data, f, indent=1)

    @classmethod
    def load(cls, path: str) -> Results:
        with open(path) as f:
            d = json.load(f)
        res = cls(systems=d["systems"], missing=d["missing"])
        res.convert = {tuple(k.split("|")): v for k, v in d["convert"].items()}
        res.storage = {tuple(k.split("|")): v for k, v in d["storage"].items()}
        res.loads = d.get("loads", [])
        for k, v in d["reads"].items():
            s, st, w = k.split("|")
            res.reads[(s, st, int(w))] = v
        return res


def load_now() -> dict:
    """The machine's load: the 1-minute load average and, where the kernel has it, the CPU
    pressure (``/proc/pressure/cpu``, share of the last 10 s some task waited for a CPU)."""
    out = {"load1": round(os.getloadavg()[0], 2)}
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
        out["cpu_some_avg10"] = float(some[1].split("=")[1])
    return out


def in_turns(names: list[str], seed: int, round_no: int, what: str) -> list[str]:
    """``names`` in a seeded order for this round (printed), so that no system always runs
    first, or always right after the heavy one."""
    import random

    order = list(names)
    random.Random(f"{seed}/{what}/{round_no}").shuffle(order)
    print(f"{what} round {round_no + 1} order (seed {seed}): {', '.join(order)}", flush=True)
    return order


def run_benchmark(args) -> Results:
    cache = os.path.abspath(args.cache or os.path.join(ROOT, ".bench", f"peers-{args.samples}"))
    os.makedirs(cache, exist_ok=True)
    source = build_source(cache, args.samples)
    res = Results(systems=args.systems)
    for name in args.systems:
        why = available(args.python, SYSTEMS[name])
        if why:
            res.missing[name] = why
            print(
                f"{name}: not installed in {args.python} ({why}); its rows say so. "
                f"Install it with: {SYSTEMS[name].install}",
                flush=True,
            )
    present = [n for n in args.systems if n not in res.missing]

    server = endpoint = None
    stores = []
    if "local" in args.stores:
        stores.append(Store("local", os.path.join(cache, "local")))
    proxy = None
    if "s3" in args.stores or "s3-latency" in args.stores:
        server, endpoint = start_s3()
        stores.append(Store("s3", f"s3://{BUCKET}", endpoint))
        print(f"loopback S3 (moto) at {endpoint}", flush=True)
    read_stores = [s for s in stores if s.name in args.stores]
    read_proxy = None
    if "s3-latency" in args.stores:  # the s3 data, read through the S3 test proxy
        from s3proxy import S3Proxy  # tools/, this script's folder

        read_proxy = S3Proxy(
            endpoint, ttfb=LATENCY_TTFB, jitter=LATENCY_JITTER, bandwidth=LATENCY_BANDWIDTH
        ).start()
        read_stores.append(Store("s3", f"s3://{BUCKET}", read_proxy.url, label="s3-latency"))
        print(
            f"S3 test proxy at {read_proxy.url}: {LATENCY_TTFB * 1e3:.0f} ms to first byte "
            f"(+- {LATENCY_JITTER * 1e3:.0f}), {LATENCY_BANDWIDTH / 1e6:.0f} MB/s per "
            f"connection",
            flush=True,
        )
    proxy = None
    try:
        # ---- conversion, in turns: round 1 A B C ..., round 2 A B C ..., each store; the
        # kept figure of a system and store is its median round (with every round's time)
        convert_stores = [(store.kind, store) for store in stores]
        if "s3-latency" in args.stores:
            if server is None:
                server, endpoint = start_s3()
            proxy = _start_proxy(endpoint)
            convert_stores.append(("s3-latency", Store("s3", f"s3://{BUCKET}/latency", proxy.url)))
            print(f"S3 test proxy (30 ms ttfb) at {proxy.url}", flush=True)
        runs: dict[tuple[str, str], list[dict]] = {}
        writers = present + (["raw-limit"] if args.limits else [])
        for rnd in range(args.convert_rounds):
            res.loads.append({"what": "convert", "round": rnd + 1, **load_now()})
            for key, store in convert_stores:
                for name in in_turns(writers, args.order_seed, rnd, f"convert {key}"):
                    url = store.url(name)
                    remove_tree(store, url)
                    staging = os.path.join(cache, "staging", name)
                    shutil.rmtree(staging, ignore_errors=True)
                    os.makedirs(staging)
                    job = {
                        "kind": "convert",
                        "system": name,
                        "source": source,
                        "url": url,
                        "store": store.to_dict(),
                        "staging": staging,
                        "workers": args.convert_workers,
                    }
                    watch = staging if store.kind == "s3" else None
                    r = run_child(args.python, job, args.timeout, watch_dir=watch)
                    shutil.rmtree(staging, ignore_errors=True)
                    r["bytes"] = storage_bytes(store, url)
                    r["samples"] = args.samples
                    runs.setdefault((name, key), []).append(r)
                    print(f"round {rnd + 1} {_convert_line(name, key, r)}", flush=True)
        for (name, key), rs in runs.items():
            res.convert[(name, key)] = r = _median_run(rs)
            res.storage[(name, key)] = r["bytes"]
            if len(rs) > 1 and "error" not in r:
                sps = sorted(x["samples"] / x["seconds"] for x in rs if "error" not in x)
                print(
                    f"median of {len(rs)}: {_convert_line(name, key, r)}  "
                    f"(min-max {sps[0]:.1f}-{sps[-1]:.1f} samples/s)",
                    flush=True,
                )
        # ---- reads, in turns: round 1 A B C ..., round 2 A B C ...
        # the decode limit (no store) runs once a round per number of workers, beside them
        for rnd in range(args.rounds):
            res.loads.append({"what": "read", "round": rnd + 1, **load_now()})
            for i, store in enumerate(read_stores):
                for workers in args.workers:
                    readers = present + (["decode-limit"] if args.limits and i == 0 else [])
                    what = f"read {store.name} w={workers}"
                    for name in in_turns(readers, args.order_seed, rnd, what):
                        if "error" in res.convert.get((name, store.kind), {}):
                            continue
                        where = DECODE_LIMIT_STORE if name == "decode-limit" else store.name
                        read_cache = tempfile.mkdtemp(prefix=f"{name}-", dir=cache)
                        job = {
                            "kind": "read",
                            "system": name,
                            "url": store.url(name),
                            "store": store.to_dict(),
                            "workers": workers,
                            "batch_size": args.batch_size,
                            "cache": read_cache,
                            "max_batches": args.max_batches,
                            "source": source,
                            "wdstream_set": args.wdstream_set if name == "wdstream" else {},
                        }
                        counted = read_proxy is not None and store.label == "s3-latency"
                        if counted:
                            read_proxy.reset_counters()
                        r = run_child(args.python, job, args.timeout)
                        if counted:
                            stats = read_proxy.stats()
                            r["gets"] = stats["gets"]
                            r["get_bytes"] = sum(stats["get_bytes"].values())
                        shutil.rmtree(read_cache, ignore_errors=True)
                        res.reads.setdefault((name, where, workers), []).append(r)
                        print(f"round {rnd + 1} {_read_line(name, where, workers, r)}", flush=True)
    finally:
        for p in (proxy, read_proxy):
            if p is not None:
                p.stop()
        if server is not None:
            server.stop()
        res.save(os.path.join(cache, "results.json"))
    return res


def _start_proxy(endpoint: str):
    """The shared S3 test proxy (tools/s3proxy.py) in front of the loopback S3: 30 ms to the
    first byte of every response, as a remote object store has."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import s3proxy

    return s3proxy.S3Proxy(endpoint, ttfb=0.03, jitter=0.01, bandwidth=None).start()


def _median_run(runs: list[dict]) -> dict:
    """The round with the median time (a failed round if every round failed), with
    ``rounds``: every round's seconds."""
    ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["seconds"])
    if not ok:
        return runs[-1]
    out = dict(ok[(len(ok) - 1) // 2])
    out["rounds"] = [r["seconds"] for r in ok]
    cpus = [r["cpu_s"] for r in ok if "cpu_s" in r]
    if cpus:  # CPU barely depends on other load: the median over every round, not one round's
        out["cpu_s"] = statistics.median(cpus)
        out["cpu_rounds"] = cpus
    out["peak_rss"] = max(r["peak_rss"] for r in ok)
    out["peak_pss"] = max(r.get("peak_pss", 0) for r in ok)
    return out


def _convert_line(name, store, r) -> str:
    if "error" in r:
        return f"convert {name:<10} -> {store:<5} FAILED: {r['error']}"
    return (
        f"convert {name:<10} -> {store:<5} {r['samples'] / r['seconds']:8.1f} samples/s  "
        f"peak RSS {r['peak_rss'] / MB:6.0f} MiB  {r['bytes'] / MB:7.1f} MiB stored"
        + (f"  peak local disk {r['peak_disk'] / MB:.0f} MiB" if "peak_disk" in r else "")
    )


def _read_line(name, store, workers, r) -> str:
    if "error" in r:
        return f"read {name:<10} {store:<5} w={workers} FAILED: {r['error']}"
    gets = f"  {r['gets']} GETs" if "gets" in r else ""
    return (
        f"read {name:<10} {store:<5} w={workers} {r['samples'] / r['seconds']:8.1f} "
        f"samples/s  first batch {r['first_batch']:.2f} s  peak RSS "
        f"{r['peak_rss'] / MB:.0f} MiB  CPU {r.get('cpu_s', 0):.1f} s{gets}  "
        f"({r['samples']} samples)"
    )


# =========================================================================== report


def read_stats(runs: list[dict]) -> dict | None:
    ok = [r for r in runs if "error" not in r and r.get("samples")]
    if not ok:
        return None
    rates = [r["samples"] / r["seconds"] for r in ok]
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "n": len(rates),
        "first": statistics.median(r["first_batch"] for r in ok),
        "rss": max(r["peak_rss"] for r in ok),
        "pss": max(r.get("peak_pss", 0) for r in ok),
        "samples": statistics.median(r["samples"] for r in ok),
        # CPU seconds and GETs per 1,000 samples (GETs: reads through the S3 test proxy)
        "cpu_per_1k": statistics.median(1000 * r.get("cpu_s", 0) / r["samples"] for r in ok),
        "gets_per_1k": statistics.median(1000 * r["gets"] / r["samples"] for r in ok)
        if all("gets" in r for r in ok)
        else None,
    }


def _ratio(value, base) -> str:
    if value is None or not base:
        return "—"
    return f"{value / base:.2f}×"


def _why_missing(res: Results, name: str, store: str) -> str | None:
    if name in res.missing:
        return f"not installed ({SYSTEMS[name].install})"
    conv = res.convert.get((name, store), {})
    if "error" in conv:
        return f"convert failed: {conv['error']}"
    return None


def render_markdown(res: Results, args) -> str:
    cmd = "python tools/bench_peers.py " + " ".join(shlex.quote(a) for a in args.argv)
    base_stores = [s for s in ("local", "s3", "s3-latency") if s in args.stores]
    read_stores = [s for s in READ_STORES if s in args.stores]
    lines = [
        "The peers live in their own venv (mosaicml-streaming 0.13 pins numpy<2.2 and "
        "transformers<5, and transformers 4.x needs huggingface-hub<1, hence datasets 4.x and "
        "the fsspec it allows; wdstream's test extra is left out: its gcsfs pins a newer "
        "fsspec); torch stays at 2.14.1 with torchvision 0.29.1. wdstream installs beside "
        "them (checked in a fresh venv on 2026-12-07):",
        "",
        f"    {INSTALL}",
        "    .venv-bench/bin/python tools/bench_peers.py",
        "",
        f"Command: `{cmd.strip()}` ({args.samples} samples, batch {args.batch_size}, "
        f"{args.rounds} rounds in turns; each read: "
        f"{f'the first {args.max_batches} batches of an epoch' if args.max_batches else 'one epoch'}"
        f"; {os.cpu_count()} cores, shared). "
        "Same decode for every system: `wdstream.read.decode.SampleDecoder` (resize + centre crop to "
        "224, audio to 16 kHz mono, ByT5 tokens) and `wdstream.collate.collate`. Ratios are to "
        "wdstream in the same setting (above 1× means higher than wdstream). Within each round "
        f"the systems run in a seeded random order (`--order-seed {args.order_seed}`, printed "
        "by the run), so none always runs first.",
        "",
        "Load of the machine at the start of each round (1-minute load average; CPU pressure, "
        "where the kernel reports it: the share of the last 10 s some task waited for a core):",
        "",
        "| rounds | " + " | ".join(f"{x['what']} {x['round']}" for x in res.loads) + " |",
        "|---|" + "---:|" * len(res.loads),
        "| load | " + " | ".join(f"{x['load1']:.1f}" for x in res.loads) + " |",
        "| CPU pressure % | "
        + " | ".join(
            f"{x['cpu_some_avg10']:.0f}" if "cpu_some_avg10" in x else "—" for x in res.loads
        )
        + " |",
        "",
        "### Reading",
        "",
        "PSS (proportional set size) shares each page among the processes that map it, so a "
        "loader and its forked workers are not charged twice for the same libraries; RSS is "
        "given too. The decode limit reads nothing: the same decode and collate over rows "
        "already in memory, through a torch DataLoader with the same workers.",
        "",
        "CPU is user + system seconds of the reading process tree (its DataLoader workers "
        "included), per 1,000 samples; GETs are the requests that reached the S3 test proxy "
        "(s3-latency only), per 1,000 samples, indexes and manifests included.",
        "",
        "| system | store | workers | samples/s (median) | min–max | × wdstream | "
        "first batch s | × wdstream | peak PSS MiB | × wdstream | peak RSS MiB | "
        "CPU s / 1k | × wdstream | GETs / 1k | samples read |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for store in read_stores:
        for workers in args.workers:
            base = read_stats(res.reads.get(("wdstream", store, workers), []))
            for name in [*res.systems, "decode-limit"]:
                if name == "decode-limit":
                    st = read_stats(res.reads.get((name, DECODE_LIMIT_STORE, workers), []))
                    if st is None:
                        continue
                    label = "*decode limit*"
                else:
                    label = name
                    why = _why_missing(res, name, store)
                    st = None if why else read_stats(res.reads.get((name, store, workers), []))
                    if st is None:
                        runs = res.reads.get((name, store, workers), [])
                        why = why or next((r["error"] for r in runs if "error" in r), "no result")
                        lines.append(
                            f"| {name} | {store} | {workers} | {_md(why)} | | | | | | | | | | | |"
                        )
                        continue
                gets = "" if st["gets_per_1k"] is None else f"{st['gets_per_1k']:.1f}"
                lines.append(
                    f"| {label} | {store} | {workers} | {st['median']:.1f} | "
                    f"{st['min']:.1f}–{st['max']:.1f} | "
                    f"{_ratio(st['median'], base and base['median'])} | {st['first']:.2f} | "
                    f"{_ratio(st['first'], base and base['first'])} | {st['pss'] / MB:.0f} | "
                    f"{_ratio(st['pss'], base and base['pss'])} | {st['rss'] / MB:.0f} | "
                    f"{st['cpu_per_1k']:.1f} | "
                    f"{_ratio(st['cpu_per_1k'], base and base['cpu_per_1k'])} | "
                    f"{gets} | "
                    f"{st['samples']:.0f} |"
                )
    lines += ["", *read_goals(res, args, read_stores)]
    lines += [
        "",
        "### Converting and storing",
        "",
        f"Median of {args.convert_rounds} rounds in turns; wdstream and the peers with "
        f"{args.convert_workers} writer processes where they have them; the raw limit reads the "
        "same rows with pyarrow and writes the same bytes as tar shards in one process, with no "
        "checks, index or manifest. Peers that write locally then upload are timed whole.",
        "",
        "CPU is user + system seconds of the converting process tree (its worker processes "
        "included), per 1,000 samples, the median over the rounds.",
        "",
        "| system | store | samples/s | min–max | × wdstream | peak PSS MiB | × wdstream | "
        "peak RSS MiB | bytes stored MiB | × wdstream | peak local disk MiB | CPU s / 1k | "
        "× wdstream |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for store in base_stores:
        base = res.convert.get(("wdstream", store), {})
        base_rate = base["samples"] / base["seconds"] if "seconds" in base else None
        for name in [*res.systems, "raw-limit"]:
            why = _why_missing(res, name, store)
            r = res.convert.get((name, store), {})
            if name == "raw-limit" and not r:
                continue
            label = "*raw limit*" if name == "raw-limit" else name
            if why:
                lines.append(f"| {label} | {store} | {_md(why)} | | | | | | | | | | |")
                continue
            rate = r["samples"] / r["seconds"]
            rounds = [r["samples"] / x for x in r.get("rounds") or [r["seconds"]]]
            disk = f"{r['peak_disk'] / MB:.0f}" if "peak_disk" in r else "(output is local)"
            lines.append(
                f"| {label} | {store} | {rate:.1f} | {min(rounds):.1f}–{max(rounds):.1f} | "
                f"{_ratio(rate, base_rate)} | {r.get('peak_pss', 0) / MB:.0f} | "
                f"{_ratio(r.get('peak_pss'), base.get('peak_pss'))} | "
                f"{r['peak_rss'] / MB:.0f} | "
                f"{r['bytes'] / MB:.1f} | {_ratio(r['bytes'], base.get('bytes'))} | {disk} | "
                f"{_cpu_per_1k(r):.1f} | {_ratio(_cpu_per_1k(r), base and _cpu_per_1k(base))} |"
            )
    lines += ["", *convert_goals(res, args, base_stores)]
    lines += ["", "### What each system does here", ""]
    for name in res.systems:
        s = SYSTEMS[name]
        state = f" **Not installed:** {res.missing[name]}." if name in res.missing else ""
        lines.append(f"- **{name}**: {s.notes}.{state}")
    return "\n".join(lines) + "\n"


def _cpu_per_1k(r: dict) -> float:
    """CPU seconds per 1,000 samples of a conversion result (0 when not measured)."""
    return 1000 * r.get("cpu_s", 0) / r["samples"] if r.get("samples") else 0.0


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**not met**")


def read_goals(res: Results, args, stores: list[str]) -> list[str]:
    """Issue 12's goals per setting, from the medians: samples/s at least the lower of 1.15x
    the best peer and 0.95x the decode limit; first batch no later than the fastest peer's;
    peak PSS at most 1.1x the lowest peer's."""
    lines = [
        "Goals (issues 12 and 23), from the medians above:",
        "",
        "| store | workers | wdstream samples/s | mark (min of 1.15× best peer, 0.95× "
        "decode limit) | throughput | first batch s vs fastest peer | first batch | "
        "PSS MiB vs lowest peer × 1.1 | memory | CPU s / 1k vs lowest peer (× 1.05 with 0 "
        "workers) | CPU |",
        "|---|---:|---:|---|---|---|---|---|---|---|---|",
    ]
    for store in stores:
        for w in args.workers:
            wd = read_stats(res.reads.get(("wdstream", store, w), []))
            peers = {
                n: read_stats(res.reads.get((n, store, w), []))
                for n in res.systems
                if n != "wdstream" and not _why_missing(res, n, store)
            }
            peers = {n: st for n, st in peers.items() if st is not None}
            limit = read_stats(res.reads.get(("decode-limit", DECODE_LIMIT_STORE, w), []))
            if wd is None or not peers:
                rate = "—" if wd is None else f"{wd['median']:.1f}"
                lines.append(
                    f"| {store} | {w} | {rate} | no peer measured | — | — | — | — | — | — | — |"
                )
                continue
            best = max(peers, key=lambda n: peers[n]["median"])
            marks = [(1.15 * peers[best]["median"], f"1.15× {best}")]
            if limit is not None:
                marks.append((0.95 * limit["median"], "0.95× decode limit"))
            mark, which = min(marks)
            fastest = min(peers, key=lambda n: peers[n]["first"])
            leanest = min(peers, key=lambda n: peers[n]["pss"])
            thrifty = min(peers, key=lambda n: peers[n]["cpu_per_1k"])
            cpu_mark = (1.05 if w == 0 else 1.0) * peers[thrifty]["cpu_per_1k"]
            lines.append(
                f"| {store} | {w} | {wd['median']:.1f} | {mark:.1f} ({which}) | "
                f"{_verdict(wd['median'] >= mark)} | {wd['first']:.2f} vs "
                f"{peers[fastest]['first']:.2f} ({fastest}) | "
                f"{_verdict(wd['first'] <= peers[fastest]['first'])} | "
                f"{wd['pss'] / MB:.0f} vs {1.1 * peers[leanest]['pss'] / MB:.0f} ({leanest}) | "
                f"{_verdict(wd['pss'] <= 1.1 * peers[leanest]['pss'])} | "
                f"{wd['cpu_per_1k']:.1f} vs {cpu_mark:.1f} ({thrifty}) | "
                f"{_verdict(wd['cpu_per_1k'] <= cpu_mark)} |"
            )
    return lines


def convert_goals(res: Results, args, stores: list[str]) -> list[str]:
    """Issue 13's goals per store: samples/s at least the lower of 1.2x the best peer and
    0.95x the raw limit; peak PSS at most 1.2x the lowest peer's."""
    lines = [
        "Goals (issues 13 and 23), from the medians above:",
        "",
        "| store | wdstream samples/s | mark (min of 1.2× best peer, 0.95× raw limit) | "
        "throughput | PSS MiB vs lowest peer × 1.2 | memory | CPU s / 1k vs lowest peer | "
        "CPU |",
        "|---|---:|---|---|---|---|---|---|",
    ]
    for store in stores:
        wd = res.convert.get(("wdstream", store), {})
        peers = {
            n: res.convert.get((n, store), {})
            for n in res.systems
            if n != "wdstream" and not _why_missing(res, n, store)
        }
        peers = {n: r for n, r in peers.items() if "seconds" in r}
        if "seconds" not in wd or not peers:
            lines.append(f"| {store} | — | no peer measured | — | — | — | — | — |")
            continue
        rate = {n: r["samples"] / r["seconds"] for n, r in peers.items()}
        best = max(rate, key=rate.get)
        marks = [(1.2 * rate[best], f"1.2× {best}")]
        raw = res.convert.get(("raw-limit", store), {})
        if "seconds" in raw:
            marks.append((0.95 * raw["samples"] / raw["seconds"], "0.95× raw limit"))
        mark, which = min(marks)
        wd_rate = wd["samples"] / wd["seconds"]
        leanest = min(peers, key=lambda n: peers[n].get("peak_pss") or float("inf"))
        lean = peers[leanest].get("peak_pss") or 0
        thrifty = min(peers, key=lambda n: _cpu_per_1k(peers[n]) or float("inf"))
        lowest = _cpu_per_1k(peers[thrifty])
        wd_cpu = _cpu_per_1k(wd)
        lines.append(
            f"| {store} | {wd_rate:.1f} | {mark:.1f} ({which}) | "
            f"{_verdict(wd_rate >= mark)} | {wd.get('peak_pss', 0) / MB:.0f} vs "
            f"{1.2 * lean / MB:.0f} ({leanest}) | "
            f"{_verdict(wd.get('peak_pss', 0) <= 1.2 * lean if lean else None)} | "
            f"{wd_cpu:.1f} vs {lowest:.1f} ({thrifty}) | "
            f"{_verdict(wd_cpu <= lowest if lowest and wd_cpu else None)} |"
        )
    return lines


def _md(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def write_section(path: str, body: str) -> None:
    """Put ``body`` under the ``## Peers`` heading of ``path``, leaving other sections alone."""
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    section = f"{SECTION}\n\n{body}"
    start = (
        text.find(f"\n{SECTION}\n") + 1
        if f"\n{SECTION}\n" in text
        else (0 if text.startswith(f"{SECTION}\n") else -1)
    )
    if start < 0:
        if not text:
            text = "# Benchmarks\n"
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(SECTION))
        end = len(text) if nxt < 0 else nxt + 1
        old = text[start:end]
        if NOTES_MARK in old:  # hand-written notes under the tables survive a re-run
            section = (
                section.rstrip("\n") + "\n\n" + old[old.index(NOTES_MARK) :].rstrip("\n") + "\n"
            )
        text = text[:start] + section + ("\n" if nxt >= 0 else "") + text[end:]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def plot(res: Results, args, path: str) -> None:
    """Bars: median read samples/s per setting (whiskers: min–max), conversion samples/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [(s, w) for s in READ_STORES if s in args.stores for w in args.workers]
    names = res.systems
    colors = {
        "wdstream": "#d62728",
        "webdataset": "#1f77b4",
        "hf-parquet": "#ff7f0e",
        "mds": "#2ca02c",
        "litdata": "#9467bd",
    }
    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [max(2, len(settings)), 1.3]}
    )
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs, ys, lo, hi, ratios = [], [], [], [], []
        for j, (store, w) in enumerate(settings):
            st = (
                None
                if _why_missing(res, name, store)
                else read_stats(res.reads.get((name, store, w), []))
            )
            x = j + (i - (len(names) - 1) / 2) * width
            if st is None:
                ax.text(
                    x,
                    0,
                    "n/a",
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color=colors.get(name, "gray"),
                )
                continue
            xs.append(x)
            ys.append(st["median"])
            lo.append(st["median"] - st["min"])
            hi.append(st["max"] - st["median"])
            base = read_stats(res.reads.get(("wdstream", store, w), []))
            ratios.append(st["median"] / base["median"] if base else None)
        ax.bar(
            xs,
            ys,
            width,
            yerr=[lo, hi],
            capsize=2,
            label=name,
            color=colors.get(name, None),
            edgecolor="black" if name == "wdstream" else None,
        )
        for x, y, ratio in zip(xs, ys, ratios, strict=True):
            if name != "wdstream" and ratio:
                ax.text(
                    x,
                    y * 0.04,
                    f"{ratio:.2f}×",
                    ha="center",
                    va="bottom",
                    fontsize=7.5,
                    rotation=90,
                    color="white",
                    fontweight="bold",
                )
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([f"{s}\n{w} workers" for s, w in settings])
    ax.set_ylabel("samples/s (median of rounds; whiskers min–max)\nin the bars: × wdstream")
    ax.set_title(f"Reading with the same decode (batch {args.batch_size}, {args.samples} samples)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    stores = [s for s in ("local", "s3", "s3-latency") if s in args.stores]
    for i, name in enumerate(names):
        xs, ys = [], []
        for j, store in enumerate(stores):
            r = res.convert.get((name, store), {})
            if "seconds" in r:
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ys.append(r["samples"] / r["seconds"])
        bx.bar(
            xs,
            ys,
            width,
            color=colors.get(name, None),
            edgecolor="black" if name == "wdstream" else None,
        )
    bx.set_xticks(range(len(stores)))
    bx.set_xticklabels([f"to {s}" for s in stores])
    bx.set_title("Converting (incl. upload)")
    bx.set_ylabel("samples/s")
    bx.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# =========================================================================== CLI


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--samples", type=int, default=3000, help="rows in the source (default 3000)")
    p.add_argument("--rounds", type=int, default=3, help="read rounds, in turns (default 3)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--workers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[0, 2],
        help="DataLoader worker counts (default 0,2)",
    )
    p.add_argument(
        "--stores",
        type=lambda s: s.split(","),
        default=["local", "s3", "s3-latency"],
        help="local,s3,s3-latency (default all; s3-latency reads the s3 data "
        "through the S3 test proxy: 30 ms to first byte, 80 MB/s)",
    )
    p.add_argument(
        "--systems",
        type=lambda s: s.split(","),
        default=list(SYSTEMS),
        help=f"comma-separated, from {','.join(SYSTEMS)} (default all)",
    )
    p.add_argument(
        "--max-batches",
        type=int,
        default=None,
        help="stop each read after this many batches (default: a whole epoch)",
    )
    p.add_argument(
        "--convert-rounds",
        type=int,
        default=5,
        help="conversion rounds, in turns (default 5; the median is kept)",
    )
    p.add_argument(
        "--convert-workers",
        type=int,
        default=2,
        help="processes for writers that have them (wdstream, litdata)",
    )
    p.add_argument(
        "--no-limits",
        dest="limits",
        action="store_false",
        help="leave out the raw conversion limit and the decode-only read limit",
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for the child processes (e.g. .venv-bench/bin/python)",
    )
    p.add_argument("--cache", default=None, help="data folder (default .bench/peers-N)")
    p.add_argument(
        "--order-seed",
        type=int,
        default=0,
        help="seed of each round's order of the systems (printed; default 0)",
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    p.add_argument(
        "--wdstream-set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a config setting for wdstream's reads, e.g. cache_size=100 or shuffle_lanes=1 "
        "(repeatable; values are YAML: an ablation, not the default comparison)",
    )
    p.add_argument(
        "--out-md",
        default=os.path.join(ROOT, "docs", "benchmarks.md"),
        help="markdown file whose 'Peers' section is (re)written",
    )
    p.add_argument("--out-png", default=os.path.join(ROOT, "docs", "img", "throughput.png"))
    p.add_argument("--no-plot", action="store_true", help="skip the plot (no matplotlib)")
    p.add_argument(
        "--report-only",
        metavar="RESULTS_JSON",
        default=None,
        help="measure nothing: render the table and plot from a results.json that "
        "an earlier run saved in its --cache folder (pass that run's options)",
    )
    args = p.parse_args(argv)
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        p.error(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
    try:
        args.wdstream_set = _settings(args.wdstream_set)
    except ValueError as exc:
        p.error(str(exc))
    args.argv = argv
    return args


def _settings(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs as a dict of config settings (values parsed as YAML), checked by
    ``Config.replace`` (an unknown key or a bad value raises ConfigError, a ValueError)."""
    import yaml

    from wdstream.config import Config

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--wdstream-set {pair!r} is not KEY=VALUE")
        out[key] = yaml.safe_load(value)
        try:
            Config().replace(**{key: out[key]})
        except ValueError as exc:
            raise ValueError(f"--wdstream-set {pair!r}: {exc}") from exc
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        with open(argv[1]) as f:
            job = json.load(f)
        result = child_main(job)
        with open(argv[2], "w") as f:
            json.dump(result, f)
        return 0
    args = parse_args(argv)
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "matplotlib is not installed: pip install 'wdstream[bench]' for the plot, "
                "or pass --no-plot",
                file=sys.stderr,
            )
            return 2
    res = Results.load(args.report_only) if args.report_only else run_benchmark(args)
    if args.report_only:
        args.argv = [
            a
            for i, a in enumerate(argv)
            if a not in ("--report-only", "--no-plot")
            and (i == 0 or argv[i - 1] != "--report-only")
        ]
    body = render_markdown(res, args)
    print()
    print(body)
    write_section(args.out_md, body)
    print(f"wrote the '{SECTION[3:]}' section of {args.out_md}")
    if not args.no_plot:
        plot(res, args, args.out_png)
        print(f"wrote {args.out_png}")
    if res.missing:
        print("\nMissing peers (their rows say 'not installed'):")
        for name, why in res.missing.items():
            print(f"  {name}: {why}\n    install: {SYSTEMS[name].install}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
