"""Importing DICOM P10 files and AHI JSON documents into the embedded backend, idempotently.

- Imported AHI JSON documents keep their content and their ``ImageSetID`` when it is free in the store (a new
  one otherwise); ``DatastoreID`` becomes the target datastore's. A document identical to one already imported
  into the datastore (same ``ImageSetID`` and content, its image set not deleted) is skipped and reported as
  such, so importing the same files again, or re-running an import killed half-way, makes no duplicates.
- Primary or not: "Imported P10 data that conflicts with primary image sets already in the store will be
  persisted as non-primary" (Developer Guide, "Understanding image sets"). A new image set (document or DICOM
  series) is primary exactly when :func:`curation.model.rules.promotion_refusal` finds no conflict with the
  primary image sets of the datastore (the rule a promotion follows; strict where AWS is silent: the same series
  or SOP instance, or the same study with other Patient- or Study-level values).
- DICOM instances of a (StudyInstanceUID, SeriesInstanceUID) join that series' primary image set as a new
  version when :func:`curation.local.ingest.merge_records` accepts them, else they form a new non-primary
  image set; instances already held unchanged are skipped, so importing the same files twice changes nothing.
  Their frames are stored as the datastore's ``losslessStorageFormat`` asks (:mod:`curation.local.encoding`).
- Each document and each series is one transaction: a killed import leaves whole image sets or none.
- Nothing readable creates nothing: no datastore is made for an import that has nothing to import.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from curation.local import ingest
from curation.local.database import Version, invalid, new_id
from curation.local.datastores import DatastoreOperations
from curation.local.encoding import StorageFormat
from curation.local.ingest import InstanceRecord
from curation.model.document import DocumentError, check_document, parse_document
from curation.model.errors import AHIError

_JSON_SUFFIXES = (".json", ".json.gz")
_PLACEHOLDER_ID = "0" * 32
_ID = re.compile(r"[0-9a-z]{32}")


@dataclass
class ImportReport:
    """What an import did: the datastore used (None when nothing was imported into none), the image sets
    created and updated, the documents skipped as already imported (label, image set holding them), and the
    files or documents that failed (label, reason)."""

    datastore_id: str | None
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ImportInputs:
    """What was read from the paths of an import, before anything is written."""

    records: list[InstanceRecord] = field(default_factory=list)
    documents: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (label, document)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def readable(self) -> bool:
        """Whether anything can be imported."""
        return bool(self.records or self.documents)


def read_inputs(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], storage_format: StorageFormat | None = "HTJ2K"
) -> ImportInputs:
    """Read DICOM P10 files and AHI JSON documents (files, or directories walked recursively); nothing is written."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    files, failures = ingest.iter_dicom_paths([os.fspath(p) for p in paths])
    inputs = ImportInputs(failures=[(str(path), reason) for path, reason in failures])
    for path in files:  # one after another: pydicom's warnings filter (catch_warnings) is not thread-safe
        item = _read_one(path, storage_format)
        if isinstance(item, InstanceRecord):
            inputs.records.append(item)
        elif isinstance(item, dict):
            inputs.documents.append((str(path), item))
        else:
            inputs.failures.append((str(path), item))
    return inputs


def _read_one(path: str, storage_format: StorageFormat | None) -> InstanceRecord | dict[str, Any] | str:
    """One input file: a DICOM instance's record, an AHI document, or the reason it cannot be imported."""
    try:
        if path.lower().endswith(_JSON_SUFFIXES):
            with open(path, "rb") as handle:
                return parse_document(handle.read())
        return ingest.read_instance(path, storage_format)
    except ingest.IngestError as exc:
        return exc.reason
    except (OSError, DocumentError) as exc:
        return str(exc)


def document_digest(document: dict[str, Any]) -> str:
    """What makes two imported documents the same: their ImageSetID and content (not the DatastoreID)."""
    content = {key: value for key, value in document.items() if key != "DatastoreID"}
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _try_build(records: list[InstanceRecord], datastore_id: str) -> dict[str, Any] | None:
    try:
        return ingest.build_document(records, datastore_id, _PLACEHOLDER_ID)
    except ValueError:
        return None


def _holds(document: dict[str, Any], record: InstanceRecord) -> bool:
    """Whether ``document`` already holds ``record`` exactly (importing it again changes nothing)."""
    series = document["Study"].get("Series", {}).get(record.series_uid)
    return (
        series is not None
        and series.get("Instances", {}).get(record.sop_uid) == record.instance
        and series.get("DICOM") == record.series
        and document["Patient"].get("DICOM") == record.patient
        and document["Study"].get("DICOM") == record.study
    )


@dataclass
class _Bucket:
    """Records placed into one image set: an existing one (``image_set_id``) or a new one (None)."""

    image_set_id: str | None
    document: dict[str, Any] | None
    records: list[InstanceRecord] = field(default_factory=list)

    def take(self, record: InstanceRecord, datastore_id: str) -> bool:
        merged = (
            ingest.merge_records(self.document, [record])
            if self.document is not None
            else _try_build([record], datastore_id)
        )
        if merged is None:
            return False
        self.document, self.records = merged, [*self.records, record]
        return True


def _place(
    group: list[InstanceRecord], holder: str | None, existing: dict[str, dict[str, Any]], datastore_id: str
) -> list[_Bucket]:
    """Place one series' new records: all into its primary image set (or one new image set) when they fit,
    else record by record into the first image set that takes it, or a new non-primary one."""
    first = _Bucket(holder, existing[holder] if holder else None)
    whole = (
        ingest.merge_records(first.document, group) if first.document is not None else _try_build(group, datastore_id)
    )
    if whole is not None:
        first.document, first.records = whole, group
        return [first]
    buckets = [first]
    for record in group:
        if not any(bucket.take(record, datastore_id) for bucket in buckets):
            buckets.append(_Bucket(None, ingest.build_document([record], datastore_id, _PLACEHOLDER_ID), [record]))
    return buckets


class ImportOperations(DatastoreOperations):
    """``import_documents``, ``import_paths`` and ``import_inputs``: local files into a datastore."""

    consistency_seconds: float

    def storage_format(self, datastore_id: str | None = None) -> tuple[str | None, StorageFormat]:
        """The datastore an import goes to (None: one will be created) and its ``losslessStorageFormat``."""
        with self.db.transaction(write=False) as conn:
            if datastore_id is not None:
                row = self.db.datastore(conn, datastore_id)
            else:
                rows = conn.execute("SELECT * FROM datastores WHERE status = 'ACTIVE'").fetchall()
                if len(rows) > 1:
                    raise invalid(f"The store holds {len(rows)} datastores: name the one to import into")
                if not rows:
                    return None, "HTJ2K"
                row = rows[0]
        return str(row["datastore_id"]), cast(StorageFormat, row["lossless_storage_format"] or "HTJ2K")

    def _import_datastore(self, datastore_id: str | None) -> str:
        with self.db.transaction(write=True) as conn:
            if datastore_id is not None:
                return str(self.db.datastore(conn, datastore_id)["datastore_id"])
            rows = conn.execute("SELECT datastore_id FROM datastores WHERE status = 'ACTIVE'").fetchall()
            if len(rows) == 1:
                return str(rows[0]["datastore_id"])
            if len(rows) > 1:
                raise invalid(f"The store holds {len(rows)} datastores: name the one to import into")
            return self._create_datastore(conn, datastore_name="local")

    def import_documents(
        self, documents: Iterable[dict[str, Any] | bytes | str], datastore_id: str | None = None
    ) -> ImportReport:
        """Load AHI metadata documents (dicts, or JSON/gzip bytes) as image sets, one transaction each."""
        inputs = ImportInputs()
        for number, document in enumerate(documents):
            label = f"document {number}"
            try:
                parsed = document if isinstance(document, dict) else parse_document(document)
                inputs.documents.append((str(parsed.get("ImageSetID", label)), parsed))
            except DocumentError as exc:
                inputs.failures.append((label, str(exc)))
        return self.import_inputs(inputs, datastore_id)

    def import_paths(
        self, paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], datastore_id: str | None = None
    ) -> ImportReport:
        """Ingest DICOM P10 files and AHI JSON documents (files or directories) into a datastore."""
        _, storage_format = self.storage_format(datastore_id)
        return self.import_inputs(read_inputs(paths, storage_format), datastore_id)

    def import_inputs(self, inputs: ImportInputs, datastore_id: str | None = None) -> ImportReport:
        """Write what :func:`read_inputs` read; with nothing readable, nothing is written (no datastore made)."""
        if not inputs.readable:
            known, _ = self.storage_format(datastore_id)
            return ImportReport(known, failures=list(inputs.failures))
        report = ImportReport(self._import_datastore(datastore_id), failures=list(inputs.failures))
        assert report.datastore_id is not None
        for label, document in inputs.documents:
            try:
                check_document(document)
                image_set_id, created = self._import_document(report.datastore_id, document)
            except (DocumentError, AHIError) as exc:
                report.failures.append((label, str(exc)))
                continue
            if created:
                report.created.append(image_set_id)
            else:
                report.skipped.append((label, image_set_id))
        self._import_records(inputs.records, report)
        return report

    def _import_document(self, datastore_id: str, document: dict[str, Any]) -> tuple[str, bool]:
        """The image set holding ``document`` and whether it was created now (False: imported before)."""
        digest = document_digest(document)
        with self.db.transaction(write=True) as conn:
            seen = conn.execute(
                "SELECT d.image_set_id FROM imported_documents d JOIN image_sets s USING (image_set_id) "
                "WHERE d.datastore_id = ? AND d.digest = ? AND s.deleted = 0",
                (datastore_id, digest),
            ).fetchone()
            if seen is not None:
                return str(seen["image_set_id"]), False
            image_set_id = document.get("ImageSetID")
            if (
                not (isinstance(image_set_id, str) and _ID.fullmatch(image_set_id))
                or conn.execute("SELECT 1 FROM image_sets WHERE image_set_id = ?", (image_set_id,)).fetchone()
            ):
                image_set_id = new_id()
            now = self.db.now()
            primary = self.db.promotion_refusal(conn, datastore_id, document, image_set_id) is None
            version = Version(
                datastore_id=datastore_id,
                image_set_id=image_set_id,
                document=document,
                final_status="CREATED",
                lock_status="IMPORTING",
                is_primary=primary,
                lock=False,
                consistent_at=now + self.consistency_seconds,
            )
            self.db.put_version(conn, version, now)
            conn.execute(
                "INSERT OR REPLACE INTO imported_documents (datastore_id, digest, image_set_id) VALUES (?, ?, ?)",
                (datastore_id, digest, image_set_id),
            )
        return image_set_id, True

    def _import_records(self, records: list[InstanceRecord], report: ImportReport) -> None:
        groups: dict[tuple[str, str], list[InstanceRecord]] = {}
        for record in records:
            groups.setdefault((record.study_uid, record.series_uid), []).append(record)
        assert report.datastore_id is not None
        for (study_uid, series_uid), group in groups.items():
            try:
                with self.db.transaction(write=True) as conn:
                    created, updated = self._import_series(conn, report.datastore_id, study_uid, series_uid, group)
                report.created += created
                report.updated += updated
            except (AHIError, DocumentError, ValueError) as exc:
                report.failures.extend((str(record.path), str(exc)) for record in group)

    def _import_series(
        self,
        conn: sqlite3.Connection,
        datastore_id: str,
        study_uid: str,
        series_uid: str,
        group: list[InstanceRecord],
    ) -> tuple[list[str], list[str]]:
        """Place one series' records: into its primary image set where they fit, else new non-primary ones."""
        rows = conn.execute(
            "SELECT s.image_set_id, s.latest_version, s.is_primary FROM image_sets s "
            "JOIN image_set_series r USING (image_set_id) WHERE s.datastore_id = ? AND s.deleted = 0 "
            "AND s.study_uid IS ? AND r.series_uid = ? ORDER BY s.is_primary DESC, s.created_at",
            (datastore_id, study_uid, series_uid),
        ).fetchall()
        existing = {
            row["image_set_id"]: self.db.document(conn, row["image_set_id"], row["latest_version"]) for row in rows
        }
        group = [record for record in group if not any(_holds(doc, record) for doc in existing.values())]
        if not group:
            return [], []
        holder = str(rows[0]["image_set_id"]) if rows and rows[0]["is_primary"] else None
        now = self.db.now()
        created: list[str] = []
        updated: list[str] = []
        for index, bucket in enumerate(_place(group, holder, existing, datastore_id)):
            if not bucket.records or bucket.document is None:
                continue
            conn.executemany(
                "INSERT OR IGNORE INTO frames (datastore_id, frame_id, data, transfer_syntax) VALUES (?, ?, ?, ?)",
                [
                    (datastore_id, frame_id, bytes(data), record.instance.get("StoredTransferSyntaxUID"))
                    for record in bucket.records
                    for frame_id, data in record.frames.items()
                ],
            )
            new = bucket.image_set_id is None
            image_set_id = bucket.image_set_id or new_id()
            primary = new and index == 0 and holder is None
            if primary:
                primary = self.db.promotion_refusal(conn, datastore_id, bucket.document, image_set_id) is None
            version = Version(
                datastore_id=datastore_id,
                image_set_id=image_set_id,
                document=bucket.document,
                final_status="CREATED" if new else "IMPORTED",
                lock_status="IMPORTING",
                is_primary=primary if new else None,
                lock=False,
                consistent_at=now + self.consistency_seconds,
            )
            self.db.put_version(conn, version, now)
            (created if new else updated).append(image_set_id)
        return created, updated
