"""The fast paths of diff and plan give exactly what the general paths give.

- ``planner._whole`` (every change of an image set in one request, measured once) against the greedy packing
  alone, at limits that split image sets into several requests and at limits that do not;
- ``differ._text_rank`` + ``np.lexsort`` (the ChangeSet's row order) against sorting the ``str`` columns.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import curation.curate.planner as planner
from curation.curate.differ import _text_rank, diff
from curation.frames.snapshot import Snapshot
from curation.model.document import read_document

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
DATASTORE = "169224ef14db49839f628fb887d50291"


def _documents(count: int) -> list[dict[str, Any]]:
    source = read_document(str(REFERENCE / "us-doppler-9-instances.json"))
    documents = []
    for number in range(count):
        document = copy.deepcopy(source)
        document["ImageSetID"] = f"{number:032x}"
        documents.append(document)
    return documents


@pytest.fixture(scope="module")
def changes() -> Any:
    documents = _documents(3)
    snap = Snapshot.from_documents(
        documents, datastore_id=DATASTORE, version_ids={d["ImageSetID"]: "3" for d in documents}
    )
    snap.primary = {d["ImageSetID"]: False for d in documents}
    edited = snap.instances.copy()
    edited["InstanceNumber"] = [str(100 + i) for i in range(len(edited))]
    edited["ImageComments"] = [f"comment {i % 4}" for i in range(len(edited))]
    edited["WindowCenter"] = "40\\50"
    changeset = diff(snap, edited)
    assert changeset.problems.empty
    assert len(changeset.changes) > 50
    return changeset


def _requests(plan: Any) -> list[tuple]:
    return [(r.image_set_id, r.index, r.params, r.description, r.planned_on) for r in plan.requests]


@pytest.mark.parametrize("limit", [600, 1_500, 4_000, 30_000])
def test_one_request_fast_path_equals_greedy_packing(changes: Any, limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = planner.plan(changes, max_blob_bytes=limit)
    monkeypatch.setattr(planner, "_whole", lambda units, limit: None)
    greedy = planner.plan(changes, max_blob_bytes=limit)
    assert _requests(fast) == _requests(greedy)
    assert fast.plan_id == greedy.plan_id
    if limit == 30_000:
        assert len(fast.requests) == 3  # one per image set: the fast path was taken
    if limit == 600:
        assert len(fast.requests) > 3  # split: the greedy packing ran


def test_fast_path_refuses_a_path_set_twice() -> None:
    change = planner._Change("s", "Study", None, None, "StudyDescription", "update", "A", "LO", 0, "c")
    change.fragments = [("u", ("Study", "DICOM", "StudyDescription"), "A")]
    twice = planner._Change("s", "Study", None, None, "StudyDescription", "update", "A", "LO", 1, "c")
    twice.fragments = list(change.fragments)
    assert planner._whole([planner._Unit([change]), planner._Unit([twice])], 30_000) is None
    whole = planner._whole([planner._Unit([change])], 30_000)
    assert whole is not None and whole.updates()["updatableAttributes"] == (
        '{"SchemaVersion":1.1,"Study":{"DICOM":{"StudyDescription":"A"}}}'
    )
    assert whole.blobs["u"].size == len(whole.updates()["updatableAttributes"])


def test_text_rank_orders_as_sorting_the_text() -> None:
    values = pd.Series(["b", None, "a", "1.2.10", "1.2.9", float("nan"), "", "a", 7], dtype=object)
    keys = pd.DataFrame({"k": values.fillna("").astype(str).to_numpy()})
    expected = keys.sort_values("k", kind="stable").index.to_numpy()
    assert list(np.lexsort([_text_rank(values)])) == list(expected)
