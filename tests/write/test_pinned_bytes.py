"""Same bytes: the sha256 of every shard of a small source is pinned.

Speed work on the row path and the upload path (issue 13) must not move these. A change that
alters the output on purpose (media checks, audio formats, the tar layout) updates the hashes
in the same commit and says why in its message.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from wdstream import storage
from wdstream.demo.data import build_parquet_dataset
from wdstream.write.convert import convert

#: 48 rows (JPEG/PNG images, FLAC audio, text, id, label) in 4 parquet files, 5 samples a shard.
PINNED = {
    "shard-00000-00000.tar": "2e937511f0e1df479aa3ec5d4421fa8d94efca0f61319eeac7af61aa8136839f",
    "shard-00000-00001.tar": "9e0f76ad68415f82be1fb9341b1c4f6622f2d631c7efc38ae4b2464e3b6cec9b",
    "shard-00000-00002.tar": "cb8bcfba68882e69611df239c92f3e25ac3104f35406e01e566ca5d6319a66e8",
    "shard-00001-00000.tar": "ac53b4cb08db0993b495351ef639932f04b94dc4b93c2918d68b61b53b4884b0",
    "shard-00001-00001.tar": "45b65dbc479daaf7de56edf86374b2ba45312276ac8886a31743add97877b026",
    "shard-00001-00002.tar": "3428493997dd2becd34a9a63ab61015ce40208329d737fab2a19ae9c06c0375f",
    "shard-00002-00000.tar": "213b1217d75a2fb9cd585bb7e0aedfc76a6e3b322b064c6e207ee4b8d0dd6cca",
    "shard-00002-00001.tar": "f2bf96f40d107e7aa2cc1c052fe758cca1971d5f1b75c1d217f7c96d431ce16a",
    "shard-00002-00002.tar": "d77cf510696243ac64e4b198e4b92815b77327f540366dc6cfd1471383962bb1",
    "shard-00003-00000.tar": "f77f2a567a42505127fb2204cd6123ab86e6d93c66140d9df2a9ca69ec30b865",
    "shard-00003-00001.tar": "f6e426a55991d90ccce3f01884308738796f996060d2cc7f1dd75c99721d7081",
    "shard-00003-00002.tar": "d89a7e80f07f5afca6ec8cfa1f19282adcb0c58e02ed272bd657d6d25102289b",
}


@pytest.fixture
def pinned_source(tmp_path_factory, monkeypatch):
    """The source's name relative to the working folder: the ``.json`` members carry it."""
    folder = _SOURCE.get("folder")
    if folder is None:
        folder = _SOURCE["folder"] = str(tmp_path_factory.mktemp("pinned"))
        build_parquet_dataset(os.path.join(folder, "pinned"), 48, n_files=4)
    monkeypatch.chdir(folder)
    return "pinned"


_SOURCE: dict[str, str] = {}


def _hashes(url, manifest, storage_options=None):
    out = {}
    for shard in manifest.shards:
        data = storage.read_bytes(storage.join_url(url, shard.url), storage_options)
        digest = hashlib.sha256(data).hexdigest()
        assert shard.sha256 == digest and shard.bytes == len(data), shard.url
        out[shard.url] = digest
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_local_shards_keep_their_pinned_sha256(pinned_source, tmp_path, workers):
    out = str(tmp_path / "out")
    manifest = convert(pinned_source, out, max_samples_per_shard=5, workers=workers, quiet=True)
    assert _hashes(out, manifest) == PINNED
    assert not [n for n in os.listdir(out) if ".partial-" in n]


def test_s3_shards_keep_their_pinned_sha256(pinned_source, s3):
    url = "s3://test/pinned"
    opts = s3["storage_options"]
    manifest = convert(
        pinned_source, url, max_samples_per_shard=5, workers=1, quiet=True, storage_options=opts
    )
    assert _hashes(url, manifest, opts) == PINNED


@pytest.mark.parametrize(
    "name", ["a", "00000_000000001.jpg", "x" * 100, "x" * 101, "é/ü.flac", "dir/sub/key.seg.png"]
)
@pytest.mark.parametrize("size", [0, 1, 511, 512, 10**6, 8**11 - 1, 8**11])
def test_member_headers_are_tarfiles_bytes(name, size):
    """The converter's own header writer gives the bytes tarfile gives."""
    import tarfile

    from wdstream.format.tario import MTIME, member_header

    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = size, MTIME, 0o444, 0, 0
    info.uname = info.gname = ""
    assert member_header(name, size) == info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
