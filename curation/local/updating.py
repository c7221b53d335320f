"""UpdateImageSetMetadata in the embedded backend: AHI's rules applied with the one rules module.

What an update does to a document is :func:`curation.model.updates.apply_to_document`, the same function the
planner previews with, so the preview and the service cannot disagree. Around it this module adds what AHI's
developer guide ("Updating image set metadata") says of the operation: optimistic concurrency on
``latestVersionId`` (a stale one is ResourceNotFoundException), no write while LOCKED, ``includeStudyImageSets``
applying the Patient and ``Study.DICOM`` parts to the study's other primary image sets (their series and
instances are not theirs to change; not allowed with a revert), and a version consumed by a failed update.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from curation.local.backend import BackendBase
from curation.local.database import Version, invalid, timestamp
from curation.local.faults import take_failure
from curation.model.document import DocumentError
from curation.model.updates import apply_to_document, study_part

History = Callable[[str], dict[str, Any]]
#: One image set an update writes: its row, its document before and after, and the status it shows while LOCKED.
Target = tuple[sqlite3.Row, dict[str, Any], dict[str, Any], str]


def _apply(document: dict[str, Any], request: dict[str, Any], history: History, is_primary: bool) -> dict[str, Any]:
    try:
        return apply_to_document(document, request, history=history, is_primary=is_primary)
    except DocumentError as exc:
        raise invalid(str(exc)) from exc


class UpdateOperations(BackendBase):
    """UpdateImageSetMetadata."""

    def _history(self, conn: sqlite3.Connection, image_set_id: str) -> History:
        def history(version_id: str) -> dict[str, Any]:
            return self.db.document(conn, image_set_id, int(version_id))

        return history

    def _siblings(
        self, conn: sqlite3.Connection, row: sqlite3.Row, request: dict[str, Any], now: float
    ) -> list[Target]:
        """What ``includeStudyImageSets`` writes to the other primary image sets of the study."""
        sibling_request = study_part(request)
        if sibling_request is None:
            return []
        siblings = conn.execute(
            "SELECT * FROM image_sets WHERE datastore_id = ? AND study_uid IS ? AND is_primary = 1 "
            "AND deleted = 0 AND image_set_id != ? ORDER BY image_set_id",
            (row["datastore_id"], row["study_uid"], row["image_set_id"]),
        ).fetchall()
        targets: list[Target] = []
        for sibling in siblings:
            self.db.writable(sibling, now)
            before = self.db.document(conn, sibling["image_set_id"], sibling["latest_version"])
            after = _apply(before, sibling_request, self._history(conn, sibling["image_set_id"]), True)
            targets.append((sibling, before, after, "UPDATING_FOR_STUDY_CONSISTENCY"))
        return targets

    def update_image_set_metadata(
        self,
        *,
        datastore_id: str,
        image_set_id: str,
        latest_version_id: str,
        update_image_set_metadata_updates: dict[str, Any],
        force: bool = False,
        include_study_image_sets: bool = False,
    ) -> dict[str, Any]:
        """UpdateImageSetMetadata: accepted at once (LOCKED for ``lock_seconds``), decided when accepted."""
        updates = update_image_set_metadata_updates
        revert = updates.get("revertToVersionId")
        blobs = updates.get("DICOMUpdates") or {}
        if revert is None and not (blobs.get("updatableAttributes") or blobs.get("removableAttributes")):
            raise invalid("DICOMUpdates must hold updatableAttributes or removableAttributes")
        if revert is not None and include_study_image_sets:
            raise invalid("includeStudyImageSets cannot be used with revertToVersionId")
        request = {"updateImageSetMetadataUpdates": updates, "force": force}
        if include_study_image_sets:
            request["includeStudyImageSets"] = True
        with self.db.transaction(write=True) as conn:
            now = self.db.now()
            row = self.db.image_set(conn, datastore_id, image_set_id)
            self.db.writable(row, now)
            self.db.check_latest(row, latest_version_id)
            current = self.db.document(conn, image_set_id, row["latest_version"])
            history = self._history(conn, image_set_id)
            document = (
                history(revert) if revert is not None else _apply(current, request, history, bool(row["is_primary"]))
            )
            targets: list[Target] = [(row, current, document, "UPDATING")]
            if include_study_image_sets:
                targets += self._siblings(conn, row, request, now)
            failure = take_failure(self.db, conn)
            versions = [
                self.db.put_version(
                    conn,
                    Version(
                        datastore_id=datastore_id,
                        image_set_id=target["image_set_id"],
                        document=before if failure else after,
                        final_status="UPDATE_FAILED" if failure else "UPDATED",
                        lock_status=lock_status,
                        message=failure,
                        forced=revert is None and force,
                    ),
                    now,
                )
                for target, before, after, lock_status in targets
            ]
        return {
            "datastoreId": datastore_id,
            "imageSetId": image_set_id,
            "latestVersionId": str(versions[0]),
            "imageSetState": "LOCKED",
            "imageSetWorkflowStatus": "UPDATING",
            "createdAt": timestamp(row["created_at"]),
            "updatedAt": timestamp(now),
        }
