"""storage.py: URLs, commit-or-abort writes (local and S3), fail-fast checks, error mapping."""

from __future__ import annotations

import io
import os

import pytest

from wdstream import storage
from wdstream.errors import CredentialsError, StorageError


def test_join_and_expand_urls():
    assert storage.join_url("s3://b/p/", "x.tar") == "s3://b/p/x.tar"
    assert storage.join_url("s3://b/p", "/abs/x.tar") == "/abs/x.tar"
    assert storage.join_url("/a", "memory://x") == "memory://x"
    assert storage.expand_urls("s-{00..02}.tar") == ["s-00.tar", "s-01.tar", "s-02.tar"]
    assert storage.expand_urls(["a{1,2}", "b"]) == ["a1", "a2", "b"]


def test_atomic_write_local_commit_and_abort(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    with storage.atomic_write(str(target)) as f:
        f.write(b"abc")
        assert not target.exists()  # invisible until committed
        assert [n for n in os.listdir(tmp_path / "sub") if ".partial-" in n]
    assert target.read_bytes() == b"abc"
    with pytest.raises(RuntimeError), storage.atomic_write(str(tmp_path / "g.bin")) as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert not (tmp_path / "g.bin").exists()
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n]


def test_atomic_file_counts_and_hashes(tmp_path):
    import hashlib

    f = storage.AtomicFile(str(tmp_path / "h"))
    f.write(b"hello ")
    f.write(b"world")
    f.commit()
    assert f.bytes == 11 and f.hexdigest() == hashlib.sha256(b"hello world").hexdigest()


def test_read_helpers(tmp_path):
    p = str(tmp_path / "r.bin")
    storage.write_bytes(p, b"0123456789")
    assert storage.read_bytes(p) == b"0123456789"
    with storage.open_read(p, offset=4) as f:
        assert f.read(3) == b"456"
    assert storage.exists(p) and not storage.exists(p + "x")
    with pytest.raises(StorageError, match="does not exist"):
        storage.read_bytes(p + "x")


def test_check_writable_local(tmp_path):
    storage.check_writable(str(tmp_path / "new" / "folder"))
    assert os.listdir(tmp_path / "new" / "folder") == []  # the probe is removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="cannot write"):
        storage.check_writable(str(tmp_path / "file" / "out"))


def test_translate_error_messages():
    e = storage.translate_error(Exception("NoCredentialsError: Unable to locate credentials"),
                                "s3://b/k", "write")
    assert isinstance(e, CredentialsError) and "AWS_ACCESS_KEY_ID" in str(e)
    e = storage.translate_error(FileNotFoundError("x"), "s3://user:pw@b/k?sig=1", "read")
    assert "pw" not in str(e) and "sig" not in str(e) and "does not exist" in str(e)


@pytest.mark.s3
def test_atomic_write_s3_abort_leaves_no_object_and_no_upload(s3):
    fs = s3["fs"]
    url = "s3://test/big.bin"
    opts = dict(s3["storage_options"], default_block_size=5 * 2**20)
    f = storage.AtomicFile(url, opts)
    f.write(os.urandom(6 * 2**20))  # past the 5 MiB block: a multipart upload is open
    f.flush()
    uploads = fs.call_s3("list_multipart_uploads", Bucket="test").get("Uploads", [])
    assert [u["Key"] for u in uploads] == ["big.bin"]
    assert not fs.exists("test/big.bin")
    f.discard()
    fs.invalidate_cache()
    assert not fs.exists("test/big.bin")
    assert fs.call_s3("list_multipart_uploads", Bucket="test").get("Uploads", []) == []
    with storage.atomic_write(url, s3["storage_options"]) as w:
        w.write(b"x" * 100)
    assert fs.cat_file("test/big.bin") == b"x" * 100


@pytest.mark.s3
def test_check_writable_s3_missing_bucket(s3):
    with pytest.raises(StorageError, match="does not exist"):
        storage.check_writable("s3://nobucket/p", s3["storage_options"])
    storage.check_writable("s3://test/p", s3["storage_options"])
    assert not s3["fs"].exists("test/p/_wdstream_write_probe")


def test_background_upload_error_reaches_the_writer_and_nothing_is_kept():
    """A part upload failing on the upload thread is raised in the producer (a stand-in file
    whose write fails plays the broken upload; the thread logic is what is tested)."""

    class Broken:
        def __init__(self):
            self.got = 0

        def write(self, data):
            self.got += len(data)
            raise OSError("part upload failed")

    bg = storage._BackgroundWriter(Broken(), chunk=4)
    bg.write(b"12345")  # one chunk handed to the thread
    with pytest.raises(OSError, match="part upload failed"):
        bg.finish()
    ok = storage._BackgroundWriter(io.BytesIO(), chunk=4)
    for part in (b"ab", b"cdef", b"g"):
        ok.write(part)
    ok.finish()
    assert ok.f.getvalue() == b"abcdefg"
