"""One writer per journal, with real processes: of two or three ``ahi-curation apply`` started at once on the
same plan and journal, one applies and the others exit at once (code 2, one line naming the holder's PID);
nothing is in conflict, every change lands once, verify is clean and revert restores.

The embedded server holds every call of the winner until the others have exited, so the test does not depend
on timing: whoever holds the lock is still running while the others try."""

from __future__ import annotations

import copy
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config

import curation.local
from curation.curate.differ import diff
from curation.curate.planner import plan
from curation.local.server import serving
from curation.local.service import Service
from curation.model.document import read_document
from curation.run.fetching import fetch
from curation.run.journal import read_journal
from curation.run.reverting import revert
from curation.run.verifying import verify

REFERENCE = Path(__file__).parents[1] / "data" / "reference" / "ct-2025-htj2k-1-instance.json"


class Gate:
    """A backend that answers nothing until ``opened`` is set."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.opened = threading.Event()
        self.waiting = threading.Event()

    def call(self, operation_name: str, params: dict[str, Any]) -> dict[str, Any]:
        self.waiting.set()
        if not self.opened.wait(timeout=120):
            raise RuntimeError("the gate was never opened")
        return self.store.call(operation_name, params)


def _documents(count: int) -> list[dict[str, Any]]:
    from pydicom.uid import generate_uid

    base = read_document(str(REFERENCE))
    documents = []
    for number in range(count):
        document = copy.deepcopy(base)
        document.pop("ImageSetID", None)
        document["Patient"]["DICOM"]["PatientID"] = f"C{number:02d}"
        document["Study"]["DICOM"]["StudyInstanceUID"] = str(generate_uid())
        documents.append(document)
    return documents


@pytest.mark.parametrize("appliers", [2, 3])
def test_concurrent_appliers_on_one_journal(local_store: Any, tmp_path: Path, appliers: int) -> None:
    report = local_store.import_documents(_documents(6))
    client = curation.local.client(local_store, config=Config(retries={"total_max_attempts": 1}))
    snapshot = fetch(client, report.datastore_id, progress=False)
    studies = snapshot.studies.copy()
    studies["StudyDescription"] = "CT ONCE"
    update_plan = plan(diff(snapshot, studies))
    plan_path, journal = tmp_path / "plan.json", tmp_path / "j.jsonl"
    update_plan.save(plan_path)
    gate = Gate(local_store)
    with serving(Service(gate)) as endpoint:
        command = [
            sys.executable,
            "-m",
            "curation.cli",
            "apply",
            str(plan_path),
            "--journal",
            str(journal),
            "--endpoint-url",
            endpoint,
            "--rate",
            "none",
            "--no-progress",
        ]
        processes = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(appliers)
        ]
        losers: list[tuple[subprocess.Popen[str], str]] = []
        try:
            while len(losers) < appliers - 1:  # the lock holder is held at the gate: the others must give up
                for process in processes:
                    if process.poll() is not None and all(process is not p for p, _ in losers):
                        losers.append((process, process.stderr.read() if process.stderr else ""))
                gate.waiting.wait(timeout=0.05)
            refused = revert_command(journal, endpoint)  # a revert on the journal in use is refused too
            gate.opened.set()
            (winner,) = [p for p in processes if all(p is not q for q, _ in losers)]
            out, err = winner.communicate(timeout=120)
        finally:
            gate.opened.set()
            for process in processes:
                if process.poll() is None:
                    process.kill()
    assert winner.returncode == 0, err
    assert f"{len(update_plan.requests)} applied" in out
    for loser, err in losers:
        assert loser.returncode == 2
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"is in use by process {winner.pid}" in err
    assert refused.returncode == 2 and f"in use by process {winner.pid}" in refused.stderr
    records = read_journal(journal)
    statuses = [r["status"] for r in records if r.get("kind") == "request"]
    assert "conflict" not in statuses and statuses.count("done") == len(update_plan.requests)
    for image_set_id in update_plan.base_versions:
        versions = local_store.call(
            "ListImageSetVersions", {"datastoreId": report.datastore_id, "imageSetId": image_set_id}
        )["imageSetPropertiesList"]
        assert len(versions) == 2  # each change exactly once
    assert verify(update_plan, client, journal, progress=False).empty
    undone = revert(journal, client, rate=None, control_rate=None, progress=False, poll=0.005)
    assert (undone["status"] == "applied").all()


def revert_command(journal: Path, endpoint: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "curation.cli",
        "revert",
        str(journal),
        "--endpoint-url",
        endpoint,
        "--no-progress",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)
