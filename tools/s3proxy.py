"""An S3 test proxy: latency, a bandwidth cap, injected faults and counters in front of moto.

The project's tests and benchmarks talk to a loopback moto S3 server. Loopback moto is
unrealistically fast in one way and unrealistically slow in another:

* every request answers in well under a millisecond and bodies arrive at memory speed, so
  code that is fine on loopback may be latency-bound on real S3 (one request per sample,
  no read-ahead, no concurrency);
* moto copies the **whole object** for every ranged GET, so a reader that issues many small
  ranged GETs into a large shard looks quadratically slow on moto although on S3 each one
  costs one round trip plus its own bytes.

:class:`S3Proxy` sits between the client (s3fs/aiobotocore, ``http.client``, ...) and moto
and models S3 instead:

* **time to first byte** -- every request waits ``ttfb`` seconds (uniform jitter of
  ``+-jitter``, seeded RNG) between the end of the request and the start of the response.
  The wait overlaps with the proxy's own work (talking to moto), as a server's latency would;
* **bandwidth cap per connection** -- response bodies are written in ``chunk_size`` pieces,
  paced so that one response never goes faster than ``bandwidth`` bytes/s
  (``bandwidth=None``: unlimited). Request bodies (uploads) are not paced;
* **object GETs are served from the proxy's own copy**: the first plain ``GET /bucket/key``
  fetches the whole object from moto once (concurrent first GETs share that one fetch) and
  keeps it with moto's response headers (ETag, Last-Modified, Content-Type, x-amz-meta-*...);
  every later GET of that key, ranged or not, is answered from memory (``Range: bytes=a-b``,
  ``bytes=a-``, ``bytes=-n``: 206 + Content-Range, 416 InvalidRange when unsatisfiable,
  ``If-Match`` -> 412, ``If-None-Match`` -> 304), so a ranged GET costs what it costs on S3.
  Any PUT/POST/DELETE to a key drops the copy of that key; a PUT/POST/DELETE to a bucket
  (e.g. the multi-delete ``POST /bucket?delete``) drops every copy in that bucket. Only plain
  object GETs are cached (no query besides botocore's ``x-id=GetObject``; no
  ``If-Modified-Since``/``If-Unmodified-Since``): listings, ``?uploads``, ``?partNumber=``,
  ``?versionId=``, HEAD and every write are forwarded to moto unchanged. (The fetch is the
  client's request without Range/If-Match/If-None-Match, so its SigV4 signature, which covers
  Range, no longer matches: fine for moto, which does not verify signatures.)
* **multipart-upload listings are paged** as on S3 (moto lists every upload at once): at most
  ``max-uploads`` (1,000) uploads in key and upload-id order, after ``key-marker`` /
  ``upload-id-marker``, with ``IsTruncated`` and ``NextKeyMarker``/``NextUploadIdMarker``;
* **injected faults**, chosen per request by a rule (:class:`FaultPlan` or any callable
  ``rule(RequestInfo) -> Fault | None`` assigned to ``proxy.faults``) or taken from a one-shot
  queue (:meth:`S3Proxy.inject`, consulted first): ``reset`` (RST, no response; the request
  is not forwarded), ``reset_after`` (headers and ``nbytes`` body bytes, then RST), ``500``/
  ``503`` (an S3 XML error, ``InternalError``/``SlowDown``, which botocore retries; not
  forwarded), ``slow`` (``delay`` extra seconds before the response), ``truncated``
  (Content-Length of the whole body, only ``nbytes`` of it, then a clean close) and
  ``lost_reply`` (the request **is** forwarded and applied by moto, then the connection is
  reset before any byte of the reply: a write that succeeded but whose answer was lost, so
  the client retries something already done). Any other 3-digit status (``"403"``,
  ``"404"``...) is answered as an S3 error too;
* **counters** tests can read (see :meth:`S3Proxy.stats` for a consistent snapshot):
  ``requests`` (by method), ``gets``, ``bytes_sent`` (all response body bytes),
  ``get_bytes`` (body bytes of 2xx GET responses per raw request path -- object and listing
  data, not error documents -- like the old ``CountingProxy.counts``; ``counts`` is an
  alias), ``in_flight``/``max_in_flight`` (overall; ``max_gets_in_flight``: GETs only) and
  ``max_in_flight_by_path``, ``log`` (``(number, method, path, Range)`` of every request, in
  the order they arrived), ``ranges``
  (``(path, Range header)`` of every GET that had one), ``parts_in_flight``/
  ``max_parts_in_flight``/``parts`` (``PUT ...?partNumber=`` uploads), ``upstream``
  (requests sent to moto by method), ``upstream_gets`` (GETs sent to moto per path),
  ``cache_hits`` and ``faults_seen``. :meth:`S3Proxy.reset_counters` zeroes them. Bytes are
  counted before they are written and a request leaves ``in_flight`` just before its last
  bytes go out, so a client holding a whole response already sees the counters that match.

Everything else is forwarded as is: method, path and query, all headers (``Host`` exactly as
the client sent it, so a SigV4 signature made for the proxy's address stays valid), the
request body (``Transfer-Encoding: chunked`` is de-chunked and sent with a Content-Length; an
``aws-chunked`` content encoding inside it is left to moto). Client connections are HTTP/1.1
keep-alive (``Expect: 100-continue`` is answered); each request opens its own connection to
moto. The proxy runs its own asyncio loop on a daemon thread, so synchronous tests use it::

    with loopback_s3_with_proxy(bucket="test", ttfb=0.03, bandwidth=80e6) as (moto_url, proxy):
        fs = s3fs.S3FileSystem(**storage_options(proxy.url))
        fs.pipe("test/a", b"x" * 100)
        assert fs.cat_file("test/a", start=10, end=20) == b"x" * 10
        assert proxy.get_bytes["/test/a"] == 10        # what the client was sent
        assert proxy.upstream_gets["/test/a"] == 1     # moto sent the whole object once
        proxy.inject(Fault("503"), times=2, method="GET")   # the next two GETs fail

or ``proxy = S3Proxy(upstream=moto_url); proxy.start(); ...; proxy.stop()``. Standard
library only (asyncio streams); the helpers need moto (and s3fs to create a bucket).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "S3Proxy",
    "Fault",
    "FaultPlan",
    "RequestInfo",
    "FAULT_KINDS",
    "start_moto",
    "stop_moto",
    "loopback_s3_with_proxy",
    "storage_options",
]

log = logging.getLogger("s3proxy")

FAULT_KINDS = ("reset", "reset_after", "500", "503", "slow", "truncated", "lost_reply")

# Query parameters that do not change what a GET of an object returns (botocore adds
# ``x-id=GetObject`` to every GetObject); anything else makes the GET a pass-through.
_HARMLESS_QUERY = frozenset({"x-id"})
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)
# Fields a response may carry once. moto (werkzeug) sends ``Server`` twice on bucket-level
# responses, which aiohttp's strict parser (python -X dev) rejects; the proxy keeps the first.
_SINGLETON = frozenset({"server", "date", "content-type", "etag", "last-modified", "location"})
_S3_ERRORS = {
    400: ("BadRequest", "Bad Request"),
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    412: ("PreconditionFailed", "At least one of the pre-conditions you specified did not hold"),
    416: ("InvalidRange", "The requested range is not satisfiable"),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}
_REASONS = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    412: "Precondition Failed",
    416: "Requested Range Not Satisfiable",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """One injected fault.

    ``kind`` is one of :data:`FAULT_KINDS` or any 3-digit HTTP status (answered as an S3 XML
    error). ``nbytes``: body bytes sent before the RST (``reset_after``) or the clean close
    (``truncated``); ``None`` = half the body. ``delay``: extra seconds for ``slow``.
    """

    kind: str
    nbytes: int | None = None
    delay: float = 0.5

    def __post_init__(self):
        kind = str(self.kind)
        object.__setattr__(self, "kind", kind)
        if kind not in FAULT_KINDS and not (len(kind) == 3 and kind.isdigit()):
            raise ValueError(
                f"unknown fault kind {kind!r}; use one of {FAULT_KINDS} or a 3-digit status"
            )

    @property
    def status(self) -> int | None:
        """The HTTP status of an error fault, else None."""
        return int(self.kind) if self.kind.isdigit() else None


@dataclass(frozen=True)
class RequestInfo:
    """What a fault rule sees of a request (the body has been read already)."""

    number: int  #: 1-based count of requests this proxy has received since start
    method: str
    path: str  #: raw path as sent, e.g. ``/bucket/dir/key`` (URL-encoded)
    query: str  #: raw query string without ``?`` ('' if none)
    headers: dict[str, str]  #: lower-cased names
    body_length: int = 0

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def bucket(self) -> str:
        return unquote(self.path.lstrip("/").split("/", 1)[0])

    @property
    def key(self) -> str:
        """The object key ('' for a bucket-level request)."""
        parts = self.path.lstrip("/").split("/", 1)
        return unquote(parts[1]) if len(parts) > 1 else ""

    @property
    def params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query, keep_blank_values=True))


FaultRule = Callable[[RequestInfo], "Fault | None"]


@dataclass
class FaultPlan:
    """A random fault rule: each request that passes the filters fails with probability
    ``rate``, with a kind drawn uniformly from ``kinds`` (names or :class:`Fault` objects).

    ``methods``: only these methods (None: all); ``match``: an extra predicate on the
    :class:`RequestInfo`. The RNG is seeded, so a fixed sequence of requests gets a fixed
    sequence of faults. ``nbytes``/``delay`` fill in kinds given by name.
    """

    rate: float = 0.1
    kinds: Sequence[str | Fault] = ("reset", "500", "503")
    seed: int = 0
    methods: Sequence[str] | None = ("GET",)
    match: Callable[[RequestInfo], bool] | None = None
    nbytes: int | None = None
    delay: float = 0.5
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self):
        self._rng = random.Random(self.seed)
        self.kinds = tuple(
            k if isinstance(k, Fault) else Fault(k, self.nbytes, self.delay) for k in self.kinds
        )

    def __call__(self, info: RequestInfo) -> Fault | None:
        if self.methods is not None and info.method not in self.methods:
            return None
        if self.match is not None and not self.match(info):
            return None
        with self._lock:
            if self._rng.random() >= self.rate:
                return None
            return self._rng.choice(self.kinds)


@dataclass
class _Injection:
    fault: Fault
    times: int
    method: str | None
    path_contains: str | None
    match: Callable[[RequestInfo], bool] | None

    def matches(self, info: RequestInfo) -> bool:
        return (
            (self.method is None or info.method == self.method.upper())
            and (self.path_contains is None or self.path_contains in info.path)
            and (self.match is None or bool(self.match(info)))
        )


# --------------------------------------------------------------------------- HTTP plumbing


class _Reset(Exception):
    """Raised inside a handler to abort the client connection with a RST."""


class _Close(Exception):
    """Raised inside a handler to close the client connection cleanly (FIN)."""


@dataclass
class _Request:
    method: str
    target: str  # path + ('?' + query)
    path: str
    query: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        return _header(self.headers, name, default)


def _header(headers: list[tuple[str, str]], name: str, default: str | None = None) -> str | None:
    """The first value of header ``name`` (case-insensitive), else ``default``."""
    name = name.lower()
    for k, v in headers:
        if k.lower() == name:
            return v
    return default


@dataclass
class _Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        return _header(self.headers, name, default)


@dataclass
class _Cached:
    headers: list[tuple[str, str]]  # moto's 200 headers, minus framing
    body: bytes
    etag: str


async def _read_headers(reader: asyncio.StreamReader) -> list[bytes]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        if line in (b"\r\n", b"\n"):
            return lines
        lines.append(line.rstrip(b"\r\n"))


def _parse_header_lines(lines: list[bytes]) -> list[tuple[str, str]]:
    out = []
    for raw in lines:
        name, _, value = raw.decode("latin-1").partition(":")
        out.append((name.strip(), value.strip()))
    return out


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size_line = await reader.readline()
        if not size_line:
            raise asyncio.IncompleteReadError(b"", None)
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            await _read_headers(reader)  # trailers, ended by an empty line
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)  # CRLF after each chunk


async def _read_body(
    reader: asyncio.StreamReader, headers: list[tuple[str, str]], *, until_eof: bool
) -> bytes:
    te = cl = None
    for k, v in headers:
        if k.lower() == "transfer-encoding":
            te = v.lower()
        elif k.lower() == "content-length":
            cl = v
    if te and "chunked" in te:
        return await _read_chunked(reader)
    if cl is not None:
        n = int(cl)
        return await reader.readexactly(n) if n else b""
    return await reader.read() if until_eof else b""


def _head_bytes(status: int, reason: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _s3_error(
    status: int, resource: str, code: str | None = None, message: str | None = None
) -> tuple[list[tuple[str, str]], bytes]:
    dcode, dmsg = _S3_ERRORS.get(status, (f"Http{status}", _REASONS.get(status, "Error")))
    rid = uuid.uuid4().hex[:16].upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code or dcode}</Code><Message>{message or dmsg}</Message>"
        f"<Resource>{resource}</Resource><RequestId>{rid}</RequestId></Error>"
    ).encode()
    headers = [
        ("Content-Type", "application/xml"),
        ("x-amz-request-id", rid),
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Server", "AmazonS3"),
    ]
    return headers, body


def _parse_range(spec: str | None, size: int) -> tuple[int, int] | None | str:
    """``(start, end_inclusive)``, None (no usable range: serve the whole object) or
    ``"unsatisfiable"``."""
    if not spec:
        return None
    spec = spec.strip()
    if not spec.startswith("bytes=") or "," in spec:
        return None  # not a single byte range: ignored, as S3 does
    first, sep, last = spec[6:].strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if last and end < start:
        return None  # syntactically invalid: ignored
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def _etag_matches(header: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/").strip('"') for t in header.split(",")]
    return "*" in tags or etag.strip('"') in tags


# --------------------------------------------------------------------------- the proxy


class S3Proxy:
    """An asyncio HTTP proxy in front of an S3 endpoint (moto); see the module docstring.

    ``upstream``: ``http://host:port`` of moto. ``ttfb``/``jitter``: seconds before each
    response starts (uniform in ``ttfb +- jitter``, never below 0). ``bandwidth``: bytes/s per
    response body, None for unlimited. ``seed``: the latency RNG. ``cache``: serve object
    GETs from the proxy's copy (False: forward every GET). ``faults``: a rule (see
    :class:`FaultPlan`). These attributes may be changed while the proxy runs; the next
    request uses them.
    """

    def __init__(
        self,
        upstream: str,
        *,
        ttfb: float = 0.03,
        jitter: float = 0.01,
        bandwidth: float | None = 80e6,
        seed: int = 0,
        cache: bool = True,
        faults: FaultRule | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        chunk_size: int = 64 * 1024,
        upstream_timeout: float = 60.0,
    ):
        parts = urlsplit(upstream if "//" in upstream else f"http://{upstream}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = upstream
        self._up_host = parts.hostname
        self._up_port = parts.port or 80
        self.ttfb = ttfb
        self.jitter = jitter
        self.bandwidth = bandwidth
        self.cache = cache
        self.faults: FaultRule | None = faults
        self.chunk_size = chunk_size
        self.upstream_timeout = upstream_timeout
        self._host = host
        self._port = port
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._injections: list[_Injection] = []
        # cache state: touched on the loop thread only (cache_clear runs there too)
        self._objects: dict[tuple[str, str], _Cached] = {}
        self._fills: dict[tuple[str, str], asyncio.Future] = {}
        self._key_gen: Counter = Counter()
        self._bucket_gen: Counter = Counter()
        self._number = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port: int | None = None
        self.reset_counters()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the endpoint_url for clients."""
        if self.port is None:
            raise RuntimeError("S3Proxy not started")
        return f"http://{self._host}:{self.port}"

    def start(self) -> S3Proxy:
        """Start the loop thread and listen; returns self once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("S3Proxy already started")
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="s3proxy", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError("S3Proxy failed to start") from self._error
        log.debug("s3proxy on %s -> %s", self.url, self.upstream)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and the listener, and join the loop thread."""
        thread, loop, ev = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and ev is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already gone
                loop.call_soon_threadsafe(ev.set)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("s3proxy loop thread did not stop within %.1fs", timeout)
        self._thread = None
        self.port = None

    close = stop

    def __enter__(self) -> S3Proxy:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            log.exception("s3proxy loop failed")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(self._on_client, self._host, self._port, limit=1 << 20)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            for w in list(self._writers):
                w.transport.abort()
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)
            self._fills.clear()

    # ------------------------------------------------------------------ faults & counters

    def inject(
        self,
        fault: Fault | str,
        times: int = 1,
        *,
        method: str | None = None,
        path_contains: str | None = None,
        match: Callable[[RequestInfo], bool] | None = None,
    ) -> None:
        """Queue ``fault`` for the next ``times`` requests that match ``method`` (e.g.
        "GET"), contain ``path_contains`` in their raw path and satisfy ``match``. Queued
        faults are used up in order and take precedence over ``self.faults``."""
        fault = fault if isinstance(fault, Fault) else Fault(fault)
        with self._lock:
            self._injections.append(_Injection(fault, times, method, path_contains, match))

    def clear_faults(self) -> None:
        """Drop queued injections and the fault rule."""
        with self._lock:
            self._injections.clear()
        self.faults = None

    def reset_counters(self) -> None:
        """Zero every counter (requests still in flight stay counted as in flight)."""
        with self._lock:
            current = getattr(self, "in_flight", 0)
            by_path = getattr(self, "in_flight_by_path", Counter())
            parts = getattr(self, "parts_in_flight", 0)
            gets = getattr(self, "gets_in_flight", 0)
            self.gets_in_flight = gets
            self.max_gets_in_flight = gets
            self.log: list[tuple[int, str, str, str | None]] = []
            self.requests: Counter = Counter()
            self.gets = 0
            self.bytes_sent = 0
            self.get_bytes: Counter = Counter()
            self.in_flight = current
            self.max_in_flight = current
            self.in_flight_by_path: Counter = Counter(by_path)
            self.max_in_flight_by_path: Counter = Counter(+by_path)
            self.ranges: list[tuple[str, str]] = []
            self.parts = 0
            self.parts_in_flight = parts
            self.max_parts_in_flight = parts
            self.upstream: Counter = Counter()
            self.upstream_gets: Counter = Counter()
            self.cache_hits = 0
            self.faults_seen: list[tuple[int, str, str, str]] = []

    @property
    def counts(self) -> Counter:
        """Alias of :attr:`get_bytes` (GET body bytes per path), as ``CountingProxy`` had."""
        return self.get_bytes

    def stats(self) -> dict[str, Any]:
        """A consistent copy of every counter."""
        with self._lock:
            return {
                "requests": dict(self.requests),
                "gets": self.gets,
                "bytes_sent": self.bytes_sent,
                "get_bytes": dict(self.get_bytes),
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "max_gets_in_flight": self.max_gets_in_flight,
                "log": list(self.log),
                "max_in_flight_by_path": dict(self.max_in_flight_by_path),
                "ranges": list(self.ranges),
                "parts": self.parts,
                "parts_in_flight": self.parts_in_flight,
                "max_parts_in_flight": self.max_parts_in_flight,
                "upstream": dict(self.upstream),
                "upstream_gets": dict(self.upstream_gets),
                "cache_hits": self.cache_hits,
                "faults_seen": list(self.faults_seen),
            }

    def cache_clear(self) -> None:
        """Forget every cached object (the next GET of each refetches it from moto)."""
        loop = self._loop
        if loop is not None and self._thread is not None:
            fut = asyncio.run_coroutine_threadsafe(self._clear_async(), loop)
            fut.result(10)
        else:
            self._objects.clear()

    async def _clear_async(self) -> None:
        for bucket, key in list(self._objects) + list(self._fills):
            self._key_gen[(bucket, key)] += 1
        self._objects.clear()

    def cached_keys(self) -> list[tuple[str, str]]:
        """``(bucket, key)`` of every object the proxy holds a copy of."""
        return list(self._objects.copy())

    def _choose_fault(self, info: RequestInfo) -> Fault | None:
        with self._lock:
            for inj in self._injections:
                if inj.times > 0 and inj.matches(info):
                    inj.times -= 1
                    if inj.times <= 0:
                        self._injections.remove(inj)
                    return inj.fault
        rule = self.faults
        return rule(info) if rule is not None else None

    # ------------------------------------------------------------------ connections

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:
                req = await self._read_request(reader, writer)
                if req is None:
                    break
                if not await self._handle(req, writer):
                    break
        except _Reset:
            _abort_with_rst(writer)
        except (
            _Close,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            asyncio.CancelledError,
        ):
            pass
        except Exception:  # noqa: BLE001 - one bad connection must not stop the proxy
            log.exception("s3proxy: connection handler failed")
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _read_request(self, reader, writer) -> _Request | None:
        line = await reader.readline()
        while line in (b"\r\n", b"\n"):  # tolerate stray CRLF between requests
            line = await reader.readline()
        if not line:
            return None
        try:
            method, target, version = line.decode("latin-1").split()
        except ValueError:
            log.warning("s3proxy: bad request line %r", line[:200])
            raise _Close() from None
        headers = _parse_header_lines(await _read_headers(reader))
        if "://" in target:  # absolute-form: keep the origin-form part
            p = urlsplit(target)
            target = p.path + (f"?{p.query}" if p.query else "")
        path, _, query = target.partition("?")
        req = _Request(method.upper(), target, path, query, version, headers)
        if (req.header("expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        req.body = await _read_body(reader, headers, until_eof=False)
        return req

    async def _handle(self, req: _Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; returns whether the connection stays open."""
        loop = asyncio.get_running_loop()
        keep_alive = (
            req.version == "HTTP/1.1" and (req.header("connection") or "").lower() != "close"
        )
        is_part = req.method == "PUT" and "partNumber" in req.query
        with self._lock:
            self._number += 1
            number = self._number
            self.requests[req.method] += 1
            self.log.append((number, req.method, req.path, req.header("range")))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.in_flight_by_path[req.path] += 1
            self.max_in_flight_by_path[req.path] = max(
                self.max_in_flight_by_path[req.path], self.in_flight_by_path[req.path]
            )
            if req.method == "GET":
                self.gets += 1
                self.gets_in_flight += 1
                self.max_gets_in_flight = max(self.max_gets_in_flight, self.gets_in_flight)
                rng = req.header("range")
                if rng:
                    self.ranges.append((req.path, rng))
            if is_part:
                self.parts += 1
                self.parts_in_flight += 1
                self.max_parts_in_flight = max(self.max_parts_in_flight, self.parts_in_flight)
            jitter = self._rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0
            delay = max(0.0, self.ttfb + jitter)
        done = False

        def finish() -> None:
            """Leave the in-flight counts; called just before the response's last bytes go
            out, so a client that has its whole response never sees itself still counted."""
            nonlocal done
            if done:
                return
            done = True
            with self._lock:
                self.in_flight -= 1
                self.in_flight_by_path[req.path] -= 1
                if self.in_flight_by_path[req.path] <= 0:
                    del self.in_flight_by_path[req.path]
                if is_part:
                    self.parts_in_flight -= 1
                if req.method == "GET":
                    self.gets_in_flight -= 1

        try:
            info = RequestInfo(
                number,
                req.method,
                req.path,
                req.query,
                {k.lower(): v for k, v in req.headers},
                len(req.body),
            )
            fault = self._choose_fault(info)
            if fault is not None:
                with self._lock:
                    self.faults_seen.append((number, req.method, req.path, fault.kind))
                log.debug(
                    "s3proxy: fault %s on #%d %s %s", fault.kind, number, req.method, req.target
                )
                if fault.kind == "slow":
                    delay += fault.delay
            deadline = loop.time() + delay

            if fault is not None and fault.kind == "reset":
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                finish()
                raise _Reset()
            if fault is not None and fault.kind == "lost_reply":
                await self._respond(req)  # applied upstream; the reply never leaves
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                finish()
                raise _Reset()
            if fault is not None and fault.status is not None:
                headers, body = _s3_error(fault.status, req.path)
                resp = _Response(
                    fault.status,
                    _REASONS.get(fault.status, "Error"),
                    headers,
                    b"" if req.method == "HEAD" else body,
                )
            else:
                resp = await self._respond(req)
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            return await self._send(req, resp, writer, fault, keep_alive, finish)
        finally:
            finish()

    async def _send(
        self,
        req: _Request,
        resp: _Response,
        writer: asyncio.StreamWriter,
        fault: Fault | None,
        keep_alive: bool,
        finish: Callable[[], None],
    ) -> bool:
        body = resp.body
        headers, seen = [], set()
        for k, v in resp.headers:
            name = k.lower()
            if name in _HOP_BY_HOP or name == "content-length" or name in seen:
                continue
            if name in _SINGLETON:
                seen.add(name)
            headers.append((k, v))
        if req.method == "HEAD":  # moto's Content-Length describes the object: keep it
            cl = resp.header("content-length")
            if cl is not None:
                headers.append(("Content-Length", cl))
        elif resp.status not in (204, 304) and resp.status >= 200:
            headers.append(("Content-Length", str(len(body))))
        kind = fault.kind if fault is not None else None
        send = len(body)
        if kind in ("reset_after", "truncated"):
            n = fault.nbytes if fault.nbytes is not None else len(body) // 2
            send = min(max(n, 0), len(body))
            if kind == "truncated" and body:
                send = min(send, len(body) - 1)  # always short of the Content-Length
            keep_alive = False
        headers.append(("Connection", "keep-alive" if keep_alive else "close"))
        if req.method == "HEAD" or not send:
            finish()
        writer.write(_head_bytes(resp.status, resp.reason, headers))
        await writer.drain()
        if req.method != "HEAD" and send:
            data_path = req.path if req.method == "GET" and 200 <= resp.status < 300 else None
            await self._write_paced(writer, memoryview(body)[:send], data_path, finish)
        if kind == "reset_after":
            raise _Reset()
        if kind == "truncated":
            raise _Close()
        return keep_alive

    async def _write_paced(
        self,
        writer: asyncio.StreamWriter,
        data: memoryview,
        data_path: str | None,
        before_last: Callable[[], None],
    ) -> None:
        """Write ``data`` paced to ``self.bandwidth``; ``data_path``: count it in
        ``get_bytes`` under that path (object data: a 2xx answer to a GET)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        for off in range(0, len(data), self.chunk_size):
            chunk = data[off : off + self.chunk_size]
            with self._lock:  # counted before the client can see them
                self.bytes_sent += len(chunk)
                if data_path is not None:
                    self.get_bytes[data_path] += len(chunk)
            if off + self.chunk_size >= len(data):
                before_last()
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
            bw = self.bandwidth
            if bw:
                wait = start + sent / bw - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)

    # ------------------------------------------------------------------ request routing

    @staticmethod
    def _bucket_key(path: str) -> tuple[str, str]:
        parts = path.lstrip("/").split("/", 1)
        return unquote(parts[0]), unquote(parts[1]) if len(parts) > 1 else ""

    def _cacheable(self, req: _Request) -> bool:
        if not self.cache or req.method != "GET":
            return False
        bucket, key = self._bucket_key(req.path)
        if not bucket or not key:
            return False
        names = {k for k, _ in parse_qsl(req.query, keep_blank_values=True)}
        if names - _HARMLESS_QUERY:
            return False
        return req.header("if-modified-since") is None and req.header("if-unmodified-since") is None

    def _invalidate(self, bucket: str, key: str) -> None:
        if key:
            self._key_gen[(bucket, key)] += 1
            self._objects.pop((bucket, key), None)
        else:
            self._bucket_gen[bucket] += 1
            for bk in [bk for bk in self._objects if bk[0] == bucket]:
                del self._objects[bk]

    async def _respond(self, req: _Request) -> _Response:
        if req.method in ("PUT", "POST", "DELETE"):
            bucket, key = self._bucket_key(req.path)
            self._invalidate(bucket, key)
            try:
                return await self._forward(req)
            finally:
                self._invalidate(bucket, key)  # a fill that raced the write is dropped
        if self._cacheable(req):
            obj = await self._cached_object(req)
            if isinstance(obj, _Response):
                return obj  # moto's answer to the fetch: 404 NoSuchKey...
            if obj is not None:
                with self._lock:
                    self.cache_hits += 1
                return self._serve_cached(req, obj)
        if req.method == "GET" and _has_param(req.query, "uploads"):
            return _paginate_uploads(req, await self._forward(req))
        return await self._forward(req)

    async def _cached_object(self, req: _Request) -> _Cached | _Response | None:
        """The proxy's copy of the object, fetching it once; if the fetch was this request's
        and failed, moto's response; None: forward this GET as it is."""
        bk = self._bucket_key(req.path)
        if bk in self._objects:
            return self._objects[bk]
        pending = self._fills.get(bk)
        if pending is not None:
            return await asyncio.shield(pending)  # None if that fetch failed
        fut = asyncio.get_running_loop().create_future()
        self._fills[bk] = fut
        gens = (self._key_gen[bk], self._bucket_gen[bk[0]])
        obj = None
        try:
            drop = {"range", "if-match", "if-none-match"}
            fill = _Request(
                "GET",
                req.target,
                req.path,
                req.query,
                "HTTP/1.1",
                [(k, v) for k, v in req.headers if k.lower() not in drop],
            )
            resp = await self._forward(fill)
            if resp.status == 200:
                headers = [
                    (k, v)
                    for k, v in resp.headers
                    if k.lower() not in _HOP_BY_HOP
                    and k.lower() not in ("content-length", "content-range")
                ]
                obj = _Cached(headers, resp.body, resp.header("etag") or "")
                if gens == (self._key_gen[bk], self._bucket_gen[bk[0]]):
                    self._objects[bk] = obj
                return obj
            return resp  # 404 NoSuchKey, 403, 502...: this client gets it, nothing is kept
        finally:
            if self._fills.get(bk) is fut:
                del self._fills[bk]
            if not fut.done():
                fut.set_result(obj)

    def _serve_cached(self, req: _Request, obj: _Cached) -> _Response:
        size = len(obj.body)
        if_match = req.header("if-match")
        if if_match is not None and not _etag_matches(if_match, obj.etag):
            headers, body = _s3_error(412, req.path)
            return _Response(412, _REASONS[412], headers, body)
        if_none = req.header("if-none-match")
        if if_none is not None and _etag_matches(if_none, obj.etag):
            keep = ("etag", "last-modified", "date", "x-amz-request-id")
            return _Response(
                304, _REASONS[304], [(k, v) for k, v in obj.headers if k.lower() in keep]
            )
        rng = _parse_range(req.header("range"), size)
        if rng == "unsatisfiable":
            headers, body = _s3_error(416, req.path)
            headers.append(("Content-Range", f"bytes */{size}"))
            return _Response(416, _REASONS[416], headers, body)
        # x-amz-checksum-* describe the whole object: S3 sends them only for a whole-object
        # GET with checksum mode on; botocore would fail to validate a range against them.
        want_sums = rng is None and (req.header("x-amz-checksum-mode") or "").upper() == "ENABLED"
        headers = [
            (k, v)
            for k, v in obj.headers
            if (want_sums or not k.lower().startswith("x-amz-checksum-")) and k.lower() != "date"
        ]
        headers.append(("Date", email.utils.formatdate(usegmt=True)))
        if not any(k.lower() == "accept-ranges" for k, _ in headers):
            headers.append(("Accept-Ranges", "bytes"))
        if rng is None:
            return _Response(200, "OK", headers, obj.body)
        start, end = rng
        headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        return _Response(206, _REASONS[206], headers, obj.body[start : end + 1])

    async def _forward(self, req: _Request) -> _Response:
        """Send ``req`` to moto on a fresh connection and read the whole response."""
        with self._lock:
            self.upstream[req.method] += 1
            if req.method == "GET":
                self.upstream_gets[req.path] += 1
        headers = [
            (k, v)
            for k, v in req.headers
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
        ]
        if req.body or req.method in ("PUT", "POST"):
            headers.append(("Content-Length", str(len(req.body))))
        headers.append(("Connection", "close"))
        head = (
            "\r\n".join([f"{req.method} {req.target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers])
            + "\r\n\r\n"
        )
        try:
            return await asyncio.wait_for(
                self._exchange(head.encode("latin-1"), req), self.upstream_timeout
            )
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            log.warning("s3proxy: upstream %s %s failed: %r", req.method, req.target, exc)
            headers, body = _s3_error(502, req.path, "BadGateway", f"upstream failed: {exc}")
            return _Response(502, _REASONS[502], headers, b"" if req.method == "HEAD" else body)

    async def _exchange(self, head: bytes, req: _Request) -> _Response:
        reader, writer = await asyncio.open_connection(self._up_host, self._up_port, limit=1 << 20)
        try:
            writer.write(head)
            if req.body:
                writer.write(req.body)
            await writer.drain()
            while True:
                status_line = await reader.readline()
                if not status_line:
                    raise asyncio.IncompleteReadError(b"", None)
                _, status, *reason = status_line.decode("latin-1").split(None, 2)
                status = int(status)
                headers = _parse_header_lines(await _read_headers(reader))
                if status >= 200:
                    break  # skip interim 1xx responses
            reason_s = reason[0].strip() if reason else _REASONS.get(status, "")
            if req.method == "HEAD" or status in (204, 304):
                body = b""
            else:
                body = await _read_body(reader, headers, until_eof=True)
            return _Response(status, reason_s, headers, body)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _has_param(query: str, name: str) -> bool:
    return any(k == name for k, _ in parse_qsl(query, keep_blank_values=True))


def _paginate_uploads(req: _Request, resp: _Response) -> _Response:
    """Apply S3's paging to moto's ListMultipartUploads answer, which lists every upload at
    once: at most ``max-uploads`` (default and cap 1,000) uploads in (key, upload id) order,
    after ``key-marker``/``upload-id-marker``, with IsTruncated and the Next*Marker fields."""
    import xml.etree.ElementTree as ET

    if resp.status != 200 or not resp.body:
        return resp
    params = dict(parse_qsl(req.query, keep_blank_values=True))
    try:
        limit = min(1000, max(0, int(params.get("max-uploads") or 1000)))
    except ValueError:
        limit = 1000
    key_marker = params.get("key-marker") or ""
    id_marker = params.get("upload-id-marker") or ""
    try:
        root = ET.fromstring(resp.body)
    except ET.ParseError:
        return resp
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    uploads = root.findall(f"{ns}Upload")

    def order(up) -> tuple[str, str]:
        return (up.findtext(f"{ns}Key") or "", up.findtext(f"{ns}UploadId") or "")

    uploads.sort(key=order)
    if key_marker:
        uploads = [
            u
            for u in uploads
            if order(u)[0] > key_marker
            or (id_marker and order(u)[0] == key_marker and order(u)[1] > id_marker)
        ]
    for up in root.findall(f"{ns}Upload"):
        root.remove(up)
    page, truncated = uploads[:limit], len(uploads) > limit
    for name, value in (
        ("KeyMarker", key_marker),
        ("UploadIdMarker", id_marker),
        ("MaxUploads", str(limit)),
        ("IsTruncated", str(truncated).lower()),
        ("NextKeyMarker", order(page[-1])[0] if page else ""),
        ("NextUploadIdMarker", order(page[-1])[1] if page else ""),
    ):
        el = root.find(f"{ns}{name}")
        if el is None:
            el = ET.SubElement(root, f"{ns}{name}")
        el.text = value
    for up in page:
        root.append(up)
    if ns:
        ET.register_namespace("", ns.strip("{}"))
    body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return _Response(resp.status, resp.reason, resp.headers, body)


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close the socket with a TCP RST (SO_LINGER 0), as a crashed or reset peer would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# --------------------------------------------------------------------------- moto helpers


def storage_options(url: str, key: str = "testing", secret: str = "testing") -> dict:
    """s3fs/fsspec storage options for an endpoint (moto or a proxy) on loopback."""
    return {"client_kwargs": {"endpoint_url": url}, "key": key, "secret": secret}


def start_moto() -> tuple[Any, str]:
    """Start a moto S3 server on 127.0.0.1 (ephemeral port); returns ``(server, url)``.
    Stop it with :func:`stop_moto` (or ``server.stop()``)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def stop_moto(server: Any) -> None:
    """Stop a server from :func:`start_moto` and close its listening socket."""
    server.stop()
    inner = getattr(server, "_server", None)
    if inner is not None:
        with contextlib.suppress(OSError):
            inner.server_close()


@contextlib.contextmanager
def loopback_s3_with_proxy(
    bucket: str | None = None, **proxy_kwargs: Any
) -> Iterator[tuple[str, S3Proxy]]:
    """moto on loopback plus an :class:`S3Proxy` in front of it; yields ``(moto_url,
    proxy)``. ``bucket``: create it first (needs s3fs). Both are stopped on exit."""
    server, moto_url = start_moto()
    try:
        with S3Proxy(moto_url, **proxy_kwargs) as proxy:
            if bucket:  # through the proxy: it tidies moto's duplicate Server header
                import s3fs

                opts = storage_options(proxy.url)
                s3fs.S3FileSystem(skip_instance_cache=True, **opts).mkdir(bucket)
                proxy.reset_counters()
            yield moto_url, proxy
    finally:
        stop_moto(server)


if __name__ == "__main__":  # a manual smoke run: python tools/s3proxy.py
    logging.basicConfig(level=logging.INFO)
    with loopback_s3_with_proxy() as (_moto, _proxy):
        log.info("moto %s, proxy %s; Ctrl-C stops", _moto, _proxy.url)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1)
