"""``snapshot_digest``: the digest a plan records (``planned_on``), remembered per snapshot and document."""

from __future__ import annotations

import copy
import gzip
from pathlib import Path
from typing import Any

import orjson

from curation.curate.updateplan import document_digest, forget_snapshot_digests, snapshot_digest
from curation.frames.snapshot import Snapshot
from curation.model.document import read_document

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
DATASTORE = "169224ef14db49839f628fb887d50291"


def _documents(count: int) -> list[dict[str, Any]]:
    source = read_document(str(REFERENCE / "us-doppler-9-instances.json"))
    out = []
    for number in range(count):
        document = copy.deepcopy(source)
        document["ImageSetID"] = f"{number:032x}"
        out.append(document)
    return out


def test_snapshot_digest_equals_document_digest_and_is_remembered() -> None:
    documents = _documents(2)
    snapshot = Snapshot.from_documents(documents, datastore_id=DATASTORE, version_ids={})
    forget_snapshot_digests()
    first = {i: snapshot_digest(snapshot, i) for i in snapshot.image_set_ids}
    assert first == {d["ImageSetID"]: document_digest(d) for d in documents}
    assert {i: snapshot_digest(snapshot, i) for i in snapshot.image_set_ids} == first
    assert first[documents[0]["ImageSetID"]] != first[documents[1]["ImageSetID"]]


def test_snapshot_digest_of_blobs_is_the_parsed_documents_digest() -> None:
    documents = _documents(2)
    blobs = {d["ImageSetID"]: gzip.compress(orjson.dumps(d)) for d in documents}
    snapshot = Snapshot.from_blobs(blobs, datastore_id=DATASTORE, version_ids={})
    for document in documents:
        assert snapshot_digest(snapshot, document["ImageSetID"]) == document_digest(document)
        assert snapshot_digest(snapshot, document["ImageSetID"]) == document_digest(document)


def test_another_snapshot_of_other_documents_gets_its_own_digests() -> None:
    documents = _documents(1)
    snapshot = Snapshot.from_documents(documents, datastore_id=DATASTORE, version_ids={})
    before = snapshot_digest(snapshot, documents[0]["ImageSetID"])
    changed = copy.deepcopy(documents[0])
    changed["Patient"]["DICOM"]["PatientName"] = "OTHER^NAME"
    other = Snapshot.from_documents([changed], datastore_id=DATASTORE, version_ids={})
    assert snapshot_digest(other, changed["ImageSetID"]) == document_digest(changed) != before
