"""``curation.check`` and ``curation.fix``: no finding on clean data, each planted defect found exactly, and a
fix reviewed and applied like any other edit (issue 18; design D13-D16). Fixtures: ``tests/curate/conftest.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from check_sites import PLANTERS, image_set_id, instances_of, planted, site_documents, snapshot_of

import curation
import curation.local
from curation.curate.checks.checking import CHECKS
from curation.curate.checks.findings import COLUMNS
from curation.demo import demo_files
from curation.frames.snapshot import Snapshot
from curation.local.store import Store

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
CT = "c5fdaa101da9f693f795f433d503049d"
US = "1e29a254a6ff080f17e9c318c7cb45af"


def summary(findings: pd.DataFrame) -> set[tuple[Any, ...]]:
    """(check, attribute, found, fix, suggested) of every finding."""
    return {
        (r.check, r.attribute, r.found, r.fix, r.suggested)
        for r in findings[["check", "attribute", "found", "fix", "suggested"]].itertuples(index=False)
    }


def test_the_clean_site_gives_no_finding(clean_site: Snapshot) -> None:
    findings = curation.check(clean_site)
    assert list(findings.columns) == list(COLUMNS) and findings.index.name == "finding"
    assert findings.empty


def test_the_reference_documents_give_only_the_reviewed_genuine_findings() -> None:
    """Reviewed by hand: the US export spells SpecificCharacterSet 'ISO-IR 100' (the defined term is
    'ISO_IR 100', PS3.3 C.12.1.1.2) in its 9 instances; slice 1 of the 588-slice CT lacks the VOI window
    (WindowCenter/WindowWidth) that the other 587 carry. The US series mixes 8 still images and a cine loop, whose
    multi-frame attributes are not gaps (no finding)."""
    documents = [json.loads(p.read_text()) for p in sorted(REFERENCE.glob("*.json"))]
    snapshot = Snapshot.from_documents(
        documents, datastore_id="0" * 32, version_ids={d["ImageSetID"]: "1" for d in documents}
    )
    findings = curation.check(snapshot)
    got = {(r.check, r.attribute, r.image_sets, len(r.rows), r.fix) for r in findings.itertuples()}
    assert got == {
        ("invalid_value", "SpecificCharacterSet", (US,), 9, "reformat"),
        ("missing_in_series", "WindowCenter", (CT,), 1, None),
        ("missing_in_series", "WindowWidth", (CT,), 1, None),
    }
    assert findings.loc[findings["attribute"] == "SpecificCharacterSet", "suggested"].tolist() == ["ISO_IR 100"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Snapshot]:
    store = Store(tmp_path_factory.mktemp("demo"))
    report = store.import_paths(demo_files())
    client = curation.local.client(store)
    return client, curation.fetch(client, report.datastore_id, progress=False)


def test_the_demo_data_gives_only_the_reviewed_genuine_finding(demo: tuple[Any, Snapshot]) -> None:
    """Reviewed by hand: pydicom's rtdose_1frame.dcm references an RT plan by the UID
    1.2.123.456.78.9.0123.4567.89012345678901, whose component '0123' has a leading zero (PS3.5 9.1)."""
    findings = curation.check(demo[1])
    assert [(r.check, r.attribute, r.fix) for r in findings.itertuples()] == [
        ("invalid_value", "ReferencedRTPlanSequence", None)
    ]
    assert "1.2.123.456.78.9.0123.4567.89012345678901" in findings["detail"].iloc[0]


P1 = (image_set_id(1), image_set_id(2), image_set_id(3))
EXPECTED: dict[str, set[tuple[Any, ...]]] = {
    "patient_conflict": {
        ("patient_conflict", "PatientName", (("DOE^JANE", 2), ("DOE^JAME", 1)), "majority", "DOE^JANE")
    },
    "study_conflict": {("study_conflict", "StudyDate", (("20230417", 1), ("20230418", 1)), "lookup", None)},
    "study_under_several_patients": {
        ("study_under_several_patients", "PatientID", (("B", 1), ("P2", 1)), "lookup", None)
    },
    "invalid_value": {
        ("invalid_value", "StudyDate", (("2023-04-17", 1),), "reformat", "20230417"),
        ("invalid_value", "SpecificCharacterSet", (("ISO-IR 100", 1),), "reformat", "ISO_IR 100"),
        ("invalid_value", "PatientName", (("a^b^c^d^e^f", 2),), None, None),
    },
    "missing_in_series": {("missing_in_series", "SliceThickness", (("1", 4), (None, 1)), "fill", "1")},
    "empty_in_series": {("empty_in_series", "SliceThickness", (("1", 4), ("", 1)), "fill", "1")},
    "slice_gap": {("slice_geometry", "ImagePositionPatient", ((2.0, 1),), None, None)},
    "slice_duplicate": {("slice_geometry", "ImagePositionPatient", ((-11.5, 2),), None, None)},
    "instance_number": {("instance_number", "InstanceNumber", ((3, 1), (4, 1)), "renumber", ("2", "3", "4", "5", "6"))},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_planted_defect_gives_exactly_its_finding(name: str) -> None:
    assert summary(curation.check(planted(name))) == EXPECTED[name]


def test_a_sop_instance_uid_in_two_image_sets_with_different_content() -> None:
    findings = curation.check(planted("duplicate_sop_instance"))
    assert findings["check"].tolist() == ["duplicate_sop_instance"]
    finding = findings.iloc[0]
    assert finding["image_sets"] == P1[:2] and len(finding["found"]) == 2  # two different content digests
    assert "different contents" in finding["detail"]


def test_a_non_primary_copy_of_primary_content_is_a_leftover_to_delete_not_a_duplicate_uid() -> None:
    findings = curation.check(planted("non_primary_duplicate"))
    assert findings["check"].tolist() == ["non_primary_duplicate"]
    finding = findings.iloc[0]
    assert finding["suggested"] == image_set_id(6) and finding["fix"] == "delete_image_set"
    assert finding["primary"] == (True, False) and finding["found"] == ((image_set_id(1), 5),)
    assert "no attribute differs" in finding["detail"]


def test_the_slice_findings_name_the_slices() -> None:
    gap = curation.check(planted("slice_gap")).iloc[0]
    assert "gap" in gap["detail"] and gap["rows"][0][2] == "2.25.99.1.1.4"  # the slice after the gap
    duplicate = curation.check(planted("slice_duplicate")).iloc[0]
    assert sorted(row[2] for row in duplicate["rows"]) == ["2.25.99.1.1.3", "2.25.99.1.1.99"]


def test_finding_ids_are_stable_and_ignore_drops_reviewed_findings() -> None:
    first, second = curation.check(planted("invalid_value")), curation.check(planted("invalid_value"))
    assert first.index.tolist() == second.index.tolist() and first.index.is_unique
    reviewed = first[first["attribute"] == "PatientName"]
    left = curation.check(planted("invalid_value"), ignore=reviewed)
    assert set(left["attribute"]) == {"StudyDate", "SpecificCharacterSet"}
    assert curation.check(planted("invalid_value"), ignore=list(first.index)).empty


def test_checks_selects_and_an_unknown_check_is_refused() -> None:
    assert set(curation.check(planted("invalid_value"), checks=["missing_in_series"])["check"]) == set()
    with pytest.raises(ValueError, match=r"unknown check.*'nope'"):
        curation.check(planted("invalid_value"), checks=["nope"])
    assert set(PLANTERS) - {"slice_gap", "slice_duplicate"} <= set(CHECKS)


def test_fix_writes_copies_never_the_snapshot_and_diff_plans_only_the_changed_cell() -> None:
    snapshot = planted("patient_conflict")
    before = snapshot.studies.copy()
    findings = curation.check(snapshot)
    edits = curation.fix(snapshot, findings)
    assert list(edits) == ["studies"] and edits["studies"].columns.tolist() == ["PatientName"]
    assert edits["studies"]["PatientName"].tolist() == ["DOE^JANE"] * 3
    pd.testing.assert_frame_equal(snapshot.studies, before)
    edits["studies"].loc[image_set_id(1), "PatientName"] = "X"  # the copy is the user's
    pd.testing.assert_frame_equal(snapshot.studies, before)
    snapshot.primary = dict.fromkeys(snapshot.primary, False)  # Patient level: non-primary image sets accept it
    changes = curation.diff(snapshot, curation.fix(snapshot, findings))
    assert changes.changes[["ImageSetID", "attribute", "old", "new", "op"]].values.tolist() == [
        [image_set_id(3), "PatientName", "DOE^JAME", "DOE^JANE", "update"]
    ]


def test_a_tie_needs_a_lookup_and_a_lookup_decides() -> None:
    snapshot = planted("study_conflict")
    findings = curation.check(snapshot)
    with pytest.raises(curation.FixError, match="no value to write") as error:
        curation.fix(snapshot, findings)
    assert error.value.problems[0]["attribute"] == "StudyDate"
    table = pd.DataFrame({"StudyDate": ["20230418"]}, index=["2.25.99.4"])
    edits = curation.fix(snapshot, findings, lookup=table)
    assert edits["studies"]["StudyDate"].tolist() == ["20230418", "20230418"]
    assert len(curation.diff(snapshot, edits)) == 1


def test_two_findings_writing_one_cell_differently_is_an_error_naming_both() -> None:
    snapshot = planted("missing_in_series")
    findings = curation.check(snapshot)
    twice = pd.concat([findings, findings.assign(suggested="2").rename(index=lambda i: "other")])
    with pytest.raises(curation.FixError, match="where finding"):
        curation.fix(snapshot, twice)


def test_findings_without_an_edit_fix_write_nothing() -> None:
    snapshot = planted("slice_gap")
    assert curation.fix(snapshot, curation.check(snapshot)) == {}


def test_check_fix_diff_plan_apply_then_check_finds_nothing(tmp_path: Path) -> None:
    """The planted defects that primary image sets accept a fix for, fixed through the embedded service."""
    documents = site_documents()
    for name in ("study_conflict", "missing_in_series", "instance_number"):
        PLANTERS[name](documents)
    documents[0]["Study"]["DICOM"]["StudyDate"] = "2023-04-17"
    instances_of(documents[2])[3]["DICOM"]["SliceThickness"] = None  # empty in 1 of 5
    store = Store(tmp_path / "store")
    report = store.import_documents(documents)
    client = curation.local.client(store)
    snapshot = curation.fetch(client, report.datastore_id, progress=False)
    findings = curation.check(snapshot)
    assert set(findings["check"]) == {
        "study_conflict",
        "missing_in_series",
        "empty_in_series",
        "instance_number",
        "invalid_value",
    }
    study = findings.loc[findings["check"] == "study_conflict", "key"].iloc[0]
    edits = curation.fix(snapshot, findings, lookup={"StudyDate": {study: "20230417"}})
    plan = curation.plan(curation.diff(snapshot, edits))
    result = curation.apply(plan, client, tmp_path / "journal.jsonl")
    assert set(result["status"]) == {"applied"}
    after = curation.fetch(client, report.datastore_id, progress=False)
    assert curation.check(after).empty
    assert len(curation.diff(after, curation.fix(after, curation.check(after)))) == 0


def test_instance_numbers_falling_along_the_normal_are_consistent_but_a_number_repeated_elsewhere_is_not() -> None:
    documents = site_documents()
    slices = instances_of(documents[0])
    numbers = [node["DICOM"]["InstanceNumber"] for node in slices]
    for node, number in zip(slices, reversed(numbers), strict=True):
        node["DICOM"]["InstanceNumber"] = number
    assert curation.check(snapshot_of(documents)).empty
    slices[4]["DICOM"]["InstanceNumber"] = slices[0]["DICOM"]["InstanceNumber"]
    (finding,) = curation.check(snapshot_of(documents)).itertuples()
    assert finding.check == "instance_number" and finding.found == ((6, 2),)
    assert finding.suggested == ("7", "6", "5", "4", "3")  # falling as most steps do, from the lowest (3)


def test_an_image_set_that_could_not_be_flattened_is_an_unreadable_finding() -> None:
    documents = site_documents()
    documents[1]["Study"].pop("Series")  # no series: flatten refuses the document
    snapshot = snapshot_of(documents)
    findings = curation.check(snapshot)
    assert findings[["check", "severity", "level", "image_sets"]].values.tolist() == [
        ["unreadable", "error", "ImageSet", (image_set_id(2),)]
    ]
    assert findings["found"].iloc[0] == (("flatten", 1),)


def test_check_changes_nothing_in_the_snapshot() -> None:
    snapshot = planted("invalid_value")
    before = {name: getattr(snapshot, name) for name in ("studies", "series", "instances")}
    curation.check(snapshot)
    for name, frame in before.items():
        pd.testing.assert_frame_equal(getattr(snapshot, name), frame)


def test_an_attribute_saying_how_an_instance_was_made_is_found_missing_but_never_filled() -> None:
    documents = site_documents()
    for node in instances_of(documents[0])[1:]:
        node["DICOM"]["LossyImageCompression"] = "01"
    (finding,) = curation.check(snapshot_of(documents)).itertuples()
    assert (finding.check, finding.attribute, finding.found) == (
        "missing_in_series",
        "LossyImageCompression",
        (("01", 4), (None, 1)),
    )
    assert finding.fix is None and finding.suggested is None


def test_values_equal_under_the_ps35_padding_rules_are_no_conflict() -> None:
    """PS3.5 6.2: a trailing space is insignificant (leading too for CS/LO/SH ...); PS3.5 6.2.1.1: a PN's trailing
    component delimiters may be left out. Absent against present-empty alone is info, not an error."""
    documents = site_documents()
    documents[1]["Patient"]["DICOM"]["PatientName"] = "DOE^JANE^^ "
    documents[2]["Patient"]["DICOM"]["PatientName"] = "DOE^JANE="
    assert curation.check(snapshot_of(documents)).empty
    documents[0]["Patient"]["DICOM"]["PatientSex"] = None
    documents[1]["Patient"]["DICOM"].pop("PatientSex")
    documents[2]["Patient"]["DICOM"].pop("PatientSex")
    (finding,) = curation.check(snapshot_of(documents)).itertuples()
    assert (finding.check, finding.severity, finding.attribute) == ("patient_conflict", "info", "PatientSex")


def test_every_pydicom_test_file_gives_only_the_reviewed_genuine_findings(tmp_path: Path) -> None:
    """The reviewed baseline of pydicom's own test files imported into the embedded service (issue 18's "no false
    ones on clean data"). Every finding was read and is genuine: pydicom ships one image in several transfer
    syntaxes under one SOPInstanceUID (AHI puts the later imports in non-primary image sets: 11
    non_primary_duplicate, and 7 duplicate_sop_instance where the content differs); one SeriesInstanceUID holds
    originals and their lossy derivations (the 8 missing_in_series: never filled for the provenance attributes);
    and four values break their VR: StudyDate '1997.04.24', StudyTime '14:04:38', an IsocenterPosition with 2 of
    its 3 values (BeamSequence) and a UID component with a leading zero (ReferencedRTPlanSequence)."""
    import os

    import pydicom

    files = sorted((Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files").rglob("*.dcm"))
    store = Store(tmp_path / "store")
    report = store.import_paths([str(path) for path in files])
    findings = curation.check(curation.fetch(curation.local.client(store), report.datastore_id, progress=False))
    counts = findings.fillna({"attribute": "-"}).groupby(["check", "attribute"]).size().to_dict()
    assert counts == {
        ("duplicate_sop_instance", "SOPInstanceUID"): 7,
        ("invalid_value", "BeamSequence"): 1,
        ("invalid_value", "ReferencedRTPlanSequence"): 1,
        ("invalid_value", "StudyDate"): 1,
        ("invalid_value", "StudyTime"): 1,
        ("missing_in_series", "DerivationCodeSequence"): 1,
        ("missing_in_series", "DerivationDescription"): 2,
        ("missing_in_series", "LossyImageCompression"): 1,
        ("missing_in_series", "LossyImageCompressionMethod"): 1,
        ("missing_in_series", "LossyImageCompressionRatio"): 1,
        ("missing_in_series", "SourceImageSequence"): 2,
        ("non_primary_duplicate", "-"): 11,
    }
    fixes = findings.loc[findings["check"] == "invalid_value"].set_index("attribute")["suggested"].to_dict()
    assert fixes == {
        "StudyDate": "19970424",
        "StudyTime": "140438",
        "BeamSequence": None,
        "ReferencedRTPlanSequence": None,
    }
