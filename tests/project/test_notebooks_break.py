"""A broken payload builder must make the tutorial notebooks fail (issue 7: "a change that breaks a feature
must make its notebook fail").

Each test runs a notebook with nbclient in a fresh kernel whose first cell (injected here, not in the file)
breaks ``curation.plan``'s payload building, and asserts that a later cell of the notebook fails: either the
plan's own validation refuses the payload (PlanError) or one of the notebook's checks on the official
payload shape does (AssertionError).
"""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

PATCH_PREFIX = """
import sys

import orjson

import curation

_plan = sys.modules["curation.curate.planner"]
assert isinstance(_plan._Blob.text, type(lambda: None)), "curation.curate.planner._Blob.text moved: update this test"
"""

#: the SchemaVersion wrapper left out of every blob
DROP_SCHEMA_VERSION = (
    PATCH_PREFIX
    + """
def _text(self):
    return orjson.dumps({k: v for k, v in self.root.items() if k != "SchemaVersion"}).decode()

_plan._Blob.text = _text
"""
)

#: the instance level dropped, as the React sample's payload builder does (instance nodes flattened away)
DROP_INSTANCE_LEVEL = (
    PATCH_PREFIX
    + """
def _text(self):
    root = orjson.loads(orjson.dumps(self.root))
    for series in root.get("Study", {}).get("Series", {}).values():
        for node in series.pop("Instances", {}).values():
            series.setdefault("DICOM", {}).update(node.get("DICOM", {}))
    return orjson.dumps(root).decode()

_plan._Blob.text = _text
"""
)


def _run_broken(notebook: str, patch: str) -> tuple[int, str]:
    """Run ``notebook`` with ``patch`` as its first cell; return (index in the file, ename) of the failing cell."""
    nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(patch))
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    with pytest.raises(nbclient.exceptions.CellExecutionError) as raised:
        client.execute()
    failing = [
        index
        for index, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and any(out.get("output_type") == "error" for out in cell.get("outputs", []))
    ]
    assert len(failing) == 1, failing
    assert failing[0] > 0, "the patch itself failed: " + str(raised.value)[-500:]
    return failing[0] - 1, raised.value.ename


def test_dropping_schema_version_fails_the_bulk_corrections_notebook() -> None:
    index, ename = _run_broken("02-bulk-corrections.ipynb", DROP_SCHEMA_VERSION)
    assert ename in {"PlanError", "AssertionError"}
    source = nbformat.read(NOTEBOOKS / "02-bulk-corrections.ipynb", as_version=4).cells[index].source
    assert "curation.plan(" in source


def test_dropping_the_instance_level_fails_an_assert_of_the_removal_notebook() -> None:
    index, ename = _run_broken("05-removing-instances-and-series.ipynb", DROP_INSTANCE_LEVEL)
    assert ename == "AssertionError"
    source = nbformat.read(NOTEBOOKS / "05-removing-instances-and-series.ipynb", as_version=4).cells[index].source
    assert '"Instances"' in source and "removableAttributes" in source
