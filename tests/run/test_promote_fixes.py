"""Bugs found when the planner (``plan(changes, primary="promote")``) and the runner were merged, each through a
real boto3 client against the embedded service over HTTP, on imported primaries edited in DataFrames: verify
after a SOPInstanceUID change, revert of a series removal, verify's progress count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import curation
from curation.model.document import digest
from curation.run.mapping import id_mapping
from tests.run.conftest import ct_series
from tests.run.promote_plans import fetch_document
from tests.run.test_promote_apply import FAST, _primaries


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
