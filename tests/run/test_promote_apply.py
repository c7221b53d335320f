"""Copy-and-promote procedures applied over HTTP against the embedded service: a PatientName fix on imported
primaries, verified, mapped, reverted; and the faults that must stop a procedure before anything is deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curation.model.document import digest
from curation.run.applying import apply
from curation.run.journal import read_journal
from curation.run.mapping import id_mapping
from curation.run.options import PollPolicy
from curation.run.retries import RetryPolicy
from tests.run.conftest import ct_series
from tests.run.promote_plans import fetch_document, patient_name, promote_plan

FAST: dict[str, Any] = {
    "progress": False,
    "poll": PollPolicy(initial=0.002, max_interval=0.01, timeout=30),
    "retries": RetryPolicy(max_attempts=12, base_delay=0.002, max_delay=0.01),
    "control_rate": None,
    "rate": None,
    # no client-side quota: the embedded service enforces none here (the benchmark runs at AHI's quotas)
    "quotas": {a: (10_000, 10_000) for a in ("CopyImageSet", "DeleteImageSet", "UpdateImageSetMetadata")},
}


def _import(store: Any, tmp_path: Path, count: int, **kwargs: Any) -> tuple[str, list[str]]:
    report = store.import_paths(ct_series(tmp_path, count, **kwargs))
    assert not report.failures
    return report.datastore_id, report.created


def _primaries(client: Any, datastore_id: str) -> dict[str, Any]:
    pages = client.get_paginator("search_image_sets").paginate(
        datastoreId=datastore_id, searchCriteria={"filters": [{"operator": "EQUAL", "values": [{"isPrimary": True}]}]}
    )
    return {s["imageSetId"]: s for page in pages for s in page["imageSetsMetadataSummaries"]}


def test_patient_name_fixed_on_an_imported_primary(served: Any, tmp_path: Path) -> None:
    store, _, client = served
    datastore_id, (image_set,) = _import(store, tmp_path, 1)
    before, _ = fetch_document(client, datastore_id, image_set)
    plan = promote_plan(client, datastore_id, {image_set: patient_name("MX^MX")})
    journal = tmp_path / "j.jsonl"
    result = apply(plan, client, journal, **FAST)
    (row,) = result.to_dict("records")
    assert row["status"] == "applied", row
    new = row["new_image_set_id"]
    assert new and new != image_set
    assert id_mapping(result) == {image_set: new} == id_mapping(journal)
    document, _ = fetch_document(client, datastore_id, new)
    assert document["Patient"]["DICOM"]["PatientName"] == "MX^MX"
    assert set(_primaries(client, datastore_id)) == {new}
    old = client.get_image_set(datastoreId=datastore_id, imageSetId=image_set)
    assert old["imageSetState"] == "DELETED"
    # frames intact: the same ImageFrames (IDs and checksums) and the same pixel bytes
    frames = [i["ImageFrames"] for s in document["Study"]["Series"].values() for i in s["Instances"].values()]
    assert frames == [i["ImageFrames"] for s in before["Study"]["Series"].values() for i in s["Instances"].values()]
    kinds = [r.get("step_kind") for r in read_journal(journal) if r.get("status") == "done"]
    assert kinds == [
        "copy",
        "update",
        "verify_copy",
        "check_study",
        "delete_primary",
        "promote",
        "verify_primary",
        "delete_copy",
    ]
    calls = served[1].service.calls
    assert (calls["CopyImageSet"], calls["DeleteImageSet"], calls["UpdateImageSetMetadata"]) == (2, 2, 1)


def test_verify_follows_the_mapping_and_revert_restores_the_content_under_a_third_id(
    served: Any, tmp_path: Path
) -> None:
    from curation.run.mapping import rekey
    from curation.run.reverting import revert
    from curation.run.verifying import verify

    store, _, client = served
    study = "1.2.826.0.1.3680043.8.498.77"
    datastore_id, originals = _import(store, tmp_path, 3, study_uid=study, seed="three")
    before = {i: fetch_document(client, datastore_id, i)[0] for i in originals}
    plan = promote_plan(client, datastore_id, {i: patient_name("DOE^JANE") for i in originals})
    journal = tmp_path / "j.jsonl"
    result = apply(plan, client, journal, **FAST)
    assert (result["status"] == "applied").all(), result
    mapping = id_mapping(result)
    assert set(mapping) == set(originals) and not set(mapping.values()) & set(originals)
    # the group's three primaries are all deleted before the first promotion (the study's barrier)
    done = [(r["step_kind"], r["original"]) for r in read_journal(journal) if r.get("status") == "done"]
    kinds = [k for k, _ in done]
    assert max(i for i, k in enumerate(kinds) if k == "delete_primary") < kinds.index("promote")
    assert verify(plan, client, journal, progress=False).empty
    unjournaled = verify(plan, client, progress=False)
    assert sorted(unjournaled["ImageSetID"]) == sorted(originals)
    assert unjournaled["note"].str.contains("ID changed").all()
    # a user's frame re-keyed: a new frame, the user's untouched
    import pandas as pd

    frame = pd.DataFrame({"ImageSetID": originals, "x": range(3)})
    rekeyed = rekey(frame, mapping)
    assert list(rekeyed["ImageSetID"]) == [mapping[i] for i in originals]
    assert list(frame["ImageSetID"]) == originals
    reverted = revert(journal, client, **FAST)
    assert (reverted["status"] == "applied").all(), reverted
    third = id_mapping(reverted)
    for original in originals:
        new = mapping[original]
        final = third[original]
        assert third[new] == final and final not in (original, new)
        document, _ = fetch_document(client, datastore_id, final)
        assert digest(document) == digest(before[original])  # exact: frames and every attribute
    assert set(_primaries(client, datastore_id)) == {third[i] for i in originals}
    again = revert(journal, client, **FAST)  # resumed: nothing more is sent
    assert (again["status"] == "applied").all()
    assert set(_primaries(client, datastore_id)) == {third[i] for i in originals}


# --- faults: nothing is deleted unless the replacement is verified in place ----------------------------------------


def _once(client: Any, operation: str, action: Any) -> None:
    """Run ``action()`` once, right after the first answered ``operation`` call of ``client``."""
    fired: list[bool] = []

    def hook(**_: Any) -> None:
        if not fired:
            fired.append(True)
            action()

    client.meta.events.register(f"after-call.medical-imaging.{operation}", hook)


def _statuses(client: Any, datastore_id: str, ids: list[str]) -> dict[str, str]:
    return {i: client.get_image_set(datastoreId=datastore_id, imageSetId=i)["imageSetState"] for i in ids}


def test_another_writer_between_copy_and_delete_stops_the_image_set_naming_the_versions(
    served: Any, tmp_path: Path
) -> None:
    store, _, client = served
    datastore_id, (image_set,) = _import(store, tmp_path, 1)
    plan = promote_plan(client, datastore_id, {image_set: patient_name("MX^MX")})
    version = plan.base_versions[image_set]

    def other_writer() -> None:  # a Study-level edit, allowed on a primary, by someone else
        blob = '{"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "OTHER WRITER"}}}'
        store.call(
            "UpdateImageSetMetadata",
            {
                "datastoreId": datastore_id,
                "imageSetId": image_set,
                "latestVersionId": version,
                "updateImageSetMetadataUpdates": {"DICOMUpdates": {"updatableAttributes": blob}},
            },
        )

    _once(client, "CopyImageSet", other_writer)
    result = apply(plan, client, tmp_path / "j.jsonl", **FAST)
    (row,) = result.to_dict("records")
    assert row["status"] == "conflict"
    assert f"planned against version {version}, found {int(version) + 1}" in row["error"]
    assert "nothing deleted" in row["error"] and "the working copy" in row["error"]
    assert _statuses(client, datastore_id, [image_set]) == {image_set: "ACTIVE"}
    assert served[1].service.calls.get("DeleteImageSet", 0) == 0


def test_a_copy_that_ends_copy_failed_leaves_the_primary_untouched(served: Any, tmp_path: Path) -> None:
    store, _, client = served
    datastore_id, (image_set,) = _import(store, tmp_path, 1)
    before = fetch_document(client, datastore_id, image_set)
    plan = promote_plan(client, datastore_id, {image_set: patient_name("MX^MX")})
    store.fail_next_copies(1, "INTERNAL_ERROR: the copy broke", promote=False)
    result = apply(plan, client, tmp_path / "j.jsonl", **FAST)
    (row,) = result.to_dict("records")
    assert row["status"] == "failed" and "the copy broke" in row["error"]
    assert fetch_document(client, datastore_id, image_set) == before
    assert served[1].service.calls.get("DeleteImageSet", 0) == 0
    orphans = [r for r in read_journal(tmp_path / "j.jsonl") if r.get("kind") == "orphan"]
    assert len(orphans) == 1 and "COPY_FAILED" in orphans[0]["reason"]  # listed for cleanup


def test_a_failed_promotion_is_incomplete_held_by_the_copy_and_promoted_on_resume(served: Any, tmp_path: Path) -> None:
    store, _, client = served
    datastore_id, (image_set,) = _import(store, tmp_path, 1)
    plan = promote_plan(client, datastore_id, {image_set: patient_name("MX^MX")})
    store.fail_next_copies(1, "INTERNAL_ERROR: the promotion broke", promote=True)
    journal = tmp_path / "j.jsonl"
    (row,) = apply(plan, client, journal, **FAST).to_dict("records")
    assert row["status"] == "incomplete" and row["held_by"]
    assert "the promotion broke" in row["error"]
    held = client.get_image_set(datastoreId=datastore_id, imageSetId=row["held_by"])
    assert held["imageSetState"] == "ACTIVE" and not held["isPrimary"]
    (again,) = apply(plan, client, journal, **FAST).to_dict("records")
    assert again["status"] == "applied"
    document, _ = fetch_document(client, datastore_id, again["new_image_set_id"])
    assert document["Patient"]["DICOM"]["PatientName"] == "MX^MX"


def _conflicting_primary(store: Any, tmp_path: Path, study: str) -> Any:
    """Import, into ``study``, a new series whose Patient/Study values are the study's current ones."""

    def action() -> None:
        report = store.import_paths(ct_series(tmp_path / "late", 1, study_uid=study, seed="late"))
        assert not report.failures and report.created

    (tmp_path / "late").mkdir()
    return action


def test_a_conflicting_primary_before_the_study_check_stops_the_group_before_any_delete(
    served: Any, tmp_path: Path
) -> None:
    store, _, client = served
    study = "1.2.826.0.1.3680043.8.498.5"
    datastore_id, originals = _import(store, tmp_path, 2, study_uid=study, seed="pair")
    plan = promote_plan(client, datastore_id, {i: patient_name("NEW^NAME") for i in originals})
    _once(client, "UpdateImageSetMetadata", _conflicting_primary(store, tmp_path, study))
    result = apply(plan, client, tmp_path / "j.jsonl", **FAST)
    assert set(result["status"]) <= {"conflict", "stopped"} and "conflict" in set(result["status"])
    error = " ".join(result["error"].dropna())
    assert "PatientName" in error and "nothing deleted" in error and "would be refused" in error
    assert served[1].service.calls.get("DeleteImageSet", 0) == 0
    assert set(_statuses(client, datastore_id, originals).values()) == {"ACTIVE"}


def test_a_promotion_refused_for_a_conflict_stops_the_group_naming_the_attribute(served: Any, tmp_path: Path) -> None:
    store, _, client = served
    study = "1.2.826.0.1.3680043.8.498.6"
    datastore_id, (image_set,) = _import(store, tmp_path, 1, study_uid=study, seed="solo")
    plan = promote_plan(client, datastore_id, {image_set: patient_name("NEW^NAME")})
    # once the primary is deleted, an import into its study lands primary with the old PatientName
    _once(client, "DeleteImageSet", _conflicting_primary(store, tmp_path, study))
    (row,) = apply(plan, client, tmp_path / "j.jsonl", **FAST).to_dict("records")
    assert row["status"] == "incomplete" and "PatientName" in row["error"]
    assert row["held_by"] and "content safe in non-primary image set" in row["error"]
    assert served[1].service.calls["DeleteImageSet"] == 1  # the copy is kept: nothing more deleted
    held = client.get_image_set(datastoreId=datastore_id, imageSetId=row["held_by"])
    assert held["imageSetState"] == "ACTIVE"


class _LosesCopyAnswers:
    """A backend that makes the first CopyImageSet and then answers 500, as a lost response looks: botocore
    retries it and a second copy lands (CopyImageSet has no client token)."""

    def __init__(self, store: Any) -> None:
        self.store, self.lost = store, 0

    def call(self, operation_name: str, params: dict[str, Any]) -> dict[str, Any]:
        from curation.model.errors import AHIError

        result = self.store.call(operation_name, params)
        if operation_name == "CopyImageSet" and not self.lost:
            self.lost += 1
            raise AHIError("InternalServerException", "the answer was lost after the copy was made")
        return result


def test_a_copy_retried_by_botocore_that_landed_twice_leaves_an_orphan_not_a_second_copy_of_ours(
    local_store: Any, tmp_path: Path, fast_botocore_backoff: None
) -> None:
    from botocore.config import Config

    import curation.local
    from curation.local.service import Service

    datastore_id, (image_set,) = _import(local_store, tmp_path, 1)
    client = curation.local.client(
        Service(_LosesCopyAnswers(local_store)), config=Config(retries={"mode": "standard", "total_max_attempts": 3})
    )
    plan = promote_plan(client, datastore_id, {image_set: patient_name("MX^MX")})
    journal = tmp_path / "j.jsonl"
    (row,) = apply(plan, client, journal, **FAST).to_dict("records")
    assert row["status"] == "applied"
    records = read_journal(journal)
    (orphan,) = [r for r in records if r.get("kind") == "orphan"]
    assert "duplicate copy" in orphan["reason"]
    copies = {r["created"] for r in records if r.get("step", "").endswith(":copy") and r.get("created")}
    assert len(copies) == 1 and orphan["image_set"] not in copies
    left = client.get_image_set(datastoreId=datastore_id, imageSetId=orphan["image_set"])
    assert left["imageSetState"] == "ACTIVE" and not left["isPrimary"]  # listed for cleanup, never deleted silently


def test_plain_requests_and_procedures_in_one_plan_apply_verify_and_revert(served: Any, tmp_path: Path) -> None:
    import orjson

    from curation.curate.updateplan import PlannedRequest, UpdatePlan
    from curation.run.reverting import revert
    from curation.run.verifying import verify

    store, _, client = served
    datastore_id, (plain, member) = _import(store, tmp_path, 2, seed="mixed")
    before = {i: digest(fetch_document(client, datastore_id, i)[0]) for i in (plain, member)}
    procedure = promote_plan(client, datastore_id, {member: patient_name("MX^MX")})
    blob = orjson.dumps({"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "PLAIN"}}}).decode()
    request = PlannedRequest(
        plain,
        0,
        {
            "datastoreId": datastore_id,
            "imageSetId": plain,
            "updateImageSetMetadataUpdates": {"DICOMUpdates": {"updatableAttributes": blob}},
        },
    )
    versions = {**procedure.base_versions, plain: fetch_document(client, datastore_id, plain)[1]}
    plan = UpdatePlan.build(datastore_id, versions, [request], steps=procedure.steps, undo=procedure.undo)
    journal = tmp_path / "j.jsonl"
    result = apply(plan, client, journal, **FAST).set_index("ImageSetID")
    assert (result["status"] == "applied").all(), result
    assert result.loc[plain, "version_after"] == str(int(versions[plain]) + 1)
    assert pd_isna(result.loc[plain, "new_image_set_id"]) and result.loc[member, "new_image_set_id"]
    assert fetch_document(client, datastore_id, plain)[0]["Study"]["DICOM"]["StudyDescription"] == "PLAIN"
    assert verify(plan, client, journal, progress=False).empty
    reverted = revert(journal, client, **FAST)
    assert (reverted["status"] == "applied").all(), reverted
    third = id_mapping(reverted)
    assert digest(fetch_document(client, datastore_id, plain)[0]) == before[plain]
    assert digest(fetch_document(client, datastore_id, third[member])[0]) == before[member]


def test_a_dry_run_prints_every_step_and_sends_nothing(served: Any, tmp_path: Path, capsys: Any) -> None:
    store, endpoint, client = served
    datastore_id, (image_set,) = _import(store, tmp_path, 1)
    plan = promote_plan(client, datastore_id, {image_set: patient_name("MX^MX")})
    calls = dict(endpoint.service.calls)
    frame = apply(plan, client, dry_run=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(plan.steps)
    assert sum("[DELETE]" in line for line in lines) == 2 and sum("[NEW ID]" in line for line in lines) == 1
    assert any(line.startswith("# check:") for line in lines)
    assert list(frame["status"]) == ["dry-run"]
    assert endpoint.service.calls == calls


def pd_isna(value: Any) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def test_an_update_after_the_promotion_is_applied_on_the_new_primary_verified_and_reverted(
    served: Any, tmp_path: Path
) -> None:
    import dataclasses

    from curation.curate.planstep import PlannedStep, Ref, StepKind
    from curation.curate.updateplan import UpdatePlan
    from curation.run.reverting import revert
    from curation.run.verifying import verify
    from tests.run.promote_plans import update_params

    store, _, client = served
    datastore_id, (image_set,) = _import(store, tmp_path, 1, seed="post")
    document, _ = fetch_document(client, datastore_id, image_set)
    ((series_uid, series),) = document["Study"]["Series"].items()
    sop_uid = next(iter(series["Instances"]))
    base = promote_plan(client, datastore_id, {image_set: patient_name("MX^MX")})
    instance = {"Series": {series_uid: {"Instances": {sop_uid: {"DICOM": {"ImageComments": "after promotion"}}}}}}
    post = PlannedStep(
        f"{image_set}:post.0",
        StepKind.UPDATE,
        Ref(f"{image_set}:promote"),
        image_set,
        update_params({"Study": instance}, force=False),
        (f"{image_set}:verify-primary",),
    )
    steps = []
    for step in base.steps:
        if step.kind is StepKind.DELETE_COPY:
            steps += [post, dataclasses.replace(step, after=(*step.after, post.step_id))]
        else:
            steps.append(step)
    undo = {image_set: dataclasses.replace(base.undo[image_set], post=1)}
    plan = UpdatePlan.build(datastore_id, base.base_versions, [], steps=steps, undo=undo)
    journal = tmp_path / "j.jsonl"
    (row,) = apply(plan, client, journal, **FAST).to_dict("records")
    assert row["status"] == "applied", row
    new_document, version = fetch_document(client, datastore_id, row["new_image_set_id"])
    assert new_document["Study"]["Series"][series_uid]["Instances"][sop_uid]["DICOM"]["ImageComments"] == (
        "after promotion"
    )
    assert row["version_after"] == version
    assert verify(plan, client, journal, progress=False).empty
    reverted = revert(journal, client, **FAST)
    assert (reverted["status"] == "applied").all(), reverted
    final, _ = fetch_document(client, datastore_id, id_mapping(reverted)[image_set])
    assert digest(final) == digest(document)


OTHER_WRITER = '{"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "OTHER"}}}'


def test_cleanup_plan_lists_what_a_stopped_run_left_and_never_an_incomplete_members_copy(
    served: Any, tmp_path: Path
) -> None:
    from curation.run.cleanup import cleanup_plan

    store, _, client = served
    datastore_id, (failing, stopping, incomplete) = _import(store, tmp_path, 3, seed="leftovers")
    # a copy that ends COPY_FAILED, a working copy left by another writer, a promotion that failed
    for number, (image_set, fault) in enumerate([(failing, "copy"), (stopping, "writer"), (incomplete, "promote")]):
        plan = promote_plan(client, datastore_id, {image_set: patient_name("MX^MX")})
        if fault == "copy":
            store.fail_next_copies(1, "INTERNAL_ERROR: broke", promote=False)
        elif fault == "promote":
            store.fail_next_copies(1, "INTERNAL_ERROR: broke", promote=True)
        else:
            _once(
                client,
                "CopyImageSet",
                lambda i=image_set, v=plan.base_versions[image_set]: store.call(
                    "UpdateImageSetMetadata",
                    {
                        "datastoreId": datastore_id,
                        "imageSetId": i,
                        "latestVersionId": v,
                        "updateImageSetMetadataUpdates": {"DICOMUpdates": {"updatableAttributes": OTHER_WRITER}},
                    },
                ),
            )
        journal = tmp_path / f"j{number}.jsonl"
        (row,) = apply(plan, client, journal, **FAST).to_dict("records")
        cleanup = cleanup_plan(journal, client)
        targets = [step.target for step in cleanup.steps]
        if fault == "promote":
            # the failed promotion's image set is left over; the copy holds the only content and is never listed
            assert row["status"] == "incomplete" and row["held_by"] not in targets and len(targets) == 1
            continue
        assert row["status"] in ("failed", "conflict") and len(targets) == 1
        (left,) = targets
        assert not client.get_image_set(datastoreId=datastore_id, imageSetId=left)["isPrimary"]
        (done,) = apply(cleanup, client, tmp_path / f"cleanup{number}.jsonl", **FAST).to_dict("records")
        assert done["status"] == "applied"
        assert client.get_image_set(datastoreId=datastore_id, imageSetId=left)["imageSetState"] == "DELETED"
        assert client.get_image_set(datastoreId=datastore_id, imageSetId=image_set)["imageSetState"] == "ACTIVE"
        assert cleanup_plan(journal, client).steps == []


def test_rekey_of_a_snapshot_returns_a_new_snapshot_under_the_new_ids(served: Any, tmp_path: Path) -> None:
    import curation

    store, _, client = served
    datastore_id, (image_set, other) = _import(store, tmp_path, 2, seed="rekey")
    snapshot = curation.fetch(client, datastore_id, progress=False)
    plan = promote_plan(client, datastore_id, {image_set: patient_name("MX^MX")})
    result = apply(plan, client, tmp_path / "j.jsonl", **FAST)
    mapping = curation.id_mapping(result)
    rekeyed = curation.rekey(snapshot, mapping)
    new = mapping[image_set]
    assert sorted(rekeyed.image_set_ids) == sorted([new, other])
    assert sorted(snapshot.image_set_ids) == sorted([image_set, other])  # the user's snapshot is untouched
    assert rekeyed.version_ids[new] == mapping.versions[new]
    assert rekeyed.document(new)["ImageSetID"] == new
    assert "ImageSetID" in rekeyed.studies.index.names or "ImageSetID" in rekeyed.studies.columns
