"""Shared fixtures: a fresh store directory, an in-process client over it, and the same store served over HTTP.

- ``store_path``: an empty directory for a Store.
- ``local_client``: a real boto3 ``medical-imaging`` client answered in-process by a fresh store
  (botocore's retries are off, so throttles and faults reach the test); ``local_client.meta.local_service``
  is the Service (knobs) and ``local_client.meta.local_service.store`` the Store.
- ``local_client_factory(**knobs)``: more in-process clients over the same store (one Store object).
- ``http_endpoint``: that store served over HTTP on a free port of 127.0.0.1 (a ``str`` URL with ``.service``).
- ``http_client``: a boto3 client for ``http_endpoint`` (host prefix injection off, retries off).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config

NO_RETRIES = Config(retries={"total_max_attempts": 1})
_SESSION: Any = None


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """An empty directory where a fresh store can live."""
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def local_store(store_path: Path) -> Any:
    """A fresh Store at ``store_path``."""
    from curation.local.store import Store

    return Store(store_path)


@pytest.fixture
def local_client_factory(local_store: Any) -> Callable[..., Any]:
    """Make in-process clients over the one fresh store: ``factory(latency=.., quotas=.., config=..)``."""
    import curation.local

    def factory(**kwargs: Any) -> Any:
        kwargs.setdefault("config", NO_RETRIES)
        return curation.local.client(local_store, **kwargs)

    return factory


@pytest.fixture
def local_client(local_client_factory: Callable[..., Any]) -> Any:
    """A boto3 medical-imaging client answered in-process by a fresh store (no botocore retries)."""
    return local_client_factory()


@pytest.fixture
def http_endpoint(local_store: Any) -> Iterator[str]:
    """The fresh store served over HTTP on a free port (the URL; ``.service`` is its Service)."""
    from curation.local.server import serving

    with serving(local_store) as endpoint:
        yield endpoint


def endpoint_client(endpoint: str, config: Config = NO_RETRIES) -> Any:
    """A boto3 medical-imaging client for an embedded service's ``endpoint``, signing with the pair
    ``serving()`` accepts by default, host prefix injection off, botocore's ``config`` otherwise."""
    import boto3

    global _SESSION
    _SESSION = _SESSION or boto3.session.Session()
    return _SESSION.client(
        "medical-imaging",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=config.merge(Config(inject_host_prefix=False)),
    )


@pytest.fixture
def http_client(http_endpoint: str) -> Any:
    """A boto3 medical-imaging client for ``http_endpoint`` (no host prefix, no retries)."""
    return endpoint_client(http_endpoint)
