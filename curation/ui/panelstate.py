"""What the curation panel holds and does, without a widget: the edited copy, the review, apply and undo.

``PanelState(snapshot, client, journal)`` keeps the snapshot's wide view twice (as fetched, and the panel's
edited copy), the VRs given for new private tags, the journals of the applies not undone yet, and the last
ChangeSet, plan and results. ``CurationPanel`` (``curation.ui.panel``) draws it and calls these methods; a
script or a test can call them directly. The snapshot is never modified.

``apply`` runs ``curation.run.applying.apply`` with a journal per apply and passes ``on_progress`` and
``cancel`` through. A cancelled apply leaves its plan and journal ``pending``: the next ``apply`` resumes
that journal (nothing is sent twice), ``undo`` reverts what it did. After an apply that ran to its end, or
an undo, the touched image sets are fetched again and the panel starts over from their new versions.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from curation.frames.flattening import NULL, split_column
from curation.model import dictionary as dicom
from curation.ui.filters import Filter, cell_for, filter_mask, parse_value

if TYPE_CHECKING:
    import threading

    from curation.curate.changeset import ChangeSet
    from curation.curate.updateplan import UpdatePlan
    from curation.frames.snapshot import Snapshot
    from curation.run.options import Progress

__all__ = ["PREVIEW_COLUMNS", "PanelState", "Pending"]

#: Columns the preview shows after the filtered and edited ones, when the frame has them.
PREVIEW_COLUMNS = ("PatientID", "StudyDescription", "Modality", "SeriesNumber", "SeriesDescription", "InstanceNumber")


@dataclass(frozen=True)
class Pending:
    """An apply that stopped before its end (cancelled): its plan and journal, for a resume."""

    plan: UpdatePlan
    journal: Path


def sorted_columns(frame: pd.DataFrame) -> list[str]:
    """DICOM columns first (case-insensitive order), then AHI's ``@`` columns."""
    columns = [c for c in frame.columns if isinstance(c, str)]
    return sorted(columns, key=lambda c: (c.startswith("@"), c.lower()))


def _cancelled(result: pd.DataFrame) -> bool:
    return "status" in result.columns and bool((result["status"] == "cancelled").any())


class PanelState:
    """The state of a curation panel over ``snapshot`` (see the module docstring and ``CurationPanel``)."""

    def __init__(
        self,
        snapshot: Snapshot,
        client: Any = None,
        journal: str | os.PathLike[str] | None = None,
        *,
        plan_options: dict[str, Any] | None = None,
        apply_options: dict[str, Any] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.client = client
        self.journal_dir = Path(journal) if journal is not None else None
        self.plan_options = dict(plan_options or {})
        self.apply_options = dict(apply_options or {})
        #: VRs given for attributes the dictionary does not know (private tags), passed to diff.
        self.vrs: dict[str, str] = {}
        #: journals of the applies not undone yet, oldest first
        self.journals: list[Path] = []
        self.pending: Pending | None = None
        self.last_changes: ChangeSet | None = None
        self.last_plan: UpdatePlan | None = None
        self.last_result: pd.DataFrame | None = None
        self.last_undo: pd.DataFrame | None = None
        self.edited_columns: list[str] = []
        self._reset_frames()

    def _reset_frames(self) -> None:
        self.base = self.snapshot.wide
        self.edited = self.snapshot.wide

    # --- selection ---------------------------------------------------------------------------------------

    def mask(self, filters: list[Filter]) -> pd.Series:
        """Rows matching every complete filter (all rows when none is complete).

        Filters read the snapshot's values (what the datastore holds), so a selection stays put while you
        edit it; only a column the panel added is read from the edits.
        """
        mask = pd.Series(True, index=self.edited.index, dtype=bool)
        for f in filters:
            if not f.complete or f.attribute is None:
                continue
            frame = self.base if f.attribute in self.base.columns else self.edited
            mask &= filter_mask(frame, f.attribute, f.op, f.value).to_numpy()
        return mask

    def preview(self, filters: list[Filter], rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The first ``rows`` matching rows as a person reads them (the filtered and edited attributes, then
        ``PREVIEW_COLUMNS``; no UID index), and which of their cells the edits changed."""
        mask = self.mask(filters).to_numpy()
        wanted = [f.attribute for f in filters if f.attribute] + self.edited_columns + list(PREVIEW_COLUMNS)
        columns = [c for c in dict.fromkeys(wanted) if c in self.edited.columns]
        shown = self.edited[mask][columns].head(rows)
        before = self.base.reindex(index=shown.index, columns=columns)
        changed = pd.DataFrame(
            {
                c: [
                    not _same(a, b)
                    for a, b in zip(shown[c].to_numpy(dtype=object), before[c].to_numpy(dtype=object), strict=True)
                ]
                if c in self.edited_columns
                else False
                for c in columns
            },
            index=shown.index,
        )
        return shown.reset_index(drop=True), changed.reset_index(drop=True)

    def columns(self) -> list[str]:
        """Every column a filter can use."""
        return sorted_columns(self.edited)

    def editable_columns(self) -> list[str]:
        """The DICOM columns an edit can name (AHI's ``@`` columns are not editable)."""
        return [c for c in self.columns() if not split_column(c)[2]]

    # --- edits -------------------------------------------------------------------------------------------

    def describe(self, attribute: str) -> dict[str, Any]:
        """What the panel knows of an attribute: VR, VM, level, whether it is new or private."""
        from curation.model.levels import level_of

        _, key, node_key = split_column(attribute)
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
            try:
                level = level_of(key)
            except (KeyError, ValueError):
                level = None
        return {
            "attribute": attribute,
            "VR": vr,
            "VM": None if node_key else dicom.vm_of(key),
            "level": level,
            "new": attribute not in self.edited.columns,
            "private": dicom.is_private(key),
            "dicom": not node_key,
        }

    def check_attribute(self, attribute: str) -> None:
        """Raise ValueError unless ``attribute`` names something an edit can set."""
        if not isinstance(attribute, str) or not attribute.strip():
            raise ValueError("name the attribute to edit")
        _, key, node_key = split_column(attribute)
        if node_key:
            raise ValueError(f"{attribute} is not a DICOM attribute (AHI maintains it)")
        if attribute in self.edited.columns:
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

    def _checked_value(self, attribute: str, value: Any, vr: str | None) -> tuple[Any, str | None]:
        """(the JSON value to set, its VR) after the VR and value checks; ValueError says what is wrong."""
        from curation.model import values

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
            return value, vr
        checked, problem = values.check(parse_value(value, vr, info["VM"]), vr, info["VM"])
        if problem:
            raise ValueError(f"{attribute}: {problem}")
        return checked, vr

    def set_value(self, attribute: str, value: Any, vr: str | None, filters: list[Filter]) -> int:
        """Set ``attribute`` on every row matching ``filters``; returns how many rows that is.

        ``value``: text as typed (converted by VR, see ``parse_value``) or a JSON value; ``NULL`` makes the
        attribute empty (``""`` in a text column); ``None`` removes it (the cells hold ``curation.REMOVE``).
        ``vr`` is required for a private tag whose VR the snapshot does not know (it is passed to diff).
        Raises ValueError when the attribute or the value is not acceptable; the edit is then not made.
        """
        attribute = attribute.strip() if isinstance(attribute, str) else attribute
        self.check_attribute(attribute)
        new_value, vr = self._checked_value(attribute, value, vr)
        mask = self.mask(filters).to_numpy()
        if not mask.any():
            raise ValueError("no rows match the filters")
        if vr and dicom.is_private(split_column(attribute)[1]) and self.describe(attribute)["VR"] is None:
            self.vrs[attribute] = vr
        self._write(attribute, None if value is None else new_value, mask)
        if attribute not in self.edited_columns:
            self.edited_columns.append(attribute)
        self.forget_review()
        return int(mask.sum())

    def _write(self, attribute: str, value: Any, mask: np.ndarray) -> None:
        edited = self.edited
        text = attribute in edited.columns and isinstance(edited[attribute].dtype, pd.StringDtype)
        cell = cell_for(value, text)
        if text and (cell is None or isinstance(cell, str)):
            column = edited[attribute].copy()
            column[mask] = cell
            edited[attribute] = column
            return
        cells = (
            edited[attribute].to_numpy(dtype=object).copy()
            if attribute in edited.columns
            else np.full(len(edited), None, dtype=object)
        )
        for position in np.flatnonzero(mask):
            cells[position] = cell_for(value, False)
        edited[attribute] = pd.Series(cells, index=edited.index, dtype=object)

    def reset(self) -> None:
        """Forget every edit (back to the snapshot's values)."""
        self._reset_frames()
        self.edited_columns = []
        self.vrs = {}
        self.forget_review()

    def forget_review(self) -> None:
        """Drop the ChangeSet and plan computed from earlier edits."""
        self.last_changes = None
        self.last_plan = None

    # --- review --------------------------------------------------------------------------------------------

    def changes(self) -> ChangeSet:
        """The ChangeSet of the edits so far (``diff`` of the snapshot and the edited view, the selection's rows)."""
        from curation.curate.differ import diff

        self.last_changes = diff(self.snapshot, self.edited.copy(), vrs=dict(self.vrs) or None, rows="selection")
        return self.last_changes

    def plan(self, **options: Any) -> UpdatePlan:
        """The UpdatePlan of the current ChangeSet (``curation.plan``; ``options`` override ``plan_options``)."""
        from curation.curate.planner import plan

        changes = self.changes() if self.last_changes is None else self.last_changes
        self.last_plan = plan(changes, **{**self.plan_options, **options})
        return self.last_plan

    # --- apply and undo ------------------------------------------------------------------------------------

    def journal_path(self, plan: UpdatePlan) -> Path:
        """A new journal file for an apply of ``plan`` in the journal directory (a private temporary one when
        none was given)."""
        if self.journal_dir is None:
            self.journal_dir = Path(tempfile.mkdtemp(prefix="curation-journals-"))
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        number = len(list(self.journal_dir.glob("apply-*.jsonl"))) + 1
        path = self.journal_dir / f"apply-{number:03d}-{plan.plan_id[:12]}.jsonl"
        while path.exists():
            number += 1
            path = self.journal_dir / f"apply-{number:03d}-{plan.plan_id[:12]}.jsonl"
        return path

    def _client(self) -> Any:
        if self.client is None:
            raise RuntimeError("the panel has no client: create it with CurationPanel(snapshot, client)")
        return self.client

    def _run_keywords(
        self, on_progress: Callable[[Progress], object] | None, cancel: threading.Event | None
    ) -> dict[str, Any]:
        keywords = {"progress": False, **self.apply_options}
        if on_progress is not None:
            keywords["on_progress"] = on_progress
        if cancel is not None:
            keywords["cancel"] = cancel
        return keywords

    def apply(
        self, *, on_progress: Callable[[Progress], object] | None = None, cancel: threading.Event | None = None
    ) -> pd.DataFrame:
        """Apply the current plan (or resume the pending one) with ``curation.apply``; returns its result.

        ``on_progress`` and ``cancel`` go to apply. A cancelled run stays ``pending`` (apply again resumes it
        from its journal); a run that reached its end refetches the touched image sets.
        """
        from curation.run.applying import apply

        client = self._client()
        if self.pending is not None:
            plan, path = self.pending.plan, self.pending.journal
        else:
            plan = self.plan() if self.last_plan is None else self.last_plan
            if not len(plan):
                raise ValueError("nothing to apply: the plan has no requests")
            path = self.journal_path(plan)
        if path not in self.journals:
            self.journals.append(path)
        result = apply(plan, client, journal=path, **self._run_keywords(on_progress, cancel))
        self.last_result = result
        if _cancelled(result):
            self.pending = Pending(plan, path)
            return result
        self.pending = None
        touched = [r.image_set_id for r in plan.requests] + [s for r in plan.requests for s in r.affects]
        self.refetch(list(dict.fromkeys(touched)))
        return result

    def undo(
        self, *, on_progress: Callable[[Progress], object] | None = None, cancel: threading.Event | None = None
    ) -> pd.DataFrame:
        """Revert the last apply not undone yet (``curation.revert`` on its journal); returns its result.

        A cancelled undo keeps the journal: undo again resumes the revert."""
        from curation.run.journal import read_journal, touched_versions
        from curation.run.reverting import revert

        if not self.journals:
            raise ValueError("nothing to undo")
        client = self._client()
        path = self.journals[-1]
        before, _ = touched_versions(read_journal(path))
        result = revert(path, client, **self._run_keywords(on_progress, cancel))
        self.last_undo = result
        if _cancelled(result):
            return result
        self.journals.pop()
        if self.pending is not None and self.pending.journal == path:
            self.pending = None
        self.refetch(list(before))
        return result

    def refetch(self, image_set_ids: list[str]) -> None:
        """Fetch ``image_set_ids`` again and rebuild the snapshot with them (others kept as they were); the
        edits are cleared."""
        from curation.frames.snapshot import Snapshot
        from curation.run.fetching import fetch

        if image_set_ids:
            fresh = fetch(self._client(), self.snapshot.datastore_id, image_set_ids, progress=False)
            documents = dict(self.snapshot.documents)
            documents.update(fresh.documents)
            versions = {**self.snapshot.version_ids, **fresh.version_ids}
            failures = (
                pd.concat([self.snapshot.failures, fresh.failures], ignore_index=True)
                if len(fresh.failures)
                else self.snapshot.failures
            )
            order = dict.fromkeys([*self.snapshot.image_set_ids, *fresh.image_set_ids])
            merged = Snapshot.from_documents(
                [documents[i] for i in order if i in documents],
                datastore_id=self.snapshot.datastore_id,
                version_ids=versions,
                failures=failures,
            )
            merged.primary = {**self.snapshot.primary, **fresh.primary}
            self.snapshot = merged
        self.reset()


def _same(a: Any, b: Any) -> bool:
    """Whether two cells hold the same value (missing equals missing)."""
    from curation.model.missing import is_absent

    if is_absent(a) or is_absent(b):
        return is_absent(a) and is_absent(b)
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False
