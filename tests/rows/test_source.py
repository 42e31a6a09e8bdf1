"""rows/source.py: opening a Hugging Face source for streaming, and its errors by type.

Sources are small datasets written here; no test touches the network. A Hub id with the Hub
unreachable must fail before ``datasets`` is asked (it retries for tens of seconds), and every
error ``load_dataset`` raises is mapped by its type, never by its message.
"""

from __future__ import annotations

import json

import datasets
import huggingface_hub.constants
import pytest
import requests
from datasets.exceptions import DataFilesNotFoundError, DatasetNotFoundError
from huggingface_hub.utils import OfflineModeIsEnabled

from wdstream.errors import HubUnreachableError, SourceError
from wdstream.rows.source import (
    LOCAL_BUILDERS,
    HFSource,
    map_load_error,
    near_local_folder,
    open_source,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A local dataset folder: one parquet file of 3 rows, written by ``datasets``."""
    path = tmp_path_factory.mktemp("src") / "ds"
    datasets.Dataset.from_dict({"text": ["a", "b", "c"], "n": [1, 2, 3]}).to_parquet(
        str(path / "train.parquet")
    )
    return str(path)


@pytest.fixture
def offline(monkeypatch):
    """The Hub in offline mode, however the test process was started."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture
def no_load(monkeypatch):
    """``datasets.load_dataset`` that fails the test when it is called."""

    def load_dataset(*args, **kwargs):
        raise AssertionError(f"load_dataset was called: {args} {kwargs}")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


def _raising(monkeypatch, exc: BaseException) -> None:
    def load_dataset(*args, **kwargs):
        raise exc

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


# ------------------------------------------------------------------ opening


def test_a_local_folder_streams_its_rows(folder):
    ds = open_source(HFSource(folder))
    assert isinstance(ds, datasets.IterableDataset)
    assert [r["text"] for r in ds] == ["a", "b", "c"]
    assert [r["n"] for r in open_source(HFSource(f"file://{folder}"))] == [1, 2, 3]


def test_a_builder_with_data_files_streams_them_without_the_hub(folder, offline):
    spec = HFSource("parquet", data_files=(f"{folder}/train.parquet",))
    assert [r["text"] for r in open_source(spec)] == ["a", "b", "c"]
    assert "parquet" in LOCAL_BUILDERS


def test_to_dict_is_json_safe_and_names_what_was_opened():
    spec = HFSource("parquet", name="cfg", split="test", data_files=("a.parquet", "b.parquet"))
    d = spec.to_dict()
    assert json.loads(json.dumps(d)) == {
        "name": "parquet",
        "config": "cfg",
        "split": "test",
        "revision": None,
        "data_files": ["a.parquet", "b.parquet"],
    }


# ------------------------------------------------------------------ errors from real sources


def test_a_missing_folder_is_a_source_error_naming_it(tmp_path, no_load):
    missing = str(tmp_path / "nope")
    with pytest.raises(SourceError, match="does not exist") as e:
        open_source(HFSource(missing))
    assert not isinstance(e.value, HubUnreachableError)
    assert missing in str(e.value) and e.value.url == missing


def test_a_hub_id_offline_fails_before_datasets_is_asked(offline, no_load):
    with pytest.raises(HubUnreachableError, match="HF_HUB_OFFLINE"):
        open_source(HFSource("someone/some-dataset"))


def test_a_hub_id_offline_without_the_probe_is_mapped_from_datasets_error(offline):
    """A worker opens with ``check_hub=False``: ``datasets``' own ConnectionError becomes
    HubUnreachableError."""
    with pytest.raises(HubUnreachableError, match="cannot reach the Hugging Face Hub") as e:
        open_source(HFSource("someone/some-dataset"), check_hub=False)
    assert isinstance(e.value.__cause__, ConnectionError)


def test_a_bad_config_name_is_a_source_error_naming_it(folder):
    with pytest.raises(SourceError, match="config='nocfg'") as e:
        open_source(HFSource(folder, name="nocfg"))
    assert not isinstance(e.value, HubUnreachableError)
    assert "nocfg" in str(e.value.__cause__)


def test_a_bad_split_is_a_source_error_naming_the_splits_there_are(folder):
    with pytest.raises(SourceError, match="split='validation'") as e:
        open_source(HFSource(folder, split="validation"))
    assert "does not exist or has no data" in str(e.value) and "train" in str(e.value)


def test_data_files_that_match_nothing_and_an_empty_folder_have_no_data(tmp_path, offline):
    with pytest.raises(SourceError, match="does not exist or has no data"):
        open_source(HFSource("parquet", data_files=[str(tmp_path / "none-*.parquet")]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="does not exist or has no data"):
        open_source(HFSource(str(tmp_path / "empty")))


# ------------------------------------------------------------------ errors by type

HUB = HFSource("someone/some-dataset")
FILES = HFSource("parquet", data_files=["s3://bucket/a.parquet"])


def _http_connect_error() -> BaseException:
    """The connect error of the HTTP client huggingface_hub uses here (httpx2 or httpx)."""
    try:
        import httpx2 as httpx
    except ImportError:
        httpx = pytest.importorskip("httpx")
    return httpx.ConnectError("[Errno 111] Connection refused")


@pytest.mark.parametrize(
    "spec, exc, expected",
    [
        (HUB, ConnectionError("Couldn't reach 'someone/some-dataset' on the Hub"), "hub"),
        (HUB, OfflineModeIsEnabled("offline"), "hub"),
        (FILES, OfflineModeIsEnabled("offline"), "hub"),
        (HUB, requests.exceptions.ConnectionError("refused"), "hub"),
        (HUB, requests.exceptions.ConnectTimeout("timed out"), "hub"),
        (HUB, TimeoutError("timed out"), "hub"),
        (HUB, DatasetNotFoundError("Dataset 'someone/some-dataset' doesn't exist"), "missing"),
        (FILES, DataFilesNotFoundError("No (supported) data files found"), "missing"),
        (FILES, FileNotFoundError("s3://bucket/a.parquet"), "missing"),
        (HUB, ValueError("Bad split: test. Available splits: ['train']"), "missing"),
        (FILES, ConnectionRefusedError(111, "Connection refused"), "network"),
        (FILES, requests.exceptions.ConnectionError("refused"), "network"),
        (HUB, ValueError("Connection refused, Couldn't reach OfflineModeIsEnabled"), "missing"),
        (HUB, RuntimeError("ConnectTimeout: doesn't exist"), "other"),
        (FILES, TypeError("ParquetConfig got an unexpected keyword argument 'x'"), "other"),
    ],
    ids=lambda v: (
        {id(HUB): "hub-id", id(FILES): "s3-files"}.get(id(v))
        or (type(v).__name__ if isinstance(v, BaseException) else v)
    ),
)
def test_load_errors_are_mapped_by_type_not_by_message(monkeypatch, spec, exc, expected):
    _raising(monkeypatch, exc)
    with pytest.raises(SourceError) as e:
        open_source(spec, check_hub=False)
    err = e.value
    assert err.__cause__ is exc and err.url == spec.source
    assert isinstance(err, HubUnreachableError) == (expected == "hub")
    text = str(err)
    if expected == "hub":
        assert text.startswith(f"cannot reach the Hugging Face Hub for {spec.source!r}")
    elif expected == "missing":
        assert "does not exist or has no data" in text and spec.source in text
    elif expected == "network":
        assert text.startswith(f"cannot reach the data of source {spec.source!r}")
    else:
        assert text.startswith(f"cannot open source {spec.source!r}: {type(exc).__name__}")


def test_the_http_clients_connect_error_means_the_hub_is_unreachable():
    err = map_load_error(_http_connect_error(), HUB)
    assert isinstance(err, HubUnreachableError)
    assert not isinstance(map_load_error(_http_connect_error(), FILES), HubUnreachableError)


# ------------------------------------------------------------------ near folders


def test_a_hub_like_name_close_to_a_local_folder_is_pointed_at(tmp_path, monkeypatch):
    (tmp_path / "my_dataset").mkdir()
    monkeypatch.chdir(tmp_path)
    assert near_local_folder("my_datset") == "./my_dataset"
    assert near_local_folder("my_dataset") is None  # it exists
    assert near_local_folder("something_else") is None
    err = map_load_error(ConnectionError("Couldn't reach"), HFSource("my_datset"))
    assert str(err).endswith("Did you mean the local folder './my_dataset'?")
