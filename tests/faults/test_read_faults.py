"""Reading an epoch from S3 through 20% faults at the S3 test proxy (resets, 500/503, bodies
cut short): every sample is delivered or counted as an error, none is lost silently.

The accounting a user relies on: ``loader.stats()`` says, per worker, what it skipped (by
reason) and how many planned samples it could not deliver (placeholders). In exact mode a
placeholder is replaced by a good sample of the same batch, so the distinct keys delivered
plus the placeholders make up the whole epoch, and every missing key's shard is named in a
WARNING.
"""

from __future__ import annotations

import logging

import pytest
from helpers import write_test_shards

import wdstream
from wdstream.format.schema import make_key

pytestmark = [pytest.mark.s3, pytest.mark.slow]

SIZES = [12, 9, 15, 12]  # 48 samples: whole batches, so no padding and nothing dropped
KINDS = ("reset", "500", "503", "reset_after", "truncated")
log = logging.getLogger(__name__)


@pytest.mark.parametrize(
    "workers, seed, broken", [(0, 11, None), (2, 12, None), (0, 13, 2), (2, 14, 2)]
)
def test_epoch_through_20pct_faults_loses_nothing_silently(
    s3, s3_proxy, s3proxy, tmp_path, workers, seed, broken
):
    """``broken``: a shard whose every GET also fails (404: deleted mid-epoch; HEAD works), so
    that samples are certainly lost and the counting is exercised."""
    log.info("fault seed %d (replay: the same seed gives the same faults per request)", seed)
    url = "s3://test/faults"
    m = write_test_shards(
        url, SIZES, storage_options=s3["storage_options"], seed=seed, image_px=(100, 200)
    )
    shard_of = {
        make_key(part, row): s.url
        for part, (s, n) in enumerate(zip(m.shards, SIZES, strict=True))
        for row in range(n)
    }
    proxy, via_proxy = s3_proxy
    plan = s3proxy.FaultPlan(rate=0.2, kinds=KINDS, methods=("GET",), seed=seed)
    gone = None if broken is None else f"/test/faults/{m.shards[broken].url}"
    proxy.faults = lambda info: (
        s3proxy.Fault("404") if info.method == "GET" and info.path == gone else plan(info)
    )
    # A file handler: DataLoader workers are forked and inherit it, so their WARNINGs
    # land here too (pytest's log capture sees only this process).
    logfile = tmp_path / "wdstream.log"
    handler = logging.FileHandler(logfile)
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("wdstream")
    logger.addHandler(handler)
    try:
        config = wdstream.Config(
            batch_size=4,
            num_workers=workers,
            cache_size=8,
            vision_dim=16,
            max_audio_length=200,
            max_text_length=16,
            persistent_workers=False,
            storage_options=via_proxy,
            read_block_size=4096,
            error_tolerance=-1,
        )
        loader = wdstream.make_loader(url, config)
        batches = list(loader)
    finally:
        logger.removeHandler(handler)
        handler.close()
    faults = proxy.stats()["faults_seen"]
    assert len(faults) >= 5, "the proxy injected too few faults for this test to mean anything"

    keys = [k for b in batches for k in b["keys"]]
    assert len(batches) == len(loader) == 12 and len(keys) == 48  # every planned batch
    delivered = set(keys)
    assert delivered <= set(shard_of)
    text = logfile.read_text()
    rows = loader.stats()
    assert len(rows) == max(1, workers)
    placeholders = sum(row["placeholders"] for row in rows)
    skipped = [row["skipped"] for row in rows]
    missing = set(shard_of) - delivered
    # none lost silently: each planned sample is delivered once, or is a counted placeholder
    assert len(delivered) + placeholders == 48, (sorted(missing), rows)
    assert len(missing) == placeholders
    for key in missing:  # and the WARNINGs name where each one went
        assert f"key {key}" in text or f"{shard_of[key]}" in text, (key, text)
    if placeholders:
        assert any(counts for counts in skipped)
    if broken is not None:
        lost = {k for k, url in shard_of.items() if url == m.shards[broken].url}
        assert lost <= missing and any(c.get("unreadable shard") for c in skipped)
    log.info(
        "%d GETs, %d faults injected (%s); %d of 48 samples not delivered (counted): %s",
        proxy.stats()["gets"],
        len(faults),
        sorted({f[3] for f in faults}),
        placeholders,
        skipped,
    )
