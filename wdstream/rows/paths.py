"""Which files a media cell given by path may be read from.

An image, audio or binary cell may hold a path instead of bytes (``{"bytes": None, "path":
...}``, or a plain string); the converter then reads that file into the shards. A dataset, one
from the Hub too, could name any file so (``/home/me/.aws/credentials``) and have it copied
into shards that others read. So a path is read only inside a *root*:

- the source's own folder: a local dataset folder, the folder of each of its data files
  (``--data-files``, and the files they resolved to), or a Hub dataset's repository
  (``hf://datasets/OWNER/NAME``, any revision);
- a folder, or URL prefix, that the user allows (``--allow-path DIR``, config ``allow_paths``).

A local path is made absolute (relative to the current folder, as ``datasets`` reads it), ``~``
expanded and every symlink and ``..`` resolved before the check; the resolved path is what is
read. A URL (``s3://``, ``https://``, ``hf://``...) is normalised (``..``) and read only under a
root too: fetching any URL a dataset names is the same risk (an internal address, a signed
URL, another bucket). A chained URL (``zip://member::outer``) is checked by its outer file.
A path outside every root raises :class:`PathOutsideSource`, a
:class:`~wdstream.errors.SkipSample` counted as ``path_outside_source``.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import SkipSample
from .source import LOCAL_BUILDERS, HFSource, local_source_path

__all__ = ["ReadRoots", "PathOutsideSource", "PATH_OUTSIDE_SOURCE", "source_roots"]

#: The skip reason of a row whose media path lies outside every root.
PATH_OUTSIDE_SOURCE = "path_outside_source"
_GLOB = "*?[{"


class PathOutsideSource(SkipSample):
    """A cell's path lies outside the source's folders and the allowed ones: its row is
    skipped (``path_outside_source``). ``path`` is the path as the cell gave it."""

    def __init__(self, path: str, *, key: str | None = None):
        super().__init__(PATH_OUTSIDE_SOURCE, key=key)
        self.path = path


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _local(path: str) -> str:
    """A local path absolute, ``~`` expanded, symlinks and ``..`` resolved."""
    return os.path.realpath(os.path.expanduser(path.removeprefix("file://")))


def _url(url: str) -> str:
    """A URL with ``..``, ``.`` and repeated slashes of its path resolved."""
    scheme, _, rest = url.partition("://")
    rest = posixpath.normpath("/" + rest).lstrip("/") if rest else ""
    return f"{scheme.lower()}://{rest}"


def _normalise(root: str) -> str:
    return _url(root).rstrip("/") if _is_url(root) else _local(root)


@dataclass(frozen=True)
class ReadRoots:
    """The folders (local paths, resolved) and URL prefixes that media paths may be read
    from. ``ReadRoots()`` allows nothing."""

    roots: tuple[str, ...] = ()

    @classmethod
    def of(cls, roots: Iterable[str]) -> ReadRoots:
        """Roots as given (relative, ``~``, symlinks, URLs), normalised; duplicates dropped."""
        return cls(tuple(dict.fromkeys(_normalise(r) for r in roots if r)))

    def resolve(self, path: str) -> str | None:
        """What to read for ``path``: the resolved local path, or the URL as given, when it
        lies inside a root; None when it lies outside every root."""
        outer = path.rsplit("::", 1)[-1]  # zip://member::outer: the outer file decides
        if _is_url(outer):
            url = _url(outer)
            for root in self.roots:
                if _is_url(root) and (
                    url == root
                    or url.startswith(root + "/")
                    or (root.startswith("hf://") and url.startswith(root + "@"))
                ):
                    return path
            return None
        local = _local(outer)
        for root in self.roots:
            if not _is_url(root) and os.path.commonpath([root, local]) == root:
                return local if outer == path else path
        return None


def _pattern_folder(pattern: str, base: str | None) -> str:
    """The folder a data-file pattern (or a file) lies in: its path up to the first glob
    character, less the last part. A relative local pattern is taken from ``base``."""
    cut = min((pattern.find(c) for c in _GLOB if c in pattern), default=-1)
    folder = posixpath.dirname(pattern[:cut] if cut >= 0 else pattern)
    if _is_url(pattern):
        return folder
    folder = folder.removeprefix("file://") or "."
    if base is not None and not os.path.isabs(os.path.expanduser(folder)):
        folder = os.path.join(base, folder)
    return folder


def _patterns(data_files: Any) -> list[str]:
    if data_files is None:
        return []
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, dict):
        return [p for v in data_files.values() for p in _patterns(v)]
    return [str(p) for p in data_files]


def source_roots(spec: HFSource, files: Sequence[str] = (), allow: Iterable[str] = ()) -> ReadRoots:
    """The roots of ``spec``: its local folder, the folders of its ``data_files`` patterns
    and of ``files`` (the data files they resolved to), its Hub repository for a Hub id; and
    the ``allow`` folders the user gave."""
    roots: list[str] = []
    folder = local_source_path(spec.source)
    if folder is not None:
        roots.append(folder if os.path.isdir(folder) else os.path.dirname(folder) or ".")
    elif spec.source not in LOCAL_BUILDERS:  # a Hub id: its repository, any revision
        roots.append(f"hf://datasets/{spec.source.strip('/')}")
    roots += [_pattern_folder(p.rsplit("::", 1)[-1], folder) for p in _patterns(spec.data_files)]
    roots += [_pattern_folder(f.rsplit("::", 1)[-1], None) for f in files]
    return ReadRoots.of([*roots, *allow])
