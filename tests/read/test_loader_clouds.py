"""The reader on GCS (fake-gcs-server) and Azure (Azurite) as on S3: 2 ranks x 2 workers under
torchrun read a converted dataset exactly (every sample once but the documented drop, equal
batches per rank), each worker making its own filesystem."""

from __future__ import annotations

import json
import os

import pytest
from helpers import write_test_shards
from test_loader_s3 import torchrun

pytestmark = pytest.mark.torchrun


def test_torchrun_two_ranks_two_workers_read_every_sample_once(cloud, tmp_path):
    opts = cloud["storage_options"]
    url = f"{cloud['url']}/tr"
    m = write_test_shards(url, [30, 3, 18], storage_options=opts, audio=False)
    torchrun([url, str(tmp_path), "--workers", "2", "--storage-options", json.dumps(opts)])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == ranks[0]["len"] == 51 // 8
    assert all(len(b) == 4 for r in ranks for b in r["batches"])
    keys = [[k for b in r["batches"] for k in b] for r in ranks]
    assert len(set(keys[0] + keys[1])) == len(keys[0]) + len(keys[1])  # none twice
    assert m.samples - len(keys[0]) - len(keys[1]) == 51 % 8
    assert os.path.exists(tmp_path / "rank1.json")
