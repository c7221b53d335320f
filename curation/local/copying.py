"""CopyImageSet and DeleteImageSet in the embedded backend, with the copy rules where AHI's guide is silent.

From the developer guide ("Copying an image set"): ``copiableAttributes`` selects series and instances of the
source; a copy into an existing image set merges into it (``curation.model.copies``: what a copy does to the
documents); "Copy is an asynchronous process": the source answers ``LOCKED`` / ``COPYING_WITH_READ_ONLY_ACCESS``
and a new destination ``COPYING`` (the AWS CLI example of ``copy-image-set``), and "you cannot perform other write
operations on a LOCKED image set". ``promoteToPrimary`` "will configure the CopyImageSet operation to promote the
given image set to the primary DICOM hierarchy. If successful, a new primary image set ID will be returned as the
destination image set" (API reference). Choices where AWS is silent (so tests and users can rely on them; strict
readings, see /work/team/primary-design.md D29-D33):

- A copy into an existing image set whose Patient/Study/Series attributes disagree with the source is accepted
  and ends ``COPY_FAILED`` (as AHI's own example shows) unless ``force``; with ``force`` the destination's
  values win. An instance the destination already holds is refused (SOP Instance UIDs are unique in an image set).
- A copy does not change the source's version or that version's status (only its lock shows the copy).
- ``promoteToPrimary`` copies the whole source to a new image set: with a destination or ``copiableAttributes``
  it is refused (ValidationException). It is refused at once with ConflictException, nothing created, when
  :func:`curation.model.rules.promotion_refusal` finds a conflict with a primary image set that is not deleted:
  one holding one of its series or SOP instances, or one of its study whose Patient- or Study-level metadata
  differs; the message names the attribute, both values and that image set.
- A deleted image set frees its series for a new primary image set; DeleteImageSet is refused while LOCKED.
- ``Store.fail_next_copies`` (a test knob) makes accepted copies end ``COPY_FAILED`` with a message.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from curation.local.backend import BackendBase
from curation.local.database import Version, invalid, new_id, timestamp
from curation.local.faults import take_copy_failure
from curation.model import copies
from curation.model.errors import AHIError


class CopyOperations(BackendBase):
    """CopyImageSet and DeleteImageSet."""

    def _copy_into(
        self,
        conn: sqlite3.Connection,
        datastore_id: str,
        destination_info: dict[str, Any],
        selected: dict[str, Any],
        force: bool,
        now: float,
    ) -> str:
        destination_id = str(destination_info["imageSetId"])
        destination = self.db.image_set(conn, datastore_id, destination_id)
        self.db.writable(destination, now)
        self.db.check_latest(destination, destination_info["latestVersionId"])
        before = self.db.document(conn, destination_id, destination["latest_version"])
        merged, problems = copies.merge(before, selected)
        failed = bool(problems) and not force
        message = None
        if failed:
            message = (
                "INVALID_REQUEST: Patient, Study or Series level metadata of SourceImageSet and "
                f"DestinationImageSet don't match: {', '.join(problems[:5])}"
            )
        version = Version(
            datastore_id=datastore_id,
            image_set_id=destination_id,
            document=before if failed else merged,
            final_status="COPY_FAILED" if failed else "COPIED",
            lock_status="COPYING",
            message=message,
            forced=force and bool(problems),
        )
        self.db.put_version(conn, version, now)
        return destination_id

    def _copy_new(
        self, conn: sqlite3.Connection, datastore_id: str, selected: dict[str, Any], promote: bool, now: float
    ) -> str:
        destination_id = new_id()
        if promote:
            refusal = self.db.promotion_refusal(conn, datastore_id, selected, destination_id)
            if refusal is not None:
                raise AHIError("ConflictException", f"Cannot promote the image set to primary: {refusal.message}")
        failure = take_copy_failure(self.db, conn, promote=promote)
        version = Version(
            datastore_id=datastore_id,
            image_set_id=destination_id,
            document=selected,
            final_status="COPY_FAILED" if failure else "COPIED",
            lock_status="COPYING",
            is_primary=promote and not failure,
            message=failure,
        )
        self.db.put_version(conn, version, now)
        return destination_id

    def _copy_properties(self, datastore_id: str, row: sqlite3.Row, status: str) -> dict[str, Any]:
        return {
            "imageSetId": row["image_set_id"],
            "latestVersionId": str(row["latest_version"]),
            "imageSetState": "LOCKED",
            "imageSetWorkflowStatus": status,
            "createdAt": timestamp(row["created_at"]),
            "updatedAt": timestamp(row["updated_at"]),
            "imageSetArn": self.datastore_arn(datastore_id, row["image_set_id"]),
        }

    def copy_image_set(
        self,
        *,
        datastore_id: str,
        source_image_set_id: str,
        copy_image_set_information: dict[str, Any],
        force: bool = False,
        promote_to_primary: bool = False,
    ) -> dict[str, Any]:
        """CopyImageSet: into a new image set, or merged into an existing one."""
        source_id = source_image_set_id
        source_info = copy_image_set_information["sourceImageSet"]
        destination_info = copy_image_set_information.get("destinationImageSet")
        copiable = (source_info.get("DICOMCopies") or {}).get("copiableAttributes")
        if destination_info and promote_to_primary:
            raise invalid("promoteToPrimary copies to a new image set: omit destinationImageSet")
        if copiable is not None and promote_to_primary:
            raise invalid("promoteToPrimary copies the whole image set: omit copiableAttributes")
        with self.db.transaction(write=True) as conn:
            now = self.db.now()
            source = self.db.image_set(conn, datastore_id, source_id)
            self.db.writable(source, now)
            self.db.check_latest(source, source_info["latestVersionId"])
            selected = copies.select(self.db.document(conn, source_id, source["latest_version"]), copiable)
            if destination_info and destination_info["imageSetId"] == source_id:
                raise invalid("The source and destination image sets must differ")
            if destination_info:
                destination_id = self._copy_into(conn, datastore_id, destination_info, selected, force, now)
            else:
                destination_id = self._copy_new(conn, datastore_id, selected, promote_to_primary, now)
            conn.execute(
                "UPDATE image_sets SET locked_until = ?, lock_status = 'COPYING_WITH_READ_ONLY_ACCESS', "
                "final_status = 'COPIED', message = NULL, updated_at = ? WHERE image_set_id = ?",
                (now + self.lock_seconds, now, source_id),
            )
            source = self.db.image_set(conn, datastore_id, source_id)
            destination = self.db.image_set(conn, datastore_id, destination_id)
        return {
            "datastoreId": datastore_id,
            "sourceImageSetProperties": self._copy_properties(datastore_id, source, "COPYING_WITH_READ_ONLY_ACCESS"),
            "destinationImageSetProperties": self._copy_properties(datastore_id, destination, "COPYING"),
        }

    def delete_image_set(self, *, datastore_id: str, image_set_id: str) -> dict[str, Any]:
        """DeleteImageSet: the image set answers DELETED from now on; its series are free for a new primary."""
        with self.db.transaction(write=True) as conn:
            now = self.db.now()
            row = self.db.image_set(conn, datastore_id, image_set_id)
            self.db.writable(row, now)
            conn.execute(
                "UPDATE image_sets SET deleted = 1, deleted_at = ?, updated_at = ? WHERE image_set_id = ?",
                (now, now, image_set_id),
            )
            conn.execute("DELETE FROM frame_refs WHERE image_set_id = ?", (image_set_id,))
            conn.execute("DELETE FROM image_set_series WHERE image_set_id = ?", (image_set_id,))
            conn.execute("DELETE FROM image_set_instances WHERE image_set_id = ?", (image_set_id,))
        return {
            "datastoreId": datastore_id,
            "imageSetId": image_set_id,
            "imageSetState": "LOCKED",
            "imageSetWorkflowStatus": "DELETING",
        }
