"""diff's fast path for the common edit: a new text or number in a typed column of a keyword attribute.

``Coercer.edit`` handles one cell in every case; most edited cells are plain: a non-empty ``str`` in a ``str``
column (a single-valued text VR: no coercion; a multi-valued one: split on the backslash), an integer in an
``Int64`` column, a float in a ``Float64`` one. ``bulk_edits`` takes those cells of one column in one pass
(VR, validation cache, labels and addresses looked up once per column) and returns the positions it left to
the per-cell path (missing cells, ``REMOVE``, ``""``, pandas' missing-value text, anything else). The result
is the same as ``Coercer.edit`` per cell; ``tests/curate/test_diff.py`` checks it against a naive loop.

``typed_block`` is the same fast path for a column whose edited and snapshot cells are both typed arrays of the
column's dtype (Arrow ``str``, ``Int64``, ``Float64``): the plain cells are told apart with Arrow/NumPy
operations on the whole column, each distinct new value is validated once, and the changes come back as one
``ChangeBlock`` (arrays) instead of one object per change; ``tests/curate/test_bulk_block.py`` checks it
against the per-cell paths.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from curation.curate.changeset import Change, ChangeBlock, ChangeOp, Problem
from curation.curate.coercer import MISSING_TEXTS, Coercer
from curation.curate.colmap import Spec
from curation.curate.diffrules import level_problem, short
from curation.curate.targets import Targets
from curation.frames.cells import FLOAT64, INT64, JOINED, STR, STR_BLANK, decode
from curation.model import dictionary as dicom
from curation.model.missing import NULL, is_absent
from curation.model.rules import UID_KEYWORDS
from curation.model.vr import FLOAT_VRS, INT_VRS, TEXT_VRS

__all__ = ["bulk_edits", "takes_block", "takes_bulk", "typed_block"]

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


_MISSING_SET = pa.array(sorted(MISSING_TEXTS))


def takes_block(codec: str, orig: Any, new: Any) -> bool:
    """True when ``typed_block`` can take a column: both sides typed arrays of the dtype its codec holds."""
    if not isinstance(orig, pd.api.extensions.ExtensionArray) or not isinstance(new, pd.api.extensions.ExtensionArray):
        return False
    if orig.dtype != new.dtype:
        return False
    if codec in (STR, STR_BLANK, JOINED):
        return isinstance(orig.dtype, pd.StringDtype) and orig.dtype.storage == "pyarrow"
    if codec == INT64:
        return isinstance(orig.dtype, pd.Int64Dtype)
    return codec == FLOAT64 and isinstance(orig.dtype, pd.Float64Dtype)


def _plain_mask(new: Any, codec: str) -> np.ndarray:
    """Which new cells are plain (``_plain`` would not return ``_ABSENT``), for a whole typed array."""
    present = ~np.asarray(new.isna(), dtype=bool)
    if codec not in (STR, STR_BLANK, JOINED):
        return present
    text = pa.array(new)
    odd = pc.or_kleene(pc.is_in(text, value_set=_MISSING_SET), pc.starts_with(text, "\x00"))
    nonempty = pc.greater(pc.utf8_length(text), 0)
    plain = pc.and_kleene(nonempty, pc.invert(odd))
    return present & np.asarray(plain.to_numpy(zero_copy_only=False), dtype=object).astype(bool)


def _held(cells: np.ndarray, absent: np.ndarray, codec: str) -> np.ndarray:
    """Present cells as the ChangeSet holds them (``decode``; NULL for a JSON null), absent ones as None."""
    out = np.empty(len(cells), dtype=object)
    if codec in (STR, STR_BLANK, JOINED):
        blank = "" if codec == STR_BLANK else NULL
        split = codec == JOINED
        out[:] = [
            None if gone else (v.split("\\") if split else v) if v else blank
            for v, gone in zip(cells.tolist(), absent.tolist(), strict=True)
        ]
    else:
        out[:] = [None if gone else v for v, gone in zip(cells.tolist(), absent.tolist(), strict=True)]
    return out


def _value_problems(coercer: Coercer, news: np.ndarray, codec: str, vr: str | None, vm: str | None) -> list:
    """``coercer.check_value`` of each new cell, each distinct value checked once."""
    if not coercer.validate:
        return [None] * len(news)
    codes, distinct = pd.factorize(news, use_na_sentinel=False)
    split = codec == JOINED
    found = [coercer.check_value(v.split("\\") if split else v, vr, vm) for v in distinct.tolist()]
    return list(map(found.__getitem__, codes.tolist()))


def typed_block(
    targets: Targets,
    coercer: Coercer,
    kind: str,
    spec: Spec,
    column: Any,
    opos: np.ndarray,
    orig: Any,
    new: Any,
    codec: str,
    problems: list[Problem],
) -> tuple[np.ndarray, ChangeBlock | None]:
    """``bulk_edits`` for typed arrays (``takes_block``): the changes of the plain cells as one block, and the
    indices (into ``orig``/``new``, the changed cells of the column) left for ``Coercer.edit``."""
    plain = _plain_mask(new, codec)
    rest = np.flatnonzero(~plain)
    taken = np.flatnonzero(plain)
    if not len(taken):
        return rest, None
    old_taken = orig.take(taken)
    old_cells = old_taken.to_numpy(dtype=object)
    new_cells = new.take(taken).to_numpy(dtype=object)
    absent = np.asarray(old_taken.isna(), dtype=bool)
    keep = absent.copy()
    present = ~absent
    keep[present] = np.asarray(old_cells[present] != new_cells[present], dtype=bool)
    taken, old_cells, new_cells, absent = taken[keep], old_cells[keep], new_cells[keep], absent[keep]
    vr, vm = dicom.vr_vm_of(spec.key)
    value_problems = _value_problems(coercer, new_cells, codec, vr, vm)
    positions = opos[taken]
    ids = targets.ids("instances" if kind == "wide" else kind)
    image_sets = ids[0][positions]
    refused = np.zeros(len(taken), dtype=bool)
    reasons: dict[str, str | None] = {}
    if coercer.validate and absent.any():
        reasons = {i: level_problem(targets.holding, i, spec.key, spec.level) for i in set(image_sets[absent].tolist())}
        refused = absent & np.fromiter((reasons.get(i) is not None for i in image_sets.tolist()), bool, len(taken))
    labels = _labels(ids, positions)
    for i in np.flatnonzero(refused | np.fromiter((p is not None for p in value_problems), bool, len(taken))):
        image_set, label = image_sets[i], labels[i]
        if refused[i]:
            problems.append(Problem(image_set, label, column, spec.key, reasons[image_set] or ""))
            continue
        shown = new_cells[i].split("\\") if codec == JOINED else new_cells[i]
        problems.append(
            Problem(
                image_set,
                label,
                column,
                spec.key,
                f"value {short(shown)} does not fit {spec.key} (VR {vr}): {value_problems[i]}",
            )
        )
    kept = ~refused
    positions, absent = positions[kept], absent[kept]
    none = np.full(len(positions), None, dtype=object)
    block = ChangeBlock(
        image_set=image_sets[kept],
        level=spec.level,
        series=ids[1][positions] if len(ids) > 1 and spec.level in ("Series", "Instance") else none,
        sop=ids[2][positions] if len(ids) > 2 and spec.level == "Instance" else none,
        attribute=spec.key,
        vr=vr,
        old=_held(old_cells[kept], absent, codec),
        new=_held(new_cells[kept], np.zeros(len(positions), dtype=bool), codec),
        op=np.where(absent, ChangeOp.ADD.value, ChangeOp.UPDATE.value).astype(object),
        row=labels[kept],
        column=column,
    )
    return rest, block


def _labels(ids: list[np.ndarray], positions: np.ndarray) -> np.ndarray:
    """The index labels of rows ``positions`` (a str, or a tuple per row) as an object array."""
    if len(ids) == 1:
        return ids[0][positions]
    out = np.empty(len(positions), dtype=object)
    out[:] = list(zip(*(level[positions].tolist() for level in ids), strict=True))
    return out
