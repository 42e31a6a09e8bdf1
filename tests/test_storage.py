"""storage.py: URLs, small atomic writes, reads, listings, fail-fast checks, error mapping."""

from __future__ import annotations

import os

import pytest

from wdstream import storage
from wdstream.errors import CredentialsError, NotFoundError, StorageError


def test_join_and_expand_urls():
    assert storage.join_url("s3://b/p/", "x.tar") == "s3://b/p/x.tar"
    assert storage.join_url("s3://b/p", "/abs/x.tar") == "/abs/x.tar"
    assert storage.join_url("/a", "memory://x") == "memory://x"
    assert storage.expand_urls("s-{00..02}.tar") == ["s-00.tar", "s-01.tar", "s-02.tar"]
    assert storage.expand_urls(["a{1,2}", "b"]) == ["a1", "a2", "b"]


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
    e = storage.translate_error(
        Exception("NoCredentialsError: Unable to locate credentials"), "s3://b/k", "write"
    )
    assert isinstance(e, CredentialsError) and "AWS_ACCESS_KEY_ID" in str(e)
    e = storage.translate_error(FileNotFoundError("x"), "s3://user:pw@b/k?sig=1", "read")
    assert "pw" not in str(e) and "sig" not in str(e) and "does not exist" in str(e)


@pytest.mark.s3
def test_check_writable_s3_missing_bucket(s3):
    with pytest.raises(StorageError, match="does not exist"):
        storage.check_writable("s3://nobucket/p", s3["storage_options"])
    storage.check_writable("s3://test/p", s3["storage_options"])
    assert not s3["fs"].exists("test/p/_wdstream_write_probe")


def test_local_and_object_store_tests():
    import fsspec

    local, memory = fsspec.filesystem("file"), fsspec.filesystem("memory")
    assert storage.is_local(local) and not storage.is_object_store(local)
    assert storage.is_object_store(memory) and not storage.is_local(memory)
    assert not storage.is_s3(memory)


@pytest.mark.parametrize(
    "url",
    [
        "/tmp/wd/a.tar",
        "file:///tmp/wd/a.tar",
        "memory://b/k/a.tar",
        "s3://bucket/k/a.tar",
        "relative/a.tar",
    ],
)
def test_fs_path_is_the_path_url_to_fs_gives(url):
    fs, path = storage.url_to_fs(url, {"anon": True} if url.startswith("s3") else None)
    assert storage.fs_path(fs, url) == path


def test_write_bytes_local_is_atomic_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "deep" / "m.json"
    storage.write_bytes(str(target), b"{}")
    assert target.read_bytes() == b"{}"
    assert os.listdir(tmp_path / "deep") == ["m.json"]
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        if os.geteuid() != 0:  # root writes anyway
            with pytest.raises(CredentialsError, match="permission denied"):
                storage.write_bytes(str(tmp_path / "ro" / "x"), b"1")
            assert os.listdir(tmp_path / "ro") == []
    finally:
        os.chmod(tmp_path / "ro", 0o700)


def test_download_list_find_identity_and_remove(tmp_path):
    src = tmp_path / "src"
    for name in ("b.tar", "a.tar", "sub/c.tar"):
        storage.write_bytes(str(src / name), name.encode())
    dst = tmp_path / "cache"
    dst.mkdir()
    storage.download(str(src / "a.tar"), str(dst / "a.tar"))
    assert (dst / "a.tar").read_bytes() == b"a.tar"
    with pytest.raises(NotFoundError, match="missing.tar"):
        storage.download(str(src / "missing.tar"), str(dst / "m.tar"))
    assert os.listdir(dst) == ["a.tar"]  # nothing partial left behind
    assert sorted(storage.list_names(str(src))) == ["a.tar", "b.tar", "sub"]
    assert storage.list_names(str(src), prefix="a") == ["a.tar"]
    assert storage.list_names(str(tmp_path / "none")) == []
    assert storage.find_urls(str(src)) == [f"{src}/a.tar", f"{src}/b.tar", f"{src}/sub/c.tar"]
    size, ukey = storage.file_identity(str(src / "a.tar"))
    assert size == 5 and ukey
    storage.write_bytes(str(src / "a.tar"), b"changed")
    assert storage.file_identity(str(src / "a.tar"))[1] != ukey
    storage.remove_file(str(src / "a.tar"))
    with pytest.raises(NotFoundError):
        storage.remove_file(str(src / "a.tar"))


def test_read_many_keeps_the_order_and_reports_each_failure_in_place(tmp_path):
    urls = []
    for i in range(40):
        storage.write_bytes(str(tmp_path / f"{i}.json"), str(i).encode())
        urls.append(str(tmp_path / f"{i}.json"))
    urls.insert(7, str(tmp_path / "missing.json"))
    got = storage.read_many(urls, concurrency=3)
    assert isinstance(got[7], NotFoundError) and "missing.json" in str(got[7])
    assert [int(v) for v in got[:7] + got[8:]] == list(range(40))
    assert storage.read_many([]) == []


@pytest.mark.s3
def test_read_many_on_s3_bounds_requests_in_flight(s3, s3_proxy, s3proxy):
    proxy, opts = s3_proxy
    fs = s3["fs"]
    for i in range(12):
        fs.pipe_file(f"test/r/{i}.json", str(i).encode())
    slow = s3proxy.Fault("slow", delay=0.1)  # GETs overlap long enough to be counted
    proxy.faults = lambda req: slow if req.method == "GET" else None
    proxy.reset_counters()
    urls = [f"s3://test/r/{i}.json" for i in range(12)] + ["s3://test/r/none.json"]
    got = storage.read_many(urls, opts, concurrency=4)
    assert got[:12] == [str(i).encode() for i in range(12)]
    assert isinstance(got[12], NotFoundError)
    assert 1 < proxy.max_in_flight <= 4


# ------------------------------------------------------------------ create if absent


def test_create_new_local_creates_once_whole_and_leaves_no_temp_file(tmp_path):
    url = str(tmp_path / "claims" / "_job-00001.json")
    assert storage.create_new(url, b"first") is True
    assert storage.create_new(url, b"second") is False
    assert storage.read_bytes(url) == b"first"  # the loser changed nothing
    assert os.listdir(tmp_path / "claims") == ["_job-00001.json"]  # no temp file left


def test_create_new_local_without_hard_links_uses_o_excl(tmp_path, monkeypatch):
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    url = str(tmp_path / "a.json")
    assert storage.create_new(url, b"first") is True
    assert storage.create_new(url, b"second") is False
    assert storage.read_bytes(url) == b"first"
    assert os.listdir(tmp_path) == ["a.json"]


def test_create_new_in_memory():
    url = "memory://create-new-test/a.json"
    try:
        assert storage.create_new(url, b"1") is True
        assert storage.create_new(url, b"2") is False
        assert storage.read_bytes(url) == b"1"
    finally:
        storage.remove_file(url)


@pytest.mark.s3
def test_create_new_on_s3_sends_if_none_match_and_moto_refuses_the_second(s3_proxy):
    """The conditional PUT goes through the test proxy unchanged (``If-None-Match: *``) and
    moto answers 412 PreconditionFailed for an existing key: the object keeps the first bytes.
    Of eight threads creating one key at once, exactly one succeeds."""
    import threading

    proxy, opts = s3_proxy
    headers = []
    proxy.faults = lambda info: (
        headers.append(info.headers.get("if-none-match")) if info.method == "PUT" else None
    )
    url = "s3://test/claims/_job-00001.json"
    assert storage.create_new(url, b"first", opts) is True
    assert storage.create_new(url, b"second", opts) is False
    assert storage.read_bytes(url, opts) == b"first"
    assert headers == ["*", "*"]
    proxy.faults = None
    won = []

    def claim(i: int) -> None:
        if storage.create_new("s3://test/claims/race", str(i).encode(), opts):
            won.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert storage.read_bytes("s3://test/claims/race", opts) == str(won[0]).encode()


@pytest.mark.s3
def test_create_new_on_s3_whose_reply_was_lost_finds_its_own_object(s3_proxy, s3proxy):
    """A PUT applied by the store whose reply was lost is retried by botocore and then told the
    key exists: create_new answers False, and the object holds this writer's bytes, which is
    how the caller tells its own claim from another's (it reads the object back)."""
    proxy, opts = s3_proxy
    proxy.inject(s3proxy.Fault("lost_reply"), method="PUT", path_contains="lost")
    url = "s3://test/claims/lost.json"
    assert storage.create_new(url, b"mine", opts) is False
    assert storage.read_bytes(url, opts) == b"mine"
    assert [f for f in proxy.faults_seen if "lost" in str(f)]


def test_check_writable_by_two_jobs_at_once(tmp_path, monkeypatch):
    """Two jobs starting on one output share the probe's name: the one whose probe the other
    already removed is not told that the output cannot be written (issue 22: two appends at
    once made one of them fail on the probe)."""
    url = str(tmp_path / "out")
    remove = storage.remove_file

    def removed_by_the_other_first(probe, *args, **kwargs):
        remove(probe, *args, **kwargs)  # the other job's removal
        remove(probe, *args, **kwargs)  # this job's: NotFoundError

    monkeypatch.setattr(storage, "remove_file", removed_by_the_other_first)
    storage.check_writable(url)
    assert os.listdir(url) == []


@pytest.mark.s3
def test_create_new_on_s3_without_conditional_writes_falls_back_loudly(s3, monkeypatch, caplog):
    """An endpoint that answers NotImplemented, or a botocore too old to send If-None-Match:
    the object is written after an existence check, with a WARNING that says a race is then
    not detected (never a silent plain overwrite, never a failed append)."""
    import botocore.exceptions
    import s3fs

    opts = s3["storage_options"]
    fs = s3fs.S3FileSystem(**opts)
    calls = fs.call_s3

    for error in (
        botocore.exceptions.ParamValidationError(report='Unknown parameter "IfNoneMatch"'),
        botocore.exceptions.ClientError(
            {"Error": {"Code": "NotImplemented", "Message": "no"}}, "PutObject"
        ),
    ):

        def refuse(method, *args, error=error, **kwargs):
            if kwargs.get("IfNoneMatch"):
                raise error
            return calls(method, *args, **kwargs)

        monkeypatch.setattr(fs, "call_s3", refuse)
        url = f"s3://test/fallback/{type(error).__name__}"
        caplog.clear()
        assert storage.create_new(url, b"1", fs=fs) is True
        assert storage.create_new(url, b"2", fs=fs) is False
        assert storage.read_bytes(url, opts) == b"1"
        assert "not told apart" in caplog.text
