"""Ten kill -9s of a conversion to S3 (moto over HTTP) at random moments (once a random number
of its objects is visible), with 1 or 2 workers, each followed by a re-run: nothing partial is ever visible after a kill, and every re-run ends complete and
verified. The moments come from a seed that the test logs (set WDSTREAM_FAULT_SEED to replay
a failure)."""

from __future__ import annotations

import logging
import os
import random
import signal
import time

import pytest
from killing import (
    check_complete,
    kill_when_visible,
    listing,
    start_conversion,
    wait_gone,
)

from wdstream.format.manifest import PartitionRecord
from wdstream.format.verify import verify_shard
from wdstream.write.convert import convert

pytestmark = [pytest.mark.s3, pytest.mark.slow]

log = logging.getLogger(__name__)
KILLS = 10


def _nothing_partial(url, opts):
    """Every visible shard is a whole archive; every record's shards are there, intact."""
    from wdstream import storage

    names = listing(url, opts)
    for name in names:
        if name.startswith("shard-") and name.endswith(".tar"):
            samples, nbytes, _ = verify_shard(storage.join_url(url, name), opts)
            assert samples > 0 and nbytes == names[name], name
        if name.startswith("_partitions/part-"):
            record = PartitionRecord.from_json(
                storage.read_bytes(storage.join_url(url, name), opts)
            )
            for shard in record.shards:
                got = verify_shard(storage.join_url(url, shard.url), opts)
                assert got == (shard.samples, shard.bytes, shard.sha256), shard.url
    return names


def test_ten_random_kills_then_reruns(small_hf_dataset, s3, caplog):
    caplog.set_level(logging.INFO, logger=__name__)
    seed = int(os.environ.get("WDSTREAM_FAULT_SEED") or random.SystemRandom().randrange(2**31))
    log.warning("kill moments from seed %d (replay with WDSTREAM_FAULT_SEED=%d)", seed, seed)
    rng = random.Random(seed)
    opts = s3["storage_options"]
    for round_no in range(KILLS):
        url = f"s3://test/kill{round_no}"
        workers = rng.choice((1, 2))
        # the moment: once this many objects are visible (a whole output holds about 38)
        target = rng.randint(1, 40)
        child = start_conversion(small_hf_dataset, url, workers=workers, options=opts, delay=0.02)
        below, finished = kill_when_visible(child, url, opts, target, poll=0.01)
        assert not wait_gone(sorted(below), timeout=15)  # its workers stop with it
        names = _nothing_partial(url, opts)
        log.info(
            "round %d: workers=%d, kill at %d objects%s; %d visible after",
            round_no,
            workers,
            target,
            " (it had finished)" if finished else "",
            len(names),
        )
        convert(
            small_hf_dataset,
            url,
            max_samples_per_shard=3,
            workers=1,
            quiet=True,
            storage_options=opts,
        )
        check_complete(url, 48, opts)


#: Shards of several 5 MiB parts, 2 parts and 2 shards of a worker uploading at once.
CONCURRENT = {
    "max_samples_per_shard": 10**6,
    "max_shard_bytes": 12 * 2**20,
    "upload_concurrency": 2,
    "upload_buffer_bytes": 10 * 2**20,
}


@pytest.fixture(scope="module")
def large_rows(tmp_path_factory):
    """32 rows of about 0.6 MB in 2 parquet files: partitions of several 5 MiB parts."""
    from wdstream.demo.data import build_parquet_dataset

    return build_parquet_dataset(
        str(tmp_path_factory.mktemp("large")),
        32,
        n_files=2,
        image_size=(700, 900),
        with_audio=False,
    )


def test_random_kills_during_concurrent_uploads_then_reruns(large_rows, s3, caplog):
    """Killed while parts of several shards upload at once: no partial shard is ever visible,
    and after the re-run no multipart upload is left pending."""
    from killing import pending_uploads

    caplog.set_level(logging.INFO, logger=__name__)
    seed = int(os.environ.get("WDSTREAM_FAULT_SEED") or random.SystemRandom().randrange(2**31))
    log.warning("kill moments from seed %d (replay with WDSTREAM_FAULT_SEED=%d)", seed, seed)
    rng = random.Random(seed)
    opts = s3["storage_options"]
    for round_no in range(4):
        url = f"s3://test/ckill{round_no}"
        workers = rng.choice((1, 2))
        child = start_conversion(
            large_rows, url, workers=workers, options=opts, delay=0.01, config=CONCURRENT
        )
        try:
            # the moment: a random time after the first part upload opened
            deadline = time.monotonic() + 120
            while (
                time.monotonic() < deadline and child.poll() is None and not pending_uploads(opts)
            ):
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 1.5))
            saw_upload = child.poll() is None
            if saw_upload:
                os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
        time.sleep(0.5)  # pool workers stop with the driver
        names = _nothing_partial(url, opts)
        log.info(
            "round %d: workers=%d, killed=%s; %d visible after",
            round_no,
            workers,
            saw_upload,
            len(names),
        )
        convert(large_rows, url, workers=1, quiet=True, storage_options=opts, **CONCURRENT)
        check_complete(url, 32, opts)
        assert [
            u["Key"] for u in pending_uploads(opts) if u["Key"].startswith(f"ckill{round_no}/")
        ] == []
