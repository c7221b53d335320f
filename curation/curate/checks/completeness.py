"""Attributes that most instances of a series carry and a few lack (absent), or hold empty.

A group here is one (ImageSetID, SeriesInstanceUID, SOPClassUID, single- or multi-frame): the instances of one
image set (a copy of a series in another image set is another set of documents), of one kind, since an
ultrasound series that mixes cine loops and still images legitimately carries the multi-frame attributes
(FrameTimeVector, StartTrim ...) in the loops only. Counting is vectorised per column (``np.bincount`` over the
group codes); only the columns and groups with a finding are looked at value by value.
"""

from __future__ import annotations

from collections.abc import Iterator
from operator import is_
from typing import Any

import numpy as np
import pandas as pd

from curation.curate.checks.context import CheckContext, group_codes, plain, tally
from curation.curate.checks.duplicates import file_meta
from curation.curate.checks.findings import Finding, counted
from curation.frames.geometry import integers
from curation.model.missing import NULL

#: Attributes that say how each instance itself was made (PS3.3 C.7.6.1 General Image: lossy compression,
#: derivation, its sources): a finding, but never filled from the other instances, which would state
#: something false about the instance that lacks them.
PROVENANCE = frozenset(
    {
        "ImageType",
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
        "DerivationDescription",
        "DerivationCodeSequence",
        "SourceImageSequence",
        "ReferencedImageSequence",
        "BurnedInAnnotation",
        "RecognizableVisualFeatures",
        "ContentQualification",
    }
)
#: A finding needs at least this many instances of the group holding the attribute ...
MIN_HOLDERS = 2
#: ... and strictly more than this share of the group (so "most instances have it, a few lack it").
MAJORITY = 0.5


def _kinds(context: CheckContext) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Per instance row its group code, and each group's key (``ImageSetID/SeriesInstanceUID``) with its kind
    (SOP class and frames, which enters the finding's id); computed once."""
    if "kinds" not in context.memo:
        frame = context.frame("instances")
        index = frame.index
        image_sets = context.image_set_of("instances")
        series = np.asarray(index.get_level_values("SeriesInstanceUID"), dtype=object)
        classes = frame["SOPClassUID"] if "SOPClassUID" in frame.columns else pd.Series("", index=index)
        sop_classes = classes.astype(object).where(classes.notna(), "").to_numpy(dtype=object)
        frames = integers(frame["NumberOfFrames"], len(frame)) if "NumberOfFrames" in frame.columns else None
        multi = np.zeros(len(frame), dtype=bool) if frames is None else (frames > 1).fillna(False).to_numpy(bool)
        codes, first = group_codes([image_sets, series, sop_classes, multi])
        context.memo["kinds"] = (
            codes,
            [
                (f"{image_sets[r]}/{series[r]}", f"{sop_classes[r]}:{'multi' if multi[r] else 'single'}-frame")
                for r in first
            ],
        )
    cached: tuple[np.ndarray, list[tuple[str, str]]] = context.memo["kinds"]
    return cached


def _empty(column: pd.Series) -> np.ndarray:
    """Present-empty cells: ``""`` in ``str`` columns, ``NULL`` in object ones."""
    if isinstance(column.dtype, pd.StringDtype):
        return (column == "").fillna(False).astype(bool).to_numpy()
    if column.dtype == object:
        return np.fromiter(map(is_, column.to_numpy(dtype=object), [NULL] * len(column)), bool, len(column))
    return np.zeros(len(column), dtype=bool)


def _partial(codes: np.ndarray, lacking: np.ndarray, within: np.ndarray, groups: int) -> np.ndarray:
    """The groups where some rows counted by ``within`` lack the attribute while most (at least
    ``MIN_HOLDERS``, over ``MAJORITY`` of them) have it."""
    totals = np.bincount(codes[within], minlength=groups)
    missing = np.bincount(codes[within & lacking], minlength=groups)
    having = totals - missing
    return np.flatnonzero((missing > 0) & (having >= MIN_HOLDERS) & (having > MAJORITY * totals))


def _partial_columns(context: CheckContext, empty: bool) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(column, the groups with a finding, rows lacking it, rows counted) for every column that some groups have
    in most rows only: absent against present, or with ``empty``, empty against a value (among the present)."""
    frame = context.frame("instances")
    codes, keys = _kinds(context)
    for column in context.dicom_columns("instances"):
        if file_meta(column):
            continue
        values = frame[column]
        present = values.notna().to_numpy()
        if empty:
            lacking = _empty(values)
            within = present
        else:
            lacking, within = ~present, np.ones(len(frame), dtype=bool)
        if not lacking.any():
            continue
        groups = _partial(codes, lacking, within, len(keys))
        if len(groups):
            yield column, groups, lacking, within


def _counted(values: pd.Series, group_of: np.ndarray, lacks: np.ndarray) -> dict[tuple[int, bool], list[Any]]:
    """Per (group, lacking) the (value, count) pairs of ``values`` (rows already picked), in one pandas count."""
    table = pd.DataFrame({"group": group_of, "lacks": lacks, "value": values.reset_index(drop=True)})
    out: dict[tuple[int, bool], list[Any]] = {}
    try:
        counts = table.value_counts(dropna=False, sort=False)
        for (group, side, value), count in zip(counts.index, counts.to_numpy().tolist(), strict=True):
            out.setdefault((int(group), bool(side)), []).append((value, count))
    except TypeError:  # unhashable cells (a user's frame)
        for group, side, value in table.itertuples(index=False):
            out.setdefault((int(group), bool(side)), []).append((value, 1))
    return out


def _in_series(context: CheckContext, check: str) -> list[Finding]:
    codes, keys = _kinds(context)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(keys) + 1))
    image_sets = context.image_set_of("instances")
    findings = []
    for column, groups, lacking, within in _partial_columns(context, empty=check == "empty_in_series"):
        members = [order[starts[g] : starts[g + 1]] for g in groups]
        rows = np.concatenate([m[within[m]] for m in members])
        counted = _counted(context.text_values("instances", column).iloc[rows], codes[rows], lacking[rows])
        for group, member in zip(groups, members, strict=True):
            lacks = member[lacking[member] & within[member]]
            shown, others = tally(counted.get((int(group), False), [])), tally(counted.get((int(group), True), []))
            findings.append(
                _finding(
                    check, column, keys[group], shown, others, context.labels("instances", lacks), image_sets[lacks]
                )
            )
    return findings


def _finding(
    check: str,
    column: str,
    key: tuple[str, str],
    shown: tuple[tuple[Any, int], ...],
    others: tuple[tuple[Any, int], ...],
    rows: tuple[Any, ...],
    image_sets: np.ndarray,
) -> Finding:
    """One missing/empty_in_series finding: ``shown`` the values the other instances hold, ``rows`` those lacking."""
    agree = len(shown) == 1 and column not in PROVENANCE
    having = sum(count for _, count in shown)
    total = len(rows) + having
    what = "lack" if check == "missing_in_series" else "hold empty"
    return Finding(
        check=check,
        severity="warning",
        level="Instance",
        key=key[0],
        attribute=column,
        image_sets=tuple(sorted(set(image_sets))),
        found=tuple(sorted(shown + others, key=lambda item: -item[1])),
        rows=rows,
        fix="fill" if agree else None,
        suggested=plain(shown[0][0]) if agree else None,
        detail=(
            f"{len(rows)} of the {total} instances of series {key[0]} {what} {column}, which the other "
            f"{having} have ({counted(shown)})" + ("; fill with it" if agree else "")
        ),
        discriminator=key[1],
    )


def missing_in_series(context: CheckContext) -> list[Finding]:
    """**missing_in_series** (warning). Per group of ``instances`` (one image set's series, one SOP class,
    single- or multi-frame: module docstring): an attribute column present (a value or empty) in k of its n
    instances with k >= 2 and k > n / 2, so most have it and the others lack it. ``rows`` are the n - k
    instances without it. The File Meta Information (group 0002) is left out: it describes how each file was
    written (PS3.10 7.1), and the instances of one series may come from different writers. Attributes only a
    minority carries (an extra, not a gap) give no finding.

    Fix: ``fill`` when the k instances agree on one value (written to ``rows``), else None (for example
    WindowCenter differs per instance by nature); never for the attributes of :data:`PROVENANCE`.
    """
    return _in_series(context, "missing_in_series")


def empty_in_series(context: CheckContext) -> list[Finding]:
    """**empty_in_series** (warning): among the instances of a group that have an attribute, some hold it empty
    (``""``/NULL) while most (at least 2, over half) hold a value. ``rows`` are the empty ones. Fix: ``fill``
    when the values agree, else None.
    """
    return _in_series(context, "empty_in_series")
