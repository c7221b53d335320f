"""curation.plan: ChangeSets (built by hand on the reference documents) -> validated, minimal UpdatePlans."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.curate.changeset import CHANGE_COLUMNS, ChangeSet, empty_problems
from curation.curate.planner import plan, revert_plan
from curation.curate.updateplan import PlanError, PlannedRequest, UpdatePlan
from curation.frames.flattening import NULL
from curation.frames.snapshot import Snapshot
from curation.model.document import read_document
from curation.model.errors import AHIError
from curation.model.updates import apply_checked, apply_to_document, check_updates, force_reasons

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
DATASTORE = "169224ef14db49839f628fb887d50291"


@pytest.fixture(scope="module")
def doppler_source() -> dict[str, Any]:
    return read_document(str(REFERENCE / "us-doppler-9-instances.json"))


@pytest.fixture(scope="module")
def ct588_source() -> dict[str, Any]:
    return read_document(str(REFERENCE / "ct-588-instances.json"))


@pytest.fixture
def doppler(doppler_source: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(doppler_source)


def snapshot_of(*documents: dict[str, Any], primary: dict[str, bool] | bool | None = False) -> Snapshot:
    """A snapshot at version 3 of each document; ``primary`` as flags, one flag for all, or None (unknown)."""
    snap = Snapshot.from_documents(
        list(documents), datastore_id=DATASTORE, version_ids={d["ImageSetID"]: "3" for d in documents}
    )
    if isinstance(primary, bool):
        snap.primary = {d["ImageSetID"]: primary for d in documents}
    elif primary is not None:
        snap.primary = primary
    return snap


def changeset(snap: Snapshot, *rows: dict[str, Any], vrs: dict[str, str] | None = None) -> ChangeSet:
    frame = pd.DataFrame(
        [{c: row.get(c) for c in CHANGE_COLUMNS} for row in rows], columns=list(CHANGE_COLUMNS), dtype=object
    )
    return ChangeSet(frame, empty_problems(), snap, dict(vrs or {}))


def ids(document: dict[str, Any], series: int = 0) -> tuple[str, str, list[str]]:
    ser = list(document["Study"]["Series"])[series]
    return document["ImageSetID"], ser, list(document["Study"]["Series"][ser]["Instances"])


def row(image_set: str, level: str, attribute: str | None, op: str, new: Any = None, **extra: Any) -> dict[str, Any]:
    out = {"ImageSetID": image_set, "level": level, "attribute": attribute, "op": op, "new": new}
    out.setdefault("row", extra.pop("row", image_set))
    out.setdefault("column", extra.pop("column", attribute))
    out.update(extra)
    return out


def only(result: UpdatePlan) -> PlannedRequest:
    assert len(result) == 1, result.requests_frame()
    return result.requests[0]


def payloads(request: PlannedRequest) -> tuple[dict | None, dict | None]:
    return request.payload("updatableAttributes"), request.payload("removableAttributes")


# --- the seven official use cases ------------------------------------------------------------------------------


def test_use_case_1_update_patient_name(doppler: dict[str, Any]) -> None:
    image_set, _, _ = ids(doppler)
    result = plan(changeset(snapshot_of(doppler), row(image_set, "Patient", "PatientName", "update", "MX^MX")))
    request = only(result)
    assert payloads(request) == ({"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": "MX^MX"}}}, None)
    assert "force" not in request.params and request.force_reasons == []
    assert request.params["datastoreId"] == DATASTORE and request.params["imageSetId"] == image_set
    assert '"SchemaVersion":1.1' in request.blobs["updatableAttributes"]  # the number, compact
    assert result.base_versions == {image_set: "3"}


def test_use_case_2_remove_attribute_carries_current_value(doppler: dict[str, Any]) -> None:
    image_set, _, _ = ids(doppler)
    result = plan(changeset(snapshot_of(doppler), row(image_set, "Study", "StudyDescription", "remove", old="X")))
    expected = {"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "US Dopler"}}}
    assert payloads(only(result)) == (None, expected)


def test_use_case_3_remove_instance(doppler: dict[str, Any]) -> None:
    image_set, ser, sops = ids(doppler)
    change = row(image_set, "Instance", None, "remove_instance", SeriesInstanceUID=ser, SOPInstanceUID=sops[2])
    result = plan(changeset(snapshot_of(doppler), change))
    expected = {"SchemaVersion": 1.1, "Study": {"Series": {ser: {"Instances": {sops[2]: {}}}}}}
    assert payloads(only(result)) == (None, expected)
    assert "force" not in only(result).params


def test_use_case_4_revert(doppler: dict[str, Any]) -> None:
    image_set, _, _ = ids(doppler)
    result = revert_plan({image_set: "1"}, datastore_id=DATASTORE, latest_versions={image_set: "3"})
    request = only(result)
    assert request.params == {
        "datastoreId": DATASTORE,
        "imageSetId": image_set,
        "updateImageSetMetadataUpdates": {"revertToVersionId": "1"},
    }
    assert result.base_versions == {image_set: "3"}
    history = {"1": {**doppler, "Patient": {"DICOM": {"PatientName": "OLD"}}}}
    reverted = result.preview({image_set: doppler}, history=lambda _id, v: history[v])
    assert reverted[image_set]["Patient"]["DICOM"] == {"PatientName": "OLD"}


def test_use_case_5_add_private_element_with_force(doppler: dict[str, Any]) -> None:
    image_set, ser, sops = ids(doppler)
    change = row(image_set, "Instance", "001910F9", "add", "97", VR="DS", SeriesInstanceUID=ser, SOPInstanceUID=sops[0])
    request = only(plan(changeset(snapshot_of(doppler), change)))
    body = {"DICOM": {"001910F9": "97"}, "DICOMVRs": {"001910F9": "DS"}}
    assert payloads(request) == (
        {"SchemaVersion": 1.1, "Study": {"Series": {ser: {"Instances": {sops[0]: body}}}}},
        None,
    )
    assert request.params["force"] is True
    assert len(request.force_reasons) == 1 and "private" in request.force_reasons[0]


def test_use_case_5_vr_from_the_changeset_vrs(doppler: dict[str, Any]) -> None:
    image_set, ser, sops = ids(doppler)
    change = row(image_set, "Instance", "001910F9", "add", "97", SeriesInstanceUID=ser, SOPInstanceUID=sops[0])
    request = only(plan(changeset(snapshot_of(doppler), change, vrs={"001910F9": "DS"})))
    instance = request.payload("updatableAttributes")["Study"]["Series"][ser]["Instances"][sops[0]]
    assert instance["DICOMVRs"] == {"001910F9": "DS"}


def test_use_case_6_update_private_element(doppler: dict[str, Any]) -> None:
    image_set, ser, sops = ids(doppler)
    node = doppler["Study"]["Series"][ser]["Instances"][sops[0]]
    node["DICOM"]["00091001"] = "GEMS_IDEN_01"
    node["DICOMVRs"]["00091001"] = "LO"
    change = row(
        image_set,
        "Instance",
        "00091001",
        "update",
        "GE_GENESIS_DD",
        VR="LO",
        SeriesInstanceUID=ser,
        SOPInstanceUID=sops[0],
        old="GEMS_IDEN_01",
    )
    request = only(plan(changeset(snapshot_of(doppler), change)))
    body = {"DICOM": {"00091001": "GE_GENESIS_DD"}}  # no DICOMVRs: the tag already has its VR
    assert payloads(request) == (
        {"SchemaVersion": 1.1, "Study": {"Series": {ser: {"Instances": {sops[0]: body}}}}},
        None,
    )
    assert request.params["force"] is True and request.force_reasons


def test_use_case_7_sop_instance_uid_keyed_by_old_uid(doppler: dict[str, Any]) -> None:
    image_set, ser, sops = ids(doppler)
    new = "1.3.6.1.4.1.5962.99.1.3633258862.2104868982.1369432891697.3659.9"
    change = row(
        image_set,
        "Instance",
        "SOPInstanceUID",
        "update",
        new,
        VR="UI",
        SeriesInstanceUID=ser,
        SOPInstanceUID=sops[4],
        old=sops[4],
    )
    result = plan(changeset(snapshot_of(doppler), change))
    request = only(result)
    body = {"DICOM": {"SOPInstanceUID": new}}
    assert payloads(request) == (
        {"SchemaVersion": 1.1, "Study": {"Series": {ser: {"Instances": {sops[4]: body}}}}},
        None,
    )
    assert request.params["force"] is True and "SOPInstanceUID" in request.force_reasons[0]
    after = result.preview({image_set: doppler})[image_set]
    assert list(after["Study"]["Series"][ser]["Instances"])[4] == new


def test_null_is_sent_as_json_null(doppler: dict[str, Any]) -> None:
    image_set, _, _ = ids(doppler)
    request = only(plan(changeset(snapshot_of(doppler), row(image_set, "Study", "StudyDescription", "update", NULL))))
    assert request.payload("updatableAttributes") == {
        "SchemaVersion": 1.1,
        "Study": {"DICOM": {"StudyDescription": None}},
    }


# --- fewest requests, force only when needed -------------------------------------------------------------------


def test_everything_of_an_image_set_in_one_request(doppler: dict[str, Any]) -> None:
    image_set, ser, sops = ids(doppler)
    rows = [
        row(image_set, "Patient", "PatientName", "update", "A^B"),
        row(image_set, "Study", "StudyDescription", "remove"),
        row(image_set, "Series", "BodyPartExamined", "update", "HEART", SeriesInstanceUID=ser),
        row(image_set, "Instance", None, "remove_instance", SeriesInstanceUID=ser, SOPInstanceUID=sops[1]),
        row(image_set, "Instance", "ImageComments", "add", "ok", SeriesInstanceUID=ser, SOPInstanceUID=sops[2]),
    ]
    result = plan(changeset(snapshot_of(doppler), *rows))
    request = only(result)
    updatable, removable = payloads(request)
    assert updatable == {
        "SchemaVersion": 1.1,
        "Patient": {"DICOM": {"PatientName": "A^B"}},
        "Study": {
            "Series": {
                ser: {
                    "DICOM": {"BodyPartExamined": "HEART"},
                    "Instances": {sops[2]: {"DICOM": {"ImageComments": "ok"}}},
                }
            }
        },
    }
    assert removable == {
        "SchemaVersion": 1.1,
        "Study": {"DICOM": {"StudyDescription": "US Dopler"}, "Series": {ser: {"Instances": {sops[1]: {}}}}},
    }
    assert "force" not in request.params
    assert "5 changes" in request.description


def test_edits_inside_a_removed_instance_are_dropped(doppler: dict[str, Any]) -> None:
    image_set, ser, sops = ids(doppler)
    rows = [
        row(image_set, "Instance", "ImageComments", "add", "x", SeriesInstanceUID=ser, SOPInstanceUID=sops[3]),
        row(image_set, "Instance", None, "remove_instance", SeriesInstanceUID=ser, SOPInstanceUID=sops[3]),
    ]
    request = only(plan(changeset(snapshot_of(doppler), *rows)))
    assert payloads(request) == (None, {"SchemaVersion": 1.1, "Study": {"Series": {ser: {"Instances": {sops[3]: {}}}}}})


def two_series(document: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """The document with its series split in two (the last 4 instances form a second series)."""
    document = copy.deepcopy(document)
    first = next(iter(document["Study"]["Series"]))
    node = document["Study"]["Series"][first]
    second = first + ".2"
    moved = list(node["Instances"])[5:]
    extra = {"DICOM": {**node["DICOM"], "SeriesInstanceUID": second}, "Instances": {}}
    for sop in moved:
        extra["Instances"][sop] = node["Instances"].pop(sop)
    document["Study"]["Series"][second] = extra
    return document, first, second


def test_every_instance_removed_becomes_the_series_removal(doppler: dict[str, Any]) -> None:
    document, _first, second = two_series(doppler)
    image_set = document["ImageSetID"]
    sops = list(document["Study"]["Series"][second]["Instances"])
    rows = [
        row(image_set, "Instance", None, "remove_instance", SeriesInstanceUID=second, SOPInstanceUID=s) for s in sops
    ]
    request = only(plan(changeset(snapshot_of(document), *rows)))
    assert payloads(request) == (None, {"SchemaVersion": 1.1, "Study": {"Series": {second: {}}}})


def test_an_attribute_moved_up_a_level_goes_out_as_removals_then_updates(doppler: dict[str, Any]) -> None:
    image_set, ser, sops = ids(doppler)
    manufacturer = doppler["Study"]["Series"][ser]["DICOM"].pop("Manufacturer")
    for sop in sops:
        doppler["Study"]["Series"][ser]["Instances"][sop]["DICOM"]["Manufacturer"] = manufacturer
    rows = [row(image_set, "Instance", "Manufacturer", "remove", SeriesInstanceUID=ser, SOPInstanceUID=s) for s in sops]
    rows.append(row(image_set, "Series", "Manufacturer", "add", "ACUSON", SeriesInstanceUID=ser))
    snap = snapshot_of(doppler)
    result = plan(changeset(snap, *rows))
    assert [sorted(r.blobs) for r in result.requests] == [["removableAttributes"], ["updatableAttributes"]]
    after = result.preview(snap.documents)[image_set]["Study"]["Series"][ser]
    assert after["DICOM"]["Manufacturer"] == "ACUSON"
    assert not any("Manufacturer" in node["DICOM"] for node in after["Instances"].values())


def test_identical_duplicate_rows_collapse_and_conflicting_ones_are_a_problem(doppler: dict[str, Any]) -> None:
    image_set, _, _ = ids(doppler)
    same = row(image_set, "Study", "StudyDescription", "update", "ECHO")
    only(plan(changeset(snapshot_of(doppler), same, dict(same))))
    with pytest.raises(PlanError, match="conflicting changes of StudyDescription"):
        plan(changeset(snapshot_of(doppler), same, {**same, "new": "OTHER"}))


def test_force_only_on_the_requests_that_need_it(ct588_source: dict[str, Any]) -> None:
    image_set, ser, sops = ids(ct588_source)
    rows = [
        row(image_set, "Instance", "ImageComments", "add", "checked", SeriesInstanceUID=ser, SOPInstanceUID=s)
        for s in sops
    ]
    last = sorted(sops)[-1]
    rows.append(row(image_set, "Instance", "00091010", "add", "X", VR="LO", SeriesInstanceUID=ser, SOPInstanceUID=last))
    result = plan(changeset(snapshot_of(ct588_source), *rows), max_blob_bytes=10_000)
    assert len(result) > 2
    forced = [r for r in result.requests if r.force]
    assert len(forced) == 1 and forced[0] is result.requests[-1]
    assert "00091010" in forced[0].blobs["updatableAttributes"]
    assert all(r.force_reasons == [] and "force" not in r.params for r in result.requests[:-1])


# --- splitting ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [30_000, 10_000])
def test_split_deterministically_within_the_limit(ct588_source: dict[str, Any], limit: int) -> None:
    image_set, ser, sops = ids(ct588_source)
    rows = [
        row(image_set, "Instance", "ImageComments", "add", f"slice {n}", SeriesInstanceUID=ser, SOPInstanceUID=s)
        for n, s in enumerate(sops)
    ]
    rows.append(row(image_set, "Study", "StudyDescription", "update", "CT Liver (checked)"))
    rows.append(row(image_set, "Patient", "PatientComments", "remove"))
    snap = snapshot_of(ct588_source)
    result = plan(changeset(snap, *rows), max_blob_bytes=limit)
    again = plan(changeset(snap, *reversed(rows)), max_blob_bytes=limit)
    assert again == result and again.plan_id == result.plan_id
    assert len(result) >= 60_000 // limit  # ~65 KB of payload
    assert [r.index for r in result.requests] == list(range(len(result)))
    for request in result.requests:
        for name, blob in request.blobs.items():
            assert len(blob.encode()) <= limit, name
            assert orjson.loads(blob)["SchemaVersion"] == 1.1
    for request in result.requests[:-1]:  # packed tight: the next instance (~110 bytes) did not fit
        assert len(request.blobs["updatableAttributes"].encode()) > limit - 150
    # instances are split whole, in sorted UID order
    order = [
        sop
        for request in result.requests
        for sop in (request.payload("updatableAttributes") or {})
        .get("Study", {})
        .get("Series", {})
        .get(ser, {})
        .get("Instances", {})
    ]
    assert order == sorted(sops)
    # the union of the split requests has the effect of one unlimited request
    whole = plan(changeset(snap, *rows), max_blob_bytes=10**7)
    assert len(whole) == 1
    split_docs = result.preview(snap.documents, max_blob_bytes=limit)
    assert split_docs == whole.preview(snap.documents, max_blob_bytes=10**7)
    assert split_docs[image_set]["Patient"]["DICOM"].get("PatientComments") is None
    assert split_docs[image_set]["Study"]["Series"][ser]["Instances"][sops[7]]["DICOM"]["ImageComments"] == "slice 7"


def test_an_instance_larger_than_a_blob_is_split_by_attribute(doppler: dict[str, Any]) -> None:
    image_set, ser, sops = ids(doppler)
    rows = [
        row(image_set, "Instance", key, "add", "x" * 4000, SeriesInstanceUID=ser, SOPInstanceUID=sops[0])
        for key in ("ImageComments", "FrameComments", "TextValue")
    ]
    rows.append(
        row(image_set, "Instance", "SOPInstanceUID", "update", "1.2.3.4", SeriesInstanceUID=ser, SOPInstanceUID=sops[0])
    )
    snap = snapshot_of(doppler)
    result = plan(changeset(snap, *rows), max_blob_bytes=10_000)
    assert len(result) == 2
    assert "SOPInstanceUID" in result.requests[-1].blobs["updatableAttributes"]  # the re-key goes last
    assert [r.force for r in result.requests] == [False, True]
    after = result.preview(snap.documents, max_blob_bytes=10_000)[image_set]
    node = after["Study"]["Series"][ser]["Instances"]["1.2.3.4"]["DICOM"]
    assert node["ImageComments"] == node["FrameComments"] == node["TextValue"] == "x" * 4000


def test_a_single_attribute_over_the_limit_is_a_problem(doppler: dict[str, Any]) -> None:
    image_set, ser, sops = ids(doppler)
    big = row(
        image_set,
        "Instance",
        "ImageComments",
        "add",
        "x" * 10_100,
        SeriesInstanceUID=ser,
        SOPInstanceUID=sops[0],
        row=(image_set, ser, sops[0]),
    )
    with pytest.raises(PlanError) as info:
        plan(changeset(snapshot_of(doppler), big), max_blob_bytes=10_000)
    problems = info.value.problems
    assert list(problems["attribute"]) == ["ImageComments"] and list(problems["column"]) == ["ImageComments"]
    assert problems["row"].iloc[0] == (image_set, ser, sops[0])
    assert "limit is 10000 bytes" in problems["reason"].iloc[0]
    assert len(plan(changeset(snapshot_of(doppler), big), max_blob_bytes=30_000)) == 1


# --- primary image sets, refusals, problems -------------------------------------------------------------------


def test_primary_refusals_name_the_workaround(doppler: dict[str, Any]) -> None:
    image_set, ser, _ = ids(doppler)
    rows = [
        row(image_set, "Patient", "PatientName", "update", "A^B", row="r1", column="PatientName"),
        row(image_set, "Series", "BodyPartExamined", "update", "HEART", SeriesInstanceUID=ser),
        row(image_set, "Study", "StudyDescription", "update", "fine"),
    ]
    with pytest.raises(PlanError) as info:
        plan(changeset(snapshot_of(doppler, primary=True), *rows))
    problems = info.value.problems
    assert sorted(problems["attribute"]) == ["BodyPartExamined", "PatientName"]
    assert all("promoteToPrimary" in reason for reason in problems["reason"])
    assert not any("unknown" in reason for reason in problems["reason"])
    assert problems.loc[problems["attribute"] == "PatientName", "row"].iloc[0] == "r1"
    # Study-level changes go through on a primary image set
    assert len(plan(changeset(snapshot_of(doppler, primary=True), rows[2]))) == 1


def test_unknown_primary_flag_is_strict_and_says_so(doppler: dict[str, Any]) -> None:
    image_set, _, _ = ids(doppler)
    with pytest.raises(PlanError, match="primary flag unknown"):
        plan(changeset(snapshot_of(doppler, primary=None), row(image_set, "Patient", "PatientName", "update", "A^B")))


def refusing_rows(document: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    image_set, ser, sops = ids(document)
    return [
        row(
            image_set,
            "Instance",
            "Modality",
            "update",
            "CT",
            SeriesInstanceUID=ser,
            SOPInstanceUID=sops[0],
            row=f"{tag}-a",
            column="@Instance:Modality",
        ),
        row(image_set, "Study", "StudyDate", "remove", old="19990101", row=f"{tag}-b"),
        row(image_set, "Study", "StudyDescription", "update", "fine", row=f"{tag}-c"),
    ]


def other(document: dict[str, Any], image_set: str) -> dict[str, Any]:
    document = copy.deepcopy(document)
    document["ImageSetID"] = image_set
    return document


def test_refusals_become_problems_and_plan_error_lists_them_all(doppler: dict[str, Any]) -> None:
    first, second, good = doppler, other(doppler, "a" * 32), other(doppler, "b" * 32)
    del first["Study"]["DICOM"]["StudyDate"]
    del second["Study"]["DICOM"]["StudyDate"]
    snap = snapshot_of(first, second, good)
    rows = [
        *refusing_rows(first, "one"),
        *refusing_rows(second, "two"),
        row(good["ImageSetID"], "Study", "StudyDescription", "update", "ok"),
    ]
    cs = changeset(snap, *rows)
    with pytest.raises(PlanError) as info:
        plan(cs)
    problems = info.value.problems
    assert sorted(problems["row"]) == ["one-a", "one-b", "two-a", "two-b"]
    assert set(problems["ImageSetID"]) == {first["ImageSetID"], "a" * 32}
    modality = problems[problems["row"] == "one-a"].iloc[0]
    assert modality["attribute"] == "Modality" and modality["column"] == "@Instance:Modality"
    assert "ValidationException" in modality["reason"] and "across modules" in modality["reason"]
    assert "does not exist" in problems[problems["row"] == "one-b"].iloc[0]["reason"]
    text = str(info.value)
    assert text.count("\n- ") == 4 and "row one-a" in text

    allowed = plan(cs, allow_problems=True)
    assert [r.image_set_id for r in allowed.requests] == [good["ImageSetID"]]  # never a partial image set
    assert len(allowed.problems) == 4
    assert allowed.base_versions == {good["ImageSetID"]: "3"}
    assert UpdatePlan.from_json(allowed.to_json()) == allowed


def test_changeset_problems_stop_the_plan_unless_allowed(doppler: dict[str, Any]) -> None:
    good = other(doppler, "b" * 32)
    snap = snapshot_of(doppler, good)
    cs = changeset(
        snap,
        row(doppler["ImageSetID"], "Study", "StudyDescription", "update", "x"),
        row(good["ImageSetID"], "Study", "StudyDescription", "update", "y"),
    )
    cs.problems = pd.DataFrame(
        [
            {
                "ImageSetID": doppler["ImageSetID"],
                "row": 0,
                "column": "001910F9",
                "attribute": "001910F9",
                "reason": "a private tag column needs a VR",
            }
        ],
        dtype=object,
    )
    with pytest.raises(PlanError, match="needs a VR"):
        plan(cs)
    # allowed: what the ChangeSet kept is sent when AHI accepts it, the problems are carried
    allowed = plan(cs, allow_problems=True)
    assert allowed.image_set_ids == [doppler["ImageSetID"], good["ImageSetID"]]
    assert list(allowed.problems["reason"]) == ["a private tag column needs a VR"]


def test_a_kept_change_the_changeset_flags_is_forced_when_allowed(doppler: dict[str, Any]) -> None:
    image_set, _, _ = ids(doppler)
    too_long = "x" * 80  # LO allows 64 characters: AHI takes it with force on a non-primary image set
    cs = changeset(snapshot_of(doppler), row(image_set, "Study", "StudyDescription", "update", too_long, row="r"))
    cs.problems = pd.DataFrame(
        [
            {
                "ImageSetID": image_set,
                "row": "r",
                "column": "StudyDescription",
                "attribute": "StudyDescription",
                "reason": "value does not fit StudyDescription (VR LO)",
            }
        ],
        dtype=object,
    )
    request = only(plan(cs, allow_problems=True))
    assert request.force and "not compatible with the VR" in request.force_reasons[0]
    # on a primary image set AHI refuses it: the image set is left out, the cell's problem is listed once
    cs.snapshot = snapshot_of(doppler, primary=True)
    refused = plan(cs, allow_problems=True)
    assert len(refused) == 0 and len(refused.problems) == 1


def test_removing_every_series_is_refused_for_the_image_set(doppler: dict[str, Any]) -> None:
    image_set, ser, sops = ids(doppler)
    rows = [row(image_set, "Instance", None, "remove_instance", SeriesInstanceUID=ser, SOPInstanceUID=s) for s in sops]
    with pytest.raises(PlanError, match="DeleteImageSet"):
        plan(changeset(snapshot_of(doppler), *rows))


# --- includeStudyImageSets folding ------------------------------------------------------------------------------


def study_siblings(doppler: dict[str, Any]) -> list[dict[str, Any]]:
    """Three image sets of one study, each holding its own series."""
    documents = []
    for n in range(3):
        document = other(doppler, f"{n}" * 32)
        series = document["Study"]["Series"]
        ((old, node),) = series.items()
        new = f"{old}.{n}"
        node["DICOM"]["SeriesInstanceUID"] = new
        # a SOP instance belongs to one primary image set: each sibling's instances are its own
        node["Instances"] = {
            f"{sop}.{n}": dict(i, DICOM={**i["DICOM"], "SOPInstanceUID": f"{sop}.{n}"})
            for sop, i in node["Instances"].items()
        }
        document["Study"]["Series"] = {new: node}
        documents.append(document)
    return documents


def test_study_level_changes_fold_into_one_request(doppler: dict[str, Any]) -> None:
    documents = study_siblings(doppler)
    names = [d["ImageSetID"] for d in documents]
    primary = {names[0]: True, names[1]: True, names[2]: False}
    snap = snapshot_of(*documents, primary=primary)
    ser1 = next(iter(documents[1]["Study"]["Series"]))
    sop1 = next(iter(documents[1]["Study"]["Series"][ser1]["Instances"]))
    rows = [row(n, "Study", "StudyDescription", "update", "ECHO") for n in names]
    rows.append(row(names[1], "Instance", "ImageComments", "add", "ok", SeriesInstanceUID=ser1, SOPInstanceUID=sop1))
    cs = changeset(snap, *rows)

    folded = plan(cs, include_study_image_sets=True)
    plain = plan(cs)
    assert len(plain) == 3 and len(folded) == 3 - 1 + 1  # the non-primary keeps its own; sibling keeps its instance
    carrier = folded.requests[0]
    assert carrier.image_set_id == names[0]
    assert carrier.params["includeStudyImageSets"] is True and carrier.affects == [names[1]]
    assert carrier.payload("updatableAttributes") == {
        "SchemaVersion": 1.1,
        "Study": {"DICOM": {"StudyDescription": "ECHO"}},
    }
    sibling = [r for r in folded.requests if r.image_set_id == names[1]]
    assert len(sibling) == 1 and "StudyDescription" not in sibling[0].blobs["updatableAttributes"]
    assert "includeStudyImageSets" not in sibling[0].params
    assert [r.image_set_id for r in folded.requests if r.image_set_id == names[2]] == [names[2]]
    assert folded.base_versions == {n: "3" for n in names}
    assert folded.preview(snap.documents) == plain.preview(snap.documents)


def test_folding_needs_identical_changes_on_every_primary(doppler: dict[str, Any]) -> None:
    documents = study_siblings(doppler)
    snap = snapshot_of(*documents, primary=True)
    names = [d["ImageSetID"] for d in documents]
    rows = [row(n, "Study", "StudyDescription", "update", "ECHO" if n != names[2] else "OTHER") for n in names]
    result = plan(changeset(snap, *rows), include_study_image_sets=True)
    assert len(result) == 3 and not any(r.include_study_image_sets for r in result.requests)


# --- plan object -------------------------------------------------------------------------------------------------


def test_json_round_trip_save_load_and_stable_id(doppler: dict[str, Any], tmp_path: Path) -> None:
    image_set, ser, sops = ids(doppler)
    rows = [
        row(image_set, "Patient", "PatientName", "update", "MX^MX", row=(image_set,)),
        row(image_set, "Instance", "001910F9", "add", "97", VR="DS", SeriesInstanceUID=ser, SOPInstanceUID=sops[0]),
    ]
    snap = snapshot_of(doppler)
    result = plan(changeset(snap, *rows))
    text = result.to_json()
    assert isinstance(
        orjson.loads(text)["requests"][0]["params"]["updateImageSetMetadataUpdates"]["DICOMUpdates"][
            "updatableAttributes"
        ],
        str,
    )
    loaded = UpdatePlan.from_json(text)
    assert loaded == result and loaded.plan_id == result.plan_id and loaded.requests == result.requests
    result.save(tmp_path / "plan.json")
    assert UpdatePlan.load(tmp_path / "plan.json") == result
    assert plan(changeset(snap, *rows)).plan_id == result.plan_id
    changed = plan(changeset(snap, {**rows[0], "new": "MX^MY"}, rows[1]))
    assert changed.plan_id != result.plan_id and changed != result
    with pytest.raises(ValueError):
        UpdatePlan.from_json('{"format": "other"}')
    label = (image_set, ser, sops[0])
    refused = changeset(
        snap,
        row(
            image_set, "Instance", "Modality", "update", "CT", SeriesInstanceUID=ser, SOPInstanceUID=sops[0], row=label
        ),
    )
    with_problems = plan(refused, allow_problems=True)
    back = UpdatePlan.from_json(with_problems.to_json())
    assert back == with_problems and back.problems["row"].iloc[0] == label and len(back) == 0


def test_display(doppler: dict[str, Any]) -> None:
    image_set, ser, sops = ids(doppler)
    rows = [
        row(image_set, "Study", "StudyDescription", "update", "<script>alert(1)</script>"),
        row(image_set, "Instance", "001910F9", "add", "97", VR="DS", SeriesInstanceUID=ser, SOPInstanceUID=sops[0]),
    ]
    result = plan(changeset(snapshot_of(doppler), *rows))
    page = result._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "force=True" in page and "private tags" in page and image_set in page
    assert "&quot;001910F9&quot;: &quot;97&quot;" in page  # pretty-printed payload JSON
    frame = result.requests_frame()
    assert list(frame["force"]) == [True] and frame["updatable_bytes"].iloc[0] == len(
        result.requests[0].blobs["updatableAttributes"].encode()
    )
    assert result.by_image_set() == {image_set: result.requests}
    assert "requests=1" in repr(result) and "forced=1" in repr(result)

    bad = changeset(snapshot_of(doppler), row(image_set, "Study", "StudyDate", "remove", old="1", row="<b>"))
    bad_doc = copy.deepcopy(doppler)
    del bad_doc["Study"]["DICOM"]["StudyDate"]
    bad.snapshot = snapshot_of(bad_doc)
    shown = plan(bad, allow_problems=True)._repr_html_()
    assert "problem(s)" in shown and "&lt;b&gt;" in shown


def test_preview_leaves_the_documents_alone(doppler: dict[str, Any]) -> None:
    image_set, _, _ = ids(doppler)
    snap = snapshot_of(doppler)
    before = orjson.dumps(doppler)
    result = plan(changeset(snap, row(image_set, "Study", "StudyDescription", "update", "X")))
    after = result.preview(snap.documents)
    assert after[image_set]["Study"]["DICOM"]["StudyDescription"] == "X"
    assert orjson.dumps(doppler) == before
    params = {**result.requests[0].params, "latestVersionId": "3"}
    assert apply_to_document(doppler, params) == after[image_set]


def test_revert_plan_from_a_snapshot(doppler: dict[str, Any]) -> None:
    second = other(doppler, "c" * 32)
    snap = snapshot_of(doppler, second)
    result = revert_plan(snap, latest_versions={doppler["ImageSetID"]: "5", second["ImageSetID"]: "3"})
    assert [(r.image_set_id, r.revert_to) for r in result.requests] == [(doppler["ImageSetID"], "3")]
    assert result.base_versions == {doppler["ImageSetID"]: "5"}
    assert revert_plan(snap, image_set_ids=[second["ImageSetID"]]).image_set_ids == [second["ImageSetID"]]
    with pytest.raises(PlanError, match="pattern"):
        revert_plan({"x": "v1"}, datastore_id=DATASTORE)
    with pytest.raises(ValueError, match="datastore_id"):
        revert_plan({"x": "1"})


def test_empty_changeset_is_an_empty_plan(doppler: dict[str, Any]) -> None:
    result = plan(changeset(snapshot_of(doppler)))
    assert len(result) == 0 and result.base_versions == {} and result.problems.empty


# --- through the embedded service ---------------------------------------------------------------------------------


def run_plan(client: Any, result: UpdatePlan, versions: dict[str, str]) -> None:
    """Send every request in order, each with the image set's latest version (refreshed for ``affects``)."""
    for request in result.requests:
        response = client.update_image_set_metadata(**request.params, latestVersionId=versions[request.image_set_id])
        versions[request.image_set_id] = response["latestVersionId"]
        for touched in request.affects:
            found = client.get_image_set(datastoreId=result.datastore_id, imageSetId=touched)
            versions[touched] = found["versionId"]
        status = client.get_image_set(datastoreId=result.datastore_id, imageSetId=request.image_set_id)
        assert status["imageSetWorkflowStatus"] == "UPDATED", status.get("message")


def metadata(client: Any, datastore_id: str, image_set: str) -> dict[str, Any]:
    from curation.model.document import parse_document

    blob = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set)["imageSetMetadataBlob"]
    return parse_document(blob.read())


def test_a_split_plan_through_the_embedded_service(doppler: dict[str, Any], local_client: Any) -> None:
    store = local_client.meta.local_service.store
    report = store.import_documents([doppler, {**copy.deepcopy(doppler), "ImageSetID": "c" * 32}])  # not identical
    copy_id = report.created[1]  # the second import is not primary: everything is allowed with force
    document = metadata(local_client, report.datastore_id, copy_id)
    _, ser, sops = ids(document)
    snap = Snapshot.from_documents([document], datastore_id=report.datastore_id, version_ids={copy_id: "1"})
    snap.primary = {copy_id: False}
    rows = [
        row(copy_id, "Patient", "PatientName", "update", "MX^MX"),
        row(copy_id, "Study", "StudyDescription", "remove"),
        row(copy_id, "Series", "BodyPartExamined", "update", "HEART", SeriesInstanceUID=ser),
        row(copy_id, "Instance", None, "remove_instance", SeriesInstanceUID=ser, SOPInstanceUID=sops[1]),
        row(copy_id, "Instance", "001910F9", "add", "97", VR="DS", SeriesInstanceUID=ser, SOPInstanceUID=sops[2]),
        row(copy_id, "Instance", "SOPInstanceUID", "update", "1.2.3.9", SeriesInstanceUID=ser, SOPInstanceUID=sops[3]),
        *(
            row(copy_id, "Instance", "ImageComments", "add", f"n{n}", SeriesInstanceUID=ser, SOPInstanceUID=s)
            for n, s in enumerate(sops)
            if n != 1
        ),
    ]
    result = plan(changeset(snap, *rows), max_blob_bytes=400)
    assert len(result) > 2 and any(r.force for r in result.requests) and not all(r.force for r in result.requests)
    expected = result.preview(snap.documents, max_blob_bytes=400)[copy_id]
    run_plan(local_client, result, {copy_id: "1"})
    assert metadata(local_client, report.datastore_id, copy_id) == expected


def test_folding_through_the_embedded_service(doppler: dict[str, Any], local_client: Any) -> None:
    store = local_client.meta.local_service.store
    documents = study_siblings(doppler)[:2]
    report = store.import_documents(documents)
    names = report.created
    fetched = [metadata(local_client, report.datastore_id, n) for n in names]
    snap = Snapshot.from_documents(fetched, datastore_id=report.datastore_id, version_ids={n: "1" for n in names})
    snap.primary = {n: True for n in names}
    rows = [row(n, "Study", "StudyDescription", "update", "ECHO") for n in names]
    result = plan(changeset(snap, *rows), include_study_image_sets=True)
    assert len(result) == 1 and result.requests[0].affects == [names[1]]
    expected = result.preview(snap.documents, primary=snap.primary)
    run_plan(local_client, result, {n: "1" for n in names})
    for name in names:
        assert metadata(local_client, report.datastore_id, name) == expected[name]
        assert expected[name]["Study"]["DICOM"]["StudyDescription"] == "ECHO"


# --- the planner's fast validation path is apply_to_document ----------------------------------------------------

_VALUES = st.one_of(
    st.text("ABC^ 0123456789.", max_size=8),
    st.text("0123456789", min_size=1, max_size=4),
    st.integers(-3, 70000),
    st.sampled_from((1.5, None, True)),
    st.lists(st.text("AB0", max_size=3), max_size=3),
    st.just([{"RegionFlags": 1}]),
)


@st.composite
def _random_updates(draw: st.DrawFn, document: dict[str, Any]) -> dict[str, str]:
    """DICOMUpdates on ``document``, valid or not: attribute sets and removals (current or wrong values) at every
    level, new private tags with or without a VR, UID changes, instance and series removals."""
    series = list(document["Study"]["Series"])
    updatable: dict[str, Any] = {"SchemaVersion": 1.1}
    removable: dict[str, Any] = {"SchemaVersion": 1.1}
    for _ in range(draw(st.integers(1, 4))):
        blob = draw(st.sampled_from((updatable, updatable, removable)))
        level = draw(st.sampled_from(("Patient", "Study", "Series", "Instance", "Instance")))
        uid = draw(st.sampled_from(series))
        sops = list(document["Study"]["Series"][uid]["Instances"])
        sop = draw(st.sampled_from(sops))
        if level in ("Patient", "Study"):
            path: tuple[str, ...] = (level,)
            current = document[level]
        elif level == "Series":
            path, current = ("Study", "Series", uid), document["Study"]["Series"][uid]
        else:
            path = ("Study", "Series", uid, "Instances", sop)
            current = document["Study"]["Series"][uid]["Instances"][sop]
        kind = draw(st.sampled_from(("existing", "existing", "existing", "new", "private", "uid", "node")))
        if kind == "node" and level in ("Series", "Instance"):
            leaf: dict[str, Any] = {}
        else:
            if kind == "existing":
                key = draw(st.sampled_from(sorted(current["DICOM"])))
            elif kind == "new":
                key = draw(st.sampled_from(("ImageComments", "StageName", "PatientComments", "StudyID", "Rows")))
            elif kind == "private":
                key = draw(st.sampled_from(("00191010", "7FDD0010", "7FDF1001")))
            else:
                key = {"Series": "SeriesInstanceUID", "Instance": "SOPInstanceUID"}.get(level, "StudyInstanceUID")
            same = blob is removable and key in current["DICOM"] and draw(st.integers(0, 3)) > 0
            value = current["DICOM"][key] if same else draw(_VALUES)
            leaf = {"DICOM": {key: value}}
            if kind == "private" and draw(st.booleans()):
                leaf["DICOMVRs"] = {key: draw(st.sampled_from(("LO", "UN", "DS")))}
        node = blob
        for name in path[:-1]:
            node = node.setdefault(name, {})
        if not isinstance(node, dict) or path[-1] in node:
            continue
        node[path[-1]] = leaf
    updates = {}
    for name, payload in (("updatableAttributes", updatable), ("removableAttributes", removable)):
        if len(payload) > 1 or draw(st.booleans()):
            updates[name] = orjson.dumps(payload).decode()
    return updates or {"updatableAttributes": orjson.dumps(updatable).decode()}


OUTCOMES = {"ok": 0, "refused": 0}


def _reference(document: dict[str, Any], updates: dict[str, str], primary: bool) -> tuple:
    """What plan used to do: force_reasons, then apply_to_document with force exactly when needed."""
    try:
        reasons = force_reasons(document, updates, max_blob_bytes=30_000)
        params = {"updateImageSetMetadataUpdates": {"DICOMUpdates": updates}, "force": bool(reasons)}
        result = apply_to_document(document, params, is_primary=primary, max_blob_bytes=30_000)
    except AHIError as exc:
        return ("refused", exc.code, exc.message), None
    return ("ok", reasons, orjson.dumps(result)), result


def _fast(document: dict[str, Any], updates: dict[str, str], primary: bool) -> tuple:
    try:
        reasons, edits = check_updates(document, updates, is_primary=primary, max_blob_bytes=30_000)
    except AHIError as exc:
        return ("refused", exc.code, exc.message), None
    result = apply_checked(document, edits)
    return ("ok", reasons, orjson.dumps(result)), result


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), primary=st.booleans())
def test_check_updates_and_apply_checked_equal_force_reasons_then_apply_to_document(
    doppler_source: dict[str, Any], data: st.DataObject, primary: bool
) -> None:
    document = copy.deepcopy(doppler_source)
    uid = next(iter(document["Study"]["Series"]))
    second = copy.deepcopy(document["Study"]["Series"][uid])
    sops = list(second["Instances"])
    second["Instances"] = {f"{sop}.9": second["Instances"][sop] for sop in sops[:2]}
    document["Study"]["Series"][f"{uid}.9"] = second
    before = orjson.dumps(document)
    for _ in range(2):  # a second update on the first one's result checks chaining on shared nodes
        updates = data.draw(_random_updates(document))
        expected, reference = _reference(document, updates, primary)
        OUTCOMES[expected[0]] += 1
        got, result = _fast(document, updates, primary)
        assert got == expected, updates
        assert orjson.dumps(document) == before, "the input document was mutated"
        if result is None:
            break
        assert result is not document and reference is not None
        document = result  # its changed nodes are new: the input was not mutated, yet it equals the reference
        before = orjson.dumps(document)
