"""diff's fast path for the common edit: a new text or number in a typed column of a keyword attribute.

``Coercer.edit`` handles one cell in every case; most edited cells are plain: a non-empty ``str`` in a ``str``
column (a single-valued text VR: no coercion; a multi-valued one: split on the backslash), an integer in an
``Int64`` column, a float in a ``Float64`` one. ``bulk_edits`` takes those cells of one column in one pass
(VR, validation cache, labels and addresses looked up once per column) and returns the positions it left to
the per-cell path (missing cells, ``REMOVE``, ``""``, pandas' missing-value text, anything else). The result
is the same as ``Coercer.edit`` per cell; ``tests/curate/test_diff.py`` checks it against a naive loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curation.curate.changeset import Change, ChangeOp, Problem
from curation.curate.coercer import MISSING_TEXTS, Coercer
from curation.curate.colmap import Spec
from curation.curate.diffrules import level_problem, short
from curation.curate.targets import Targets
from curation.frames.cells import FLOAT64, INT64, JOINED, STR, STR_BLANK, decode
from curation.model import dictionary as dicom
from curation.model.missing import NULL, is_absent
from curation.model.rules import UID_KEYWORDS
from curation.model.vr import FLOAT_VRS, INT_VRS, TEXT_VRS

__all__ = ["bulk_edits", "takes_bulk"]

_ABSENT = object()
_FAMILY = {STR: TEXT_VRS, STR_BLANK: TEXT_VRS, JOINED: TEXT_VRS, INT64: INT_VRS, FLOAT64: FLOAT_VRS}


def takes_bulk(spec: Spec, old_codec: str, new_codec: str, exact: bool) -> bool:
    """True when a column's plain cells can take the fast path."""
    if exact or spec.warning is not None or spec.key in UID_KEYWORDS or dicom.is_tag_key(spec.key):
        return False
    if old_codec != new_codec or old_codec not in _FAMILY:
        return False
    vr, vm = dicom.vr_vm_of(spec.key)
    multi = bool(vm) and vm != "1"
    return vr in _FAMILY[old_codec] and multi == (old_codec == JOINED)


def _plain(value: Any, codec: str) -> Any:
    """The JSON value of a plain new cell, or ``_ABSENT`` when the cell needs the per-cell path."""
    t = type(value)
    if codec in (STR, STR_BLANK, JOINED):
        if t is not str or not value or value in MISSING_TEXTS or value[:1] == "\x00":
            return _ABSENT
        return value.split("\\") if codec == JOINED else value
    if isinstance(value, bool) or is_absent(value):
        return _ABSENT
    if codec == INT64 and isinstance(value, int | np.integer):
        return int(value)
    if codec == FLOAT64 and isinstance(value, float | np.floating):
        return float(value)
    return _ABSENT


def bulk_edits(
    targets: Targets,
    coercer: Coercer,
    kind: str,
    spec: Spec,
    column: Any,
    opos: np.ndarray,
    olds: list,
    news: list,
    codec: str,
    changes: list[Change],
    problems: list[Problem],
) -> list[int]:
    """Record the plain cells' changes (and value problems); return the indices left for ``Coercer.edit``."""
    vr, vm = dicom.vr_vm_of(spec.key)
    rest: list[int] = []
    taken: list[tuple[int, Any, Any]] = []
    for i, (old, value) in enumerate(zip(olds, news, strict=True)):
        new = _plain(value, codec)
        if new is _ABSENT:
            rest.append(i)
            continue
        before = _ABSENT if is_absent(old) else decode(old, codec)
        if before is not _ABSENT and before == new:
            continue
        taken.append((i, before, new))
    if not taken:
        return rest
    ids = targets.ids("instances" if kind == "wide" else kind)
    positions = opos[[i for i, _, _ in taken]]
    picked = [level[positions] for level in ids]
    labels = picked[0].tolist() if len(picked) == 1 else list(zip(*picked, strict=True))
    nones = [None] * len(taken)
    series = picked[1].tolist() if len(picked) > 1 and spec.level in ("Series", "Instance") else nones
    sops = picked[2].tolist() if len(picked) > 2 and spec.level == "Instance" else nones
    refused: dict[str, str | None] = {}
    reason: str | None
    for (_, before, new), image_set, series_uid, sop, label in zip(
        taken, picked[0].tolist(), series, sops, labels, strict=True
    ):
        if before is _ABSENT and coercer.validate:
            if image_set not in refused:
                refused[image_set] = level_problem(targets.holding, image_set, spec.key, spec.level)
            reason = refused[image_set]
            if reason:
                problems.append(Problem(image_set, label, column, spec.key, reason))
                continue
        problem = coercer.check_value(new, vr, vm) if coercer.validate else None
        if problem:
            problems.append(
                Problem(
                    image_set,
                    label,
                    column,
                    spec.key,
                    f"value {short(new)} does not fit {spec.key} (VR {vr}): {problem}",
                )
            )
        op = ChangeOp.ADD if before is _ABSENT else ChangeOp.UPDATE
        old = None if before is _ABSENT else (NULL if before is None else before)
        changes.append(Change(image_set, spec.level, series_uid, sop, spec.key, vr, old, new, op, label, column))
    return rest
