"""diff: edited frames -> ChangeSet, on the reference documents (issue 5 rules, one test per rule)."""

from __future__ import annotations

import copy
import datetime as dt
import importlib
import json
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from curation.curate.changeset import CHANGE_COLUMNS, PROBLEM_COLUMNS
from curation.curate.differ import DiffError, diff, diff_documents
from curation.frames.flattening import NULL, REMOVE
from curation.frames.snapshot import Snapshot

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
_DOCS = {
    name: json.loads((REFERENCE / f"{name}.json").read_text())
    for name in ("ct-588-instances", "us-doppler-9-instances", "ct-2025-htj2k-1-instance")
}
CT = _DOCS["ct-588-instances"]["ImageSetID"]
US = _DOCS["us-doppler-9-instances"]["ImageSetID"]
CT2 = _DOCS["ct-2025-htj2k-1-instance"]["ImageSetID"]
US_SERIES = next(iter(_DOCS["us-doppler-9-instances"]["Study"]["Series"]))
SECOND_SERIES = "1.2.3.4.5.6.7"


def _two_series(document: dict) -> dict:
    """The us-doppler document with its last 4 instances moved to a second series (to remove series)."""
    doc = copy.deepcopy(document)
    series = doc["Study"]["Series"][US_SERIES]
    moved = dict(list(series["Instances"].items())[5:])
    series["Instances"] = dict(list(series["Instances"].items())[:5])
    node = copy.deepcopy(series)
    node["DICOM"]["SeriesInstanceUID"] = SECOND_SERIES
    node["Instances"] = moved
    doc["Study"]["Series"][SECOND_SERIES] = node
    return doc


def make_snapshot(*, primary: bool | None = False, two_series: bool = False) -> Snapshot:
    docs = [copy.deepcopy(d) for d in _DOCS.values()]
    if two_series:
        docs[1] = _two_series(docs[1])
    snapshot = Snapshot.from_documents(
        docs, datastore_id="8a23b5b729c44f0d8b15cfd06253c5cd", version_ids={d["ImageSetID"]: "1" for d in docs}
    )
    if primary is not None:
        snapshot.primary = {d["ImageSetID"]: primary for d in docs}
    return snapshot


@pytest.fixture(scope="module")
def snap() -> Snapshot:
    """One non-primary snapshot for the module: diff never modifies it (test_user_frames_and_snapshot_...)."""
    return make_snapshot()


def rows(changes) -> list[dict]:
    return changes.changes.to_dict("records")


def instance_label(snapshot: Snapshot, image_set: str, n: int = 0) -> tuple:
    """The ``n``-th instance row label of ``image_set`` (read from the document: cheaper than a frame copy)."""
    document = snapshot.documents[image_set]
    labels = [
        (image_set, series, sop) for series, node in document["Study"]["Series"].items() for sop in node["Instances"]
    ]
    return labels[n]


# --- shape -------------------------------------------------------------------------------------------------


def test_no_edits_no_changes_and_tables_have_the_contract_columns(snap):
    changes = diff(snap, [snap.studies, snap.series, snap.instances, snap.wide])
    assert len(changes) == 0 and changes.problems.empty
    assert tuple(changes.changes.columns) == CHANGE_COLUMNS
    assert tuple(changes.problems.columns) == PROBLEM_COLUMNS
    assert changes.ok and changes.snapshot is snap


def test_unidentifiable_frame_is_a_usage_error(snap):
    with pytest.raises(ValueError, match="cannot tell which snapshot frame"):
        diff(snap, snap.studies.reset_index())


# --- studies -----------------------------------------------------------------------------------------------


def test_patient_name_update_is_one_patient_level_row(snap):
    studies = snap.studies
    studies.loc[CT, "PatientName"] = "MX^MX"
    changes = diff(snap, studies)
    assert rows(changes) == [
        {
            "ImageSetID": CT,
            "level": "Patient",
            "SeriesInstanceUID": None,
            "SOPInstanceUID": None,
            "attribute": "PatientName",
            "VR": "PN",
            "old": "MAYRA^POETA",
            "new": "MX^MX",
            "op": "update",
            "row": CT,
            "column": "PatientName",
        }
    ]
    assert changes.problems.empty


def test_unknown_primary_flag_is_treated_as_primary_and_says_so():
    snapshot = make_snapshot(primary=None)
    studies = snapshot.studies
    studies.loc[CT, "PatientName"] = "MX^MX"
    changes = diff(snapshot, studies)
    assert len(changes) == 1
    [problem] = changes.problems.to_dict("records")
    assert problem["row"] == CT and problem["column"] == "PatientName"
    assert "primary" in problem["reason"] and "treated as primary" in problem["reason"]


def test_primary_image_set_refuses_patient_level_but_not_study_level():
    snapshot = make_snapshot(primary=True)
    studies = snapshot.studies
    studies.loc[CT, "PatientName"] = "MX^MX"
    studies.loc[CT, "StudyDescription"] = "Liver"
    changes = diff(snapshot, studies)
    assert len(changes) == 2
    assert changes.problems["column"].tolist() == ["PatientName"]
    assert "treated as primary" not in changes.problems["reason"][0]


def test_same_value_written_back_is_no_change(snap):
    studies = snap.studies
    studies.loc[CT, "PatientName"] = "".join(["MAYRA", "^POETA"])
    studies["StudyDate"] = studies["StudyDate"].astype(object)  # a str column takes only text: object for a date
    studies.loc[CT, "StudyDate"] = dt.date(2023, 4, 17)
    studies.loc[CT, "PatientWeight"] = np.nan
    studies.loc[CT2, "PatientWeight"] = pd.NA
    studies.loc[CT2, "PatientSex"] = ""  # present-empty written back
    instances = snap.instances
    label = instance_label(snap, US)
    instances.at[label, "ImageType"] = "ORIGINAL\\PRIMARY\\\\0015"  # the same array, as DICOM text
    instances.at[label, "Rows"] = 480.0
    assert len(diff(snap, [studies, instances])) == 0
    instances["ImageType"] = instances["ImageType"].astype(object)
    instances.at[label, "ImageType"] = ["ORIGINAL", "PRIMARY", "", "0015"]  # or as a list
    assert len(diff(snap, [studies, instances])) == 0


def test_set_to_missing_removes_with_the_current_value(snap):
    studies = snap.studies
    studies.loc[CT, "StudyDescription"] = None
    [row] = rows(diff(snap, studies))
    assert (row["op"], row["level"], row["attribute"], row["old"], row["new"]) == (
        "remove",
        "Study",
        "StudyDescription",
        "CT Liver",
        None,
    )


def test_null_empties_the_attribute_distinct_from_removal(snap):
    studies = snap.studies
    studies.loc[CT, "StudyDescription"] = ""
    studies.loc[CT, "PatientWeight"] = ""
    studies.loc[US, "PatientSex"] = None  # a missing cell over a present-empty attribute: unchanged
    assert len(diff(snap, studies)) == 2
    studies.loc[US, "PatientSex"] = REMOVE  # removing a present-empty attribute is explicit
    got = {(r["attribute"], r["op"]): (r["old"], r["new"]) for r in rows(diff(snap, studies))}
    assert got == {
        ("StudyDescription", "update"): ("CT Liver", NULL),
        ("PatientWeight", "add"): (None, NULL),
        ("PatientSex", "remove"): (NULL, None),
    }


def test_rows_missing_from_studies_are_left_alone(snap):
    studies = snap.studies.loc[[CT]].copy()
    studies.loc[CT, "StudyDescription"] = "Liver"
    assert [(r["ImageSetID"], r["op"]) for r in rows(diff(snap, studies))] == [(CT, "update")]


def test_new_studies_column_at_the_wrong_level_is_a_problem(snap):
    studies = snap.studies
    studies.loc[CT, "BodyPartExamined"] = "CHEST"
    changes = diff(snap, studies)
    assert len(changes) == 0
    [problem] = changes.problems.to_dict("records")
    assert problem["column"] == "BodyPartExamined" and "Series level" in problem["reason"]


def test_node_key_columns_cannot_be_edited(snap):
    studies = snap.studies
    studies.loc[CT, "@SchemaVersion"] = "2.0"
    instances = snap.instances
    label = instance_label(snap, CT2)
    instances.loc[label, "@StoredTransferSyntaxUID"] = "1.2.840.10008.1.2.1"
    instances.loc[label, "PixelData"] = "AAAA"
    changes = diff(snap, [studies, instances])
    assert len(changes) == 0
    problems = changes.problems.set_index("column")["reason"]
    assert "not a DICOM attribute" in problems["@SchemaVersion"]
    assert "not a DICOM attribute" in problems["@StoredTransferSyntaxUID"]
    assert "generated" in problems["PixelData"]
    assert changes.problems.set_index("column")["row"]["PixelData"] == label


# --- values ------------------------------------------------------------------------------------------------


def test_values_are_coerced_to_ahi_encoding(snap):
    studies = snap.studies.astype({"StudyDate": object, "StudyTime": object})
    studies.loc[CT, "StudyDate"] = pd.Timestamp("2024-02-03 10:11:12")
    studies.loc[CT, "StudyTime"] = dt.time(10, 11, 12)
    instances = snap.instances.astype({"SliceThickness": object, "InstanceNumber": object})
    label = instance_label(snap, CT)
    instances.at[label, "ImageType"] = "ORIGINAL\\SECONDARY"
    instances.at[label, "SliceThickness"] = 2.5
    instances.at[label, "InstanceNumber"] = np.int64(7)
    instances.at[label, "Rows"] = np.int32(256)
    got = {r["attribute"]: r["new"] for r in rows(diff(snap, [studies, instances]))}
    assert got == {
        "StudyDate": "20240203",
        "StudyTime": "101112",
        "ImageType": ["ORIGINAL", "SECONDARY"],
        "SliceThickness": "2.5",
        "InstanceNumber": "7",
        "Rows": 256,
    }
    assert type(got["Rows"]) is int


def test_invalid_values_are_problems_naming_row_and_column(snap):
    studies = snap.studies
    studies.loc[CT, "StudyDate"] = "2023-04-17"
    instances = snap.instances.astype({"InstanceNumber": object})
    label = instance_label(snap, CT)
    instances.at[label, "Rows"] = 70000
    instances.at[label, "InstanceNumber"] = 1.5
    changes = diff(snap, [studies, instances])
    by_column = changes.problems.set_index("column")
    assert set(by_column.index) == {"StudyDate", "Rows", "InstanceNumber"}
    assert by_column.loc["StudyDate", "row"] == CT and "DA" in by_column.loc["StudyDate", "reason"]
    assert by_column.loc["Rows", "row"] == label and "65535" in by_column.loc["Rows", "reason"]
    assert "integer" in by_column.loc["InstanceNumber", "reason"]
    # a value AHI could take with force stays in changes; one that cannot be encoded does not
    assert sorted(changes.changes["attribute"]) == ["Rows", "StudyDate"]


def test_strict_raises_one_error_listing_every_problem(snap):
    studies = snap.studies
    studies.loc[CT, "StudyDate"] = "2023-04-17"
    studies.loc[US, "StudyDate"] = "yesterday"
    with pytest.raises(DiffError) as info:
        diff(snap, studies, strict=True)
    assert len(info.value.problems) == 2
    assert "2 problem(s)" in str(info.value) and "yesterday" in str(info.value)


def test_force_reasons_are_information_not_problems(snap):
    instances = snap.instances
    instances.at[instance_label(snap, CT), "ImageType"] = "DERIVED\\SECONDARY"
    changes = diff(snap, instances)
    assert changes.problems.empty
    [reasons] = changes.force_reasons().tolist()
    assert any("multivalued" in r for r in reasons)


# --- instances -------------------------------------------------------------------------------------------


def test_dropped_instance_row_removes_the_instance(snap):
    instances = snap.instances
    label = instance_label(snap, US, 3)
    assert len(diff(snap, instances.drop(index=[label]))) == 0  # a selection: the row is left alone
    changes = diff(snap, instances.drop(index=[label]), rows="all")
    assert rows(changes) == [
        {
            "ImageSetID": US,
            "level": "Instance",
            "SeriesInstanceUID": label[1],
            "SOPInstanceUID": label[2],
            "attribute": None,
            "VR": None,
            "old": None,
            "new": None,
            "op": "remove_instance",
            "row": label,
            "column": None,
        }
    ]


def test_dropping_every_instance_of_a_series_removes_the_series():
    snapshot = make_snapshot(two_series=True)
    instances = snapshot.instances
    gone = instances.loc[(US, SECOND_SERIES)].index
    edited = instances.drop(index=[(US, SECOND_SERIES, sop) for sop in gone])
    changes = diff(snapshot, edited, rows="all")
    assert [(r["op"], r["SeriesInstanceUID"], r["SOPInstanceUID"]) for r in rows(changes)] == [
        ("remove_series", SECOND_SERIES, None)
    ]


def test_dropping_a_series_row_removes_the_series():
    snapshot = make_snapshot(two_series=True)
    series = snapshot.series
    changes = diff(snapshot, series.drop(index=[(US, SECOND_SERIES)]), rows="all")
    assert [(r["op"], r["level"], r["SeriesInstanceUID"], r["row"]) for r in rows(changes)] == [
        ("remove_series", "Series", SECOND_SERIES, (US, SECOND_SERIES))
    ]


def test_removing_every_series_of_an_image_set_is_a_problem(snap):
    instances = snap.instances
    changes = diff(snap, instances.drop(index=US, level="ImageSetID"), rows="all")
    assert len(changes) == 0
    [problem] = changes.problems.to_dict("records")
    assert problem["ImageSetID"] == US and "DeleteImageSet" in problem["reason"]


def test_new_private_tag_needs_a_vr(snap):
    instances = snap.instances
    label = instance_label(snap, CT, 2)
    instances["001910F9"] = None
    instances.at[label, "001910F9"] = 97
    [row] = rows(diff(snap, instances, vrs={"001910F9": "DS"}))
    assert (row["op"], row["level"], row["SOPInstanceUID"], row["attribute"], row["VR"], row["new"]) == (
        "add",
        "Instance",
        label[2],
        "001910F9",
        "DS",
        "97",
    )
    refused = diff(snap, instances)
    assert len(refused) == 0
    [problem] = refused.problems.to_dict("records")
    assert problem["row"] == label and problem["column"] == "001910F9" and "vrs=" in problem["reason"]


def test_existing_private_tag_takes_the_instance_vr(snap):
    # the reference documents have no 00091001; us-doppler's 7FDF0010 (private creator, LO) plays its part
    instances = snap.instances
    label = instance_label(snap, US, 1)
    instances.at[label, "7FDF0010"] = "GE_GENESIS_DD"
    [row] = rows(diff(snap, instances))
    assert (row["op"], row["attribute"], row["VR"], row["old"], row["new"]) == (
        "update",
        "7FDF0010",
        "LO",
        "ACUSON:1.2.840.113680.1.0",
        "GE_GENESIS_DD",
    )


def test_hex_key_of_a_keyword_is_refused(snap):
    instances = snap.instances
    instances["00100010"] = None
    instances.at[instance_label(snap, CT), "00100010"] = "X^Y"
    changes = diff(snap, instances)
    assert len(changes) == 0 and "PatientName" in changes.problems["reason"][0]


def test_sop_instance_uid_change_is_addressed_by_the_old_uid(snap):
    instances = snap.instances
    label = instance_label(snap, CT2)
    instances.loc[label, "SOPInstanceUID"] = "1.2.3.4.5"
    [row] = rows(diff(snap, instances))
    assert (row["op"], row["attribute"], row["SOPInstanceUID"], row["old"], row["new"]) == (
        "update",
        "SOPInstanceUID",
        label[2],
        label[2],
        "1.2.3.4.5",
    )


def test_uid_already_used_in_the_image_set_is_a_problem(snap):
    instances = snap.instances
    first, second = instance_label(snap, US, 0), instance_label(snap, US, 1)
    instances.loc[first, "SOPInstanceUID"] = second[2]
    changes = diff(snap, instances)
    assert "already used" in changes.problems["reason"][0]


def test_changed_index_is_refused_not_guessed(snap):
    instances = snap.instances
    label = instance_label(snap, CT2)
    edited = instances.rename(index={label[2]: "9.9.9"}, level="SOPInstanceUID")
    changes = diff(snap, edited, rows="all")
    assert len(changes) == 0
    reasons = changes.problems["reason"].tolist()
    assert any("adding instances is not possible with UpdateImageSetMetadata" in r for r in reasons)
    assert any("not removed" in r for r in reasons)


def test_added_row_is_a_problem(snap):
    instances = snap.instances
    extra = instances.iloc[[0]].rename(index={instances.index[0][2]: "7.7.7"}, level="SOPInstanceUID")
    changes = diff(snap, pd.concat([instances, extra]))
    assert len(changes) == 0
    [problem] = changes.problems.to_dict("records")
    assert problem["row"][2] == "7.7.7" and "adding instances is not possible" in problem["reason"]


# --- wide ----------------------------------------------------------------------------------------------------


def test_wide_uniform_edit_is_one_change(snap):
    wide = snap.wide
    wide.loc[US, "PatientName"] = "MX^MX"
    wide.loc[US, "Modality"] = "OT"
    changes = diff(snap, wide)
    assert [(r["level"], r["attribute"], r["SeriesInstanceUID"], r["new"]) for r in rows(changes)] == [
        ("Patient", "PatientName", None, "MX^MX"),
        ("Series", "Modality", US_SERIES, "OT"),
    ]
    assert changes.problems.empty


def test_wide_non_uniform_edit_lists_the_rows(snap):
    wide = snap.wide
    label = wide.loc[[US]].index[2]
    wide.loc[label, "PatientName"] = "MX^MX"
    changes = diff(snap, wide)
    assert len(changes) == 0
    [problem] = changes.problems.to_dict("records")
    assert problem["column"] == "PatientName" and problem["row"] == label
    assert "uniform" in problem["reason"] and '"MX^MX"' in problem["reason"]
    assert repr(label) in problem["reason"] and "the current value" in problem["reason"]


def test_wide_instance_columns_and_dropped_rows(snap):
    wide = snap.wide
    label = wide.loc[[US]].index[0]
    wide.at[label, "InstanceNumber"] = "42"
    dropped = wide.loc[[US]].index[1]
    changes = diff(snap, wide.drop(index=[dropped]), rows="all")
    assert sorted((r["op"], r["SOPInstanceUID"]) for r in rows(changes)) == [
        ("remove_instance", dropped[2]),
        ("update", label[2]),
    ]


def test_several_frames_and_conflicting_edits(snap):
    studies, wide = snap.studies, snap.wide
    studies.loc[CT2, "PatientName"] = "A^B"
    wide.loc[CT2, "PatientName"] = "A^B"
    same = diff(snap, {"studies": studies, "wide": wide})
    assert len(same) == 1 and same.problems.empty
    wide.loc[CT2, "PatientName"] = "C^D"
    conflict = diff(snap, [studies, wide])
    assert len(conflict) == 0 and "conflicting" in conflict.problems["reason"][0]


# --- integrity ---------------------------------------------------------------------------------------------


def test_user_frames_and_snapshot_are_never_mutated(snap):
    before = orjson.dumps(list(snap.documents.values()))
    studies, instances = snap.studies, snap.instances
    studies.loc[CT, "StudyDescription"] = None
    instances.at[instance_label(snap, CT), "ImageType"] = "A\\B"
    instances = instances.drop(index=[instance_label(snap, US, 2)])
    copies = [studies.copy(deep=True), instances.copy(deep=True)]
    diff(snap, [studies, instances], rows="all")
    assert orjson.dumps(list(snap.documents.values())) == before
    pd.testing.assert_frame_equal(studies, copies[0])
    pd.testing.assert_frame_equal(instances, copies[1])
    assert instances.at[instance_label(snap, CT), "ImageType"] == "A\\B"


def test_diff_documents_reads_a_version_change():
    old = _DOCS["us-doppler-9-instances"]
    new = copy.deepcopy(old)
    new["Patient"]["DICOM"]["PatientName"] = "MX^MX"
    instances = new["Study"]["Series"][US_SERIES]["Instances"]
    first, second = list(instances)[:2]
    del instances[first]
    node = instances[second]
    node["DICOM"]["SOPInstanceUID"] = "1.2.3.9"
    node["DICOM"]["001910F9"] = "97"
    node["DICOMVRs"]["001910F9"] = "DS"
    new["Study"]["Series"][US_SERIES]["Instances"] = {
        ("1.2.3.9" if k == second else k): v for k, v in instances.items()
    }
    changes = diff_documents(old, new)
    got = [(r["op"], r["attribute"], r["SOPInstanceUID"], r["new"]) for r in rows(changes)]
    assert got == [
        ("update", "PatientName", None, "MX^MX"),
        ("remove_instance", None, first, None),
        ("update", "SOPInstanceUID", second, "1.2.3.9"),
        ("add", "001910F9", second, "97"),
    ]
    assert changes.problems.empty
    assert old["Study"]["Series"][US_SERIES]["Instances"][first]  # the input is untouched


def test_display_escapes_and_summarises(snap):
    studies = snap.studies
    studies.loc[CT, "StudyDescription"] = "<script>alert(1)</script>"
    studies.loc[US, "StudyDate"] = "<b>"
    changes = diff(snap, studies)
    text = changes._repr_html_()
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert text.index("problem") < text.index("StudyDescription")
    assert repr(changes) == (
        "ChangeSet(2 change(s) in 2 image set(s): 2 update; removes 0 attribute(s), "
        "0 instance(s), 0 series; 1 problem(s))"
    )
    assert changes.summary().loc[CT, "update"] == 1


def test_frames_diff_matches_the_documents_the_plan_produces(snap):
    """diff -> plan -> preview, then diff_documents(old, previewed) finds the same changes (the seven cases)."""
    plan_module = importlib.import_module("curation.curate.planner")
    studies, instances = snap.studies, snap.instances
    studies.loc[CT, "PatientName"] = "MX^MX"
    studies.loc[CT, "StudyDescription"] = None
    label = instance_label(snap, CT, 2)
    instances["001910F9"] = None
    instances.at[label, "001910F9"] = 97
    instances.at[instance_label(snap, US, 1), "7FDF0010"] = "GE_GENESIS_DD"
    instances.loc[instance_label(snap, CT2), "SOPInstanceUID"] = "1.2.3.4.5"
    instances = instances.drop(index=[instance_label(snap, US, 4)])
    changes = diff(snap, [studies, instances], vrs={"001910F9": "DS"}, rows="all")
    assert changes.problems.empty and len(changes) == 6
    previews = plan_module.plan(changes).preview({k: snap.document(k) for k in snap.image_set_ids})
    fields = ["ImageSetID", "level", "SeriesInstanceUID", "SOPInstanceUID", "attribute", "VR", "old", "new", "op"]
    expected = sorted(map(repr, changes.changes[fields].to_dict("records")))
    found = []
    for image_set, document in previews.items():
        found += diff_documents(snap.documents[image_set], document).changes[fields].to_dict("records")
    assert sorted(map(repr, found)) == expected


# --- property: the vectorised diff finds exactly the cells a naive loop finds ---------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from curation.frames.cells import decode, is_remove  # noqa: E402
from curation.model.values import coerce, is_absent, same_value, vr_vm_of  # noqa: E402

_US_SNAPSHOT = Snapshot.from_documents([copy.deepcopy(_DOCS["us-doppler-9-instances"])], datastore_id="0" * 32)
_US_SNAPSHOT.primary = {US: False}
_US_INSTANCES = _US_SNAPSHOT.instances
_EDITABLE = [c for c in _US_INSTANCES.columns if not c.startswith("@") and c not in ("PixelData", "SOPInstanceUID")]


def _assignable(column: str, kind: str, source_value: object) -> object:
    """The value an edit of ``kind`` writes into ``column`` (what pandas lets that column's dtype hold)."""
    text = isinstance(_US_INSTANCES[column].dtype, pd.StringDtype)
    typed_numbers = str(_US_INSTANCES[column].dtype) in ("Int64", "Float64")
    if kind == "copy":
        return source_value
    if kind in ("none", "nan"):
        return None if kind == "none" else np.nan
    if typed_numbers:
        return np.nan
    if kind == "empty":
        return "" if text else NULL
    return REMOVE


def _expected(column: str, codec: str, old: object, new: object, vrs: dict) -> str | None:
    """What a naive per-cell reading of the rules says the edit of one cell is (None: no change)."""
    absent = object()
    old_json = absent if is_absent(old) else decode(old, codec)
    empty = old_json is not absent and (old_json is None or old_json == "")
    if is_remove(new) or is_absent(new):
        if old_json is absent or (is_absent(new) and empty):
            return None
        return "remove"
    if isinstance(new, str) and new == "" and codec in ("str", 'str:""', "joined"):
        return None if empty else ("add" if old_json is absent else "update")
    value = coerce(new, *vr_vm_of(column, vrs))
    value = None if value is NULL else value
    if old_json is not absent and same_value(value, old_json):
        return None
    return "add" if old_json is absent else "update"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 8),
            st.sampled_from(_EDITABLE),
            st.integers(0, 8),
            st.sampled_from(["copy", "none", "empty", "nan", "remove"]),
        ),
        max_size=12,
    ),
    st.sets(st.integers(0, 8), max_size=3),
)
def test_diff_matches_a_naive_cell_loop(edits, drops):
    edited = _US_INSTANCES.copy()
    for row, column, source, kind in edits:
        value = _assignable(column, kind, _US_INSTANCES.iat[source, _US_INSTANCES.columns.get_loc(column)])
        edited.iat[row, edited.columns.get_loc(column)] = value
    edited = edited.drop(index=[edited.index[i] for i in drops])
    changes = diff(_US_SNAPSHOT, edited, rows="all")
    codecs = _US_SNAPSHOT.codecs("instances")
    expected = set()
    before = _US_INSTANCES.loc[edited.index, _EDITABLE].to_numpy(dtype=object)
    after = edited[_EDITABLE].to_numpy(dtype=object)
    dicom_vrs = _US_INSTANCES.loc[edited.index, "@DICOMVRs"].tolist()
    for i, label in enumerate(edited.index):
        for j, column in enumerate(_EDITABLE):
            op = _expected(column, codecs[column], before[i, j], after[i, j], dicom_vrs[i])
            if op is not None:
                expected.add((label[2], column, op))
    removals = {label[2] for label in _US_INSTANCES.index} - {label[2] for label in edited.index}
    attribute_rows = changes.changes[changes.changes["op"].isin(["add", "update", "remove"])]
    assert (
        set(zip(attribute_rows["SOPInstanceUID"], attribute_rows["attribute"], attribute_rows["op"], strict=True))
        == expected
    )
    removed = changes.changes[changes.changes["op"] == "remove_instance"]["SOPInstanceUID"]
    assert set(removed) == (removals if len(removals) < 9 else set())


def test_primary_refusals_carry_the_plans_workaround_text():
    from curation.model.rules import PRIMARY_WORKAROUND

    snapshot = make_snapshot(primary=True)
    studies = snapshot.studies
    studies.loc[CT, "PatientName"] = "MX^MX"
    [problem] = diff(snapshot, studies).problems.to_dict("records")
    assert PRIMARY_WORKAROUND in problem["reason"]


def test_rows_must_be_selection_or_all(snap):
    with pytest.raises(ValueError, match="rows must be one of"):
        diff(snap, snap.instances, rows="some")
    assert len(diff(snap, snap.studies.iloc[:1], rows="all").problems) == 2  # image sets are never removed


def test_remove_marker_survives_str_columns_csv_and_pickle(snap):
    import pickle

    import curation

    studies = snap.studies
    studies.loc[US, "PatientSex"] = REMOVE  # a str column takes it: REMOVE is a str
    assert studies["PatientSex"].dtype == "str" and repr(REMOVE) == "REMOVE"
    assert pickle.loads(pickle.dumps(REMOVE)) is REMOVE
    back = curation.read_csv(__import__("io").StringIO(curation.to_csv(studies)))
    for frame in (studies, back):
        [row] = rows(diff(snap, frame))
        assert (row["op"], row["attribute"], row["old"]) == ("remove", "PatientSex", NULL)


def test_changeset_and_plan_first_lines_count_removals():
    import curation

    snapshot = make_snapshot(two_series=True)
    studies = snapshot.studies
    studies.loc[CT, "StudyDescription"] = REMOVE
    instances = snapshot.instances
    keep = ~instances.index.isin([instance_label(snapshot, CT, 0), instance_label(snapshot, CT, 1)])
    keep &= instances.index.get_level_values("SeriesInstanceUID") != SECOND_SERIES
    changes = diff(snapshot, [studies, instances[keep]], rows="all")
    assert changes.removals() == {"attributes": 1, "instances": 2, "series": 1}
    assert "removes 1 attribute(s), 2 instance(s), 1 series" in repr(changes)
    assert "removes 1 attribute(s), 2 instance(s), 1 series" in changes._repr_html_()
    update_plan = curation.plan(changes)
    assert "removes 1 attribute(s), 2 instance(s), 1 series" in repr(update_plan)
    assert "removes 1 attribute(s), 2 instance(s), 1 series" in update_plan._repr_html_()
