"""The main job, end to end on one machine with no account and no network:

1. a small multimodal source in Hugging Face format (built locally; the Hub is tried first
   only when it is reachable and ``HF_HUB_OFFLINE`` is unset);
2. conversion to shards on an embedded store: a loopback S3 (moto's server, started and stopped
   here) when moto is installed, else a local folder;
3. verification of every shard against the manifest;
4. a few training steps of a tiny multimodal model on batches from ``make_loader``;
5. a report of throughput and of where everything went.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field

import torch

from ..config import Config
from ..errors import ConfigError, HubUnreachableError
from ..format.verify import verify_shard
from ..hub import check_hub_reachable
from ..read.loader import make_loader
from ..read.preview import preview
from ..write.convert import convert
from .data import build_parquet_dataset
from .model import TinyMultimodalModel, train_step
from .s3 import loopback_s3

__all__ = ["run_demo", "DemoReport"]

log = logging.getLogger(__name__)


@dataclass
class DemoReport:
    source: str = ""
    output: str = ""
    store: str = ""
    manifest_samples: int = 0
    shards: int = 0
    convert_seconds: float = 0.0
    convert_mb: float = 0.0
    verified: int = 0
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    read_samples_per_s: float = 0.0
    preview: str | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"source      : {self.source}",
            f"shards      : {self.output} ({self.store}): {self.shards} shards, "
            f"{self.manifest_samples} samples, {self.convert_mb:.1f} MB",
            f"convert     : {self.convert_seconds:.1f} s "
            f"({self.manifest_samples / max(self.convert_seconds, 1e-9):.0f} samples/s, "
            f"{self.convert_mb / max(self.convert_seconds, 1e-9):.1f} MB/s)",
            f"verify      : {self.verified} of {self.shards} shards match the manifest",
            f"train       : {self.steps} steps, loss {self.losses[0]:.3f} -> {self.losses[-1]:.3f}"
            if self.losses
            else "train       : no steps",
            f"read        : {self.read_samples_per_s:.0f} samples/s into the training loop",
            f"preview     : {self.preview}" if self.preview else "preview     : (not drawn)",
            *[f"note        : {n}" for n in self.notes],
        ]


def _hub_note() -> str | None:
    try:
        check_hub_reachable(timeout=2.0)
    except HubUnreachableError as exc:
        return (
            f"Hugging Face Hub not reachable ({str(exc).split('(')[0].strip()}); "
            f"using the local source instead"
        )
    return None


def run_demo(
    workdir: str | None = None,
    *,
    samples: int = 240,
    steps: int = 10,
    store: str = "auto",
    quiet: bool = False,
) -> DemoReport:
    """Run the whole system once; returns the report (``wdstream demo`` prints it). Raises
    ConfigError when ``store="s3"`` and moto is not installed."""
    report = DemoReport()
    workdir = workdir or tempfile.mkdtemp(prefix="wdstream-demo-")
    os.makedirs(workdir, exist_ok=True)
    note = _hub_note()
    if note:  # said once, in the report (not also in the log)
        report.notes.append(note)
    src = os.path.join(workdir, "source")
    if not os.path.isdir(os.path.join(src, "data")):
        build_parquet_dataset(src, samples, n_files=4, image_size=(96, 320), audio_seconds=0.5)
    report.source = f"{src} (parquet, {samples} rows: image, audio, text; 4 files)"

    s3_ctx = loopback_s3() if store in ("auto", "s3") else contextlib.nullcontext(None)
    with s3_ctx as s3_opts:
        if store == "s3" and s3_opts is None:
            raise ConfigError(
                "--store s3 needs moto, which is not installed: "
                "pip install 'wdstream[demo]', or use --store local"
            )
        if s3_opts is not None:
            output, opts = "s3://wdstream-demo/shards", s3_opts
            report.store = f"loopback S3 at {s3_opts['client_kwargs']['endpoint_url']}"
        else:
            output, opts = os.path.join(workdir, "shards"), {}
            report.store = "local folder"
        report.output = output
        # image_ext: the source mixes JPEG and PNG; one member name keeps the shards loadable
        # by datasets.load_dataset("webdataset") too (the bytes stay as they are)
        config = Config(
            max_samples_per_shard=64,
            workers=2,
            quiet=quiet,
            image_ext="jpg",
            storage_options=opts,
            batch_size=8,
            num_workers=2,
            cache_size=64,
            vision_dim=64,
            max_audio_length=8000,
            max_text_length=64,
            persistent_workers=True,
        )

        t0 = time.perf_counter()
        manifest = convert(src, output, config=config)
        report.convert_seconds = time.perf_counter() - t0
        report.manifest_samples, report.shards = manifest.samples, len(manifest.shards)
        report.convert_mb = manifest.bytes / 1e6

        for info, url in zip(manifest.shards, manifest.shard_urls(), strict=True):
            n, nbytes, sha = verify_shard(url, opts)
            if (n, nbytes, sha) == (info.samples, info.bytes, info.sha256):
                report.verified += 1

        try:
            png = os.path.join(workdir, "preview.png")
            preview(output, png, samples=12, storage_options=opts)
            report.preview = png
        except Exception as exc:  # the picture is a nicety; the job goes on without it
            log.warning("preview failed: %s", exc)

        loader = make_loader(output, config)
        torch.manual_seed(0)
        model = TinyMultimodalModel(config.vocab_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        n_seen, t_read = 0, time.perf_counter()
        with loader:
            for epoch in range(100):
                loader.set_epoch(epoch)
                for batch in loader:
                    report.losses.append(train_step(model, optimizer, batch))
                    n_seen += len(batch["keys"])
                    if len(report.losses) >= steps:
                        break
                if len(report.losses) >= steps:
                    break
        report.steps = len(report.losses)
        report.read_samples_per_s = n_seen / max(time.perf_counter() - t_read, 1e-9)
    return report
