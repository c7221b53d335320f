"""Fixtures of the notebook-UI tests: the reference documents, a Snapshot of them, and the same documents
imported into a fresh embedded store and fetched through a real boto3 client (``Gate``, which holds a client's
updates, is in ``gating.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from curation.frames.snapshot import Snapshot

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
NAMES = ("ct-588-instances", "us-doppler-9-instances", "ct-2025-htj2k-1-instance")
TEXTS = {name: (REFERENCE / f"{name}.json").read_text() for name in NAMES}


def reference_documents() -> dict[str, dict]:
    """The three reference documents by name (fresh copies)."""
    return {name: json.loads(text) for name, text in TEXTS.items()}


@pytest.fixture
def documents() -> dict[str, dict]:
    return reference_documents()


@pytest.fixture
def snapshot() -> Snapshot:
    docs = list(reference_documents().values())
    return Snapshot.from_documents(docs, datastore_id="0" * 32, version_ids={d["ImageSetID"]: "1" for d in docs})


@pytest.fixture
def live(local_client: Any) -> tuple[Any, Snapshot, dict[str, str]]:
    """(client, snapshot fetched from a store holding the three reference documents, {name: image set})."""
    from curation.run.fetching import fetch

    store = local_client.meta.local_service.store
    docs = reference_documents()
    report = store.import_documents(list(docs.values()))
    assert not report.failures
    names = dict(zip(docs, report.created, strict=True))
    snapshot = fetch(local_client, report.datastore_id, progress=False)
    assert len(snapshot) == 3
    return local_client, snapshot, names
