"""CopyImageSet and DeleteImageSet in the embedded backend, with the copy rules where AHI's guide is silent.

From the developer guide ("Copying an image set"): ``copiableAttributes`` selects series and instances of the
source; a copy into an existing image set merges into it; ``promoteToPrimary`` makes the new image set primary.
Choices where the guide is silent (so tests and users can rely on them):

- A copy into an existing image set whose Patient/Study/Series attributes disagree with the source is accepted
  and ends ``COPY_FAILED`` (as AHI's own example shows) unless ``force``; with ``force`` the destination's
  values win.
- ``promoteToPrimary`` needs a new destination and no primary image set holding the same series.
- A deleted image set frees its series for a new primary image set.
"""

from __future__ import annotations

import copy
import sqlite3
from typing import Any

import orjson

from curation.local.backend import BackendBase
from curation.local.database import Version, invalid, new_id, timestamp
from curation.local.indexing import index_document
from curation.model.errors import AHIError


def select_copiable(document: dict[str, Any], copiable: str | None) -> dict[str, Any]:
    """The part of ``document`` named by ``copiableAttributes`` (all of it when absent), as a new document."""
    selected = copy.deepcopy(document)
    if copiable is None:
        return selected
    try:
        wanted = orjson.loads(copiable)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"copiableAttributes is not valid JSON: {exc}") from exc
    study = wanted.get("Study") if isinstance(wanted, dict) else None
    series_wanted = study.get("Series") if isinstance(study, dict) else None
    if not isinstance(series_wanted, dict) or not series_wanted:
        raise invalid('copiableAttributes must name series as {"Study": {"Series": {"<uid>": {...}}}}')
    source_series = selected["Study"].get("Series", {})
    kept: dict[str, Any] = {}
    for series_uid, spec in series_wanted.items():
        if series_uid not in source_series:
            raise invalid(f"Series {series_uid} does not exist in the source image set")
        node = source_series[series_uid]
        instances = spec.get("Instances") if isinstance(spec, dict) else None
        if instances is not None and not isinstance(instances, dict):
            raise invalid(f"Instances of series {series_uid} must be an object keyed by SOPInstanceUID")
        if instances:
            missing = [uid for uid in instances if uid not in node.get("Instances", {})]
            if missing:
                raise invalid(f"Instance {missing[0]} does not exist in series {series_uid} of the source")
            node = {**node, "Instances": {uid: node["Instances"][uid] for uid in instances}}
        kept[series_uid] = node
    selected["Study"]["Series"] = kept
    return selected


def merge_copy(destination: dict[str, Any], selected: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``selected`` merged into ``destination`` (the destination's values win) and the disagreements."""
    merged = copy.deepcopy(destination)
    problems: list[str] = []

    def compare(label: str, ours: dict[str, Any], theirs: dict[str, Any]) -> None:
        problems.extend(f"{label} {key}" for key in sorted(set(ours) & set(theirs)) if ours[key] != theirs[key])

    compare("Patient", merged["Patient"].get("DICOM", {}), selected["Patient"].get("DICOM", {}))
    compare("Study", merged["Study"].get("DICOM", {}), selected["Study"].get("DICOM", {}))
    series = merged["Study"].setdefault("Series", {})
    for series_uid, node in selected["Study"].get("Series", {}).items():
        if series_uid not in series:
            series[series_uid] = copy.deepcopy(node)
            continue
        compare(f"Series {series_uid}", series[series_uid].get("DICOM", {}), node.get("DICOM", {}))
        series[series_uid].setdefault("Instances", {}).update(copy.deepcopy(node.get("Instances", {})))
    return merged, problems


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
        merged, problems = merge_copy(before, selected)
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
            index = index_document(selected)
            holder = self.db.primary_holding(conn, datastore_id, index.study_uid, index.series)
            if holder is not None:
                raise AHIError(
                    "ConflictException",
                    f"Primary ImageSet {holder} already holds this series; delete it before promoting a copy.",
                )
        version = Version(
            datastore_id=datastore_id,
            image_set_id=destination_id,
            document=selected,
            final_status="COPIED",
            lock_status="COPYING",
            is_primary=promote,
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
        if destination_info and promote_to_primary:
            raise invalid("promoteToPrimary copies to a new image set: omit destinationImageSet")
        with self.db.transaction(write=True) as conn:
            now = self.db.now()
            source = self.db.image_set(conn, datastore_id, source_id)
            self.db.writable(source, now)
            self.db.check_latest(source, source_info["latestVersionId"])
            selected = select_copiable(
                self.db.document(conn, source_id, source["latest_version"]),
                (source_info.get("DICOMCopies") or {}).get("copiableAttributes"),
            )
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
            conn.execute(
                "UPDATE versions SET status = 'COPIED', updated_at = ? WHERE image_set_id = ? AND version = ?",
                (now, source_id, source["latest_version"]),
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
        return {
            "datastoreId": datastore_id,
            "imageSetId": image_set_id,
            "imageSetState": "LOCKED",
            "imageSetWorkflowStatus": "DELETING",
        }
