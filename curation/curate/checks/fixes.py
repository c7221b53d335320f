"""``fix(snapshot, findings, lookup=)``: the edits that fix findings, as edited frames that ``diff`` takes.

A fix is an ordinary edit: ``fix`` returns copies of the snapshot's frames (only the affected rows and columns)
with the suggested values written in, and ``diff`` turns them into a ChangeSet that is reviewed, planned and
applied like any other (then ``check`` on a re-fetched snapshot no longer finds them)::

    findings = curation.check(snapshot)
    chosen = findings[findings["check"] == "patient_conflict"]        # select what to fix
    edits = curation.fix(snapshot, chosen, lookup=subjects)           # subjects: a table (see below)
    changes = curation.diff(snapshot, edits)                          # review
    plan = curation.plan(changes)                                     # Patient level on primaries: primary="promote"

What is written, per finding (its ``fix``; ``rows`` are labels of the level's frame):

- ``majority``, ``lookup``, ``reformat``, ``fill``: the value into ``attribute`` of every row of ``rows``:
  Patient and Study level into ``studies`` (every image set of the patient or study, so the fix reaches all
  of them), Series into ``series``, Instance into ``instances``;
- ``renumber``: ``suggested`` is a tuple of InstanceNumbers aligned with ``rows``;
- ``delete_image_set`` and None: nothing (a deletion is a command to review and run, never an edit).

The value is, first, ``lookup``'s entry for the finding's (key, attribute): a DataFrame indexed by key (a
PatientID, a StudyInstanceUID, ...) with one column per attribute, or the same as ``{attribute: {key: value}}``;
else the finding's ``suggested`` (edit that column of your copy of the findings to choose another value). A
fixable finding with neither (a tie, a clinical fact) is an error listing every such finding, never a guess,
and so are two findings writing different values into one cell. Nothing is written to ``findings``, the
snapshot or its frames. AHI refuses Patient-level updates on primary image sets, and any update that needs
``force`` there (a multi-valued attribute, a sequence): ``diff`` reports it with the documented workaround, and
applying such fixes uses ``plan(..., primary="promote")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from curation.curate.checks.context import FRAME_OF_LEVEL
from curation.curate.checks.findings import EDIT_FIXES
from curation.frames.snapshot import Snapshot
from curation.model.missing import is_absent

Lookup = pd.DataFrame | Mapping[str, Mapping[Any, Any]]


class FixError(ValueError):
    """Findings that cannot be turned into edits (no value to write, or two values for one cell); ``problems``
    lists them: finding id, key, attribute and the reason."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        self.problems = problems
        lines = [f"{p['finding']} ({p['check']}, key {p['key']!r}, {p['attribute']}): {p['reason']}" for p in problems]
        super().__init__(f"{len(problems)} finding(s) cannot be fixed:\n" + "\n".join(lines))


def _table(lookup: Lookup | None) -> dict[str, dict[Any, Any]]:
    if lookup is None:
        return {}
    items = lookup.to_dict() if isinstance(lookup, pd.DataFrame) else lookup
    return {str(attribute): dict(values) for attribute, values in items.items()}


def _value(table: dict[str, dict[Any, Any]], row: Mapping[str, Any]) -> tuple[bool, Any]:
    """(found, value): the lookup's entry for the finding, else its suggested value."""
    entries = table.get(str(row["attribute"]), {})
    if row["key"] in entries and not is_absent(entries[row["key"]]):
        return True, entries[row["key"]]
    suggested = row["suggested"]
    if suggested is None or (not isinstance(suggested, tuple | list) and is_absent(suggested)):
        return False, None
    return True, suggested


class _Writes:
    """The cells to write, per frame: ``{frame: {(row, column): (value, finding)}}``, conflicts collected."""

    def __init__(self) -> None:
        self.cells: dict[str, dict[tuple[Any, str], tuple[Any, str]]] = {}
        self.problems: list[dict[str, Any]] = []

    def add(self, frame: str, row: Any, column: str, value: Any, finding: Mapping[str, Any]) -> None:
        cells = self.cells.setdefault(frame, {})
        earlier = cells.get((row, column))
        if earlier is not None and not _same(earlier[0], value):
            self.problems.append(
                _problem(
                    finding,
                    f"writes {value!r} into {column} of row {row!r}, where finding {earlier[1]} writes {earlier[0]!r}",
                )
            )
            return
        cells[(row, column)] = (value, str(finding["finding"]))


def _same(a: Any, b: Any) -> bool:
    return bool(type(a) is type(b) and a == b)


def _problem(finding: Mapping[str, Any], reason: str) -> dict[str, Any]:
    return {
        "finding": finding["finding"],
        "check": finding["check"],
        "key": finding["key"],
        "attribute": finding["attribute"],
        "reason": reason,
    }


def _plan_writes(findings: pd.DataFrame, table: dict[str, dict[Any, Any]]) -> _Writes:
    writes = _Writes()
    records: list[dict[str, Any]] = [
        {str(k): v for k, v in r.items()} for r in findings.reset_index().to_dict("records")
    ]
    for finding in records:
        if finding["fix"] not in EDIT_FIXES:
            continue
        found, value = _value(table, finding)
        if not found:
            writes.problems.append(
                _problem(
                    finding,
                    "no value to write: give one in lookup= (by key and "
                    "attribute) or in the finding's suggested column",
                )
            )
            continue
        frame, rows, column = FRAME_OF_LEVEL[finding["level"]], tuple(finding["rows"]), str(finding["attribute"])
        if finding["fix"] == "renumber":
            if not isinstance(value, tuple | list) or len(value) != len(rows):
                writes.problems.append(_problem(finding, "renumber needs one InstanceNumber per row"))
                continue
            for row, number in zip(rows, value, strict=True):
                writes.add(frame, row, column, str(number), finding)
        else:
            for row in rows:
                writes.add(frame, row, column, value, finding)
    return writes


def _column(original: pd.Series, cells: np.ndarray) -> pd.Series:
    """``cells`` (an object array) in ``original``'s dtype when they all fit it, else as an object column."""
    values = pd.Series(cells, index=original.index, dtype=object)
    present = [v for v in cells if not is_absent(v)]
    if isinstance(original.dtype, pd.StringDtype) and all(isinstance(v, str) for v in present):
        return values.astype(original.dtype)
    if str(original.dtype) == "Int64" and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return values.astype("Int64")
    return values


def _edited(snapshot: Snapshot, name: str, cells: dict[tuple[Any, str], tuple[Any, str]]) -> pd.DataFrame:
    """A copy of the rows and columns of frame ``name`` that ``cells`` touch, with their values written."""
    source: pd.DataFrame = getattr(snapshot.cached_flattened(), name)
    rows = list(dict.fromkeys(row for row, _ in cells))
    columns = list(dict.fromkeys(column for _, column in cells))
    index = (
        pd.MultiIndex.from_tuples(rows, names=source.index.names)
        if source.index.nlevels > 1
        else pd.Index(rows, name=source.index.name)
    )
    edited = pd.DataFrame(index=index)
    for column in columns:
        original = (
            source[column].loc[index]
            if column in source.columns
            else pd.Series([None] * len(index), index=index, dtype=object)
        )
        values = original.to_numpy(dtype=object).copy()
        written = [(row, value) for (row, c), (value, _) in cells.items() if c == column]
        positions = index.get_indexer(
            pd.MultiIndex.from_tuples([r for r, _ in written], names=index.names)
            if index.nlevels > 1
            else pd.Index([r for r, _ in written])
        )
        replacement = np.empty(len(written), dtype=object)
        replacement[:] = [value for _, value in written]
        values[positions] = replacement
        edited[column] = _column(original, values)
    return edited


def fix(snapshot: Snapshot, findings: pd.DataFrame, lookup: Lookup | None = None) -> dict[str, pd.DataFrame]:
    """The edited frames that fix ``findings`` (rows of ``curation.check``'s table; see the module docstring):
    ``{"studies": ..., "series": ..., "instances": ...}`` holding only the frames, rows and columns that change,
    ready for ``curation.diff(snapshot, edits)``. Raises ``FixError`` listing every finding it cannot fix."""
    if not isinstance(findings, pd.DataFrame) or "fix" not in findings.columns:
        raise TypeError("fix takes the findings table of curation.check (a DataFrame with a 'fix' column)")
    writes = _plan_writes(findings.rename_axis("finding"), _table(lookup))
    if writes.problems:
        raise FixError(writes.problems)
    return {name: _edited(snapshot, name, cells) for name, cells in writes.cells.items() if cells}
