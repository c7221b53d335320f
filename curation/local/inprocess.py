"""A real boto3 client answered by the embedded service in this process (no socket).

``client(store_path)`` returns a real boto3 ``medical-imaging`` client whose requests are answered in this
process: botocore serializes each call, a ``before-send`` hook hands the HTTP request to
:func:`curation.local.wire.handle_http` and returns the HTTP response, which botocore parses as if it came
from AWS. No socket is opened. ``curation.local.server`` serves the same store over HTTP.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from curation.local.service import Quotas, Service

__all__ = ["Service", "client", "make_service"]


class _RawBody(io.BytesIO):
    """A response body botocore can read, stream and close, like urllib3's raw response."""

    def stream(self, amt: int = 65536, decode_content: bool | None = None) -> Iterator[bytes]:
        while chunk := self.read(amt):
            yield chunk


_session_lock = threading.Lock()


@cache
def _boto3_session() -> Any:
    """One boto3 session for every local client: it loads the service model once (sessions are not thread-safe,
    so clients are made under a lock)."""
    import boto3

    return boto3.session.Session()


def make_service(
    store: Any,
    *,
    latency: float = 0.0,
    lock_seconds: float = 0.0,
    quotas: Quotas = "none",
    fault_rate: float = 0.0,
    seed: int | None = None,
    create: bool = True,
    region: str = "us-east-1",
) -> Service:
    """A :class:`Service` over ``store``: a store directory (opened as ``Store(path, lock_seconds=...)``),
    an object with ``call(operation_name, params)`` (a Store or a fake), or an existing Service (returned).
    ``create=False`` refuses a directory that holds no store (``StoreNotFoundError``)."""
    if isinstance(store, Service):
        return store
    if isinstance(store, str | os.PathLike):
        from curation.local.store import Store

        store = Store(store, lock_seconds=lock_seconds, create=create, region=region)
    return Service(store, latency=latency, quotas=quotas, fault_rate=fault_rate, seed=seed)


def client(
    store_path: Any,
    *,
    latency: float = 0.0,
    lock_seconds: float = 0.0,
    quotas: Quotas = "none",
    fault_rate: float = 0.0,
    seed: int | None = None,
    region: str = "us-east-1",
    **client_kwargs: Any,
) -> Any:
    """A real boto3 ``medical-imaging`` client answered in-process by the store at ``store_path``.

    ``store_path`` may also be a Store (or any object with ``call``) or a :class:`Service`, to share one
    store between clients and servers. The knobs are those of :class:`Service`; the Service is exposed as
    ``client.meta.local_service`` so tests can change them while the client is in use.

    ``client_kwargs`` go to ``boto3.client`` (``config=botocore.config.Config(...)`` ...). The client keeps
    botocore's normal retry configuration, so injected throttles and 5xx faults are retried (and may be
    hidden) as they would be against AWS. To see every fault, turn retries off with
    ``config=Config(retries={"total_max_attempts": 1})`` (botocore's ``max_attempts`` counts *retries*:
    ``{"max_attempts": 1}`` still retries once).
    """
    from botocore.awsrequest import AWSResponse
    from botocore.compat import HTTPHeaders

    from curation.local.wire import SERVICE_NAME, handle_http

    service = make_service(
        store_path, latency=latency, lock_seconds=lock_seconds, quotas=quotas, fault_rate=fault_rate, seed=seed
    )
    client_kwargs.setdefault("aws_access_key_id", "local")
    client_kwargs.setdefault("aws_secret_access_key", "local")
    with _session_lock:
        boto_client = _boto3_session().client(SERVICE_NAME, region_name=region, **client_kwargs)

    def answer(request: Any, **_: Any) -> AWSResponse:
        parts = urlsplit(request.url)
        status, headers, body = handle_http(
            service, request.method, parts.path, parts.query, request.headers.items(), request.body
        )
        return AWSResponse(request.url, status, HTTPHeaders.from_dict(headers), _RawBody(body))

    boto_client.meta.events.register(f"before-send.{SERVICE_NAME}", answer, unique_id="curation-local-answer")
    boto_client.meta.local_service = service
    return boto_client
