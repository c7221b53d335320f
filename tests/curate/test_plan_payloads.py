"""plan's payload fast path (``curation.curate.payloads``) gives exactly the plan of the general path: same
requests, descriptions, problems and plan hash, for plain image sets, ones over the blob limit, refused ones,
mixed ones, and hand-written ChangeSets whose rows are interleaved or repeated."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import curation.curate.planner as planner
from curation.curate.changeset import ChangeSet
from curation.curate.differ import diff
from curation.curate.updateplan import PlanError
from curation.frames.snapshot import Snapshot
from curation.model.document import read_document

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
DATASTORE = "169224ef14db49839f628fb887d50291"


def _snapshot(primary: dict[int, bool]) -> Snapshot:
    source = read_document(str(REFERENCE / "us-doppler-9-instances.json"))
    documents = []
    for number in range(4):
        document = copy.deepcopy(source)
        document["ImageSetID"] = f"{number:032x}"
        documents.append(document)
    versions = {d["ImageSetID"]: "3" for d in documents}
    snapshot = Snapshot.from_documents(documents, datastore_id=DATASTORE, version_ids=versions)
    snapshot.primary = {d["ImageSetID"]: primary.get(i, False) for i, d in enumerate(documents)}
    return snapshot


def _changes(snapshot: Snapshot) -> ChangeSet:
    instances = snapshot.instances.copy()
    instances["InstanceNumber"] = [str(100 + i) for i in range(len(instances))]
    instances["ImageComments"] = [f"comment {i % 4}" for i in range(len(instances))]
    instances["WindowCenter"] = "40\\50"
    series = snapshot.series.copy()
    series["SeriesDescription"] = "described"
    studies = snapshot.studies.copy()
    studies["StudyDescription"] = "STUDY"
    studies["PatientName"] = "DOE^JANE"
    changes = diff(snapshot, [studies, series, instances])
    assert changes.problems.empty or snapshot.primary[snapshot.image_set_ids[0]]
    return changes


def _general(changes: ChangeSet, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Any:
    with monkeypatch.context() as patched:
        patched.setattr(planner, "simple_groups", lambda table, documents: {})
        return _outcome(changes, **options)


def _outcome(changes: ChangeSet, **options: Any) -> Any:
    try:
        made = planner.plan(changes, allow_problems=True, **options)
    except PlanError as exc:  # pragma: no cover - allow_problems keeps problems in the plan
        return repr(exc)
    requests = [
        (r.image_set_id, r.index, r.params, r.force_reasons, r.description, r.planned_on) for r in made.requests
    ]
    return made.plan_id, requests, made.problems.to_dict("records")


@pytest.mark.parametrize("limit", [900, 3_000, 30_000])
def test_payload_groups_plan_as_the_general_path(limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    changes = _changes(_snapshot({}))
    fast = _outcome(changes, max_blob_bytes=limit)
    assert fast == _general(changes, monkeypatch, max_blob_bytes=limit)
    assert fast[1]


def test_refused_and_mixed_image_sets_plan_as_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = _snapshot({0: True})
    changes = _changes(snapshot)
    table = changes.changes
    second = table["ImageSetID"] == snapshot.image_set_ids[1]
    removal = table[second & (table["attribute"] == "ImageComments")].head(1).copy()
    removal["op"], removal["new"] = "remove", None
    third = table[table["ImageSetID"] == snapshot.image_set_ids[2]].head(2).copy()
    third["new"] = "twice"  # the same spots again with another value: a conflict
    rows = pd.concat([table, removal, third], ignore_index=True)
    rows = rows.take(np.random.default_rng(3).permutation(len(rows))).reset_index(drop=True)  # interleaved
    edited = ChangeSet(changes=rows, problems=changes.problems, snapshot=snapshot, vrs={})
    fast = _outcome(edited)
    assert fast == _general(edited, monkeypatch)
    assert len(fast[2]) >= 2  # the primary refusal and the conflict


def test_hand_written_rows_with_missing_uids_plan_as_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = _snapshot({})
    changes = _changes(snapshot)
    table = changes.changes.copy()
    study = table["level"] == "Study"
    table.loc[study, "SeriesInstanceUID"] = np.nan
    table.loc[table.index[-1], "level"] = "Nowhere"
    edited = ChangeSet(changes=table, problems=changes.problems, snapshot=snapshot, vrs={})
    assert _outcome(edited) == _general(edited, monkeypatch)
