"""An image set's version history as a DataFrame, and the difference between two versions as a ChangeSet.

AHI keeps every version of an image set (updates, reverts, copies, even failed updates consume a version);
``history`` lists them with ListImageSetVersions (paginated) and ``version_diff`` fetches two of them with
GetImageSetMetadata ``versionId`` and diffs the documents with ``curation.curate.differ.diff_documents``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from curation.model.document import parse_document
from curation.run.retries import RetryPolicy, is_not_consistent_yet
from curation.run.servicecalls import read_blob

if TYPE_CHECKING:
    from mypy_boto3_medical_imaging import HealthImagingClient

HISTORY_COLUMNS = (
    "versionId",
    "state",
    "workflowStatus",
    "forced",
    "message",
    "isPrimary",
    "createdAt",
    "updatedAt",
)
_RETRIES = RetryPolicy()


def _version_key(version: Any) -> tuple[int, str]:
    text = str(version)
    return (int(text), text) if text.isdigit() else (-1, text)


def history(client: HealthImagingClient, datastore_id: str, image_set_id: str) -> pd.DataFrame:
    """Every version of an image set, oldest first: versionId, state, workflowStatus, forced, message,
    isPrimary, createdAt, updatedAt (one row per version, from ListImageSetVersions)."""
    paginator = client.get_paginator("list_image_set_versions")
    rows = []
    pages = _RETRIES.call(
        lambda: list(paginator.paginate(datastoreId=datastore_id, imageSetId=image_set_id)),
        retryable=is_not_consistent_yet,
    )
    for page in pages:
        for item in page.get("imageSetPropertiesList", []):
            rows.append(
                {
                    "versionId": str(item.get("versionId")),
                    "state": item.get("imageSetState"),
                    "workflowStatus": item.get("ImageSetWorkflowStatus", item.get("imageSetWorkflowStatus")),
                    "forced": bool((item.get("overrides") or {}).get("forced", False)),
                    "message": item.get("message"),
                    "isPrimary": item.get("isPrimary"),
                    "createdAt": item.get("createdAt"),
                    "updatedAt": item.get("updatedAt"),
                }
            )
    rows.sort(key=lambda row: _version_key(row["versionId"]))
    frame = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    return frame.astype({"versionId": object, "state": object, "workflowStatus": object, "message": object})


def version_document(
    client: HealthImagingClient, datastore_id: str, image_set_id: str, version_id: str
) -> dict[str, Any]:
    """The metadata document of one version of an image set."""

    def get() -> bytes:
        return read_blob(
            client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id, versionId=str(version_id))
        )

    return parse_document(_RETRIES.call(get, retryable=is_not_consistent_yet))


def version_diff(client: HealthImagingClient, datastore_id: str, image_set_id: str, v1: str, v2: str) -> Any:
    """What changed from version ``v1`` to version ``v2`` of an image set, as a ChangeSet (``diff_documents``)."""
    from curation.curate.differ import diff_documents

    old = version_document(client, datastore_id, image_set_id, v1)
    new = version_document(client, datastore_id, image_set_id, v2)
    return diff_documents(old, new)


__all__ = ["HISTORY_COLUMNS", "history", "version_diff", "version_document"]
