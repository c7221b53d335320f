"""Slice geometry of image stacks: each instance's position along its stack's normal, with gaps, overlaps and
duplicates flagged. One vectorised computation serves ``curation.ui.plots.slice_geometry`` (one series, drawn)
and ``curation.check`` (every series at once, as findings), so what the plot shows and what the check reports
cannot disagree.

The rule (PS3.3 C.7.6.2, Image Plane Module): ImageOrientationPatient holds the row and column direction
cosines, their cross product n is the slice normal, and ImagePositionPatient · n is the slice's position along
it. Per group of instances (a series, or a stack of one):

- the group's normal comes from its most common ImageOrientationPatient (rounded to 4 decimals; a tie goes to
  the orientation seen first); an instance whose orientation differs from it by more than 1e-3 is ``oblique``;
- in position order (ties by InstanceNumber), ``spacing`` is the step from the previous instance; with m the
  median of the steps larger than ``DUPLICATE_TOLERANCE`` (so duplicates do not drag it down): ``gap`` when
  spacing > ``GAP_FACTOR`` m, ``overlap`` when ``DUPLICATE_TOLERANCE`` < spacing < ``OVERLAP_FACTOR`` m,
  ``duplicate`` for both instances of a step of at most ``DUPLICATE_TOLERANCE`` mm, ``missing_position`` for an
  instance without a usable ImagePositionPatient (it sorts last);
- ``flag`` names the flags of a row, comma-separated ("" when none).

Cells may be backslash-joined text (the frames' ``str`` columns), tuples or lists of DS strings or numbers;
anything else (absent, empty, not three or six numbers) is no position or no orientation. Nothing here changes
its input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from curation.frames.cells import STR_DTYPE
from curation.frames.views import parse_ds

__all__ = [
    "DUPLICATE_TOLERANCE",
    "GAP_FACTOR",
    "OVERLAP_FACTOR",
    "SliceGeometry",
    "geometry_table",
    "slice_positions",
]

#: Relative spacing thresholds (times the median spacing of the group).
GAP_FACTOR = 1.5
OVERLAP_FACTOR = 0.5
#: Positions closer than this (mm) are the same position (a duplicate slice).
DUPLICATE_TOLERANCE = 1e-3
#: The flag names, in the order ``flag`` lists them.
FLAGS = (
    ("duplicate", "duplicate"),
    ("gap", "gap"),
    ("overlap", "overlap"),
    ("missing_position", "no position"),
    ("oblique", "orientation"),
)
_LABELS = np.array(
    [",".join(name for bit, (_, name) in enumerate(FLAGS) if code >> bit & 1) for code in range(1 << len(FLAGS))],
    dtype=object,
)
_INTEGER_TEXT = r"\s*[+-]?\d+\s*"
#: A decimal string's number (PS3.5 6.2 DS, pad trimmed): the items ``numbers`` casts.
_DECIMAL_TEXT = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"


@dataclass(frozen=True)
class SliceGeometry:
    """The geometry of every group: ``table`` (one row per instance, the input's index, in group then position
    order; columns ``group`` (the group's code), InstanceNumber, position, oblique, ``oriented`` (the row has a
    usable ImageOrientationPatient), spacing, duplicate, gap, overlap, missing_position, flag), and per group
    code its ``median_spacing`` and unit ``normals`` (x, y, z; NaN without an orientation)."""

    table: pd.DataFrame
    median_spacing: pd.Series
    normals: pd.DataFrame


def _cell_numbers(value: Any, width: int) -> np.ndarray | None:
    """``width`` floats from one cell (joined text, or a list/tuple of strings or numbers), None if not that."""
    if isinstance(value, str):
        value = value.split("\\")
    if not isinstance(value, list | tuple) or len(value) != width:
        return None
    out = []
    for item in value:
        number = parse_ds(item) if isinstance(item, str) else item if isinstance(item, int | float) else None
        if number is None or isinstance(number, bool):
            return None
        out.append(float(number))
    return np.array(out)


def numbers(column: pd.Series | None, width: int, length: int) -> np.ndarray:
    """An (n, ``width``) float array of a column of multi-valued DS cells; a row of NaN where a cell is not
    exactly ``width`` numbers. ``str`` columns are parsed vectorised, other columns cell by cell."""
    out = np.full((length, width), np.nan)
    if column is None or not length:
        return out
    if isinstance(column.dtype, pd.StringDtype):
        return _text_numbers(pa.array(column, type=pa.string(), from_pandas=True), width, out)
    for row, value in enumerate(column.to_numpy(dtype=object)):
        parsed = _cell_numbers(value, width)
        if parsed is not None:
            out[row] = parsed
    return out


def _text_numbers(text: pa.Array, width: int, out: np.ndarray) -> np.ndarray:
    """``numbers`` of backslash-joined text, in Arrow: split, trim, keep decimal numbers, cast (into ``out``)."""
    lists = pc.split_pattern(text, "\\")
    counts = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    items = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    decimal = pc.fill_null(pc.match_substring_regex(items, _DECIMAL_TEXT), False)
    values = pc.cast(pc.if_else(decimal, items, pa.scalar(None, pa.string())), pa.float64())
    flat = values.to_numpy(zero_copy_only=False).astype(float)
    rows = np.flatnonzero(counts == width)
    if not len(rows):
        return out
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[rows]
    picked = flat[starts[:, None] + np.arange(width)[None, :]]
    good = ~np.isnan(picked).any(axis=1)
    out[rows[good]] = picked[good]
    return out


def integers(column: pd.Series | None, length: int) -> pd.Series:
    """An ``Int64`` series (positional index) of a column of IS cells (missing where not an integer): text
    (the cells of ``str`` columns, or one-item arrays of text in object columns) by one vectorised rule."""
    if column is None:
        return pd.Series(pd.array([pd.NA] * length, dtype="Int64"))
    if str(column.dtype) == "Int64":
        return column.reset_index(drop=True)
    if isinstance(column.dtype, pd.StringDtype):
        text = column.reset_index(drop=True)
    else:
        cells = [v[0] if isinstance(v, list | tuple) and len(v) == 1 else v for v in column.to_numpy(dtype=object)]
        text = pd.Series([v if isinstance(v, str) else None for v in cells], dtype=STR_DTYPE)
        numbers = pd.Series(
            [v if isinstance(v, int) and not isinstance(v, bool) else None for v in cells], dtype="Int64"
        )
        return numbers.fillna(integers(text, length))
    arrow = pa.array(text, type=pa.string(), from_pandas=True)
    integer = pc.fill_null(pc.match_substring_regex(arrow, f"^{_INTEGER_TEXT}$"), False)
    trimmed = pc.utf8_trim_whitespace(pc.if_else(integer, arrow, pa.scalar(None, pa.string())))
    parsed = pd.to_numeric(pd.Series(trimmed.to_numpy(zero_copy_only=False), dtype=object), errors="coerce")
    return pd.Series(parsed, dtype="Int64")


def _normals(codes: np.ndarray, orientations: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group: the reference orientation (the most common rounded one, the first seen on a tie; NaN when the
    group has none) and its unit normal."""
    reference = np.full((groups, 6), np.nan)
    known = ~np.isnan(orientations).any(axis=1)
    if known.any():
        keys = np.column_stack([codes[known].astype(float), np.round(orientations[known], 4)])
        unique, first, counts = np.unique(keys, axis=0, return_index=True, return_counts=True)
        # per group: the most rows, then the one seen first
        order = np.lexsort((first, -counts, unique[:, 0]))
        group = unique[order, 0].astype(np.int64)
        best = order[np.r_[True, group[1:] != group[:-1]]]
        reference[unique[best, 0].astype(np.int64)] = unique[best, 1:]
    normal = np.cross(reference[:, :3], reference[:, 3:])
    norm = np.linalg.norm(normal, axis=1)
    scale = np.where(norm > 0, norm, 1.0)
    return reference, normal / scale[:, None]


def slice_positions(frame: pd.DataFrame, groups: Any = None) -> SliceGeometry:
    """The geometry of the instances of ``frame`` (rows: instances; columns ImagePositionPatient,
    ImageOrientationPatient, InstanceNumber, any missing), grouped by ``groups``: one hashable label per row, or
    a NumPy integer array of group codes (kept as they are); None: one group. See the module docstring."""
    length = len(frame)
    if groups is None:
        labels = np.zeros(length, dtype=np.int64)
    elif isinstance(groups, np.ndarray) and groups.dtype.kind in "iu":
        labels = groups.astype(np.int64)
    else:
        labels = pd.factorize(pd.Index(groups) if not isinstance(groups, pd.Index) else groups, sort=False)[0]
    count = int(labels.max()) + 1 if length else 0
    positions = numbers(frame.get("ImagePositionPatient"), 3, length)
    orientations = numbers(frame.get("ImageOrientationPatient"), 6, length)
    reference, normal = _normals(labels, orientations, count)
    row_normal = normal[labels]
    has_reference = ~np.isnan(reference[labels]).any(axis=1)
    position = (positions * row_normal).sum(axis=1)
    position[~has_reference | np.isnan(positions).any(axis=1)] = np.nan
    known = ~np.isnan(orientations).any(axis=1)
    close = np.abs(orientations - reference[labels]) <= 1e-3 + 1e-5 * np.abs(reference[labels])
    table = pd.DataFrame(
        {
            "group": labels,
            "InstanceNumber": integers(frame.get("InstanceNumber"), length).array,
            "position": position,
            "oblique": known & has_reference & ~close.all(axis=1),
            "oriented": known,
        },
        index=frame.index,
    )
    table = table.sort_values(["group", "position", "InstanceNumber"], kind="stable", na_position="last")
    unit = np.where(np.isnan(reference).any(axis=1)[:, None], np.nan, normal)
    return _flagged(table, count, pd.DataFrame(unit, columns=["x", "y", "z"]))


def _flagged(table: pd.DataFrame, count: int, normals: pd.DataFrame) -> SliceGeometry:
    """Spacing, median and flags of a table sorted by group then position."""
    group = table["group"].to_numpy()
    position = table["position"].to_numpy(dtype=float)
    placed = ~np.isnan(position)
    spacing = np.full(len(table), np.nan)
    if len(table) > 1:
        spacing[1:] = position[1:] - position[:-1]
        spacing[1:][group[1:] != group[:-1]] = np.nan
    step = placed & (np.abs(spacing) > DUPLICATE_TOLERANCE)
    medians = pd.Series(np.abs(spacing[step])).groupby(group[step]).median().reindex(range(count))
    median = medians.to_numpy(dtype=float)[group] if len(table) else np.zeros(0)
    duplicate_first = placed & (np.abs(spacing) <= DUPLICATE_TOLERANCE)
    duplicate_next = np.zeros(len(table), dtype=bool)
    duplicate_next[:-1] = duplicate_first[1:]
    with np.errstate(invalid="ignore"):
        flags = {
            "duplicate": duplicate_first | duplicate_next,
            "gap": placed & (spacing > GAP_FACTOR * median),
            "overlap": placed & (spacing > DUPLICATE_TOLERANCE) & (spacing < OVERLAP_FACTOR * median),
            "missing_position": ~placed,
        }
    table["spacing"] = spacing
    for name, values in flags.items():
        table[name] = values
    code = sum(table[name].to_numpy().astype(np.int64) << bit for bit, (name, _) in enumerate(FLAGS))
    table["flag"] = pd.Series(_LABELS[code] if len(table) else [], index=table.index, dtype=object)
    return SliceGeometry(table, medians, normals)


def _frame_of(data: Any) -> pd.DataFrame:
    """The instances frame of a Snapshot, or the DataFrame itself."""
    if isinstance(data, pd.DataFrame):
        return data
    if hasattr(data, "instances"):
        frame: pd.DataFrame = data.instances
        return frame
    raise TypeError(f"expected a Snapshot or a DataFrame, not {type(data).__name__}")


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value).strip()


def _series_rows(frame: pd.DataFrame, series_uid: str) -> pd.DataFrame:
    if "SeriesInstanceUID" in (frame.index.names or []):
        rows = frame[np.asarray(frame.index.get_level_values("SeriesInstanceUID") == series_uid)]
    elif "SeriesInstanceUID" in frame.columns:
        rows = frame[[_text(v) == series_uid for v in frame["SeriesInstanceUID"]]]
    else:
        raise KeyError("the frame has no SeriesInstanceUID index level or column")
    if rows.empty:
        raise KeyError(f"no instances of series {series_uid!r}")
    return rows


def geometry_table(data: Any, series_uid: str) -> pd.DataFrame:
    """The geometry of one series (every instance of it in ``data``, a Snapshot or an instance-level frame):
    index SOPInstanceUID, in position order; columns InstanceNumber, position, oblique, spacing, duplicate, gap,
    overlap, missing_position, flag; ``attrs["median_spacing"]`` and ``attrs["normal"]`` (None without an
    orientation). What ``curation.ui.plots.slice_geometry`` draws."""
    rows = _series_rows(_frame_of(data), series_uid)
    if "SOPInstanceUID" in (rows.index.names or []):
        sops = pd.Index(np.asarray(rows.index.get_level_values("SOPInstanceUID"), dtype=object))
    elif "SOPInstanceUID" in rows.columns:
        sops = pd.Index([_text(v) for v in rows["SOPInstanceUID"]], dtype=object)
    else:
        sops = pd.Index(np.arange(len(rows)), dtype=object)
    geometry = slice_positions(rows.set_axis(sops.rename("SOPInstanceUID"), axis=0))
    table = geometry.table.drop(columns=["group", "oriented"])
    normal = geometry.normals.iloc[0].to_numpy(dtype=float)
    table.attrs["median_spacing"] = float(geometry.median_spacing.iloc[0])
    table.attrs["normal"] = None if np.isnan(normal).any() else normal.tolist()
    return table
