"""Serve a store over HTTP, as AHI's REST-JSON API, for the AWS CLI and any SDK.

``run_server(store_path)`` blocks and prints the endpoint URL (Ctrl-C stops it); ``serving(store_path)`` runs
a server on a free port in a background thread for tests. Both listen on 127.0.0.1 unless told otherwise.

botocore prefixes ``runtime-`` to the host of the image-set operations (``hostPrefix`` in the model), so
``--endpoint-url http://127.0.0.1:8080`` would send them to ``runtime-127.0.0.1``. Turn that off:

- AWS CLI v1 and boto3, through the environment (verified by tests/test_awscli.py and tests/test_wire.py)::

      AWS_DISABLE_HOST_PREFIX_INJECTION=true aws medical-imaging search-image-sets \\
          --endpoint-url http://127.0.0.1:8080 --datastore-id <id>

  or ``disable_host_prefix_injection = true`` in the profile of ``~/.aws/config``.
- boto3, per client::

      boto3.client("medical-imaging", endpoint_url="http://127.0.0.1:8080",
                   config=botocore.config.Config(inject_host_prefix=False))

The server ignores the Host header, so a proxy or resolver that maps ``runtime-<host>`` to it works too.
Any access key and secret are accepted (requests are not authenticated): use dummy ones.

Blobs (``updatableAttributes`` ...): AWS CLI v1 takes them as JSON text and base64-encodes them itself, and
it has no ``--cli-binary-format`` option (the AWS examples are written for v2, which needs
``--cli-binary-format raw-in-base64-out``); ``cli_binary_format = raw-in-base64-out`` in the config file is
accepted by both. The official example 1 with CLI v1::

    AWS_DISABLE_HOST_PREFIX_INJECTION=true aws medical-imaging update-image-set-metadata \\
        --endpoint-url http://127.0.0.1:8080 --datastore-id <id> --image-set-id <id> --latest-version-id 1 \\
        --update-image-set-metadata-updates \\
        '{"DICOMUpdates":{"updatableAttributes":"{\\"SchemaVersion\\":1.1,\\"Patient\\":{\\"DICOM\\":{\\"PatientName\\":\\"MX^MX\\"}}}"}}'

``get-image-set-metadata ... out.json.gz`` writes the gzip blob untouched (gunzip it to read it).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from curation.local.inprocess import make_service
from curation.local.service import Service
from curation.local.wire import handle_http

logger = logging.getLogger(__name__)


class Endpoint(str):
    """The endpoint URL of a running server (a ``str``), with its ``service`` for tests to turn knobs."""

    service: Service

    def __new__(cls, url: str, service: Service) -> Endpoint:
        endpoint = super().__new__(cls, url)
        endpoint.service = service
        return endpoint


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ahi-curation-local"
    service: Service  # set on the subclass made for each server

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):  # headers and body go out as two writes: no Nagle delay between them
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _answer(self) -> None:
        parts = urlsplit(self.path)
        body = self._read_body()
        status, headers, payload = handle_http(
            self.service, self.command, parts.path, parts.query, self.headers.items(), body
        )
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)


def make_server(store_path: Any, host: str = "127.0.0.1", port: int = 8080, **knobs: Any) -> ThreadingHTTPServer:
    """A ThreadingHTTPServer (not yet serving) answering with a Service over ``store_path`` and ``knobs``."""
    service = make_service(store_path, **knobs)
    handler = type("Handler", (_Handler,), {"service": service})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.service = service  # type: ignore[attr-defined]
    return server


def _url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    host = str(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_server(store_path: Any, host: str = "127.0.0.1", port: int = 8080, **knobs: Any) -> None:
    """Serve ``store_path`` until Ctrl-C; print the endpoint URL first. ``knobs``: see ``Service``."""
    server = make_server(store_path, host, port, **knobs)
    print(f"AHI endpoint: {_url(server)}  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@contextlib.contextmanager
def serving(store_path: Any, host: str = "127.0.0.1", **knobs: Any) -> Iterator[Endpoint]:
    """Serve ``store_path`` on a free port in a background thread; yield the endpoint URL; stop on exit."""
    server = make_server(store_path, host, 0, **knobs)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="ahi-local-server", daemon=True
    )
    thread.start()
    try:
        yield Endpoint(_url(server), server.service)  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
