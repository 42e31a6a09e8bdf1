"""One flat, typed configuration for converter, reader and model-facing sizes.

The names match what the training code already uses (``vocab_size``, ``vision_dim``,
``max_audio_length``, ``cache_size``...). ``configs/default.yaml`` maps one to one onto it.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import ConfigError, redact_options
from .format.schema import AUDIO_EXTS, IMAGE_EXTS

__all__ = ["Config", "load_config", "config_fields", "DEPRECATED_KEYS", "RETIRED_KEYS", "MIX_MODES"]

log = logging.getLogger(__name__)

#: Old config keys still accepted (with a warning), and the field each one now sets.
DEPRECATED_KEYS = MappingProxyType(
    {
        "shard_cache_dir": "local_cache_dir",
        "shard_cache_bytes": "local_cache_bytes",
    }
)
#: Old config keys still accepted (with a warning) that no longer set anything, and why.
RETIRED_KEYS = MappingProxyType(
    {
        "readahead": "every shard read, streamed ones included, is now read ahead by the fetch "
        "threads: tune read_ahead_requests and read_ahead_bytes",
    }
)
#: What a mix does when one of its sources runs out (``mix_exhausted``).
MIX_MODES = ("stop", "resample")


@dataclass(kw_only=True)
class Config:
    """All wdstream settings. Unknown keys are rejected by :func:`load_config`."""

    # --- model-facing sizes (names from the training code) ---
    vocab_size: int = 384  # ByT5's vocabulary; must exceed every token id
    vision_dim: int = 224  # image side in pixels after resize + centre crop
    max_audio_length: int = 16000  # audio samples after crop/pad (1 s at 16 kHz)
    audio_sample_rate: int = 16000
    max_text_length: int = 128
    tokenizer: str = "byt5"  # "byt5" (no download), a local folder, or a Hub id
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    max_image_pixels: int = 89_478_485  # decompression-bomb limit (pillow's default)

    # --- reader ---
    batch_size: int = 8
    num_workers: int = 2
    cache_size: int = 1000  # the shuffle window: most samples a worker holds to shuffle
    shuffle_lanes: int = 32  # shards a window mixes (interleaved lanes); 1: shard after shard
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = True  # True: drop < world*batch samples an epoch; False: pad by repeating
    exact: bool = True  # manifest sources: exact sample-level epochs (False: shard streaming)
    epoch_length: int | None = None  # nominal samples per epoch when there is no manifest
    use_streaming: bool = True  # False: MultimodalDataset yields synthetic data only
    fallback: str = "error"  # "error" | "synthetic"
    error_tolerance: int = 100  # skipped samples/shards per worker before the loader stops
    pin_memory: str = "auto"  # "auto" (when CUDA is present) | "true" | "false"
    persistent_workers: bool = True
    prefetch_factor: int = 2
    local_cache_dir: str | None = None  # optional local LRU folder of whole shards (on disk)
    local_cache_bytes: int = 10 * 2**30  # bound of that folder, in bytes
    read_block_size: int = 8 * 2**20  # most bytes per ranged GET (a span is cut at samples)
    read_ahead_requests: int = 8  # requests in flight per worker (0: fetched one at a time)
    read_ahead_bytes: int = 64 * 2**20  # most fetched-but-unconsumed bytes per worker
    decode_threads: int = 0  # threads per worker decoding ahead, in order (0: inline)
    stats_log_every: int = 100  # batches between DEBUG lines of a worker's read stats (0: none)
    storage_options: dict[str, Any] = field(default_factory=dict)
    max_member_bytes: int = 2**30  # a larger tar member is skipped and counted, never read
    allowed_prefixes: tuple[str, ...] = ()  # shard/index URL prefixes a manifest may name
    # besides its own folder, e.g. ["s3://laion/shards/"]; a manifest cannot grant itself any
    synthetic_samples: int = 256  # size of a synthetic epoch
    modalities: tuple[str, ...] = ("text", "image", "audio")  # for synthetic data

    # --- selection and mixing ---
    dataset_name: str | None = None
    task_type: str | None = None
    split: str = "train"
    weights: dict[str, float] = field(default_factory=dict)  # source name -> weight
    mix_exhausted: str = "stop"  # "stop" | "resample" when one mixed source runs out
    max_samples_per_dataset: int | None = None
    shards: list[str] | None = None  # MultimodalDataset's shards: URLs, a pattern or a manifest

    # --- converter ---
    max_samples_per_shard: int = 1000
    max_shard_bytes: int = 256 * 2**20
    workers: int | None = None  # converter processes; None or 0 = one per CPU core
    executor: str = "local"  # "local" | "ray"
    ray_address: str | None = None
    image_column: str | None = None
    audio_column: str | None = None
    text_columns: tuple[str, ...] = ()
    text_template: str | None = None  # e.g. "{instruction}\n{input}\n{output}" over text_columns
    limit: int | None = None
    image_ext: str | None = None  # name every image member .<ext> (e.g. jpg); None: its format
    audio_ext: str | None = None  # name every audio member .<ext> (e.g. flac); None: its format
    quiet: bool = False
    skip_bad_rows: bool = True
    drop_columns: tuple[str, ...] = ()  # source columns to leave out of the samples
    allow_paths: tuple[str, ...] = ()  # folders (or URL prefixes) media paths may be read from,
    # besides the source's own folder; a path elsewhere is skipped (path_outside_source)
    validate: str = "cheap"  # "cheap" (structural checks) | "full" (decode every image/clip)
    upload_concurrency: int = 4  # S3 parts (and shards) uploading at once, per writer process
    upload_buffer_bytes: int = 64 * 2**20  # bytes of parts waiting or uploading, per process

    def __post_init__(self) -> None:
        for name in (
            "image_mean",
            "image_std",
            "text_columns",
            "modalities",
            "allowed_prefixes",
            "drop_columns",
            "allow_paths",
        ):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            setattr(self, name, tuple(value))
        if self.fallback not in ("error", "synthetic"):
            raise ConfigError(f"fallback must be 'error' or 'synthetic', not {self.fallback!r}")
        if self.mix_exhausted not in MIX_MODES:
            raise ConfigError(
                f"mix_exhausted must be one of {', '.join(MIX_MODES)}, not {self.mix_exhausted!r}",
                key="mix_exhausted",
            )
        if self.validate not in ("cheap", "full"):
            raise ConfigError(
                f"validate must be 'cheap' or 'full', not {self.validate!r}", key="validate"
            )
        if str(self.pin_memory).lower() not in ("auto", "true", "false"):
            raise ConfigError(f"pin_memory must be auto/true/false, not {self.pin_memory!r}")
        self.pin_memory = str(self.pin_memory).lower()
        for name in (
            "batch_size",
            "vision_dim",
            "max_audio_length",
            "max_text_length",
            "audio_sample_rate",
            "max_samples_per_shard",
            "max_shard_bytes",
            "max_member_bytes",
            "upload_concurrency",
            "upload_buffer_bytes",
        ):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)!r}")
        for name, valid in (("image_ext", IMAGE_EXTS), ("audio_ext", AUDIO_EXTS)):
            value = getattr(self, name)
            if value is not None:
                value = str(value).lower().lstrip(".")
                if value not in valid:
                    raise ConfigError(
                        f"{name} {getattr(self, name)!r} is not one of {', '.join(valid)}", key=name
                    )
                setattr(self, name, value)
        if self.num_workers < 0 or self.cache_size < 0:
            raise ConfigError("num_workers and cache_size must be >= 0")
        if int(self.shuffle_lanes) < 1:
            raise ConfigError(
                f"shuffle_lanes must be >= 1 (1: no interleave), not {self.shuffle_lanes!r}",
                key="shuffle_lanes",
            )
        for name in (
            "read_ahead_requests",
            "read_ahead_bytes",
            "decode_threads",
            "stats_log_every",
        ):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, not {getattr(self, name)!r}", key=name)
        if self.limit is not None and int(self.limit) < 1:
            raise ConfigError(
                f"limit must be at least 1 (or null for all rows), not {self.limit!r}", key="limit"
            )
        if self.workers is not None and int(self.workers) < 0:
            raise ConfigError(
                f"workers must be >= 0 (0 or null: one per CPU core), not {self.workers!r}",
                key="workers",
            )

    def __repr__(self) -> str:
        """Every field, with credentials in ``storage_options`` (and in URLs) redacted."""
        shown = ", ".join(
            f"{f.name}={redact_options(getattr(self, f.name))!r}" for f in dataclasses.fields(self)
        )
        return f"{type(self).__name__}({shown})"

    __str__ = __repr__

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (unknown names raise ConfigError)."""
        changes = _rename_deprecated(changes)
        _check_keys(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _rename_deprecated(values: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``values`` with deprecated keys renamed to their fields and retired keys left out (a
    WARNING for each)."""
    out = {}
    for key, value in values.items():
        if key in RETIRED_KEYS:
            log.warning(
                "config key %r%s is no longer used and is ignored: %s",
                key,
                where,
                RETIRED_KEYS[key],
            )
            continue
        new = DEPRECATED_KEYS.get(key)
        if new is not None:
            log.warning("config key %r%s is deprecated; use %r", key, where, new)
            key = new
        out[key] = value
    return out


def _check_keys(keys, where: str = "") -> None:
    valid = config_fields()
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{where}{hint}", key=key)


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> Config:
    """Load a YAML file (keys map one to one onto :class:`Config`) and apply overrides.

    Raises ConfigError for an unknown key, naming the key and the closest valid one.
    """
    data: dict[str, Any] = {}
    if path is not None:
        import yaml

        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except OSError as exc:
            raise ConfigError(
                f"cannot read config file {path}: {exc.strerror or exc}; give an existing YAML file"
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: expected a mapping of config keys, got {type(data).__name__}"
            )
        data = _rename_deprecated(data, f" in {path}")
        _check_keys(data, f" in {path}")
    overrides = _rename_deprecated(overrides)
    _check_keys(overrides)
    data.update({k: v for k, v in overrides.items()})
    return Config(**data)
