"""The text tokenizer: which one the config names, and the start-up vocabulary check.

``config.tokenizer`` is ``"byt5"`` (the default: ``transformers.ByT5Tokenizer()``, which needs no
files and no download), a local folder saved with ``save_pretrained``, or a Hugging Face Hub id.
A Hub id is first looked up in the local cache; the Hub is only contacted when it answers a quick
probe, so an offline machine fails at once with :class:`HubUnreachableError` instead of hanging.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..errors import ConfigError, HubUnreachableError, SourceError
from ..hub import hub_reachable

__all__ = ["BYT5", "load_tokenizer", "check_vocab", "max_token_id", "pad_token_id"]

log = logging.getLogger(__name__)

BYT5 = "byt5"
_BYT5_NAMES = {BYT5, "google/byt5-small", "google/byt5-base", "google/byt5-large"}


def _name_of(config_or_name: Any) -> str:
    if isinstance(config_or_name, str):
        return config_or_name
    return getattr(config_or_name, "tokenizer", None) or BYT5


def load_tokenizer(config_or_name: Any = None):
    """The tokenizer named by ``config.tokenizer`` (or a name given directly).

    - ``"byt5"`` (default): ``ByT5Tokenizer()``, no files needed;
    - an existing local folder: ``AutoTokenizer.from_pretrained(folder)``;
    - a Hub id: the local Hugging Face cache, then the Hub if it is reachable.

    Raises SourceError when a folder cannot be loaded, HubUnreachableError when a Hub id is not
    cached and the Hub cannot be reached (offline, ``HF_HUB_OFFLINE=1``, firewall).
    """
    import transformers  # slow to import; only loaders that tokenize pay for it

    name = _name_of(config_or_name)
    if name.lower() in _BYT5_NAMES:
        return transformers.ByT5Tokenizer()
    if os.path.isdir(name):
        try:
            return transformers.AutoTokenizer.from_pretrained(name)
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
            raise SourceError(
                f"cannot load the tokenizer saved in {name}: {exc}. Save one there with "
                f"tokenizer.save_pretrained({name!r}), or set config.tokenizer to 'byt5'.",
                url=name,
            ) from exc
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not a Hub id
        raise SourceError(
            f"tokenizer folder {name} does not exist; set config.tokenizer to an "
            f"existing folder, a Hub id, or 'byt5'.",
            url=name,
        )
    try:  # the local cache first: no network at all
        return transformers.AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        cached_error = exc
    reachable, why = hub_reachable()
    if not reachable:
        raise HubUnreachableError(
            f"tokenizer {name!r} is not in the local cache and {why}. Save it with "
            f"save_pretrained into a folder and set config.tokenizer to that folder, or use "
            f"config.tokenizer='byt5' (no download). ({cached_error})",
            url=name,
        ) from cached_error
    try:
        return transformers.AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # noqa: BLE001
        raise SourceError(f"cannot load tokenizer {name!r} from the Hub: {exc}", url=name) from exc


def max_token_id(tokenizer) -> int:
    """The largest token id ``tokenizer`` can produce (base vocabulary and added tokens)."""
    ids = [len(tokenizer) - 1]
    try:
        vocab = tokenizer.get_vocab()
        if vocab:
            ids.append(max(vocab.values()))
    except (NotImplementedError, AttributeError):
        pass
    added = getattr(tokenizer, "added_tokens_decoder", None)
    if added:
        ids.append(max(added))
    return max(ids)


def check_vocab(tokenizer, config) -> None:
    """Raise ConfigError when the tokenizer can produce an id >= ``config.vocab_size``.

    Run at start-up, so a mismatch stops the job before training, not at the first
    out-of-range embedding lookup.
    """
    top = max_token_id(tokenizer)
    if top >= config.vocab_size:
        raise ConfigError(
            f"the tokenizer ({type(tokenizer).__name__}, {len(tokenizer)} tokens) can produce "
            f"token id {top}, but config.vocab_size is {config.vocab_size}: every id must be "
            f"below vocab_size. Set vocab_size to at least {top + 1}, or use a smaller tokenizer.",
            key="vocab_size",
        )


def pad_token_id(tokenizer) -> int:
    """The id used to pad ``input_ids`` in a batch: pad, else EOS, else 0.

    Padding positions are masked (``attention_mask`` 0, ``labels`` -100), so the value only
    has to be a valid id.
    """
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0
