"""Streaming a shard once: the one loop that turns a shard's bytes into its samples, and a
reader that counts and hashes the bytes that pass.

:func:`iter_samples` is what every reader of a whole shard uses (the reader's whole-shard
mode, ``verify``, ``index``, ``preview``, ``inspect``): the tar members of a stream (plain tar
or gzip), grouped into WebDataset samples, with a bound on the size of a member kept in
memory and, on request, the byte offsets of each sample. Whatever goes wrong while reading
raises one error, :class:`~wdstream.errors.ShardReadError`, naming the shard.

:class:`ShardStream` is the stream a one-pass job (``index``, ``verify``) reads a shard
through: never past the size the store lists, and a transient error of the store retried by
opening the shard again at the byte reached, so a reset in the middle of a shard costs a
request, not the shard.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

from .. import storage
from ..errors import CredentialsError, NotFoundError, ShardReadError, StorageError, redact
from .tario import MAX_MEMBER_BYTES, group_samples, iter_members_at

__all__ = [
    "iter_samples",
    "HashingReader",
    "ShardStream",
    "READ_ATTEMPTS",
    "DEFAULT_MAX_MEMBER_BYTES",
]

log = logging.getLogger(__name__)

#: Reads of a shard that may fail in a row (each after the store client's own retries)
#: before the shard counts as unreadable for this run.
READ_ATTEMPTS = 5
#: The bound on a member kept in memory when the caller gives none: the reader's default.
DEFAULT_MAX_MEMBER_BYTES = 2 * MAX_MEMBER_BYTES


def iter_samples(
    stream: BinaryIO,
    *,
    name: str = "<shard>",
    max_member_bytes: int | None = None,
    offsets: bool = False,
) -> Iterator[dict]:
    """The samples of the tar shard read from ``stream``, in order, read once and never
    seeking: ``{"__key__": key, ext: bytes, ...}`` (see :func:`~.tario.group_samples`).

    A sample is yielded once the next sample's first member was read in full, or at the
    archive's end-of-archive marker, so every yielded sample is whole. A member over
    ``max_member_bytes`` is read through in bounded chunks, never held; its sample carries
    ``"__error__"`` instead of it (``0``: no member is held, for counting and hashing). With
    ``offsets``, each sample also carries ``"__offset__"`` (where its first header starts)
    and ``"__end__"`` (where its last member's padded data ends), in the uncompressed
    archive. Repeated keys are yielded as they come; callers that need unique keys check.

    ``max_member_bytes`` None: :data:`DEFAULT_MAX_MEMBER_BYTES` (every read is bounded).

    ``name``: the shard's URL or another name, for messages (shown redacted). Raises
    ShardReadError naming it when the shard is truncated, corrupt, not a tar, or the stream
    fails; the samples before the error have been yielded. A StorageError of the stream (a
    :class:`ShardStream` out of retries) is raised as it is: the store failed, not the shard.
    """
    shown = redact(name)
    if max_member_bytes is None:
        max_member_bytes = DEFAULT_MAX_MEMBER_BYTES
    members = iter_members_at(stream, name=shown, max_member_bytes=max_member_bytes)
    try:
        if offsets:
            yield from group_samples(members, offsets=True)
        else:
            yield from group_samples((m[0], m[1]) for m in members)
    except (ShardReadError, StorageError):
        raise
    except Exception as exc:  # noqa: BLE001 - OSError, EOFError, TarError, zlib.error, and the
        # odd types a hostile tar makes tarfile raise: all mean the shard cannot be read
        detail = str(exc).removeprefix(f"{shown}: ") or type(exc).__name__
        raise ShardReadError(f"shard {shown} cannot be read: {detail}", shard=name) from exc
    finally:
        members.close()


class HashingReader:
    """A read-only stream that hashes (sha256) and counts what passes through it: the size
    and checksum of a shard read once, with nothing read twice."""

    def __init__(self, f):
        self.f = f
        self.sha = hashlib.sha256()
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.bytes += len(data)
        return data

    def drain(self, chunk: int = 8 * 2**20) -> None:
        """Read what is left (the padding after the end-of-archive blocks), in bounded
        chunks, so the count and hash cover the whole file."""
        while self.read(chunk):
            pass

    def hexdigest(self) -> str:
        """The sha256 of everything read so far."""
        return self.sha.hexdigest()


class ShardStream:
    """A shard read from its start as a stream, for a job that reads each shard once.

    At most ``size`` bytes are read (the size the store lists: a file that grows, or a
    device such as ``/dev/zero``, is never read past it). A failed read (a reset, a body cut
    short, a timeout: anything but a missing object or refused credentials) is retried by
    opening the shard again at the byte reached, after a short wait; after
    :data:`READ_ATTEMPTS` failures in a row it raises StorageError naming the shard and the
    byte. ``read`` returns ``b""`` at ``size`` or where the object really ends.
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        size: int,
        block_size: int = 8 * 2**20,
        attempts: int = READ_ATTEMPTS,
        wait: float = 0.2,
    ):
        self.url, self.storage_options = url, storage_options
        self.size, self.block_size = size, block_size
        self.attempts, self.wait = max(1, attempts), wait
        self.pos = 0
        self.retries = 0  # reads retried, over the whole shard
        self._f: BinaryIO | None = None

    def _open(self) -> BinaryIO:
        if self._f is None:
            self._f = storage.open_read(
                self.url, self.storage_options, offset=self.pos, block_size=self.block_size
            )
        return self._f

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        failed = 0
        while True:
            try:
                data = self._open().read(n)
                break
            except (CredentialsError, NotFoundError, FileNotFoundError, PermissionError):
                raise
            except Exception as exc:  # noqa: BLE001 - resets, cut bodies, timeouts, 5xx
                failed += 1
                self.retries += 1
                self._drop()
                if failed >= self.attempts:
                    raise StorageError(
                        f"cannot read {redact(self.url)} at byte {self.pos} of {self.size}: "
                        f"{failed} attempts failed ({type(exc).__name__}: {exc}); run again "
                        f"to retry it",
                        url=self.url,
                    ) from exc
                log.warning(
                    "reading %s failed at byte %d (%s: %s); opening it again there",
                    redact(self.url),
                    self.pos,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
                time.sleep(min(self.wait * 2 ** (failed - 1), 5.0))
        self.pos += len(data)
        return data

    def _drop(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close too
                pass

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> ShardStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
