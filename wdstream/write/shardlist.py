"""Which files ``wdstream index`` indexes, and what their indexes are called.

- :func:`list_shards` turns a brace pattern, a list of URLs or a prefix into shard URLs;
- :func:`unusable_shard` says why one is not indexed (not a regular file; a name a manifest
  cannot hold): such files are skipped and counted, and the rest stays readable;
- :func:`shard_root`, :func:`index_names` and :func:`outside_prefixes` place the indexes
  under the output, one name per shard, and say which folders a reader must be allowed.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from typing import Any

from .. import storage
from ..errors import SourceError, redact
from ..format.manifest import is_shard_source
from ..format.schema import SHARD_EXTS, shard_stem

__all__ = [
    "NOT_REGULAR",
    "BAD_NAME",
    "list_shards",
    "unusable_shard",
    "shard_root",
    "index_names",
    "outside_prefixes",
    "absolute",
    "show_name",
    "is_local_url",
]

NOT_REGULAR = "not a regular file"  # skipped before reading: a FIFO, a device, a folder
BAD_NAME = "name a manifest cannot hold"  # skipped: a newline, not UTF-8, '::'


def is_local_url(url: str) -> bool:
    """True for a local path or a ``file://`` URL."""
    return "://" not in url or url.startswith("file://")


def list_shards(
    source: str | list[str] | tuple[str, ...], storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Shard URLs from a brace pattern, a list of URLs, or a prefix (every ``.tar``/``.tar.gz``/
    ``.tgz`` below it, sorted). Raises SourceError when there are none."""
    if isinstance(source, (list, tuple)) or is_shard_source(source):
        urls = storage.expand_urls(list(source) if isinstance(source, tuple) else source)
    else:
        urls = [u for u in storage.find_urls(source, storage_options) if u.endswith(SHARD_EXTS)]
    if not urls:
        raise SourceError(
            f"no .tar/.tar.gz shards in {redact(str(source))}: give a folder or "
            f"prefix that holds them, a brace pattern such as "
            f"'s3://bucket/data/{{00000..00099}}.tar', or a list of URLs",
            url=str(source),
        )
    return urls


def unusable_shard(url: str, name: str | None = None) -> str | None:
    """Why the shard at ``url`` is not indexed (None: it is). Counted and skipped, so the
    rest of the dataset stays readable:

    - a name (``name``: what the manifest calls it, default ``url``) that a manifest cannot
      hold: a newline (the compact manifest joins names with them), characters that are
      not UTF-8 (a file name's raw bytes), or ``::`` (fsspec's URL chaining, which the
      reader refuses in a manifest);
    - on a local disk, anything but a regular file (a FIFO or a device such as
      ``/dev/zero``, which would never end; a symlink counts as what it points to)."""
    name = url if name is None else name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"{BAD_NAME}: not UTF-8"
    if "\n" in name:
        return f"{BAD_NAME}: a newline"
    if "::" in name:
        return f"{BAD_NAME}: '::' (fsspec URL chaining)"
    if is_local_url(url):
        path = url[len("file://") :] if url.startswith("file://") else url
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return None  # reported when it is read, as on an object store
        except OSError as exc:
            return f"{NOT_REGULAR}: cannot stat it ({exc.strerror})"
        if not stat.S_ISREG(mode):
            return f"{NOT_REGULAR} ({_file_kind(mode)})"
    return None


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a file"


def shard_root(urls: list[str]) -> str:
    """The deepest folder that holds every shard URL."""
    parents = [posixpath.dirname(u) for u in urls]
    root = parents[0]
    for p in parents[1:]:
        while not (p == root or p.startswith(root.rstrip("/") + "/")):
            up = posixpath.dirname(root)
            if up == root or up.endswith(":"):  # "s3:" / "/" : nothing in common
                break
            root = up
    return root


def index_names(urls: list[str], root: str) -> list[str]:
    """The index name of each shard, relative to the output: its path below ``root`` (else
    its URL without the scheme) with ``.idx`` for its ending. Names that two different
    shards would share, compared without case (``a.tar`` and ``a.tar.gz``; ``s3://b/x/y.tar``
    and ``s3://x/y.tar``; ``A.tar`` and ``a.tar`` on a disk that ignores case) get a short
    hash of the full URL, ``y-1a2b3c4d.idx``, lengthened until every name is unique."""
    rels = [
        url[len(root) + 1 :] if url.startswith(root + "/") else url.split("://", 1)[-1].lstrip("/")
        for url in urls
    ]
    names = [shard_stem(rel) + ".idx" for rel in rels]
    for digits in (8, 16, 64, 64, 64):  # a pass hashes every name still shared
        owners: dict[str, set[str]] = {}
        for url, name in zip(urls, names, strict=True):
            owners.setdefault(name.casefold(), set()).add(url)
        clashes = [i for i, n in enumerate(names) if len(owners[n.casefold()]) > 1]
        if not clashes:
            return names
        for i in clashes:
            digest = hashlib.sha256(urls[i].encode("utf-8", "surrogateescape")).hexdigest()
            names[i] = f"{shard_stem(rels[i])}-{digest[:digits]}.idx"
    raise AssertionError(f"index names still shared after hashing: {clashes[:4]}")


def absolute(url: str) -> str:
    """A local path made absolute (a manifest elsewhere names the shard by it); URLs as
    they are."""
    if is_local_url(url) and not url.startswith("file://"):
        return posixpath.abspath(url)
    return url


def show_name(url: str) -> str:
    """A URL fit for a log line and a manifest: redacted, odd characters escaped."""
    text = redact(url)
    return text if text.isprintable() else ascii(text)[1:-1]


def outside_prefixes(urls: list[str], out: str) -> list[str]:
    """The folders (``.../``) of the shards that are not below ``out``: what a reader must be
    allowed to read besides the manifest's own folder. One folder when they share one."""
    outside = [u for u in urls if not u.startswith(out.rstrip("/") + "/")]
    if not outside:
        return []
    root = shard_root(outside)
    if all(u.startswith(root + "/") for u in outside):
        folders = [root]
    else:
        folders = sorted({posixpath.dirname(u) for u in outside})
    return [absolute(f).rstrip("/") + "/" for f in folders]
