"""wdstream's read-ahead through the S3 test proxy (issue 12): ``read_ahead_requests`` 0 (one
request at a time, the reader before concurrent fetching) against 8, with 0 and 2 workers, in
turns, ``--rounds`` rounds (median and min–max). The proxy adds S3's latency (30 ms +- 10 to
first byte, 80 MB/s per connection); images are small (96-128 px, decoded to 32 px) so that
fetching, not decoding, shows. ``loader.stats()`` gives the GETs and the seconds waiting on I/O.

    .venv/bin/python tools/bench_readahead.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))  # helpers.write_test_shards
sys.path.insert(0, HERE)  # s3proxy


def main() -> None:
    import s3fs
    from helpers import write_test_shards
    from s3proxy import loopback_s3_with_proxy, storage_options

    import wdstream

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--shards", type=int, default=6)
    p.add_argument("--per-shard", type=int, default=64)
    args = p.parse_args()
    with loopback_s3_with_proxy(bucket="rabench", ttfb=0.03, jitter=0.01, bandwidth=80e6) as (
        moto,
        proxy,
    ):
        write_test_shards(
            "s3://rabench/ds",
            [args.per_shard] * args.shards,
            storage_options=storage_options(moto),
            audio=False,
            image_px=(96, 128),
        )
        res: dict = {}
        for rnd in range(args.rounds):
            for ra in (0, 8):
                for workers in (0, 2):
                    s3fs.S3FileSystem.clear_instance_cache()
                    c = wdstream.Config(
                        batch_size=16,
                        num_workers=workers,
                        cache_size=64,
                        vision_dim=32,
                        max_text_length=16,
                        read_ahead_requests=ra,
                        storage_options=storage_options(proxy.url),
                    )
                    proxy.reset_counters()
                    t0 = time.perf_counter()
                    first = None
                    n = 0
                    loader = wdstream.make_loader("s3://rabench/ds", c)
                    for b in loader:
                        first = first or time.perf_counter() - t0
                        n += len(b["keys"])
                    dt = time.perf_counter() - t0
                    st = loader.stats()
                    loader.close()
                    res.setdefault((ra, workers), []).append(
                        (
                            n / dt,
                            first,
                            proxy.stats()["gets"],
                            sum(r["get_requests"] for r in st),
                            sum(r["io_wait_s"] for r in st),
                            sum(r["decode_s"] for r in st),
                        )
                    )
                    print(
                        f"round {rnd + 1}: read_ahead_requests {ra}, {workers} workers: "
                        f"{n / dt:.0f} samples/s, first batch {first:.2f} s",
                        flush=True,
                    )
    print(
        "| read_ahead_requests | workers | samples/s median | min–max | first batch s median "
        "| min–max | GETs at the proxy | GETs in stats() | io_wait_s | decode_s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (ra, w), rs in sorted(res.items()):
        sp = [r[0] for r in rs]
        fb = [r[1] for r in rs]
        print(
            f"| {ra} | {w} | {statistics.median(sp):.0f} | {min(sp):.0f}–{max(sp):.0f} | "
            f"{statistics.median(fb):.2f} | {min(fb):.2f}–{max(fb):.2f} | {rs[-1][2]} | "
            f"{rs[-1][3]} | {statistics.median(r[4] for r in rs):.2f} | "
            f"{statistics.median(r[5] for r in rs):.2f} |"
        )


if __name__ == "__main__":
    main()
