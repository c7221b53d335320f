"""diff's typed-array bulk path (``bulk.typed_block``, changes held as a ``ChangeBlock``) gives exactly the
ChangeSet and problems of the per-cell paths, for plain edits, odd cells, additions and primary image sets."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import curation.curate.differ as differ
from curation.curate.differ import diff
from curation.curate.planner import plan
from curation.frames.snapshot import Snapshot
from curation.model.document import read_document

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
DATASTORE = "169224ef14db49839f628fb887d50291"


def _snapshot(primary: dict[int, bool | None]) -> Snapshot:
    source = read_document(str(REFERENCE / "us-doppler-9-instances.json"))
    documents = []
    for number in range(4):
        document = copy.deepcopy(source)
        document["ImageSetID"] = f"{number:032x}"
        documents.append(document)
    versions = {d["ImageSetID"]: "3" for d in documents}
    snapshot = Snapshot.from_documents(documents, datastore_id=DATASTORE, version_ids=versions)
    snapshot.primary = {d["ImageSetID"]: primary[i] for i, d in enumerate(documents) if primary.get(i) is not None}
    return snapshot


def _edited(snapshot: Snapshot) -> pd.DataFrame:
    edited = snapshot.instances.copy()
    count = len(edited)
    text = [c for c in edited.columns if isinstance(edited[c].dtype, pd.StringDtype)]
    numbers = [c for c in edited.columns if str(edited[c].dtype) in ("Int64", "Float64")]
    assert text and numbers
    for k, column in enumerate(text):
        values = edited[column].to_numpy(dtype=object).copy()
        for i in range(k % 3, count, 3):
            values[i] = ["nan", "", np.nan, f"V{i}", "1\\2", "\x00x", "bad\\value\\" * 8][(i + k) % 7]
        edited[column] = pd.Series(pd.array(values, dtype=edited[column].dtype), index=edited.index)
    for k, column in enumerate(numbers):
        values = edited[column].to_numpy(dtype=object).copy()
        for i in range(k % 2, count, 2):
            choices = [pd.NA, 7, 3.5, 70000] if edited[column].dtype == "Float64" else [pd.NA, 7, 70000]
            values[i] = choices[(i + k) % len(choices)]
        edited[column] = pd.Series(pd.array(values, dtype=edited[column].dtype), index=edited.index)
    edited["ImageComments"] = pd.Series(["added"] * count, index=edited.index, dtype=edited[text[0]].dtype)
    edited["SeriesDescription"] = pd.Series(["misplaced"] * count, index=edited.index, dtype=edited[text[0]].dtype)
    return edited


def _rows(changes: Any) -> tuple[list, list]:
    table = [tuple(map(repr, row)) for row in changes.changes.itertuples(index=False)]
    problems = [tuple(map(repr, row)) for row in changes.problems.itertuples(index=False)]
    return table, problems


@pytest.mark.parametrize("primary", [{0: False, 1: False, 2: False, 3: False}, {0: True, 1: False, 2: None}])
def test_typed_block_equals_the_per_cell_paths(
    primary: dict[int, bool | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = _snapshot(primary)
    edited = _edited(snapshot)
    fast = diff(snapshot, edited)
    with monkeypatch.context() as patched:
        patched.setattr(differ, "takes_block", lambda codec, orig, new: False)
        slow = diff(snapshot, edited)
    assert len(fast.changes) > 20 and len(fast.problems) > 10
    assert _rows(fast) == _rows(slow)
    plans = [plan(c, allow_problems=True) for c in (fast, slow)]
    assert plans[0].plan_id == plans[1].plan_id


def test_typed_block_leaves_the_users_frame_alone() -> None:
    snapshot = _snapshot({0: False, 1: False, 2: False, 3: False})
    edited = _edited(snapshot)
    before = edited.copy()
    diff(snapshot, edited)
    pd.testing.assert_frame_equal(edited, before)


def test_typed_block_with_node_removals_and_two_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = _snapshot({0: False, 1: False, 2: False, 3: False})
    edited = _edited(snapshot)
    inputs = [edited.iloc[2:], snapshot.instances.assign(InstanceNumber="5")]
    fast = diff(snapshot, inputs, rows="all")
    with monkeypatch.context() as patched:
        patched.setattr(differ, "takes_block", lambda codec, orig, new: False)
        slow = diff(snapshot, inputs, rows="all")
    assert (fast.changes["op"] == "remove_instance").any()
    assert _rows(fast) == _rows(slow)
