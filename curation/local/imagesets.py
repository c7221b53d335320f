"""Reading image sets: GetImageSet, ListImageSetVersions, GetImageSetMetadata, GetImageFrame, SearchImageSets.

A deleted image set still answers GetImageSet and ListImageSetVersions (state ``DELETED``); every other
operation answers ResourceNotFoundException. Asynchronous work is shown as ``LOCKED`` until its stored deadline
(no background threads). GetImageFrame answers the frame as stored, with the content type AHI gives its
stored transfer syntax (:func:`curation.local.frames.content_type`); frames of documents imported as JSON
have no bytes here and answer ResourceNotFoundException.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from curation.local.backend import BackendBase
from curation.local.database import NOT_CONSISTENT, not_found, timestamp
from curation.local.encoding import content_type
from curation.local.search import DEFAULT_PAGE, decode_token, encode_token, scope, search_sql
from curation.model.errors import AHIError

_VERSION_COLUMNS = "image_set_id, version, status, message, forced, is_primary, created_at, updated_at"


class ImageSetReads(BackendBase):
    """The read operations on image sets and search."""

    def _properties(self, row: sqlite3.Row, version: sqlite3.Row, now: float) -> dict[str, Any]:
        latest = version["version"] == row["latest_version"]
        state, status = self.db.state(row, now) if latest else ("ACTIVE", version["status"])
        message = row["message"] if latest and state == "ACTIVE" else version["message"]
        out: dict[str, Any] = {
            "imageSetId": row["image_set_id"],
            "versionId": str(version["version"]),
            "imageSetState": state,
            "imageSetWorkflowStatus": status,
            "createdAt": timestamp(version["created_at"]),
            "updatedAt": timestamp(version["updated_at"]),
            "isPrimary": bool(version["is_primary"]),
        }
        if row["deleted"] and latest:
            out["deletedAt"] = timestamp(row["deleted_at"])
        if message and not (latest and state == "LOCKED"):
            out["message"] = message
        if version["forced"]:
            out["overrides"] = {"forced": True}
        return out

    @staticmethod
    def _version_row(conn: sqlite3.Connection, row: sqlite3.Row, version_id: str | None) -> sqlite3.Row:
        number = row["latest_version"] if version_id is None else int(version_id)
        version = conn.execute(
            f"SELECT {_VERSION_COLUMNS} FROM versions WHERE image_set_id = ? AND version = ?",
            (row["image_set_id"], number),
        ).fetchone()
        if version is None:
            raise not_found(f"Version {number} of ImageSet {row['image_set_id']} does not exist")
        return version

    def get_image_set(self, *, datastore_id: str, image_set_id: str, version_id: str | None = None) -> dict[str, Any]:
        """GetImageSet (of a version, or the latest)."""
        with self.db.transaction(write=False) as conn:
            row = self.db.image_set(conn, datastore_id, image_set_id, deleted=True)
            version = self._version_row(conn, row, version_id)
        out = self._properties(row, version, self.db.now())
        out["datastoreId"] = row["datastore_id"]
        out["imageSetArn"] = self.datastore_arn(row["datastore_id"], row["image_set_id"])
        return out

    def list_image_set_versions(
        self, *, datastore_id: str, image_set_id: str, next_token: str | None = None, max_results: int = DEFAULT_PAGE
    ) -> dict[str, Any]:
        """ListImageSetVersions, newest first, paged (item key ``ImageSetWorkflowStatus`` as the model has it)."""
        scope_id = scope("ListImageSetVersions", datastore_id, image_set_id)
        with self.db.transaction(write=False) as conn:
            row = self.db.image_set(conn, datastore_id, image_set_id, deleted=True)
            below = row["latest_version"] + 1
            if next_token:
                below = decode_token(next_token, scope_id)
            versions = conn.execute(
                f"SELECT {_VERSION_COLUMNS} FROM versions WHERE image_set_id = ? AND version < ? "
                "ORDER BY version DESC LIMIT ?",
                (row["image_set_id"], below, max_results + 1),
            ).fetchall()
        now = self.db.now()
        items = []
        for version in versions[:max_results]:
            item = self._properties(row, version, now)
            item["ImageSetWorkflowStatus"] = item.pop("imageSetWorkflowStatus")
            items.append(item)
        out: dict[str, Any] = {"imageSetPropertiesList": items}
        if len(versions) > max_results:
            out["nextToken"] = encode_token(scope_id, versions[max_results - 1]["version"])
        return out

    def get_image_set_metadata(
        self, *, datastore_id: str, image_set_id: str, version_id: str | None = None
    ) -> dict[str, Any]:
        """GetImageSetMetadata: the gzip-compressed document as stored."""
        with self.db.transaction(write=False) as conn:
            row = self.db.image_set(conn, datastore_id, image_set_id)
            if self.db.now() < row["consistent_at"]:
                raise AHIError("ConflictException", NOT_CONSISTENT)
            number = row["latest_version"] if version_id is None else int(version_id)
            blob = conn.execute(
                "SELECT document FROM versions WHERE image_set_id = ? AND version = ?", (row["image_set_id"], number)
            ).fetchone()
        if blob is None:
            raise not_found(f"Version {number} of ImageSet {row['image_set_id']} does not exist")
        return {"imageSetMetadataBlob": bytes(blob[0]), "contentType": "application/json", "contentEncoding": "gzip"}

    def get_image_frame(
        self, *, datastore_id: str, image_set_id: str, image_frame_information: dict[str, str]
    ) -> dict[str, Any]:
        """GetImageFrame: the stored frame and the content type of its stored transfer syntax."""
        frame_id = image_frame_information["imageFrameId"]
        with self.db.transaction(write=False) as conn:
            row = self.db.image_set(conn, datastore_id, image_set_id)
            frame = conn.execute(
                "SELECT f.data, f.transfer_syntax FROM frame_refs r "
                "JOIN frames f ON f.frame_id = r.frame_id AND f.datastore_id = ? "
                "WHERE r.image_set_id = ? AND r.frame_id = ?",
                (row["datastore_id"], row["image_set_id"], frame_id),
            ).fetchone()
        if frame is None:
            raise not_found(f"Image frame {frame_id} does not exist in ImageSet {row['image_set_id']}")
        return {"imageFrameBlob": bytes(frame["data"]), "contentType": content_type(frame["transfer_syntax"])}

    def search_image_sets(
        self,
        *,
        datastore_id: str,
        search_criteria: dict[str, Any] | None = None,
        max_results: int = DEFAULT_PAGE,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """SearchImageSets: filtered, sorted (default ``updatedAt`` DESC, ties in creation order), paged."""
        criteria = search_criteria or {}
        sql, args, scope_id = search_sql(datastore_id, criteria, max_results, next_token)
        with self.db.transaction(write=False) as conn:
            self.db.datastore(conn, datastore_id)
            rows = conn.execute(sql, args).fetchall()
        summaries = [
            {
                "imageSetId": row["image_set_id"],
                "version": row["latest_version"],
                "createdAt": timestamp(row["created_at"]),
                "updatedAt": timestamp(row["updated_at"]),
                "isPrimary": bool(row["is_primary"]),
                "DICOMTags": orjson.loads(row["tags"]),
            }
            for row in rows[:max_results]
        ]
        out: dict[str, Any] = {"imageSetsMetadataSummaries": summaries}
        if criteria.get("sort"):
            out["sort"] = dict(criteria["sort"])
        if len(rows) > max_results:
            last_row = rows[max_results - 1]
            out["nextToken"] = encode_token(scope_id, [last_row["sort_key"], last_row["rowid"]])
        return out
