"""Datastore operations, tags and import-job lookups of the embedded backend.

A datastore answers ``CREATING``/``DELETING`` once and is ACTIVE (or gone) right away; ``clientToken`` makes
CreateDatastore idempotent as the API reference says; a datastore that still holds image sets cannot be deleted
(this module's wording: AHI does not document the message). StartDICOMImportJob is not supported (the store
imports local files with ``import_paths``), so the job listings are empty.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from curation.local.backend import BackendBase
from curation.local.database import new_id, not_found, timestamp
from curation.local.search import DEFAULT_PAGE, decode_token, encode_token, scope
from curation.model.errors import AHIError

_SUMMARY_KEYS = frozenset({"datastoreId", "datastoreName", "datastoreStatus", "datastoreArn", "createdAt", "updatedAt"})
_OPTIONAL = (
    ("kmsKeyArn", "kms_key_arn"),
    ("lambdaAuthorizerArn", "lambda_authorizer_arn"),
    ("losslessStorageFormat", "lossless_storage_format"),
)


class DatastoreOperations(BackendBase):
    """CreateDatastore, GetDatastore, ListDatastores, DeleteDatastore, the tag operations and import jobs."""

    def _datastore_properties(self, row: sqlite3.Row) -> dict[str, Any]:
        out = {
            "datastoreId": row["datastore_id"],
            "datastoreName": row["name"],
            "datastoreStatus": row["status"],
            "datastoreArn": self.datastore_arn(row["datastore_id"]),
            "createdAt": timestamp(row["created_at"]),
            "updatedAt": timestamp(row["updated_at"]),
        }
        for key, column in _OPTIONAL:
            if row[column] is not None:
                out[key] = row[column]
        return out

    def _create_datastore(
        self,
        conn: sqlite3.Connection,
        *,
        datastore_name: str | None = None,
        client_token: str | None = None,
        tags: dict[str, str] | None = None,
        kms_key_arn: str | None = None,
        lambda_authorizer_arn: str | None = None,
        lossless_storage_format: str = "HTJ2K",
    ) -> str:
        if client_token:
            row = conn.execute("SELECT * FROM datastores WHERE client_token = ?", (client_token,)).fetchone()
            if row is not None:
                if row["name"] != (datastore_name or row["name"]):
                    raise AHIError("ConflictException", "clientToken was already used with different parameters")
                return str(row["datastore_id"])
        datastore_id, now = new_id(), self.db.now()
        conn.execute(
            "INSERT INTO datastores (datastore_id, name, status, client_token, kms_key_arn, lambda_authorizer_arn, "
            "lossless_storage_format, created_at, updated_at) VALUES (?, ?, 'ACTIVE', ?, ?, ?, ?, ?, ?)",
            (
                datastore_id,
                datastore_name or datastore_id,
                client_token,
                kms_key_arn,
                lambda_authorizer_arn,
                lossless_storage_format,
                now,
                now,
            ),
        )
        arn = self.datastore_arn(datastore_id)
        conn.executemany(
            "INSERT OR REPLACE INTO tags (arn, key, value) VALUES (?, ?, ?)",
            [(arn, key, value) for key, value in (tags or {}).items()],
        )
        return datastore_id

    def create_datastore(self, **params: Any) -> dict[str, Any]:
        """CreateDatastore (keywords: ``datastore_name``, ``client_token``, ``tags``, ``kms_key_arn`` ...)."""
        with self.db.transaction(write=True) as conn:
            datastore_id = self._create_datastore(conn, **params)
        return {"datastoreId": datastore_id, "datastoreStatus": "CREATING"}

    def get_datastore(self, *, datastore_id: str) -> dict[str, Any]:
        """GetDatastore (a deleted datastore still answers, with status DELETED)."""
        with self.db.transaction(write=False) as conn:
            row = conn.execute("SELECT * FROM datastores WHERE datastore_id = ?", (datastore_id,)).fetchone()
        if row is None:
            raise not_found(f"Datastore {datastore_id} does not exist")
        return {"datastoreProperties": self._datastore_properties(row)}

    def list_datastores(
        self, *, datastore_status: str | None = None, next_token: str | None = None, max_results: int = DEFAULT_PAGE
    ) -> dict[str, Any]:
        """ListDatastores, oldest first, paged."""
        scope_id = scope("ListDatastores", datastore_status)
        sql, args = "SELECT * FROM datastores WHERE 1 = 1", []
        if datastore_status:
            sql += " AND status = ?"
            args.append(datastore_status)
        if next_token:
            last = decode_token(next_token, scope_id, 2)
            sql += " AND (created_at > ? OR (created_at = ? AND datastore_id > ?))"
            args += [last[0], last[0], last[1]]
        sql += " ORDER BY created_at, datastore_id LIMIT ?"
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(sql, [*args, max_results + 1]).fetchall()
        summaries = [self._datastore_properties(row) for row in rows[:max_results]]
        out: dict[str, Any] = {
            "datastoreSummaries": [{k: v for k, v in item.items() if k in _SUMMARY_KEYS} for item in summaries]
        }
        if len(rows) > max_results:
            last_row = rows[max_results - 1]
            out["nextToken"] = encode_token(scope_id, [last_row["created_at"], last_row["datastore_id"]])
        return out

    def delete_datastore(self, *, datastore_id: str) -> dict[str, Any]:
        """DeleteDatastore: refused while the datastore holds image sets."""
        with self.db.transaction(write=True) as conn:
            self.db.datastore(conn, datastore_id)
            count = conn.execute(
                "SELECT COUNT(*) FROM image_sets WHERE datastore_id = ? AND deleted = 0", (datastore_id,)
            ).fetchone()[0]
            if count:
                raise AHIError(
                    "ConflictException",
                    f"Datastore {datastore_id} cannot be deleted: it still holds {count} image set(s). "
                    "Delete them first.",
                )
            conn.execute(
                "UPDATE datastores SET status = 'DELETED', updated_at = ? WHERE datastore_id = ?",
                (self.db.now(), datastore_id),
            )
            conn.execute("DELETE FROM frames WHERE datastore_id = ?", (datastore_id,))
        return {"datastoreId": datastore_id, "datastoreStatus": "DELETING"}

    # ------------------------------------------------------------------------------ tags

    def _resource(self, conn: sqlite3.Connection, arn: str) -> None:
        match = re.search(r":datastore/([0-9a-z]{32})(?:/imageset/([0-9a-z]{32}))?$", arn)
        if match is None:
            raise not_found(f"Resource {arn} does not exist")
        if match.group(2):
            self.db.image_set(conn, match.group(1), match.group(2))
        else:
            self.db.datastore(conn, match.group(1))

    def tag_resource(self, *, resource_arn: str, tags: dict[str, str]) -> dict[str, Any]:
        """TagResource."""
        with self.db.transaction(write=True) as conn:
            self._resource(conn, resource_arn)
            conn.executemany(
                "INSERT OR REPLACE INTO tags (arn, key, value) VALUES (?, ?, ?)",
                [(resource_arn, key, value) for key, value in tags.items()],
            )
        return {}

    def untag_resource(self, *, resource_arn: str, tag_keys: list[str]) -> dict[str, Any]:
        """UntagResource."""
        with self.db.transaction(write=True) as conn:
            self._resource(conn, resource_arn)
            conn.executemany("DELETE FROM tags WHERE arn = ? AND key = ?", [(resource_arn, key) for key in tag_keys])
        return {}

    def list_tags_for_resource(self, *, resource_arn: str) -> dict[str, Any]:
        """ListTagsForResource."""
        with self.db.transaction(write=False) as conn:
            self._resource(conn, resource_arn)
            rows = conn.execute("SELECT key, value FROM tags WHERE arn = ?", (resource_arn,)).fetchall()
        return {"tags": {row["key"]: row["value"] for row in rows}}

    # ------------------------------------------------------------------------------ import jobs

    def list_dicom_import_jobs(self, *, datastore_id: str, **_: Any) -> dict[str, Any]:
        """ListDICOMImportJobs: always empty (the store imports with ``import_paths``)."""
        with self.db.transaction(write=False) as conn:
            self.db.datastore(conn, datastore_id)
        return {"jobSummaries": []}

    def get_dicom_import_job(self, *, datastore_id: str, job_id: str) -> dict[str, Any]:
        """GetDICOMImportJob: no job exists here."""
        with self.db.transaction(write=False) as conn:
            self.db.datastore(conn, datastore_id)
        raise not_found(f"Import job {job_id} does not exist")
