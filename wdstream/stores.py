"""One rule per object store: which package and extra opens it, where its endpoint is, how a
dead endpoint fails fast, what its credential errors look like and what to set instead, and
the request timeouts every store's client gets. :mod:`wdstream.storage` calls these; nothing
else needs to know which store a URL is on.

The rules, store by store (docs/distributed.md says the same for users):

- **Reachable or not, within seconds.** Before a command's first request (the probes
  :func:`wdstream.storage.check_readable` and :func:`~wdstream.storage.check_writable`),
  :func:`check_reachable` opens a TCP connection to the store's endpoint (DNS included, at
  most :data:`PROBE_TIMEOUT` seconds, through the HTTP(S) proxy when one applies). A refused
  connection or an unknown host is one StorageError naming the URL and the endpoint, where
  the clients would retry for 15 s (s3fs), 37 s (gcsfs) or 90 s (the Azure SDK). A reachable
  endpoint is remembered for the process. The default AWS endpoint (no ``endpoint_url``) is
  not probed: its host depends on the bucket's region; the probe's one-attempt botocore
  options (:func:`fast_fail_options`) fail it within seconds instead.
- **Requests during work** (reads in an epoch, uploads) are retried by each store's client
  with exponential backoff, and every request has a connect timeout of
  :data:`CONNECT_TIMEOUT` and a read timeout of :data:`READ_TIMEOUT` seconds on every store
  (:func:`client_options`; an option the user set wins). What stays the client's own is the
  number of attempts: botocore 5 (and s3fs 5 around it), gcsfs 6 (fixed in gcsfs), the Azure
  SDK 4.
- **Credentials.** :func:`credentials_error` recognises each store's "missing" or "rejected"
  credential errors and names what to set for that store (:attr:`Store.credentials`).
- **gcsfs's bucket-layout switch.** gcsfs 2026.3 and later ask each bucket for its layout
  over gRPC before any operation unless ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` is set
  when gcsfs is imported; an emulator or a private endpoint cannot answer, and every
  operation waits about 60 s. :func:`prepare` sets it when the ``endpoint_url`` (or
  ``STORAGE_EMULATOR_HOST``) is not Google's and gcsfs is not imported yet, and
  :func:`filesystem_class` uses gcsfs's plain class when gcsfs was imported with it on.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from .errors import CredentialsError, StorageError, redact

log = logging.getLogger(__name__)

__all__ = [
    "Store",
    "STORES",
    "PROBE_TIMEOUT",
    "CONNECT_TIMEOUT",
    "READ_TIMEOUT",
    "GCSFS_SWITCH",
    "store_of",
    "endpoint",
    "prepare",
    "filesystem_class",
    "client_options",
    "fast_fail_options",
    "check_reachable",
    "credentials_error",
    "missing_package_error",
]

PROBE_TIMEOUT = 5.0  # seconds for the TCP probe of an endpoint, DNS included
CONNECT_TIMEOUT = 10  # seconds to open a connection, every request, every store
READ_TIMEOUT = 60  # seconds without a byte of the answer, every request, every store
GCSFS_SWITCH = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"


@dataclass(frozen=True)
class Store:
    """An object store as wdstream knows it: its URL schemes, the fsspec package that opens
    it and the wdstream extra that installs that package, and what to set for credentials."""

    name: str
    protocols: tuple[str, ...]
    package: str
    extra: str
    credentials: str


S3 = Store(
    "S3",
    ("s3", "s3a"),
    "s3fs",
    "",  # s3fs is a dependency of wdstream itself
    "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or an instance role), or "
    "pass --storage-option key=... --storage-option secret=...",
)
GCS = Store(
    "GCS",
    ("gs", "gcs"),
    "gcsfs",
    "gcs",
    "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run 'gcloud auth "
    "application-default login' (application-default credentials), or pass --storage-option "
    "token=PATH-TO-KEY.json (token=anon for a public bucket)",
)
AZURE = Store(
    "Azure",
    ("az", "abfs", "abfss"),
    "adlfs",
    "azure",
    "set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with "
    "AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN (or --storage-option "
    "account_name=... account_key=... / sas_token=...), or sign in for DefaultAzureCredential "
    "(az login, a managed identity, or AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET) "
    "with --storage-option account_name=... anon=false",
)
STORES = (S3, GCS, AZURE)


def store_of(url_or_protocol: str | tuple | list) -> Store | None:
    """The :class:`Store` of a URL (``gs://b/x``), a protocol (``"gs"``) or a filesystem's
    protocol tuple; None for local files, ``memory://`` and other fsspec file systems."""
    if isinstance(url_or_protocol, (tuple, list)):
        protocols = tuple(url_or_protocol)
    else:
        protocols = (
            url_or_protocol.split("://", 1)[0] if "://" in url_or_protocol else url_or_protocol,
        )
    for store in STORES:
        if any(p in store.protocols for p in protocols):
            return store
    return None


# ------------------------------------------------------------------------------- endpoints


def _azure_connection_endpoint(conn: str) -> str | None:
    parts = {}
    for item in conn.split(";"):
        name, sep, value = item.partition("=")
        if sep:
            parts[name.strip().lower()] = value.strip()
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        return "http://127.0.0.1:10000"
    if parts.get("blobendpoint"):
        return parts["blobendpoint"]
    account = parts.get("accountname")
    if account:
        scheme = parts.get("defaultendpointsprotocol", "https")
        suffix = parts.get("endpointsuffix", "core.windows.net")
        return f"{scheme}://{account}.blob.{suffix}"
    return None


def endpoint(url: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """The endpoint URL the store's client will contact for ``url`` with these options (and
    the environment variables the client honours); None for local files and other file
    systems, and for S3 without an ``endpoint_url`` (the bucket's region picks the host)."""
    opts = storage_options or {}
    store = store_of(url)
    if store is S3:
        return (
            (opts.get("client_kwargs") or {}).get("endpoint_url")
            or opts.get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
    if store is GCS:
        found = opts.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST") or ""
        if found in ("", "default"):
            return "https://storage.googleapis.com"
        return found if "://" in found else "http://" + found
    if store is AZURE:
        conn = opts.get("connection_string") or (
            None if opts.get("account_name") else os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        )
        if conn:
            return _azure_connection_endpoint(conn)
        if opts.get("account_host"):
            return "https://" + str(opts["account_host"])
        account = opts.get("account_name") or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
        if account:
            return f"https://{account}.blob.core.windows.net"
    return None


def _is_google_host(url: str | None) -> bool:
    host = urllib.parse.urlparse(url or "").hostname or ""
    return host == "googleapis.com" or host.endswith(".googleapis.com")


# ------------------------------------------------------------------ before a filesystem


def prepare(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """What must happen before the filesystem for ``url`` is made: on GCS, the gcsfs switch
    (set before gcsfs is imported, for an endpoint that is not Google's) and a check that a
    ``token`` naming a file names one that exists (gcsfs would take a missing file's name for
    a raw access token and ask Google whether it is one). Raises CredentialsError."""
    if store_of(url) is not GCS:
        return
    where = endpoint(url, storage_options)
    if not _is_google_host(where) and "gcsfs" not in sys.modules:
        if os.environ.setdefault(GCSFS_SWITCH, "false").lower() not in ("false", "0"):
            log.warning(
                "%s=%s is set, and gcsfs will ask %s for each bucket's layout over gRPC, "
                "which emulators and private endpoints do not answer (about 60 s per "
                "operation); unset it or set it to false",
                GCSFS_SWITCH,
                os.environ[GCSFS_SWITCH],
                redact(where or ""),
            )
    token = (storage_options or {}).get("token")
    if (
        isinstance(token, str)
        and token not in ("anon", "google_default", "cache", "cloud", "browser")
        and (os.sep in token or token.endswith(".json"))
        and not os.path.exists(token)
    ):
        raise CredentialsError(
            f"cannot open {redact(url)}: the token file {token} does not exist; {GCS.credentials}",
            url=url,
        )


def filesystem_class(url: str, storage_options: dict[str, Any] | None = None):
    """The fsspec class to open ``url`` with where it differs from fsspec's registry, else
    None: gcsfs's plain ``GCSFileSystem`` for an endpoint that is not Google's when gcsfs
    was imported with its bucket-layout lookup on (its extended class then replaces the
    plain one)."""
    if store_of(url) is not GCS or _is_google_host(endpoint(url, storage_options)):
        return None
    gcsfs = sys.modules.get("gcsfs")
    if gcsfs is None:
        return None
    import gcsfs.core

    if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
        return gcsfs.core.GCSFileSystem
    return None


def client_options(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """The storage options a filesystem for ``url`` is made with: the user's, plus the
    connect and read timeouts of every store's requests where the user set none. Options of
    another store's client (``client_kwargs`` that ``--storage-option endpoint_url=`` adds for
    s3fs) are dropped."""
    opts = dict(storage_options or {})
    store = store_of(url)
    if store is S3:
        ck = dict(opts.get("config_kwargs") or {})
        ck.setdefault("connect_timeout", CONNECT_TIMEOUT)
        ck.setdefault("read_timeout", READ_TIMEOUT)
        opts["config_kwargs"] = ck
    elif store is GCS:
        if set(opts.get("client_kwargs") or {}) <= {"endpoint_url"}:
            opts.pop("client_kwargs", None)
        if "requests_timeout" not in opts:
            import aiohttp

            opts["requests_timeout"] = aiohttp.ClientTimeout(
                sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
            )
    elif store is AZURE:
        if set(opts.get("client_kwargs") or {}) <= {"endpoint_url"}:
            opts.pop("client_kwargs", None)
        opts.pop("endpoint_url", None)  # adlfs takes it from the connection string/account
        opts.setdefault("connection_timeout", CONNECT_TIMEOUT)
        opts.setdefault("read_timeout", READ_TIMEOUT)
    return opts


def fast_fail_options(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Storage options for a one-shot probe: on S3, one attempt and a short connect timeout
    (botocore and s3fs would otherwise retry a refused connection for ~15 s). Other stores'
    probes are fast by :func:`check_reachable`."""
    opts = dict(storage_options or {})
    if store_of(url) is S3:
        ck = dict(opts.get("config_kwargs") or {})
        ck.setdefault("retries", {"max_attempts": 1, "mode": "standard"})
        ck.setdefault("connect_timeout", PROBE_TIMEOUT)
        opts["config_kwargs"] = ck
    return opts


# ------------------------------------------------------------------------------ the probe

_reached: set[tuple[str, int]] = set()
_reached_lock = threading.Lock()


def _proxy_for(target: str) -> str | None:
    """The proxy URL the clients would use for ``target`` (HTTP(S)_PROXY, NO_PROXY)."""
    parsed = urllib.parse.urlparse(target)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parsed.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parsed.hostname or ""):
        return None
    return proxy


def _connect(host: str, port: int, timeout: float) -> str:
    """'' once a TCP connection to ``host:port`` opened within ``timeout`` seconds, else why
    not. DNS runs in a daemon thread too, so an unanswered lookup cannot hang the caller."""
    result: list[str] = []

    def probe() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            result.append(f"unknown host {host} ({exc})")
            return
        why = ""
        for family, kind, proto, _, addr in infos:  # each address, as the clients try them
            try:
                with socket.socket(family, kind, proto) as sock:
                    sock.settimeout(timeout)
                    sock.connect(addr)
                result.append("")
                return
            except ConnectionRefusedError:
                why = why or "connection refused"
            except OSError as exc:
                why = why or f"{type(exc).__name__}: {exc}"
        result.append(why or f"no address for {host}")

    thread = threading.Thread(target=probe, name="wdstream-store-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result[0] if result else f"no answer within {timeout:.0f} s"


def check_reachable(
    url: str, storage_options: dict[str, Any] | None = None, *, timeout: float = PROBE_TIMEOUT
) -> None:
    """Fail within ``timeout`` seconds when the endpoint of ``url``'s store cannot be
    reached (refused connection, unknown host, no answer), with one StorageError naming the
    URL and the endpoint. Local files, other file systems and S3 without an ``endpoint_url``
    are not probed; an endpoint reached once is not probed again in this process."""
    where = endpoint(url, storage_options)
    if not where:
        return
    target = _proxy_for(where) or where
    parsed = urllib.parse.urlparse(target if "://" in target else "http://" + target)
    host = parsed.hostname
    if not host:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    with _reached_lock:
        if (host, port) in _reached:
            return
    why = _connect(host, port, timeout)
    if why:
        via = f" through the proxy {redact(target)}" if target != where else ""
        raise StorageError(
            f"cannot reach {redact(url)}: its endpoint {redact(where)}{via} is not reachable "
            f"({why}); check endpoint_url and the network",
            url=url,
        )
    with _reached_lock:
        _reached.add((host, port))


# ----------------------------------------------------------------------------- the errors

# What each store's client raises for missing or rejected credentials, as text in
# "TypeName: message" (the cause included): matched in that order, per store.
_AWS_CREDENTIALS = (
    "NoCredentials",
    "Unable to locate credentials",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
)
_GCS_CREDENTIALS = (
    "DefaultCredentialsError",
    "RefreshError",
    "Invalid Credentials",
    "invalid_grant",
    "'code': 401",
    "JSONDecodeError",  # a token file that is not JSON
    "Token format not understood",
    "MalformedError",
)
_AZURE_CREDENTIALS = (
    "ClientAuthenticationError",
    "AuthenticationFailed",
    "Server failed to authenticate",
    "NoAuthenticationInformation",
    "Must provide either a connection_string or account_name with credentials",
    "CredentialUnavailableError",
    "InvalidAuthenticationInfo",
)


def _text(exc: BaseException) -> str:
    parts = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(parts) < 4:
        seen.add(id(exc))
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return " | ".join(parts)


def credentials_error(exc: BaseException, url: str, action: str) -> CredentialsError | None:
    """A CredentialsError naming the URL and what to set for its store, when ``exc`` says
    credentials are missing or rejected; else None. A URL of no known store is checked
    against every store's errors (S3's message then)."""
    text = _text(exc)
    store = store_of(url)
    checks = (
        [(store, {S3: _AWS_CREDENTIALS, GCS: _GCS_CREDENTIALS, AZURE: _AZURE_CREDENTIALS}[store])]
        if store is not None
        else [(S3, _AWS_CREDENTIALS)]
    )
    for found, needles in checks:
        if any(n in text for n in needles):
            what = "object-store" if found is S3 else found.name
            return CredentialsError(
                f"cannot {action} {redact(url)}: no valid {what} credentials "
                f"({type(exc).__name__}). {found.credentials[0].upper()}{found.credentials[1:]}",
                url=url,
            )
    return None


def missing_package_error(url: str, exc: BaseException) -> StorageError | None:
    """The StorageError for a URL whose store's package is not installed, naming the extra
    that installs it; None when ``exc`` is not that."""
    store = store_of(url)
    if store is None or not isinstance(exc, ImportError):
        return None
    text = str(exc)
    if store.package not in text and getattr(exc, "name", None) != store.package:
        return None
    install = f"pip install 'wdstream[{store.extra}]'" if store.extra else "pip install wdstream"
    return StorageError(
        f"cannot open {redact(url)}: {store.name} needs the package {store.package}, which is "
        f"not installed; {install}",
        url=url,
    )
