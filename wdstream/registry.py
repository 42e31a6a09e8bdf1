"""The registry of Hugging Face datasets known by a short name, and selection by task type.

``configs/datasets.yaml`` lists real Hub datasets (parquet-backed only: ``datasets`` 5.x runs
no loading scripts) with their config, split, revision, task types, licence and how their
columns map onto the sample layout: which column is the image or the audio, and a text
template formed from several columns. The registry is a read-only mapping of :class:`Entry`,
as fsspec's ``registry`` is::

    from wdstream.registry import get_registry, select_datasets
    get_registry()["open_platypus"].hub_id         # 'garage-bAInd/Open-Platypus'
    select_datasets("all", task_type="code")        # every code entry
    select_datasets(task_type="vision")             # the vision default set

The YAML is found at ``$WDSTREAM_DATASETS`` (or the path given to :func:`get_registry`, as
``wdstream convert --registry PATH`` does), else ``wdstream/data/datasets.yaml``, the package
data that ships in the wheel. In a source checkout that file is a symbolic link to
``configs/datasets.yaml``, the one file to edit (a wheel holds a copy of its content).
"""

from __future__ import annotations

import difflib
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import ColumnError, ConfigError
from .rows.template import TextTemplate, check_template

__all__ = [
    "TASK_TYPES",
    "Entry",
    "load_registry",
    "get_registry",
    "select_datasets",
    "registry_path",
]

TASK_TYPES = ("text", "code", "math", "vision", "audio")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Entry:
    """One registry entry: where a Hub dataset lives and how its columns map onto a sample."""

    name: str
    hub_id: str
    split: str = "train"
    config: str | None = None
    revision: str = "main"
    task_types: tuple[str, ...] = ()
    image_column: str | None = None
    audio_column: str | None = None
    text_template: str = ""
    columns: tuple[str, ...] = ()  # every column the entry relies on; () = not listed
    license: str = "unknown"
    default: bool = False
    verified: bool = False
    notes: str = ""

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r}"
        if not _NAME_RE.match(self.name):
            raise ConfigError(f"{where}: names are lower-case letters, digits and '_'")
        if "/" not in self.hub_id and not self.hub_id.startswith(("/", ".")):
            raise ConfigError(f"{where}: hub_id {self.hub_id!r} should be 'owner/name'")
        tts = tuple(self.task_types)
        bad = [t for t in tts if t not in TASK_TYPES]
        if not tts or bad:
            raise ConfigError(
                f"{where}: task_types {list(tts)} must be a non-empty list of {list(TASK_TYPES)}"
            )
        object.__setattr__(self, "task_types", tts)
        object.__setattr__(self, "columns", tuple(self.columns))
        if not self.text_template and not (self.image_column or self.audio_column):
            raise ConfigError(f"{where}: give a text_template, an image_column or an audio_column")
        check_template(self.text_template, where)  # a bad template fails at load time
        if self.columns:
            missing = [c for c in self.required_columns if c not in self.columns]
            if missing:
                raise ConfigError(
                    f"{where}: the mapping uses {missing}, which are not in its "
                    f"columns {list(self.columns)}"
                )

    # --- columns ---------------------------------------------------------------------------
    @property
    def template(self) -> TextTemplate:
        return TextTemplate(
            self.text_template,
            f"dataset {self.name!r} ({self.hub_id}) text_template in configs/datasets.yaml",
        )

    @property
    def template_columns(self) -> tuple[str, ...]:
        """The columns the text template reads, in order of first use."""
        return self.template.columns

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Image and audio columns plus the template's columns."""
        cols = [c for c in (self.image_column, self.audio_column) if c]
        return tuple(cols + [c for c in self.template_columns if c not in cols])

    def check_columns(self, available: Iterable[str]) -> None:
        """Raise ColumnError if a column the mapping needs is not in ``available``."""
        have = list(available)
        missing = [c for c in self.required_columns if c not in have]
        if missing:
            raise ColumnError(
                f"dataset {self.name!r} ({self.hub_id}): column(s) {missing} not found; the "
                f"source has {have}. Fix the entry in configs/datasets.yaml (or pass "
                f"--image-column/--audio-column/--text-columns).",
                key=missing[0],
            )

    # --- use -------------------------------------------------------------------------------
    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``datasets.load_dataset`` (``path``, ``name``, ``split``,
        ``revision``)."""
        kw: dict[str, Any] = {"path": self.hub_id, "split": self.split, "revision": self.revision}
        if self.config:
            kw["name"] = self.config
        return kw

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


_ENTRY_KEYS = tuple(
    f.name for f in fields(Entry) if not f.name.startswith("_") and f.name != "name"
)
_lock = threading.Lock()
_cache: dict[str, MappingProxyType] = {}


def registry_path() -> Path:
    """Where the registry YAML is read from (see the module docstring). Raises ConfigError
    when no registry is found."""
    env = os.environ.get("WDSTREAM_DATASETS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here / "data" / "datasets.yaml", here.parent / "configs" / "datasets.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"the dataset registry is not found ({here / 'data' / 'datasets.yaml'} is "
        f"missing: a broken install?); set WDSTREAM_DATASETS or pass --registry "
        f"with the path of a registry YAML"
    )


def _entry_from_dict(name: str, data: Any, where: str) -> Entry:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: dataset {name!r} must be a mapping, got {type(data).__name__}")
    for key in data:
        if key not in _ENTRY_KEYS:
            close = difflib.get_close_matches(key, _ENTRY_KEYS, n=1, cutoff=0.0)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{where}: dataset {name!r} has an unknown key {key!r}{hint}", key=key
            )
    if "hub_id" not in data:
        raise ConfigError(f"{where}: dataset {name!r} has no hub_id")
    kwargs = dict(data)
    for key in ("task_types", "columns"):
        if isinstance(kwargs.get(key), str):
            kwargs[key] = [kwargs[key]]
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key] or ())
    for key in ("default", "verified"):
        if key in kwargs and not isinstance(kwargs[key], bool):
            raise ConfigError(f"{where}: dataset {name!r}: {key} must be true or false")
    if kwargs.get("revision") is not None:
        kwargs["revision"] = str(kwargs["revision"])
    return Entry(name=name, **{k: v for k, v in kwargs.items() if v is not None or k == "config"})


def load_registry(path: str | os.PathLike | None = None) -> MappingProxyType:
    """Parse a registry YAML into a read-only ``{name: Entry}``. Raises ConfigError."""
    import yaml

    p = Path(path) if path is not None else registry_path()
    try:
        with open(p, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read the dataset registry {p}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        raise ConfigError(f"{p}: expected a top-level 'datasets:' mapping of name -> entry")
    entries = {name: _entry_from_dict(str(name), d, str(p)) for name, d in data["datasets"].items()}
    return MappingProxyType(entries)


def get_registry(path: str | os.PathLike | None = None) -> MappingProxyType:
    """The registry at ``path`` (default: :func:`registry_path`), parsed once per process and
    path. Raises ConfigError when it cannot be read or parsed."""
    p = str(path if path is not None else registry_path())
    with _lock:
        if p not in _cache:
            _cache[p] = load_registry(p)
        return _cache[p]


def _unknown(kind: str, value: str, valid: Iterable[str]) -> ConfigError:
    valid = sorted(valid)
    close = difflib.get_close_matches(value, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(
        f"unknown {kind} {value!r}.{hint} Valid {kind}s: {', '.join(valid)}", key=value
    )


def select_datasets(
    dataset_name: str | None = None,
    task_type: str | None = None,
    *,
    registry: Mapping[str, Entry] | None = None,
) -> list[Entry]:
    """Pick registry entries, as the training code's ``MultimodalDataset`` did.

    - ``dataset_name="open_platypus"``: that entry (a Hub id listed in the registry also works);
    - ``dataset_name="all"`` with ``task_type``: every entry of that type (without a type:
      every entry);
    - ``task_type`` alone: that type's default set (``default: true``; every entry of the type
      if none is marked).

    Raises ConfigError for an unknown name or type (listing the valid ones), for a name whose
    entry is not of the given type, and when neither is given.
    """
    reg = get_registry() if registry is None else registry
    if task_type is not None and task_type not in TASK_TYPES:
        raise _unknown("task type", task_type, TASK_TYPES)
    if dataset_name is None and task_type is None:
        raise ConfigError(
            "give a dataset_name (a registry name, or 'all' with a task_type) "
            f"or a task_type ({', '.join(TASK_TYPES)})"
        )
    if dataset_name is None or dataset_name == "all":
        of_type = [e for e in reg.values() if task_type is None or task_type in e.task_types]
        if dataset_name == "all":
            return of_type
        defaults = [e for e in of_type if e.default]
        return defaults or of_type
    entry = reg.get(dataset_name)
    if entry is None:
        by_hub = [e for e in reg.values() if e.hub_id == dataset_name]
        if not by_hub:
            raise _unknown("dataset name", dataset_name, [*reg, "all"])
        entry = by_hub[0]
    if task_type is not None and task_type not in entry.task_types:
        raise ConfigError(
            f"dataset {entry.name!r} is of task type(s) {list(entry.task_types)}, "
            f"not {task_type!r}; drop task_type or use dataset_name='all'"
        )
    return [entry]
