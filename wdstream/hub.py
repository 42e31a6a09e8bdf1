"""The Hugging Face Hub probe, shared by both wings: fail fast and clearly when it is unreachable.

``datasets`` and ``huggingface_hub`` retry for tens of seconds before they give up on an
unreachable Hub. Whoever is about to contact the Hub (a Hub dataset to convert or stream, a Hub
tokenizer) calls :func:`check_hub_reachable` first: offline mode counts as unreachable, and
otherwise a plain TCP connect to ``HF_ENDPOINT`` (DNS included, in a daemon thread so it cannot
hang) must succeed within a few seconds.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse

from .errors import HubUnreachableError

__all__ = [
    "HUB_PROBE_TIMEOUT",
    "hub_endpoint",
    "hub_offline",
    "hub_reachable",
    "check_hub_reachable",
]

HUB_PROBE_TIMEOUT = 3.0
_DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_endpoint() -> str:
    """``HF_ENDPOINT`` as huggingface_hub resolves it."""
    try:
        from huggingface_hub import constants
    except ImportError:  # huggingface_hub comes with datasets/transformers; be safe anyway
        return os.environ.get("HF_ENDPOINT", _DEFAULT_ENDPOINT)
    return constants.ENDPOINT


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is on: the environment variable when it is set, else the
    value huggingface_hub read at import."""
    env = os.environ.get("HF_HUB_OFFLINE")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes", "on")
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> tuple[bool, str]:
    """``(reachable, why not)``: offline mode, or a TCP connect to the endpoint that fails or
    takes longer than ``timeout`` seconds."""
    if hub_offline():
        return False, "the Hub is disabled: HF_HUB_OFFLINE is set"
    endpoint = hub_endpoint()
    parsed = urllib.parse.urlparse(endpoint)
    host = parsed.hostname or endpoint
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[str] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append("")
        except OSError as exc:
            result.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=probe, name="wdstream-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not result:
        return False, f"the Hub did not answer at {endpoint} within {timeout:.0f} s"
    if result[0]:
        return False, f"the Hub did not answer at {endpoint}: {result[0]}"
    return True, ""


def check_hub_reachable(timeout: float = HUB_PROBE_TIMEOUT, *, what: str = "") -> None:
    """Raise HubUnreachableError within about ``timeout`` seconds when the Hub cannot be
    reached; ``what`` names what needed it."""
    ok, why = hub_reachable(timeout)
    if ok:
        return
    need = f" for {what}" if what else ""
    raise HubUnreachableError(
        f"cannot reach the Hugging Face Hub{need} ({why}). Check the network, HF_ENDPOINT or "
        f"HF_HUB_OFFLINE, or use a local copy (a folder, or `parquet` with --data-files)",
        url=hub_endpoint(),
    )
