"""Weighted, seeded mixing of several sample streams: a plain pipeline stage.

:func:`mix` draws the source of each next item with a seeded RNG in proportion to the
weights, so the same streams, weights and seed always give the same sequence. What happens
when a source runs out is explicit:

- ``exhausted="stop"``: the mix ends as soon as any source it draws runs out (every source is
  seen at most once: an epoch ends with its smallest-in-proportion source);
- ``exhausted="resample"``: the source is reopened with ``reopen(name)`` (a new pass, e.g. the
  next epoch of that source) and the mix goes on; it ends only when every source is capped.

``caps`` bounds how many items are taken from each source; a capped source leaves the mix and
the others keep their relative weights.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from ..config import MIX_MODES
from ..errors import ConfigError, SourceError
from .mixplan import normalise_weights

__all__ = ["mix"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def mix(
    streams: Mapping[str, Iterator[T]],
    weights: Mapping[str, float] | None = None,
    *,
    seed: int = 0,
    exhausted: str = "stop",
    reopen: Callable[[str], Iterator[T]] | None = None,
    caps: Mapping[str, int | None] | None = None,
) -> Iterator[tuple[str, T]]:
    """Yield ``(source name, item)`` drawn from ``streams`` by ``weights`` with a seeded RNG.

    Sources are ordered by name, so the sequence does not depend on dict order. A source of
    weight 0 is never drawn. Raises ConfigError for bad weights, modes or caps, and
    SourceError when a reopened source yields nothing (it would never end).
    """
    if exhausted not in MIX_MODES:
        raise ConfigError(f"exhausted must be one of {MIX_MODES}, not {exhausted!r}")
    if exhausted == "resample" and reopen is None:
        raise ConfigError("exhausted='resample' needs reopen(name) to start a source again")
    names = sorted(streams)
    probs = normalise_weights(names, weights)
    caps = dict(caps or {})
    unknown = sorted(set(caps) - set(names))
    if unknown:
        raise ConfigError(f"caps name unknown source(s) {unknown}; the sources are {names}")
    for name, cap in caps.items():
        if cap is not None and (not isinstance(cap, int) or cap < 0):
            raise ConfigError(f"cap of {name!r} must be an integer >= 0, not {cap!r}", key=name)
    return _mix(dict(streams), names, probs, random.Random(seed), exhausted, reopen, caps)


def _mix(
    streams: dict[str, Iterator[Any]],
    names: list[str],
    probs: dict[str, float],
    rng: random.Random,
    exhausted: str,
    reopen,
    caps: dict[str, int | None],
):
    taken = dict.fromkeys(names, 0)
    active = [n for n in names if probs[n] > 0 and caps.get(n) != 0]
    iters = {n: iter(streams[n]) for n in names}

    def table():
        return active, list(itertools.accumulate(probs[n] for n in active))

    current, cum = table()
    while current:
        # one uniform draw per item: the same seed gives the same choices
        pick = current[min(bisect.bisect_right(cum, rng.random() * cum[-1]), len(current) - 1)]
        try:
            item = next(iters[pick])
        except StopIteration:
            if exhausted == "stop":
                log.debug("mix: source %r ran out after %d items; the mix ends", pick, taken[pick])
                return
            log.debug("mix: source %r ran out after %d items; reopening it", pick, taken[pick])
            iters[pick] = iter(reopen(pick))
            try:
                item = next(iters[pick])
            except StopIteration:
                raise SourceError(
                    f"mixed source {pick!r} is empty after reopening; remove it or give it weight 0"
                ) from None
        taken[pick] += 1
        yield pick, item
        cap = caps.get(pick)
        if cap is not None and taken[pick] >= cap:
            log.debug("mix: source %r reached its cap of %d items", pick, cap)
            active.remove(pick)
            current, cum = table()
