"""An ipywidgets curation panel over a Snapshot: select rows, edit an attribute, review, apply, undo.

``CurationPanel(snapshot, client, journal)`` shows, top to bottom: a filter builder (attribute, operator,
value; rows combined with AND), the number of matching instances and a preview of them, an edit form (set a
value, set it empty (NULL), or remove the attribute on the matching rows; VR and level shown, values checked
against the VR), the resulting ChangeSet and UpdatePlan, an Apply button with a progress bar and the result
table, and an Undo button that reverts the last apply from its journal.

Every button only calls a plain method (``add_filter``, ``mask``, ``set_value``, ``changes``, ``plan``,
``apply``, ``undo``), so the panel is scriptable and testable without a browser. The panel edits its own
copy of the snapshot's wide view; the snapshot is never modified. After an apply or an undo it fetches the
touched image sets again and starts over from the datastore's new state.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import orjson
import pandas as pd

from curation.frames.cells import REMOVE, is_empty, is_remove
from curation.frames.flattening import NULL, copy_value, is_absent, split_column
from curation.model import dictionary as dicom

__all__ = ["OPERATORS", "CurationPanel", "Filter", "FilterRow", "filter_mask", "parse_value"]

OPERATORS = ("==", "!=", "contains", "startswith", "is missing", "is NULL", "<", ">")
#: Operators that take no value.
UNARY_OPERATORS = frozenset({"is missing", "is NULL"})
PREVIEW_COLUMNS = ("PatientID", "StudyDescription", "Modality", "SeriesNumber", "SeriesDescription", "InstanceNumber")
_INT_VRS = frozenset({"US", "SS", "UL", "SL", "SV", "UV"})
_FLOAT_VRS = frozenset({"FL", "FD"})
_ERROR_STYLE = "color:#b00020"
_OK_STYLE = "color:#1b5e20"


# --- filters -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """One condition on a column: ``attribute op value`` (value ignored by "is missing" / "is NULL")."""

    attribute: str
    op: str
    value: str = ""


def _text(value: Any) -> str | None:
    """A cell as text for comparisons: strings stripped, arrays joined by backslashes; None when absent/empty."""
    if is_absent(value) or is_empty(value) or is_remove(value):
        return None
    if isinstance(value, str):
        return "\\".join(part.strip() for part in value.split("\\")) if "\\" in value else value.strip()
    if isinstance(value, list | tuple):
        parts = [_text(v) for v in value]
        return "\\".join("" if p is None else p for p in parts)
    if isinstance(value, dict):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, list | tuple) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def filter_mask(frame: pd.DataFrame, attribute: str, op: str, value: str = "") -> pd.Series:
    """Boolean mask of the rows of ``frame`` where ``attribute op value`` holds.

    Cells compare as text (strings stripped, arrays joined with backslashes, numbers as written); "=="
    also matches numerically ("1" == 1.0). "!=" is the negation of "==" (absent cells match it).
    "contains"/"startswith" are case-sensitive on the text. "<"/">" compare numbers when the value is a
    number (cells that are not numbers never match), else text (DA dates compare correctly as text).
    "is missing": the attribute is absent; "is NULL": present-empty (``""`` in a text column, ``NULL`` in an
    object one). An unknown column matches nothing (and everything is "missing").
    """
    if op not in OPERATORS:
        raise ValueError(f"unknown operator {op!r}; use one of {', '.join(OPERATORS)}")
    if attribute not in frame.columns:
        return pd.Series(op in ("is missing", "!="), index=frame.index, dtype=bool)
    cells = frame[attribute].to_numpy(dtype=object)
    if op == "is missing":
        result = [is_absent(v) for v in cells]
    elif op == "is NULL":
        result = [not is_absent(v) and is_empty(v) for v in cells]
    else:
        target = value.strip() if isinstance(value, str) else _text(value) or ""
        number = _number(target)
        if op in ("==", "!="):
            equal = [
                (text := _text(v)) is not None
                and (text == target or (number is not None and _number(v) == number))
                for v in cells
            ]
            result = equal if op == "==" else [not e for e in equal]
        elif op == "contains":
            result = [(text := _text(v)) is not None and target in text for v in cells]
        elif op == "startswith":
            result = [(text := _text(v)) is not None and text.startswith(target) for v in cells]
        elif number is not None:
            numbers = [_number(v) for v in cells]
            result = [n is not None and (n < number if op == "<" else n > number) for n in numbers]
        else:
            texts = [_text(v) for v in cells]
            result = [t is not None and (t < target if op == "<" else t > target) for t in texts]
    return pd.Series(np.asarray(result, dtype=bool), index=frame.index)


# --- values --------------------------------------------------------------------------------------------------


def _vm(key: str) -> str | None:
    from curation.model.dictionary import vm_of

    return vm_of(key)


def parse_value(text: Any, vr: str | None, vm: str | None = None) -> Any:
    """The AHI JSON value of what a person typed, by VR: integers for US/SS/UL/SL/SV/UV, numbers for FL/FD,
    strings otherwise; multi-valued attributes (VM other than 1) split on backslashes into an array; SQ (or
    text starting with ``[``/``{``) parsed as JSON. Values that are not strings are returned as they are.
    Raises ValueError with a readable reason.
    """
    if not isinstance(text, str):
        return copy_value(text)
    stripped = text.strip()
    if vr == "SQ" or stripped[:1] in ("[", "{"):
        try:
            return orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            if vr == "SQ":
                raise ValueError(f"a sequence (SQ) value must be JSON (an array of objects): {exc}") from None
    multi = vm is not None and vm != "1"
    parts = text.split("\\") if multi else [text]
    candidates = [c.strip() for c in (vr or "").split(" or ") if c.strip()]
    out = []
    for part in parts:
        if candidates and all(c in _INT_VRS for c in candidates):
            try:
                out.append(int(part.strip()))
            except ValueError:
                raise ValueError(f"VR {vr} takes integers, and {part!r} is not one") from None
        elif candidates and all(c in _FLOAT_VRS for c in candidates):
            try:
                out.append(float(part.strip()))
            except ValueError:
                raise ValueError(f"VR {vr} takes numbers, and {part!r} is not one") from None
        else:
            out.append(part)
    return out if multi else out[0]


def _display(value: Any) -> str:
    if value is NULL:
        return "NULL"
    if is_remove(value):
        return "REMOVE"
    if is_absent(value):
        return ""
    if isinstance(value, list | tuple) and all(not isinstance(v, list | tuple | dict) for v in value):
        return "\\".join("" if v is None else str(v) for v in value)
    if isinstance(value, list | tuple | dict):
        text = orjson.dumps(value).decode()
        return text if len(text) <= 80 else text[:77] + "..."
    return str(value)


def _cell_for(value: Any, text: bool) -> Any:
    """The cell the panel writes for a JSON ``value`` (None: remove): in a text column ``""`` for empty and
    arrays of text joined by backslashes; elsewhere ``NULL`` for empty; ``REMOVE`` for a removal."""
    if value is None:
        return REMOVE
    if text:
        if value is NULL:
            return ""
        if isinstance(value, list) and all(isinstance(v, str) and "\\" not in v for v in value) and value != [""]:
            return "\\".join(value)
    return copy_value(value)


def _html(frame: pd.DataFrame, rows: int | None = None) -> str:
    shown = frame if rows is None else frame.head(rows)
    shown = shown.astype(object).map(_display) if len(shown.columns) else shown
    return shown.to_html(max_rows=None, notebook=False, border=0)


def _message(kind: str, text: str) -> str:
    import html

    style = _ERROR_STYLE if kind == "error" else _OK_STYLE if kind == "ok" else ""
    return f'<div style="{style}">{html.escape(text)}</div>'


def _repr_html(obj: Any) -> str:
    method = getattr(obj, "_repr_html_", None)
    if callable(method):
        return method()
    if isinstance(obj, pd.DataFrame):
        return _html(obj)
    if isinstance(getattr(obj, "changes", None), pd.DataFrame):  # a ChangeSet without its own display
        text = f"<b>{len(obj.changes)} change(s)</b>" + _html(obj.changes)
        problems = getattr(obj, "problems", None)
        if isinstance(problems, pd.DataFrame) and len(problems):
            text += _message("error", f"{len(problems)} problem(s):") + _html(problems)
        return text
    import html

    return f"<pre>{html.escape(repr(obj))}</pre>"


# --- widgets -------------------------------------------------------------------------------------------------


class FilterRow:
    """The widgets of one filter: attribute dropdown, operator dropdown, value text, remove button."""

    def __init__(self, columns: list[str], attribute: str | None, op: str, value: str,
                 on_change: Callable[[], None], on_remove: Callable[[FilterRow], None]) -> None:
        self.attribute = widgets.Dropdown(options=columns, value=attribute if attribute in columns else
                                          (columns[0] if columns else None),
                                          description="attribute", layout=widgets.Layout(width="34%"))
        self.op = widgets.Dropdown(options=OPERATORS, value=op, layout=widgets.Layout(width="14%"))
        self.value = widgets.Text(value=value, placeholder="value", layout=widgets.Layout(width="30%"))
        self.remove = widgets.Button(description="remove", icon="minus", layout=widgets.Layout(width="12%"))
        self.box = widgets.HBox([self.attribute, self.op, self.value, self.remove])
        self.remove.on_click(lambda _button: on_remove(self))
        self._quiet = False
        for widget in (self.attribute, self.op, self.value):
            widget.observe(lambda _change: None if self._quiet else on_change(), names="value")
        self._sync_value_state()
        self.op.observe(lambda _change: self._sync_value_state(), names="value")

    def _sync_value_state(self) -> None:
        self.value.disabled = self.op.value in UNARY_OPERATORS

    @property
    def filter(self) -> Filter:
        """The condition these widgets express."""
        return Filter(self.attribute.value, self.op.value, self.value.value)

    def set_columns(self, columns: list[str]) -> None:
        """Change the attribute choices, keeping the current attribute."""
        current = self.attribute.value
        if current is not None and current not in columns:
            columns = [*columns, current]
        if list(self.attribute.options) == columns:
            return
        self._quiet = True
        try:
            self.attribute.options = columns
            self.attribute.value = current
        finally:
            self._quiet = False


def _sorted_columns(frame: pd.DataFrame) -> list[str]:
    columns = [c for c in frame.columns if isinstance(c, str)]
    return sorted(columns, key=lambda c: (c.startswith("@"), c.lower()))


class CurationPanel:
    """A curation panel over ``snapshot`` (see the module docstring). Display it in a notebook cell.

    - ``client``: a boto3 ``medical-imaging`` client (AWS or ``curation.local.client``) for apply and undo;
      without one the panel only reviews.
    - ``journal``: the directory for apply journals (one file per apply; created). Default: a new private
      temporary directory. Keep the journals: they are what undo and ``curation.run.applying.revert`` read.
    - ``preview_rows``: how many matching rows the preview shows.
    - ``plan_options`` / ``apply_options``: keyword arguments for ``curation.curate.planner.plan`` (e.g.
      ``include_study_image_sets=True``) and for ``curation.run.applying.apply``/``revert`` (e.g. ``rate=5``:
      the default is AHI's 0.25 updates per second).
    """

    def __init__(self, snapshot: Any, client: Any = None, journal: str | os.PathLike | None = None, *,
                 preview_rows: int = 10, plan_options: dict[str, Any] | None = None,
                 apply_options: dict[str, Any] | None = None) -> None:
        self.snapshot = snapshot
        self.client = client
        self.journal_dir = Path(journal) if journal is not None else None
        self.preview_rows = preview_rows
        self.plan_options = dict(plan_options or {})
        self.apply_options = dict(apply_options or {})
        #: VRs given for attributes the dictionary does not know (private tags), passed to diff.
        self.vrs: dict[str, str] = {}
        #: journals of the applies not undone yet, oldest first
        self.journals: list[Path] = []
        self.last_changes: Any = None
        self.last_plan: Any = None
        self.last_result: pd.DataFrame | None = None
        self.last_undo: pd.DataFrame | None = None
        self.messages: list[tuple[str, str]] = []
        self._edited_columns: list[str] = []
        self._reset_frames()
        self._build()
        self.refresh()

    # --- state -----------------------------------------------------------------------------------------

    def _reset_frames(self) -> None:
        self._base = self.snapshot.wide
        self._edited = self.snapshot.wide

    @property
    def edited(self) -> pd.DataFrame:
        """A copy of the panel's edited wide view."""
        return self._edited.copy()

    @property
    def filters(self) -> list[Filter]:
        """The current filters (all must hold)."""
        return [row.filter for row in self.filter_rows]

    def mask(self) -> pd.Series:
        """Rows matching every filter (all rows without filters).

        Filters read the snapshot's values (what the datastore holds), so a selection stays put while you
        edit it; only a column the panel added is read from the edits.
        """
        mask = pd.Series(True, index=self._edited.index, dtype=bool)
        for f in self.filters:
            if f.attribute is None:
                continue
            frame = self._base if f.attribute in self._base.columns else self._edited
            mask &= filter_mask(frame, f.attribute, f.op, f.value).to_numpy()
        return mask

    def matching(self) -> pd.DataFrame:
        """The matching rows of the edited wide view (a copy)."""
        return self._edited[self.mask().to_numpy()].copy()

    @property
    def count(self) -> int:
        """How many rows (instances) match the filters."""
        return int(self.mask().sum())

    def add_filter(self, attribute: str | None = None, op: str = "==", value: str = "") -> FilterRow:
        """Add a filter row (also what the "add filter" button does); returns its widgets."""
        if op not in OPERATORS:
            raise ValueError(f"unknown operator {op!r}; use one of {', '.join(OPERATORS)}")
        if attribute is not None and attribute not in self._edited.columns:
            raise KeyError(f"no column {attribute!r} in the wide view")
        row = FilterRow(self._columns(), attribute, op, value, self.refresh_selection, self.remove_filter)
        self.filter_rows.append(row)
        self.filter_box.children = [r.box for r in self.filter_rows]
        self.refresh_selection()
        return row

    def remove_filter(self, row: FilterRow | int) -> None:
        """Remove a filter row (by its widgets or its position)."""
        if isinstance(row, int):
            row = self.filter_rows[row]
        self.filter_rows.remove(row)
        self.filter_box.children = [r.box for r in self.filter_rows]
        self.refresh_selection()

    def clear_filters(self) -> None:
        """Remove every filter."""
        self.filter_rows.clear()
        self.filter_box.children = []
        self.refresh_selection()

    def describe(self, attribute: str) -> dict[str, Any]:
        """What the panel knows of an attribute: VR, VM, level, whether it is new or private."""
        _, key, node_key = split_column(attribute)
        new = attribute not in self._edited.columns
        vr = self.vrs.get(attribute)
        if vr is None and not node_key:
            try:
                vr = self.snapshot.vr(attribute)
            except KeyError:
                vr = dicom.vr_of(key)
        try:
            level = self.snapshot.level(attribute)
        except KeyError:
            level = None
        if level is None and not node_key:
            from curation.model.levels import level_of

            try:
                level = level_of(key)
            except (KeyError, ValueError):
                level = None
        return {"attribute": attribute, "VR": vr, "VM": None if node_key else _vm(key), "level": level,
                "new": new, "private": dicom.is_private(key), "dicom": not node_key}

    def _check_attribute(self, attribute: str) -> None:
        if not isinstance(attribute, str) or not attribute.strip():
            raise ValueError("name the attribute to edit")
        _, key, node_key = split_column(attribute)
        if node_key:
            raise ValueError(f"{attribute} is not a DICOM attribute (AHI maintains it)")
        if attribute in self._edited.columns:
            return
        if dicom.is_tag_key(key):
            if key != key.upper():
                raise ValueError(f"write tag keys with uppercase hex digits: {key.upper()}")
            keyword = dicom.keyword_of(key)
            if keyword:
                raise ValueError(f"tag {key} has the keyword {keyword}: use the keyword")
            return
        if not dicom.is_keyword(key):
            raise ValueError(f"{key!r} is neither a DICOM keyword nor an 8-hex tag")

    def set_value(self, attribute: str, value: Any, vr: str | None = None) -> int:
        """Set ``attribute`` on every matching row; returns how many rows that is.

        ``value``: text as typed (converted by VR, see ``parse_value``) or a JSON value; ``NULL`` makes the
        attribute empty (present with a null value: ``""`` in a text column); ``None`` removes it (the cells
        hold ``curation.REMOVE``). ``vr`` is required for a private tag
        whose VR the snapshot does not know (it is passed to diff). Raises ValueError when the attribute or
        the value is not acceptable; the edit is then not made.
        """
        attribute = attribute.strip() if isinstance(attribute, str) else attribute
        self._check_attribute(attribute)
        if vr:
            vr = vr.strip().upper()
            if vr not in dicom.VALID_VRS:
                raise ValueError(f"{vr!r} is not a VR")
        info = self.describe(attribute)
        known_vr = info["VR"]
        if vr and known_vr and vr != known_vr and not info["private"]:
            raise ValueError(f"{attribute} has VR {known_vr}, not {vr}")
        vr = vr or known_vr
        if vr is None and value is not None and value is not NULL:
            raise ValueError(f"{attribute} is a private tag with no known VR: give its VR")
        if value is None or value is NULL:
            new_value = value
        else:
            from curation.model import values

            new_value, problem = values.check(parse_value(value, vr, info["VM"]), vr, info["VM"])
            if problem:
                raise ValueError(f"{attribute}: {problem}")
        mask = self.mask().to_numpy()
        if not mask.any():
            raise ValueError("no rows match the filters")
        if info["private"] and vr and known_vr is None:
            self.vrs[attribute] = vr
        edited = self._edited
        text = attribute in edited.columns and isinstance(edited[attribute].dtype, pd.StringDtype)
        cell = _cell_for(None if value is None else new_value, text)
        if text and (cell is None or isinstance(cell, str)):
            column = edited[attribute].copy()
            column[mask] = cell
            edited[attribute] = column
        else:
            if attribute in edited.columns:
                cells = edited[attribute].to_numpy(dtype=object).copy()
            else:
                cells = np.full(len(edited), None, dtype=object)
            for position in np.flatnonzero(mask):
                cells[position] = _cell_for(None if value is None else new_value, False)
            edited[attribute] = pd.Series(cells, index=edited.index, dtype=object)
        if attribute not in self._edited_columns:
            self._edited_columns.append(attribute)
        self._on_edit()
        return int(mask.sum())

    def clear_value(self, attribute: str) -> int:
        """Make ``attribute`` empty (NULL) on the matching rows."""
        return self.set_value(attribute, NULL)

    def remove_value(self, attribute: str) -> int:
        """Remove ``attribute`` from the matching rows."""
        return self.set_value(attribute, None)

    def reset(self) -> None:
        """Forget every edit (back to the snapshot's values)."""
        self._reset_frames()
        self._edited_columns = []
        self.vrs = {}
        self._on_edit()

    def changes(self) -> Any:
        """The ChangeSet of the edits so far (``curation.curate.differ.diff`` of the snapshot and the edited view)."""
        from curation.curate.differ import diff

        self.last_changes = diff(self.snapshot, self._edited.copy(), vrs=dict(self.vrs) or None, rows="selection")
        return self.last_changes

    def plan(self, **options: Any) -> Any:
        """The UpdatePlan of the current ChangeSet (``curation.curate.planner.plan``; options override plan_options)."""
        from curation.curate.planner import plan

        changes = self.changes() if self.last_changes is None else self.last_changes
        self.last_plan = plan(changes, **{**self.plan_options, **options})
        return self.last_plan

    def _journal_path(self, plan: Any) -> Path:
        if self.journal_dir is None:
            self.journal_dir = Path(tempfile.mkdtemp(prefix="curation-journals-"))
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        number = len(list(self.journal_dir.glob("apply-*.jsonl"))) + 1
        plan_id = str(getattr(plan, "plan_id", "plan"))[:12]
        path = self.journal_dir / f"apply-{number:03d}-{plan_id}.jsonl"
        while path.exists():
            number += 1
            path = self.journal_dir / f"apply-{number:03d}-{plan_id}.jsonl"
        return path

    def apply(self) -> pd.DataFrame:
        """Apply the current plan with ``curation.run.applying.apply`` (journal in ``journal``); returns its result.

        The progress bar advances per image set. Afterwards the touched image sets are fetched again and the
        panel starts over from their new versions (edits are cleared).
        """
        if self.client is None:
            raise RuntimeError("the panel has no client: create it with CurationPanel(snapshot, client)")
        from curation.run import applying as applier

        plan = self.plan()
        if not len(plan):
            raise ValueError("nothing to apply: the plan has no requests")
        requests: dict[str, int] = {}
        affected: list[str] = []
        for request in plan.requests:
            requests[request.image_set_id] = requests.get(request.image_set_id, 0) + 1
            affected.extend(getattr(request, "affects", None) or ())
        path = self._journal_path(plan)
        self.progress.description = "applying"
        with _JournalProgress(self.progress, path, requests):
            result = applier.apply(plan, self.client, journal=path, progress=False, **self.apply_options)
        self.progress.description = "applied"
        self.journals.append(path)
        self.last_result = result
        self._refetch(list(dict.fromkeys([*requests, *affected])))
        return result

    def undo(self) -> pd.DataFrame:
        """Revert the last apply not undone yet (``curation.revert`` on its journal); returns its result."""
        if not self.journals:
            raise ValueError("nothing to undo")
        if self.client is None:
            raise RuntimeError("the panel has no client")
        from curation.run import reverting
        from curation.run.journal import read_journal, touched_versions

        path = self.journals[-1]
        before, _ = touched_versions(read_journal(path))
        self.progress.description = "undoing"
        with _JournalProgress(self.progress, reverting.default_revert_journal(path), dict.fromkeys(before, 1)):
            result = reverting.revert(path, self.client, progress=False, **self.apply_options)
        self.progress.description = "undone"
        self.journals.pop()
        self.last_undo = result
        self._refetch(list(before))
        return result

    def _refetch(self, image_set_ids: list[str]) -> None:
        """Fetch ``image_set_ids`` again and rebuild the snapshot with them (others kept as they were)."""
        from curation.frames.snapshot import Snapshot
        from curation.run.fetching import fetch

        if not image_set_ids:
            self.reset()
            return
        fresh = fetch(self.client, self.snapshot.datastore_id, image_set_ids, progress=False)
        documents = dict(self.snapshot.documents)
        versions = self.snapshot.version_ids
        documents.update(fresh.documents)
        versions.update(fresh.version_ids)
        failures = pd.concat([self.snapshot.failures, fresh.failures], ignore_index=True) \
            if len(fresh.failures) else self.snapshot.failures
        merged = Snapshot.from_documents(
            [documents[i] for i in dict.fromkeys([*self.snapshot.image_set_ids, *fresh.image_set_ids])
             if i in documents],
            datastore_id=self.snapshot.datastore_id, version_ids=versions, failures=failures,
        )
        old_flags, new_flags = getattr(self.snapshot, "primary", None), getattr(fresh, "primary", None)
        if old_flags is not None or new_flags is not None:  # primary flags, when snapshots carry them
            with contextlib.suppress(AttributeError):  # a read-only property knows its flags itself
                merged.primary = {**dict(old_flags or {}), **dict(new_flags or {})}
        self.snapshot = merged
        self._reset_frames()
        self._edited_columns = []
        self.vrs = {}
        self._set_columns()
        self.refresh()

    # --- widgets -----------------------------------------------------------------------------------------

    def _columns(self) -> list[str]:
        return _sorted_columns(self._edited)

    def _build(self) -> None:
        layout = widgets.Layout
        self.filter_rows: list[FilterRow] = []
        self.filter_box = widgets.VBox([])
        self.add_filter_button = widgets.Button(description="add filter", icon="plus")
        self.add_filter_button.on_click(lambda _b: self._handle(lambda: self.add_filter()))
        self.count_label = widgets.HTML()
        self.preview = widgets.HTML()

        self.attribute = widgets.Combobox(options=self._editable_columns(), ensure_option=False,
                                          placeholder="attribute", description="attribute",
                                          layout=layout(width="40%"))
        self.attribute_info = widgets.HTML()
        self.vr = widgets.Text(placeholder="VR (private tags)", description="VR", layout=layout(width="20%"))
        self.value = widgets.Text(placeholder="value (backslash between values)", description="value",
                                  layout=layout(width="60%"))
        self.set_button = widgets.Button(description="set", button_style="primary")
        self.null_button = widgets.Button(description="set empty (NULL)")
        self.remove_button = widgets.Button(description="remove", button_style="warning")
        self.reset_button = widgets.Button(description="reset edits")
        self.message = widgets.HTML()
        self.attribute.observe(lambda _c: self._show_attribute(), names="value")
        self.set_button.on_click(lambda _b: self._edit(lambda a: self.set_value(a, self.value.value,
                                                                               self.vr.value or None)))
        self.null_button.on_click(lambda _b: self._edit(lambda a: self.set_value(a, NULL, self.vr.value or None)))
        self.remove_button.on_click(lambda _b: self._edit(lambda a: self.set_value(a, None)))
        self.reset_button.on_click(lambda _b: self._handle(self.reset, "edits cleared"))

        self.changes_html = widgets.HTML()
        self.plan_html = widgets.HTML()
        self.apply_button = widgets.Button(description="apply", button_style="danger", disabled=True)
        self.undo_button = widgets.Button(description="undo last apply", disabled=True)
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="")
        self.result_html = widgets.HTML()
        self.apply_button.on_click(lambda _b: self._handle(self._apply_clicked))
        self.undo_button.on_click(lambda _b: self._handle(self._undo_clicked))

        def heading(text: str) -> widgets.HTML:
            return widgets.HTML(f"<h4 style='margin:6px 0 2px'>{text}</h4>")

        self.widget = widgets.VBox([
            heading("1. Select instances"), self.filter_box, self.add_filter_button, self.count_label, self.preview,
            heading("2. Edit the matching instances"),
            widgets.HBox([self.attribute, self.vr, self.attribute_info]),
            widgets.HBox([self.value]),
            widgets.HBox([self.set_button, self.null_button, self.remove_button, self.reset_button]),
            self.message,
            heading("3. Review"), self.changes_html, self.plan_html,
            heading("4. Apply"), widgets.HBox([self.apply_button, self.progress, self.undo_button]),
            self.result_html,
        ])

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _say(self, kind: str, text: str) -> None:
        self.messages.append((kind, text))
        self.message.value = _message(kind, text)

    def _handle(self, action: Callable[[], Any], success: str | None = None) -> Any:
        """Run a button's action; show its error instead of raising (a widget callback has no caller)."""
        try:
            result = action()
        except Exception as exc:
            self._say("error", f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError | KeyError)
                      else str(exc).strip("'\""))
            return None
        if success:
            self._say("ok", success)
        return result

    def _edit(self, action: Callable[[str], int]) -> None:
        attribute = (self.attribute.value or "").strip()
        count = self._handle(lambda: action(attribute))
        if count is not None:
            self._say("ok", f"{attribute}: edited on {count} row(s)")

    def _show_attribute(self) -> None:
        attribute = (self.attribute.value or "").strip()
        if not attribute:
            self.attribute_info.value = ""
            return
        info = self.describe(attribute)
        parts = [f"VR <b>{info['VR'] or '?'}</b>", f"VM {info['VM'] or '?'}", f"level {info['level'] or '?'}"]
        if info["new"]:
            parts.append("new attribute")
        if info["private"] and not info["VR"]:
            parts.append("private tag: give its VR")
        self.attribute_info.value = " · ".join(parts)
        self.vr.disabled = bool(info["VR"]) and not info["private"]

    def _editable_columns(self) -> list[str]:
        return [c for c in self._columns() if not split_column(c)[2]]

    def _set_columns(self) -> None:
        columns = self._columns()
        self.attribute.options = self._editable_columns()
        for row in self.filter_rows:
            row.set_columns(columns)

    def _on_edit(self) -> None:
        self.last_changes = None
        self.last_plan = None
        self._set_columns()
        self.refresh()

    def refresh(self) -> None:
        """Recompute the selection, the review (ChangeSet, plan) and the buttons' states."""
        self.refresh_selection()
        self.refresh_review()

    def refresh_selection(self) -> None:
        """Update the count and the preview of the matching rows."""
        mask = self.mask()
        matching = self._edited[mask.to_numpy()]
        count = len(matching)
        index = matching.index
        image_sets = index.get_level_values(0).nunique() if count else 0
        series = len(set(zip(index.get_level_values(0), index.get_level_values(1), strict=True))) if count else 0
        self.count_label.value = (f"<b>{count}</b> of {len(self._edited)} instances match "
                                  f"({image_sets} image set(s), {series} series)")
        wanted = [f.attribute for f in self.filters if f.attribute] + self._edited_columns + list(PREVIEW_COLUMNS)
        columns = [c for c in dict.fromkeys(wanted) if c in matching.columns]
        self.preview.value = _html(matching[columns], self.preview_rows) if count else "<i>no rows</i>"

    def refresh_review(self) -> None:
        """Recompute the ChangeSet and the plan and show them; enable apply when there is a valid plan."""
        self.apply_button.disabled = True
        self.undo_button.disabled = not (self.journals and self.client is not None)
        if not self._edited_columns:
            self.changes_html.value = "<i>no edits</i>"
            self.plan_html.value = ""
            return
        try:
            changes = self.changes()
        except Exception as exc:
            self.changes_html.value = _message("error", f"cannot compute the changes: {exc}")
            self.plan_html.value = ""
            return
        self.changes_html.value = _repr_html(changes)
        if not getattr(changes, "ok", True):
            self.plan_html.value = _message("error", "fix the problems above before planning")
            return
        if not len(changes):
            self.plan_html.value = "<i>the edits change nothing</i>"
            return
        try:
            plan = self.plan()
        except Exception as exc:
            problems = getattr(exc, "problems", None)
            self.plan_html.value = _message("error", "the plan is refused:" if problems is not None else
                                            f"cannot plan: {exc}")
            if isinstance(problems, pd.DataFrame):
                self.plan_html.value += _html(problems)
            return
        self.plan_html.value = _repr_html(plan)
        self.apply_button.disabled = self.client is None or not len(plan)

    def _apply_clicked(self) -> None:
        result = self.apply()
        self.result_html.value = "<h5>Apply result</h5>" + _html(result)
        self._say(*_summary(result, f"journal {self.journals[-1]}"))

    def _undo_clicked(self) -> None:
        path = self.journals[-1] if self.journals else None
        result = self.undo()
        self.result_html.value = "<h5>Undo result</h5>" + (_html(result) if isinstance(result, pd.DataFrame)
                                                            else _repr_html(result))
        self._say(*_summary(result, f"undid journal {path}"))


def _summary(result: Any, where: str) -> tuple[str, str]:
    """("ok"|"error", text) for an apply/revert result table: status counts, an error when any did not apply."""
    if not isinstance(result, pd.DataFrame) or "status" not in result.columns:
        return "ok", where
    counts = result["status"].value_counts()
    text = ", ".join(f"{n} {status}" for status, n in counts.items()) or "nothing to do"
    bad = [s for s in counts.index if s != "applied"]
    return ("error" if bad else "ok"), f"{text} ({where})"


class _JournalProgress:
    """Moves an IntProgress as image sets finish, by reading the journal apply writes (fsynced per step)."""

    def __init__(self, bar: widgets.IntProgress, path: Path, requests: dict[str, int]) -> None:
        self.bar = bar
        self.path = path
        self.requests = requests
        self.bar.max = max(1, len(requests))
        self.bar.value = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="curation-panel-progress", daemon=True)

    def finished(self) -> int:
        """How many image sets have every planned request in a final journal state."""
        from curation.run.journal import FINAL_STATUSES, read_journal

        try:
            records = read_journal(self.path) if self.path.exists() else []
        except (OSError, ValueError):
            return self.bar.value
        final: dict[str, set[int]] = {}
        for record in records:
            if record.get("kind") == "request" and record.get("status") in FINAL_STATUSES:
                final.setdefault(record.get("image_set_id"), set()).add(int(record.get("index", 0)))
        return sum(len(final.get(i, ())) >= n for i, n in self.requests.items())

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            self.bar.value = min(self.bar.max, self.finished())

    def __enter__(self) -> _JournalProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.bar.value = min(self.bar.max, self.finished())
