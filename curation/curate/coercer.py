"""diff's coercion phase: one changed cell -> the edit it means (add, update, remove, or nothing) in AHI's JSON.

The cell rules are the module docstring of ``curation.curate.differ``; the representation is
``curation.frames.cells``; values are coerced and validated by ``curation.model.values``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from curation.curate.changeset import ChangeOp, Problem
from curation.curate.colmap import Spec
from curation.curate.diffrules import short
from curation.curate.targets import Targets
from curation.frames.cells import STR_BLANK, TEXT_CODECS, decode, is_empty, is_remove
from curation.model import dictionary as dicom
from curation.model import values
from curation.model.missing import NULL, is_absent
from curation.model.rules import UID_KEYWORDS
from curation.model.vr import INT_VRS, TEXT_VRS

__all__ = ["ABSENT", "MISSING_TEXTS", "Coercer", "Edit"]

#: An absent attribute (the JSON side: None means a JSON null there).
ABSENT = object()
#: Text pandas makes from a missing value (``str(nan)``, ``astype(str)`` of None/NA/NaT, ``str(NULL)``).
MISSING_TEXTS = frozenset({"nan", "None", "<NA>", "NaT", "NULL"})
_SCALARS = (str, int, float)


@dataclass(slots=True)
class Edit:
    """What one changed cell does: ``old``/``new`` as the ChangeSet holds them (NULL for null, None absent)."""

    op: ChangeOp
    old: Any
    new: Any
    vr: str | None
    problem: str | None = None


def _cell(value: Any) -> Any:
    """A JSON value (or ABSENT) as the ChangeSet holds it."""
    if value is ABSENT:
        return None
    return NULL if value is None else value


class Coercer:
    """Cells -> edits for one diff (validation results remembered per value: edits repeat values)."""

    def __init__(self, targets: Targets, vrs: dict[str, str], *, validate: bool = True, exact: bool = False) -> None:
        self.targets = targets
        self.vrs = vrs
        self.validate = validate
        self.exact = exact
        self.problems: list[Problem] = []
        self._validated: dict[tuple, str | None] = {}

    def same_cell(self, old: Any, new: Any) -> bool:
        return is_absent(old) and is_absent(new)

    def edit(
        self,
        kind: str,
        spec: Spec,
        position: int,
        old_cell: Any,
        new_cell: Any,
        old_codec: str,
        new_codec: str,
        label: Any,
        column: Any,
    ) -> Edit | None:
        """The edit a changed cell makes, or None (no change, or a problem recorded in ``problems``)."""
        old = ABSENT if is_absent(old_cell) else decode(old_cell, old_codec)
        if is_remove(new_cell):
            return None if old is ABSENT else Edit(ChangeOp.REMOVE, _cell(old), None, None)
        if is_absent(new_cell):
            if old is ABSENT or (not self.exact and (is_empty(old) or spec.key in UID_KEYWORDS)):
                return None
            return Edit(ChangeOp.REMOVE, _cell(old), None, None)
        op = ChangeOp.ADD if old is ABSENT else ChangeOp.UPDATE
        if self.exact:
            value = decode(new_cell, new_codec)
            if values.same_value(value, old):
                return None
            return Edit(op, _cell(old), _cell(value), self.vr_vm(spec, kind, position, old)[0])
        if type(new_cell) is str:
            if old is not ABSENT and type(old_cell) is not str and new_cell == str(old_cell):
                return None  # what astype(str) makes of the current cell: no edit
            if new_cell in MISSING_TEXTS:
                self._problem(
                    kind,
                    label,
                    column,
                    spec.key,
                    f"{new_cell!r} is the text pandas makes from a missing value, not a value: it is not "
                    'planned (use curation.REMOVE to remove the attribute, "" to empty it, or restore '
                    "the cell)",
                )
                return None
            if not new_cell and new_codec in TEXT_CODECS:
                if old is not ABSENT and is_empty(old):
                    return None
                empty = "" if old_codec == STR_BLANK else None
                return Edit(op, _cell(old), _cell(empty), self.vr_vm(spec, kind, position, old)[0])
        return self._coerced(kind, spec, position, old, new_cell, label, column)

    def _coerced(
        self, kind: str, spec: Spec, position: int, old: Any, value: Any, label: Any, column: Any
    ) -> Edit | None:
        vr, vm = self.vr_vm(spec, kind, position, old)
        if vr is None and dicom.is_tag_key(spec.key):
            seen = self.targets.known_vr(spec.key)
            self._problem(
                kind,
                label,
                column,
                spec.key,
                f"tag {spec.key} has no VR: give it with diff(..., vrs={{{spec.key!r}: 'XX'}})"
                + (f" (other instances use {seen})" if seen else ""),
            )
            return None
        single = not vm or vm == "1"
        if type(value) is str and vr in TEXT_VRS and single:
            coerced: Any = value
        elif type(value) is int and vr in INT_VRS and single:
            coerced = value
        else:
            try:
                coerced = values.coerce(value, vr, vm)
            except values.CoercionError as exc:
                self._problem(kind, label, column, spec.key, f"{exc} (value {short(values_shown(value))})")
                return None
        if old is not ABSENT and values.same_value(coerced, old):
            return None
        if coerced is NULL:
            coerced = None
        problem = self.check_value(coerced, vr, vm) if self.validate else None
        op = ChangeOp.ADD if old is ABSENT else ChangeOp.UPDATE
        return Edit(op, _cell(old), _cell(coerced), vr, problem)

    def _problem(self, kind: str, label: Any, column: Any, key: str, reason: str) -> None:
        image_set = label[0] if isinstance(label, tuple) else label
        self.problems.append(Problem(image_set, label, column, key, reason))

    def vr_vm(self, spec: Spec, kind: str, position: int, old: Any) -> tuple[str | None, str | None]:
        """VR and VM of the attribute: pydicom's dictionary, or for a tag its instance's DICOMVRs / ``vrs=``."""
        key = spec.key
        if not dicom.is_tag_key(key):
            return dicom.vr_vm_of(key)
        vr = None
        at_instance = spec.level == "Instance" and kind in ("instances", "wide")
        if at_instance and old is not ABSENT:
            vr = self.targets.instance_vr(position, key)
        if vr is None and at_instance:
            vr = self.vrs.get(key) or self.targets.instance_vr(position, key)
        return vr or self.vrs.get(key), None

    def removal_vr(self, spec: Spec, image_set: str, series: Any, sop: Any) -> str | None:
        if not dicom.is_tag_key(spec.key):
            return dicom.vr_vm_of(spec.key)[0]
        if spec.level == "Instance" and sop is not None:
            position = self.targets.instance_position(image_set, series, sop)
            if position >= 0:
                return self.targets.instance_vr(position, spec.key)
        return self.vrs.get(spec.key)

    def check_value(self, value: Any, vr: str | None, vm: str | None) -> str | None:
        """``values.validate``, remembered per scalar; a flat array checked for multiplicity, then per item."""
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


def values_shown(value: Any) -> Any:
    """A cell for a message (tuples and mappings as JSON arrays and objects)."""
    from curation.frames.cells import thaw

    return thaw(value)
