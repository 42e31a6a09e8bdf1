"""Conversion to S3 through 20% injected faults at the shared S3 test proxy (resets, resets
mid-body, 500, 503, truncated bodies, on GET, PUT and POST): the job finishes, or fails with a
clean error and a clean re-run finishes. Either way the manifest verifies, every sample is
there exactly once, and no multipart upload is left pending.

Depends on the conversion-side fixes of issue 14 items 1 and 2 (idempotent, paginated abort of
pending uploads; small objects as single PUTs) for the "no pending uploads" part."""

from __future__ import annotations

import logging

import pytest
from killing import check_complete, pending_uploads

from wdstream.errors import WdstreamError
from wdstream.write.convert import convert

pytestmark = [pytest.mark.s3, pytest.mark.slow]

log = logging.getLogger(__name__)

KINDS = ("reset", "500", "503", "reset_after", "truncated")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_conversion_through_20_percent_faults(seed, small_hf_dataset, s3_proxy, s3proxy):
    proxy, opts = s3_proxy
    url = f"s3://test/faults{seed}"
    proxy.faults = s3proxy.FaultPlan(
        rate=0.2, kinds=KINDS, seed=seed, methods=("GET", "PUT", "POST"), nbytes=64
    )
    try:
        m = convert(
            small_hf_dataset,
            url,
            max_samples_per_shard=5,
            workers=1,
            quiet=True,
            storage_options=opts,
        )
        log.info("seed %d: finished through the faults (%d samples)", seed, m.samples)
    except (WdstreamError, OSError) as exc:  # a clean failure: a re-run must finish it
        log.info("seed %d: failed cleanly: %s: %s", seed, type(exc).__name__, exc)
    finally:
        faults = len(proxy.faults_seen)
        proxy.clear_faults()
    assert faults > 0  # the faults really happened
    m = convert(
        small_hf_dataset, url, max_samples_per_shard=5, workers=1, quiet=True, storage_options=opts
    )
    check_complete(url, 48, opts)
    clean = convert(
        small_hf_dataset,
        f"s3://test/clean{seed}",
        max_samples_per_shard=5,
        workers=1,
        quiet=True,
        storage_options=opts,
    )
    assert [(s.url, s.sha256) for s in m.shards] == [(s.url, s.sha256) for s in clean.shards]
    assert pending_uploads(opts) == []
