"""diff: from frames a curator edited with pandas to a ChangeSet (one tidy row per change) and its problems.

``diff(snapshot, edited)`` compares ``edited`` (any of the snapshot's frames after edits: ``studies``,
``series``, ``instances`` or ``wide``; or a list/tuple/dict of several) with the snapshot's own frame of the
same kind, recognised by its index names (ImageSetID / + SeriesInstanceUID / + SOPInstanceUID) and, for the
instance-level ones, by its columns (``wide`` has the studies and series columns). A dict may name the kind
with its keys (``{"wide": frame}``).

Rules (issue 5):

- a changed cell is an ``update`` (an ``add`` when the attribute was absent); writing back the same value is
  no change: values are compared in AHI's encoding after ``curation.model.values.coerce`` (``"CHEST"`` again, an
  equal list, a ``date`` equal to the stored ``"YYYYMMDD"``); None, NaN and ``pd.NA`` all mean "absent";
- a cell set to missing is a ``remove`` whose ``old`` carries the current value (AHI needs it); ``NULL``
  sets the attribute to an empty (null) value, which is an update, not a removal;
- a dropped instance row is a ``remove_instance``; dropping every instance of a series, or the series row
  of the ``series`` frame, is one ``remove_series``. Rows missing from ``studies`` are left alone (an image
  set is deleted with DeleteImageSet, not updated away), so a subset of ``studies`` edits just those rows;
  columns missing from any frame are left alone too. Removing every series of an image set is a problem;
- a new column adds an attribute at the level ``curation.model.levels.level_of`` gives (private tags: Instance);
  a private or keyword-less tag needs a VR: the instance's ``DICOMVRs`` when the tag is already there, else
  ``vrs={"001910F9": "DS"}``; without one the cell is a problem;
- a changed SOPInstanceUID / SeriesInstanceUID / StudyInstanceUID cell is an update addressed by the OLD UID
  (the index keeps the old UID). Changing the index itself is refused, not guessed: a row whose label is not
  in the snapshot is a problem ("adding instances is not possible with UpdateImageSetMetadata"), and while a
  frame has such rows its missing rows are not removed (they are problems too);
- ``@`` columns (AHI-generated or non-DICOM: ``@StoredTransferSyntaxUID``, ``@ImageFrames``, ``@DICOMVRs``,
  ``@SchemaVersion``...), AHI-generated keys (PixelData...) and the ``frames`` frame cannot be edited: a
  changed cell there is a problem;
- in ``wide``, a Patient/Study/Series column is shared by the rows of its image set/series: an edit must be
  uniform across them, becoming ONE change; otherwise the problem lists the rows and their values.

Validation: coerced values are checked with ``curation.model.values.validate`` (pydicom's VR rules, VM) and AHI's
constraints (AHI.md section 2): wrong level, targets that do not exist, UIDs that cannot be removed or are
already used, edits inside a removed series/instance, conflicting edits from several frames, and on primary
image sets (``snapshot.primary``; an unknown flag counts as primary) Patient/Series-level changes, series
removals, UID changes and anything that needs ``force``. Needing ``force`` is information, not a problem:
``ChangeSet.force_reasons()``. Every problem names the image set, the row (index label), the column and the
reason. Changes that AHI could accept (a value that breaks a VR rule can be forced; a primary flag may be
wrong) stay in ``changes`` so that ``plan(..., allow_problems=True)`` can send them; changes that cannot be
expressed or that AHI always refuses (no VR, an ``@`` column, an added row, a wrong level, a non-uniform wide
edit, a UID removal, conflicting values) are left out of ``changes``. ``strict=True`` raises one
``DiffError`` listing every problem instead.

``diff_documents(old, new)`` is the same comparison between two versions of one image set (for history).
Nothing here mutates the user's frames or the snapshot.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd

from curation.curate.changeset import CHANGE_COLUMNS, PROBLEM_COLUMNS, ChangeSet
from curation.frames.flattening import NULL, flatten, split_column
from curation.frames.gcpause import gc_paused
from curation.model import dictionary as dicom
from curation.model import rules, values
from curation.model.levels import level_of
from curation.model.vr import ALL_VRS, INT_VRS, TEXT_VRS

__all__ = ["DiffError", "diff", "diff_documents"]

_KIND_BY_INDEX = {
    ("ImageSetID",): "studies",
    ("ImageSetID", "SeriesInstanceUID"): "series",
    ("ImageSetID", "SeriesInstanceUID", "SOPInstanceUID"): "instances",
    ("ImageSetID", "SeriesInstanceUID", "SOPInstanceUID", "frame"): "frames",
}
_KINDS = ("studies", "series", "instances", "wide", "frames")
_LEVEL_RANK = {"Patient": 0, "Study": 1, "Series": 2, "Instance": 3}
_OP_RANK = {"remove_series": 0, "remove_instance": 1, "remove": 2, "update": 3, "add": 4}
_SHOWN_ROWS = 5
_SCALARS = (str, int, float)


class DiffError(ValueError):
    """Raised by ``diff(..., strict=True)``: every problem found, one per line; ``.problems`` is the table."""

    def __init__(self, problems: pd.DataFrame) -> None:
        self.problems = problems
        lines = [
            f"- image set {p['ImageSetID']}, row {p['row']!r}, column {p['column']!r}: {p['reason']}"
            for p in problems.to_dict("records")
        ]
        super().__init__(f"{len(lines)} problem(s) in the edits:\n" + "\n".join(lines))


# --- inputs ------------------------------------------------------------------------------------------------


def _frames(edited: Any) -> list[tuple[str | None, pd.DataFrame]]:
    if isinstance(edited, pd.DataFrame):
        return [(None, edited)]
    if isinstance(edited, Mapping):
        out = []
        for name, frame in edited.items():
            hint = name if name in _KINDS else None
            out.extend((hint, f) for _, f in _frames(frame))
        return out
    if isinstance(edited, Sequence) and not isinstance(edited, str):
        return [item for frame in edited for item in _frames(frame)]
    raise TypeError(
        f"diff takes a DataFrame of the snapshot (or a list/tuple/dict of them), not {type(edited).__name__}"
    )


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


def _flattened(snapshot: Any) -> Any:
    inner = getattr(snapshot, "_flattened", None)
    return inner() if callable(inner) else snapshot.flattened


def _objects(items: list) -> np.ndarray:
    return np.fromiter(items, dtype=object, count=len(items))


def _key(value: Any) -> bytes:
    if value is NULL:
        return b"\x00NULL"
    if value is None:
        return b"\x00ABSENT"
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _short(value: Any) -> str:
    if value is None:
        return "absent"
    if value is NULL:
        return "NULL"
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _pointers(array: np.ndarray) -> np.ndarray | None:
    """The object pointers of a 1-D object array, as integers (a view: compared without touching objects)."""
    if array.dtype != object or array.ndim != 1 or not len(array) or not array.flags.c_contiguous:
        return None
    return np.ctypeslib.as_array((ctypes.c_size_t * len(array)).from_address(array.ctypes.data))


def _equal(orig: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Elementwise ``==`` of two object arrays (a Python fallback when a cell cannot be compared so)."""
    try:
        equal = orig == new
        if not isinstance(equal, np.ndarray) or equal.dtype != bool or equal.shape != orig.shape:
            raise TypeError("not an elementwise comparison")
        return equal
    except (TypeError, ValueError):
        return np.fromiter((_safe_equal(a, b) for a, b in zip(orig, new, strict=True)), bool, len(orig))


def _changed(orig: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions where ``new`` differs from ``orig`` (None, NaN, NA all "absent") and ``new`` normalised.

    Cells holding the very same object as the snapshot (what a copy of its frame keeps for every untouched
    str/number) are found by comparing object pointers, vectorised; only the others are compared with ``==``
    (vectorised too), and only the cells found different are looked at in Python (two absent values are equal).
    """
    left, right = _pointers(orig), _pointers(new)
    if left is not None and right is not None:
        differ = np.flatnonzero(left != right)
        candidates = differ[~_equal(orig[differ], new[differ])] if len(differ) else differ
    else:
        candidates = np.flatnonzero(~_equal(orig, new))
    if not len(candidates):
        return candidates, new
    keep = []
    copied = False
    for i in candidates:
        a, b = orig[i], new[i]
        b_absent = values.is_absent(b)
        if b_absent and b is not None:
            if not copied:
                new, copied = new.copy(), True
            new[i] = None
        if b_absent and values.is_absent(a):
            continue
        keep.append(i)
    return np.asarray(keep, dtype=np.int64), new


def _safe_equal(left: Any, right: Any) -> bool:
    try:
        return bool(left == right) if type(left) is type(right) else False
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class _Spec:
    """How one edited column maps to the snapshot: source frame and column, level, DICOM key, blockers."""

    source: str
    src_col: str
    level: str | None
    key: str
    blocker: str | None = None
    warning: str | None = None
    node: bool = False


# --- the differ --------------------------------------------------------------------------------------------


class _Differ:
    def __init__(self, snapshot: Any, vrs: dict[str, str], *, validate: bool = True,
                 study_levels: Mapping[str, str] | None = None) -> None:
        self.snapshot = snapshot
        self.flat = _flattened(snapshot)
        self.vrs = vrs
        self.validate = validate
        self.study_levels = {**self.flat.levels, **(study_levels or {})}
        primary = getattr(snapshot, "primary", None)
        self.primary: Mapping[str, Any] | None = primary if isinstance(primary, Mapping) else None
        self.changes: list[list] = []
        self.problems: list[tuple] = []
        self.dropped_instances: dict[int, Any] = {}
        self.dropped_series: dict[int, Any] = {}
        self._ids: dict[str, list[np.ndarray]] = {}
        self._maps: dict[str, np.ndarray] = {}
        self._holding: dict[str, dict[str, set[str]]] = {}
        self._wide: dict[str, tuple[str, str]] | None = None
        self._instance_vrs: np.ndarray | None = None
        self._validated: dict[tuple, str | None] = {}
        self._identity = False
        self._frames_added = 0

    # -- snapshot lookups --

    def frame(self, source: str) -> pd.DataFrame:
        return getattr(self.flat, source)

    def ids(self, source: str) -> list[np.ndarray]:
        if source not in self._ids:
            index = self.frame(source).index
            self._ids[source] = [index.get_level_values(i).to_numpy(dtype=object) for i in range(index.nlevels)]
        return self._ids[source]

    def map_to(self, source: str) -> np.ndarray:
        """Position in ``source`` (studies or series) of each instance row."""
        if source not in self._maps:
            image_sets, series_uids = self.ids("instances")[:2]
            target = self.frame(source).index
            keys = pd.Index(image_sets) if source == "studies" else pd.MultiIndex.from_arrays([image_sets, series_uids])
            self._maps[source] = target.get_indexer(keys)
        return self._maps[source]

    def series_of_series(self) -> np.ndarray:
        """Position in ``studies`` of each series row."""
        if "series->studies" not in self._maps:
            self._maps["series->studies"] = self.frame("studies").index.get_indexer(pd.Index(self.ids("series")[0]))
        return self._maps["series->studies"]

    def wide_map(self) -> dict[str, tuple[str, str]]:
        """Column of the wide view -> (source frame, its column), named as ``flatten.wide_view`` names them."""
        if self._wide is None:
            mapping: dict[str, tuple[str, str]] = {}
            for source, level in (("studies", None), ("series", "Series"), ("instances", "Instance")):
                for column in self.frame(source).columns:
                    name = f"@{level}:{column}" if column in mapping else column
                    mapping[name] = (source, column)
            self._wide = mapping
        return self._wide

    def is_primary(self, image_set: str) -> bool | None:
        if self.primary is None or image_set not in self.primary:
            return None
        flag = self.primary[image_set]
        return None if flag is None else bool(flag)

    def holding(self, key: str) -> dict[str, set[str]]:
        """Image set -> levels at which the snapshot holds attribute ``key``."""
        if key not in self._holding:
            found: dict[str, set[str]] = {}
            studies = self.frame("studies")
            columns = [(key, self.study_levels.get(key, "Study")), (f"@Patient:{key}", "Patient"),
                       (f"@Study:{key}", "Study")]
            for column, level in columns:
                if column in studies.columns:
                    present = ~pd.isna(studies[column].to_numpy(dtype=object))
                    for image_set in self.ids("studies")[0][present]:
                        found.setdefault(image_set, set()).add(level)
            for source, level in (("series", "Series"), ("instances", "Instance")):
                frame = self.frame(source)
                if key in frame.columns:
                    present = ~pd.isna(frame[key].to_numpy(dtype=object))
                    for image_set in np.unique(self.ids(source)[0][present].astype(str)):
                        found.setdefault(str(image_set), set()).add(level)
            self._holding[key] = found
        return self._holding[key]

    def instance_vr(self, position: int, key: str) -> str | None:
        if self._instance_vrs is None:
            instances = self.frame("instances")
            self._instance_vrs = (
                instances["@DICOMVRs"].to_numpy(dtype=object) if "@DICOMVRs" in instances.columns
                else np.full(len(instances), None, dtype=object)
            )
        vrs = self._instance_vrs[position]
        return vrs.get(key) if isinstance(vrs, dict) else None

    # -- recording --

    def problem(self, image_set: Any, row: Any, column: Any, attribute: Any, reason: str) -> None:
        self.problems.append((image_set, row, column, attribute, reason))

    def label(self, kind: str, position: int) -> Any:
        """The index label of original row ``position`` of ``kind``'s frame (a str or a tuple)."""
        ids = self.ids("instances" if kind == "wide" else kind)
        return ids[0][position] if len(ids) == 1 else tuple(level[position] for level in ids)

    def address(self, kind: str, level: str, position: int) -> tuple[str, str | None, str | None]:
        """(image set, series, sop) of an original row ``position`` of ``kind``'s frame, cut to ``level``."""
        source = "instances" if kind == "wide" else kind
        ids = self.ids(source)
        image_set = ids[0][position]
        series = ids[1][position] if len(ids) > 1 and level in ("Series", "Instance") else None
        sop = ids[2][position] if len(ids) > 2 and level == "Instance" else None
        return image_set, series, sop

    # -- frames --

    def add_frame(self, frame: pd.DataFrame, hint: str | None) -> None:
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"diff takes DataFrames, not {type(frame).__name__}")
        names = tuple(frame.index.names)
        kind = _KIND_BY_INDEX.get(names)
        if kind is None:
            raise ValueError(
                f"cannot tell which snapshot frame this is: its index is {list(names)}; diff takes the snapshot's "
                "studies, series, instances or wide frame with its index unchanged (do not reset_index)"
            )
        self._frames_added += 1
        if kind == "instances" and (hint == "wide" or (hint is None and self._looks_wide(frame))):
            kind = "wide"
        if frame.columns.has_duplicates:
            raise ValueError(f"the edited {kind} frame has duplicate column names")
        orig = self.frame("instances" if kind == "wide" else kind)
        positions, unknown = self._positions(kind, frame, orig.index)
        self._identity = len(positions) == len(orig) and bool((positions == np.arange(len(orig))).all())
        rows = np.flatnonzero(positions >= 0)
        opos = positions[rows]
        if kind != "studies":
            present = np.zeros(len(orig), dtype=bool)
            present[opos] = True
            self._dropped(kind, np.flatnonzero(~present), blocked=unknown)
        all_rows = len(rows) == len(frame)
        for column in frame.columns:
            self._column(kind, frame, column, rows, opos, all_rows)

    def _looks_wide(self, frame: pd.DataFrame) -> bool:
        instance_columns = set(self.frame("instances").columns)
        upper = {c for c in self.wide_map() if c not in instance_columns}
        return any(c in upper for c in frame.columns)

    def _positions(self, kind: str, frame: pd.DataFrame, index: pd.Index) -> tuple[np.ndarray, bool]:
        if frame.index.equals(index):
            return np.arange(len(index)), False
        positions = index.get_indexer(frame.index)
        duplicated = frame.index.duplicated(keep="first")
        unknown = False
        for i in np.flatnonzero(duplicated | (positions < 0)):
            label = frame.index[i]
            image_set = label[0] if isinstance(label, tuple) else label
            if duplicated[i]:
                reason = "the row appears more than once in the edited frame (its first occurrence is used)"
            else:
                unknown = True
                what = {"studies": "image set", "series": "series"}.get(kind, "instance")
                reason = (
                    f"this {what} does not exist in the snapshot: adding {what}s is not possible with "
                    "UpdateImageSetMetadata"
                )
                if kind != "studies":
                    reason += (
                        "; if you changed a UID in the index, restore the index and put the new UID in the "
                        "column of the same name instead (the index must keep the old UID)"
                    )
            self.problem(image_set, label, None, None, reason)
        positions = positions.copy()
        positions[duplicated] = -1
        return positions, unknown

    def _dropped(self, kind: str, dropped: np.ndarray, *, blocked: bool) -> None:
        if kind == "frames":
            for position in dropped:
                label = self.frame("frames").index[position]
                self.problem(label[0], label, None, None, "image frames are AHI-generated and cannot be removed")
            return
        source = "series" if kind == "series" else "instances"
        target = self.dropped_series if kind == "series" else self.dropped_instances
        for position in dropped:
            label = self.label(source, int(position))
            if blocked:
                self.problem(
                    label[0], label, None, None,
                    "row missing from a frame that also has rows not in the snapshot (was the index edited?): "
                    "not removed",
                )
            else:
                target.setdefault(int(position), label)

    def _spec(self, kind: str, column: Any) -> _Spec:
        if not isinstance(column, str):
            return _Spec(kind, str(column), None, str(column), blocker="column names must be DICOM keywords or tags")
        qualifier, key, node_key = split_column(column)
        source, src_col = ("instances" if kind == "wide" else kind), column
        if kind == "frames":
            return _Spec("frames", column, "Instance", key,
                         blocker="image frame data is AHI-generated and cannot be changed")
        if kind == "wide":
            if column in self.wide_map():
                source, src_col = self.wide_map()[column]
                level = {"series": "Series", "instances": "Instance"}.get(source) or self._study_level(qualifier, key)
            else:
                level = qualifier or level_of(key)
                source = {"Patient": "studies", "Study": "studies", "Series": "series"}.get(level, "instances")
                src_col = column if source == "studies" else key
        elif kind == "studies":
            level = self._study_level(qualifier, key)
        else:
            level = "Series" if kind == "series" else "Instance"
            if qualifier is not None and qualifier != level:
                return _Spec(source, src_col, level, key,
                             blocker=f"a {qualifier}-level column cannot be edited in the {kind} frame")
        if node_key:
            hint = "; give the VR of a new private tag with diff(..., vrs={tag: VR})" if key == "DICOMVRs" else ""
            return _Spec(source, src_col, level, key, node=True,
                         blocker=f"{column} is not a DICOM attribute (AHI-generated or node data): it cannot be "
                                 f"changed with UpdateImageSetMetadata{hint}")
        if level not in _LEVEL_RANK:
            return _Spec(source, src_col, level, key, blocker=f"{column} names no level of the document")
        generated = rules.generated_key_refusal(key)
        if generated:
            return _Spec(source, src_col, level, key, blocker=generated)
        if dicom.is_tag_key(key):
            if key != key.upper():
                return _Spec(source, src_col, level, key,
                             blocker=f"tag keys are written with 8 uppercase hex digits: {key.upper()}")
            keyword = dicom.keyword_of(key)
            if keyword:
                return _Spec(source, src_col, level, key,
                             blocker=f"tag {key} has the keyword {keyword}: AHI keys it by keyword, use column "
                                     f"{keyword!r}")
        elif not dicom.is_standard(key):
            return _Spec(source, src_col, level, key,
                         warning=f"{key!r} is not a DICOM keyword (pydicom's dictionary) nor an 8-hex tag: "
                                 "AHI takes it only with force")
        return _Spec(source, src_col, level, key)

    def _study_level(self, qualifier: str | None, key: str) -> str:
        if qualifier is not None:
            return qualifier if qualifier in ("Patient", "Study") else f"?{qualifier}"
        level = self.study_levels.get(key)
        if level:
            return level
        return "Patient" if level_of(key) == "Patient" else "Study"

    def _column(self, kind: str, frame: pd.DataFrame, column: Any, rows: np.ndarray, opos: np.ndarray,
                all_rows: bool) -> None:
        spec = self._spec(kind, column)
        new = frame[column].to_numpy(dtype=object)
        if not all_rows:
            new = new[rows]
        src = self.frame(spec.source)
        if spec.src_col in src.columns:
            orig = src[spec.src_col].to_numpy(dtype=object)
            if kind == "wide" and spec.source != "instances":
                orig = orig[self.map_to(spec.source)[opos]]
            elif not (all_rows and len(opos) == len(orig) and self._identity):
                orig = orig[opos]
        else:
            orig = np.full(len(opos), None, dtype=object)
        changed, new = _changed(orig, new)
        if not len(changed):
            return
        if spec.blocker is not None:
            if not self.validate and spec.node:
                return
            for i in changed:
                label = self.label(kind, int(opos[i]))
                image_set = label[0] if isinstance(label, tuple) else label
                self.problem(image_set, label, column, spec.key,
                             f"{spec.blocker} (was {_short(orig[i])}, edited to {_short(new[i])})")
            return
        if kind == "wide" and spec.source != "instances":
            self._uniform(spec, frame, column, rows, opos, orig, new, changed)
            return
        if dicom.is_tag_key(spec.key):
            for i in changed:
                self._cell(kind, spec, self.label(kind, int(opos[i])), column, int(opos[i]), orig[i], new[i])
            return
        self._keyword_cells(kind, spec, column, opos[changed], orig[changed], new[changed])

    def _keyword_cells(self, kind: str, spec: _Spec, column: str, positions: np.ndarray, olds: np.ndarray,
                       news: np.ndarray) -> None:
        """The changed cells of one keyword column, in one pass (VR/VM, labels and addresses looked up once).

        A ``str`` for a single-valued text VR and an ``int`` for an integer VR need no coercion, and since the
        vectorised compare found them different from the current value they are changes as they are.
        """
        ids = self.ids("instances" if kind == "wide" else kind)
        picked = [level[positions] for level in ids]
        labels = picked[0].tolist() if len(picked) == 1 else list(zip(*picked, strict=True))
        count = len(positions)
        image_sets = picked[0]
        nones = [None] * count
        series = picked[1] if len(picked) > 1 and spec.level in ("Series", "Instance") else nones
        sops = picked[2] if len(picked) > 2 and spec.level == "Instance" else nones
        vr, vm = dicom.vr_vm_of(spec.key)
        single = not vm or vm == "1"
        as_is = str if vr in TEXT_VRS and single else int if vr in INT_VRS and single else None
        simple = spec.warning is None
        append = self.changes.append
        key, level = spec.key, spec.level
        for i in range(count):
            value, old = news[i], olds[i]
            if value is None or old is None or not simple:
                self._cell(kind, spec, labels[i], column, int(positions[i]), old, value)
                continue
            if type(value) is not as_is:
                try:
                    coerced = values.coerce(value, vr, vm)
                except values.CoercionError as exc:
                    self.problem(image_sets[i], labels[i], column, key, f"{exc} (value {_short(value)})")
                    continue
                if values.same_value(coerced, old):
                    continue
                value = coerced
            problem = self.check_value(value, vr, vm) if self.validate else None
            if problem:
                self.problem(image_sets[i], labels[i], column, key,
                             f"value {_short(value)} does not fit {key} (VR {vr}): {problem}")
            append([image_sets[i], level, series[i], sops[i], key, vr, old, value, "update", labels[i], column])

    def _vr_vm(self, spec: _Spec, kind: str, position: int, old: Any) -> tuple[str | None, str | None]:
        key = spec.key
        if not dicom.is_tag_key(key):
            return dicom.vr_vm_of(key)
        vr = None
        if spec.level == "Instance" and kind in ("instances", "wide") and old is not None:
            vr = self.instance_vr(position, key)
        if vr is None and spec.level == "Instance" and kind in ("instances", "wide"):
            vr = self.vrs.get(key) or self.instance_vr(position, key)
        return vr or self.vrs.get(key), None

    def _cell(self, kind: str, spec: _Spec, label: Any, column: str, position: int, old: Any, value: Any) -> None:
        image_set, series, sop = self.address(kind, spec.level, position)
        if value is None:
            self._attribute(spec, image_set, series, sop, None, old, None, label, column, None)
            return
        vr, vm = self._vr_vm(spec, kind, position, old)
        if vr is None and dicom.is_tag_key(spec.key):
            seen = self._known_vr(spec.key)
            self.problem(image_set, label, column, spec.key,
                         f"tag {spec.key} has no VR: give it with diff(..., vrs={{{spec.key!r}: 'XX'}})"
                         + (f" (other instances use {seen})" if seen else ""))
            return
        try:
            coerced = values.coerce(value, vr, vm)
        except values.CoercionError as exc:
            self.problem(image_set, label, column, spec.key, f"{exc} (value {_short(value)})")
            return
        if values.same_value(coerced, old):
            return
        problem = self.check_value(coerced, vr, vm) if self.validate else None
        self._attribute(spec, image_set, series, sop, vr, old, coerced, label, column, problem)

    def check_value(self, value: Any, vr: str | None, vm: str | None) -> str | None:
        """``values.validate``, remembered per scalar (edits repeat values; arrays repeat their items).

        A flat array is checked for multiplicity, then item by item (each item remembered).
        """
        t = type(value)
        if t is list and vr != "SQ" and all(type(v) in _SCALARS or v is None for v in value):
            problem = values.validate([None] * len(value), vr, vm)
            if problem:
                return problem
            for item in value:
                problem = self.check_value(item, vr, "1")
                if problem:
                    return problem
            return None
        if t not in _SCALARS:
            return values.validate(value, vr, vm)
        key = (vr, vm, t, value)
        if key not in self._validated:
            self._validated[key] = values.validate(value, vr, vm)
        return self._validated[key]

    def _known_vr(self, key: str) -> str | None:
        vrs = getattr(self.snapshot, "_dicom_vrs", None)
        try:
            return vrs().get(key) if callable(vrs) else None
        except Exception:  # only a hint for a message
            return None

    def _attribute(self, spec: _Spec, image_set: str, series: Any, sop: Any, vr: Any, old: Any, new: Any,
                   label: Any, column: str, problem: str | None) -> None:
        key, level = spec.key, spec.level
        op = "remove" if new is None else "add" if old is None else "update"
        refusal = rules.uid_removal_refusal(key, level) if op == "remove" else None
        if refusal:
            self.problem(image_set, label, column, key, refusal)
            return
        if op == "remove" and vr is None:
            vr = self._removal_vr(spec, image_set, series, sop)
        if self.validate and op == "add":
            reason = self._level_problem(image_set, key, level)
            if reason:
                self.problem(image_set, label, column, key, reason)
                return
        if self.validate and spec.warning:
            self.problem(image_set, label, column, key, spec.warning)
        if problem:
            self.problem(image_set, label, column, key,
                         f"value {_short(new)} does not fit {key} (VR {vr}): {problem}")
        self.changes.append([image_set, level, series, sop, key, vr, old, new, op, label, column])

    def _removal_vr(self, spec: _Spec, image_set: str, series: Any, sop: Any) -> str | None:
        if not dicom.is_tag_key(spec.key):
            return dicom.vr_vm_of(spec.key)[0]
        if spec.level == "Instance" and sop is not None:
            position = self.frame("instances").index.get_indexer([(image_set, series, sop)])[0]
            if position >= 0:
                return self.instance_vr(int(position), spec.key)
        return self.vrs.get(spec.key)

    def _level_problem(self, image_set: str, key: str, level: str) -> str | None:
        holding = self.holding(key).get(image_set, set())
        reason = rules.level_problem(key, level, holding, image_set=image_set)
        if reason is None:
            return None
        if holding:
            return f"{reason}: edit it where the document puts it"
        frame = {"Patient": "studies", "Study": "studies", "Series": "series"}.get(level_of(key), "instances")
        return f"{reason}: add it in the {frame} frame"

    def _uniform(self, spec: _Spec, frame: pd.DataFrame, column: str, rows: np.ndarray, opos: np.ndarray,
                 orig: np.ndarray, new: np.ndarray, changed: np.ndarray) -> None:
        groups = self.map_to(spec.source)[opos]
        is_changed = np.zeros(len(opos), dtype=bool)
        is_changed[changed] = True
        order = np.argsort(groups, kind="stable")
        ordered = groups[order]
        what = "image set" if spec.source == "studies" else "series"
        for group in np.unique(groups[changed]):
            members = order[np.searchsorted(ordered, group, "left"):np.searchsorted(ordered, group, "right")]
            first = members[is_changed[members]][0]
            old = orig[first]
            position = int(opos[first])
            image_set, series, sop = self.address("wide", spec.level, position)
            vr, vm = self._vr_vm(spec, "wide", position, old)
            encodings: dict[bytes, tuple[Any, list]] = {}
            failed = False
            for member in members:
                label = self.label("wide", int(opos[member]))
                if not is_changed[member]:
                    value = old
                elif new[member] is None:
                    value = None
                else:
                    try:
                        value = values.coerce(new[member], vr, vm)
                    except values.CoercionError as exc:
                        self.problem(image_set, label, column, spec.key, f"{exc} (value {_short(new[member])})")
                        failed = True
                        continue
                encodings.setdefault(_key(value), (value, []))[1].append(label)
            if failed:
                continue
            label = self.label("wide", int(opos[first]))
            if len(encodings) > 1:
                parts = []
                for value, labels in encodings.values():
                    shown = ", ".join(repr(x) for x in labels[:_SHOWN_ROWS])
                    more = f" and {len(labels) - _SHOWN_ROWS} more" if len(labels) > _SHOWN_ROWS else ""
                    current = " (the current value)" if values.same_value(value, old) or value is old else ""
                    parts.append(f"{_short(value)}{current} in rows {shown}{more}")
                where = f"{what} {series if spec.source == 'series' else image_set}"
                self.problem(image_set, label, column, spec.key,
                             f"{spec.key} is a {spec.level}-level attribute shared by the {len(members)} rows of "
                             f"{where}; the edit must be uniform across them, found: " + "; ".join(parts))
                continue
            value = next(iter(encodings.values()))[0]
            if value is None:
                if old is not None:
                    self._attribute(spec, image_set, series, sop, None, old, None, label, column, None)
                continue
            if values.same_value(value, old):
                continue
            problem = self.check_value(value, vr, vm) if self.validate else None
            if vr is None and dicom.is_tag_key(spec.key):
                self.problem(image_set, label, column, spec.key, f"tag {spec.key} has no VR: give it with vrs=")
                continue
            self._attribute(spec, image_set, series, sop, vr, old, value, label, column, problem)

    # -- result --

    def result(self, vrs: dict[str, str]) -> ChangeSet:
        removals = self._removals()
        changes = self._check_targets(removals)
        if self._frames_added > 1:
            changes = self._dedupe(changes)
        if self.validate:
            self._check_uids(changes)
            self._check_primary(changes)
        columns = list(zip(*changes, strict=True)) if changes else [()] * len(CHANGE_COLUMNS)
        table = pd.DataFrame({name: pd.Series(_objects(list(col)), dtype=object)
                              for name, col in zip(CHANGE_COLUMNS, columns, strict=True)})
        if len(table) > 1:
            studies = self.frame("studies").index
            rank = studies.get_indexer(pd.Index(table["ImageSetID"].astype(str)))
            keys = pd.DataFrame({
                "set": np.where(rank < 0, len(studies), rank),
                "level": table["level"].map(_LEVEL_RANK).fillna(9).to_numpy(),
                "series": table["SeriesInstanceUID"].fillna("").astype(str).to_numpy(),
                "sop": table["SOPInstanceUID"].fillna("").astype(str).to_numpy(),
                "op": table["op"].map(_OP_RANK).fillna(9).to_numpy(),
                "attribute": table["attribute"].fillna("").astype(str).to_numpy(),
            })
            order = keys.sort_values(list(keys.columns), kind="stable").index.to_numpy()
            table = table.take(order).reset_index(drop=True)
        problems = pd.DataFrame({name: pd.Series(_objects([p[i] for p in self.problems]), dtype=object)
                                 for i, name in enumerate(PROBLEM_COLUMNS)})
        return ChangeSet(changes=table, problems=problems, snapshot=self.snapshot, vrs=dict(vrs))

    def _removals(self) -> list[list]:
        series_index = self.frame("series").index
        rows: list[list] = []
        dropped_series = dict(self.dropped_series)
        if self.dropped_instances:
            of_series = self.map_to("series")
            dropped = np.fromiter(self.dropped_instances, dtype=np.int64, count=len(self.dropped_instances))
            total = np.bincount(of_series[of_series >= 0], minlength=len(series_index))
            gone = np.bincount(of_series[dropped], minlength=len(series_index))
            for position in np.flatnonzero((gone == total) & (total > 0)):
                dropped_series.setdefault(int(position), self.label("series", int(position)))
        series_ids = self.ids("series")
        blocked: set[tuple[str, str]] = set()
        if dropped_series:
            per_image_set = np.bincount(self.series_of_series(), minlength=len(self.frame("studies")))
            positions = np.fromiter(dropped_series, dtype=np.int64, count=len(dropped_series))
            removed = np.bincount(self.series_of_series()[positions], minlength=len(per_image_set))
            for study in np.flatnonzero((removed == per_image_set) & (removed > 0)):
                image_set = self.frame("studies").index[study]
                self.problem(image_set, image_set, None, None,
                             "the edits remove every series of this image set: an update cannot do that, use "
                             "DeleteImageSet (nothing is removed from it)")
                for position in positions[self.series_of_series()[positions] == study]:
                    del dropped_series[int(position)]
                    blocked.add((series_ids[0][position], series_ids[1][position]))
        for position, label in dropped_series.items():
            rows.append([series_ids[0][position], "Series", series_ids[1][position], None, None, None, None, None,
                         "remove_series", label, None])
        removed_series = {(r[0], r[2]) for r in rows}
        instance_ids = self.ids("instances")
        for position, label in self.dropped_instances.items():
            image_set, series, sop = (instance_ids[i][position] for i in range(3))
            if (image_set, series) in removed_series or (image_set, series) in blocked:
                continue
            rows.append([image_set, "Instance", series, sop, None, None, None, None, "remove_instance", label, None])
        return rows

    def _check_targets(self, removals: list[list]) -> list[list]:
        removed_series = {(r[0], r[2]) for r in removals if r[8] == "remove_series"}
        removed_instances = {(r[0], r[2], r[3]) for r in removals if r[8] == "remove_instance"}
        kept = list(removals)
        if not removed_series and not removed_instances:
            return kept + self.changes
        for change in self.changes:
            image_set, level, series, sop = change[:4]
            inside = (level in ("Series", "Instance") and (image_set, series) in removed_series) or (
                level == "Instance" and (image_set, series, sop) in removed_instances)
            if inside:
                self.problem(image_set, change[9], change[10], change[4],
                             f"the edits change {change[4]} of a {level.lower()} they also remove")
                continue
            kept.append(change)
        return kept

    def _dedupe(self, changes: list[list]) -> list[list]:
        seen: dict[tuple, list] = {}
        conflicts: set[tuple] = set()
        for change in changes:
            spot = (change[0], change[1], change[2], change[3], change[4], change[8] in ("remove_instance",
                                                                                         "remove_series"))
            if spot not in seen:
                seen[spot] = change
                continue
            other = seen[spot]
            if other[8] == change[8] and _key(other[7]) == _key(change[7]):
                continue
            conflicts.add(spot)
            self.problem(change[0], change[9], change[10], change[4],
                         f"conflicting edits of {change[4]}: {_short(other[7])} ({other[8]}, from row "
                         f"{other[9]!r} column {other[10]!r}) and {_short(change[7])} ({change[8]}): neither is kept")
        return [c for spot, c in seen.items() if spot not in conflicts]

    def _check_uids(self, changes: list[list]) -> None:
        used: dict[tuple[str, str], set[str]] = {}
        for change in changes:
            key, level = change[4], change[1]
            if change[8] not in ("add", "update") or not rules.rekeys(key, level):
                continue
            new, image_set = change[7], change[0]
            if (image_set, key) not in used:
                source = "instances" if key == "SOPInstanceUID" else "series"
                ids = self.ids(source)
                used[(image_set, key)] = set(ids[-1][ids[0] == image_set])
            taken = used[(image_set, key)]
            problem = rules.new_uid_problem(key, new, taken, image_set=image_set)
            if problem:
                self.problem(image_set, change[9], change[10], key, problem)
            else:
                taken.add(new)

    def _check_primary(self, changes: list[list]) -> None:
        for change in changes:
            image_set, level, key, vr, op = change[0], change[1], change[4], change[5], change[8]
            flag = self.is_primary(image_set)
            if flag is False:
                continue
            ahi_op = {"add": "set", "update": "set"}.get(op, op)
            refusals = rules.primary_refusals(level, key, ahi_op, rules.change_force_reasons(key, vr, op))
            if not refusals:
                continue
            note = ("" if flag else " (the snapshot has no primary flag for this image set: it is treated as "
                    "primary; set snapshot.primary to override)")
            self.problem(image_set, change[9], change[10], key, "; ".join(refusals) + note)


def diff(snapshot: Any, edited: Any, *, vrs: Mapping[str, str] | None = None, strict: bool = False) -> ChangeSet:
    """The ChangeSet that turns ``snapshot`` into the ``edited`` frames (see the module docstring).

    ``vrs`` maps new private tags to their VR (``{"001910F9": "DS"}``). Problems are collected in
    ``ChangeSet.problems``; with ``strict=True`` a ``DiffError`` listing them all is raised instead.
    """
    checked = check_vrs(vrs)
    with gc_paused():
        differ = _Differ(snapshot, checked)
        for hint, frame in _frames(edited):
            differ.add_frame(frame, hint)
        changes = differ.result(checked)
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
        after = next((rank[k] for k in new_keys[position + 1:] if k in rank), len(old_keys))
        candidates = [k for k in removed if k in pool and before < rank[k] < after] or [k for k in removed
                                                                                         if k in pool]
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
            node = {**node, "Instances": _realign(node["Instances"], old_series[uid].get("Instances") or {},
                                                  "SOPInstanceUID")}
        aligned[uid] = node
    new_study["Series"] = aligned
    return {**new, "Study": new_study}


def diff_documents(old_document: dict[str, Any], new_document: dict[str, Any]) -> ChangeSet:
    """The changes between two versions of one image set's document, as ``diff`` would report them.

    Both documents are flattened and compared with the same frame diff (validation off: a history is
    described, not checked). A series or instance whose UID changed is matched back to its old UID, so the
    change reads as an update of the UID. Neither document is modified.
    """
    from curation.frames.snapshot import Snapshot

    snapshot = Snapshot.from_documents([old_document], datastore_id=str(old_document.get("DatastoreID") or ""))
    new = flatten(_align_uids(old_document, new_document))
    vrs: dict[str, str] = {}
    for node_vrs in new.instances.get("@DICOMVRs", pd.Series(dtype=object)):
        if isinstance(node_vrs, dict):
            for key, vr in node_vrs.items():
                vrs.setdefault(key, vr)
    differ = _Differ(snapshot, vrs, validate=False, study_levels=new.levels)
    for kind in ("studies", "series", "instances"):
        frame = getattr(new, kind)
        gone = [c for c in differ.frame(kind).columns if c not in frame.columns]
        if gone:  # an attribute absent from every row of the new version was removed
            frame = pd.concat([frame, pd.DataFrame(None, index=frame.index, columns=gone, dtype=object)], axis=1)
        differ.add_frame(frame, kind)
    return differ.result({})
