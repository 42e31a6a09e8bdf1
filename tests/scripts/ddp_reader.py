"""Run under torchrun (gloo, CPU): each rank reads with make_loader and records its batches.

    torchrun --standalone --nproc_per_node=2 ddp_reader.py SOURCE OUT --workers 2 [--stop K]
        [--resume STATE.json] [--storage-options JSON]

Writes OUT/rank<R>.json with the keys of each batch; with --stop K, rank 0 also writes
OUT/state.json after K batches (the checkpointed loader state).
"""

import argparse
import json
import os

import torch.distributed as dist

import wdstream


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("source")
    p.add_argument("out")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--stop", type=int, default=None)
    p.add_argument("--resume", default=None)
    p.add_argument("--storage-options", default="{}")
    args = p.parse_args()
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    config = wdstream.Config(
        batch_size=args.batch_size,
        num_workers=args.workers,
        cache_size=32,
        vision_dim=16,
        max_audio_length=200,
        max_text_length=16,
        storage_options=json.loads(args.storage_options),
    )
    loader = wdstream.make_loader(args.source, config)
    if args.resume:
        with open(args.resume) as f:
            loader.load_state_dict(json.load(f))
    batches = []
    for batch in loader:
        batches.append(batch["keys"])  # a training step would consume the batch here
        if dist.is_initialized():
            dist.barrier()  # lockstep, as a DDP step would be
        if args.stop is not None and len(batches) == args.stop:
            break  # checkpoint after this step: the state counts every batch handed out
    rank = dist.get_rank() if dist.is_initialized() else 0
    if args.stop is not None and rank == 0:
        with open(os.path.join(args.out, "state.json"), "w") as f:
            json.dump(loader.state_dict(), f)
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump({"batches": batches, "len": len(loader)}, f)
    loader.close()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
