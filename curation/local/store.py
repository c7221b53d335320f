"""The embedded HealthImaging backend: datastores, image sets and their versions with AHI's semantics.

Everything lives in one SQLite database (``<dir>/store.sqlite3``, WAL mode): every operation is one
transaction, so several processes can share a store and a crash never leaves it half-written. There is no
HTTP here; ``Store.call(operation, params)`` speaks botocore's ``medical-imaging`` member names and the wire
layer builds the transports on top of it.

Choices where AHI's documentation is silent (documented so that tests and users can rely on them):

- Asynchronous work (update, copy) is decided when it is accepted and only *shown* as ``LOCKED`` for
  ``lock_seconds`` (computed lazily from a stored deadline: no background threads).
- ``includeStudyImageSets`` applies the Patient and ``Study.DICOM`` parts of the payload to the other primary
  image sets of the study (their series and instances are not theirs to change).
- A copy into an existing image set whose Patient/Study/Series attributes disagree with the source is accepted
  and ends ``COPY_FAILED`` (as AHI's own example shows) unless ``force``; with ``force`` the destination's
  values win. ``promoteToPrimary`` needs a new destination and no primary image set holding the same series.
- Imported AHI JSON documents keep their content and their ``ImageSetID`` when it is free in the store (a new
  one otherwise); ``DatastoreID`` becomes the target datastore's. They are primary unless a primary image set
  already holds one of their series.
- DICOM instances of a (StudyInstanceUID, SeriesInstanceUID) join that series' primary image set as a new
  version when ``ingest.merge_records`` accepts them, else they form a new non-primary image set; instances
  already held unchanged are skipped, so importing the same files twice changes nothing.
- A deleted image set still answers GetImageSet/ListImageSetVersions (state ``DELETED``); every other
  operation answers ResourceNotFoundException, and its series is free for a new primary image set.
- Pages hold 50 items unless ``maxResults`` says otherwise; a ``nextToken`` is a keyset position bound to
  the request that issued it (no duplicates when image sets are added between pages).
- GetImageFrame serves the stored frame bytes as ``application/octet-stream``; frames of documents imported
  as JSON have no bytes here and answer ResourceNotFoundException. StartDICOMImportJob is not supported
  (use ``import_paths``).
- Messages of refusals AHI does not document (LOCKED, datastore not empty) are this module's own wording.
"""

from __future__ import annotations

import base64
import copy as copy_module
import hashlib
import inspect
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import orjson

from curation.local.validate import to_datetime, validate
from curation.model.document import DocumentError, check_document, encode_document, iter_instances, parse_document
from curation.model.errors import AHIError
from curation.model.updates import study_part

STALE_VERSION = "Requested version(s) of ImageSet(s) is not the latest."
NOT_CONSISTENT = "Requested ImageSet metadata is not consistent yet. Please retry after a few seconds."
FRAME_CONTENT_TYPE = "application/octet-stream"
DEFAULT_PAGE = 50
_ID = re.compile(r"[0-9a-z]{32}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datastores (
    datastore_id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, client_token TEXT,
    kms_key_arn TEXT, lambda_authorizer_arn TEXT, lossless_storage_format TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS image_sets (
    image_set_id TEXT PRIMARY KEY, datastore_id TEXT NOT NULL, latest_version INTEGER NOT NULL,
    is_primary INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, deleted_at REAL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    locked_until REAL NOT NULL DEFAULT 0, lock_status TEXT, final_status TEXT NOT NULL, message TEXT,
    forced INTEGER NOT NULL DEFAULT 0, consistent_at REAL NOT NULL DEFAULT 0,
    patient_id TEXT, accession_number TEXT, study_id TEXT, study_uid TEXT, study_datetime TEXT,
    tags BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS image_sets_study ON image_sets (datastore_id, study_uid);
CREATE TABLE IF NOT EXISTS image_set_series (
    image_set_id TEXT NOT NULL, series_uid TEXT NOT NULL, PRIMARY KEY (image_set_id, series_uid));
CREATE INDEX IF NOT EXISTS image_set_series_uid ON image_set_series (series_uid);
CREATE TABLE IF NOT EXISTS versions (
    image_set_id TEXT NOT NULL, version INTEGER NOT NULL, document BLOB NOT NULL, status TEXT NOT NULL,
    message TEXT, forced INTEGER NOT NULL DEFAULT 0, is_primary INTEGER NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (image_set_id, version));
CREATE TABLE IF NOT EXISTS frames (
    datastore_id TEXT NOT NULL, frame_id TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (datastore_id, frame_id));
CREATE TABLE IF NOT EXISTS frame_refs (
    image_set_id TEXT NOT NULL, frame_id TEXT NOT NULL, PRIMARY KEY (image_set_id, frame_id));
CREATE TABLE IF NOT EXISTS tags (
    arn TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (arn, key));
CREATE TABLE IF NOT EXISTS knobs (name TEXT PRIMARY KEY, value BLOB);
"""


@dataclass
class ImportReport:
    """What an import did: the datastore used, image sets created and updated, and files skipped."""

    datastore_id: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)


def new_id() -> str:
    """A fresh AHI identifier: 32 lowercase hex digits."""
    return uuid.uuid4().hex


def _now() -> float:
    """The current time at the millisecond precision AHI answers with, so API timestamps match stored ones."""
    return round(time.time(), 3)


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _not_found(message: str) -> AHIError:
    return AHIError("ResourceNotFoundException", message)


def _invalid(message: str) -> AHIError:
    return AHIError("ValidationException", message)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict):
        return None
    if isinstance(value, list):
        return "\\".join("" if v is None else str(v) for v in value)
    return str(value)


def _dicom_value(document: dict[str, Any], key: str) -> Any:
    for level in (document.get("Patient"), document.get("Study")):
        if isinstance(level, dict) and isinstance(level.get("DICOM"), dict) and level["DICOM"].get(key) is not None:
            return level["DICOM"][key]
    return None


def study_datetime_key(date: str | None, time_of_day: str | None = None) -> str | None:
    """A sortable ``YYYYMMDDHHMMSSffffff`` key from DICOM StudyDate and StudyTime (missing time = midnight)."""
    if not date:
        return None
    date = date.strip().replace("-", "").replace(".", "")[:8]
    clock, _, fraction = (time_of_day or "").strip().replace(":", "").partition(".")
    return date.ljust(8, "0") + clock[:6].ljust(6, "0") + fraction[:6].ljust(6, "0")


def index_document(document: dict[str, Any]) -> dict[str, Any]:
    """What SearchImageSets filters, sorts and summarizes on, computed from a document."""
    series = list(document.get("Study", {}).get("Series", {}).items())
    tags: dict[str, Any] = {}
    for name, key in (
        ("DICOMPatientId", "PatientID"),
        ("DICOMPatientName", "PatientName"),
        ("DICOMPatientBirthDate", "PatientBirthDate"),
        ("DICOMPatientSex", "PatientSex"),
        ("DICOMStudyInstanceUID", "StudyInstanceUID"),
        ("DICOMStudyId", "StudyID"),
        ("DICOMStudyDescription", "StudyDescription"),
        ("DICOMAccessionNumber", "AccessionNumber"),
        ("DICOMStudyDate", "StudyDate"),
        ("DICOMStudyTime", "StudyTime"),
    ):
        value = _text(_dicom_value(document, key))
        if value is not None:
            tags[name] = value
    tags["DICOMNumberOfStudyRelatedSeries"] = len(series)
    tags["DICOMNumberOfStudyRelatedInstances"] = sum(1 for _ in iter_instances(document))
    if series:
        series_uid, node = series[0]
        attributes = node.get("DICOM", {}) if isinstance(node, dict) else {}
        tags["DICOMSeriesInstanceUID"] = series_uid
        for name, key in (("DICOMSeriesModality", "Modality"), ("DICOMSeriesBodyPart", "BodyPartExamined")):
            value = _text(attributes.get(key))
            if value is not None:
                tags[name] = value
        with suppress(ValueError):
            tags["DICOMSeriesNumber"] = int(str(attributes.get("SeriesNumber")).strip())
    frames = {
        frame["ID"]
        for _, _, instance in iter_instances(document)
        for frame in instance.get("ImageFrames") or []
        if isinstance(frame, dict) and isinstance(frame.get("ID"), str)
    }
    return {
        "patient_id": tags.get("DICOMPatientId"),
        "accession_number": tags.get("DICOMAccessionNumber"),
        "study_id": tags.get("DICOMStudyId"),
        "study_uid": tags.get("DICOMStudyInstanceUID"),
        "study_datetime": study_datetime_key(tags.get("DICOMStudyDate"), tags.get("DICOMStudyTime")),
        "tags": orjson.dumps(tags),
        "series": [uid for uid, _ in series],
        "frames": frames,
    }


def _encode_token(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode()


def _decode_token(token: str, scope: str, size: int | None = None) -> Any:
    """The position a nextToken holds (an int, or a list of ``size`` values); ValidationException if foreign."""
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        key = payload["k"]
        valid = payload.get("s") == scope and (
            isinstance(key, int) if size is None else isinstance(key, list) and len(key) == size
        )
    except (ValueError, TypeError, KeyError, AttributeError, orjson.JSONDecodeError) as exc:
        raise _invalid("Invalid nextToken") from exc
    if not valid:
        raise _invalid("Invalid nextToken: it was not issued for this request")
    return key


def _summary(properties: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in properties.items() if key in _SUMMARY_KEYS}


_SUMMARY_KEYS = frozenset({"datastoreId", "datastoreName", "datastoreStatus", "datastoreArn", "createdAt", "updatedAt"})


def _scope(*parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(parts, default=str)).hexdigest()[:16]


class Store:
    """A durable HealthImaging datastore collection in a directory; ``call`` answers AHI operations."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lock_seconds: float = 0.0,
        consistency_seconds: float = 0.0,
        region: str = "us-east-1",
        account_id: str = "123456789012",
    ) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.database = self.path / "store.sqlite3"
        self.lock_seconds = float(lock_seconds)
        self.consistency_seconds = float(consistency_seconds)
        self.region = region
        self.account_id = account_id
        self._local = threading.local()
        connection = self._connection()
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")

    # ---------------------------------------------------------------- plumbing

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            connection = sqlite3.connect(self.database, timeout=60.0, isolation_level=None, check_same_thread=False)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA busy_timeout=60000")
            connection.execute("PRAGMA synchronous=NORMAL")
            local.connection, local.pid = connection, os.getpid()
        return local.connection

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's database connection (the store stays usable: it reconnects on demand)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None and self._local.pid == os.getpid():
            connection.close()
        self._local = threading.local()

    def datastore_arn(self, datastore_id: str, image_set_id: str | None = None) -> str:
        """The ARN AHI gives a datastore (or an image set of it)."""
        arn = f"arn:aws:medical-imaging:{self.region}:{self.account_id}:datastore/{datastore_id}"
        return f"{arn}/imageset/{image_set_id}" if image_set_id else arn

    def call(self, operation_name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Answer one AHI operation (botocore member names in and out); raise AHIError as AHI would."""
        params = validate(operation_name, params)
        handler = getattr(self, "_op_" + operation_name, None)
        if handler is None:
            raise _invalid(f"{operation_name} is not supported by the local HealthImaging store")
        return handler(params)

    def fail_next_updates(self, count: int, message: str = "INTERNAL_ERROR: simulated update failure") -> None:
        """Make the next ``count`` accepted updates end ``UPDATE_FAILED`` with ``message`` (a test knob)."""
        with self._transaction(write=True) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO knobs (name, value) VALUES ('fail_updates', ?)",
                (orjson.dumps({"count": int(count), "message": message}),),
            )

    def _take_failure(self, conn: sqlite3.Connection) -> str | None:
        row = conn.execute("SELECT value FROM knobs WHERE name = 'fail_updates'").fetchone()
        if row is None:
            return None
        knob = orjson.loads(row["value"])
        if knob["count"] <= 0:
            return None
        knob["count"] -= 1
        conn.execute("UPDATE knobs SET value = ? WHERE name = 'fail_updates'", (orjson.dumps(knob),))
        return knob["message"]

    # ---------------------------------------------------------------- lookups

    def _datastore(self, conn: sqlite3.Connection, datastore_id: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM datastores WHERE datastore_id = ?", (datastore_id,)).fetchone()
        if row is None or row["status"] != "ACTIVE":
            raise _not_found(f"Datastore {datastore_id} does not exist")
        return row

    def _image_set(
        self, conn: sqlite3.Connection, datastore_id: str, image_set_id: str, *, deleted: bool = False
    ) -> sqlite3.Row:
        self._datastore(conn, datastore_id)
        row = conn.execute(
            "SELECT * FROM image_sets WHERE image_set_id = ? AND datastore_id = ?", (image_set_id, datastore_id)
        ).fetchone()
        if row is None or (row["deleted"] and not deleted):
            raise _not_found(f"ImageSet {image_set_id} does not exist in datastore {datastore_id}")
        return row

    @staticmethod
    def _state(row: sqlite3.Row, now: float) -> tuple[str, str]:
        if row["deleted"]:
            return "DELETED", "DELETED"
        if row["locked_until"] > now:
            return "LOCKED", row["lock_status"]
        return "ACTIVE", row["final_status"]

    def _writable(self, row: sqlite3.Row, now: float) -> None:
        state, status = self._state(row, now)
        if state == "LOCKED":
            raise AHIError(
                "ConflictException",
                f"ImageSet {row['image_set_id']} is LOCKED ({status}); retry when it is ACTIVE again.",
            )

    def _check_latest(self, row: sqlite3.Row, version_id: str) -> None:
        if version_id != str(row["latest_version"]):
            raise _not_found(STALE_VERSION)

    @staticmethod
    def _document(conn: sqlite3.Connection, image_set_id: str, version: int) -> dict[str, Any]:
        row = conn.execute(
            "SELECT document FROM versions WHERE image_set_id = ? AND version = ?", (image_set_id, version)
        ).fetchone()
        if row is None:
            raise _not_found(f"Version {version} of ImageSet {image_set_id} does not exist")
        return parse_document(row["document"])

    def _primary_holding(
        self, conn: sqlite3.Connection, datastore_id: str, study_uid: str | None, series: Iterable[str]
    ) -> str | None:
        """The primary image set already holding one of ``series`` of ``study_uid``, if any."""
        for series_uid in series:
            row = conn.execute(
                "SELECT s.image_set_id FROM image_sets s JOIN image_set_series r USING (image_set_id) "
                "WHERE s.datastore_id = ? AND s.is_primary = 1 AND s.deleted = 0 AND s.study_uid IS ? "
                "AND r.series_uid = ? LIMIT 1",
                (datastore_id, study_uid, series_uid),
            ).fetchone()
            if row is not None:
                return row["image_set_id"]
        return None

    # ---------------------------------------------------------------- the one writer of versions

    def _put_version(
        self,
        conn: sqlite3.Connection,
        *,
        datastore_id: str,
        image_set_id: str,
        document: dict[str, Any],
        now: float,
        final_status: str,
        lock_status: str,
        is_primary: bool | None = None,
        message: str | None = None,
        forced: bool = False,
        lock: bool = True,
        consistent_at: float = 0.0,
    ) -> int:
        """Write the next version of an image set (creating it at version 1) and refresh what search reads."""
        document = dict(document, DatastoreID=datastore_id, ImageSetID=image_set_id)
        check_document(document)
        index = index_document(document)
        row = conn.execute("SELECT * FROM image_sets WHERE image_set_id = ?", (image_set_id,)).fetchone()
        version = 1 if row is None else row["latest_version"] + 1
        primary = bool(row["is_primary"]) if is_primary is None and row is not None else bool(is_primary)
        created_at = now if row is None else row["created_at"]
        locked_until = now + self.lock_seconds if lock else 0.0
        conn.execute(
            "INSERT INTO versions (image_set_id, version, document, status, message, forced, is_primary, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                image_set_id,
                version,
                encode_document(document, compress=True),
                final_status,
                message,
                int(forced),
                int(primary),
                created_at,
                now,
            ),
        )
        conn.execute(
            # an upsert, not INSERT OR REPLACE: the row keeps its rowid, which orders search ties by creation
            "INSERT INTO image_sets (image_set_id, datastore_id, latest_version, is_primary, deleted, "
            "created_at, updated_at, locked_until, lock_status, final_status, message, forced, consistent_at, "
            "patient_id, accession_number, study_id, study_uid, study_datetime, tags) "
            "VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (image_set_id) DO UPDATE SET datastore_id = excluded.datastore_id, "
            "latest_version = excluded.latest_version, is_primary = excluded.is_primary, deleted = 0, "
            "created_at = excluded.created_at, updated_at = excluded.updated_at, "
            "locked_until = excluded.locked_until, lock_status = excluded.lock_status, "
            "final_status = excluded.final_status, message = excluded.message, forced = excluded.forced, "
            "consistent_at = excluded.consistent_at, patient_id = excluded.patient_id, "
            "accession_number = excluded.accession_number, study_id = excluded.study_id, "
            "study_uid = excluded.study_uid, study_datetime = excluded.study_datetime, tags = excluded.tags",
            (
                image_set_id,
                datastore_id,
                version,
                int(primary),
                created_at,
                now,
                locked_until,
                lock_status,
                final_status,
                message,
                int(forced),
                max(consistent_at, 0.0 if row is None else row["consistent_at"]),
                index["patient_id"],
                index["accession_number"],
                index["study_id"],
                index["study_uid"],
                index["study_datetime"],
                index["tags"],
            ),
        )
        conn.execute("DELETE FROM image_set_series WHERE image_set_id = ?", (image_set_id,))
        conn.executemany(
            "INSERT OR IGNORE INTO image_set_series (image_set_id, series_uid) VALUES (?, ?)",
            [(image_set_id, uid) for uid in index["series"]],
        )
        conn.execute("DELETE FROM frame_refs WHERE image_set_id = ?", (image_set_id,))
        conn.executemany(
            "INSERT INTO frame_refs (image_set_id, frame_id) VALUES (?, ?)",
            [(image_set_id, frame_id) for frame_id in sorted(index["frames"])],
        )
        return version

    # ---------------------------------------------------------------- datastores

    def _datastore_properties(self, row: sqlite3.Row) -> dict[str, Any]:
        out = {
            "datastoreId": row["datastore_id"],
            "datastoreName": row["name"],
            "datastoreStatus": row["status"],
            "datastoreArn": self.datastore_arn(row["datastore_id"]),
            "createdAt": _ts(row["created_at"]),
            "updatedAt": _ts(row["updated_at"]),
        }
        for key, column in (
            ("kmsKeyArn", "kms_key_arn"),
            ("lambdaAuthorizerArn", "lambda_authorizer_arn"),
            ("losslessStorageFormat", "lossless_storage_format"),
        ):
            if row[column] is not None:
                out[key] = row[column]
        return out

    def _create_datastore(self, conn: sqlite3.Connection, params: dict[str, Any]) -> tuple[str, bool]:
        token = params.get("clientToken")
        if token:
            row = conn.execute("SELECT * FROM datastores WHERE client_token = ?", (token,)).fetchone()
            if row is not None:
                if row["name"] != params.get("datastoreName", row["name"]):
                    raise AHIError("ConflictException", "clientToken was already used with different parameters")
                return row["datastore_id"], False
        datastore_id, now = new_id(), _now()
        conn.execute(
            "INSERT INTO datastores (datastore_id, name, status, client_token, kms_key_arn, lambda_authorizer_arn, "
            "lossless_storage_format, created_at, updated_at) VALUES (?, ?, 'ACTIVE', ?, ?, ?, ?, ?, ?)",
            (
                datastore_id,
                params.get("datastoreName") or datastore_id,
                token,
                params.get("kmsKeyArn"),
                params.get("lambdaAuthorizerArn"),
                params.get("losslessStorageFormat", "HTJ2K"),
                now,
                now,
            ),
        )
        arn = self.datastore_arn(datastore_id)
        conn.executemany(
            "INSERT OR REPLACE INTO tags (arn, key, value) VALUES (?, ?, ?)",
            [(arn, key, value) for key, value in (params.get("tags") or {}).items()],
        )
        return datastore_id, True

    def _op_CreateDatastore(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._transaction(write=True) as conn:
            datastore_id, _ = self._create_datastore(conn, params)
        return {"datastoreId": datastore_id, "datastoreStatus": "CREATING"}

    def _op_GetDatastore(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._transaction(write=False) as conn:
            row = conn.execute("SELECT * FROM datastores WHERE datastore_id = ?", (params["datastoreId"],)).fetchone()
        if row is None:
            raise _not_found(f"Datastore {params['datastoreId']} does not exist")
        return {"datastoreProperties": self._datastore_properties(row)}

    def _op_ListDatastores(self, params: dict[str, Any]) -> dict[str, Any]:
        limit = params.get("maxResults", DEFAULT_PAGE)
        status = params.get("datastoreStatus")
        scope = _scope("ListDatastores", status)
        sql, args = "SELECT * FROM datastores WHERE 1 = 1", []
        if status:
            sql += " AND status = ?"
            args.append(status)
        if params.get("nextToken"):
            last = _decode_token(params["nextToken"], scope, 2)
            sql += " AND (created_at > ? OR (created_at = ? AND datastore_id > ?))"
            args += [last[0], last[0], last[1]]
        sql += " ORDER BY created_at, datastore_id LIMIT ?"
        with self._transaction(write=False) as conn:
            rows = conn.execute(sql, [*args, limit + 1]).fetchall()
        out: dict[str, Any] = {
            "datastoreSummaries": [_summary(self._datastore_properties(row)) for row in rows[:limit]],
        }
        if len(rows) > limit:
            last_row = rows[limit - 1]
            out["nextToken"] = _encode_token({"s": scope, "k": [last_row["created_at"], last_row["datastore_id"]]})
        return out

    def _op_DeleteDatastore(self, params: dict[str, Any]) -> dict[str, Any]:
        datastore_id = params["datastoreId"]
        with self._transaction(write=True) as conn:
            self._datastore(conn, datastore_id)
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
                (_now(), datastore_id),
            )
            conn.execute("DELETE FROM frames WHERE datastore_id = ?", (datastore_id,))
        return {"datastoreId": datastore_id, "datastoreStatus": "DELETING"}

    # ---------------------------------------------------------------- reading image sets

    def _properties(self, row: sqlite3.Row, version: sqlite3.Row, now: float) -> dict[str, Any]:
        latest = version["version"] == row["latest_version"]
        state, status = self._state(row, now) if latest else ("ACTIVE", version["status"])
        message = row["message"] if latest and state == "ACTIVE" else version["message"]
        out: dict[str, Any] = {
            "imageSetId": row["image_set_id"],
            "versionId": str(version["version"]),
            "imageSetState": state,
            "imageSetWorkflowStatus": status,
            "createdAt": _ts(version["created_at"]),
            "updatedAt": _ts(version["updated_at"]),
            "isPrimary": bool(version["is_primary"]),
        }
        if row["deleted"] and latest:
            out["deletedAt"] = _ts(row["deleted_at"])
        if message and not (latest and state == "LOCKED"):
            out["message"] = message
        if version["forced"]:
            out["overrides"] = {"forced": True}
        return out

    def _version_row(self, conn: sqlite3.Connection, row: sqlite3.Row, version_id: str | None) -> sqlite3.Row:
        number = row["latest_version"] if version_id is None else int(version_id)
        version = conn.execute(
            "SELECT image_set_id, version, status, message, forced, is_primary, created_at, updated_at "
            "FROM versions WHERE image_set_id = ? AND version = ?",
            (row["image_set_id"], number),
        ).fetchone()
        if version is None:
            raise _not_found(f"Version {number} of ImageSet {row['image_set_id']} does not exist")
        return version

    def _op_GetImageSet(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._transaction(write=False) as conn:
            row = self._image_set(conn, params["datastoreId"], params["imageSetId"], deleted=True)
            version = self._version_row(conn, row, params.get("versionId"))
        out = self._properties(row, version, _now())
        out["datastoreId"] = row["datastore_id"]
        out["imageSetArn"] = self.datastore_arn(row["datastore_id"], row["image_set_id"])
        return out

    def _op_ListImageSetVersions(self, params: dict[str, Any]) -> dict[str, Any]:
        limit = params.get("maxResults", DEFAULT_PAGE)
        scope = _scope("ListImageSetVersions", params["datastoreId"], params["imageSetId"])
        with self._transaction(write=False) as conn:
            row = self._image_set(conn, params["datastoreId"], params["imageSetId"], deleted=True)
            below = row["latest_version"] + 1
            if params.get("nextToken"):
                below = _decode_token(params["nextToken"], scope)
            versions = conn.execute(
                "SELECT image_set_id, version, status, message, forced, is_primary, created_at, updated_at "
                "FROM versions WHERE image_set_id = ? AND version < ? ORDER BY version DESC LIMIT ?",
                (row["image_set_id"], below, limit + 1),
            ).fetchall()
        now = _now()
        items = []
        for version in versions[:limit]:
            item = self._properties(row, version, now)
            item["ImageSetWorkflowStatus"] = item.pop("imageSetWorkflowStatus")
            items.append(item)
        out: dict[str, Any] = {"imageSetPropertiesList": items}
        if len(versions) > limit:
            out["nextToken"] = _encode_token({"s": scope, "k": versions[limit - 1]["version"]})
        return out

    def _op_GetImageSetMetadata(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._transaction(write=False) as conn:
            row = self._image_set(conn, params["datastoreId"], params["imageSetId"])
            if _now() < row["consistent_at"]:
                raise AHIError("ConflictException", NOT_CONSISTENT)
            number = row["latest_version"] if params.get("versionId") is None else int(params["versionId"])
            blob = conn.execute(
                "SELECT document FROM versions WHERE image_set_id = ? AND version = ?", (row["image_set_id"], number)
            ).fetchone()
        if blob is None:
            raise _not_found(f"Version {number} of ImageSet {row['image_set_id']} does not exist")
        return {"imageSetMetadataBlob": bytes(blob[0]), "contentType": "application/json", "contentEncoding": "gzip"}

    def _op_GetImageFrame(self, params: dict[str, Any]) -> dict[str, Any]:
        frame_id = params["imageFrameInformation"]["imageFrameId"]
        with self._transaction(write=False) as conn:
            row = self._image_set(conn, params["datastoreId"], params["imageSetId"])
            frame = conn.execute(
                "SELECT f.data FROM frame_refs r JOIN frames f ON f.frame_id = r.frame_id AND f.datastore_id = ? "
                "WHERE r.image_set_id = ? AND r.frame_id = ?",
                (row["datastore_id"], row["image_set_id"], frame_id),
            ).fetchone()
        if frame is None:
            raise _not_found(f"Image frame {frame_id} does not exist in ImageSet {row['image_set_id']}")
        return {"imageFrameBlob": bytes(frame[0]), "contentType": FRAME_CONTENT_TYPE}

    # ---------------------------------------------------------------- search

    _SORT_COLUMNS: ClassVar[dict[str, str]] = {
        "updatedAt": "updated_at",
        "createdAt": "created_at",
        "DICOMStudyDateAndTime": "COALESCE(study_datetime, '')",
    }
    _EQUAL_COLUMNS: ClassVar[dict[str, str]] = {
        "DICOMPatientId": "patient_id",
        "DICOMAccessionNumber": "accession_number",
        "DICOMStudyId": "study_id",
        "DICOMStudyInstanceUID": "study_uid",
    }

    def _filter_sql(self, search_filter: dict[str, Any]) -> tuple[str, list[Any]]:
        operator, values = search_filter["operator"], search_filter["values"]
        kinds = {next(iter(value)) for value in values}
        if len(kinds) != 1:
            raise _invalid("All values of a search filter must be of the same attribute")
        kind = kinds.pop()
        if operator == "EQUAL" and len(values) != 1:
            raise _invalid("The EQUAL operator takes exactly one value")
        if operator == "BETWEEN":
            if len(values) != 2:
                raise _invalid("The BETWEEN operator takes exactly two values")
            if kind not in ("createdAt", "updatedAt", "DICOMStudyDateAndTime"):
                raise _invalid(f"The BETWEEN operator is not supported for {kind}")
        raw = [value[kind] for value in values]
        if kind in self._EQUAL_COLUMNS:
            return f"{self._EQUAL_COLUMNS[kind]} = ?", raw
        if kind == "DICOMSeriesInstanceUID":
            return (
                "EXISTS (SELECT 1 FROM image_set_series r WHERE r.image_set_id = image_sets.image_set_id "
                "AND r.series_uid = ?)",
                raw,
            )
        if kind == "isPrimary":
            return "is_primary = ?", [int(raw[0])]
        if kind in ("createdAt", "updatedAt"):
            column = "created_at" if kind == "createdAt" else "updated_at"
            stamps = [to_datetime(value, kind).timestamp() for value in raw]
            if operator == "EQUAL":
                return f"ABS({column} - ?) < 0.0005", stamps
            return f"{column} BETWEEN ? AND ?", sorted(stamps)
        keys = [study_datetime_key(value["DICOMStudyDate"], value.get("DICOMStudyTime")) for value in raw]
        if None in keys:
            raise _invalid("DICOMStudyDate must not be empty")
        if operator == "EQUAL":
            if raw[0].get("DICOMStudyTime"):
                return "study_datetime = ?", keys
            return "substr(study_datetime, 1, 8) = ?", [keys[0][:8]]
        return "study_datetime BETWEEN ? AND ?", sorted(keys)

    def _op_SearchImageSets(self, params: dict[str, Any]) -> dict[str, Any]:
        datastore_id = params["datastoreId"]
        criteria = params.get("searchCriteria") or {}
        limit = params.get("maxResults", DEFAULT_PAGE)
        sort = criteria.get("sort") or {"sortField": "updatedAt", "sortOrder": "DESC"}
        column = self._SORT_COLUMNS[sort["sortField"]]
        descending = sort["sortOrder"] == "DESC"
        where, args = ["datastore_id = ?", "deleted = 0"], [datastore_id]
        for search_filter in criteria.get("filters") or []:
            clause, values = self._filter_sql(search_filter)
            where.append(clause)
            args += values
        scope = _scope("SearchImageSets", datastore_id, criteria)
        if params.get("nextToken"):
            last = _decode_token(params["nextToken"], scope, 2)
            comparison = "<" if descending else ">"
            where.append(f"({column} {comparison} ? OR ({column} = ? AND rowid {comparison} ?))")
            args += [last[0], last[0], last[1]]
        order = "DESC" if descending else "ASC"
        sql = (
            "SELECT rowid, image_set_id, latest_version, created_at, updated_at, is_primary, tags, "
            f"{column} AS sort_key FROM image_sets WHERE {' AND '.join(where)} "
            f"ORDER BY sort_key {order}, rowid {order} LIMIT ?"
        )
        with self._transaction(write=False) as conn:
            self._datastore(conn, datastore_id)
            rows = conn.execute(sql, [*args, limit + 1]).fetchall()
        summaries = [
            {
                "imageSetId": row["image_set_id"],
                "version": row["latest_version"],
                "createdAt": _ts(row["created_at"]),
                "updatedAt": _ts(row["updated_at"]),
                "isPrimary": bool(row["is_primary"]),
                "DICOMTags": orjson.loads(row["tags"]),
            }
            for row in rows[:limit]
        ]
        out: dict[str, Any] = {"imageSetsMetadataSummaries": summaries}
        if criteria.get("sort"):
            out["sort"] = dict(criteria["sort"])
        if len(rows) > limit:
            last_row = rows[limit - 1]
            out["nextToken"] = _encode_token({"s": scope, "k": [last_row["sort_key"], last_row["rowid"]]})
        return out

    # ---------------------------------------------------------------- updates

    @staticmethod
    def _apply(
        document: dict[str, Any],
        request: dict[str, Any],
        history: Callable[[str], dict[str, Any]],
        is_primary: bool,
    ) -> dict[str, Any]:
        from curation.model.updates import apply_to_document

        kwargs: dict[str, Any] = {"history": history}
        if "is_primary" in inspect.signature(apply_to_document).parameters:
            kwargs["is_primary"] = is_primary
        try:
            return apply_to_document(document, request, **kwargs)
        except DocumentError as exc:
            raise _invalid(str(exc)) from exc

    def _op_UpdateImageSetMetadata(self, params: dict[str, Any]) -> dict[str, Any]:
        datastore_id, image_set_id = params["datastoreId"], params["imageSetId"]
        updates = params["updateImageSetMetadataUpdates"]
        revert = updates.get("revertToVersionId")
        study_wide = bool(params.get("includeStudyImageSets"))
        blobs = updates.get("DICOMUpdates") or {}
        if revert is None and not (blobs.get("updatableAttributes") or blobs.get("removableAttributes")):
            raise _invalid("DICOMUpdates must hold updatableAttributes or removableAttributes")
        if revert is not None and study_wide:
            raise _invalid("includeStudyImageSets cannot be used with revertToVersionId")
        with self._transaction(write=True) as conn:
            now = _now()
            row = self._image_set(conn, datastore_id, image_set_id)
            self._writable(row, now)
            self._check_latest(row, params["latestVersionId"])
            current = self._document(conn, image_set_id, row["latest_version"])

            def history(version_id: str, _id: str = image_set_id) -> dict[str, Any]:
                return self._document(conn, _id, int(version_id))

            if revert is not None:
                document = history(revert)
            else:
                document = self._apply(current, params, history, bool(row["is_primary"]))
            targets = [(row, current, document, "UPDATING")]
            if study_wide:
                sibling_request = study_part(params)
                siblings = conn.execute(
                    "SELECT * FROM image_sets WHERE datastore_id = ? AND study_uid IS ? AND is_primary = 1 "
                    "AND deleted = 0 AND image_set_id != ? ORDER BY image_set_id",
                    (datastore_id, row["study_uid"], image_set_id),
                ).fetchall()
                for sibling in siblings if sibling_request else []:
                    self._writable(sibling, now)
                    before = self._document(conn, sibling["image_set_id"], sibling["latest_version"])

                    def sibling_history(version_id: str, _id: str = sibling["image_set_id"]) -> dict[str, Any]:
                        return self._document(conn, _id, int(version_id))

                    after = self._apply(before, sibling_request, sibling_history, True)
                    targets.append((sibling, before, after, "UPDATING_FOR_STUDY_CONSISTENCY"))
            failure = self._take_failure(conn)
            versions = []
            for target, before, after, lock_status in targets:
                versions.append(
                    self._put_version(
                        conn,
                        datastore_id=datastore_id,
                        image_set_id=target["image_set_id"],
                        document=before if failure else after,
                        now=now,
                        final_status="UPDATE_FAILED" if failure else "UPDATED",
                        lock_status=lock_status,
                        message=failure,
                        forced=revert is None and bool(params.get("force")),
                    )
                )
        return {
            "datastoreId": datastore_id,
            "imageSetId": image_set_id,
            "latestVersionId": str(versions[0]),
            "imageSetState": "LOCKED",
            "imageSetWorkflowStatus": "UPDATING",
            "createdAt": _ts(row["created_at"]),
            "updatedAt": _ts(now),
        }

    # ---------------------------------------------------------------- copy and delete

    @staticmethod
    def _select(document: dict[str, Any], copiable: str | None) -> dict[str, Any]:
        """The part of ``document`` named by ``copiableAttributes`` (all of it when absent)."""
        selected = copy_module.deepcopy(document)
        if copiable is None:
            return selected
        try:
            wanted = orjson.loads(copiable)
        except orjson.JSONDecodeError as exc:
            raise _invalid(f"copiableAttributes is not valid JSON: {exc}") from exc
        study = wanted.get("Study") if isinstance(wanted, dict) else None
        series_wanted = study.get("Series") if isinstance(study, dict) else None
        if not isinstance(series_wanted, dict) or not series_wanted:
            raise _invalid('copiableAttributes must name series as {"Study": {"Series": {"<uid>": {...}}}}')
        source_series = selected["Study"].get("Series", {})
        kept: dict[str, Any] = {}
        for series_uid, spec in series_wanted.items():
            if series_uid not in source_series:
                raise _invalid(f"Series {series_uid} does not exist in the source image set")
            node = source_series[series_uid]
            instances = spec.get("Instances") if isinstance(spec, dict) else None
            if instances is not None and not isinstance(instances, dict):
                raise _invalid(f"Instances of series {series_uid} must be an object keyed by SOPInstanceUID")
            if instances:
                missing = [uid for uid in instances if uid not in node.get("Instances", {})]
                if missing:
                    raise _invalid(f"Instance {missing[0]} does not exist in series {series_uid} of the source")
                node = {**node, "Instances": {uid: node["Instances"][uid] for uid in instances}}
            kept[series_uid] = node
        selected["Study"]["Series"] = kept
        return selected

    @staticmethod
    def _merge_copy(destination: dict[str, Any], selected: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """``selected`` merged into ``destination`` (the destination's values win) and the disagreements."""
        merged = copy_module.deepcopy(destination)
        problems: list[str] = []

        def compare(label: str, ours: dict[str, Any], theirs: dict[str, Any]) -> None:
            for key in sorted(set(ours) & set(theirs)):
                if ours[key] != theirs[key]:
                    problems.append(f"{label} {key}")

        compare("Patient", merged["Patient"].get("DICOM", {}), selected["Patient"].get("DICOM", {}))
        compare("Study", merged["Study"].get("DICOM", {}), selected["Study"].get("DICOM", {}))
        series = merged["Study"].setdefault("Series", {})
        for series_uid, node in selected["Study"].get("Series", {}).items():
            if series_uid not in series:
                series[series_uid] = copy_module.deepcopy(node)
                continue
            compare(f"Series {series_uid}", series[series_uid].get("DICOM", {}), node.get("DICOM", {}))
            series[series_uid].setdefault("Instances", {}).update(copy_module.deepcopy(node.get("Instances", {})))
        return merged, problems

    def _op_CopyImageSet(self, params: dict[str, Any]) -> dict[str, Any]:
        datastore_id, source_id = params["datastoreId"], params["sourceImageSetId"]
        information = params["copyImageSetInformation"]
        source_info, destination_info = information["sourceImageSet"], information.get("destinationImageSet")
        promote, force = bool(params.get("promoteToPrimary")), bool(params.get("force"))
        if destination_info and promote:
            raise _invalid("promoteToPrimary copies to a new image set: omit destinationImageSet")
        with self._transaction(write=True) as conn:
            now = _now()
            source = self._image_set(conn, datastore_id, source_id)
            self._writable(source, now)
            self._check_latest(source, source_info["latestVersionId"])
            selected = self._select(
                self._document(conn, source_id, source["latest_version"]),
                (source_info.get("DICOMCopies") or {}).get("copiableAttributes"),
            )
            if destination_info:
                destination_id = destination_info["imageSetId"]
                if destination_id == source_id:
                    raise _invalid("The source and destination image sets must differ")
                destination = self._image_set(conn, datastore_id, destination_id)
                self._writable(destination, now)
                self._check_latest(destination, destination_info["latestVersionId"])
                before = self._document(conn, destination_id, destination["latest_version"])
                merged, problems = self._merge_copy(before, selected)
                failed = bool(problems) and not force
                message = None
                if failed:
                    message = (
                        "INVALID_REQUEST: Patient, Study or Series level metadata of SourceImageSet and "
                        f"DestinationImageSet don't match: {', '.join(problems[:5])}"
                    )
                self._put_version(
                    conn,
                    datastore_id=datastore_id,
                    image_set_id=destination_id,
                    document=before if failed else merged,
                    now=now,
                    final_status="COPY_FAILED" if failed else "COPIED",
                    lock_status="COPYING",
                    message=message,
                    forced=force and bool(problems),
                )
            else:
                destination_id = new_id()
                if promote:
                    index = index_document(selected)
                    holder = self._primary_holding(conn, datastore_id, index["study_uid"], index["series"])
                    if holder is not None:
                        raise AHIError(
                            "ConflictException",
                            f"Primary ImageSet {holder} already holds this series; delete it before promoting a copy.",
                        )
                self._put_version(
                    conn,
                    datastore_id=datastore_id,
                    image_set_id=destination_id,
                    document=selected,
                    now=now,
                    final_status="COPIED",
                    lock_status="COPYING",
                    is_primary=promote,
                )
            conn.execute(
                "UPDATE image_sets SET locked_until = ?, lock_status = 'COPYING_WITH_READ_ONLY_ACCESS', "
                "final_status = 'COPIED', message = NULL, updated_at = ? WHERE image_set_id = ?",
                (now + self.lock_seconds, now, source_id),
            )
            conn.execute(
                "UPDATE versions SET status = 'COPIED', updated_at = ? WHERE image_set_id = ? AND version = ?",
                (now, source_id, source["latest_version"]),
            )
            source = self._image_set(conn, datastore_id, source_id)
            destination = self._image_set(conn, datastore_id, destination_id)

        def properties(row: sqlite3.Row, status: str) -> dict[str, Any]:
            return {
                "imageSetId": row["image_set_id"],
                "latestVersionId": str(row["latest_version"]),
                "imageSetState": "LOCKED",
                "imageSetWorkflowStatus": status,
                "createdAt": _ts(row["created_at"]),
                "updatedAt": _ts(row["updated_at"]),
                "imageSetArn": self.datastore_arn(datastore_id, row["image_set_id"]),
            }

        return {
            "datastoreId": datastore_id,
            "sourceImageSetProperties": properties(source, "COPYING_WITH_READ_ONLY_ACCESS"),
            "destinationImageSetProperties": properties(destination, "COPYING"),
        }

    def _op_DeleteImageSet(self, params: dict[str, Any]) -> dict[str, Any]:
        datastore_id, image_set_id = params["datastoreId"], params["imageSetId"]
        with self._transaction(write=True) as conn:
            now = _now()
            row = self._image_set(conn, datastore_id, image_set_id)
            self._writable(row, now)
            conn.execute(
                "UPDATE image_sets SET deleted = 1, deleted_at = ?, updated_at = ? WHERE image_set_id = ?",
                (now, now, image_set_id),
            )
            conn.execute("DELETE FROM frame_refs WHERE image_set_id = ?", (image_set_id,))
            conn.execute("DELETE FROM image_set_series WHERE image_set_id = ?", (image_set_id,))
        return {
            "datastoreId": datastore_id,
            "imageSetId": image_set_id,
            "imageSetState": "LOCKED",
            "imageSetWorkflowStatus": "DELETING",
        }

    # ---------------------------------------------------------------- tags and import jobs

    def _resource(self, conn: sqlite3.Connection, arn: str) -> None:
        match = re.search(r":datastore/([0-9a-z]{32})(?:/imageset/([0-9a-z]{32}))?$", arn)
        if match is None:
            raise _not_found(f"Resource {arn} does not exist")
        if match.group(2):
            self._image_set(conn, match.group(1), match.group(2))
        else:
            self._datastore(conn, match.group(1))

    def _op_TagResource(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._transaction(write=True) as conn:
            self._resource(conn, params["resourceArn"])
            conn.executemany(
                "INSERT OR REPLACE INTO tags (arn, key, value) VALUES (?, ?, ?)",
                [(params["resourceArn"], key, value) for key, value in params["tags"].items()],
            )
        return {}

    def _op_UntagResource(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._transaction(write=True) as conn:
            self._resource(conn, params["resourceArn"])
            conn.executemany(
                "DELETE FROM tags WHERE arn = ? AND key = ?",
                [(params["resourceArn"], key) for key in params["tagKeys"]],
            )
        return {}

    def _op_ListTagsForResource(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._transaction(write=False) as conn:
            self._resource(conn, params["resourceArn"])
            rows = conn.execute("SELECT key, value FROM tags WHERE arn = ?", (params["resourceArn"],)).fetchall()
        return {"tags": {row["key"]: row["value"] for row in rows}}

    def _op_ListDICOMImportJobs(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._transaction(write=False) as conn:
            self._datastore(conn, params["datastoreId"])
        return {"jobSummaries": []}

    def _op_GetDICOMImportJob(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._transaction(write=False) as conn:
            self._datastore(conn, params["datastoreId"])
        raise _not_found(f"Import job {params['jobId']} does not exist")

    # ---------------------------------------------------------------- import

    def _import_datastore(self, datastore_id: str | None) -> str:
        with self._transaction(write=True) as conn:
            if datastore_id is not None:
                return self._datastore(conn, datastore_id)["datastore_id"]
            rows = conn.execute("SELECT datastore_id FROM datastores WHERE status = 'ACTIVE'").fetchall()
            if len(rows) == 1:
                return rows[0]["datastore_id"]
            if len(rows) > 1:
                raise _invalid(f"The store holds {len(rows)} datastores: name the one to import into")
            return self._create_datastore(conn, {"datastoreName": "local"})[0]

    def import_documents(
        self, documents: Iterable[dict[str, Any] | bytes | str], datastore_id: str | None = None
    ) -> ImportReport:
        """Load AHI metadata documents (dicts, or JSON/gzip bytes) as image sets, one transaction each."""
        report = ImportReport(self._import_datastore(datastore_id))
        for number, document in enumerate(documents):
            label = f"document {number}"
            try:
                if not isinstance(document, dict):
                    document = parse_document(document)
                label = str(document.get("ImageSetID", label))
                check_document(document)
                report.created.append(self._import_document(report.datastore_id, document))
            except (DocumentError, AHIError) as exc:
                report.failures.append((label, str(exc)))
        return report

    def _import_document(self, datastore_id: str, document: dict[str, Any]) -> str:
        with self._transaction(write=True) as conn:
            now = _now()
            image_set_id = document.get("ImageSetID")
            if (
                not (isinstance(image_set_id, str) and _ID.fullmatch(image_set_id))
                or conn.execute("SELECT 1 FROM image_sets WHERE image_set_id = ?", (image_set_id,)).fetchone()
            ):
                image_set_id = new_id()
            index = index_document(document)
            primary = self._primary_holding(conn, datastore_id, index["study_uid"], index["series"]) is None
            self._put_version(
                conn,
                datastore_id=datastore_id,
                image_set_id=image_set_id,
                document=document,
                now=now,
                final_status="CREATED",
                lock_status="IMPORTING",
                is_primary=primary,
                lock=False,
                consistent_at=now + self.consistency_seconds,
            )
        return image_set_id

    def import_paths(
        self, paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], datastore_id: str | None = None
    ) -> ImportReport:
        """Ingest DICOM P10 files and AHI JSON documents (files or directories) into a datastore."""
        from curation.local import ingest

        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        files, failures = ingest.iter_dicom_paths([os.fspath(p) for p in paths])
        failures = [(str(path), reason) for path, reason in failures]
        records, documents = [], []
        for path in files:
            try:
                if path.lower().endswith((".json", ".json.gz")):
                    with open(path, "rb") as handle:
                        documents.append(parse_document(handle.read()))
                else:
                    records.append(ingest.read_instance(path))
            except ingest.IngestError as exc:
                failures.append((str(path), exc.reason))
            except (OSError, DocumentError) as exc:
                failures.append((str(path), str(exc)))
        report = self.import_documents(documents, datastore_id)
        report.failures = failures + report.failures
        self._import_records(records, report)
        return report

    def _import_records(self, records: list[Any], report: ImportReport) -> None:
        groups: dict[tuple[str, str], list[Any]] = {}
        for record in records:
            groups.setdefault((record.study_uid, record.series_uid), []).append(record)
        for (study_uid, series_uid), group in groups.items():
            try:
                with self._transaction(write=True) as conn:
                    created, updated = self._import_series(conn, report.datastore_id, study_uid, series_uid, group)
                report.created += created
                report.updated += updated
            except (AHIError, DocumentError, ValueError) as exc:
                report.failures.extend((str(record.path), str(exc)) for record in group)

    @staticmethod
    def _holds(document: dict[str, Any], record: Any) -> bool:
        """Whether ``document`` already holds ``record`` exactly (importing it again changes nothing)."""
        series = document["Study"].get("Series", {}).get(record.series_uid)
        return (
            series is not None
            and series.get("Instances", {}).get(record.sop_uid) == record.instance
            and series.get("DICOM") == record.series
            and document["Patient"].get("DICOM") == record.patient
            and document["Study"].get("DICOM") == record.study
        )

    def _import_series(
        self, conn: sqlite3.Connection, datastore_id: str, study_uid: str, series_uid: str, group: list[Any]
    ) -> tuple[list[str], list[str]]:
        """Place one series' records: into its primary image set where they fit, else new non-primary ones."""
        from curation.local import ingest

        now = _now()
        rows = conn.execute(
            "SELECT s.image_set_id, s.latest_version, s.is_primary FROM image_sets s "
            "JOIN image_set_series r USING (image_set_id) WHERE s.datastore_id = ? AND s.deleted = 0 "
            "AND s.study_uid IS ? AND r.series_uid = ? ORDER BY s.is_primary DESC, s.created_at",
            (datastore_id, study_uid, series_uid),
        ).fetchall()
        existing = {
            row["image_set_id"]: self._document(conn, row["image_set_id"], row["latest_version"]) for row in rows
        }
        group = [record for record in group if not any(self._holds(doc, record) for doc in existing.values())]
        if not group:
            return [], []
        holder = rows[0]["image_set_id"] if rows and rows[0]["is_primary"] else None
        # buckets: [image set id or None for a new one, document or None, its records]
        buckets: list[list[Any]] = [[holder, existing[holder] if holder else None, []]]
        whole = (
            ingest.merge_records(existing[holder], group) if holder else self._try_build(ingest, group, datastore_id)
        )
        if whole is not None:
            buckets[0][1:] = [whole, group]
        else:
            for record in group:
                for bucket in buckets:
                    merged = (
                        ingest.merge_records(bucket[1], [record])
                        if bucket[1] is not None
                        else self._try_build(ingest, [record], datastore_id)
                    )
                    if merged is not None:
                        bucket[1], bucket[2] = merged, [*bucket[2], record]
                        break
                else:
                    buckets.append([None, ingest.build_document([record], datastore_id, "0" * 32), [record]])
        created, updated = [], []
        for index, (image_set_id, document, placed) in enumerate(buckets):
            if not placed:
                continue
            conn.executemany(
                "INSERT OR IGNORE INTO frames (datastore_id, frame_id, data) VALUES (?, ?, ?)",
                [
                    (datastore_id, frame_id, bytes(data))
                    for record in placed
                    for frame_id, data in record.frames.items()
                ],
            )
            new = image_set_id is None
            image_set_id = image_set_id or new_id()
            self._put_version(
                conn,
                datastore_id=datastore_id,
                image_set_id=image_set_id,
                document=document,
                now=now,
                final_status="CREATED" if new else "IMPORTED",
                lock_status="IMPORTING",
                is_primary=(index == 0 and holder is None) if new else None,
                lock=False,
                consistent_at=now + self.consistency_seconds,
            )
            (created if new else updated).append(image_set_id)
        return created, updated

    @staticmethod
    def _try_build(ingest: Any, records: list[Any], datastore_id: str) -> dict[str, Any] | None:
        try:
            return ingest.build_document(records, datastore_id, "0" * 32)
        except ValueError:
            return None
