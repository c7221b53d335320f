"""What SearchImageSets filters, sorts and summarizes on, computed from an image set's document.

AHI's search summaries carry ``DICOMTags`` read from the Patient and Study levels and from the first series
(API reference, ``ImageSetsMetadataSummary`` / ``DICOMTags``); the store keeps them in columns of its own so a
search is one indexed query, never a scan of documents.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import orjson

from curation.model.document import iter_instances

_LEVEL_TAGS = (
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
)
_SERIES_TAGS = (("DICOMSeriesModality", "Modality"), ("DICOMSeriesBodyPart", "BodyPartExamined"))


@dataclass(frozen=True)
class IndexEntry:
    """The searchable columns of one image set, its series UIDs and the frame IDs its document references."""

    patient_id: str | None
    accession_number: str | None
    study_id: str | None
    study_uid: str | None
    study_datetime: str | None
    tags: bytes
    series: list[str] = field(default_factory=list)
    frames: set[str] = field(default_factory=set)


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


def _series_tags(series: list[tuple[str, Any]], tags: dict[str, Any]) -> None:
    series_uid, node = series[0]
    attributes = node.get("DICOM", {}) if isinstance(node, dict) else {}
    tags["DICOMSeriesInstanceUID"] = series_uid
    for name, key in _SERIES_TAGS:
        value = _text(attributes.get(key))
        if value is not None:
            tags[name] = value
    with suppress(ValueError):
        tags["DICOMSeriesNumber"] = int(str(attributes.get("SeriesNumber")).strip())


def index_document(document: dict[str, Any]) -> IndexEntry:
    """The :class:`IndexEntry` of a document."""
    series = list(document.get("Study", {}).get("Series", {}).items())
    tags: dict[str, Any] = {}
    for name, key in _LEVEL_TAGS:
        value = _text(_dicom_value(document, key))
        if value is not None:
            tags[name] = value
    tags["DICOMNumberOfStudyRelatedSeries"] = len(series)
    tags["DICOMNumberOfStudyRelatedInstances"] = sum(1 for _ in iter_instances(document))
    if series:
        _series_tags(series, tags)
    frames = {
        frame["ID"]
        for _, _, instance in iter_instances(document)
        for frame in instance.get("ImageFrames") or []
        if isinstance(frame, dict) and isinstance(frame.get("ID"), str)
    }
    return IndexEntry(
        patient_id=tags.get("DICOMPatientId"),
        accession_number=tags.get("DICOMAccessionNumber"),
        study_id=tags.get("DICOMStudyId"),
        study_uid=tags.get("DICOMStudyInstanceUID"),
        study_datetime=study_datetime_key(tags.get("DICOMStudyDate"), tags.get("DICOMStudyTime")),
        tags=orjson.dumps(tags),
        series=[uid for uid, _ in series],
        frames=frames,
    )
