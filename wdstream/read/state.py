"""The loader's saved state: its format, the fingerprint of the data it was saved on, and the
checks made before a state is trusted.

Version 3 (what :meth:`wdstream.Loader.state_dict` writes)::

    {"version": 3, "epoch": 4, "seed": 0, "shuffle": true,
     "samples": 103, "shards": 4,                 # single source; mixed: "sources", ...
     "fingerprint": "9c1f...",                    # the data: shard names and counts
     "runs": [{"world": 2, "workers": 4, "batch_size": 32, "cache_size": 1000,
               "drop_last": true, "lanes": 32, "batches": 120}, ...]}

One entry per run of the epoch so far (its :class:`~wdstream.read.planner.Layout` and how
many batches every rank took). The first run's ``lanes`` fixes the epoch's order. Version 2
(before lanes and fingerprints) is read too: its runs have no ``lanes``, which means the order
of that release, so such a state resumes exactly; it has no fingerprint, so it is accepted
with one WARNING. Version 1 (the per-sample shuffle buffer) is refused.

Every field is checked for type and range before anything is planned from it, so a state of a
few hundred bytes can never cost more than a small, fixed amount of memory.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError
from .planner import Layout

__all__ = ["STATE_VERSION", "fingerprint", "parse_state", "MAX_SLOTS", "MAX_RUNS"]

log = logging.getLogger(__name__)

STATE_VERSION = 3
MAX_SLOTS = 1 << 18  # ranks x workers of one run: far past any cluster, far below a blow-up
MAX_RUNS = 1000  # resumes of one epoch
_MAX_ALL_SLOTS = 1 << 20  # summed over the runs: the plan keeps O(slots) per earlier run
_BOUNDS = {
    "world": (1, MAX_SLOTS),
    "workers": (1, 4096),
    "batch_size": (1, 1 << 24),
    "cache_size": (0, 1 << 31),
    "lanes": (0, 1 << 16),
    "batches": (0, 1 << 48),
}
_RESTART = (
    "restart the epoch from its start instead (loader.set_epoch(epoch) without load_state_dict)"
)


def fingerprint(source) -> str:
    """A short hash of a manifest source's shard names (as the manifest stores them, relative
    to its folder) and sample counts: another dataset with the same totals differs."""
    h = hashlib.blake2b(digest_size=12)
    table = getattr(source.shards, "table", None)
    if table is not None:
        h.update(table.names_blob().encode())
    else:
        h.update("\n".join(s.url.rsplit("/", 1)[-1] for s in source.shards).encode())
    h.update(np.asarray(source.sizes, dtype="<i8").tobytes())
    return h.hexdigest()


def _bad(field: str, problem: str) -> ConfigError:
    return ConfigError(
        f"loader state: {field} {problem}; it is not a state this loader saved "
        f"(or it was damaged): {_RESTART}",
        key=field,
    )


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if type(value) is not int:
        raise _bad(field, f"is {type(value).__name__} {str(value)[:40]!r}, not an integer")
    if not lo <= value <= hi:
        raise _bad(field, f"is {value}, outside {lo}..{hi}")
    return value


def _runs(runs: Any) -> list[tuple[Layout, int]]:
    if not isinstance(runs, list) or not runs:
        raise _bad("runs", "is not a non-empty list")
    if len(runs) > MAX_RUNS:
        raise _bad("runs", f"has {len(runs)} entries, more than {MAX_RUNS}")
    history = []
    slots = 0
    for i, run in enumerate(runs):
        where = f"runs[{i}]"
        if not isinstance(run, Mapping):
            raise _bad(where, "is not a mapping")
        values = {}
        for name, (lo, hi) in _BOUNDS.items():
            if name == "lanes" and name not in run:
                values[name] = 0  # version 2: the order before lanes
                continue
            if name not in run:
                raise _bad(f"{where}.{name}", "is missing")
            values[name] = _int(run[name], f"{where}.{name}", lo, hi)
        if values["world"] * values["workers"] > MAX_SLOTS:
            raise _bad(
                where, f"has {values['world']} x {values['workers']} slots, more than {MAX_SLOTS}"
            )
        slots += values["world"] * values["workers"]
        if slots > _MAX_ALL_SLOTS:
            raise _bad("runs", f"have more than {_MAX_ALL_SLOTS} slots in all")
        drop_last = run.get("drop_last", True)
        if type(drop_last) is not bool:
            raise _bad(f"{where}.drop_last", "is not true or false")
        batches = values.pop("batches")
        history.append((Layout(drop_last=drop_last, **values), batches))
    return history


def parse_state(
    state: Any, identity: Mapping[str, Any], data_fingerprint: Any
) -> tuple[int, list[tuple[Layout, int]]]:
    """``(epoch, history)`` of a saved state, checked against this loader's ``identity``
    (seed, shuffle, the data's counts, the mix) and the data's fingerprint.

    Raises ConfigError, naming the field, for a state of another version, dataset, seed or
    mix, and for any malformed or out-of-range field."""
    if not isinstance(state, Mapping):
        raise _bad("state", f"is a {type(state).__name__}, not a mapping")
    version = state.get("version")
    if version == 1:
        raise ConfigError(
            f"loader state version 1 (epoch {state.get('epoch')}) was saved by wdstream "
            f"<= 0.1, whose per-sample shuffle buffer this version replaced by windows; it "
            f"cannot be resumed exactly. Restart that epoch from its start "
            f"(loader.set_epoch(state['epoch']) without load_state_dict), or finish it "
            f"with wdstream <= 0.1",
            key="version",
        )
    if version not in (2, STATE_VERSION):
        raise ConfigError(
            f"unsupported loader state version {str(version)[:20]!r}: this "
            f"wdstream reads versions 2 and {STATE_VERSION}",
            key="version",
        )
    epoch = _int(state.get("epoch"), "epoch", 0, 1 << 62)
    for key, mine in identity.items():
        if state.get(key) != mine:
            raise ConfigError(
                f"loader state was saved with {key}={str(state.get(key))[:200]} "
                f"but this loader has {key}={mine!r}: resume with the same "
                f"manifest(s), seed and mix",
                key=key,
            )
    saved = state.get("fingerprint")
    if saved is None:
        log.warning(
            "loader state (version %s) has no fingerprint of its data: it cannot be "
            "checked to come from this dataset beyond its sample and shard counts",
            version,
        )
    elif saved != data_fingerprint:
        raise ConfigError(
            "loader state was saved on other data (its shard names or counts "
            "differ, though the totals match): resume with the same manifest(s), "
            f"or {_RESTART}",
            key="fingerprint",
        )
    return epoch, _runs(state.get("runs"))
