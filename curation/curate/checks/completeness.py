"""Attributes that some instances of a series carry and others lack (absent), or hold empty.

A series here is one (ImageSetID, SeriesInstanceUID): the instances of one image set, since a copy of a
series in another image set is another set of documents. Counting is vectorised per column (``np.bincount`` over
the series codes); only the columns and series with a finding are looked at value by value.
"""

from __future__ import annotations

from collections.abc import Iterator
from operator import is_

import numpy as np
import pandas as pd

from curation.curate.checks.context import CheckContext, plain, value_counts
from curation.curate.checks.findings import Finding, counted
from curation.model.missing import NULL


def _series_codes(context: CheckContext) -> tuple[np.ndarray, pd.Index]:
    index = context.frame("instances").index
    keys = index.droplevel("SOPInstanceUID") if isinstance(index, pd.MultiIndex) else index
    codes, labels = pd.factorize(keys)
    return np.asarray(codes), pd.Index(labels)


def _empty(column: pd.Series) -> np.ndarray:
    """Present-empty cells: ``""`` in ``str`` columns, ``NULL`` in object ones."""
    if isinstance(column.dtype, pd.StringDtype):
        return (column == "").fillna(False).astype(bool).to_numpy()
    if column.dtype == object:
        return np.fromiter(map(is_, column.to_numpy(dtype=object), [NULL] * len(column)), bool, len(column))
    return np.zeros(len(column), dtype=bool)


def _partial(codes: np.ndarray, mask: np.ndarray, within: np.ndarray, groups: int) -> np.ndarray:
    """The groups where ``mask`` holds for some but not all of the rows counted by ``within``."""
    totals = np.bincount(codes[within], minlength=groups)
    hits = np.bincount(codes[within & mask], minlength=groups)
    return np.flatnonzero((hits > 0) & (hits < totals))


def _partial_columns(context: CheckContext, empty: bool) -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
    """(column, series code, rows lacking it, rows having it) for every column a series has in some rows only:
    absent against present, or with ``empty``, empty against a value (among the present)."""
    frame = context.frame("instances")
    codes, labels = _series_codes(context)
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
        for group in _partial(codes, lacking, within, len(labels)):
            rows = (codes == group) & within
            yield column, int(group), np.flatnonzero(rows & lacking), np.flatnonzero(rows & ~lacking)


def _in_series(context: CheckContext, check: str) -> list[Finding]:
    labels_of = context.labels("instances")
    _, labels = _series_codes(context)
    image_sets = context.image_set_of("instances")
    findings = []
    for column, group, lacking, having in _partial_columns(context, empty=check == "empty_in_series"):
        values = context.text_values("instances", column)
        shown = value_counts(values.iloc[having].to_numpy(dtype=object))
        others = value_counts(values.iloc[lacking].to_numpy(dtype=object))
        agree = len(shown) == 1
        total = len(lacking) + len(having)
        label = labels[group]
        key = "/".join(map(str, label)) if isinstance(label, tuple) else str(label)
        what = "lack" if check == "missing_in_series" else "hold empty"
        findings.append(Finding(
            check=check, severity="warning" if 2 * len(having) >= total else "info", level="Instance", key=key,
            attribute=column, image_sets=tuple(sorted(set(image_sets[lacking]))),
            found=tuple(sorted(shown + others, key=lambda item: -item[1])), rows=tuple(labels_of[lacking]),
            fix="fill" if agree else None, suggested=plain(shown[0][0]) if agree else None,
            detail=(f"{len(lacking)} of the {total} instances of series {key} {what} {column}, which the other "
                    f"{len(having)} have ({counted(shown)})" + ("; fill with it" if agree else "")),
        ))
    return findings


def missing_in_series(context: CheckContext) -> list[Finding]:
    """**missing_in_series** (warning when at least half of the series' instances have the attribute, else
    info). Per series (ImageSetID, SeriesInstanceUID) of ``instances``: an attribute column present (a value or
    empty) in k of its n instances, 0 < k < n. ``rows`` are the n - k instances without it.

    Fix: ``fill`` when the k instances agree on one value (written to ``rows``), else None (for example
    ImagePositionPatient differs per instance by nature).
    """
    return _in_series(context, "missing_in_series")


def empty_in_series(context: CheckContext) -> list[Finding]:
    """**empty_in_series** (warning when at least half of the instances that have the attribute hold a value,
    else info): among the instances of a series that have an attribute, some hold it empty (``""``/NULL) and
    others hold a value. ``rows`` are the empty ones. Fix: ``fill`` when the values agree, else None.
    """
    return _in_series(context, "empty_in_series")
