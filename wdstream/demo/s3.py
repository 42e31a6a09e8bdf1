"""A loopback S3 for the demo and the tests: moto's server on 127.0.0.1, no account needed."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

__all__ = ["loopback_s3"]


@contextlib.contextmanager
def loopback_s3(bucket: str = "wdstream-demo") -> Iterator[dict[str, Any] | None]:
    """A moto S3 server on 127.0.0.1 (an ephemeral port) with ``bucket``; yields its
    storage options, or None when moto is not installed."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        yield None
        return
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        opts = {
            "client_kwargs": {"endpoint_url": f"http://{host}:{port}"},
            "key": "demo",
            "secret": "demo",
        }
        import s3fs  # after moto: both come with the demo extra

        s3fs.S3FileSystem(**opts).mkdir(bucket)
        yield opts
    finally:
        server.stop()
