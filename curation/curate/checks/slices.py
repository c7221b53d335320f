"""Slice geometry as findings: gaps, overlaps, duplicates, slices without a position or with another orientation,
and InstanceNumbers that do not follow the slices, from ``curation.frames.geometry`` (what
``curation.ui.plots.slice_geometry`` draws).

A stack is one (ImageSetID, SeriesInstanceUID) and, where the instances carry them, one value of each of
:data:`STACK_ATTRIBUTES`: a multi-echo, dynamic or diffusion series repeats its positions once per echo, time
point or b-value, and those repeats are not duplicate slices. Only single-frame instances (no NumberOfFrames, or
1) that are not localizers (ImageType without LOCALIZER) count, and a stack is checked when at least
:data:`MIN_SLICES` of them have both a position and an orientation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from curation.curate.checks.context import CheckContext, group_codes, value_counts
from curation.curate.checks.findings import Finding, counted
from curation.frames.geometry import DUPLICATE_TOLERANCE, SliceGeometry, integers, slice_positions

#: Attributes whose values split a series into stacks that repeat the same positions.
STACK_ATTRIBUTES = ("EchoNumbers", "TemporalPositionIdentifier", "DiffusionBValue")
MIN_SLICES = 3
_GEOMETRY_COLUMNS = ("ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber")
#: (flag column of the geometry table, the kind a finding names, severity, attribute)
KINDS = (
    ("gap", "gap", "warning", "ImagePositionPatient"),
    ("overlap", "overlap", "warning", "ImagePositionPatient"),
    ("duplicate", "duplicate", "warning", "ImagePositionPatient"),
    ("missing_position", "no position", "warning", "ImagePositionPatient"),
    ("oblique", "orientation", "info", "ImageOrientationPatient"),
)


@dataclass(frozen=True)
class Stacks:
    """The stacks of a snapshot: ``keys`` (each group code's text), ``orientation`` (every slice, its stack's
    normal from its most common orientation; ``oriented_groups``: those with at least ``MIN_SLICES`` slices with a
    position and an orientation), ``spacing`` (the same without the slices of another orientation; ``groups``:
    those still with ``MIN_SLICES`` such slices), the slices' ImageOrientationPatient cells, and ``labels``, the
    index label of each instance: the tables are indexed by position in ``instances``."""

    keys: list[str]
    orientation: SliceGeometry
    oriented_groups: np.ndarray
    spacing: SliceGeometry
    groups: np.ndarray
    orientations: pd.Series
    labels: Callable[[np.ndarray], tuple[Any, ...]]


def _text(column: pd.Series) -> pd.Series:
    return column.astype(object).where(column.notna(), "").astype(str).str.strip()


def _slices(instances: pd.DataFrame) -> np.ndarray:
    """Single-frame instances that are not localizers."""
    keep = np.ones(len(instances), dtype=bool)
    if "NumberOfFrames" in instances.columns:
        frames = integers(instances["NumberOfFrames"], len(instances))
        keep &= (frames.isna() | (frames == 1)).fillna(True).to_numpy(dtype=bool)
    if "ImageType" in instances.columns:
        kinds = _text(instances["ImageType"])
        keep &= ~kinds.str.contains("LOCALIZER", regex=False).to_numpy(dtype=bool)
    return keep


def _eligible(geometry: SliceGeometry, groups: int) -> np.ndarray:
    """The group codes with at least ``MIN_SLICES`` slices that have a position and an orientation."""
    table = geometry.table
    usable = (~table["missing_position"] & table["oriented"]).to_numpy()
    return np.flatnonzero(np.bincount(table["group"].to_numpy()[usable], minlength=groups) >= MIN_SLICES)


def _stack_keys(labels: list[tuple[Any, ...]], names: list[str]) -> list[str]:
    keys = []
    for label in labels:
        extra = [f"{name}={value}" for name, value in zip(names[2:], label[2:], strict=True) if value]
        keys.append(f"{label[0]}/{label[1]}" + (f" [{', '.join(extra)}]" if extra else ""))
    return keys


def stacks(context: CheckContext) -> Stacks:
    """The stacks of the snapshot and their geometry (computed once per context)."""
    if "stacks" in context.memo:
        cached: Stacks = context.memo["stacks"]
        return cached
    instances = context.frame("instances")
    keep = _slices(instances)
    columns = [c for c in (*_GEOMETRY_COLUMNS, *STACK_ATTRIBUTES) if c in instances.columns]
    # rows by position in ``instances`` (a subset of an Arrow-backed MultiIndex converts whole levels when
    # iterated: labels come from ``context.labels`` instead)
    positions = np.flatnonzero(keep)
    rows = instances[columns].iloc[positions].set_axis(pd.RangeIndex(len(instances))[positions], axis=0)
    index = instances.index[positions]
    parts: dict[str, Any] = {
        "ImageSetID": index.get_level_values("ImageSetID"),
        "SeriesInstanceUID": index.get_level_values("SeriesInstanceUID"),
    }
    for name in STACK_ATTRIBUTES:
        if name in rows.columns:
            parts[name] = _text(rows[name]).to_numpy()
    columns_of = [np.asarray(part, dtype=object) for part in parts.values()]
    codes, first = group_codes(columns_of)
    labels = [tuple(column[r] for column in columns_of) for r in first]
    oriented = slice_positions(rows, codes)
    straight = ~oriented.table["oblique"].reindex(rows.index).to_numpy(dtype=bool)
    spaced = slice_positions(rows[straight], codes[straight])
    orientation = rows.get("ImageOrientationPatient", pd.Series([None] * len(rows), index=rows.index, dtype=object))
    result = Stacks(
        _stack_keys(labels, list(parts)),
        oriented,
        _eligible(oriented, len(labels)),
        spaced,
        _eligible(spaced, len(labels)),
        orientation,
        lambda positions: context.labels("instances", positions),
    )
    context.memo["stacks"] = result
    return result


@dataclass(frozen=True)
class _Flagged:
    """The rows of one geometry table (stacks in ``groups`` only), as arrays: ``group`` codes (sorted),
    ``positions`` in ``instances``, the position, spacing and InstanceNumber (NaN when absent) of each, and
    each group's first row (``starts``, with the end appended)."""

    table: pd.DataFrame
    group: np.ndarray
    positions: np.ndarray
    position: np.ndarray
    spacing: np.ndarray
    number: np.ndarray
    codes: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, geometry: SliceGeometry, groups: np.ndarray) -> _Flagged:
        table = geometry.table[geometry.table["group"].isin(groups)]
        group = table["group"].to_numpy(dtype=np.int64)
        codes, starts = np.unique(group, return_index=True)
        return cls(
            table,
            group,
            table.index.to_numpy(dtype=np.int64),
            table["position"].to_numpy(dtype=float),
            table["spacing"].to_numpy(dtype=float, na_value=np.nan),
            table["InstanceNumber"].to_numpy(dtype=float, na_value=np.nan),
            codes,
            np.append(starts, len(group)),
        )


def _kind_finding(found: Stacks, rows: _Flagged, at: int, hit: np.ndarray, kind: tuple[str, ...]) -> Finding:
    """The finding of one kind in the stack ``rows.codes[at]``; ``hit`` the flagged positions of its rows."""
    flag, name, severity, attribute = kind
    group = int(rows.codes[at])
    size = int(rows.starts[at + 1] - rows.starts[at])
    median = float(found.spacing.median_spacing.iloc[group])
    if flag in ("gap", "overlap"):
        values = value_counts(np.round(rows.spacing[hit], 3).tolist())
    elif flag == "duplicate":
        values = value_counts(np.round(rows.position[hit], 3).tolist())
    elif flag == "oblique":
        values = value_counts(found.orientations.reindex(rows.positions[hit]).to_numpy(dtype=object))
    else:
        values = ((None, len(hit)),)
    labels = found.labels(rows.positions[hit])
    numbers = [int(n) for n in rows.number[hit] if not np.isnan(n)]
    return Finding(
        check="slice_geometry",
        severity=severity,
        level="Instance",
        key=found.keys[group],
        attribute=attribute,
        image_sets=(str(labels[0][0]),),
        found=values,
        rows=labels,
        discriminator=name,
        detail=(
            f"{name}: {len(hit)} of the {size} slices of {found.keys[group]} ("
            + (f"median spacing {median:.4g} mm; " if flag != "oblique" else "")
            + counted(values)
            + (f"; InstanceNumber {', '.join(map(str, numbers[:8]))}" if numbers else "")
            + ")"
        ),
    )


def slice_geometry(context: CheckContext) -> list[Finding]:
    """**slice_geometry** (warning; orientation: info). Per stack (module docstring) with at least 3 slices that
    have ImagePositionPatient and ImageOrientationPatient, the flags of ``curation.frames.geometry``: positions
    on the normal of the most common orientation, in position order; with m the median step, a ``gap`` when a
    step is over 1.5 m, an ``overlap`` when 0 < step < 0.5 m, a ``duplicate`` for slices at one position (both
    listed), ``no position`` for slices without a usable ImagePositionPatient, ``orientation`` for slices whose
    orientation differs from the stack's. One finding per kind and stack; ``rows`` are the slices flagged
    (for a gap, the slice after it); ``values`` the steps, positions or orientations with counts.

    Fix: None: a missing slice cannot be made by editing metadata, and which duplicate to drop (a removal with
    ``diff(..., rows="all")``) is the curator's call.
    """
    found = stacks(context)
    findings: list[Finding] = []
    for geometry, groups, kinds in (
        (found.spacing, found.groups, KINDS[:-1]),
        (found.orientation, found.oriented_groups, KINDS[-1:]),
    ):
        rows = _Flagged.of(geometry, groups)
        for kind in kinds:
            flagged = np.flatnonzero(rows.table[kind[0]].to_numpy(dtype=bool))
            at = np.searchsorted(rows.starts, flagged, side="right") - 1
            for number, hit in zip(*_split(at, flagged), strict=True):
                findings.append(_kind_finding(found, rows, int(number), hit, kind))
    findings.sort(key=lambda f: (f.key, [k[1] for k in KINDS].index(f.discriminator)))
    return findings


def _split(at: np.ndarray, flagged: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(each group number, its flagged rows) of flagged rows sorted by group."""
    numbers, first = np.unique(at, return_index=True)
    return numbers, np.split(flagged, first[1:]) if len(flagged) else []


def _renumbered(numbers: np.ndarray, missing: np.ndarray, direction: int) -> tuple[str, ...] | None:
    """New InstanceNumbers for a stack's slices in position order (rising when ``direction`` > 0), from the
    stack's lowest; None when a slice has no position."""
    if missing.any():
        return None
    known = numbers[~np.isnan(numbers)]
    start = int(known.min()) if len(known) else 1
    sequence = range(start, start + len(numbers))
    return tuple(str(n) for n in (sequence if direction > 0 else reversed(sequence)))


def _order_breaks(rows: _Flagged, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(direction per group code, mask of the rows whose InstanceNumber breaks it), every stack at once: steps
    between slices at one position are ignored, the direction is the one most steps take, and a number
    repeated at another position breaks it too (a repeat at the same position is slice_geometry's duplicate)."""
    numbered = np.flatnonzero(~np.isnan(rows.number) & ~missing)
    group, numbers = rows.group[numbered], rows.number[numbered]
    first = np.r_[True, group[1:] != group[:-1]] if len(group) else np.zeros(0, dtype=bool)
    steps = np.sign(np.diff(numbers, prepend=numbers[:1]))
    steps[first] = 0
    moved = np.abs(np.nan_to_num(rows.spacing[numbered])) > DUPLICATE_TOLERANCE
    size = int(rows.group.max()) + 1 if len(rows.group) else 0
    up = np.bincount(group[moved & (steps > 0)], minlength=size)
    down = np.bincount(group[moved & (steps < 0)], minlength=size)
    direction = np.where(up >= down, 1, -1)
    breaks = moved & (steps != direction[group])
    at = np.round(rows.position[numbered] / DUPLICATE_TOLERANCE)
    spot = pd.DataFrame({"group": group, "number": numbers, "at": at})
    repeated = spot.duplicated(["group", "number"], keep=False) & ~spot.duplicated(keep=False)
    mask = np.zeros(len(rows.group), dtype=bool)
    mask[numbered] = breaks | repeated.to_numpy(dtype=bool)
    return direction, mask


def instance_number(context: CheckContext) -> list[Finding]:
    """**instance_number** (warning). In a stack checked by ``slice_geometry``, InstanceNumbers that repeat at
    another position, or that do not rise (or fall) with the position along the normal (steps between slices
    at one position are ignored; the direction is the one most steps take). ``values`` are the offending
    InstanceNumbers.

    Fix: ``renumber`` when every slice has a position: ``suggested`` holds new InstanceNumbers for ``rows``
    (every slice, in position order), counting from the stack's lowest in the direction most steps take.
    InstanceNumber is an Instance-level, single-valued attribute, so primary image sets accept it.
    """
    found = stacks(context)
    rows = _Flagged.of(found.spacing, found.groups)
    missing = rows.table["missing_position"].to_numpy(dtype=bool)
    direction, offending = _order_breaks(rows, missing)
    findings = []
    for at in np.unique(np.searchsorted(rows.starts, np.flatnonzero(offending), side="right") - 1):
        begin, end = int(rows.starts[at]), int(rows.starts[at + 1])
        group = int(rows.codes[at])
        values = value_counts(int(n) for n in rows.number[begin:end][offending[begin:end]])
        labels = found.labels(rows.positions[begin:end])
        renumbered = _renumbered(rows.number[begin:end], missing[begin:end], int(direction[group]))
        findings.append(
            Finding(
                check="instance_number",
                severity="warning",
                level="Instance",
                key=found.keys[group],
                attribute="InstanceNumber",
                image_sets=(str(labels[0][0]),),
                found=values,
                rows=labels,
                fix="renumber" if renumbered else None,
                suggested=renumbered,
                detail=(
                    f"InstanceNumber of {found.keys[group]} does not follow the slice positions "
                    f"({'rising' if direction[group] > 0 else 'falling'}): {counted(values)}"
                    + ("; renumber in position order" if renumbered else "")
                ),
            )
        )
    return findings
