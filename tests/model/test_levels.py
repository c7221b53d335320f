"""AHI's normalization levels (curation.model.levels) against the lists and the real reference documents."""

from __future__ import annotations

import glob
import json
import os

import pytest
from pydicom.datadict import dictionary_keyword, tag_for_keyword

from curation.model.levels import PATIENT_KEYWORDS, SERIES_KEYWORDS, STUDY_KEYWORDS, level_of

REFERENCE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "reference")


def _reference_documents() -> list[str]:
    paths = sorted(glob.glob(os.path.join(REFERENCE, "*.json")))
    assert paths, "reference documents missing"
    return paths


@pytest.mark.parametrize("path", _reference_documents(), ids=os.path.basename)
def test_reference_documents_agree_with_level_of(path: str) -> None:
    with open(path, "rb") as handle:
        document = json.load(handle)
    nodes = [("Patient", document["Patient"]["DICOM"]), ("Study", document["Study"]["DICOM"])]
    for series in document["Study"]["Series"].values():
        nodes.append(("Series", series["DICOM"]))
        nodes.extend(("Instance", instance["DICOM"]) for instance in series["Instances"].values())
    misplaced = [(key, level, level_of(key)) for level, node in nodes for key in node if level_of(key) != level]
    assert misplaced == []


def test_lists_are_disjoint_keywords_from_the_dictionary() -> None:
    assert not PATIENT_KEYWORDS & STUDY_KEYWORDS
    assert not STUDY_KEYWORDS & SERIES_KEYWORDS
    assert not PATIENT_KEYWORDS & SERIES_KEYWORDS
    for keyword in PATIENT_KEYWORDS | STUDY_KEYWORDS | SERIES_KEYWORDS:
        assert tag_for_keyword(keyword) is not None, keyword
    assert (len(PATIENT_KEYWORDS), len(STUDY_KEYWORDS), len(SERIES_KEYWORDS)) == (46, 50, 44)


@pytest.mark.parametrize(
    ("key", "level"),
    [
        ("PatientName", "Patient"),
        ("PatientID", "Patient"),
        ("IssuerOfPatientID", "Patient"),
        ("PatientIdentityRemoved", "Patient"),
        ("DeidentificationMethodCodeSequence", "Patient"),
        ("ClinicalTrialSubjectID", "Patient"),
        ("GroupOfPatientsIdentificationSequence", "Patient"),
        ("StudyInstanceUID", "Study"),
        ("AccessionNumber", "Study"),
        ("PatientAge", "Study"),
        ("PatientWeight", "Study"),
        ("ClinicalTrialTimePointID", "Study"),
        ("SeriesInstanceUID", "Series"),
        ("BodyPartExamined", "Series"),
        ("PatientPosition", "Series"),
        ("Manufacturer", "Series"),
        ("StationName", "Series"),
        ("PixelPaddingValue", "Series"),
        ("FrameOfReferenceUID", "Series"),
        ("ClinicalTrialSeriesID", "Series"),
        ("TreatmentSessionUID", "Series"),
        ("SOPInstanceUID", "Instance"),
        ("StudyComments", "Instance"),
        ("Rows", "Instance"),
        ("TransferSyntaxUID", "Instance"),
        ("FileMetaInformationGroupLength", "Instance"),
        ("00020010", "Instance"),
        ("7FDF1001", "Instance"),
        ("00091001", "Instance"),
        ("NotAKeyword", "Instance"),
        ("", "Instance"),
    ],
)
def test_level_of_keywords_and_tags(key: str, level: str) -> None:
    assert level_of(key) == level


@pytest.mark.parametrize("keyword", sorted(PATIENT_KEYWORDS | STUDY_KEYWORDS | SERIES_KEYWORDS)[::7])
def test_hex_tag_has_the_level_of_its_keyword(keyword: str) -> None:
    tag = f"{tag_for_keyword(keyword):08X}"
    assert dictionary_keyword(int(tag, 16)) == keyword
    assert level_of(tag) == level_of(keyword) == level_of(tag.lower())
