"""What the index of a shard that wdstream did not write holds, from one streaming pass: its
keys, the byte offset of each sample, its size and sha256.

A sample counts once the next sample's first member was read in full (what a reader needs to
deliver it), so a truncated or corrupt tail is left out and reported. A key that comes back
after another key started (non-adjacent members, or a duplicate sample) is left out too; the
reader skips it as the streaming reader does. Memory is bounded: members are read through,
never held, and a header payload (a long name, a pax header) is at most 64 KiB.

The shard is read through a :class:`~wdstream.format.stream.ShardStream`: never past the
size the store lists, and a transient read error is retried where it happened. A shard
counts as truncated only when its bytes end inside the tar (all of them read); a read that
keeps failing raises StorageError instead, and nothing is recorded for the shard.

``.tar.gz`` shards cannot be read from the middle: their scan is marked ``whole`` (the offsets
are positions in the uncompressed stream, for information only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import storage
from ..errors import ShardReadError, StorageError, redact
from .stream import HashingReader, ShardStream, iter_samples

__all__ = ["COMPRESSED_EXTS", "ShardScan", "scan_shard"]

COMPRESSED_EXTS = (".tar.gz", ".tgz")  # read from their start only: no mid-shard reads
MAX_PROBLEMS = 20  # problems listed per shard (all are counted in ``skipped``)


@dataclass
class ShardScan:
    """One shard, scanned: ``keys`` of its whole samples, their ``offsets`` plus the end of
    the last one (the index's layout), the shard's ``bytes`` and ``sha256`` (of the whole
    file), and what was left out: ``problems`` (at most :data:`MAX_PROBLEMS` lines) and
    ``skipped`` (a count per kind)."""

    keys: list[str]
    offsets: list[int]
    bytes: int
    sha256: str
    whole: bool = False
    problems: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


def scan_shard(
    url: str, storage_options: dict[str, Any] | None = None, *, size: int | None = None
) -> ShardScan:
    """Read the shard at ``url`` once, as a stream, and return what its index needs.

    A truncated or corrupt shard is scanned up to its last whole sample; a non-adjacent or
    duplicate key is left out. Both are listed in ``problems`` and counted in ``skipped``.
    At most ``size`` bytes are read (default: the size the store lists now). Raises
    StorageError when the shard cannot be opened or keeps failing to be read (after
    retries).
    """
    if size is None:
        size = storage.file_identity(url, storage_options)[0]
    whole = url.split("?", 1)[0].endswith(COMPRESSED_EXTS)
    keys: list[str] = []
    offsets: list[int] = []
    seen: set[str] = set()
    problems: list[str] = []
    skipped: dict[str, int] = {}

    def problem(kind: str, text: str) -> None:
        skipped[kind] = skipped.get(kind, 0) + 1
        if len(problems) < MAX_PROBLEMS:
            problems.append(text)

    end = 0  # where the last sample read ends
    with ShardStream(url, storage_options, size=size) as raw:
        reader = HashingReader(raw)
        try:
            for sample in iter_samples(reader, name=url, max_member_bytes=0, offsets=True):
                key, start = sample["__key__"], sample["__offset__"]
                if key in seen:
                    problem(
                        "duplicate or non-adjacent key",
                        f"key {key!r} at byte {start} comes back after other keys "
                        f"(non-adjacent members or a duplicate sample); left out",
                    )
                else:
                    keys.append(key)
                    offsets.append(start)
                seen.add(key)
                end = sample["__end__"]
            reader.drain()  # the end-of-archive padding: the hash covers the whole file
        except StorageError:
            raise  # the store failed (after retries), not the shard: nothing is recorded
        except (OSError, EOFError, ValueError) as exc:  # ShardReadError, or the padding's read
            # the sample being read when the error came is not whole: it is left out
            cause = exc.__cause__ if isinstance(exc, ShardReadError) and exc.__cause__ else exc
            detail = str(cause).removeprefix(f"{redact(url)}: ")
            problem(
                "truncated or corrupt shard",
                f"truncated or corrupt ({type(cause).__name__}: {detail}); indexed its "
                f"first {len(keys)} whole samples, the rest is left out",
            )
            reader.drain()  # StorageError: as above
    offsets.append(end if keys else 0)
    return ShardScan(
        keys=keys,
        offsets=offsets,
        bytes=reader.bytes,
        sha256=reader.hexdigest(),
        whole=whole,
        problems=problems,
        skipped=skipped,
    )
