"""Streaming a shard once: the one loop that turns a shard's bytes into its samples, and a
reader that counts and hashes the bytes that pass.

:func:`iter_samples` is what every reader of a whole shard uses (the reader's whole-shard
mode, ``verify``, ``index``, ``preview``, ``inspect``): the tar members of a stream (plain tar
or gzip), grouped into WebDataset samples, with a bound on the size of a member kept in
memory and, on request, the byte offsets of each sample. Whatever goes wrong while reading
raises one error, :class:`~wdstream.errors.ShardReadError`, naming the shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import ShardReadError, redact
from .tario import group_samples, iter_members_at

__all__ = ["iter_samples", "HashingReader"]


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

    ``name``: the shard's URL or another name, for messages (shown redacted). Raises
    ShardReadError naming it when the shard is truncated, corrupt, not a tar, or the stream
    fails; the samples before the error have been yielded.
    """
    shown = redact(name)
    members = iter_members_at(stream, name=shown, max_member_bytes=max_member_bytes)
    try:
        if offsets:
            yield from group_samples(members, offsets=True)
        else:
            yield from group_samples((m[0], m[1]) for m in members)
    except ShardReadError:
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
