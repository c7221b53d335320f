"""Acceptance (issue 13): ordinary pandas workflows plan exactly the changes the curator made, nothing else.

Two snapshots: the three reference documents, and pydicom's test files imported through the embedded service
and fetched with a real boto3 client. Each workflow edits frames the way an analyst would (string methods over
many columns, ``astype(str)``, CSV and Parquet round trips, a merge with a lookup table, sorting,
``groupby().transform``, ``fillna``, ``concat`` of filtered pieces, filtering then editing at every level) and
checks the ChangeSet against the intended edits computed independently from the frames; then ``plan``
accepts it. Both snapshots are marked non-primary so that Patient/Series edits are plannable.
"""

from __future__ import annotations

import copy
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest

import curation
from curation.frames.cells import is_empty
from curation.frames.snapshot import Snapshot
from curation.model.missing import is_absent

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
PYDICOM_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "JPEG2000.dcm",
    "rtdose_1frame.dcm",
    "liver_1frame.dcm",
    "examples_overlay.dcm",
    "SC_rgb_small_odd.dcm",
    "emri_small.dcm",
    "US1_J2KR.dcm",
)


def _reference() -> Snapshot:
    documents = [json.loads(p.read_text()) for p in sorted(REFERENCE.glob("*.json"))]
    snapshot = Snapshot.from_documents(
        documents, datastore_id="0" * 32, version_ids={d["ImageSetID"]: "1" for d in documents}
    )
    snapshot.primary = {d["ImageSetID"]: False for d in documents}
    return snapshot


def _pydicom(directory: Path) -> Snapshot:
    import curation.local
    from curation.local.store import Store

    test_files = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files"
    store = Store(directory)
    report = store.import_paths([str(test_files / name) for name in PYDICOM_FILES if (test_files / name).exists()])
    assert len(report.created) >= 6, report.failures
    snapshot = curation.fetch(curation.local.client(store), report.datastore_id, progress=False)
    snapshot.primary = {i: False for i in snapshot.image_set_ids}
    return snapshot


@pytest.fixture(scope="module", params=["reference", "pydicom"])
def snap(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    return _reference() if request.param == "reference" else _pydicom(tmp_path_factory.mktemp("store"))


def found(changes: Any) -> set[tuple]:
    """(op, row, column, new) of every change (new as JSON text, so lists compare)."""
    table = changes.changes
    return {
        (op, row, column, json.dumps(None if new is curation.NULL else new))
        for op, row, column, new in zip(table["op"], table["row"], table["column"], table["new"], strict=True)
    }


def planned(snapshot: Snapshot, edited: Any, rows: str = "selection") -> set[tuple]:
    """diff + plan (which must accept it); the changes as ``found`` gives them."""
    changes = curation.diff(snapshot, edited, rows=rows)
    assert changes.ok, changes.problems.to_dict("records")
    curation.plan(changes)
    return found(changes)


def text_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if isinstance(frame[c].dtype, pd.StringDtype) and not c.startswith("@")]


def updates(before: pd.DataFrame, after: pd.DataFrame, columns: list[str], multi: bool = False) -> set[tuple]:
    """The intended updates: every present cell of ``columns`` whose text changed."""
    out = set()
    for column in columns:
        for label, old, new in zip(before.index, before[column], after[column], strict=True):
            if is_absent(old) or old == new:
                continue
            value = new.split("\\") if "\\" in new or _multi(column) else new
            out.add(("update", label, column, json.dumps(value if new != "" else None)))
    return out


def _multi(column: str) -> bool:
    from curation.model.dictionary import vm_of

    vm = vm_of(column)
    return bool(vm) and vm != "1"


# --- string normalisation, astype(str) -------------------------------------------------------------------------


def test_string_methods_over_many_columns_plan_only_the_changed_text(snap: Snapshot) -> None:
    for name in ("studies", "series", "instances"):
        frame = getattr(snap, name)
        columns = [c for c in text_columns(frame) if c not in ("StudyInstanceUID", "SpecificCharacterSet")]
        edited = frame.copy()
        edited[columns] = edited[columns].apply(lambda s: s.str.upper().str.strip())
        assert planned(snap, edited) == updates(frame, edited, columns), name  # no removal, no NULL lost


def test_astype_str_plans_nothing(snap: Snapshot) -> None:
    for name in ("studies", "series", "instances", "wide"):
        frame = getattr(snap, name)
        columns = text_columns(frame)
        edited = frame.copy()
        edited[columns] = edited[columns].astype(str)
        assert planned(snap, edited) == set(), name
        whole = frame.astype(str)  # numbers, tuples, NULL as their text: still no edit
        changes = curation.diff(snap, whole)
        assert len(changes) == 0, (name, changes.changes.head().to_dict("records"))


def test_text_pandas_makes_of_missing_values_is_a_problem_with_row_and_column(snap: Snapshot) -> None:
    studies = snap.studies
    absent = studies.columns[studies.isna().any()].tolist()
    column = next(c for c in absent if isinstance(studies[c].dtype, pd.StringDtype))
    row = studies.index[studies[column].isna()][0]
    for text in ("nan", "None", "<NA>", "NaT", "NULL"):
        edited = studies.copy()
        edited.loc[row, column] = text
        changes = curation.diff(snap, edited)
        assert len(changes) == 0
        [problem] = changes.problems.to_dict("records")
        assert (problem["row"], problem["column"]) == (row, column) and repr(text) in problem["reason"]


# --- files ---------------------------------------------------------------------------------------------------


def test_csv_round_trip_plans_nothing_and_an_edit_in_the_csv_plans_just_it(snap: Snapshot) -> None:
    for name in ("studies", "series", "instances", "wide"):
        frame = getattr(snap, name)
        back = curation.read_csv(io.StringIO(curation.to_csv(frame)))
        assert planned(snap, back) == set(), name
    studies = snap.studies
    text = curation.to_csv(studies)
    edited = curation.read_csv(io.StringIO(text))
    row = studies.index[0]
    edited.loc[row, "StudyDescription"] = "FROM THE SPREADSHEET"
    op = "update" if not is_absent(studies.loc[row, "StudyDescription"]) else "add"
    assert planned(snap, edited) == {(op, row, "StudyDescription", '"FROM THE SPREADSHEET"')}


def test_parquet_round_trips_plan_nothing(snap: Snapshot, tmp_path: Path) -> None:
    for name in ("studies", "series", "instances", "frames"):
        frame = getattr(snap, name)
        curation.to_parquet(frame, tmp_path / f"{name}.parquet")
        if name != "frames":
            assert planned(snap, curation.read_parquet(tmp_path / f"{name}.parquet")) == set(), name
        typed = frame[[c for c in frame.columns if frame[c].dtype != object]]
        typed.to_parquet(tmp_path / f"{name}-pandas.parquet")  # pandas' own Parquet for the typed columns
        # pandas cannot read back a nested Arrow column (the frames' pyramids) by default: pandas-dev/pandas#53011
        backend = {"dtype_backend": "pyarrow"} if name == "frames" else {}
        again = pd.read_parquet(tmp_path / f"{name}-pandas.parquet", **backend)
        if name != "frames":
            assert planned(snap, again) == set(), name


# --- merge, sort, groupby, fillna, concat -------------------------------------------------------------------------


def test_merge_with_a_lookup_table_plans_the_matched_rows(snap: Snapshot) -> None:
    studies = snap.studies
    lookup = pd.DataFrame({"PatientName": studies["PatientName"].dropna().unique()[:2]})
    lookup["NewComments"] = [f"LOOKED UP {n}" for n in range(len(lookup))]
    merged = studies.reset_index().merge(lookup, on="PatientName", how="left").set_index("ImageSetID")
    edited = studies.copy()
    edited["PatientComments"] = (
        merged["NewComments"]
        .reindex(studies.index)
        .fillna(studies["PatientComments"] if "PatientComments" in studies.columns else np.nan)
    )
    expected = set()
    for row, value in merged["NewComments"].items():
        if isinstance(value, str):
            old = studies.loc[row, "PatientComments"] if "PatientComments" in studies.columns else np.nan
            expected.add(("add" if is_absent(old) else "update", row, "PatientComments", json.dumps(value)))
    assert planned(snap, edited) == expected and expected


def test_sorting_and_resetting_the_index_by_uid_work_and_plan_only_the_edit(snap: Snapshot) -> None:
    instances = snap.instances
    by_uid = instances.sort_values("SOPInstanceUID")  # the UID is an index level, sortable by name
    assert list(by_uid.index.get_level_values("SOPInstanceUID")) == sorted(
        instances.index.get_level_values("SOPInstanceUID")
    )
    flat = snap.series.reset_index()
    assert {"ImageSetID", "SeriesInstanceUID"} <= set(flat.columns)
    back = flat.set_index(["ImageSetID", "SeriesInstanceUID"])
    assert planned(snap, back) == set()
    edited = by_uid.copy()
    row = edited.index[-1]
    edited.loc[row, "ImageComments"] = "SORTED"
    op = (
        "update"
        if "ImageComments" in instances.columns and not is_absent(instances.loc[row, "ImageComments"])
        else "add"
    )
    assert planned(snap, edited) == {(op, row, "ImageComments", '"SORTED"')}


def test_groupby_transform_plans_the_rows_it_changes(snap: Snapshot) -> None:
    instances = snap.instances
    edited = instances.copy()
    counts = edited.groupby(level="SeriesInstanceUID")["SOPClassUID"].transform("count").astype(str)
    edited["ImageComments"] = "instances in series: " + counts
    expected = set()
    for row, value in edited["ImageComments"].items():
        old = instances.loc[row, "ImageComments"] if "ImageComments" in instances.columns else np.nan
        if is_absent(old) or old != value:
            expected.add(("add" if is_absent(old) else "update", row, "ImageComments", json.dumps(value)))
    assert planned(snap, edited) == expected


def test_fillna_fills_only_absent_cells_and_replace_only_empty_ones(snap: Snapshot) -> None:
    studies = snap.studies
    edited = studies.copy()
    edited["StudyDescription"] = edited["StudyDescription"].fillna("UNKNOWN")
    expected = {
        ("add", row, "StudyDescription", '"UNKNOWN"') for row in studies.index[studies["StudyDescription"].isna()]
    }
    assert planned(snap, edited) == expected
    edited = studies.copy()
    columns = [c for c in text_columns(studies) if snap.vr(c) in ("LO", "SH", "PN", "CS", "LT", "ST", "UT", "UC")]
    edited[columns] = edited[columns].replace("", "EMPTY")
    expected = {
        ("update", row, column, '"EMPTY"')
        for column in columns
        for row in studies.index
        if studies.loc[row, column] == "" and column not in ("StudyInstanceUID",)
    }
    expected = {e for e in expected if not _multi(e[2])} | {
        ("update", e[1], e[2], '["EMPTY"]') for e in expected if _multi(e[2])
    }
    assert planned(snap, edited) == expected


def test_concat_of_filtered_pieces_plans_only_their_edits(snap: Snapshot) -> None:
    instances = snap.instances
    first = instances.index.get_level_values("ImageSetID") == snap.image_set_ids[0]
    piece_a = instances[first].assign(ImageComments="A")
    piece_b = instances[~first].iloc[:2].assign(ImageComments="B")
    edited = pd.concat([piece_a, piece_b])
    expected = set()
    for piece, text in ((piece_a, "A"), (piece_b, "B")):
        for row in piece.index:
            old = instances.loc[row, "ImageComments"] if "ImageComments" in instances.columns else np.nan
            if old != text:
                expected.add(("add" if is_absent(old) else "update", row, "ImageComments", json.dumps(text)))
    assert planned(snap, edited) == expected


# --- filtering then editing, at every level -------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["studies", "series", "instances", "wide"])
def test_filter_then_edit_plans_only_the_edit_and_rows_all_removes_exactly_the_rest(snap: Snapshot, level: str) -> None:
    frame = getattr(snap, level)
    column = {
        "studies": "StudyDescription",
        "series": "SeriesDescription",
        "instances": "ImageComments",
        "wide": "ImageComments",
    }[level]
    keep = np.zeros(len(frame), dtype=bool)
    keep[::2] = True
    sub = frame[keep].copy()
    sub[column] = "FILTERED"
    expected = set()
    for row in sub.index:
        old = frame.loc[row, column] if column in frame.columns else np.nan
        if old != "FILTERED":
            expected.add(("add" if is_absent(old) else "update", row, column, '"FILTERED"'))
    assert planned(snap, sub) == expected  # the rows the filter left out are left alone
    if level in ("instances", "wide"):
        with_removals = curation.diff(snap, sub, rows="all")
        removed = set(with_removals.changes.loc[with_removals.changes["op"] == "remove_instance", "SOPInstanceUID"])
        gone = set(frame.index[~keep].get_level_values("SOPInstanceUID"))
        series_removed = with_removals.changes.loc[with_removals.changes["op"] == "remove_series"]
        dropped_series = {s for s in series_removed["SeriesInstanceUID"]}
        in_removed_series = {label[2] for label in frame.index[~keep] if label[1] in dropped_series}
        blocked = set(with_removals.problems["ImageSetID"])  # an image set would lose its last series
        assert all("every series" in reason for reason in with_removals.problems["reason"])
        assert removed | in_removed_series == {
            sop
            for sop in gone
            if frame.loc[frame.index.get_level_values("SOPInstanceUID") == sop].index[0][0] not in blocked
        }
        assert with_removals.removals()["instances"] == len(removed)
        assert with_removals.removals()["series"] == len(dropped_series)


def test_the_issue_workflow_on_a_three_instance_series() -> None:
    """Issue 13's report: one instance of a three-instance series edited from a filtered copy."""
    document = json.loads((REFERENCE / "us-doppler-9-instances.json").read_text())
    series = next(iter(document["Study"]["Series"].values()))
    series["Instances"] = dict(list(series["Instances"].items())[:3])
    snapshot = Snapshot.from_documents(
        [copy.deepcopy(document)], datastore_id="0" * 32, version_ids={document["ImageSetID"]: "1"}
    )
    snapshot.primary = {document["ImageSetID"]: False}
    instances = snapshot.instances
    mask = np.array([True, False, False])
    sub = instances[mask].copy()
    sub["ImageComments"] = "x"
    changes = curation.diff(snapshot, sub)
    assert list(changes.changes["op"]) == ["add"] and changes.removals() == {
        "attributes": 0,
        "instances": 0,
        "series": 0,
    }
    studies = snapshot.studies
    columns = text_columns(studies)
    studies[columns] = studies[columns].apply(lambda s: s.str.upper())
    upper = curation.diff(snapshot, studies)
    assert "remove" not in set(upper.changes["op"])
    assert all(not is_empty(v) for v in upper.changes["new"])
    assert "removes 0 attribute(s), 0 instance(s), 0 series" in repr(upper)
