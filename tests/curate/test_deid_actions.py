"""``deidentify`` on planted attributes: each action code as a frame edit, pseudonyms, date shift per patient,
private tags, the marker and idempotence rules, what ``diff`` and ``plan`` make of the output.

The documents are copies of the one-instance CT reference document with planted identifying attributes: two
image sets of patient PAT-1 (DOE^JANE, one study) and one of PAT-2, all non-primary (so ``plan`` takes
Patient/Series-level edits without the copy-and-promote procedure)."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import curation
from curation.curate.confidentiality import DeidOption
from curation.curate.deidentification import Deidentification, PHIWarning, deidentify, shift_date
from curation.curate.pseudonyms import Pseudonyms
from curation.frames.cells import FrozenDict, is_remove
from curation.frames.snapshot import Snapshot
from curation.model.missing import NULL

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
SECRET = "another test secret, thirty-two bytes or more"
KEYS = Pseudonyms(SECRET)


def _document(
    image_set: str, patient: str, name: str, study: str, series: str, sop: str, description: str
) -> dict[str, Any]:
    doc = json.loads((REFERENCE / "ct-2025-htj2k-1-instance.json").read_text())
    doc["ImageSetID"] = image_set
    doc["Patient"]["DICOM"] = {
        "PatientName": name,
        "PatientID": patient,
        "PatientBirthDate": "19700215",
        "PatientSex": "F",
        "OtherPatientIDs": "MRN-7",
        "PatientComments": "x",
    }
    doc["Study"]["DICOM"].update(
        {
            "StudyInstanceUID": study,
            "StudyDate": "20230417",
            "AccessionNumber": "ACC9",
            "StudyDescription": "CT chest",
            "PatientAge": "053Y",
        }
    )
    old_series = next(iter(doc["Study"]["Series"]))
    node = doc["Study"]["Series"].pop(old_series)
    node["DICOM"].update({"SeriesInstanceUID": series, "SeriesDescription": description, "OperatorsName": "TECH^TOM"})
    old_sop = next(iter(node["Instances"]))
    instance = node["Instances"].pop(old_sop)
    dicom = instance["DICOM"]
    dicom.update(
        {
            "SOPInstanceUID": sop,
            "TimezoneOffsetFromUTC": "-0500",
            "MediaStorageSOPInstanceUID": sop,
            "AcquisitionDateTime": "20230417101500.5+0100",
            "ContentDate": "1997.04.24",
            "ClinicalTrialSubjectID": "S-1",
            "00190010": "SIEMENS MR HEADER",
            "0019100C": "1000",
            "0019100D": "secret",
            "00291010": "x",
        }
    )
    instance["DICOMVRs"] = {"00190010": "LO", "0019100C": "IS", "0019100D": "LO", "00291010": "LO"}
    node["Instances"] = {sop: instance}
    doc["Study"]["Series"] = {series: node}
    return doc


def planted() -> Snapshot:
    docs = [
        _document("a" * 32, "PAT-1", "DOE^JANE", "1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.1", "Jane Doe chest"),
        _document("b" * 32, "PAT-1", "DOE^JANE", "1.2.3.1", "1.2.3.1.2", "1.2.3.1.2.1", "Axial 1mm"),
        _document("c" * 32, "PAT-2", "ROE^RICHARD", "1.2.3.2", "1.2.3.2.1", "1.2.3.2.1.1", "Axial 1mm"),
    ]
    snapshot = Snapshot.from_documents(docs, datastore_id="0" * 32, version_ids={d["ImageSetID"]: "1" for d in docs})
    snapshot.primary = {d["ImageSetID"]: False for d in docs}
    return snapshot


@pytest.fixture(scope="module")
def snap() -> Snapshot:
    return planted()


@pytest.fixture(scope="module")
def basic(snap: Snapshot) -> Deidentification:
    return deidentify(snap, secret=SECRET)


def cell(result: Deidentification, frame: str, row: Any, column: str) -> Any:
    return result.frames[frame].loc[row, column]


def test_each_action_code_as_a_frame_edit(snap: Snapshot, basic: Deidentification) -> None:
    a = "a" * 32
    # Z: present-empty, except the identifiers that must stay joinable (pseudonyms)
    assert cell(basic, "studies", a, "PatientBirthDate") == "" and cell(basic, "studies", a, "StudyDate") == ""
    subject = KEYS.pseudonym("PatientID", "PAT-1")
    assert cell(basic, "studies", a, "PatientID") == subject == cell(basic, "studies", a, "PatientName")
    assert cell(basic, "studies", a, "AccessionNumber") == KEYS.pseudonym("AccessionNumber", "ACC9")
    # X: REMOVE (never NaN: a missing cell would mean "unchanged" over a present-empty value)
    for column in ("OtherPatientIDs", "PatientAge", "StudyDescription", "PatientComments"):
        assert is_remove(cell(basic, "studies", a, column)), column
    series = (a, "1.2.3.1.1")
    assert is_remove(cell(basic, "series", series, "SeriesDescription"))
    assert is_remove(cell(basic, "series", series, "OperatorsName"))
    # U: the index UIDs as columns of their name (NOTES rule 5), the others in their cells
    assert cell(basic, "studies", a, "StudyInstanceUID") == KEYS.uid("1.2.3.1")
    assert cell(basic, "series", series, "SeriesInstanceUID") == KEYS.uid("1.2.3.1.1")
    row = (a, "1.2.3.1.1", "1.2.3.1.1.1")
    assert cell(basic, "instances", row, "SOPInstanceUID") == KEYS.uid("1.2.3.1.1.1")
    assert cell(basic, "instances", row, "MediaStorageSOPInstanceUID") == KEYS.uid("1.2.3.1.1.1")
    # D: the VR's dummy
    assert cell(basic, "instances", row, "ClinicalTrialSubjectID") == "ANONYMOUS"
    # X/Z/U* kept with new UIDs inside the items; a K sequence recursed (StationName X removed inside)
    source = cell(basic, "instances", row, "SourceImageSequence")
    assert isinstance(source, tuple) and isinstance(source[0], FrozenDict)
    old_ref = snap.instances.loc[row, "SourceImageSequence"][0]["ReferencedSOPInstanceUID"]
    assert source[0]["ReferencedSOPInstanceUID"] == KEYS.uid(old_ref)
    assert source[0]["ReferencedSOPClassUID"] == "1.2.840.10008.5.1.4.1.1.2"  # not in the table: kept
    equipment = cell(basic, "instances", row, "ContributingEquipmentSequence")[0]
    assert "StationName" not in equipment and equipment["Manufacturer"] == "PixelMed"
    # K: untouched and not in the frames
    assert "Modality" not in basic.frames["series"].columns
    assert "LongitudinalTemporalInformationModified" not in basic.frames["instances"].columns
    assert "SOPClassUID" not in basic.frames["instances"].columns
    # the marker
    assert cell(basic, "studies", a, "PatientIdentityRemoved") == "YES"
    methods = cell(basic, "studies", a, "DeidentificationMethod").split("\\")
    assert methods[:3] == [
        "ahi-curation deidentify 1",
        "PS3.15 2026d Table E.1-1",
        f"secret fingerprint {KEYS.fingerprint}",
    ]
    codes = cell(basic, "studies", a, "DeidentificationMethodCodeSequence")
    assert [c["CodeValue"] for c in codes] == ["113100"]


def test_actions_and_mapping_tables(basic: Deidentification) -> None:
    actions = basic.actions.set_index(["level", "path"])
    assert actions.loc[("Patient", "PatientID"), "code"] == "Z/D"
    assert actions.loc[("Patient", "PatientID"), "applied"] == "Z"
    assert actions.loc[("Patient", "PatientID"), "image_sets"] == 3
    assert actions.loc[("Instance", "SourceImageSequence"), "rule"] == "compound X/Z/U* -> U"
    assert actions.loc[("Instance", "0019100C"), "applied"] == "X"
    assert ("Instance", "ContributingEquipmentSequence>StationName") in actions.index
    mapping = basic.mapping
    assert "PHI" in repr(mapping) and "PHI" in (mapping._repr_html_() or "")
    assert "PHI" in repr(mapping.head(2))  # a slice is still marked
    with pytest.warns(PHIWarning, match="holds PHI"):
        mapping.to_csv(io.StringIO())
    uids = mapping[mapping["kind"] == "UID"]
    assert dict(zip(uids["old"], uids["new"], strict=True))["1.2.3.1"] == KEYS.uid("1.2.3.1")
    study = uids[uids["old"] == "1.2.3.1"].iloc[0]
    assert study["image_sets"] == ("a" * 32, "b" * 32)  # one study in two image sets: one new UID
    shifts = mapping[mapping["kind"] == "date shift (days)"].set_index("old")["new"]
    assert shifts["PAT-1"] == str(KEYS.day_shift("PAT-1\x00"))


def test_the_frames_make_a_plannable_changeset(snap: Snapshot, basic: Deidentification) -> None:
    before = {name: getattr(snap, name) for name in ("studies", "series", "instances")}
    changes = curation.diff(snap, basic.frames)
    assert changes.ok, changes.problems.to_dict("records")
    table = changes.changes
    removed = set(table.loc[table["op"] == "remove", "attribute"])
    assert {"OtherPatientIDs", "PatientAge", "SeriesDescription", "0019100C", "00190010", "00291010"} <= removed
    updated = table[table["op"] == "update"].set_index(["ImageSetID", "attribute"])["new"]
    assert updated[("c" * 32, "SOPInstanceUID")] == KEYS.uid("1.2.3.2.1.1")
    assert updated[("c" * 32, "PatientBirthDate")] is NULL or updated[("c" * 32, "PatientBirthDate")] is None
    plan = curation.plan(changes)
    assert len(plan.requests) >= 3 and all(r.force for r in plan.requests)
    for name, frame in before.items():  # nothing the user holds was modified
        pd.testing.assert_frame_equal(getattr(snap, name), frame)


def test_modified_dates_shift_per_patient(snap: Snapshot) -> None:
    result = deidentify(snap, secret=SECRET, options=["retain_longitudinal_modified_dates"])
    days = {pid: KEYS.day_shift(f"{pid}\x00") for pid in ("PAT-1", "PAT-2")}
    studies = result.frames["studies"]
    for image_set, pid in (("a" * 32, "PAT-1"), ("b" * 32, "PAT-1"), ("c" * 32, "PAT-2")):
        assert studies.loc[image_set, "StudyDate"] == shift_date("20230417", days[pid])
    assert studies.loc["a" * 32, "StudyDate"] == studies.loc["b" * 32, "StudyDate"]  # one offset per patient
    assert studies.loc["a" * 32, "PatientBirthDate"] == ""  # not listed under Modified Dates: Z
    row = ("a" * 32, "1.2.3.1.1", "1.2.3.1.1.1")
    instances = result.frames["instances"]
    assert instances.loc[row, "AcquisitionDateTime"] == shift_date("20230417", days["PAT-1"]) + "101500.5+0100"
    assert instances.loc[row, "ContentDate"] == ""  # "1997.04.24" does not parse: emptied, never kept
    assert result.review.set_index(["attribute", "value"]).loc[("ContentDate", "1997.04.24"), "cleaned"] == ""
    assert "AcquisitionTime" not in instances.columns  # TM: a whole-day shift keeps it
    assert is_remove(instances.loc[row, "TimezoneOffsetFromUTC"])  # C of Modified Dates on SH: no shift, removed
    assert set(instances["LongitudinalTemporalInformationModified"]) == {"MODIFIED"}  # PS3.15 E.3.6
    assert shift_date("20240301", -1) == "20240229" and shift_date("2024", -1) is None
    codes = [c["CodeValue"] for c in studies.loc["a" * 32, "DeidentificationMethodCodeSequence"]]
    assert codes == ["113100", "113107"]
    changes = curation.diff(snap, result.frames)
    assert changes.ok, changes.problems.to_dict("records")
    added = changes.changes[changes.changes["attribute"] == "LongitudinalTemporalInformationModified"]
    assert set(added["op"]) == {"add"} and len(added) == 3


def test_clean_descriptors_empties_text_naming_the_patient(snap: Snapshot) -> None:
    result = deidentify(snap, secret=SECRET, options=["clean_descriptors"])
    series = result.frames["series"]
    assert series.loc[("a" * 32, "1.2.3.1.1"), "SeriesDescription"] == ""  # "Jane Doe chest"
    assert (
        "SeriesDescription" not in series.columns
        or series.loc[("b" * 32, "1.2.3.1.2"), "SeriesDescription"] == "Axial 1mm"
    )
    review = result.review.set_index("value")
    assert not review.loc["Jane Doe chest", "kept"] and review.loc["Axial 1mm", "count"] == 2
    custom = deidentify(snap, secret=SECRET, options=["clean_descriptors"], cleaner=lambda v, c: v.upper())
    assert custom.frames["series"].loc[("b" * 32, "1.2.3.1.2"), "SeriesDescription"] == "AXIAL 1MM"


def test_private_tags_removed_unless_listed_safe(snap: Snapshot) -> None:
    with pytest.raises(ValueError, match="safe_private"):
        deidentify(snap, secret=SECRET, options=["retain_safe_private"])
    safe = pd.DataFrame({"creator": ["SIEMENS MR HEADER"], "tag": ["0019xx0C"], "vr": ["IS"]})
    result = deidentify(snap, secret=SECRET, options=["retain_safe_private"], safe_private=safe)
    instances = result.frames["instances"]
    assert "0019100C" not in instances.columns and "00190010" not in instances.columns  # kept: no edit
    assert instances["0019100D"].map(is_remove).all() and instances["00291010"].map(is_remove).all()


def test_a_lookup_table_names_the_subjects(snap: Snapshot) -> None:
    result = deidentify(snap, secret=SECRET, pseudonyms={"PAT-1": "SUBJ-001"})
    studies = result.frames["studies"]
    assert studies.loc["a" * 32, "PatientID"] == "SUBJ-001" == studies.loc["b" * 32, "PatientName"]
    assert studies.loc["c" * 32, "PatientID"] == KEYS.pseudonym("PatientID", "PAT-2")


def _applied(snap: Snapshot, result: Deidentification) -> Snapshot:
    """The documents after the result's edits, as the planner's document simulation computes them."""
    changes = curation.diff(snap, result.frames)
    plan = curation.plan(changes)
    documents = {i: snap.document(i) for i in snap.image_set_ids}
    for request in plan.requests:
        documents[request.image_set_id] = curation.apply_to_document(
            documents[request.image_set_id], request.params, is_primary=False
        )
    after = Snapshot.from_documents(documents.values(), datastore_id=snap.datastore_id)
    after.primary = dict(snap.primary)
    return after


def test_idempotent_marker_and_verify(snap: Snapshot, basic: Deidentification) -> None:
    after = _applied(snap, basic)
    assert basic.verify(after).empty
    again = deidentify(after, secret=SECRET)
    assert again.frames == {} and len(again.skipped) == 3
    assert len(curation.diff(after, again.frames)) == 0
    with pytest.raises(ValueError, match="another edition, secret or options"):
        deidentify(after, secret=SECRET + "!")
    with pytest.raises(ValueError, match="another edition, secret or options"):
        deidentify(after, secret=SECRET, options=["retain_uids"])
    redone = deidentify(after, secret=SECRET + "!", redo=True)
    methods = redone.frames["studies"]["DeidentificationMethod"].iloc[0].split("\\")
    assert methods.count("ahi-curation deidentify 1") == 1  # the earlier marker replaced, not stacked
    assert f"secret fingerprint {Pseudonyms(SECRET + '!').fingerprint}" in methods


def test_verify_finds_planted_leftovers(snap: Snapshot, basic: Deidentification) -> None:
    after = _applied(snap, basic)
    documents = [copy.deepcopy(d) for d in after.documents.values()]
    target = documents[0]
    target["Patient"]["DICOM"]["OtherPatientIDs"] = "MRN-7"  # X, back
    series = next(iter(target["Study"]["Series"].values()))
    instance = next(iter(series["Instances"].values()))
    instance["DICOM"]["00291010"] = "x"  # a private tag
    instance["DICOM"]["ImageComments"] = "scan of doe jane"  # a leak into text (X too)
    instance["DICOM"]["FrameOfReferenceUID"] = "1.2.3.1.1.1"  # an old UID
    target["Study"]["DICOM"]["AccessionNumber"] = "ACC9"  # Z: the old value
    planted_after = Snapshot.from_documents(documents, datastore_id=snap.datastore_id)
    findings = basic.verify(planted_after)
    found = set(zip(findings["ImageSetID"], findings["path"], findings["detail"], strict=True))
    image_set = target["ImageSetID"]
    assert found == {
        (image_set, "OtherPatientIDs", "the profile removes it (X) but it is present"),
        (image_set, "00291010", "the profile removes it (X) but it is present"),
        (image_set, "ImageComments", "the profile removes it (X) but it is present"),
        (image_set, "FrameOfReferenceUID", "an old UID remains"),
        (image_set, "AccessionNumber", "action Z but the old value is kept"),
    }


def test_profile_and_secret_are_checked(snap: Snapshot) -> None:
    with pytest.raises(ValueError, match="one profile"):
        deidentify(snap, secret=SECRET, profile="strict")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        deidentify(snap, secret="x")
    with pytest.raises(ValueError, match="edition '2024b' was asked for"):
        deidentify(snap, secret=SECRET, edition="2024b")
    one = deidentify(snap, secret=SECRET, options="clean_descriptors", edition="2026d")  # one option as a string
    assert one.options == (DeidOption.CLEAN_DESCRIPTORS,)


def test_compound_remove_drops_reference_sequences(snap: Snapshot) -> None:
    result = deidentify(snap, secret=SECRET, compound="remove")
    assert result.frames["instances"]["SourceImageSequence"].map(is_remove).all()
    rule = result.actions.set_index("path").loc["SourceImageSequence", "rule"]
    assert rule == "compound X/Z/U* -> X"
