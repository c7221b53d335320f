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

import numpy as np
import pandas as pd

from curation.curate.checks.context import CheckContext, group_codes, plain, value_counts
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


def _partial_columns(context: CheckContext, empty: bool) -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
    """(column, group code, rows lacking it, rows having it) for every column a group has in most rows only:
    absent against present, or with ``empty``, empty against a value (among the present)."""
    frame = context.frame("instances")
    codes, keys = _kinds(context)
    for column in context.dicom_columns("instances"):
        values = frame[column]
        present = values.notna().to_numpy()
        if empty:
            lacking = _empty(values)
            within = present
        else:
            lacking, within = ~present, np.ones(len(frame), dtype=bool)
        if not lacking.any():
            continue
        for group in _partial(codes, lacking, within, len(keys)):
            rows = (codes == group) & within
            yield column, int(group), np.flatnonzero(rows & lacking), np.flatnonzero(rows & ~lacking)


def _in_series(context: CheckContext, check: str) -> list[Finding]:
    labels_of = context.labels("instances")
    _, keys = _kinds(context)
    image_sets = context.image_set_of("instances")
    findings = []
    for column, group, lacking, having in _partial_columns(context, empty=check == "empty_in_series"):
        values = context.text_values("instances", column)
        shown = value_counts(values.iloc[having])
        others = value_counts(values.iloc[lacking])
        agree = len(shown) == 1 and column not in PROVENANCE
        total = len(lacking) + len(having)
        key, kind = keys[group]
        what = "lack" if check == "missing_in_series" else "hold empty"
        findings.append(
            Finding(
                check=check,
                severity="warning",
                level="Instance",
                key=key,
                attribute=column,
                image_sets=tuple(sorted(set(image_sets[lacking]))),
                found=tuple(sorted(shown + others, key=lambda item: -item[1])),
                rows=tuple(labels_of[lacking]),
                fix="fill" if agree else None,
                suggested=plain(shown[0][0]) if agree else None,
                detail=(
                    f"{len(lacking)} of the {total} instances of series {key} {what} {column}, which the other "
                    f"{len(having)} have ({counted(shown)})" + ("; fill with it" if agree else "")
                ),
                discriminator=kind,
            )
        )
    return findings


def missing_in_series(context: CheckContext) -> list[Finding]:
    """**missing_in_series** (warning). Per group of ``instances`` (one image set's series, one SOP class,
    single- or multi-frame: module docstring): an attribute column present (a value or empty) in k of its n
    instances with k >= 2 and k > n / 2, so most have it and the others lack it. ``rows`` are the n - k
    instances without it. Attributes only a minority carries (an extra, not a gap) give no finding.

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
