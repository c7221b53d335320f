"""Builders of the check tests (fixtures in ``conftest.py``): a small clean "site export" built from the
reference CT, and one planting function per defect that ``curation.check`` must find (issue 18; design D16).

The site: patient ``P1`` (DOE^JANE) with three CT studies of one image set each, and patient ``P2`` (ROE^RICHARD)
with one study held by two image sets (two series). Every series is 5 consecutive slices of the reference
``ct-588`` (InstanceNumber 2..6, 1 mm apart), with fresh deterministic UIDs, so the clean site gives no finding.
Each ``plant_*`` function edits the documents (copies made by ``site_documents``) and returns what it planted.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from curation.frames.snapshot import Snapshot

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
DATASTORE = "d" * 32
Document = dict[str, Any]


@cache
def _reference_ct() -> Document:
    document: Document = json.loads((REFERENCE / "ct-588-instances.json").read_text())
    return document


def _uid(*parts: int) -> str:
    return "2.25.99." + ".".join(str(p) for p in parts)


def image_set_id(number: int) -> str:
    """The ImageSetID of the site's image set ``number`` (32 hex digits)."""
    return f"{number:032x}"


def _ct_document(number: int, patient: tuple[str, str], study: int, series: int) -> Document:
    """Image set ``number``: 5 slices of the reference CT under new UIDs, for ``patient`` (id, name)."""
    source = _reference_ct()
    ((series_uid, series_node),) = source["Study"]["Series"].items()
    instances = sorted(series_node["Instances"].values(), key=lambda node: int(node["DICOM"]["InstanceNumber"]))[1:6]
    new_series = _uid(study, series)
    document: Document = {
        "SchemaVersion": source["SchemaVersion"],
        "DatastoreID": DATASTORE,
        "ImageSetID": image_set_id(number),
        "Patient": {
            "DICOM": {**copy.deepcopy(source["Patient"]["DICOM"]), "PatientID": patient[0], "PatientName": patient[1]}
        },
        "Study": {
            "DICOM": {
                **copy.deepcopy(source["Study"]["DICOM"]),
                "StudyInstanceUID": _uid(study),
                "AccessionNumber": f"ACC{study:04d}",
            },
            "Series": {},
        },
    }
    node = copy.deepcopy({k: v for k, v in series_node.items() if k != "Instances"})
    node["DICOM"]["SeriesInstanceUID"] = new_series
    node["DICOM"]["SeriesNumber"] = str(series)
    node["Instances"] = {}
    for position, instance in enumerate(instances, start=1):
        copied = copy.deepcopy(instance)
        sop = _uid(study, series, position)
        copied["DICOM"]["MediaStorageSOPInstanceUID"] = sop
        copied["DICOM"]["SOPInstanceUID"] = sop
        node["Instances"][sop] = copied
    document["Study"]["Series"][new_series] = node
    assert series_uid
    return document


def site_documents() -> list[Document]:
    """The clean site (module docstring): five image sets, fresh copies on each call."""
    jane, richard = ("P1", "DOE^JANE"), ("P2", "ROE^RICHARD")
    return [
        _ct_document(1, jane, study=1, series=1),
        _ct_document(2, jane, study=2, series=1),
        _ct_document(3, jane, study=3, series=1),
        _ct_document(4, richard, study=4, series=1),
        _ct_document(5, richard, study=4, series=2),
    ]


def snapshot_of(documents: list[Document], primary: dict[str, bool] | None = None) -> Snapshot:
    """A Snapshot of ``documents`` (no service); ``primary`` flags per ImageSetID (default: all primary)."""
    snapshot = Snapshot.from_documents(
        documents, datastore_id=DATASTORE, version_ids={d["ImageSetID"]: "1" for d in documents}
    )
    snapshot.primary = {d["ImageSetID"]: True for d in documents} | (primary or {})
    return snapshot


def series_of(document: Document) -> Document:
    """The one series node of a site document."""
    (node,) = document["Study"]["Series"].values()
    result: Document = node
    return result


def instances_of(document: Document) -> list[Document]:
    """The instance nodes of a site document, in InstanceNumber order."""
    return sorted(series_of(document)["Instances"].values(), key=lambda n: int(n["DICOM"]["InstanceNumber"]))


# ---- one planting function per defect: (documents) -> primary flags to set (or None) ----------------------------


def plant_patient_conflict(documents: list[Document]) -> None:
    """PatientName DOE^JANE x2 vs DOE^JAME x1 for patient P1."""
    documents[2]["Patient"]["DICOM"]["PatientName"] = "DOE^JAME"


def plant_study_conflict(documents: list[Document]) -> None:
    """StudyDate 20230417 vs 20230418 across the two image sets of P2's study (a tie)."""
    documents[4]["Study"]["DICOM"]["StudyDate"] = "20230418"


def plant_study_under_several_patients(documents: list[Document]) -> None:
    """P2's study: one of its two image sets says PatientID B."""
    documents[4]["Patient"]["DICOM"]["PatientID"] = "B"


def plant_duplicate_sop_instance(documents: list[Document]) -> None:
    """The third instance of image set 2 takes the SOPInstanceUID of image set 1's first (another slice: different
    content)."""
    target = instances_of(documents[0])[0]["DICOM"]["SOPInstanceUID"]
    node = series_of(documents[1])["Instances"]
    old = instances_of(documents[1])[2]["DICOM"]["SOPInstanceUID"]
    moved = node.pop(old)
    moved["DICOM"]["SOPInstanceUID"] = target
    moved["DICOM"]["MediaStorageSOPInstanceUID"] = target
    node[target] = moved


def plant_non_primary_duplicate(documents: list[Document]) -> dict[str, bool]:
    """A non-primary copy of image set 1 (image set 6): every instance and checksum the same."""
    copied = copy.deepcopy(documents[0])
    copied["ImageSetID"] = image_set_id(6)
    documents.append(copied)
    return {image_set_id(6): False}


def plant_invalid_values(documents: list[Document]) -> None:
    """StudyDate 2023-04-17, PatientName with 6 components, SpecificCharacterSet ISO-IR 100 (one instance), and
    the DS padding negative control: SliceThickness '1 ' in every instance of image set 3 (valid, no finding)."""
    documents[0]["Study"]["DICOM"]["StudyDate"] = "2023-04-17"
    documents[3]["Patient"]["DICOM"]["PatientName"] = "a^b^c^d^e^f"
    documents[4]["Patient"]["DICOM"]["PatientName"] = "a^b^c^d^e^f"
    instances_of(documents[1])[2]["DICOM"]["SpecificCharacterSet"] = ["ISO-IR 100"]
    for node in instances_of(documents[2]):
        node["DICOM"]["SliceThickness"] = "1 "


def plant_missing_in_series(documents: list[Document]) -> None:
    """SliceThickness removed from 1 of the 5 instances of image set 1."""
    del instances_of(documents[0])[2]["DICOM"]["SliceThickness"]


def plant_empty_in_series(documents: list[Document]) -> None:
    """SliceThickness present-empty (null) in 1 of the 5 instances of image set 1."""
    instances_of(documents[0])[3]["DICOM"]["SliceThickness"] = None


def plant_slice_gap(documents: list[Document]) -> None:
    """The middle slice of image set 1 removed (positions 0, 1, 3, 4 mm)."""
    middle = instances_of(documents[0])[2]["DICOM"]["SOPInstanceUID"]
    del series_of(documents[0])["Instances"][middle]


def plant_slice_duplicate(documents: list[Document]) -> None:
    """A sixth instance in image set 1 at the position (and InstanceNumber) of its third slice."""
    third = instances_of(documents[0])[2]
    extra = copy.deepcopy(third)
    sop = _uid(1, 1, 99)
    extra["DICOM"]["SOPInstanceUID"] = sop
    extra["DICOM"]["MediaStorageSOPInstanceUID"] = sop
    series_of(documents[0])["Instances"][sop] = extra


def plant_instance_number(documents: list[Document]) -> None:
    """InstanceNumbers of the second and fourth slices of image set 1 swapped."""
    slices = instances_of(documents[0])
    second, fourth = slices[1]["DICOM"], slices[3]["DICOM"]
    second["InstanceNumber"], fourth["InstanceNumber"] = fourth["InstanceNumber"], second["InstanceNumber"]


PLANTERS: dict[str, Callable[[list[Document]], dict[str, bool] | None]] = {
    "patient_conflict": plant_patient_conflict,
    "study_conflict": plant_study_conflict,
    "study_under_several_patients": plant_study_under_several_patients,
    "duplicate_sop_instance": plant_duplicate_sop_instance,
    "non_primary_duplicate": plant_non_primary_duplicate,
    "invalid_value": plant_invalid_values,
    "missing_in_series": plant_missing_in_series,
    "empty_in_series": plant_empty_in_series,
    "slice_gap": plant_slice_gap,
    "slice_duplicate": plant_slice_duplicate,
    "instance_number": plant_instance_number,
}


def planted(name: str) -> Snapshot:
    """A snapshot of the site with the defect ``name`` planted."""
    documents = site_documents()
    flags = PLANTERS[name](documents)
    return snapshot_of(documents, flags or None)
