"""uploads.py: commit-or-abort streaming writes (local and S3), the background part writer, and
the cleaning of multipart uploads that killed writers left pending."""

from __future__ import annotations

import io
import os

import pytest

from wdstream import uploads
from wdstream.errors import NotFoundError


def test_atomic_write_local_commit_and_abort(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    with uploads.atomic_write(str(target)) as f:
        f.write(b"abc")
        assert not target.exists()  # invisible until committed
        assert [n for n in os.listdir(tmp_path / "sub") if ".partial-" in n]
    assert target.read_bytes() == b"abc"
    with pytest.raises(RuntimeError), uploads.atomic_write(str(tmp_path / "g.bin")) as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert not (tmp_path / "g.bin").exists()
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n]


def test_atomic_file_counts_and_hashes(tmp_path):
    import hashlib

    f = uploads.AtomicFile(str(tmp_path / "h"))
    f.write(b"hello ")
    f.write(b"world")
    f.commit()
    assert f.bytes == 11 and f.hexdigest() == hashlib.sha256(b"hello world").hexdigest()


@pytest.mark.s3
def test_atomic_write_s3_abort_leaves_no_object_and_no_upload(s3):
    fs = s3["fs"]
    url = "s3://test/big.bin"
    opts = dict(s3["storage_options"], default_block_size=5 * 2**20)
    f = uploads.AtomicFile(url, opts)
    f.write(os.urandom(6 * 2**20))  # past the 5 MiB block: a multipart upload is open
    f.flush()
    pending = fs.call_s3("list_multipart_uploads", Bucket="test").get("Uploads", [])
    assert [u["Key"] for u in pending] == ["big.bin"]
    assert not fs.exists("test/big.bin")
    f.discard()
    fs.invalidate_cache()
    assert not fs.exists("test/big.bin")
    assert fs.call_s3("list_multipart_uploads", Bucket="test").get("Uploads", []) == []
    with uploads.atomic_write(url, s3["storage_options"]) as w:
        w.write(b"x" * 100)
    assert fs.cat_file("test/big.bin") == b"x" * 100


def test_background_upload_error_reaches_the_writer_and_nothing_is_kept():
    """A part upload failing on the upload thread is raised in the producer (a stand-in file
    whose write fails plays the broken upload; the thread logic is what is tested)."""

    class Broken:
        def __init__(self):
            self.got = 0

        def write(self, data):
            self.got += len(data)
            raise OSError("part upload failed")

    bg = uploads.BackgroundWriter(Broken(), chunk=4)
    bg.write(b"12345")  # one chunk handed to the thread
    with pytest.raises(OSError, match="part upload failed"):
        bg.finish()
    ok = uploads.BackgroundWriter(io.BytesIO(), chunk=4)
    for part in (b"ab", b"cdef", b"g"):
        ok.write(part)
    ok.finish()
    assert ok.f.getvalue() == b"abcdefg"


@pytest.mark.s3
def test_pending_uploads_are_listed_below_the_folder_page_by_page_and_aborted(s3):
    fs = s3["fs"]
    ids = {}
    for key in ("out/a.tar", "out/sub/b.json", "other/keep.tar"):
        ids[key] = fs.call_s3("create_multipart_upload", Bucket="test", Key=key)["UploadId"]
    found, marker = uploads.list_pending_uploads("s3://test/out", s3["storage_options"])
    assert marker is None  # one page
    assert sorted(found) == [("a.tar", ids["out/a.tar"]), ("sub/b.json", ids["out/sub/b.json"])]
    for name, upload_id in found:
        uploads.abort_upload(f"s3://test/out/{name}", upload_id, s3["storage_options"])
    assert uploads.list_pending_uploads("s3://test/out", s3["storage_options"]) == ([], None)
    left = fs.call_s3("list_multipart_uploads", Bucket="test").get("Uploads", [])
    assert [u["Key"] for u in left] == ["other/keep.tar"]
    # an upload that is gone already (a lost reply's retry) says so with NotFoundError
    with pytest.raises(NotFoundError, match="s3://test/out/a.tar"):
        uploads.abort_upload("s3://test/out/a.tar", ids["out/a.tar"], s3["storage_options"])
