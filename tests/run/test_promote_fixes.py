"""Bugs found when the planner (``plan(changes, primary="promote")``) and the runner were merged, each through a
real boto3 client against the embedded service over HTTP, on imported primaries edited in DataFrames: verify
after a SOPInstanceUID change, revert of a series removal, verify's progress count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import curation
from curation.model.document import digest
from curation.run.journal import read_journal, step_states
from curation.run.mapping import id_mapping
from tests.run.conftest import ct_series
from tests.run.promote_plans import fetch_document
from tests.run.test_promote_apply import FAST, _primaries
from tests.run.test_promote_crash import (
    _boundary,
    _child_revert,
    _kill_after_first_write,
    _kill_after_one_record,
    _rows,
    _run_until_done,
)


def _snapshot(served: Any, tmp_path: Path, count: int = 1, **kwargs: Any) -> curation.Snapshot:
    store, _, client = served
    report = store.import_paths(ct_series(tmp_path, count, **kwargs))
    assert not report.failures
    snapshot = curation.fetch(client, report.datastore_id, progress=False)
    assert all(snapshot.primary.values())
    return snapshot


def _new_uid(old: str, suffix: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[old, suffix])


def _sop_plan(snapshot: curation.Snapshot, suffix: str) -> Any:
    instances = snapshot.instances.copy()
    instances["SOPInstanceUID"] = [_new_uid(key[-1], suffix) for key in instances.index]
    return curation.plan(curation.diff(snapshot, instances), primary="promote")


def test_verify_is_empty_after_a_sop_instance_uid_change_with_force_and_reports_a_real_difference(
    served: Any, tmp_path: Path
) -> None:
    _, _, client = served
    snapshot = _snapshot(served, tmp_path, seed="sop")
    (image_set,) = snapshot.image_set_ids
    plan = _sop_plan(snapshot, "9")
    assert any(s.force for s in plan.steps)  # use case 7: with force, on the copy
    journal = tmp_path / "j.jsonl"
    (row,) = curation.apply(plan, client, journal, **FAST).to_dict("records")
    assert row["status"] == "applied", row
    found = curation.verify(plan, client, journal=journal, progress=False)
    assert found.empty, found.to_dict("records")
    # a plan that meant another UID is not what the service holds: the difference is named under the new UID
    other = _sop_plan(snapshot, "8")
    (old,) = [key[-1] for key in snapshot.instances.index]
    rows = curation.verify(other, client, journal=journal, progress=False).to_dict("records")
    assert rows and all(r["ImageSetID"] == image_set for r in rows)
    meant = _new_uid(old, "8")
    assert any(str(r["path"]).endswith(f"Instances.{meant}.DICOM.SOPInstanceUID") for r in rows), rows
    assert not any(f"Instances.{old}." in str(r["path"]) for r in rows), rows  # the old UID is gone, as planned


def test_verify_counts_the_members_of_a_plan_of_procedures_in_its_progress_bar(
    served: Any, tmp_path: Path, capsys: Any
) -> None:
    _, _, client = served
    snapshot = _snapshot(served, tmp_path, 2, seed="bar")
    studies = snapshot.studies.assign(PatientName="MX^MX")
    plan = curation.plan(curation.diff(snapshot, studies), primary="promote")
    assert not plan.requests and plan.steps
    journal = tmp_path / "j.jsonl"
    assert (curation.apply(plan, client, journal, **FAST)["status"] == "applied").all()
    capsys.readouterr()
    assert curation.verify(plan, client, journal=journal, **{**FAST, "progress": True}).empty
    err = capsys.readouterr().err
    assert "2/2" in err and "0/0" not in err, err


def _two_series_primary(served: Any, tmp_path: Path) -> tuple[curation.Snapshot, str, str]:
    """One primary image set holding two series (the second merged in with CopyImageSet, its own image set then
    deleted), fetched: (snapshot, image set, the series to remove)."""
    import time

    _, _, client = served
    study = "1.2.826.0.1.3680043.8.498.12"
    first = _snapshot(served, tmp_path, 2, study_uid=study, seed="two")
    a, b = first.image_set_ids
    removed = next(iter(first.documents[b]["Study"]["Series"]))
    client.copy_image_set(
        datastoreId=first.datastore_id,
        sourceImageSetId=b,
        copyImageSetInformation={
            "sourceImageSet": {"latestVersionId": first.version_ids[b]},
            "destinationImageSet": {"imageSetId": a, "latestVersionId": first.version_ids[a]},
        },
    )
    for image_set in (a, b):
        while client.get_image_set(datastoreId=first.datastore_id, imageSetId=image_set)["imageSetState"] != "ACTIVE":
            time.sleep(0.01)
    client.delete_image_set(datastoreId=first.datastore_id, imageSetId=b)
    while client.get_image_set(datastoreId=first.datastore_id, imageSetId=b)["imageSetState"] != "DELETED":
        time.sleep(0.01)
    snapshot = curation.fetch(client, first.datastore_id, progress=False)
    assert snapshot.image_set_ids == [a] and len(snapshot.documents[a]["Study"]["Series"]) == 2
    return snapshot, a, removed


def _removal_plan(snapshot: curation.Snapshot, image_set: str, removed: str) -> Any:
    series = snapshot.series.drop(index=(image_set, removed))
    instances = snapshot.instances.drop(index=[i for i in snapshot.instances.index if i[:2] == (image_set, removed)])
    return curation.plan(curation.diff(snapshot, [series, instances], rows="all"), primary="promote")


def test_revert_of_a_series_removal_merges_the_backup_back_and_restores_the_content_exactly(
    served: Any, tmp_path: Path
) -> None:
    _, _, client = served
    snapshot, image_set, removed = _two_series_primary(served, tmp_path)
    datastore_id = snapshot.datastore_id
    before, _ = fetch_document(client, datastore_id, image_set)
    plan = _removal_plan(snapshot, image_set, removed)
    assert plan.undo[image_set].backup == f"{image_set}:backup"
    journal = tmp_path / "j.jsonl"
    result = curation.apply(plan, client, journal, **FAST)
    assert (result["status"] == "applied").all(), result.to_dict("records")
    new = id_mapping(result)[image_set]
    assert set(fetch_document(client, datastore_id, new)[0]["Study"]["Series"]) == set(before["Study"]["Series"]) - {
        removed
    }
    assert curation.verify(plan, client, journal=journal, progress=False).empty
    backup = step_states(read_journal(journal))[f"{image_set}:backup"]["created"]  # kept by apply (D9)
    assert client.get_image_set(datastoreId=datastore_id, imageSetId=backup)["imageSetState"] == "ACTIVE"
    reverted = curation.revert(journal, client, **FAST)
    assert (reverted["status"] == "applied").all(), reverted.to_dict("records")
    final = id_mapping(reverted)[image_set]
    assert final not in (image_set, new)
    document, _ = fetch_document(client, datastore_id, final)
    assert digest(document) == digest(before)  # exact: both series, frames and every attribute
    assert set(_primaries(client, datastore_id)) == {final}
    kinds = [
        r.get("step_kind")
        for r in read_journal(journal.with_name(journal.name + ".revert"))
        if r.get("status") == "done"
    ]
    assert kinds.count("merge") == 1
    assert client.get_image_set(datastoreId=datastore_id, imageSetId=backup)["imageSetState"] == "DELETED"
    again = curation.revert(journal, client, **FAST)  # resumed: nothing more is sent
    assert (again["status"] == "applied").all()
    assert set(_primaries(client, datastore_id)) == {final}


@pytest.mark.parametrize("arm", [_kill_after_one_record, _kill_after_first_write], ids=["journaled", "sent"])
def test_revert_of_a_series_removal_killed_at_every_step_boundary_restores_it_exactly(
    local_store: Any, tmp_path: Path, arm: Any
) -> None:
    import curation.local

    client = curation.local.client(local_store)
    snapshot, image_set, _ = _two_series_primary((local_store, None, client), tmp_path)
    datastore_id = snapshot.datastore_id
    before = digest(fetch_document(client, datastore_id, image_set)[0])
    plan = _removal_plan(snapshot, image_set, _)
    plan_path, journal = tmp_path / "plan.json", tmp_path / "j.jsonl"
    plan.save(plan_path)
    assert (curation.apply(plan, client, journal, **FAST)["status"] == "applied").all()
    kills = _run_until_done(local_store, plan_path, journal, arm, _child_revert)
    assert kills > 0
    if arm is _kill_after_one_record:
        records = read_journal(journal.with_name(journal.name + ".revert"))
        assert kills == len({_boundary(r) for r in records})
    result = curation.revert(journal, client, **FAST)
    assert (result["status"] == "applied").all(), result.to_dict("records")
    final = result.attrs["id_mapping"][image_set]
    assert digest(fetch_document(client, datastore_id, final)[0]) == before
    rows = _rows(local_store)
    # P (and the merged-in image set), B, K, N at apply; K2, R at revert: nothing twice, nothing lost
    assert len(rows) == 7, rows
    assert {r[0] for r in rows if not r[1]} == {final}  # one image set left, primary; the backup deleted too
