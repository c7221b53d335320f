"""The store's persistence: one SQLite database, its schema, connections, transactions and the one writer of versions.

Everything lives in ``<dir>/store.sqlite3`` (WAL mode): every operation is one transaction, so several processes
can share a store and a crash never leaves it half-written. The directory is made ``0700`` and the database
files ``0600`` (they hold PHI, like the journal). Time comes from an injectable ``clock`` (epoch seconds), read
at AHI's millisecond precision, so tests can order events without sleeping.

This module knows rows and documents, not operations: :mod:`curation.local.store` and the modules it is made of
answer AHI's operations on top of it (moto's backend/responses split, with the SQL here).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from curation.local.indexing import index_document
from curation.model.document import (
    PrimaryFacts,
    check_document,
    encode_document,
    iter_instances,
    parse_document,
    primary_facts,
)
from curation.model.errors import AHIError
from curation.model.rules import Refusal, promotion_refusal

Clock = Callable[[], float]
DATABASE_NAME = "store.sqlite3"
STALE_VERSION = "Requested version(s) of ImageSet(s) is not the latest."
NOT_CONSISTENT = "Requested ImageSet metadata is not consistent yet. Please retry after a few seconds."
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600

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
CREATE TABLE IF NOT EXISTS image_set_instances (
    image_set_id TEXT NOT NULL, sop_uid TEXT NOT NULL, PRIMARY KEY (image_set_id, sop_uid));
CREATE INDEX IF NOT EXISTS image_set_instances_uid ON image_set_instances (sop_uid);
CREATE TABLE IF NOT EXISTS versions (
    image_set_id TEXT NOT NULL, version INTEGER NOT NULL, document BLOB NOT NULL, status TEXT NOT NULL,
    message TEXT, forced INTEGER NOT NULL DEFAULT 0, is_primary INTEGER NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (image_set_id, version));
CREATE TABLE IF NOT EXISTS frames (
    datastore_id TEXT NOT NULL, frame_id TEXT NOT NULL, data BLOB NOT NULL, transfer_syntax TEXT,
    PRIMARY KEY (datastore_id, frame_id));
CREATE TABLE IF NOT EXISTS frame_refs (
    image_set_id TEXT NOT NULL, frame_id TEXT NOT NULL, PRIMARY KEY (image_set_id, frame_id));
CREATE TABLE IF NOT EXISTS tags (
    arn TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (arn, key));
CREATE TABLE IF NOT EXISTS knobs (name TEXT PRIMARY KEY, value BLOB);
CREATE TABLE IF NOT EXISTS imported_documents (
    datastore_id TEXT NOT NULL, digest TEXT NOT NULL, image_set_id TEXT NOT NULL,
    PRIMARY KEY (datastore_id, digest));
"""


class StoreNotFoundError(FileNotFoundError):
    """A store path that holds no store, opened without ``create=True``."""


def new_id() -> str:
    """A fresh AHI identifier: 32 lowercase hex digits."""
    return uuid.uuid4().hex


def timestamp(value: float | None) -> datetime | None:
    """A stored epoch-seconds time as the tz-aware datetime the API answers with."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


def not_found(message: str) -> AHIError:
    """AHI's ResourceNotFoundException."""
    return AHIError("ResourceNotFoundException", message)


def invalid(message: str) -> AHIError:
    """AHI's ValidationException."""
    return AHIError("ValidationException", message)


@dataclass(frozen=True)
class Version:
    """One version to write: the document and the workflow it records (see :meth:`Database.put_version`)."""

    datastore_id: str
    image_set_id: str
    document: dict[str, Any]
    final_status: str
    lock_status: str
    is_primary: bool | None = None  # None: keep the image set's
    message: str | None = None
    forced: bool = False
    lock: bool = True
    consistent_at: float = 0.0


def _private_directory(path: Path, create: bool) -> None:
    if not path.is_dir():
        if not create:
            raise StoreNotFoundError(f"{path}: no such store directory")
        path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):  # a directory we do not own stays as it is
        os.chmod(path, DIRECTORY_MODE)


def _private_file(path: Path) -> None:
    """Create ``path`` 0600 before SQLite does (its -wal and -shm files take the database file's mode)."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    os.close(descriptor)
    for companion in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            os.chmod(companion, FILE_MODE)


def _migrate(connection: sqlite3.Connection) -> None:
    """Bring a store written by an older version up to this schema (columns added since)."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(frames)")}
    if "transfer_syntax" not in columns:  # frames stored before issue 15 are the file's bytes, unlabelled
        connection.execute("ALTER TABLE frames ADD COLUMN transfer_syntax TEXT")
    empty = connection.execute("SELECT 1 FROM image_set_instances LIMIT 1").fetchone() is None
    if empty and connection.execute("SELECT 1 FROM image_sets WHERE deleted = 0 LIMIT 1").fetchone():
        # a store written before issue 12: index the SOP instances of its image sets (the promotion rule reads them)
        rows = connection.execute(
            "SELECT v.image_set_id, v.document FROM image_sets s JOIN versions v "
            "ON v.image_set_id = s.image_set_id AND v.version = s.latest_version WHERE s.deleted = 0"
        ).fetchall()
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(
            "INSERT OR IGNORE INTO image_set_instances (image_set_id, sop_uid) VALUES (?, ?)",
            [(row[0], sop) for row in rows for _, sop, _ in iter_instances(parse_document(row[1]))],
        )
        connection.execute("COMMIT")


class Database:
    """The SQLite database of a store directory: connections (one per thread), transactions, rows, versions."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = time.time,
        lock_seconds: float = 0.0,
        create: bool = True,
    ) -> None:
        self.path = Path(path)
        self.file = self.path / DATABASE_NAME
        if not create and not self.file.is_file():
            raise StoreNotFoundError(f"{self.path}: not a store (no {DATABASE_NAME} in it)")
        _private_directory(self.path, create)
        _private_file(self.file)
        self.clock = clock
        self.lock_seconds = float(lock_seconds)
        self._local = threading.local()
        connection = self.connection()
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        _migrate(connection)

    @staticmethod
    def file_of(path: str | os.PathLike[str]) -> Path:
        """The database file of the store at ``path``."""
        return Path(path) / DATABASE_NAME

    def now(self) -> float:
        """The clock at the millisecond precision AHI answers with, so API timestamps match stored ones."""
        return round(self.clock(), 3)

    # ------------------------------------------------------------------------------ connections

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (a new one after a fork)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            connection = sqlite3.connect(self.file, timeout=60.0, isolation_level=None, check_same_thread=False)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA busy_timeout=60000")
            connection.execute("PRAGMA synchronous=NORMAL")
            local.connection, local.pid = connection, os.getpid()
        connection = local.connection
        assert isinstance(connection, sqlite3.Connection)
        return connection

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction (``BEGIN IMMEDIATE`` for writers): committed on success, rolled back on any error."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (the database stays usable: it reconnects on demand)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None and self._local.pid == os.getpid():
            connection.close()
        self._local = threading.local()

    # ------------------------------------------------------------------------------ lookups

    @staticmethod
    def datastore(conn: sqlite3.Connection, datastore_id: str) -> sqlite3.Row:
        """The ACTIVE datastore's row; ResourceNotFoundException otherwise."""
        row = conn.execute("SELECT * FROM datastores WHERE datastore_id = ?", (datastore_id,)).fetchone()
        if row is None or row["status"] != "ACTIVE":
            raise not_found(f"Datastore {datastore_id} does not exist")
        return row

    def image_set(
        self, conn: sqlite3.Connection, datastore_id: str, image_set_id: str, *, deleted: bool = False
    ) -> sqlite3.Row:
        """The image set's row (a deleted one only when ``deleted``); ResourceNotFoundException otherwise."""
        self.datastore(conn, datastore_id)
        row = conn.execute(
            "SELECT * FROM image_sets WHERE image_set_id = ? AND datastore_id = ?", (image_set_id, datastore_id)
        ).fetchone()
        if row is None or (row["deleted"] and not deleted):
            raise not_found(f"ImageSet {image_set_id} does not exist in datastore {datastore_id}")
        return row

    @staticmethod
    def document(conn: sqlite3.Connection, image_set_id: str, version: int) -> dict[str, Any]:
        """The document of one version of an image set."""
        row = conn.execute(
            "SELECT document FROM versions WHERE image_set_id = ? AND version = ?", (image_set_id, version)
        ).fetchone()
        if row is None:
            raise not_found(f"Version {version} of ImageSet {image_set_id} does not exist")
        return parse_document(row["document"])

    def primaries_near(self, conn: sqlite3.Connection, datastore_id: str, facts: PrimaryFacts) -> list[PrimaryFacts]:
        """The facts of every non-deleted primary image set that shares the study, a series or a SOP instance
        with ``facts`` (what :func:`curation.model.rules.promotion_refusal` compares with), by ImageSetID."""
        found: set[str] = set()
        if facts.study_uid is not None:
            found |= {
                r[0]
                for r in conn.execute(
                    "SELECT image_set_id FROM image_sets WHERE datastore_id = ? AND is_primary = 1 AND deleted = 0 "
                    "AND study_uid = ?",
                    (datastore_id, facts.study_uid),
                )
            }
        for table, column, uids in (
            ("image_set_series", "series_uid", facts.series),
            ("image_set_instances", "sop_uid", facts.sops),
        ):
            for chunk in _chunks(sorted(uids)):
                marks = ", ".join("?" * len(chunk))
                found |= {
                    r[0]
                    for r in conn.execute(
                        f"SELECT s.image_set_id FROM image_sets s JOIN {table} r USING (image_set_id) "
                        f"WHERE s.datastore_id = ? AND s.is_primary = 1 AND s.deleted = 0 AND r.{column} IN ({marks})",
                        (datastore_id, *chunk),
                    )
                }
        found.discard(facts.image_set_id)
        out = []
        for image_set_id in sorted(found):
            row = conn.execute("SELECT latest_version FROM image_sets WHERE image_set_id = ?", (image_set_id,))
            out.append(primary_facts(self.document(conn, image_set_id, row.fetchone()[0]), image_set_id))
        return out

    def promotion_refusal(
        self, conn: sqlite3.Connection, datastore_id: str, document: dict[str, Any], image_set_id: str = ""
    ) -> Refusal | None:
        """Why ``document`` cannot be primary in ``datastore_id`` now (:func:`curation.model.rules.promotion_refusal`
        against the primary image sets it could conflict with), or None."""
        facts = primary_facts(document, image_set_id)
        return promotion_refusal(facts, self.primaries_near(conn, datastore_id, facts))

    @staticmethod
    def state(row: sqlite3.Row, now: float) -> tuple[str, str]:
        """``(imageSetState, imageSetWorkflowStatus)`` of an image set's row at ``now``."""
        if row["deleted"]:
            return "DELETED", "DELETED"
        if row["locked_until"] > now:
            return "LOCKED", str(row["lock_status"])
        return "ACTIVE", str(row["final_status"])

    def writable(self, row: sqlite3.Row, now: float) -> None:
        """ConflictException while the image set is LOCKED."""
        state, status = self.state(row, now)
        if state == "LOCKED":
            raise AHIError(
                "ConflictException",
                f"ImageSet {row['image_set_id']} is LOCKED ({status}); retry when it is ACTIVE again.",
            )

    @staticmethod
    def check_latest(row: sqlite3.Row, version_id: str) -> None:
        """AHI's refusal of a stale ``latestVersionId``."""
        if version_id != str(row["latest_version"]):
            raise not_found(STALE_VERSION)

    # ------------------------------------------------------------------------------ knobs

    @staticmethod
    def knob(conn: sqlite3.Connection, name: str) -> Any:
        """A stored test knob (JSON), or None."""
        row = conn.execute("SELECT value FROM knobs WHERE name = ?", (name,)).fetchone()
        return None if row is None else orjson.loads(row["value"])

    @staticmethod
    def set_knob(conn: sqlite3.Connection, name: str, value: Any) -> None:
        """Store a test knob (JSON)."""
        conn.execute("INSERT OR REPLACE INTO knobs (name, value) VALUES (?, ?)", (name, orjson.dumps(value)))

    # ------------------------------------------------------------------------------ the one writer of versions

    def put_version(self, conn: sqlite3.Connection, version: Version, now: float) -> int:
        """Write the next version of an image set (creating it at version 1) and refresh what search reads."""
        image_set_id = version.image_set_id
        document = dict(version.document, DatastoreID=version.datastore_id, ImageSetID=image_set_id)
        check_document(document)
        index = index_document(document)
        row = conn.execute("SELECT * FROM image_sets WHERE image_set_id = ?", (image_set_id,)).fetchone()
        number = 1 if row is None else int(row["latest_version"]) + 1
        keep = version.is_primary is None and row is not None
        primary = bool(row["is_primary"]) if keep else bool(version.is_primary)
        created_at = now if row is None else row["created_at"]
        conn.execute(
            "INSERT INTO versions (image_set_id, version, document, status, message, forced, is_primary, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                image_set_id,
                number,
                encode_document(document, compress=True),
                version.final_status,
                version.message,
                int(version.forced),
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
                version.datastore_id,
                number,
                int(primary),
                created_at,
                now,
                now + self.lock_seconds if version.lock else 0.0,
                version.lock_status,
                version.final_status,
                version.message,
                int(version.forced),
                max(version.consistent_at, 0.0 if row is None else row["consistent_at"]),
                index.patient_id,
                index.accession_number,
                index.study_id,
                index.study_uid,
                index.study_datetime,
                index.tags,
            ),
        )
        conn.execute("DELETE FROM image_set_series WHERE image_set_id = ?", (image_set_id,))
        conn.executemany(
            "INSERT OR IGNORE INTO image_set_series (image_set_id, series_uid) VALUES (?, ?)",
            [(image_set_id, uid) for uid in index.series],
        )
        conn.execute("DELETE FROM frame_refs WHERE image_set_id = ?", (image_set_id,))
        conn.executemany(
            "INSERT INTO frame_refs (image_set_id, frame_id) VALUES (?, ?)",
            [(image_set_id, frame_id) for frame_id in sorted(index.frames)],
        )
        conn.execute("DELETE FROM image_set_instances WHERE image_set_id = ?", (image_set_id,))
        conn.executemany(
            "INSERT OR IGNORE INTO image_set_instances (image_set_id, sop_uid) VALUES (?, ?)",
            [(image_set_id, sop) for _, sop, _ in iter_instances(document)],
        )
        return number


def _chunks(values: list[str], size: int = 500) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
