"""apply / verify / revert against the embedded service: faults, locks, other writers, crashes, undo."""

from __future__ import annotations

import copy
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.config import Config

import curation.local
from curation.cli import main
from curation.curate.updateplan import PlannedRequest, UpdatePlan
from curation.model.document import parse_document, read_document
from curation.run.applying import apply
from curation.run.journal import Journal, JournalError, Purpose, file_mode, read_journal
from curation.run.options import PollPolicy
from curation.run.retries import RetryPolicy
from curation.run.reverting import revert
from curation.run.verifying import verify

REFERENCE = Path(__file__).parents[1] / "data" / "reference" / "ct-2025-htj2k-1-instance.json"
NO_RETRIES = Config(retries={"total_max_attempts": 1})
#: botocore's standard retry mode: what absorbs injected throttles and 5xx (its backoff made short in conftest)
BOTOCORE_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 10})
FAST = {
    "rate": 200.0,
    "progress": False,
    "poll": PollPolicy(initial=0.005, max_interval=0.05, timeout=30),
    "retries": RetryPolicy(max_attempts=12, base_delay=0.005, max_delay=0.05),
    "control_rate": None,
}


def _copies(count: int, *, study_uid: str | None = None) -> list[dict[str, Any]]:
    """``count`` one-instance CT documents with fresh UIDs (one study each, or all in ``study_uid``)."""
    from pydicom.uid import generate_uid

    base = read_document(str(REFERENCE))
    documents = []
    for number in range(count):
        document = copy.deepcopy(base)
        document.pop("ImageSetID", None)
        # one patient per study: the primary image sets of a study agree on Patient- and Study-level metadata
        document["Patient"]["DICOM"]["PatientID"] = f"P{0 if study_uid else number:03d}"
        document["Study"]["DICOM"]["StudyInstanceUID"] = study_uid or str(generate_uid())
        (series,) = document["Study"]["Series"].values()
        (instance,) = series["Instances"].values()
        series_uid, sop_uid = str(generate_uid()), str(generate_uid())
        series["DICOM"]["SeriesInstanceUID"] = series_uid
        instance["DICOM"]["SOPInstanceUID"] = sop_uid
        series["Instances"] = {sop_uid: instance}
        document["Study"]["Series"] = {series_uid: series}
        documents.append(document)
    return documents


def _blob(payload: dict[str, Any]) -> str:
    return orjson.dumps({"SchemaVersion": 1.1, **payload}).decode()


def _request(datastore_id: str, image_set_id: str, index: int, payload: dict[str, Any], **extra: Any) -> PlannedRequest:
    params = {
        "datastoreId": datastore_id,
        "imageSetId": image_set_id,
        "updateImageSetMetadataUpdates": {"DICOMUpdates": {"updatableAttributes": _blob(payload)}},
        **extra,
    }
    return PlannedRequest(image_set_id, index, params, description=f"request {index} of {image_set_id}")


def _instance_path(store: Any, datastore_id: str, image_set_id: str) -> tuple[str, str]:
    document = _document(store, datastore_id, image_set_id)
    ((series_uid, series),) = document["Study"]["Series"].items()
    return series_uid, next(iter(series["Instances"]))


def _two_request_plan(store: Any, datastore_id: str, image_set_ids: list[str], tag: str = "A") -> UpdatePlan:
    """Per image set: a Study-level change, then an instance-level one (two chained requests)."""
    requests = []
    for image_set_id in image_set_ids:
        series_uid, sop_uid = _instance_path(store, datastore_id, image_set_id)
        requests.append(
            _request(datastore_id, image_set_id, 0, {"Study": {"DICOM": {"StudyDescription": f"CT {tag}"}}})
        )
        instance = {"Series": {series_uid: {"Instances": {sop_uid: {"DICOM": {"ImageComments": f"checked {tag}"}}}}}}
        requests.append(_request(datastore_id, image_set_id, 1, {"Study": instance}))
    return UpdatePlan.build(datastore_id, {i: _latest(store, datastore_id, i) for i in image_set_ids}, requests)


def _latest(store: Any, datastore_id: str, image_set_id: str) -> str:
    return store.call("GetImageSet", {"datastoreId": datastore_id, "imageSetId": image_set_id})["versionId"]


def _document(store: Any, datastore_id: str, image_set_id: str, version: str | None = None) -> dict[str, Any]:
    params = {"datastoreId": datastore_id, "imageSetId": image_set_id}
    if version is not None:
        params["versionId"] = version
    return parse_document(store.call("GetImageSetMetadata", params)["imageSetMetadataBlob"])


def _versions(store: Any, datastore_id: str, image_set_id: str) -> list[dict[str, Any]]:
    page = store.call("ListImageSetVersions", {"datastoreId": datastore_id, "imageSetId": image_set_id})
    return page["imageSetPropertiesList"]


@pytest.fixture
def populated(local_store: Any) -> tuple[Any, str, list[str]]:
    report = local_store.import_documents(_copies(4))
    assert not report.failures
    return local_store, report.datastore_id, report.created


def _assert_restored(store: Any, datastore_id: str, base_versions: dict[str, str]) -> None:
    for image_set_id, base in base_versions.items():
        assert _document(store, datastore_id, image_set_id) == _document(store, datastore_id, image_set_id, base)


def test_requests_chain_versions_and_verify_finds_the_intended_documents(populated: Any, tmp_path: Path) -> None:
    store, datastore_id, ids = populated
    plan = _two_request_plan(store, datastore_id, ids)
    client = curation.local.client(store, config=NO_RETRIES)
    journal = tmp_path / "apply.jsonl"
    result = apply(plan, client, journal, **FAST)
    assert list(result["status"]) == ["applied"] * 4
    assert list(result["version_before"]) == ["1"] * 4 and list(result["version_after"]) == ["3"] * 4
    assert list(result["requests_done"]) == [2] * 4 and result["error"].isna().all()
    for image_set_id in ids:
        document = _document(store, datastore_id, image_set_id)
        assert document["Study"]["DICOM"]["StudyDescription"] == "CT A"
        assert [v["ImageSetWorkflowStatus"] for v in _versions(store, datastore_id, image_set_id)][:2] == [
            "UPDATED",
            "UPDATED",
        ]
    assert verify(plan, client).empty
    assert verify(plan, client, journal).empty
    statuses = [r["status"] for r in read_journal(journal)[1:]]
    assert statuses.count("sending") == statuses.count("accepted") == statuses.count("done") == 8
    assert file_mode(journal) == 0o600


def test_injected_throttles_and_5xx_are_retried_and_every_change_lands_once(
    populated: Any, tmp_path: Path, fast_botocore_backoff: None
) -> None:
    store, datastore_id, ids = populated
    plan = _two_request_plan(store, datastore_id, ids)
    client = curation.local.client(store, fault_rate=0.2, seed=7, config=BOTOCORE_RETRIES)
    result = apply(plan, client, tmp_path / "j.jsonl", **FAST)
    assert list(result["status"]) == ["applied"] * 4
    service = client.meta.local_service
    service.fault_rate = 0.0
    assert verify(plan, client).empty
    service.fault_rate = 0.2
    assert service.calls["UpdateImageSetMetadata"] > len(plan.requests)  # faults were met and retried
    for image_set_id in ids:
        assert _latest(store, datastore_id, image_set_id) == "3"  # exactly two new versions: no double apply
    undone = revert(tmp_path / "j.jsonl", client, **FAST)  # still 20% faults
    assert (undone["status"] == "applied").all()
    service.fault_rate = 0.0
    _assert_restored(store, datastore_id, plan.base_versions)


def test_locked_image_sets_are_waited_out(populated: Any, tmp_path: Path) -> None:
    store, datastore_id, ids = populated
    plan = _two_request_plan(store, datastore_id, ids[:2])
    store.lock_seconds = 0.15
    client = curation.local.client(store, config=NO_RETRIES)
    result = apply(plan, client, tmp_path / "j.jsonl", **FAST)
    assert list(result["status"]) == ["applied", "applied"]
    calls = client.meta.local_service.calls
    assert calls["GetImageSet"] > 2 * len(plan.requests)  # LOCKED was seen and polled again
    assert calls["UpdateImageSetMetadata"] == len(plan.requests)  # never sent into a lock and refused
    assert verify(plan, client).empty
    assert (revert(tmp_path / "j.jsonl", client, **FAST)["status"] == "applied").all()  # also waits out locks
    _assert_restored(store, datastore_id, plan.base_versions)


def test_update_failed_is_reported_with_its_message_and_stops_that_image_set(populated: Any, tmp_path: Path) -> None:
    store, datastore_id, ids = populated
    plan = _two_request_plan(store, datastore_id, ids[:1])
    store.fail_next_updates(1, "INTERNAL_ERROR: disk on fire")
    client = curation.local.client(store, config=NO_RETRIES)
    result = apply(plan, client, tmp_path / "j.jsonl", **FAST)
    row = result.iloc[0]
    assert row["status"] == "failed" and "disk on fire" in row["error"] and row["requests_done"] == 0
    assert row["version_after"] == "2"  # the failed update consumed a version
    assert _latest(store, datastore_id, ids[0]) == "2"  # the second request was not sent
    assert client.meta.local_service.calls["UpdateImageSetMetadata"] == 1


def test_a_concurrent_writer_turns_into_a_conflict_and_is_never_overwritten(populated: Any, tmp_path: Path) -> None:
    store, datastore_id, ids = populated
    plan = _two_request_plan(store, datastore_id, ids)
    victim = ids[2]
    client = curation.local.client(store, config=NO_RETRIES)
    sent: list[str] = []

    def other_writer(params: dict[str, Any], **_: Any) -> None:
        # after our first request on the victim, someone else edits it before our second one goes out
        if params["imageSetId"] == victim:
            sent.append(params["latestVersionId"])
            if len(sent) == 2:
                store.call(
                    "UpdateImageSetMetadata",
                    {
                        "datastoreId": datastore_id,
                        "imageSetId": victim,
                        "latestVersionId": _latest(store, datastore_id, victim),
                        "updateImageSetMetadataUpdates": {
                            "DICOMUpdates": {
                                "updatableAttributes": _blob({"Study": {"DICOM": {"StudyDescription": "THEIRS"}}})
                            }
                        },
                    },
                )

    client.meta.events.register("provide-client-params.medical-imaging.UpdateImageSetMetadata", other_writer)
    journal = tmp_path / "j.jsonl"
    result = apply(plan, client, journal, **FAST).set_index("ImageSetID")
    assert (result.drop(index=victim)["status"] == "applied").all()
    row = result.loc[victim]
    assert row["status"] == "conflict" and row["requests_done"] == 1 and row["version_after"] == "2"
    assert "expected version 2, latest is 3" in row["error"]
    after = _document(store, datastore_id, victim)
    assert after["Study"]["DICOM"]["StudyDescription"] == "THEIRS"  # theirs kept
    assert _latest(store, datastore_id, victim) == "3"
    conflict = [r for r in read_journal(journal) if r.get("status") == "conflict"]
    assert len(conflict) == 1 and conflict[0]["base_version"] == "2" and conflict[0]["actual"] == "3"
    # verify with the journal reports the unfinished image set; revert leaves the other writer's version alone
    report = verify(plan, client, journal)
    assert list(report["ImageSetID"]) == [victim] and "conflict" in report["note"].iloc[0]
    undone = revert(journal, client, **FAST).set_index("ImageSetID")
    assert undone.loc[victim, "status"] == "conflict"
    assert _document(store, datastore_id, victim)["Study"]["DICOM"]["StudyDescription"] == "THEIRS"
    _assert_restored(store, datastore_id, {i: "1" for i in ids if i != victim})


def test_resume_skips_done_requests_and_refuses_another_plan(populated: Any, tmp_path: Path) -> None:
    store, datastore_id, ids = populated
    plan = _two_request_plan(store, datastore_id, ids)
    client = curation.local.client(store, config=NO_RETRIES)
    journal = tmp_path / "j.jsonl"
    apply(plan, client, journal, **FAST)
    sent = client.meta.local_service.calls["UpdateImageSetMetadata"]
    again = apply(plan, client, journal, **FAST)
    assert list(again["status"]) == ["applied"] * 4 and list(again["version_after"]) == ["3"] * 4
    assert client.meta.local_service.calls["UpdateImageSetMetadata"] == sent
    other = _two_request_plan(store, datastore_id, ids, tag="B")
    with pytest.raises(JournalError, match="not of plan"):
        apply(other, client, journal, **FAST)


def _fake_crash_journal(plan: UpdatePlan, journal: Path, records: list[dict[str, Any]]) -> None:
    with Journal(journal) as opened:
        opened.start(plan, Purpose.APPLY)
        for record in records:
            opened.append(record)


def test_unknown_outcomes_are_reconciled_never_applied_twice(populated: Any, tmp_path: Path) -> None:
    store, datastore_id, ids = populated
    plan = _two_request_plan(store, datastore_id, ids[:2])
    applied_id, lost_id = ids[0], ids[1]
    first = plan.by_image_set()[applied_id][0]
    # the process died after AHI applied request 0 of applied_id, and before request 0 of lost_id reached AHI
    store.call("UpdateImageSetMetadata", {**first.params, "latestVersionId": "1"})
    common = {"kind": "request", "plan_id": plan.plan_id, "index": 0, "base_version": "1", "status": "sending"}
    journal = tmp_path / "j.jsonl"
    _fake_crash_journal(plan, journal, [{**common, "image_set_id": applied_id}, {**common, "image_set_id": lost_id}])
    client = curation.local.client(store, config=NO_RETRIES)
    result = apply(plan, client, journal, **FAST)
    assert list(result["status"]) == ["applied", "applied"]
    assert client.meta.local_service.calls["UpdateImageSetMetadata"] == 3  # not 4: applied_id's first was not resent
    assert _latest(store, datastore_id, applied_id) == _latest(store, datastore_id, lost_id) == "3"
    assert verify(plan, client, journal).empty
    done = [
        (r["image_set_id"], r["index"], r["new_version"]) for r in read_journal(journal) if r.get("status") == "done"
    ]
    assert sorted(done) == sorted([(applied_id, 0, "2"), (applied_id, 1, "3"), (lost_id, 0, "2"), (lost_id, 1, "3")])


def test_dry_run_shows_the_requests_and_sends_none(populated: Any, tmp_path: Path, capsys: Any) -> None:
    store, datastore_id, ids = populated
    plan = _two_request_plan(store, datastore_id, ids[:1])
    client = curation.local.client(store, config=NO_RETRIES)
    result = apply(plan, client, tmp_path / "j.jsonl", dry_run=True, progress=False)
    assert list(result["status"]) == ["dry-run"]
    calls = result.attrs["requests"]
    assert calls[0]["latestVersionId"] == "1" and calls[0]["imageSetId"] == ids[0]
    assert calls[0]["updateImageSetMetadataUpdates"] == plan.requests[0].params["updateImageSetMetadataUpdates"]
    assert "latestVersionId returned by request 0" in calls[1]["latestVersionId"]
    assert "update_image_set_metadata" in capsys.readouterr().out
    assert "UpdateImageSetMetadata" not in client.meta.local_service.calls
    assert not (tmp_path / "j.jsonl").exists()


def test_study_wide_requests_sequence_their_siblings_and_revert_restores_them(local_store: Any, tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    report = local_store.import_documents(_copies(3, study_uid=str(generate_uid())))
    datastore_id, (carrier, sibling, third) = report.datastore_id, report.created
    assert all(
        local_store.call("GetImageSet", {"datastoreId": datastore_id, "imageSetId": i})["isPrimary"]
        for i in report.created
    )
    study = _request(
        datastore_id, carrier, 0, {"Study": {"DICOM": {"StudyDescription": "HEAD CT"}}}, includeStudyImageSets=True
    )
    study.affects = [sibling, third]
    series_uid, sop_uid = _instance_path(local_store, datastore_id, sibling)
    own = _request(
        datastore_id,
        sibling,
        0,
        {"Study": {"Series": {series_uid: {"Instances": {sop_uid: {"DICOM": {"ImageComments": "sibling's own"}}}}}}},
    )
    plan = UpdatePlan.build(datastore_id, {carrier: "1", sibling: "1", third: "1"}, [study, own])
    client = curation.local.client(local_store, config=NO_RETRIES)
    journal = tmp_path / "j.jsonl"
    result = apply(plan, client, journal, **FAST).set_index("ImageSetID")
    assert (result["status"] == "applied").all()
    assert result.loc[sibling, "version_after"] == "3"  # 1 -> 2 by the study-wide request -> 3 by its own
    assert _document(local_store, datastore_id, third)["Study"]["DICOM"]["StudyDescription"] == "HEAD CT"
    assert verify(plan, client, journal).empty
    done = next(r for r in read_journal(journal) if r.get("status") == "done" and r["image_set_id"] == carrier)
    assert done["affected"] == {sibling: ["1", "2"], third: ["1", "2"]}
    undone = revert(journal, client, **FAST)
    assert set(undone["ImageSetID"]) == {carrier, sibling, third} and (undone["status"] == "applied").all()
    _assert_restored(local_store, datastore_id, {carrier: "1", sibling: "1", third: "1"})


def test_revert_restores_every_document_and_is_resumable(populated: Any, tmp_path: Path) -> None:
    store, datastore_id, ids = populated
    plan = _two_request_plan(store, datastore_id, ids)
    client = curation.local.client(store, config=NO_RETRIES)
    journal = tmp_path / "j.jsonl"
    apply(plan, client, journal, **FAST)
    result = revert(journal, client, **FAST)
    assert (result["status"] == "applied").all() and list(result["version_before"]) == ["3"] * 4
    _assert_restored(store, datastore_id, plan.base_versions)
    out = tmp_path / "j.jsonl.revert"
    assert file_mode(out) == 0o600 and read_journal(out)[0]["purpose"] == "revert"
    sent = client.meta.local_service.calls["UpdateImageSetMetadata"]
    assert (revert(journal, client, **FAST)["status"] == "applied").all()
    assert client.meta.local_service.calls["UpdateImageSetMetadata"] == sent


def test_verify_reports_each_mismatch_with_its_path(populated: Any, tmp_path: Path) -> None:
    store, datastore_id, ids = populated
    plan = _two_request_plan(store, datastore_id, ids[:1])
    client = curation.local.client(store, config=NO_RETRIES)
    journal = tmp_path / "j.jsonl"
    apply(plan, client, journal, **FAST)
    store.call(
        "UpdateImageSetMetadata",
        {
            "datastoreId": datastore_id,
            "imageSetId": ids[0],
            "latestVersionId": "3",
            "updateImageSetMetadataUpdates": {
                "DICOMUpdates": {
                    "updatableAttributes": _blob({"Study": {"DICOM": {"StudyDescription": "EDITED LATER"}}})
                }
            },
        },
    )
    report = verify(plan, client)
    assert list(report["path"]) == ["Study.DICOM.StudyDescription"]
    assert report.iloc[0]["expected"] == "CT A" and report.iloc[0]["actual"] == "EDITED LATER"
    assert verify(plan, client, journal).empty  # the journal's version is still what we made


def test_the_cli_applies_and_reverts_a_saved_plan_over_http(populated: Any, tmp_path: Path, capsys: Any) -> None:
    from curation.local.server import serving

    store, datastore_id, ids = populated
    plan = _two_request_plan(store, datastore_id, ids[:2])
    plan.save(tmp_path / "plan.json")
    with serving(store) as endpoint:
        common = ["--endpoint-url", endpoint, "--rate", "100", "--no-progress"]
        assert main(["apply", str(tmp_path / "plan.json"), "--journal", str(tmp_path / "j.jsonl"), *common]) == 0
        assert "2 applied" in capsys.readouterr().out
        for image_set_id in ids[:2]:
            assert _latest(store, datastore_id, image_set_id) == "3"
        assert main(["revert", str(tmp_path / "j.jsonl"), *common]) == 0
    assert "2 applied" in capsys.readouterr().out
    _assert_restored(store, datastore_id, plan.base_versions)


def _child_apply(store_path: Path, plan_path: Path, journal: Path) -> int:
    """What the killed process runs: apply the saved plan with its own client over the shared store."""
    plan = UpdatePlan.load(plan_path)
    client = curation.local.client(store_path, lock_seconds=0.01, latency=0.002)
    frame = apply(plan, client, journal, max_workers=3, **FAST)
    return 0 if (frame["status"] == "applied").all() else 3


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_killed_at_random_points_and_restarted_applies_each_change_exactly_once(
    local_store: Any, tmp_path: Path
) -> None:
    report = local_store.import_documents(_copies(5))
    datastore_id, ids = report.datastore_id, report.created
    plan = _two_request_plan(local_store, datastore_id, ids)
    plan_path, journal = tmp_path / "plan.json", tmp_path / "j.jsonl"
    plan.save(plan_path)
    rng = random.Random(20261129)
    kills = 0
    for _ in range(80):
        target = _lines(journal) + rng.randint(2, 12)
        pid = os.fork()  # a child with everything imported: SIGKILL it at a random point of its apply
        if pid == 0:
            code = 4
            try:
                code = _child_apply(local_store.path, plan_path, journal)
            finally:
                os._exit(code)
        status = None
        while status is None and _lines(journal) < target:
            finished, raw = os.waitpid(pid, os.WNOHANG)
            status = raw if finished else None
            time.sleep(0.0005)
        if status is None:
            time.sleep(rng.choice([0, 0, 0.0005, 0.002, 0.005]))
            os.kill(pid, signal.SIGKILL)
            kills += 1
            status = os.waitpid(pid, 0)[1]
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            break
        assert os.WIFSIGNALED(status), f"the applying process failed: {status}"
    else:
        pytest.fail("apply never finished")
    assert kills >= 3
    records = read_journal(journal)
    done = {(r["image_set_id"], r["index"]): r["new_version"] for r in records if r.get("status") == "done"}
    assert len(done) == len(plan.requests)
    client = curation.local.client(local_store, config=NO_RETRIES)
    for image_set_id in ids:
        versions = [v["versionId"] for v in _versions(local_store, datastore_id, image_set_id)]
        assert sorted(versions, key=int) == ["1", "2", "3"]  # each of the two changes exactly once
        assert {done[(image_set_id, 0)], done[(image_set_id, 1)]} == {"2", "3"}  # every new version journaled
    assert verify(plan, client, journal).empty
    revert(journal, client, **FAST)
    _assert_restored(local_store, datastore_id, plan.base_versions)


class _LosesAnswers:
    """A backend that applies the first ``count`` updates and then answers 500, as a lost response looks."""

    def __init__(self, store: Any, count: int) -> None:
        self.store, self.count = store, count

    def call(self, operation_name: str, params: dict[str, Any]) -> dict[str, Any]:
        from curation.model.errors import AHIError

        result = self.store.call(operation_name, params)
        if operation_name == "UpdateImageSetMetadata" and self.count > 0:
            self.count -= 1
            raise AHIError("InternalServerException", "the answer was lost after the update was applied")
        return result


def test_another_writer_making_the_same_change_first_is_a_conflict_not_ours(populated: Any, tmp_path: Path) -> None:
    store, datastore_id, ids = populated
    victim = ids[0]
    change = {"Study": {"DICOM": {"StudyDescription": "SAME"}}}
    plan = UpdatePlan.build(datastore_id, {victim: "1"}, [_request(datastore_id, victim, 0, change)])
    client = curation.local.client(store, config=NO_RETRIES)

    def same_change_first(params: dict[str, Any], **_: Any) -> None:
        if _latest(store, datastore_id, victim) == "1":
            update = {"DICOMUpdates": {"updatableAttributes": _blob(change)}}
            store.call(
                "UpdateImageSetMetadata",
                {
                    "datastoreId": datastore_id,
                    "imageSetId": victim,
                    "latestVersionId": "1",
                    "updateImageSetMetadataUpdates": update,
                },
            )

    client.meta.events.register("provide-client-params.medical-imaging.UpdateImageSetMetadata", same_change_first)
    journal = tmp_path / "j.jsonl"
    row = apply(plan, client, journal, **FAST).set_index("ImageSetID").loc[victim]
    # version 2 holds exactly our intended document, but it is theirs: never claimed as ours
    assert row["status"] == "conflict" and row["requests_done"] == 0
    assert "expected version 1, latest is 2" in row["error"]
    assert not [r for r in read_journal(journal) if r.get("status") == "done"]
    assert _latest(store, datastore_id, victim) == "2"


@pytest.mark.parametrize("botocore_retries", [False, True], ids=["no-botocore-retries", "botocore-retries"])
def test_an_update_applied_whose_answer_was_lost_is_recognised_not_resent(
    populated: Any, tmp_path: Path, botocore_retries: bool, fast_botocore_backoff: None
) -> None:
    from curation.local.service import Service

    store, datastore_id, ids = populated
    plan = _two_request_plan(store, datastore_id, ids[:2])
    config = BOTOCORE_RETRIES if botocore_retries else NO_RETRIES
    client = curation.local.client(Service(_LosesAnswers(store, 2)), config=config)
    journal = tmp_path / "j.jsonl"
    result = apply(plan, client, journal, **{**FAST, "max_workers": 1})
    assert list(result["status"]) == ["applied", "applied"]
    for image_set_id in ids[:2]:
        assert _latest(store, datastore_id, image_set_id) == "3"  # never applied twice
    assert verify(plan, client, journal).empty
    # without botocore retries the 500 is reconciled at once; with them, botocore sends it again, AHI refuses
    # that as stale, and the stale refusal of a call whose first attempt may have applied is reconciled
    expected = len(plan.requests) + (2 if botocore_retries else 0)
    assert client.meta.local_service.calls["UpdateImageSetMetadata"] == expected


def test_cli_dry_run_and_a_foreign_journal(populated: Any, tmp_path: Path, capsys: Any) -> None:
    from curation.local.server import serving

    store, datastore_id, ids = populated
    plan = _two_request_plan(store, datastore_id, ids[:1])
    plan.save(tmp_path / "plan.json")
    with serving(store) as endpoint:
        args = ["apply", str(tmp_path / "plan.json"), "--journal", str(tmp_path / "j.jsonl")]
        args += ["--endpoint-url", endpoint, "--rate", "50", "--no-progress"]
        assert main([*args, "--dry-run"]) == 0
        assert "1 dry-run" in capsys.readouterr().out and _latest(store, datastore_id, ids[0]) == "1"
        other = _two_request_plan(store, datastore_id, ids[1:2])
        _fake_crash_journal(other, tmp_path / "j.jsonl", [])
        assert main(args) == 2
        captured = capsys.readouterr()
        assert "not of plan" in captured.err and len(captured.err.splitlines()) == 1


def test_a_real_plan_with_folded_study_changes_applies_verifies_and_reverts(local_store: Any, tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    from curation.curate.differ import diff
    from curation.curate.planner import plan
    from curation.run.fetching import fetch

    report = local_store.import_documents(_copies(3, study_uid=str(generate_uid())) + _copies(1))
    client = curation.local.client(local_store, config=NO_RETRIES)
    snapshot = fetch(client, report.datastore_id, progress=False)
    if not getattr(snapshot, "primary", None):
        snapshot.primary = dict.fromkeys(snapshot.image_set_ids, True)  # every import here is primary
    studies = snapshot.studies.copy()
    studies["StudyDescription"] = "HEAD CT"
    instances = snapshot.instances.copy()
    own = report.created[1]
    instances.loc[own, "ImageComments"] = "reviewed"
    update_plan = plan(diff(snapshot, [studies, instances]), include_study_image_sets=True)
    carriers = [r for r in update_plan.requests if r.affects]
    assert len(carriers) == 1 and len(carriers[0].affects) == 2  # the three image sets of one study: one request
    journal = tmp_path / "j.jsonl"
    result = apply(update_plan, client, journal, **FAST).set_index("ImageSetID")
    assert set(result.index) == set(report.created) and (result["status"] == "applied").all()
    assert result.loc[own, "version_after"] == ("3" if own in carriers[0].affects else "2")
    assert verify(update_plan, client, journal, progress=False).empty
    for image_set_id in report.created:
        assert _document(local_store, report.datastore_id, image_set_id)["Study"]["DICOM"]["StudyDescription"] == (
            "HEAD CT"
        )
    revert(journal, client, **FAST)
    _assert_restored(local_store, report.datastore_id, dict.fromkeys(report.created, "1"))


def test_progress_is_reported_per_request_and_a_cancel_stops_cleanly_and_resumes(
    populated: Any, tmp_path: Path
) -> None:
    import threading

    from curation.run.options import Progress

    store, datastore_id, ids = populated
    plan = _two_request_plan(store, datastore_id, ids)
    client = curation.local.client(store, config=NO_RETRIES)
    journal = tmp_path / "j.jsonl"
    cancel = threading.Event()
    seen: list[Progress] = []

    def on_progress(event: Progress) -> None:
        seen.append(event)
        if event.image_set_status == "applied":  # one image set is complete: stop between requests
            cancel.set()

    first = apply(plan, client, journal, **{**FAST, "max_workers": 1}, on_progress=on_progress, cancel=cancel)
    assert list(first["status"]) == ["applied", "cancelled", "cancelled", "cancelled"]
    assert "run apply again" in first["error"].iloc[1]
    assert [e.requests_finished for e in seen] == list(range(1, len(plan.requests) + 1))
    assert seen[1].image_set_id == ids[0] and seen[1].status == "done" and seen[1].image_set_status == "applied"
    assert all(e.requests_total == len(plan.requests) and e.purpose == "apply" for e in seen)
    records = read_journal(journal)
    assert [r["reason"] for r in records if r.get("kind") == "stop"] == ["cancelled"]
    assert client.meta.local_service.calls["UpdateImageSetMetadata"] == 2  # nothing sent after the cancel
    again = apply(plan, client, journal, **FAST)  # resume: the rest is sent, the first not again
    assert list(again["status"]) == ["applied"] * 4
    assert client.meta.local_service.calls["UpdateImageSetMetadata"] == len(plan.requests)
    assert verify(plan, client, journal).empty
    reverted: list[Progress] = []
    undone = revert(journal, client, **FAST, on_progress=reverted.append)
    assert (undone["status"] == "applied").all() and {e.purpose for e in reverted} == {"revert"}
    assert len(reverted) == len(ids)


def test_a_stale_first_send_onto_this_plans_own_version_is_not_a_conflict(populated: Any, tmp_path: Path) -> None:
    """Were the lock bypassed, another run of the same plan may make the version first: the journal (read
    again from the file) says it is this plan's own, so the request is reconciled, not recorded as a conflict."""
    store, datastore_id, ids = populated
    plan = _two_request_plan(store, datastore_id, ids[:1])
    first = plan.by_image_set()[ids[0]][0]
    client = curation.local.client(store, config=NO_RETRIES)
    journal = tmp_path / "j.jsonl"

    def other_run_first(params: dict[str, Any], **_: Any) -> None:
        if params["latestVersionId"] == "1" and _latest(store, datastore_id, ids[0]) == "1":
            store.call("UpdateImageSetMetadata", {**first.params, "latestVersionId": "1"})  # the other run's send
            with open(journal, "ab") as handle:  # ... and its record, appended by another process
                record = {
                    "kind": "request",
                    "plan_id": plan.plan_id,
                    "operation": "update",
                    "image_set_id": ids[0],
                    "index": 0,
                    "base_version": "1",
                    "status": "done",
                    "new_version": "2",
                    "time": "t",
                }
                handle.write(orjson.dumps(record) + b"\n")

    client.meta.events.register("provide-client-params.medical-imaging.UpdateImageSetMetadata", other_run_first)
    result = apply(plan, client, journal, **FAST)
    assert list(result["status"]) == ["applied"] and list(result["version_after"]) == ["3"]
    statuses = [r["status"] for r in read_journal(journal) if r.get("kind") == "request"]
    assert "conflict" not in statuses
    assert sorted(v["versionId"] for v in _versions(store, datastore_id, ids[0])) == ["1", "2", "3"]
    assert verify(plan, client, journal).empty


def test_verify_and_revert_follow_the_chain_of_versions_not_the_file_order(populated: Any, tmp_path: Path) -> None:
    store, datastore_id, ids = populated
    plan = _two_request_plan(store, datastore_id, ids)
    client = curation.local.client(store, config=NO_RETRIES)
    journal = tmp_path / "j.jsonl"
    apply(plan, client, journal, **FAST)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + b"".join(reversed(lines[1:])))  # the same records, the last written first
    assert verify(plan, client, journal).empty
    undone = revert(journal, client, **FAST)
    assert (undone["status"] == "applied").all() and list(undone["version_before"]) == ["3"] * 4
    _assert_restored(store, datastore_id, plan.base_versions)
