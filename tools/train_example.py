"""Train the tiny multimodal model on wdstream batches, with DDP and a resumable checkpoint.

    torchrun --standalone --nproc_per_node=2 tools/train_example.py SOURCE \
        [--steps 20] [--epochs N] [--config my.yaml] [--set key=value ...] \
        [--storage-option endpoint_url=http://127.0.0.1:9000] [--checkpoint ckpt.pt]

SOURCE is a manifest folder (``s3://bucket/prefix``, a local path) or shard URLs. Training
runs ``--steps`` optimiser steps in all, going on into the next epoch (``loader.set_epoch``)
whenever one ends; ``--epochs N`` stops earlier, at the end of epoch N, if that comes first.
The last line says which of the two stopped it. Every rank
gets the same number of batches (so DDP never waits); with ``--checkpoint`` rank 0 saves the
model, the optimiser and ``loader.state_dict()`` after every ``--save-every`` steps, and a
restarted job (even with another number of ranks or workers) resumes mid-epoch exactly where
the checkpoint was taken.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist

import wdstream
from wdstream.cli.options import parse_storage_options
from wdstream.demo.model import TinyMultimodalModel, train_step


def parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("source")
    p.add_argument(
        "--steps",
        type=int,
        default=20,
        help="optimiser steps in all, over as many epochs as they need (default 20)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="stop at the end of this many epochs even before --steps (default: no limit)",
    )
    p.add_argument("--config", default=None, help="a YAML file of wdstream.Config keys")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (JSON values), e.g. --set batch_size=16",
    )
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec/s3fs option, repeatable (endpoint_url=..., anon=true)",
    )
    p.add_argument("--checkpoint", default=None, help="save/resume here (rank 0 writes it)")
    p.add_argument("--save-every", type=int, default=5, help="checkpoint every N steps")
    args = p.parse_args()

    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    overrides = parse_sets(args.set)
    if args.storage_option:
        overrides["storage_options"] = parse_storage_options(args.storage_option)
    config = wdstream.load_config(args.config, **overrides)

    loader = wdstream.make_loader(args.source, config)
    torch.manual_seed(config.seed)
    model = TinyMultimodalModel(config.vocab_size)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    step, first_epoch = 0, 0
    if args.checkpoint and os.path.exists(args.checkpoint):
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        (model.module if distributed else model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        loader.load_state_dict(ckpt["loader"])  # the rest of the saved epoch, exactly
        step, first_epoch = ckpt["step"], ckpt["loader"]["epoch"]
        if rank == 0:
            print(f"resumed at step {step}, epoch {first_epoch}", flush=True)

    seen, t0 = 0, time.perf_counter()
    epoch, why = first_epoch, f"reached --steps {args.steps}"
    while step < args.steps:
        if args.epochs is not None and epoch >= args.epochs:
            why = f"end of --epochs {args.epochs} before --steps {args.steps}"
            break
        loader.set_epoch(epoch)  # after load_state_dict, the resumed epoch yields only its rest
        batches = 0
        for batch in loader:
            loss = train_step(model, optimizer, batch)
            step += 1
            batches += 1
            seen += len(batch["keys"])
            if rank == 0 and (step % 5 == 0 or step == 1):
                print(
                    f"epoch {epoch} step {step} loss {loss:.3f} synthetic={batch['synthetic']}",
                    flush=True,
                )
            if args.checkpoint and step % args.save_every == 0 and rank == 0:
                torch.save(
                    {
                        "model": (model.module if distributed else model).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "loader": loader.state_dict(),
                        "step": step,
                    },
                    args.checkpoint,
                )
            if step >= args.steps:
                break
        else:
            if rank == 0:
                print(f"end of epoch {epoch} ({batches} steps)", flush=True)
            if batches == 0 and epoch > first_epoch:
                why = "an epoch yielded no batch (fewer samples than one global batch)"
                break
            epoch += 1
    elapsed = time.perf_counter() - t0
    if rank == 0:
        print(
            f"done: {step} steps, {seen} samples on rank 0 in {elapsed:.1f}s "
            f"({seen / max(elapsed, 1e-9):.1f} samples/s per rank); stopped: {why}",
            flush=True,
        )
    loader.close()
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
