"""plan(changes, primary="promote"): the copy-and-promote procedure planned from DataFrame edits on imported data.

pydicom's CT_small.dcm (primary, GE private tags) is imported into the embedded service and fetched through a
real boto3 client over HTTP. The plans are checked for their steps, dependencies, payloads (against the AWS
code-library examples of UpdateImageSetMetadata, F13 of /work/team/primary-design.md) and digests; then
``run_steps`` sends every step, in the plan's order, with plain boto3 calls to the embedded service (which
enforces the promotion rule), and the new primaries are compared with what the plan expects. ``run_steps`` is a
test oracle for the plan, not the library's runner (``curation.apply`` is).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import generate_uid

import curation
from curation.curate.planstep import Ref, StepKind
from curation.curate.updateplan import PlanEditedError, PlanError, UpdatePlan
from curation.model.document import digest
from curation.model.errors import AHIError
from tests.conftest import endpoint_client

TEST_FILES = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files"
STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
CT_SOP = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
OPTION = 'plan(changes, primary="promote")'


def _write(
    directory: Path,
    name: str,
    *,
    series: str,
    sops: list[str],
    study: str | None = None,
    description: str | None = None,
) -> list[str]:
    paths = []
    for number, sop in enumerate(sops):
        ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = number + 1
        if study is not None:
            ds.StudyInstanceUID = study
        if description is not None:
            ds.StudyDescription = description
        path = directory / f"{name}-{number}.dcm"
        ds.save_as(path)
        paths.append(str(path))
    return paths


def _uid(*entropy: str) -> str:
    return generate_uid(entropy_srcs=list(entropy))


SERIES = [_uid("series", str(n)) for n in range(3)]
SOPS = [[_uid("sop", str(n), str(k)) for k in range(2 if n == 0 else 1)] for n in range(3)]
RENAMED = _uid("series", "0", "renamed")
OTHER_STUDY, OTHER_SERIES, OTHER_SOP = _uid("study", "other"), _uid("series", "other"), _uid("sop", "other")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """A fresh store served over HTTP and a boto3 client for it: (client, store)."""
    from curation.local.server import serving
    from curation.local.store import Store

    store = Store(tmp_path / "store")
    with serving(store) as endpoint:
        yield endpoint_client(endpoint), store


def imported(served: tuple[Any, Any], tmp_path: Path, *names: str) -> curation.Snapshot:
    """Import CT_small (``ct``), the three-series study (``study``: series 0 holds two instances) and/or a
    second study of the same patient (``other``); fetch them through the HTTP client."""
    client, store = served
    directory = tmp_path / "dicom"
    directory.mkdir(exist_ok=True)
    paths: list[str] = []
    if "ct" in names:
        paths.append(str(TEST_FILES / "CT_small.dcm"))
    if "study" in names:
        for n in range(3):
            paths += _write(directory, f"s{n}", series=SERIES[n], sops=SOPS[n])
    if "other" in names:
        paths += _write(
            directory, "other", series=OTHER_SERIES, sops=[OTHER_SOP], study=OTHER_STUDY, description="OTHER STUDY"
        )
    report = store.import_paths(paths)
    snapshot = curation.fetch(client, report.datastore_id, progress=False)
    assert all(snapshot.primary.values()), snapshot.primary
    return snapshot


def by_series(snapshot: curation.Snapshot, series: str) -> str:
    return next(i for i, d in snapshot.documents.items() if series in d["Study"]["Series"])


def kinds(plan: UpdatePlan, image_set: str) -> list[str]:
    return [str(s.kind) for s in plan.steps if s.original == image_set and s.kind is not StepKind.CHECK_STUDY]


def step(plan: UpdatePlan, step_id: str) -> Any:
    return next(s for s in plan.steps if s.step_id == step_id)


def payload(plan: UpdatePlan, image_set: str, name: str = "updatableAttributes") -> Any:
    (update,) = [s for s in plan.steps if s.step_id == f"{image_set}:update.0"]
    return update.payload(name)


PROCEDURE = ["copy", "update", "verify_copy", "delete_primary", "promote", "verify_primary", "delete_copy"]


# --- a test oracle: the plan's steps sent one by one with plain boto3 ----------------------------------------


def run_steps(client: Any, plan: UpdatePlan) -> dict[str, str]:
    """Send every step in the plan's order (checks compare digests); the image set each creating step made."""
    created: dict[str, str] = {}
    datastore = plan.datastore_id

    def resolve(target: Any) -> str:
        return created[target.step] if isinstance(target, Ref) else target

    def latest(image_set: str) -> str:
        return client.get_image_set(datastoreId=datastore, imageSetId=image_set)["versionId"]

    for item in plan.all_steps():
        target = resolve(item.target) if item.kind is not StepKind.CHECK_STUDY else None
        if item.kind is StepKind.UPDATE:
            client.update_image_set_metadata(
                datastoreId=datastore, imageSetId=target, latestVersionId=latest(target), **item.params
            )
        elif item.kind in (StepKind.COPY, StepKind.BACKUP, StepKind.PROMOTE):
            source: dict[str, Any] = {"latestVersionId": latest(target)}
            if item.params.get("copiableAttributes"):
                source["DICOMCopies"] = {"copiableAttributes": item.params["copiableAttributes"]}
            extra = {"promoteToPrimary": True} if item.kind is StepKind.PROMOTE else {}
            answer = client.copy_image_set(
                datastoreId=datastore,
                sourceImageSetId=target,
                copyImageSetInformation={"sourceImageSet": source},
                **extra,
            )
            created[item.step_id] = answer["destinationImageSetProperties"]["imageSetId"]
        elif item.kind.deletes:
            client.delete_image_set(datastoreId=datastore, imageSetId=target)
        elif item.expect is not None:
            info = client.get_image_set(datastoreId=datastore, imageSetId=target)
            assert info["isPrimary"] is (item.kind is StepKind.VERIFY_PRIMARY), item.step_id
            assert digest(metadata(client, datastore, target)) == item.expect, item.step_id
    return created


def metadata(client: Any, datastore: str, image_set: str) -> dict[str, Any]:
    import gzip

    blob = client.get_image_set_metadata(datastoreId=datastore, imageSetId=image_set)["imageSetMetadataBlob"]
    return orjson.loads(gzip.decompress(blob.read()))


def primaries(client: Any, datastore: str, study: str) -> dict[str, dict[str, Any]]:
    """The primary image sets of ``study`` now: ID -> document."""
    found = client.search_image_sets(
        datastoreId=datastore,
        searchCriteria={"filters": [{"values": [{"DICOMStudyInstanceUID": study}], "operator": "EQUAL"}]},
    )["imageSetsMetadataSummaries"]
    return {s["imageSetId"]: metadata(client, datastore, s["imageSetId"]) for s in found if s.get("isPrimary")}


# --- D5 and the option ------------------------------------------------------------------------------------


def test_refuse_mode_names_the_promote_option_and_unknown_modes_are_refused(served: Any, tmp_path: Path) -> None:
    snapshot = imported(served, tmp_path, "ct")
    studies = snapshot.studies.copy()
    studies["PatientName"] = "MX^MX"
    changes = curation.diff(snapshot, studies)
    with pytest.raises(PlanError) as refused:
        curation.plan(changes)
    assert OPTION in str(refused.value) and "promoteToPrimary" in str(refused.value)
    assert all(OPTION in reason for reason in refused.value.problems["reason"])
    with pytest.raises(ValueError, match='primary must be "refuse" or "promote", not \'copy\''):
        curation.plan(changes, primary="copy")  # type: ignore[arg-type]
    assert studies is not snapshot.studies and (snapshot.studies["PatientName"] == "CompressedSamples^CT1").all()


# --- the seven code-library use cases (F13) from DataFrame edits ------------------------------------------


def test_use_case_1_patient_name_is_planned_as_the_procedure_and_runs(served: Any, tmp_path: Path) -> None:
    client, _ = served
    snapshot = imported(served, tmp_path, "ct")
    (image_set,) = snapshot.image_set_ids
    studies = snapshot.studies.copy()
    studies["PatientName"] = "MX^MX"
    plan = curation.plan(curation.diff(snapshot, studies), primary="promote")
    assert not plan.requests and plan.members == [image_set]
    assert kinds(plan, image_set) == PROCEDURE
    (update,) = [s for s in plan.steps if s.kind is StepKind.UPDATE]
    assert update.params["updateImageSetMetadataUpdates"]["DICOMUpdates"]["updatableAttributes"] == (
        '{"SchemaVersion":1.1,"Patient":{"DICOM":{"PatientName":"MX^MX"}}}'
    )  # F13.1 byte for byte
    assert not update.force and update.target == Ref(f"{image_set}:copy")
    assert plan.base_versions == {image_set: snapshot.version_ids[image_set]}
    created = run_steps(client, plan)
    new = created[f"{image_set}:promote"]
    (found,) = primaries(client, plan.datastore_id, STUDY).items()
    assert found[0] == new != image_set and found[1]["Patient"]["DICOM"]["PatientName"] == "MX^MX"
    assert digest(found[1]) == digest(plan.preview(snapshot.documents)[image_set])
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_image_set_metadata(datastoreId=plan.datastore_id, imageSetId=created[f"{image_set}:copy"])


def test_use_cases_2_and_3_stay_plain_updates_on_a_primary(served: Any, tmp_path: Path) -> None:
    snapshot = imported(served, tmp_path, "study")
    a = by_series(snapshot, SERIES[0])
    studies = snapshot.studies.copy()
    studies.loc[a, "StudyDescription"] = curation.REMOVE
    instances = snapshot.instances.copy()
    dropped = instances.drop(index=(a, SERIES[0], SOPS[0][1]))
    plan = curation.plan(curation.diff(snapshot, [studies, dropped], rows="all"), primary="promote")
    assert not plan.steps and not plan.undo
    (request,) = plan.requests
    assert not request.force
    assert request.payload("removableAttributes") == {
        "SchemaVersion": 1.1,
        "Study": {"DICOM": {"StudyDescription": "e+1"}, "Series": {SERIES[0]: {"Instances": {SOPS[0][1]: {}}}}},
    }  # F13.2 and F13.3 shapes, without force (S8)


@pytest.fixture
def ct_plan(served: Any, tmp_path: Path) -> tuple[curation.Snapshot, Any]:
    return imported(served, tmp_path, "ct"), served[0]


def _instances_plan(snapshot: curation.Snapshot, column: str, value: str, **kwargs: Any) -> UpdatePlan:
    instances = snapshot.instances.copy()
    if column not in instances:
        instances[column] = pd.Series([value] * len(instances), index=instances.index, dtype="str")
    instances[column] = value
    return curation.plan(curation.diff(snapshot, instances, **kwargs), primary="promote")


def test_use_case_5_add_a_private_element_with_force_on_the_copy(ct_plan: Any) -> None:
    snapshot, client = ct_plan
    (image_set,) = snapshot.image_set_ids
    plan = _instances_plan(snapshot, "001910F9", "97", vrs={"001910F9": "DS"})
    assert kinds(plan, image_set) == PROCEDURE
    update = step(plan, f"{image_set}:update.0")
    assert update.force and any("private" in reason for reason in update.force_reasons)
    assert update.payload("updatableAttributes") == {
        "SchemaVersion": 1.1,
        "Study": {
            "Series": {
                "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322": {
                    "Instances": {CT_SOP: {"DICOM": {"001910F9": "97"}, "DICOMVRs": {"001910F9": "DS"}}}
                }
            }
        },
    }  # F13.5's shape
    run_steps(client, plan)
    (document,) = primaries(client, plan.datastore_id, STUDY).values()
    (series,) = document["Study"]["Series"].values()
    assert series["Instances"][CT_SOP]["DICOM"]["001910F9"] == "97"


def test_use_case_6_update_a_private_element_with_force_on_the_copy(ct_plan: Any) -> None:
    snapshot, _client = ct_plan
    (image_set,) = snapshot.image_set_ids
    plan = _instances_plan(snapshot, "00091001", "GE_GENESIS_DD")
    update = step(plan, f"{image_set}:update.0")
    assert update.force and update.payload("updatableAttributes") == {
        "SchemaVersion": 1.1,
        "Study": {
            "Series": {
                "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322": {
                    "Instances": {CT_SOP: {"DICOM": {"00091001": "GE_GENESIS_DD"}}}
                }
            }
        },
    }  # F13.6
    assert (
        plan.undo[image_set]
        .inverse[0]["updateImageSetMetadataUpdates"]["DICOMUpdates"]["updatableAttributes"]
        .count("GE_GENESIS_FF")
        == 1
    )  # revert puts the old value back


def test_use_case_7_sop_instance_uid_with_force_keyed_by_the_old_uid(ct_plan: Any) -> None:
    snapshot, client = ct_plan
    (image_set,) = snapshot.image_set_ids
    new_uid = CT_SOP + ".9"
    plan = _instances_plan(snapshot, "SOPInstanceUID", new_uid)
    update = step(plan, f"{image_set}:update.0")
    assert update.force and update.payload("updatableAttributes") == {
        "SchemaVersion": 1.1,
        "Study": {
            "Series": {
                "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322": {
                    "Instances": {CT_SOP: {"DICOM": {"SOPInstanceUID": new_uid}}}
                }
            }
        },
    }  # F13.7
    run_steps(client, plan)
    (document,) = primaries(client, plan.datastore_id, STUDY).values()
    (series,) = document["Study"]["Series"].values()
    assert list(series["Instances"]) == [new_uid]


def test_four_use_cases_in_one_plan_make_one_procedure_of_five_writes(ct_plan: Any) -> None:
    snapshot, client = ct_plan
    (image_set,) = snapshot.image_set_ids
    studies = snapshot.studies.copy()
    studies["PatientName"] = "MX^MX"
    instances = snapshot.instances.copy()
    instances["001910F9"] = pd.Series(["97"], index=instances.index, dtype="str")
    instances["00091001"] = "GE_GENESIS_DD"
    instances["SOPInstanceUID"] = CT_SOP + ".9"
    plan = curation.plan(curation.diff(snapshot, [studies, instances], vrs={"001910F9": "DS"}), primary="promote")
    writes = [s for s in plan.all_steps() if s.action is not None]
    assert [str(s.action) for s in writes] == [
        "CopyImageSet",
        "UpdateImageSetMetadata",
        "DeleteImageSet",
        "CopyImageSet",
        "DeleteImageSet",
    ]  # 4 + 1 update
    undo = plan.undo[image_set]
    assert undo.digest == digest(snapshot.documents[image_set]) and undo.post == 0 and undo.backup is None
    run_steps(client, plan)
    (document,) = primaries(client, plan.datastore_id, STUDY).values()
    assert digest(document) == step(plan, f"{image_set}:verify-primary").expect
    restored = document
    for params in undo.inverse:  # what revert sends to a copy of the new primary: the pre-plan content again
        restored = curation.apply_to_document(restored, params)
    assert digest(restored) == digest(snapshot.documents[image_set])


# --- a study: group and order (D10) ------------------------------------------------------------------------


def test_patient_name_across_a_three_series_study_is_one_group_deleting_all_before_promoting(
    served: Any, tmp_path: Path
) -> None:
    client, _ = served
    snapshot = imported(served, tmp_path, "study")
    members = [by_series(snapshot, s) for s in SERIES]
    studies = snapshot.studies.copy()
    studies.loc[studies["StudyInstanceUID"] == STUDY, "PatientName"] = "DOE^J"
    plan = curation.plan(curation.diff(snapshot, studies), primary="promote")
    assert {s.group for s in plan.steps} == {"g0"} and sorted(plan.members) == sorted(members)
    order = [s.step_id for s in plan.all_steps()]
    deletes = [order.index(f"{m}:delete-primary") for m in members]
    promotes = [order.index(f"{m}:promote") for m in members]
    verifies = [order.index(f"{m}:verify-copy") for m in members]
    assert max(verifies) < order.index("g0:check-study") < min(deletes) and max(deletes) < min(promotes)
    for member in members:
        assert set(step(plan, f"{member}:promote").after) == {f"{m}:delete-primary" for m in members}
        assert set(step(plan, f"{member}:delete-primary").after) >= {f"{m}:verify-copy" for m in members}
    assert step(plan, "g0:check-study").params["empties"] == [STUDY]
    first = plan.summary()
    assert f"between steps {min(deletes) + 1}-{min(promotes) + 1}" in first
    assert "6 DELETE an image set · 3 CHANGE an image set ID" in first
    run_steps(client, plan)  # the service enforces the promotion rule: this order passes
    found = primaries(client, plan.datastore_id, STUDY)
    assert len(found) == 3 and {d["Patient"]["DICOM"]["PatientName"] for d in found.values()} == {"DOE^J"}


def test_promoting_before_the_other_deletions_is_what_the_service_refuses(served: Any, tmp_path: Path) -> None:
    """The barrier is needed: promoting one renamed copy while the study's other primaries keep the old name
    is refused (the embedded service's strict reading of AHI's consistency rule)."""
    client, _ = served
    snapshot = imported(served, tmp_path, "study")
    members = [by_series(snapshot, s) for s in SERIES]
    studies = snapshot.studies.copy()
    studies.loc[studies["StudyInstanceUID"] == STUDY, "PatientName"] = "DOE^J"
    plan = curation.plan(curation.diff(snapshot, studies), primary="promote")
    first = members[0]
    hasty = [s for s in plan.all_steps() if s.original == first and s.kind is not StepKind.CHECK_STUDY]
    hasty = [s for s in hasty if s.kind not in (StepKind.VERIFY_PRIMARY, StepKind.DELETE_COPY)]
    partial = UpdatePlan.build(
        plan.datastore_id, plan.base_versions, [], None, [type(s)(**{**s.__dict__, "after": ()}) for s in hasty]
    )
    with pytest.raises(client.exceptions.ConflictException, match="PatientName"):
        run_steps(client, partial)


def test_a_patient_fix_on_part_of_a_study_is_a_problem_naming_the_attribute_and_the_siblings(
    served: Any, tmp_path: Path
) -> None:
    snapshot = imported(served, tmp_path, "study")
    a, b, c = (by_series(snapshot, s) for s in SERIES)
    studies = snapshot.studies.copy()
    studies.loc[a, "PatientName"] = "DOE^J"
    with pytest.raises(PlanError) as stopped:
        curation.plan(curation.diff(snapshot, studies), primary="promote")
    (problem,) = stopped.value.problems.to_dict("records")
    assert problem["ImageSetID"] == a and problem["attribute"] == "PatientName" and problem["row"] == a
    assert b in problem["reason"] and c in problem["reason"] and "CompressedSamples^CT1" in problem["reason"]
    assert f'studies.loc[studies["StudyInstanceUID"] == "{STUDY}", "PatientName"]' in problem["reason"]
    partial = curation.plan(curation.diff(snapshot, studies), primary="promote", allow_problems=True)
    assert not partial.steps and len(partial.problems) == 1


def test_study_level_plain_updates_run_before_a_series_fix_is_promoted(served: Any, tmp_path: Path) -> None:
    snapshot = imported(served, tmp_path, "study")
    a, b, c = (by_series(snapshot, s) for s in SERIES)
    studies = snapshot.studies.copy()
    studies["StudyDescription"] = "CHEST"
    series = snapshot.series.copy()
    series.loc[(a, SERIES[0]), "SeriesDescription"] = "AXIAL"
    plan = curation.plan(curation.diff(snapshot, [studies, series]), primary="promote")
    assert sorted(r.image_set_id for r in plan.requests) == sorted([b, c]) and plan.members == [a]
    assert set(step(plan, f"{a}:promote").after) == {f"{a}:delete-primary", f"{b}:update.0", f"{c}:update.0"}
    assert step(plan, "g0:check-study").params["empties"] == []
    run_steps(served[0], plan)
    found = primaries(served[0], plan.datastore_id, STUDY)
    assert {d["Study"]["DICOM"]["StudyDescription"] for d in found.values()} == {"CHEST"} and len(found) == 3


# --- moving a series to another study (D11) ---------------------------------------------------------------


def test_a_series_moved_to_another_study_ends_primary_there(served: Any, tmp_path: Path) -> None:
    client, _ = served
    snapshot = imported(served, tmp_path, "study", "other")
    mover, target = by_series(snapshot, SERIES[1]), by_series(snapshot, OTHER_SERIES)
    studies = snapshot.studies.copy()
    studies.loc[mover, "StudyInstanceUID"] = OTHER_STUDY
    with pytest.raises(PlanError) as stopped:
        curation.plan(curation.diff(snapshot, studies), primary="promote")
    (problem,) = stopped.value.problems.to_dict("records")
    assert problem["attribute"] == "StudyDescription" and "adopt_study" in problem["reason"]
    assert target in problem["reason"] and "'OTHER STUDY'" in problem["reason"]
    assert f"curation.adopt_study(studies, {mover!r}, like={target!r})" in problem["reason"]
    adopted = curation.adopt_study(snapshot.studies, [mover], like=target)
    assert adopted.loc[mover, "StudyInstanceUID"] == OTHER_STUDY and adopted is not snapshot.studies
    assert snapshot.studies.loc[mover, "StudyInstanceUID"] == STUDY  # the snapshot's frame is untouched
    by_hand = studies.copy()
    by_hand.loc[mover, "StudyDescription"] = "OTHER STUDY"
    plan = curation.plan(curation.diff(snapshot, adopted), primary="promote")
    assert plan == curation.plan(curation.diff(snapshot, by_hand), primary="promote")
    assert plan.members == [mover] and kinds(plan, mover) == PROCEDURE
    check = step(plan, "g0:check-study")
    assert check.target == OTHER_STUDY and check.params["primaries"] == [target]
    assert step(plan, f"{mover}:update.0").force
    run_steps(client, plan)
    moved = primaries(client, plan.datastore_id, OTHER_STUDY)
    assert len(moved) == 2 and any(SERIES[1] in d["Study"]["Series"] for d in moved.values())
    assert len(primaries(client, plan.datastore_id, STUDY)) == 2


# --- removals inside a procedure (D9) ---------------------------------------------------------------------


def test_an_instance_removal_of_a_member_goes_to_the_new_primary_after_promotion(served: Any, tmp_path: Path) -> None:
    client, _ = served
    snapshot = imported(served, tmp_path, "study")
    a = by_series(snapshot, SERIES[0])
    series = snapshot.series.copy()
    series.loc[(a, SERIES[0]), "SeriesInstanceUID"] = RENAMED
    instances = snapshot.instances.drop(index=(a, SERIES[0], SOPS[0][1]))
    plan = curation.plan(curation.diff(snapshot, [series, instances], rows="all"), primary="promote")
    post = step(plan, f"{a}:post.0")
    assert post.target == Ref(f"{a}:promote") and not post.force
    assert post.payload("removableAttributes") == {
        "SchemaVersion": 1.1,
        "Study": {"Series": {RENAMED: {"Instances": {SOPS[0][1]: {}}}}},
    }  # addressed by the series' new UID
    assert step(plan, f"{a}:delete-copy").after == (f"{a}:post.0",)
    assert plan.undo[a].post == 1
    run_steps(client, plan)
    (document,) = [d for d in primaries(client, plan.datastore_id, STUDY).values() if RENAMED in d["Study"]["Series"]]
    assert list(document["Study"]["Series"][RENAMED]["Instances"]) == [SOPS[0][0]]


def test_a_series_removal_is_backed_up_first_and_the_backup_kept(served: Any, tmp_path: Path) -> None:
    client, _ = served
    snapshot = imported(served, tmp_path, "study")
    a, b = by_series(snapshot, SERIES[0]), by_series(snapshot, SERIES[1])
    version = snapshot.version_ids[b]
    client.copy_image_set(
        datastoreId=snapshot.datastore_id,
        sourceImageSetId=b,
        copyImageSetInformation={
            "sourceImageSet": {"latestVersionId": version},
            "destinationImageSet": {"imageSetId": a, "latestVersionId": snapshot.version_ids[a]},
        },
    )
    snapshot = curation.fetch(client, snapshot.datastore_id, progress=False)
    assert set(snapshot.documents[a]["Study"]["Series"]) == {SERIES[0], SERIES[1]}
    series = snapshot.series.drop(index=(a, SERIES[1]))
    instances = snapshot.instances.drop(index=[i for i in snapshot.instances.index if i[:2] == (a, SERIES[1])])
    plan = curation.plan(curation.diff(snapshot, [series, instances], rows="all"), primary="promote")
    assert kinds(plan, a) == ["backup", *PROCEDURE]
    backup = step(plan, f"{a}:backup")
    assert orjson.loads(backup.params["copiableAttributes"]) == {
        "SchemaVersion": 1.1,
        "Study": {"Series": {SERIES[1]: {"Instances": {SOPS[1][0]: {}}}}},
    }
    assert f"{a}:backup" in step(plan, f"{a}:delete-primary").after and plan.undo[a].backup == f"{a}:backup"
    assert not any(s.kind is StepKind.DELETE_COPY and s.target == Ref(f"{a}:backup") for s in plan.steps)
    assert "retained" in plan.describe()
    created = run_steps(client, plan)
    kept = metadata(client, plan.datastore_id, created[f"{a}:backup"])
    assert set(kept["Study"]["Series"]) == {SERIES[1]}


# --- bad input, save/load, display ------------------------------------------------------------------------


def test_conflicting_edits_are_a_problem_naming_rows_in_promote_mode(served: Any, tmp_path: Path) -> None:
    snapshot = imported(served, tmp_path, "ct")
    (image_set,) = snapshot.image_set_ids
    changes = curation.diff(snapshot, snapshot.studies.assign(PatientName="MX^MX"))
    twice = changes.changes.copy()
    other = twice.iloc[[0]].copy()
    other["new"], other["row"] = "NOT^MX", "second frame"
    changes.changes = pd.concat([twice, other], ignore_index=True)
    with pytest.raises(PlanError) as stopped:
        curation.plan(changes, primary="promote")
    (problem,) = stopped.value.problems.to_dict("records")
    assert problem["ImageSetID"] == image_set and problem["attribute"] == "PatientName"
    assert "conflicting changes of PatientName" in problem["reason"] and "row" in problem["reason"]


def test_a_promote_plan_saves_loads_and_refuses_an_edited_step(ct_plan: Any, tmp_path: Path) -> None:
    snapshot, _ = ct_plan
    studies = snapshot.studies.copy()
    studies["PatientName"] = "MX^MX"
    plan = curation.plan(curation.diff(snapshot, studies), primary="promote")
    again = curation.plan(curation.diff(snapshot, studies), primary="promote")
    assert again.plan_id == plan.plan_id  # deterministic
    plan.save(tmp_path / "plan.json")
    loaded = UpdatePlan.load(tmp_path / "plan.json")
    assert loaded == plan and loaded.plan_id == plan.plan_id and loaded.steps == plan.steps
    assert loaded.undo == plan.undo
    data = orjson.loads(plan.to_json())
    assert data["format_version"] == 2 and data["steps"][1]["target"] == {"created_by": plan.steps[0].step_id}
    data["steps"][1]["params"]["force"] = True
    with pytest.raises(PlanEditedError, match="procedure step 1 differs"):
        UpdatePlan.from_dict(data)


def test_the_display_shows_every_step_and_marks_and_counts_deletes_and_new_ids(ct_plan: Any) -> None:
    snapshot, _ = ct_plan
    (_image_set,) = snapshot.image_set_ids
    studies = snapshot.studies.copy()
    studies["PatientName"] = "MX^MX"
    studies["StudyDescription"] = "CHEST"
    plan = curation.plan(curation.diff(snapshot, studies), primary="promote")
    first = plan.summary()
    assert first.startswith(f"UpdatePlan {plan.plan_id}: 1 image set(s) (1 through copy-and-promote), 8 steps")
    assert "2 DELETE an image set · 1 CHANGE an image set ID" in first
    assert "8 steps" in repr(plan) and "2 DELETE" in repr(plan)
    text = plan.describe().splitlines()
    assert text[0] == first and len(text) == 1 + len(plan.all_steps())
    assert sum("[DELETE]" in line for line in text) == 2 and sum("[NEW ID]" in line for line in text) == 1
    assert sum("# check:" in line for line in text) == 3
    frame = plan.steps_frame()
    assert list(frame["step"]) == list(range(1, 9)) and frame["deletes"].sum() == 2 and frame["new_id"].sum() == 1
    assert frame.loc[frame["kind"] == "promote", "target"].item().startswith("<image set created by step #1")
    html = plan._repr_html_()
    assert first.replace("'", "&#x27;") in html and html.count("[DELETE]") >= 2 and "NEW ID" in html


def test_a_non_primary_image_set_stays_plain_with_force(ct_plan: Any) -> None:
    snapshot, _ = ct_plan
    (image_set,) = snapshot.image_set_ids
    snapshot.primary = {image_set: False}
    plan = _instances_plan(snapshot, "00091001", "GE_GENESIS_DD")
    assert not plan.steps and plan.requests[0].force


def test_undo_inverse_failures_are_checked_by_the_planner(ct_plan: Any) -> None:
    """Every member's undo reproduces the pre-plan digest (D12): checked here independently of the planner."""
    snapshot, _ = ct_plan
    (image_set,) = snapshot.image_set_ids
    plan = _instances_plan(snapshot, "001910F9", "97", vrs={"001910F9": "DS"})
    restored = plan.preview(snapshot.documents)[image_set]
    for params in plan.undo[image_set].inverse:
        try:
            restored = curation.apply_to_document(restored, params)
        except AHIError as exc:  # pragma: no cover - shown if it ever fails
            pytest.fail(f"inverse refused: {exc}")
    assert digest(restored) == plan.undo[image_set].digest == digest(snapshot.documents[image_set])


# --- property: any plan's order passes the promotion rule and deletes nothing before its group is verified ---


@pytest.fixture(scope="module")
def study_snapshot(tmp_path_factory: pytest.TempPathFactory) -> curation.Snapshot:
    import curation.local
    from curation.local.store import Store

    directory = tmp_path_factory.mktemp("promote-property")
    paths = [p for n in range(3) for p in _write(directory, f"s{n}", series=SERIES[n], sops=SOPS[n])]
    paths += _write(
        directory, "other", series=OTHER_SERIES, sops=[OTHER_SOP], study=OTHER_STUDY, description="OTHER STUDY"
    )
    store = Store(directory / "store")
    report = store.import_paths(paths)
    return curation.fetch(curation.local.client(store), report.datastore_id, progress=False)


def _simulate(plan: UpdatePlan, snapshot: curation.Snapshot) -> dict[str, dict[str, Any]]:
    """Run the plan's steps in order on documents with the promotion rule; the primaries at the end."""
    from curation.model.document import primary_facts
    from curation.model.rules import promotion_refusal

    live = {k: v for k, v in snapshot.documents.items() if snapshot.primary.get(k)}
    made: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for item in plan.all_steps():
        assert set(item.after) <= seen, item.step_id
        target = item.target
        if item.kind is StepKind.COPY:
            made[item.step_id] = live[str(target)]
        elif item.kind is StepKind.UPDATE:
            key = target.step if isinstance(target, Ref) else str(target)
            pool = made if isinstance(target, Ref) else live
            pool[key] = curation.apply_to_document(pool[key], item.params, is_primary=pool is live)
        elif item.kind is StepKind.DELETE_PRIMARY:
            group = {s.step_id for s in plan.steps if s.group == item.group and s.kind is StepKind.VERIFY_COPY}
            assert group <= seen, f"{item.step_id} before every copy of {item.group} is verified"
            del live[str(target)]
        elif item.kind is StepKind.PROMOTE:
            document = made[target.step]
            refusal = promotion_refusal(primary_facts(document, "new"), [primary_facts(d, k) for k, d in live.items()])
            assert refusal is None, f"{item.step_id}: {refusal.message}"
            live[item.step_id] = made[item.step_id] = document
        elif item.expect is not None:
            assert digest(made[target.step]) == item.expect, item.step_id
        seen.add(item.step_id)
    return live


EDIT = st.sampled_from([None, "NEW"])


@settings(max_examples=12, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    patient=st.tuples(EDIT, EDIT, EDIT),
    series=st.tuples(EDIT, EDIT, EDIT),
    study=EDIT,
    move=st.sampled_from([None, 0, 1, 2]),
)
def test_every_planned_order_passes_the_promotion_rule(
    study_snapshot: curation.Snapshot, patient: tuple, series: tuple, study: Any, move: Any
) -> None:
    snapshot = study_snapshot
    members = [by_series(snapshot, s) for s in SERIES]
    studies, frame = snapshot.studies.copy(), snapshot.series.copy()
    for n, image_set in enumerate(members):
        if patient[n]:
            studies.loc[image_set, "PatientName"] = f"DOE^{patient[n]}"
        if series[n]:
            frame.loc[(image_set, SERIES[n]), "SeriesDescription"] = series[n]
        if study:
            studies.loc[image_set, "StudyDescription"] = study
    if move is not None:
        studies = curation.adopt_study(studies, members[move], like=by_series(snapshot, OTHER_SERIES))
    plan = curation.plan(curation.diff(snapshot, [studies, frame]), primary="promote", allow_problems=True)
    end = _simulate(plan, snapshot)
    by_study: dict[Any, set[str]] = {}
    for document in end.values():
        dicom = document["Study"]["DICOM"]
        by_study.setdefault(dicom["StudyInstanceUID"], set()).add(
            orjson.dumps([document["Patient"]["DICOM"], dicom], option=orjson.OPT_SORT_KEYS).decode()
        )
    if not len(plan.problems):  # (a member left out may leave its study's plain updates uneven: allowed, S6)
        assert all(len(values) == 1 for values in by_study.values())  # every study's primaries agree at the end
    assert set(plan.problems["ImageSetID"]) | set(plan.members) | {r.image_set_id for r in plan.requests} >= {
        m for n, m in enumerate(members) if patient[n] or series[n] or study or move == n
    }


def test_a_study_renamed_while_one_series_moves_out_checks_both_studies(served: Any, tmp_path: Path) -> None:
    client, _ = served
    snapshot = imported(served, tmp_path, "study", "other")
    a, b, c = (by_series(snapshot, s) for s in SERIES)
    target = by_series(snapshot, OTHER_SERIES)
    studies = snapshot.studies.copy()
    studies.loc[[a, b, c], "PatientName"] = "DOE^J"
    studies = curation.adopt_study(studies, [c], like=target)  # c keeps the other study's patient values
    plan = curation.plan(curation.diff(snapshot, studies), primary="promote")
    checks = [s for s in plan.steps if s.kind is StepKind.CHECK_STUDY]
    assert sorted(s.step_id for s in checks) == ["g0:check-study", "g0:check-study.1"]
    by_study = {s.target: s for s in checks}
    assert by_study[STUDY].params["empties"] == [STUDY] and by_study[OTHER_STUDY].params["empties"] == []
    assert by_study[OTHER_STUDY].params["primaries"] == [target] and by_study[OTHER_STUDY].original == c
    assert set(step(plan, f"{a}:promote").after) == {f"{m}:delete-primary" for m in (a, b, c)}
    assert step(plan, f"{c}:promote").after == (f"{c}:delete-primary",)
    for member in (a, b, c):
        assert {"g0:check-study", "g0:check-study.1"} <= set(step(plan, f"{member}:delete-primary").after)
    run_steps(client, plan)
    assert len(primaries(client, plan.datastore_id, STUDY)) == 2
    moved = primaries(client, plan.datastore_id, OTHER_STUDY)
    assert len(moved) == 2 and {d["Patient"]["DICOM"]["PatientName"] for d in moved.values()} == {
        "CompressedSamples^CT1"
    }


def test_a_study_wide_update_runs_before_the_copy_of_a_member_it_touches(served: Any, tmp_path: Path) -> None:
    """D8: with include_study_image_sets the folded Study-level update also changes the member's primary, so
    the member is copied after it, and its copy's updates are planned on the document it leaves."""
    client, _ = served
    snapshot = imported(served, tmp_path, "study")
    members = sorted(by_series(snapshot, s) for s in SERIES)
    studies = snapshot.studies.copy()
    studies["StudyDescription"] = "CHEST"
    last = members[-1]
    (series_uid,) = [s for s in SERIES if by_series(snapshot, s) == last]
    series = snapshot.series.copy()
    series.loc[(last, series_uid), "SeriesDescription"] = "AXIAL"
    plan = curation.plan(curation.diff(snapshot, [studies, series]), primary="promote", include_study_image_sets=True)
    (carrier,) = plan.requests
    assert carrier.include_study_image_sets and last in carrier.affects and plan.members == [last]
    assert step(plan, f"{last}:copy").after == (carrier.step_id,)
    assert "CHEST" not in str(step(plan, f"{last}:update.0").params)  # the study-wide request carries it
    undo = plan.undo[last]  # revert goes back to the pre-plan document, the study-wide change included
    assert undo.digest == digest(snapshot.documents[last]) and "StudyDescription" in str(undo.inverse)
    run_steps(client, plan)
    found = primaries(client, plan.datastore_id, STUDY)
    assert {d["Study"]["DICOM"]["StudyDescription"] for d in found.values()} == {"CHEST"} and len(found) == 3
    restored = step(plan, f"{last}:verify-primary")
    assert restored.expect in {digest(d) for d in found.values()}


def test_an_unknown_primary_flag_is_treated_as_primary_and_the_plan_says_so(ct_plan: Any) -> None:
    snapshot, _ = ct_plan
    (image_set,) = snapshot.image_set_ids
    snapshot.primary = {}
    studies = snapshot.studies.copy()
    studies["PatientName"] = "MX^MX"
    changes = curation.diff(snapshot, studies)
    plan = curation.plan(changes, primary="promote")
    assert plan.members == [image_set]
    assert "primary flag unknown: treated as primary" in step(plan, f"{image_set}:copy").description


def test_a_new_uid_held_by_another_primary_is_a_problem_before_anything_is_planned(served: Any, tmp_path: Path) -> None:
    snapshot = imported(served, tmp_path, "study", "other")
    a = by_series(snapshot, SERIES[1])
    other = by_series(snapshot, OTHER_SERIES)
    instances = snapshot.instances.copy()
    instances.loc[(a, SERIES[1], SOPS[1][0]), "SOPInstanceUID"] = OTHER_SOP  # a SOP instance of the other study
    with pytest.raises(PlanError) as stopped:
        curation.plan(curation.diff(snapshot, instances), primary="promote")
    (problem,) = stopped.value.problems.to_dict("records")
    assert problem["ImageSetID"] == a and problem["attribute"] == "SOPInstanceUID"
    assert (
        f"its promotion would be refused: SOPInstanceUID {OTHER_SOP} is already held by primary image set {other}"
        in (problem["reason"])
    )


def test_adopt_study_copies_the_target_values_and_removes_what_it_lacks() -> None:
    studies = pd.DataFrame(
        {
            "StudyInstanceUID": ["1.2", "1.3"],
            "PatientName": ["A^B", "C^D"],
            "AccessionNumber": ["X1", None],
            "StudyID": [1, 2],
            "@ImageSetID": ["keep", "other"],
        },
        index=pd.Index(["a" * 32, "b" * 32], name="ImageSetID"),
    ).astype(
        {
            "StudyInstanceUID": "str",
            "PatientName": "str",
            "AccessionNumber": "str",
            "StudyID": "Int64",
            "@ImageSetID": object,
        }
    )
    before = studies.copy()
    adopted = curation.adopt_study(studies, "a" * 32, like="b" * 32)
    pd.testing.assert_frame_equal(studies, before)  # never modified
    row = adopted.loc["a" * 32]
    assert (row["StudyInstanceUID"], row["PatientName"], row["StudyID"], row["@ImageSetID"]) == (
        "1.3",
        "C^D",
        2,
        "keep",
    )
    assert row["AccessionNumber"] is curation.REMOVE or row["AccessionNumber"] == curation.REMOVE
    with pytest.raises(KeyError, match="like="):
        curation.adopt_study(studies, ["a" * 32], like="c" * 32)


def test_a_plan_without_procedures_is_the_same_plan_in_both_modes(ct_plan: Any) -> None:
    """Changes AHI accepts on a primary stay plain updates; the plan (and its hash) is the refuse-mode one."""
    snapshot, _ = ct_plan
    studies = snapshot.studies.copy()
    studies["StudyDescription"] = "CHEST"
    changes = curation.diff(snapshot, studies)
    promoted, refused = curation.plan(changes, primary="promote"), curation.plan(changes)
    assert promoted.plan_id == refused.plan_id and not promoted.steps and "steps" not in promoted.to_dict()


def test_a_member_is_planned_without_trying_each_change_alone(
    served: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A primary taken as a member skips the per-change diagnosis of the refused plain attempt (quadratic in the
    image set's size: 144 s for a de-identification of the three reference documents); refuse mode still names
    the rows at fault."""
    from curation.curate import planner

    snapshot = imported(served, tmp_path, "ct")
    studies = snapshot.studies.copy()
    studies["PatientName"] = "MX^MX"
    changes = curation.diff(snapshot, studies)
    diagnosed: list[str] = []
    real = planner._row_problems
    monkeypatch.setattr(planner, "_row_problems", lambda *a, **k: diagnosed.append(a[1]) or real(*a, **k))
    plan = curation.plan(changes, primary="promote")
    assert plan.members == list(snapshot.image_set_ids) and diagnosed == []
    with pytest.raises(PlanError) as refused:
        curation.plan(changes)
    assert diagnosed == list(snapshot.image_set_ids) and refused.value.problems["column"].tolist() == ["PatientName"]
