"""One sample by its key: :func:`get_sample`, what ``wdstream inspect SOURCE --key KEY`` prints.

The way to the sample, cheapest first:

1. **Ordered keys** (every converted dataset: keys are ``make_key(partition, row)``,
   zero-padded, so they sort in manifest order). The manifest's details part gives each
   shard's first and last key; a binary search finds the one shard whose range holds the key,
   its index (``.idx``: offsets and key hashes) the sample's offsets, and one ranged GET reads
   the sample. Requests: the manifest, its details part, the shard's index, the sample (4; 3
   for a version-1 manifest, whose keys are inline).
2. **A key index** (:mod:`wdstream.format.keyindex`, ``manifest.keys``, written by
   ``wdstream index``) where keys are not ordered: the manifest, the key index (one ranged
   read, or two past about 4,000 samples), the 16 bytes of the sample's offsets in the
   shard's index, the sample (4 or 5), however many shards there are.
3. **A scan**, with a WARNING saying why: shards given without a manifest, a manifest whose
   keys are not ordered and that has no key index, a shard without an index or a compressed
   one (read from its start to the key).

Every sample read is checked against the key asked for; a key that is not there raises
NotFoundError naming the key and the source.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from typing import Any

from .. import storage
from ..config import Config
from ..errors import NotFoundError, ShardReadError, SourceError, redact
from ..format.index import key_hash, load_index, parse_sample_span, sample_span_bytes
from ..format.keyindex import KEYS_NAME, lookup_hash
from ..format.manifest import Manifest, is_shard_source, load_manifest, manifest_url_for
from ..format.stream import iter_samples
from ..format.tario import group_samples, split_members

__all__ = ["get_sample", "find_sample"]

log = logging.getLogger(__name__)


def get_sample(
    source: str | list[str],
    key: str,
    storage_options: dict[str, Any] | None = None,
    *,
    decode: bool = False,
    config: Any = None,
    allowed_prefixes: Sequence[str] = (),
) -> dict[str, Any]:
    """The sample ``key`` of ``source`` (a dataset folder or its manifest.json, a shard URL, a
    brace pattern or a list of shard URLs): ``{ext: bytes, ..., "__key__", "__url__"}``, or
    with ``decode`` what the reader's :class:`~wdstream.read.decode.SampleDecoder` makes of
    it (``config``: the Config to decode with, default ``Config()``).

    Raises NotFoundError naming the key and the source when no sample has that key,
    SourceError/StorageError when the source cannot be read, SampleError when ``decode``
    cannot decode it."""
    sample = find_sample(source, key, storage_options, allowed_prefixes=allowed_prefixes)
    if not decode:
        return sample
    from .decode import SampleDecoder  # torch: only for decode=True

    cfg = config if config is not None else Config(storage_options=storage_options or {})
    return SampleDecoder(cfg)(sample)


def find_sample(
    source: str | list[str],
    key: str,
    storage_options: dict[str, Any] | None = None,
    *,
    allowed_prefixes: Sequence[str] = (),
) -> dict[str, Any]:
    """The undecoded sample ``key`` of ``source`` (see :func:`get_sample`)."""
    opts = storage_options or {}
    if isinstance(source, (list, tuple)) or is_shard_source(source):
        urls = storage.expand_urls(source)
        if not urls:
            raise SourceError(f"no shard URLs in {source!r}")
        storage.check_readable(urls[0], opts)
        log.warning(
            "%s: shards without a manifest have no index of their keys; scanning them for "
            "%r (run `wdstream index` on them for a lookup in a few requests)",
            _shown(source),
            key,
        )
        return _scan(urls, key, source, opts)
    storage.check_reachable(manifest_url_for(source), opts)
    m = load_manifest(source, opts, allowed_prefixes=allowed_prefixes)
    shard = _shard_by_range(m, key)
    if shard is not None:
        return _read_in_shard(m, shard, key, source, opts)
    if shard is None and _ordered(m):
        raise _missing(key, source)
    positions = _key_index(m, key, opts)
    if positions is None:
        log.warning(
            "%s: its keys are not ordered across shards and it has no key index (%s); "
            "scanning its %d shards for %r (run `wdstream index` again to write one)",
            _shown(source),
            KEYS_NAME,
            len(m.shards),
            key,
        )
        return _scan(m.shard_urls(), key, source, opts)
    for shard, position in positions:
        sample = _read_at(m, shard, position, key, source, opts)
        if sample is not None:
            return sample
    raise _missing(key, source)


# ------------------------------------------------------------------------- ordered keys


def _ordered(m: Manifest) -> bool:
    """Whether the manifest's shards hold ordered, disjoint key ranges: every shard has its
    first and last key, and each starts after the one before ends. True for converted
    datasets (not for ``wdstream index``'s, whose shards' insides are not known to be)."""
    if (m.source or {}).get("indexed") or not m.shards:
        return False
    previous = None
    for s in m.shards:
        if s.samples and (s.first_key is None or s.last_key is None or s.first_key > s.last_key):
            return False
        if s.samples:
            if previous is not None and s.first_key <= previous:
                return False
            previous = s.last_key
    return True


def _shard_by_range(m: Manifest, key: str) -> int | None:
    """The shard whose key range holds ``key`` in a dataset with ordered keys, else None."""
    if not _ordered(m):
        return None
    filled = [i for i, s in enumerate(m.shards) if s.samples]
    firsts = [m.shards[i].first_key for i in filled]
    at = bisect.bisect_right(firsts, key) - 1
    if at < 0:
        return None
    shard = filled[at]
    return shard if key <= m.shards[shard].last_key else None


def _read_in_shard(m: Manifest, shard: int, key: str, source, opts) -> dict[str, Any]:
    """The sample ``key`` of shard ``shard``: its index gives the position and the offsets,
    one ranged GET the sample; a shard without a usable index is scanned."""
    info, url = m.shards[shard], m.shard_urls()[shard]
    index_url = m.index_urls()[shard]
    index = None
    if index_url is not None:
        try:
            index = load_index(index_url, opts, samples=info.samples)
        except (OSError, ValueError) as exc:
            log.warning("%s: its index is unusable (%s); scanning it", redact(url), exc)
    if index is None or index.get("whole"):
        if index is None and index_url is None:
            log.warning("%s has no index; scanning it for %r", redact(url), key)
        return _scan([url], key, source, opts)
    if index.get("keys") is not None:
        positions = [i for i, k in enumerate(index["keys"]) if k == key]
    else:
        wanted = key_hash(key)
        positions = [int(i) for i in (index["key_hashes"] == wanted).nonzero()[0]]
    offsets = index["offsets"]
    for position in positions:
        sample = _read_span(url, int(offsets[position]), int(offsets[position + 1]), key, opts)
        if sample is not None:
            return sample
    raise _missing(key, source)


# --------------------------------------------------------------------------- key index


def _key_index(m: Manifest, key: str, opts) -> list[tuple[int, int]] | None:
    """``(shard, position)`` candidates for ``key`` from the dataset's key index, or None
    when it has none (or an unusable one, with a WARNING)."""
    url = storage.join_url(m.base_url, KEYS_NAME)

    def read(start: int, end: int) -> bytes:
        return storage.read_range(url, start, end, opts)

    try:
        return lookup_hash(read, key_hash(key), shards=len(m.shards))
    except NotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s is unusable (%s); not using it", redact(url), exc)
        return None


def _read_at(m: Manifest, shard: int, position: int, key: str, source, opts) -> dict | None:
    """The sample at ``position`` of shard ``shard`` if its key is ``key``, else None. The
    offsets come from 16 bytes of the shard's binary index (one ranged GET)."""
    url, index_url = m.shard_urls()[shard], m.index_urls()[shard]
    if index_url is None or m.shards[shard].whole or not index_url.endswith(".idx"):
        # no index, a compressed shard (read from its start), or a version-1 (JSON) index
        return _scan([url], key, source, opts, missing_ok=True)
    span = parse_sample_span(storage.read_range(index_url, *sample_span_bytes(position), opts))
    if span is None:
        return None
    start, end = span
    if not 0 <= start < end <= m.shards[shard].bytes:
        return None
    return _read_span(url, start, end, key, opts)


# ---------------------------------------------------------------------------- reading


def _read_span(url: str, start: int, end: int, key: str, opts) -> dict[str, Any] | None:
    """The sample in bytes ``[start, end)`` of the shard ``url`` (one ranged GET) if its key
    is ``key``, else None."""
    data = storage.read_range(url, start, end, opts)
    try:
        samples = list(group_samples(split_members(data, name=redact(url))))
    except (EOFError, ValueError) as exc:
        raise ShardReadError(
            f"shard {redact(url)} cannot be read at bytes {start}-{end}: {exc}", shard=url
        ) from exc
    for sample in samples:
        if sample["__key__"] == key:
            sample["__url__"] = url
            return sample
    return None


def _scan(urls: Sequence[str], key: str, source, opts, *, missing_ok: bool = False):
    for url in urls:
        with storage.open_read(url, opts) as f:
            for sample in iter_samples(f, name=url):
                if sample["__key__"] == key:
                    sample["__url__"] = url
                    return sample
    if missing_ok:
        return None
    raise _missing(key, source)


def _missing(key: str, source) -> NotFoundError:
    shown = _shown(source)
    return NotFoundError(f"no sample has the key {key!r} in {shown}", url=None, key=key)


def _shown(source) -> str:
    if isinstance(source, (list, tuple)):
        return f"{len(source)} shard URLs" if len(source) != 1 else redact(source[0])
    return redact(source)
