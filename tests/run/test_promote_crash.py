"""SIGKILL at every step boundary of copy-and-promote procedures, then resume: each step's effect exactly once,
no image set lost, frames intact, verify empty (the harness of test_apply's kill test, one kill per boundary)."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import curation.local
from curation.curate.updateplan import UpdatePlan
from curation.run import journal as journal_module
from curation.run.applying import apply
from curation.run.journal import read_journal
from tests.run.conftest import ct_series
from tests.run.promote_plans import fetch_document, patient_name, promote_plan
from tests.run.test_promote_apply import FAST

WRITES = ("CopyImageSet", "DeleteImageSet", "UpdateImageSetMetadata")


def _rows(store: Any) -> list[tuple[str, int, int, int]]:
    with sqlite3.connect(store.database) as conn:
        return conn.execute("SELECT image_set_id, deleted, is_primary, latest_version FROM image_sets").fetchall()


def _child(store_path: Path, plan_path: Path, journal: Path, arm: Callable[[Any], None]) -> int:
    plan = UpdatePlan.load(plan_path)
    client = curation.local.client(store_path)
    arm(client)
    frame = apply(plan, client, journal, **FAST)
    return 0 if (frame["status"] == "applied").all() else 3


def _boundary(record: dict[str, Any]) -> tuple[Any, ...]:
    return record.get("kind"), record.get("step"), record.get("status"), record.get("original")


def _kill_after_one_record(_: Any) -> None:
    """Die right after the first record that no earlier process wrote (a step sent again after its "sending"
    was found never to have landed is not killed twice there, so every child moves the run on)."""
    real = journal_module.Journal.append

    def append(self: Any, record: dict[str, Any], *, sync: bool = True) -> dict[str, Any]:
        seen = {_boundary(r) for r in self.records}
        out = real(self, record, sync=sync)
        if _boundary(record) not in seen:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    journal_module.Journal.append = append  # type: ignore[method-assign]


def _kill_after_first_write(client: Any) -> None:
    def hook(**_: Any) -> None:  # the call went out and was answered; nothing journaled it yet
        os.kill(os.getpid(), signal.SIGKILL)

    for name in WRITES:
        client.meta.events.register(f"after-call.medical-imaging.{name}", hook)


def _run_until_done(
    store: Any, plan_path: Path, journal: Path, arm: Callable[[Any], None], child: Callable[..., int] | None = None
) -> int:
    """Fork children running ``child`` (apply by default) with ``arm`` until one finishes; the number killed."""
    child = child or _child
    for kills in range(200):
        pid = os.fork()
        if pid == 0:
            code = 4
            try:
                code = child(store.path, plan_path, journal, arm)
            finally:
                os._exit(code)
        status = os.waitpid(pid, 0)[1]
        if os.WIFEXITED(status):
            assert os.WEXITSTATUS(status) == 0, f"the applying process failed: {os.WEXITSTATUS(status)}"
            return kills
        assert os.WIFSIGNALED(status)
    pytest.fail("apply never finished")


@pytest.mark.parametrize("arm", [_kill_after_one_record, _kill_after_first_write], ids=["journaled", "sent"])
def test_killed_at_every_step_boundary_each_step_once(local_store: Any, tmp_path: Path, arm: Any) -> None:
    study = "1.2.826.0.1.3680043.8.498.1"
    report = local_store.import_paths(ct_series(tmp_path, 2, study_uid=study))
    datastore_id, originals = report.datastore_id, report.created
    client = curation.local.client(local_store)
    frames_before = {i: _frame_bytes(client, datastore_id, i) for i in originals}
    plan = promote_plan(client, datastore_id, {i: patient_name("FIXED^NAME") for i in originals})
    plan_path, journal = tmp_path / "plan.json", tmp_path / "j.jsonl"
    plan.save(plan_path)
    kills = _run_until_done(local_store, plan_path, journal, arm)
    records = read_journal(journal)
    if arm is _kill_after_one_record:
        # one kill after every distinct record: every boundary, between delete and promote too
        assert kills == len({_boundary(r) for r in records})
        kinds = [(r.get("step_kind"), r.get("status")) for r in records]
        between = kinds.index(("delete_primary", "done")) + 1
        assert kinds[between:].index(("promote", "sending")) >= 0
    else:
        # each copy, update, delete and promotion answered, the answer lost (two calls in flight at a kill, of
        # different actions, lose their answers together)
        assert 5 <= kills <= 5 * len(originals)
        sends = [r for r in records if r.get("status") == "sending"]
        assert len(sends) >= 5 * len(originals)
    result = apply(plan, client, journal, **FAST)  # resumed once more: nothing left to do
    assert (result["status"] == "applied").all(), result
    mapping = result.attrs["id_mapping"]
    rows = _rows(local_store)
    orphans = {r["image_set"] for r in records if r.get("kind") == "orphan"}
    assert not orphans
    # exactly the originals (deleted), one working copy each (deleted, two versions: copy + one update), one
    # new primary each: no step's effect twice, no image set lost
    assert len(rows) == 3 * len(originals), rows
    by_id = {r[0]: r for r in rows}
    for original in originals:
        assert by_id[original][1] == 1
        new = mapping[original]
        assert by_id[new][1:3] == (0, 1)
        document, _ = fetch_document(client, datastore_id, new)
        assert document["Patient"]["DICOM"]["PatientName"] == "FIXED^NAME"
        assert _frame_bytes(client, datastore_id, new) == frames_before[original]
    copies = [r for r in rows if r[0] not in originals and r[0] not in mapping.values()]
    assert [(r[1], r[2], r[3]) for r in copies] == [(1, 0, 2)] * len(originals)
    from curation.run.verifying import verify

    assert verify(plan, client, journal).empty


def _frame_bytes(client: Any, datastore_id: str, image_set_id: str) -> list[bytes]:
    document, _ = fetch_document(client, datastore_id, image_set_id)
    out = []
    for series in document["Study"]["Series"].values():
        for instance in series["Instances"].values():
            for frame in instance["ImageFrames"]:
                answer = client.get_image_frame(
                    datastoreId=datastore_id,
                    imageSetId=image_set_id,
                    imageFrameInformation={"imageFrameId": frame["ID"]},
                )
                out.append(answer["imageFrameBlob"].read())
    return out


def _child_revert(store_path: Path, plan_path: Path, journal: Path, arm: Callable[[Any], None]) -> int:
    from curation.run.reverting import revert

    client = curation.local.client(store_path)
    arm(client)
    frame = revert(journal, client, **FAST)
    return 0 if (frame["status"] == "applied").all() else 3


def test_revert_killed_at_every_step_boundary_restores_the_content_exactly(local_store: Any, tmp_path: Path) -> None:
    from curation.model.document import digest
    from curation.run.reverting import revert

    study = "1.2.826.0.1.3680043.8.498.2"
    report = local_store.import_paths(ct_series(tmp_path, 2, study_uid=study, seed="rev"))
    datastore_id, originals = report.datastore_id, report.created
    client = curation.local.client(local_store)
    before = {i: digest(fetch_document(client, datastore_id, i)[0]) for i in originals}
    plan = promote_plan(client, datastore_id, {i: patient_name("FIXED^NAME") for i in originals})
    plan_path, journal = tmp_path / "plan.json", tmp_path / "j.jsonl"
    plan.save(plan_path)
    assert (apply(plan, client, journal, **FAST)["status"] == "applied").all()
    kills = _run_until_done(local_store, plan_path, journal, _kill_after_one_record, _child_revert)
    records = read_journal(journal.with_name(journal.name + ".revert"))
    assert kills == len({_boundary(r) for r in records})
    result = revert(journal, client, **FAST)
    assert (result["status"] == "applied").all(), result
    third = result.attrs["id_mapping"]
    rows = _rows(local_store)
    assert len(rows) == 5 * len(originals)  # P, K, N (apply) and K2, R (revert): nothing twice, nothing lost
    primaries = {r[0] for r in rows if not r[1]}
    assert primaries == {third[i] for i in originals}
    for original in originals:
        assert digest(fetch_document(client, datastore_id, third[original])[0]) == before[original]
