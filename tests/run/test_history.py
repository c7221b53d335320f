"""history (ListImageSetVersions as a DataFrame) and version_diff (two versions as a ChangeSet)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson

import curation.local
from curation.model.document import read_document
from curation.run.history import HISTORY_COLUMNS, history, version_diff

REFERENCE = Path(__file__).parents[1] / "data" / "reference" / "ct-2025-htj2k-1-instance.json"


def _update(store: Any, datastore_id: str, image_set_id: str, version: str, description: str, **extra: Any) -> None:
    blob = orjson.dumps({"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": description}}}).decode()
    store.call(
        "UpdateImageSetMetadata",
        {
            "datastoreId": datastore_id,
            "imageSetId": image_set_id,
            "latestVersionId": version,
            "updateImageSetMetadataUpdates": {"DICOMUpdates": {"updatableAttributes": blob}},
            **extra,
        },
    )


def test_history_lists_every_version_oldest_first_across_pages(local_store: Any) -> None:
    report = local_store.import_documents([copy.deepcopy(read_document(str(REFERENCE)))])
    datastore_id, (image_set_id,) = report.datastore_id, report.created
    for number in range(1, 56):  # more versions than one ListImageSetVersions page (50)
        _update(local_store, datastore_id, image_set_id, str(number), f"DESCRIPTION {number}")
    local_store.fail_next_updates(1, "INTERNAL_ERROR: simulated")
    _update(local_store, datastore_id, image_set_id, "56", "NEVER")
    frame = history(curation.local.client(local_store), datastore_id, image_set_id)
    assert list(frame.columns) == list(HISTORY_COLUMNS)
    assert list(frame["versionId"]) == [str(n) for n in range(1, 58)]
    assert frame["workflowStatus"].iloc[0] == "CREATED" and frame["workflowStatus"].iloc[1] == "UPDATED"
    assert frame["workflowStatus"].iloc[-1] == "UPDATE_FAILED" and "simulated" in frame["message"].iloc[-1]
    assert not frame["forced"].any() and (frame["state"] == "ACTIVE").all()
    assert frame["updatedAt"].is_monotonic_increasing


def test_version_diff_names_the_changed_attribute(local_store: Any) -> None:
    report = local_store.import_documents([copy.deepcopy(read_document(str(REFERENCE)))])
    datastore_id, (image_set_id,) = report.datastore_id, report.created
    _update(local_store, datastore_id, image_set_id, "1", "HEAD")
    _update(local_store, datastore_id, image_set_id, "2", "HEAD CT")
    client = curation.local.client(local_store)
    changes = version_diff(client, datastore_id, image_set_id, "1", "3").changes
    assert list(changes["attribute"]) == ["StudyDescription"] and list(changes["op"]) == ["add"]
    assert changes["new"].iloc[0] == "HEAD CT"
    step = version_diff(client, datastore_id, image_set_id, "2", "3").changes
    assert list(step["old"]) == ["HEAD"] and list(step["op"]) == ["update"]
    assert curation.version_diff is version_diff
