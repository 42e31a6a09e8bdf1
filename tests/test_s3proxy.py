"""tools/s3proxy.py against a real moto server, through s3fs and raw HTTP clients."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import socket
import threading
import time
import urllib.request
import zlib

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def moto_url(s3proxy):
    server, url = s3proxy.start_moto()
    yield url
    s3proxy.stop_moto(server)


@pytest.fixture(scope="module")
def _shared(s3proxy, moto_url):
    """One proxy and one s3fs client for the module (making a botocore client is slow)."""
    import s3fs

    with s3proxy.S3Proxy(moto_url) as p:
        yield p, s3fs.S3FileSystem(skip_instance_cache=True, **s3proxy.storage_options(p.url))


@pytest.fixture
def proxy(_shared, moto_url):
    """The shared proxy, reset: no latency, no cap, no faults, nothing cached or counted;
    moto holds one empty bucket 'test'."""
    p, fs = _shared
    p.ttfb, p.jitter, p.bandwidth = 0.0, 0.0, None
    p.clear_faults()
    p.cache_clear()
    fs.invalidate_cache()
    fs.mkdir("test")
    p.reset_counters()
    yield p
    urllib.request.urlopen(
        urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"), timeout=10
    ).close()


@pytest.fixture
def fs(_shared, proxy):
    return _shared[1]


def signed(
    url: str,
    path: str,
    headers: dict | None = None,
    method: str = "GET",
    payload: str | None = None,
) -> dict:
    """``headers`` plus a SigV4 signature for ``method url+path`` (moto refuses anonymous
    GETs); ``payload``: the x-amz-content-sha256 value (default: that of an empty body)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method, url + path, headers=headers or {})
    signer = S3SigV4Auth(Credentials("testing", "testing"), "s3", "us-east-1")
    if payload is not None:
        signer.payload = lambda _request: payload
    signer.add_auth(request)
    return dict(request.headers.items())


def raw_get(url: str, path: str, headers: dict | None = None, conn=None):
    """A signed GET with http.client; returns (status, lower-cased headers, body)."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection(url.split("//")[1], timeout=10)
    try:
        conn.request("GET", path, headers=signed(url, path, headers))
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        if own:
            conn.close()


def raw_exchange(url: str, path: str) -> tuple[bytes, str]:
    """Send one GET on a raw socket and read until the server ends the connection;
    returns (everything received, "eof" or "reset")."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in signed(url, path).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data, "reset"
            if not chunk:
                return data, "eof"
            data += chunk


def test_writes_through_the_proxy_read_back_identical(fs, proxy):
    small = os.urandom(1000)
    fs.pipe("test/small.bin", small)
    big = os.urandom(12 * 2**20 + 123)
    with fs.open("test/big.bin", "wb", block_size=5 * 2**20) as f:
        for i in range(0, len(big), 4 * 2**20):  # each write past a block flushes a part
            f.write(big[i : i + 4 * 2**20])
    assert proxy.parts >= 2 and proxy.requests["POST"] == 2  # initiate + complete
    assert fs.cat_file("test/small.bin") == small
    assert fs.cat_file("test/big.bin") == big
    assert fs.info("test/big.bin")["size"] == len(big)  # HEAD passes through
    assert proxy.in_flight == 0 and proxy.parts_in_flight == 0


def test_chunked_request_bodies_are_forwarded(fs, proxy):
    """botocore sends Content-Length bodies over http; other clients may send chunked ones,
    also with an aws-chunked body (trailing checksum) inside, which moto decodes."""
    body = os.urandom(20_000)
    conn = http.client.HTTPConnection(proxy.url.split("//")[1], timeout=10)
    try:
        conn.request(
            "PUT",
            "/test/plain",
            body=iter([body[:7000], body[7000:]]),
            encode_chunked=True,
            headers=signed(proxy.url, "/test/plain", method="PUT", payload="UNSIGNED-PAYLOAD"),
        )
        assert conn.getresponse().read() == b""
        crc = base64.b64encode(zlib.crc32(body).to_bytes(4, "big"))
        framed = b"%x\r\n%s\r\n0\r\nx-amz-checksum-crc32:%s\r\n\r\n" % (len(body), body, crc)
        headers = {
            "Content-Encoding": "aws-chunked",
            "x-amz-trailer": "x-amz-checksum-crc32",
            "x-amz-decoded-content-length": str(len(body)),
        }
        conn.request(
            "PUT",
            "/test/aws",
            body=iter([framed[:100], framed[100:]]),
            encode_chunked=True,
            headers=signed(
                proxy.url,
                "/test/aws",
                headers,
                method="PUT",
                payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            ),
        )
        assert conn.getresponse().read() == b""
    finally:
        conn.close()
    assert proxy.requests["PUT"] == 2
    assert fs.cat_file("test/plain") == fs.cat_file("test/aws") == body


def test_ranged_gets_are_served_from_one_upstream_fetch(fs, proxy):
    data = os.urandom(300_000)
    fs.pipe("test/shard-0.tar", data)
    proxy.reset_counters()
    spans = [(0, 10), (1000, 50_000), (123_456, 123_457), (299_000, 300_000)]
    for start, end in spans:
        assert fs.cat_file("test/shard-0.tar", start=start, end=end) == data[start:end]
    path = "/test/shard-0.tar"
    assert proxy.get_bytes[path] == proxy.counts[path] == sum(e - s for s, e in spans)
    assert proxy.upstream_gets[path] == 1  # moto sent the object once, whole
    assert proxy.cache_hits == len(spans)
    assert [r for _, r in proxy.ranges] == [f"bytes={s}-{e - 1}" for s, e in spans]
    assert proxy.cached_keys() == [("test", "shard-0.tar")]

    # the Range forms S3 supports, answered from the copy
    status, headers, body = raw_get(proxy.url, path, {"Range": "bytes=-100"})
    assert (status, body) == (206, data[-100:])
    assert headers["content-range"] == f"bytes 299900-299999/{len(data)}"
    assert headers["etag"] == fs.info("test/shard-0.tar")["ETag"]
    status, headers, body = raw_get(proxy.url, path, {"Range": "bytes=299990-"})
    assert (status, body, headers["content-length"]) == (206, data[299990:], "10")
    status, _, body = raw_get(proxy.url, path, {"Range": "bytes=299990-999999"})
    assert (status, body) == (206, data[299990:])
    status, headers, body = raw_get(proxy.url, path, {"Range": "bytes=300000-"})
    assert status == 416 and b"<Code>InvalidRange</Code>" in body
    assert headers["content-range"] == f"bytes */{len(data)}"
    status, _, body = raw_get(proxy.url, path)
    assert (status, body) == (200, data)
    etag = fs.info("test/shard-0.tar")["ETag"]
    assert raw_get(proxy.url, path, {"If-Match": '"nope"'})[0] == 412
    assert raw_get(proxy.url, path, {"If-Match": etag, "Range": "bytes=0-0"})[2] == data[:1]
    assert raw_get(proxy.url, path, {"If-None-Match": etag})[0] == 304
    assert proxy.upstream_gets[path] == 1
    # listings are not objects: passed through every time
    fs.invalidate_cache()
    fs.ls("test")
    fs.ls("test", refresh=True)
    assert proxy.upstream_gets["/test"] == 2


def test_ttfb_is_applied_to_every_request(fs, proxy):
    fs.pipe("test/a", b"x" * 100)
    proxy.ttfb = 0.05
    conn = http.client.HTTPConnection(proxy.url.split("//")[1], timeout=10)
    try:
        t0 = time.perf_counter()
        for _ in range(5):  # one keep-alive connection
            assert raw_get(proxy.url, "/test/a", conn=conn)[0] == 200
        assert time.perf_counter() - t0 >= 0.2
    finally:
        conn.close()
    assert proxy.requests["GET"] == 5


def test_bandwidth_caps_a_response_body(fs, proxy):
    data = os.urandom(4_000_000)
    fs.pipe("test/four-mb", data)  # uploads are not paced
    proxy.bandwidth = 20e6
    t0 = time.perf_counter()
    status, _, body = raw_get(proxy.url, "/test/four-mb")
    assert time.perf_counter() - t0 >= 0.15
    assert (status, body) == (200, data)
    assert proxy.bytes_sent >= len(data)


@pytest.mark.parametrize("kind, code", [("500", "InternalError"), ("503", "SlowDown")])
def test_error_faults_answer_s3_xml_errors(fs, proxy, s3proxy, kind, code):
    fs.pipe("test/a", b"abc")
    proxy.inject(s3proxy.Fault(kind), method="GET")
    status, headers, body = raw_get(proxy.url, "/test/a")
    assert status == int(kind) and headers["content-type"] == "application/xml"
    assert f"<Code>{code}</Code>".encode() in body
    assert raw_get(proxy.url, "/test/a")[2] == b"abc"  # one-shot: the next GET is served
    assert [f[3] for f in proxy.faults_seen] == [kind]


def test_connection_faults_seen_by_a_raw_client(fs, proxy, s3proxy):
    data = os.urandom(10_000)
    fs.pipe("test/obj", data)
    assert raw_get(proxy.url, "/test/obj")[2] == data  # now cached

    proxy.inject(s3proxy.Fault("reset"))
    assert raw_exchange(proxy.url, "/test/obj") == (b"", "reset")

    proxy.inject(s3proxy.Fault("reset_after", nbytes=1000))
    received, end = raw_exchange(proxy.url, "/test/obj")
    head, _, body = received.partition(b"\r\n\r\n")
    assert end == "reset" and head.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: 10000" in head and body == data[:1000]

    proxy.inject(s3proxy.Fault("truncated", nbytes=2500))
    received, end = raw_exchange(proxy.url, "/test/obj")
    head, _, body = received.partition(b"\r\n\r\n")
    assert end == "eof" and b"Content-Length: 10000" in head and body == data[:2500]
    conn = http.client.HTTPConnection(proxy.url.split("//")[1], timeout=10)
    proxy.inject(s3proxy.Fault("truncated"))  # default: half the body
    conn.request("GET", "/test/obj")
    with pytest.raises(http.client.IncompleteRead) as info:
        conn.getresponse().read()
    assert info.value.partial == data[:5000]
    conn.close()

    proxy.inject(s3proxy.Fault("slow", delay=0.2))
    t0 = time.perf_counter()
    assert raw_get(proxy.url, "/test/obj")[2] == data
    assert time.perf_counter() - t0 >= 0.2
    assert [f[3] for f in proxy.faults_seen] == [
        "reset",
        "reset_after",
        "truncated",
        "truncated",
        "slow",
    ]


def test_s3fs_reads_through_two_injected_503s(fs, proxy, s3proxy):
    data = os.urandom(5000)
    fs.pipe("test/shard-7.tar", data)
    proxy.reset_counters()
    proxy.inject(s3proxy.Fault("503"), times=2, method="GET", path_contains="shard-")
    assert fs.cat_file("test/shard-7.tar") == data
    assert [f[3] for f in proxy.faults_seen] == ["503", "503"]
    assert proxy.requests["GET"] == 3
    assert proxy.get_bytes["/test/shard-7.tar"] == len(data)  # error documents not counted
    assert proxy.bytes_sent > len(data)


def test_fault_rules_plan_and_callable(fs, proxy, s3proxy):
    plan = s3proxy.FaultPlan(
        rate=0.5,
        kinds=("500", "reset"),
        seed=1,
        methods=("GET",),
        match=lambda req: "shard" in req.key,
    )

    def info(n, method="GET", path="/b/shard-1"):
        return s3proxy.RequestInfo(n, method, path, "", {})

    draws = [plan(info(n)) for n in range(40)]
    again = s3proxy.FaultPlan(rate=0.5, kinds=("500", "reset"), seed=1)
    assert draws == [again(info(n)) for n in range(40)]  # seeded
    assert {f.kind for f in draws if f} == {"500", "reset"} and draws.count(None) > 5
    assert plan(info(0, "PUT")) is None and plan(info(0, path="/b/index.json")) is None

    fs.pipe("test/obj", b"0123456789")
    proxy.faults = lambda req: s3proxy.Fault("500") if req.range == "bytes=0-3" else None
    assert raw_get(proxy.url, "/test/obj", {"Range": "bytes=0-3"})[0] == 500
    assert raw_get(proxy.url, "/test/obj", {"Range": "bytes=4-5"})[2] == b"45"
    proxy.clear_faults()
    assert raw_get(proxy.url, "/test/obj", {"Range": "bytes=0-3"})[2] == b"0123"


def test_max_in_flight_counts_concurrent_requests(fs, proxy):
    fs.pipe("test/obj", b"y" * 1000)
    proxy.reset_counters()
    proxy.ttfb = 0.3
    barrier = threading.Barrier(6)
    results = []

    def worker():
        barrier.wait()
        results.append(raw_get(proxy.url, "/test/obj")[0])

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [200] * 6
    assert proxy.max_in_flight == 6 and proxy.max_in_flight_by_path["/test/obj"] == 6
    assert proxy.in_flight == 0 and proxy.stats()["gets"] == 6
    assert proxy.upstream_gets["/test/obj"] == 1  # concurrent first GETs share one fetch


def test_part_uploads_in_flight(fs, proxy, s3proxy, tmp_path):
    local = tmp_path / "f.bin"
    local.write_bytes(os.urandom(10 * 2**20 + 1))  # parts of 5 MiB, 5 MiB and 1 byte
    slow_parts = s3proxy.Fault("slow", delay=0.2)  # only the part uploads wait
    proxy.faults = lambda req: slow_parts if "partNumber" in req.params else None
    fs.put_file(str(local), "test/up.bin", chunksize=5 * 2**20, max_concurrency=3)
    assert proxy.parts == 3 and proxy.max_parts_in_flight == 3
    assert proxy.parts_in_flight == 0
    assert fs.cat_file("test/up.bin") == local.read_bytes()


def test_writes_and_deletes_invalidate_the_copy(fs, proxy):
    fs.pipe("test/k", b"old bytes")
    assert fs.cat_file("test/k", start=0, end=3) == b"old"
    fs.pipe("test/k", b"NEW BYTES!")
    assert fs.cat_file("test/k", start=0, end=3) == b"NEW"
    assert fs.cat_file("test/k") == b"NEW BYTES!"
    assert proxy.upstream_gets["/test/k"] == 2
    fs.pipe("test/other", b"o")
    assert fs.cat_file("test/other") == b"o"
    assert len(proxy.cached_keys()) == 2
    fs.rm(["test/k", "test/other"])  # one multi-delete POST /test?delete
    assert proxy.cached_keys() == []
    with pytest.raises(FileNotFoundError):
        fs.cat_file("test/k")
    proxy.reset_counters()
    for _ in range(2):
        status, _, body = raw_get(proxy.url, "/test/k")
        assert status == 404 and b"<Code>NoSuchKey</Code>" in body
    assert proxy.upstream_gets["/test/k"] == 2  # moto's 404 is passed on, not kept


def test_forwarded_requests_keep_a_valid_sigv4_signature(s3proxy, moto_url, proxy):
    """Chain two proxies: what the inner one receives is what the outer one forwarded.
    Recomputing the signature with the secret shows a strict server would accept it, and
    only because Host is kept as the client sent it."""
    import s3fs
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    seen = []
    with s3proxy.S3Proxy(
        proxy.url, ttfb=0, jitter=0, bandwidth=None, faults=lambda req: seen.append(req)
    ) as outer:
        outer_host = outer.url.split("//")[1]
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3proxy.storage_options(outer.url))
        body = b"signed body"
        fs.pipe("test/signed", body)
        assert fs.cat_file("test/signed") == body

    def signature(req, host):
        auth = dict(
            p.strip().split("=", 1)
            for p in req.headers["authorization"].split(" ", 1)[1].split(",")
        )
        _, _, region, service, _ = auth["Credential"].split("/")
        names = auth["SignedHeaders"].split(";")
        headers = {n: (host if n == "host" else req.headers[n]) for n in names}
        url = f"http://{host}{req.path}" + (f"?{req.query}" if req.query else "")
        request = AWSRequest(req.method, url, headers=headers)
        request.context["timestamp"] = req.headers["x-amz-date"]
        signer = S3SigV4Auth(Credentials("testing", "testing"), service, region)
        return auth["Signature"], signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request
        )

    put, get = seen[0], seen[-1]
    assert (put.method, get.method) == ("PUT", "GET")
    assert put.headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
    for req in (put, get):
        assert req.headers["host"] == outer_host
        sent, recomputed = signature(req, req.headers["host"])
        assert sent == recomputed
        sent, as_moto = signature(req, moto_url.split("//")[1])
        assert sent != as_moto  # rewriting Host to the upstream would break it


def test_loopback_helper_stops_its_threads(s3proxy):
    import s3fs

    before = set(threading.enumerate())
    with s3proxy.loopback_s3_with_proxy(bucket="bkt", ttfb=0.01) as (moto_url, proxy):
        assert moto_url != proxy.url
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3proxy.storage_options(proxy.url))
        fs.pipe("bkt/x", b"1")
        assert fs.cat_file("bkt/x") == b"1"
    with pytest.raises(RuntimeError):
        proxy.url  # noqa: B018
    deadline = time.monotonic() + 5
    while True:  # moto's per-request threads may take a moment to end
        extra = {
            t
            for t in set(threading.enumerate()) - before
            if t.name != "fsspecIO" and not t.name.startswith("asyncio_")
        }
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not extra


def test_lost_reply_applies_the_request_then_resets(fs, proxy, s3proxy):
    """``lost_reply``: moto applies the request, the client gets a reset and no byte, so the
    client's retry meets the state the first try made: here the upload is already gone."""
    up = fs.call_s3("create_multipart_upload", Bucket="test", Key="k")
    proxy.inject(s3proxy.Fault("lost_reply"), method="DELETE")
    with pytest.raises(FileNotFoundError):  # botocore retried: NoSuchUpload
        fs.call_s3("abort_multipart_upload", Bucket="test", Key="k", UploadId=up["UploadId"])
    assert proxy.upstream["DELETE"] == 2  # both tries reached moto; the first one aborted it
    assert fs.call_s3("list_multipart_uploads", Bucket="test").get("Uploads", []) == []
    assert [f[3] for f in proxy.faults_seen] == ["lost_reply"]


def test_multipart_upload_listings_are_paged_as_on_s3(fs, proxy):
    """moto lists every upload at once; the proxy pages them as S3 does (1,000 at most,
    key then upload id order, KeyMarker/UploadIdMarker to go on)."""
    made = sorted(
        (
            f"p/k{i % 7}",
            fs.call_s3("create_multipart_upload", Bucket="test", Key=f"p/k{i % 7}")["UploadId"],
        )
        for i in range(1003)
    )
    seen, markers, pages = [], {}, 0
    while True:
        resp = fs.call_s3("list_multipart_uploads", Bucket="test", Prefix="p/", **markers)
        pages += 1
        seen += [(u["Key"], u["UploadId"]) for u in resp.get("Uploads", [])]
        if not resp["IsTruncated"]:
            break
        markers = {"KeyMarker": resp["NextKeyMarker"], "UploadIdMarker": resp["NextUploadIdMarker"]}
    assert pages == 2 and seen == made
    small = fs.call_s3("list_multipart_uploads", Bucket="test", MaxUploads=10)
    assert len(small["Uploads"]) == 10 and small["IsTruncated"]
    assert [(u["Key"], u["UploadId"]) for u in small["Uploads"]] == made[:10]
