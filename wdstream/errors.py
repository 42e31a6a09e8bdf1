"""Errors raised by wdstream, and the error budget used for skip-and-count policies.

Every error carries the place it happened (``url``, ``shard``, ``key``) and its message says
what to do. Errors subclass the builtin a caller would already catch (``OSError`` for I/O,
``ValueError`` for bad data or arguments), as litdata does.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from typing import Any

__all__ = [
    "WdstreamError",
    "ConfigError",
    "SourceError",
    "HubUnreachableError",
    "ColumnError",
    "StorageError",
    "NotFoundError",
    "CredentialsError",
    "ShardReadError",
    "TarFormatError",
    "TarTruncatedError",
    "SampleError",
    "SkipSample",
    "TooManyErrors",
    "ErrorBudget",
    "redact",
    "is_secret_name",
    "redact_options",
]

log = logging.getLogger(__name__)


def redact(url: str) -> str:
    """Drop credentials and query strings (signed URLs) from a URL before it is logged."""
    if not isinstance(url, str):
        return repr(url)
    scheme, sep, rest = url.partition("://")
    if sep:
        host, slash, path = rest.partition("/")
        if "@" in host:
            host = "***@" + host.rsplit("@", 1)[1]
        rest = host + slash + path
        url = scheme + sep + rest
    return url.split("?", 1)[0]


# option names that hold (or may hold) a credential: key, secret, token, password,
# aws_secret_access_key, session_token, account_key, sas_token, connection_string, ...
_SECRET_NAME = re.compile(
    r"key|secret|token|passw|credential|sas|connection_string|auth", re.IGNORECASE
)


def is_secret_name(name: Any) -> bool:
    """True for an option name that holds (or may hold) a credential; the one rule used to
    keep secrets out of logs, reprs and cluster task arguments."""
    return bool(_SECRET_NAME.search(str(name)))


def redact_options(options: Any) -> Any:
    """A copy of storage options fit to show: every credential's value replaced by ``***``
    (nested dicts such as ``client_kwargs`` included) and URLs passed through :func:`redact`."""
    if isinstance(options, dict):
        return {
            name: "***"
            if is_secret_name(name) and not isinstance(value, dict)
            else redact_options(value)
            for name, value in options.items()
        }
    if isinstance(options, (list, tuple)):
        return type(options)(redact_options(v) for v in options)
    if isinstance(options, str) and "://" in options:
        return redact(options)
    return options


class WdstreamError(Exception):
    """Base class. ``url``, ``shard`` and ``key`` say where the problem is, when known."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        shard: str | None = None,
        key: str | None = None,
    ):
        self.url = redact(url) if url else url
        self.shard = redact(shard) if shard else shard
        self.key = key
        super().__init__(message)


class ConfigError(WdstreamError, ValueError):
    """A bad config key or value, or a bad argument."""


class SourceError(WdstreamError, OSError):
    """A data source (a Hugging Face dataset, a manifest, a shard pattern) cannot be opened."""


class HubUnreachableError(SourceError):
    """The Hugging Face Hub cannot be reached (offline, DNS, firewall)."""


class ColumnError(WdstreamError, KeyError):
    """A named column does not exist in the source."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class StorageError(WdstreamError, OSError):
    """An output or input location cannot be written or read."""


class NotFoundError(StorageError, FileNotFoundError):
    """An object, prefix or bucket that should exist does not."""


class CredentialsError(StorageError):
    """Object-store credentials are missing or rejected."""


class ShardReadError(WdstreamError, OSError):
    """A shard is truncated, corrupt or unreadable."""


class TarFormatError(WdstreamError, ValueError):
    """A tar archive is malformed, or uses a feature wdstream does not read: a bad checksum or
    number field, an absurd size, a malformed pax record, an ambiguous entry. The message
    names the shard and the byte of the header."""


class TarTruncatedError(WdstreamError, EOFError):
    """A tar archive ends early: inside a header or a member, or (a whole shard) without its
    end-of-archive marker. The message names the shard and the byte where it ends."""


class SampleError(WdstreamError, ValueError):
    """One sample cannot be decoded or is incomplete. ``reason`` is the short counted reason
    (``"bad_image"``, ``"missing text"``...); the message says more."""

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        url: str | None = None,
        shard: str | None = None,
        key: str | None = None,
    ):
        super().__init__(message, url=url, shard=shard, key=key)
        self.reason = reason or message


class SkipSample(SampleError):
    """Raised by a stage to drop one sample; counted against the error budget. Its message is
    the reason."""

    def __init__(
        self,
        reason: str,
        *,
        url: str | None = None,
        shard: str | None = None,
        key: str | None = None,
    ):
        super().__init__(reason, reason=reason, url=url, shard=shard, key=key)


class TooManyErrors(WdstreamError, RuntimeError):
    """More errors than the configured tolerance."""


class ErrorBudget:
    """Counts skipped samples and shards by reason; raises once ``tolerance`` is exceeded.

    ``tolerance < 0`` means unlimited. Thread-safe; one budget per process (workers count
    their own, the totals are reported per worker). ``placeholders`` counts the samples that
    were not delivered because of those errors (one unreadable shard may cost many).
    """

    def __init__(self, tolerance: int = 100, *, what: str = "errors"):
        self.tolerance = tolerance
        self.what = what
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []
        self.placeholders = 0  # planned samples replaced by a placeholder (exact mode)
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, reason: str, where: str, exc: BaseException | None = None) -> None:
        """Count one skip; log it with its place; raise TooManyErrors past the tolerance."""
        with self._lock:
            self.counts[reason] += 1
            if len(self.examples) < 10:
                self.examples.append(f"{where}: {reason}" + (f" ({exc})" if exc else ""))
            total = self.total
        log.warning("skipped %s: %s%s", where, reason, f" ({exc})" if exc else "")
        if 0 <= self.tolerance < total:
            raise TooManyErrors(
                f"{total} {self.what} exceed the tolerance of {self.tolerance}: "
                f"{dict(self.counts)}; first ones: {self.examples}. Fix or remove the bad data, "
                f"or raise the tolerance (config.error_tolerance).",
                url=None,
            ) from exc
