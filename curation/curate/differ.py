"""diff: from frames a curator edited with pandas to a ChangeSet (one tidy row per change) and its problems.

``diff(snapshot, edited)`` compares ``edited`` (any of the snapshot's frames after edits: ``studies``,
``series``, ``instances`` or ``wide``; or a list/tuple/dict of several) with the snapshot's own frame of the
same kind, recognised by its index names (ImageSetID / + SeriesInstanceUID / + SOPInstanceUID) and, for the
instance-level ones, by its columns (``wide`` has the studies and series columns). A dict may name the kind
with its keys (``{"wide": frame}``).

What a cell means (the representation is ``curation.frames.cells``'):

- a changed cell is an ``update`` (an ``add`` when the attribute was absent); writing back the same value is
  no change: values are compared in AHI's encoding after ``curation.model.values.coerce`` (``"CHEST"`` again,
  ``"ORIGINAL\\PRIMARY"`` for the array it joins, a ``date`` equal to the stored ``"YYYYMMDD"``);
- ``""`` in a text column (or ``NULL``) empties the attribute (AHI's ``null``): an update, not a removal;
- ``curation.REMOVE`` removes the attribute (its ``old`` carries the current value, as AHI needs); a missing cell
  (None, NaN, NA, NaT) removes it too, except over a present-empty attribute (CSV cannot tell ``""`` from
  absent) and in a UID column (UIDs cannot be removed): there it means "unchanged";
- text pandas makes from a missing value (``"nan"``, ``"None"``, ``"<NA>"``, ``"NaT"``, ``"NULL"``) is never a
  value: it is a problem naming the row and the column; text that is ``str()`` of the current cell (what
  ``astype(str)`` makes of a number, a tuple or ``NULL``) is no change;
- ``rows="selection"`` (the default): a frame is a selection, rows absent from it are left alone, so a filtered
  frame edits just its rows. ``rows="all"``: the frame stands for every row of its level, and an instance or
  series row absent from it is removed (``remove_instance``; every instance of a series, or the series row of
  the ``series`` frame: one ``remove_series``; every series of an image set: a problem). Image sets are never
  removed (that is DeleteImageSet). Columns absent from a frame are always left alone;
- a new column adds an attribute at the level ``curation.model.levels.level_of`` gives (private tags: Instance);
  a private or keyword-less tag needs a VR: the instance's ``DICOMVRs`` when the tag is already there, else
  ``vrs={"001910F9": "DS"}``; without one the cell is a problem;
- ``SeriesInstanceUID`` of ``series`` and ``SOPInstanceUID`` of ``instances`` are index levels: setting a column
  of that name on a row changes the UID, addressed by the OLD UID (the row keeps its label); changing the
  index itself is refused, not guessed: a row whose label is not in the snapshot is a problem ("adding
  instances is not possible with UpdateImageSetMetadata");
- ``@`` columns (AHI-generated or non-DICOM), AHI-generated keys (PixelData...) and the ``frames`` frame cannot
  be edited: a changed cell there is a problem;
- in ``wide``, a Patient/Study/Series column is shared by the rows of its image set/series: an edit must be
  uniform across them, becoming ONE change; otherwise the problem lists the rows and their values.

Validation: coerced values are checked with ``curation.model.values.validate`` and AHI's constraints
(``curation.model.rules``, ``curation.model.levels``): wrong level, targets that do not exist, UIDs that cannot
be removed or are already used, edits inside a removed series/instance, conflicting edits from several frames,
and on primary image sets (``snapshot.primary``; an unknown flag counts as primary) what AHI refuses there,
with the documented workaround. Needing ``force`` is information, not a problem: ``ChangeSet.force_reasons()``.
Every problem names the image set, the row (index label), the column and the reason. Changes that AHI could
accept (a value that breaks a VR rule can be forced; a primary flag may be wrong) stay in ``changes`` so that
``plan(..., allow_problems=True)`` can send them; changes that cannot be expressed or that AHI always refuses
are left out. ``strict=True`` raises one ``DiffError`` listing every problem instead.

The work is ``_DiffOperation``'s named phases, in the manner of pandas' ``_MergeOperation``: input detection
(``add``), row alignment (``_align``), column mapping (``_ColumnMapper``), comparison (``curation.curate.compare``),
coercion (``_Coercer``), rule checks (``curation.curate.diffrules``) and the sorted result (``get_result``).
``diff_documents(old, new)`` is the same comparison between two versions of one image set (for history).
Nothing here mutates the user's frames or the snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd

from curation.curate import diffrules
from curation.curate.bulk import bulk_edits, takes_block, takes_bulk, typed_block
from curation.curate.changeset import (
    CHANGE_COLUMNS,
    PROBLEM_COLUMNS,
    Change,
    ChangeBlock,
    ChangeOp,
    ChangeSet,
    Problem,
)
from curation.curate.coercer import Coercer, Edit
from curation.curate.colmap import ColumnMapper, Spec
from curation.curate.compare import changed
from curation.curate.targets import LEVEL_RANK, Targets, by_position
from curation.frames.flattening import flatten
from curation.frames.gcpause import gc_paused
from curation.model import dictionary as dicom
from curation.model import rules
from curation.model.vr import ALL_VRS

__all__ = ["DiffError", "diff", "diff_documents"]

_KIND_BY_INDEX = {
    ("ImageSetID",): "studies",
    ("ImageSetID", "SeriesInstanceUID"): "series",
    ("ImageSetID", "SeriesInstanceUID", "SOPInstanceUID"): "instances",
    ("ImageSetID", "SeriesInstanceUID", "SOPInstanceUID", "frame"): "frames",
}
_KINDS = ("studies", "series", "instances", "wide", "frames")
_OP_RANK = {"remove_series": 0, "remove_instance": 1, "remove": 2, "update": 3, "add": 4}
_SHOWN_ROWS = 5
#: How ``diff`` reads rows absent from an edited frame.
ROW_MODES = ("selection", "all")


class DiffError(ValueError):
    """Raised by ``diff(..., strict=True)``: every problem found, one per line; ``.problems`` is the table."""

    def __init__(self, problems: pd.DataFrame) -> None:
        self.problems = problems
        lines = [
            f"- image set {p['ImageSetID']}, row {p['row']!r}, column {p['column']!r}: {p['reason']}"
            for p in problems.to_dict("records")
        ]
        super().__init__(f"{len(lines)} problem(s) in the edits:\n" + "\n".join(lines))


def check_vrs(vrs: Mapping[str, str] | None) -> dict[str, str]:
    """The user's ``vrs`` for private tags, keys upper-cased and each VR checked against pydicom's VRs."""
    out = {}
    for key, vr in (vrs or {}).items():
        if not dicom.is_tag_key(str(key)):
            raise ValueError(f"vrs key {key!r} must be an 8-hex-digit tag such as '001910F9'")
        if vr not in ALL_VRS:
            raise ValueError(f"vrs[{key!r}] = {vr!r} is not a DICOM VR")
        out[str(key).upper()] = vr
    return out


def _inputs(edited: Any) -> list[tuple[str | None, pd.DataFrame]]:
    """Phase 1, input detection: the edited frames with the kind a dict key names (None: tell by the frame)."""
    if isinstance(edited, pd.DataFrame):
        return [(None, edited)]
    if isinstance(edited, Mapping):
        out: list[tuple[str | None, pd.DataFrame]] = []
        for name, frame in edited.items():
            hint = name if name in _KINDS else None
            out.extend((hint, f) for _, f in _inputs(frame))
        return out
    if isinstance(edited, Sequence) and not isinstance(edited, str):
        return [item for frame in edited for item in _inputs(frame)]
    raise TypeError(
        f"diff takes a DataFrame of the snapshot (or a list/tuple/dict of them), not {type(edited).__name__}"
    )


@dataclass(frozen=True)
class _Aligned:
    """An edited frame's rows matched to the snapshot's: ``rows`` of the frame are the snapshot's ``opos``."""

    kind: str
    frame: pd.DataFrame
    rows: np.ndarray
    opos: np.ndarray
    identity: bool
    codecs: Mapping[str, str] | None
    positional: dict[str, pd.DataFrame] = field(default_factory=dict)

    def column(self, name: Any) -> pd.Series:
        """The edited frame's column ``name`` (indexed by position: no copy of the frame's MultiIndex)."""
        return by_position(self.frame, self.positional, "frame")[name]


class _DiffOperation:
    """One diff: the phases in order, state shared through the attributes (see the module docstring)."""

    def __init__(
        self,
        snapshot: Any,
        vrs: dict[str, str],
        *,
        rows: str = "selection",
        validate: bool = True,
        exact: bool = False,
        study_levels: Mapping[str, str] | None = None,
    ) -> None:
        if rows not in ROW_MODES:
            raise ValueError(f"rows must be one of {', '.join(map(repr, ROW_MODES))}, not {rows!r}")
        self.targets = Targets(snapshot, study_levels)
        self.vrs = vrs
        self.rows = rows
        self.validate = validate
        self.columns = ColumnMapper(self.targets)
        self.coercer = Coercer(self.targets, vrs, validate=validate, exact=exact)
        self.changes: list[Change] = []
        #: the bulk path's changes, each with the length of ``changes`` when it came (their place in the order)
        self.blocks: list[tuple[int, ChangeBlock]] = []
        self.problems: list[Problem] = self.coercer.problems
        self.dropped_instances: dict[int, Any] = {}
        self.dropped_series: dict[int, Any] = {}
        self._frames_added = 0

    # -- phase 1: inputs --

    def add(self, frame: pd.DataFrame, hint: str | None, codecs: Mapping[str, str] | None = None) -> None:
        """Compare one edited frame (``codecs``: how its cells are held, when known exactly)."""
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"diff takes DataFrames, not {type(frame).__name__}")
        kind = self._kind(frame, hint)
        if frame.columns.has_duplicates:
            raise ValueError(f"the edited {kind} frame has duplicate column names")
        self._frames_added += 1
        aligned = self._align(kind, frame, codecs)
        for column in frame.columns:
            self._column(aligned, column)

    def _kind(self, frame: pd.DataFrame, hint: str | None) -> str:
        names = tuple(frame.index.names)
        kind = _KIND_BY_INDEX.get(cast(tuple[str, ...], names))
        if kind is None:
            raise ValueError(
                f"cannot tell which snapshot frame this is: its index is {list(names)}; diff takes the snapshot's "
                "studies, series, instances or wide frame with its index unchanged (do not reset_index)"
            )
        if kind == "instances" and (hint == "wide" or (hint is None and self.columns.looks_wide(frame))):
            return "wide"
        return kind

    # -- phase 2: rows --

    def _align(self, kind: str, frame: pd.DataFrame, codecs: Mapping[str, str] | None) -> _Aligned:
        orig = self.targets.frame("instances" if kind == "wide" else kind)
        if frame.index.equals(orig.index):
            positions, unknown = np.arange(len(orig)), False
        else:
            positions, unknown = self._positions(kind, frame, orig.index)
        rows = np.flatnonzero(positions >= 0)
        opos = positions[rows]
        identity = len(rows) == len(frame) == len(orig) and bool((opos == np.arange(len(orig))).all())
        if self.rows == "all":
            present = np.zeros(len(orig), dtype=bool)
            present[opos] = True
            self._dropped(kind, np.flatnonzero(~present), blocked=unknown)
        return _Aligned(kind, frame, rows, opos, identity, codecs)

    def _positions(self, kind: str, frame: pd.DataFrame, index: pd.Index) -> tuple[np.ndarray, bool]:
        positions = index.get_indexer(frame.index) if index.is_unique else index.get_indexer_for(frame.index)
        duplicated = frame.index.duplicated(keep="first")
        unknown = False
        what = {"studies": "image set", "series": "series"}.get(kind, "instance")
        for i in np.flatnonzero(duplicated | (positions < 0)):
            label = frame.index[int(i)]
            image_set = label[0] if isinstance(label, tuple) else label
            if duplicated[i]:
                reason = "the row appears more than once in the edited frame (its first occurrence is used)"
            else:
                unknown = True
                reason = (
                    f"this {what} does not exist in the snapshot: adding {what}s is not possible with "
                    "UpdateImageSetMetadata"
                )
                if kind != "studies":
                    reason += (
                        "; if you changed a UID in the index, restore the index and put the new UID in the "
                        "column of the same name instead (the index must keep the old UID)"
                    )
            self.problems.append(Problem(image_set, label, None, None, reason))
        positions = positions.copy()
        positions[duplicated] = -1
        return positions, unknown

    def _dropped(self, kind: str, dropped: np.ndarray, *, blocked: bool) -> None:
        """rows="all": rows absent from the frame become removals (instances, series) or problems."""
        if kind in ("frames", "studies"):
            reason = (
                "image frames are AHI-generated and cannot be removed"
                if kind == "frames"
                else "rows='all' but this image set is not in the edited frame: an image set cannot be removed "
                "with UpdateImageSetMetadata (that is DeleteImageSet); left alone"
            )
            for position in dropped:
                label = self.targets.frame(kind).index[position]
                self.problems.append(
                    Problem(label[0] if isinstance(label, tuple) else label, label, None, None, reason)
                )
            return
        source = "series" if kind == "series" else "instances"
        target = self.dropped_series if kind == "series" else self.dropped_instances
        for position in dropped:
            label = self.targets.label(source, int(position))
            if blocked:
                self.problems.append(
                    Problem(
                        label[0],
                        label,
                        None,
                        None,
                        "row missing from a frame that also has rows not in the snapshot (was the index edited?): "
                        "not removed",
                    )
                )
            else:
                target.setdefault(int(position), label)

    # -- phases 3 and 4: one column compared, its changed cells coerced --

    def _column(self, aligned: _Aligned, column: Any) -> None:
        spec = self.columns.spec(aligned.kind, column)
        orig, new = self._pair(aligned, spec, column)
        candidates = changed(orig, new)
        if not len(candidates):
            return
        if spec.blocker is not None:
            opos = aligned.opos[candidates]
            self._blocked(aligned, spec, column, opos, _cells(orig, candidates), _cells(new, candidates))
            return
        new_codec = (aligned.codecs or {}).get(column) or self.columns.codec(
            aligned.kind, column, spec, aligned.column(column).dtype
        )
        old_codec = self.targets.codec(spec.source, spec.src_col) or new_codec
        if aligned.kind == "wide" and spec.source != "instances":
            self._uniform(aligned, spec, column, candidates, orig, new, old_codec, new_codec)
            return
        rest: Any = None
        if takes_bulk(spec, old_codec, new_codec, self.coercer.exact):
            if takes_block(old_codec, orig, new):
                left, block = typed_block(
                    self.targets,
                    self.coercer,
                    aligned.kind,
                    spec,
                    column,
                    aligned.opos[candidates],
                    orig.take(candidates),
                    new.take(candidates),
                    old_codec,
                    self.problems,
                )
                if block is not None and len(block):
                    self.blocks.append((len(self.changes), block))
                candidates = candidates[left]
            else:
                rest = self._bulk(aligned, spec, column, candidates, orig, new, old_codec)
        olds, news, opos = _cells(orig, candidates), _cells(new, candidates), aligned.opos[candidates]
        for i in range(len(opos)) if rest is None else rest:
            position, old, value = int(opos[i]), olds[i], news[i]
            label = self.targets.label(aligned.kind, position)
            edit = self.coercer.edit(aligned.kind, spec, position, old, value, old_codec, new_codec, label, column)
            if edit is not None:
                self._record(spec, aligned.kind, position, edit, label, column)

    def _bulk(
        self, aligned: _Aligned, spec: Spec, column: Any, candidates: np.ndarray, orig: Any, new: Any, codec: str
    ) -> list[int]:
        """``bulk_edits`` of the changed cells; the indices (into ``candidates``) left for ``Coercer.edit``."""
        return bulk_edits(
            self.targets,
            self.coercer,
            aligned.kind,
            spec,
            column,
            aligned.opos[candidates],
            _cells(orig, candidates),
            _cells(new, candidates),
            codec,
            self.changes,
            self.problems,
        )

    def _pair(self, aligned: _Aligned, spec: Spec, column: Any) -> tuple[Any, Any]:
        """The snapshot's and the edited cells of one column, aligned row by row."""
        new = aligned.column(column).array
        if len(aligned.rows) != len(aligned.frame):
            new = new.take(aligned.rows)
        orig = self.targets.column(spec.source, spec.src_col)
        if orig is None:
            return np.full(len(aligned.opos), None, dtype=object), new
        if aligned.kind == "wide" and spec.source != "instances":
            return orig.take(self.targets.map_to(spec.source)[aligned.opos]), new
        if aligned.identity:
            return orig, new
        return orig.take(aligned.opos), new

    def _blocked(self, aligned: _Aligned, spec: Spec, column: Any, opos: np.ndarray, olds: list, news: list) -> None:
        if not self.validate and spec.node:
            return
        for position, old, value in zip(opos.tolist(), olds, news, strict=True):
            if self.coercer.same_cell(old, value):
                continue
            label = self.targets.label(aligned.kind, position)
            image_set = label[0] if isinstance(label, tuple) else label
            self.problems.append(
                Problem(
                    image_set,
                    label,
                    column,
                    spec.key,
                    f"{spec.blocker} (was {diffrules.short(_shown(old))}, edited to {diffrules.short(_shown(value))})",
                )
            )

    def _record(self, spec: Spec, kind: str, position: int, edit: Edit, label: Any, column: Any) -> None:
        image_set, series, sop = self.targets.address(kind, spec.level, position)
        key = spec.key
        refusal = rules.uid_removal_refusal(key, spec.level) if edit.op is ChangeOp.REMOVE else None
        if refusal:
            self.problems.append(Problem(image_set, label, column, key, refusal))
            return
        vr = edit.vr
        if edit.op is ChangeOp.REMOVE and vr is None:
            vr = self.coercer.removal_vr(spec, image_set, series, sop)
        if self.validate and edit.op is ChangeOp.ADD:
            reason = diffrules.level_problem(self.targets.holding, image_set, key, spec.level)
            if reason:
                self.problems.append(Problem(image_set, label, column, key, reason))
                return
        if self.validate and spec.warning:
            self.problems.append(Problem(image_set, label, column, key, spec.warning))
        if edit.problem:
            self.problems.append(
                Problem(
                    image_set,
                    label,
                    column,
                    key,
                    f"value {diffrules.short(edit.new)} does not fit {key} (VR {vr}): {edit.problem}",
                )
            )
        self.changes.append(
            Change(image_set, spec.level, series, sop, key, vr, edit.old, edit.new, edit.op, label, column)
        )

    def _uniform(
        self,
        aligned: _Aligned,
        spec: Spec,
        column: Any,
        candidates: np.ndarray,
        orig: Any,
        new: Any,
        old_codec: str,
        new_codec: str,
    ) -> None:
        """A wide column of a higher level: one change per parent when its rows agree, else a problem."""
        groups = self.targets.map_to(spec.source)[aligned.opos]
        is_changed = np.zeros(len(aligned.opos), dtype=bool)
        is_changed[candidates] = True
        order = np.argsort(groups, kind="stable")
        ordered = groups[order]
        olds, news = _cells(orig, np.arange(len(groups))), _cells(new, np.arange(len(groups)))
        for group in np.unique(groups[candidates]):
            members = order[np.searchsorted(ordered, group, "left") : np.searchsorted(ordered, group, "right")]
            first = int(members[is_changed[members]][0])
            position = int(aligned.opos[first])
            outcome: dict[bytes, tuple[Edit | None, list]] = {}
            failed = False
            for member in members:
                label = self.targets.label("wide", int(aligned.opos[member]))
                edit = None
                if is_changed[member]:
                    before = len(self.problems)
                    edit = self.coercer.edit(
                        "wide", spec, position, olds[first], news[member], old_codec, new_codec, label, column
                    )
                    failed = failed or len(self.problems) > before
                key = diffrules.key(edit.new) + edit.op.encode() if edit is not None else b"keep"
                outcome.setdefault(key, (edit, []))[1].append(label)
            if failed:
                continue
            label = self.targets.label("wide", position)
            if len(outcome) > 1:
                self._not_uniform(spec, column, label, position, olds[first], outcome, len(members))
            elif (edit := next(iter(outcome.values()))[0]) is not None:
                self._record(spec, "wide", position, edit, label, column)

    def _not_uniform(
        self,
        spec: Spec,
        column: Any,
        label: Any,
        position: int,
        old: Any,
        outcome: dict[bytes, tuple[Edit | None, list]],
        count: int,
    ) -> None:
        image_set, series, _ = self.targets.address("wide", spec.level, position)
        parts = []
        for edit, labels in outcome.values():
            shown = ", ".join(repr(x) for x in labels[:_SHOWN_ROWS])
            more = f" and {len(labels) - _SHOWN_ROWS} more" if len(labels) > _SHOWN_ROWS else ""
            value = (
                "absent"
                if edit is not None and edit.op is ChangeOp.REMOVE
                else (diffrules.short(edit.new) if edit is not None else diffrules.short(_shown(old)))
            )
            current = " (the current value)" if edit is None else ""
            parts.append(f"{value}{current} in rows {shown}{more}")
        what = "series" if spec.source == "series" else "image set"
        where = f"{what} {series if spec.source == 'series' else image_set}"
        self.problems.append(
            Problem(
                image_set,
                label,
                column,
                spec.key,
                f"{spec.key} is a {spec.level}-level attribute shared by the {count} rows of "
                f"{where}; the edit must be uniform across them, found: " + "; ".join(parts),
            )
        )

    # -- phases 5 and 6: rule checks, result --

    def get_result(self, vrs: dict[str, str]) -> ChangeSet:
        removals = diffrules.node_removals(self.targets, self.dropped_instances, self.dropped_series, self.problems)
        segments = self._segments()
        if removals or self._frames_added > 1 or any(rules.rekeys(b.attribute, b.level) for _, b in self.blocks):
            # the rules that relate changes to one another need them one by one
            flat = [c for segment in segments for c in (segment if isinstance(segment, list) else segment.changes())]
            changes = diffrules.check_targets(removals, flat, self.problems)
            if self._frames_added > 1:
                changes = diffrules.dedupe(changes, self.problems)
            segments = [changes]
        if self.validate:
            singles = [c for segment in segments if isinstance(segment, list) for c in segment]
            diffrules.check_uids(self.targets, singles, self.problems)
            for segment in segments:
                if isinstance(segment, list):
                    diffrules.check_primary(self.targets, segment, self.problems)
                else:
                    diffrules.check_primary_block(self.targets, segment, self.problems)
        table = _segments_table(segments)
        if len(table) > 1:
            table = table.take(self._order(table)).reset_index(drop=True)
        problems = _table([p.record() for p in self.problems], PROBLEM_COLUMNS)
        return ChangeSet(changes=table, problems=problems, snapshot=self.targets.snapshot, vrs=dict(vrs))

    def _segments(self) -> list[list[Change] | ChangeBlock]:
        """The changes in the order they were found: runs of single changes and the bulk path's blocks."""
        out: list[list[Change] | ChangeBlock] = []
        start = 0
        for at, block in self.blocks:
            if at > start:
                out.append(self.changes[start:at])
            out.append(block)
            start = at
        if start < len(self.changes) or not out:
            out.append(self.changes[start:])
        return out

    def _order(self, table: pd.DataFrame) -> np.ndarray:
        """Image set order of the snapshot, then level, series, instance, operation, attribute."""
        studies = self.targets.frame("studies").index
        codes, distinct = pd.factorize(table["ImageSetID"].to_numpy(dtype=object), use_na_sentinel=False)
        rank = studies.get_indexer(pd.Index(pd.Series(distinct, dtype=object).astype(str)))[codes]
        keys = (  # most significant first; np.lexsort is stable and takes the most significant last
            np.where(rank < 0, len(studies), rank),
            _ranked(table["level"], LEVEL_RANK),
            _text_rank(table["SeriesInstanceUID"]),
            _text_rank(table["SOPInstanceUID"]),
            _ranked(table["op"], _OP_RANK),
            _text_rank(table["attribute"]),
        )
        return np.lexsort(keys[::-1])


def _ranked(values: pd.Series, ranks: Mapping[str, int]) -> np.ndarray:
    """``values.map(ranks).fillna(9)``, looked up once per distinct value."""
    codes, distinct = pd.factorize(values.to_numpy(dtype=object), use_na_sentinel=False)
    return np.array([ranks.get(v, 9) for v in distinct.tolist()], dtype=np.int64)[codes]


def _text_rank(values: pd.Series) -> np.ndarray:
    """The rank of each cell's text in sorted order (missing as ""), for ``np.lexsort``: the order that sorting
    ``values.fillna("").astype(str)`` gives, without building that ``str`` column."""
    array = values.to_numpy(dtype=object)
    if set(map(type, array)) <= _TEXT_OR_MISSING:
        codes, distinct = pd.factorize(array, sort=True)  # a missing cell's code is -1, below every text
        if len(distinct) and distinct[0] == "":
            codes[codes < 0] = 0  # missing ranks with ""
        return codes
    missing = pd.isna(array)
    if missing.any():
        array = array.copy()
        array[missing] = ""
    if set(map(type, array)) - {str}:
        array = np.array([str(v) for v in array], dtype=object)
    codes, _ = pd.factorize(array, sort=True)
    return codes


#: cells whose order ``_text_rank`` reads from their text alone (None as "")
_TEXT_OR_MISSING = {str, type(None)}


def _cells(values: Any, positions: np.ndarray) -> list:
    """The cells at ``positions`` as Python objects (missing ones as they are)."""
    if isinstance(values, np.ndarray):
        return values[positions].tolist() if values.dtype == object else list(values[positions])
    return values.take(positions).to_numpy(dtype=object).tolist()


def _shown(value: Any) -> Any:
    from curation.frames.cells import thaw
    from curation.model.missing import is_absent

    return None if is_absent(value) else thaw(value)


def _segments_table(segments: list[list[Change] | ChangeBlock]) -> pd.DataFrame:
    """The ChangeSet table of the segments' changes, in order (object columns, cells as they are)."""
    parts: list[list[np.ndarray]] = []
    for segment in segments:
        if isinstance(segment, ChangeBlock):
            parts.append(segment.columns())
        elif segment:
            columns = list(zip(*[c.record() for c in segment], strict=True))
            parts.append([np.fromiter(col, dtype=object, count=len(col)) for col in columns])
    if not parts:
        return _table([], CHANGE_COLUMNS)
    joined = [np.concatenate([part[i] for part in parts]) for i in range(len(CHANGE_COLUMNS))]
    return pd.DataFrame({name: pd.Series(joined[i], dtype=object) for i, name in enumerate(CHANGE_COLUMNS)})


def _table(records: list[tuple], names: tuple[str, ...]) -> pd.DataFrame:
    columns = list(zip(*records, strict=True)) if records else [()] * len(names)
    return pd.DataFrame(
        {
            name: pd.Series(np.fromiter(col, dtype=object, count=len(col)), dtype=object)
            for name, col in zip(names, columns, strict=True)
        }
    )


def diff(
    snapshot: Any, edited: Any, *, vrs: Mapping[str, str] | None = None, strict: bool = False, rows: str = "selection"
) -> ChangeSet:
    """The ChangeSet that turns ``snapshot`` into the ``edited`` frames (see the module docstring).

    ``rows="selection"`` (default) leaves rows absent from a frame alone; ``rows="all"`` removes the instances
    and series absent from it. ``vrs`` maps new private tags to their VR (``{"001910F9": "DS"}``). Problems are
    collected in ``ChangeSet.problems``; with ``strict=True`` a ``DiffError`` listing them all is raised instead.
    """
    checked = check_vrs(vrs)
    with gc_paused():
        operation = _DiffOperation(snapshot, checked, rows=rows)
        for hint, frame in _inputs(edited):
            operation.add(frame, hint)
        changes = operation.get_result(checked)
    if strict and not changes.problems.empty:
        raise DiffError(changes.problems)
    return changes


# --- two versions of one document ----------------------------------------------------------------------------


def _similarity(left: Any, right: Any, uid_key: str) -> int:
    a = (left.get("DICOM") or {}) if isinstance(left, dict) else {}
    b = (right.get("DICOM") or {}) if isinstance(right, dict) else {}
    return sum(1 for k, v in a.items() if k != uid_key and k in b and b[k] == v)


def _realign(mapping: dict, old_mapping: dict, uid_key: str) -> dict:
    """``mapping`` (new UID -> node) with re-keyed nodes put back under their old UID.

    AHI re-keys a node in place, so a new key is matched to an old key that disappeared from the same spot
    (between the same surviving neighbours), the most similar node winning; the new node must carry the new
    key as its UID.
    """
    old_keys = list(old_mapping)
    removed = [k for k in old_keys if k not in mapping]
    added = [k for k in mapping if k not in old_mapping]
    if not removed or not added:
        return mapping
    rank = {k: i for i, k in enumerate(old_keys)}
    new_keys = list(mapping)
    rename: dict[str, str] = {}
    pool = set(removed)
    for position, new in enumerate(new_keys):
        node = mapping[new]
        if new not in added or not isinstance(node, dict) or (node.get("DICOM") or {}).get(uid_key) != new:
            continue
        before = next((rank[k] for k in reversed(new_keys[:position]) if k in rank), -1)
        after = next((rank[k] for k in new_keys[position + 1 :] if k in rank), len(old_keys))
        candidates = [k for k in removed if k in pool and before < rank[k] < after] or [k for k in removed if k in pool]
        if not candidates:
            continue
        best = max(candidates, key=lambda k: _similarity(old_mapping[k], mapping[new], uid_key))
        pool.discard(best)
        rename[new] = best
    return {rename.get(k, k): v for k, v in mapping.items()} if rename else mapping


def _align_uids(old: dict, new: dict) -> dict:
    """A shallow copy of ``new`` whose series/instances re-keyed by a UID change sit under their old UIDs."""
    old_series = (old.get("Study") or {}).get("Series") or {}
    new_study = dict(new.get("Study") or {})
    series = _realign(dict(new_study.get("Series") or {}), old_series, "SeriesInstanceUID")
    aligned = {}
    for uid, node in series.items():
        if uid in old_series and isinstance(node, dict) and isinstance(node.get("Instances"), dict):
            node = {
                **node,
                "Instances": _realign(node["Instances"], old_series[uid].get("Instances") or {}, "SOPInstanceUID"),
            }
        aligned[uid] = node
    new_study["Series"] = aligned
    return {**new, "Study": new_study}


def diff_documents(old_document: dict[str, Any], new_document: dict[str, Any]) -> ChangeSet:
    """The changes between two versions of one image set's document, as ``diff`` would report them.

    Both documents are flattened and compared with the same frame diff (validation off: a history is
    described, not checked; a missing cell is exactly "absent"). A series or instance whose UID changed is
    matched back to its old UID, so the change reads as an update of the UID. Neither document is modified.
    """
    from curation.frames.snapshot import Snapshot

    snapshot = Snapshot.from_documents([old_document], datastore_id=str(old_document.get("DatastoreID") or ""))
    new = flatten(_align_uids(old_document, new_document))
    vrs: dict[str, str] = {}
    for node_vrs in new.instances.get("@DICOMVRs", pd.Series(dtype=object)):
        if isinstance(node_vrs, dict):
            for key, vr in node_vrs.items():
                vrs.setdefault(key, vr)
    operation = _DiffOperation(snapshot, vrs, rows="all", validate=False, exact=True, study_levels=new.levels)
    for kind in ("studies", "series", "instances"):
        frame = getattr(new, kind)
        codecs = dict(new.codecs.get(kind, {}))
        old_frame = operation.targets.frame(kind)
        gone = [c for c in old_frame.columns if c not in frame.columns and codecs.get(c) != "index"]
        if gone:  # an attribute absent from every row of the new version was removed
            frame = pd.concat([frame, pd.DataFrame(None, index=frame.index, columns=gone, dtype=object)], axis=1)
        for uid in [c for c, codec in codecs.items() if codec == "index" and c not in frame.columns]:
            if uid in old_frame.columns:  # the new version's UIDs equal their keys again
                frame = frame.assign(**{uid: frame.index.get_level_values(-1)})
                codecs[uid] = "str"
        operation.add(frame, kind, codecs)
    return operation.get_result({})
