"""Shared fixtures: a real S3 endpoint on loopback (moto's ThreadedMotoServer over HTTP, as in
s3fs's own tests), small local Hugging Face datasets, and offline settings."""

from __future__ import annotations

import os
import sys

import pytest

from wdstream.demo.data import build_parquet_dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# botocore must never look for credentials on the instance-metadata address: loopback only here.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


@pytest.fixture(autouse=True, scope="session")
def _no_datasets_sleep():
    import datasets.config

    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    yield


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 and a free port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    yield f"http://{host}:{port}"
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3(s3_server):
    """Storage options for the loopback S3 with an empty bucket ``test``; reset after the test."""
    import requests
    import s3fs

    opts = {"client_kwargs": {"endpoint_url": s3_server}, "key": "testing", "secret": "testing"}
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("test")
    yield {"endpoint": s3_server, "storage_options": opts, "bucket": "test", "fs": fs}
    requests.post(f"{s3_server}/moto-api/reset", timeout=10)
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def s3proxy():
    """The shared S3 test proxy module, tools/s3proxy.py (tools/ is not a package)."""
    tools = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tools")
    sys.path.insert(0, tools)
    try:
        import s3proxy as module
    finally:
        sys.path.remove(tools)
    return module


@pytest.fixture
def s3_proxy(s3, s3proxy):
    """The S3 test proxy in front of the loopback S3 (``s3``), with no latency, no bandwidth
    cap and no faults until a test sets them (``proxy.ttfb = 0.03``, ``proxy.inject(...)``).
    Yields ``(proxy, storage_options)`` that reach S3 through it."""
    import s3fs

    with s3proxy.S3Proxy(s3["endpoint"], ttfb=0.0, jitter=0.0, bandwidth=None) as proxy:
        s3fs.S3FileSystem.clear_instance_cache()
        yield proxy, {**s3["storage_options"], "client_kwargs": {"endpoint_url": proxy.url}}
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def small_hf_dataset(tmp_path_factory):
    """48 rows (image, audio, text, id, label) in 4 parquet files: 4 partitions."""
    folder = tmp_path_factory.mktemp("hfds")
    return build_parquet_dataset(str(folder), 48, n_files=4)


# ------------------------------------------------------------- GCS and Azure emulators
# google-auth must never look for the GCE metadata server (a non-loopback address) here
os.environ["NO_GCE_CHECK"] = "true"
_AZURE_SKIPPED: list[str] = []


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """fake-gcs-server on 127.0.0.1 and a free port; yields its endpoint URL."""
    from clouds import start_fake_gcs, stop

    proc, url = start_fake_gcs(str(tmp_path_factory.mktemp("fake-gcs")))
    yield url
    stop(proc)


@pytest.fixture
def gcs(gcs_server):
    """A new empty bucket on the loopback GCS: ``{"endpoint", "storage_options", "bucket",
    "url"}`` (options as a user passes them: endpoint_url, token=anon, project)."""
    from clouds import make_bucket

    bucket = make_bucket(gcs_server)
    opts = {"endpoint_url": gcs_server, "token": "anon", "project": "test"}
    return {
        "store": "gcs",
        "endpoint": gcs_server,
        "storage_options": opts,
        "bucket": bucket,
        "url": f"gs://{bucket}",
    }


@pytest.fixture(scope="session")
def azurite_installed():
    """Skips (and the test summary says so) where node or the pinned Azurite is missing: the
    one skip the emulator tests allow."""
    from clouds import AZURE_SKIP, azurite_available

    if not azurite_available():
        _AZURE_SKIPPED.append(AZURE_SKIP)
        pytest.skip(AZURE_SKIP)


@pytest.fixture(scope="session")
def azure_server(azurite_installed, tmp_path_factory):
    """Azurite on 127.0.0.1 and a free port; yields its connection string (skipped without
    node: :func:`azurite_installed`)."""
    from clouds import start_azurite, stop

    proc, conn = start_azurite(str(tmp_path_factory.mktemp("azurite")))
    yield conn
    stop(proc)


@pytest.fixture
def azure(azure_server):
    """A new empty container on the loopback Azurite, as :func:`gcs` gives a bucket."""
    from clouds import make_container

    container = make_container(azure_server)
    return {
        "store": "azure",
        "endpoint": azure_server.split("BlobEndpoint=", 1)[1].rstrip(";"),
        "storage_options": {"connection_string": azure_server},
        "bucket": container,
        "url": f"az://{container}",
    }


@pytest.fixture(
    params=[
        pytest.param("gcs", marks=[pytest.mark.gcs, pytest.mark.slow]),
        pytest.param("azure", marks=[pytest.mark.azure, pytest.mark.slow]),
    ]
)
def cloud(request):
    """Each emulated cloud in turn (``gcs``, then ``azure``): the dict of :func:`gcs` or
    :func:`azure`."""
    return request.getfixturevalue(request.param)


def pytest_terminal_summary(terminalreporter):
    if _AZURE_SKIPPED:
        terminalreporter.write_line(
            f"NOTE: the Azure emulator tests were skipped: {_AZURE_SKIPPED[0]}"
        )
