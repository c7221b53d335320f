"""AHI's UpdateImageSetMetadata semantics as one pure function over documents (no I/O).

The embedded service applies updates with :func:`apply_to_document`; the planner previews them with the same
function and asks :func:`force_reasons` whether a payload needs ``force``. Every refusal is the
:class:`~curation.model.errors.AHIError` AHI answers (``ValidationException`` unless stated otherwise).

Sources: the HealthImaging Developer Guide pages "Updating image set metadata" and "DICOM metadata
constraints", the API reference of UpdateImageSetMetadata/DICOMUpdates/MetadataUpdates, the AWS CLI examples of
``update-image-set-metadata`` (the seven use cases), and botocore's ``medical-imaging`` model (blob limits).
AHI publishes no error message texts for these refusals, so the messages below quote the constraint wording of
the Developer Guide and name the attribute, its level and its path in the document.

Primary image sets (Developer Guide, "Updating image set metadata"): "Patient and Series level metadata
elements cannot be updated for primary image sets"; UpdateImageSetMetadata "does not support --force for
updating StudyInstanceUID, SeriesInstanceUID and SOPInstanceUID of primary image sets"; the ``force`` parameter
lets you "update elements of non-primary image sets" overriding the DICOM metadata constraints. Read strictly,
this module refuses on a primary image set: any Patient- or Series-level attribute change (update or removal),
removing a whole series, any of the three UIDs, and every change that needs force even when force is set
(force only overrides constraints on non-primary image sets). Study- and instance-level changes that need no
force, instance removals and reverts are allowed. The documented workaround is copy to a non-primary image set,
update it, and promote it back with CopyImageSet ``promoteToPrimary``.

Where AHI's behaviour is not documented, the strict reading is taken:

- each blob must be a JSON object carrying ``"SchemaVersion": 1.1`` (number or string), at most
  ``max_blob_bytes`` long (the model's 30,000; pass 10,000 for the pre-April-2026 limit);
- PixelData is an AHI-generated key, so it is always refused (the force list of the guide also names it);
- an attribute lives where the document puts it; a new one where :func:`curation.model.levels.level_of` says
  (:func:`curation.model.rules.level_problem`);
- private and keyword-less tags are keyed by 8 uppercase hex digits, live at instance level and need a VR:
  the instance's ``DICOMVRs`` or the payload's; a hex key that has a keyword must be sent by keyword;
- force is needed for removals by the same rules as for updates; StudyInstanceUID, SeriesInstanceUID and
  SOPInstanceUID cannot be removed at all (they key the document);
- a removal must carry the current value exactly (same JSON: ``1`` is not ``1.0``, key order is ignored);
- one path in both blobs, or an edit inside a removed series/instance, is refused; removing the last instance
  of a series (use the series removal) or the last series of the image set (use DeleteImageSet) is refused;
- a new SOPInstanceUID/SeriesInstanceUID must be a non-empty string not already used in the image set
  (:func:`curation.model.rules.new_uid_problem`); the node is re-keyed in place (same position), all other
  edits of the call address it by its old UID;
- value compatibility is :func:`curation.model.validation.value_problem` (PS3.5 6.2 by VR, pydicom's validators
  where they are right, AHI's JSON typing, the VM); a value that does not fit is a force reason;
- a revert to a version ``history`` does not know is refused with ValidationException.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

import numpy as np
import orjson
import pandas as pd
from botocore.model import StructureShape

from curation.model import dictionary, rules
from curation.model.document import AHI_GENERATED_KEYS, LEVELS, parse_document
from curation.model.errors import AHIError
from curation.model.rules import EditOp
from curation.model.validation import value_problem
from curation.model.vr import ALL_VRS

__all__ = [
    "Edit",
    "ParsedUpdates",
    "PlainSets",
    "apply_checked",
    "apply_to_document",
    "check_updates",
    "force_reasons",
    "model_max_blob_bytes",
    "parse_updates",
    "plan_edits",
    "study_part",
    "updates_need_force",
    "value_problem",
]

#: Instance-node keys beside DICOM that AHI maintains itself (``rules.GENERATED_KEYS`` holds them all).
INTERNAL_INSTANCE_KEYS = rules.GENERATED_KEYS - AHI_GENERATED_KEYS

_HEX_KEY = re.compile(r"[0-9A-Fa-f]{8}")
_SCHEMA_VERSIONS = (1.1, "1.1")
_VERSION_ID = re.compile(r"\d+")


def _refuse(message: str) -> AHIError:
    return AHIError("ValidationException", message)


@cache
def model_max_blob_bytes() -> int:
    """The maximum length of a DICOMUpdates blob in botocore's ``medical-imaging`` model (30,000 today)."""
    from curation.model.service import shape as model_shape

    structure = model_shape("DICOMUpdates")
    assert isinstance(structure, StructureShape)
    shape = structure.members["updatableAttributes"]
    return int(shape.metadata["max"])


@dataclass(frozen=True)
class ParsedUpdates:
    """An UpdateImageSetMetadata request, validated: blobs parsed to dicts, the union resolved."""

    updatable: dict[str, Any] | None
    removable: dict[str, Any] | None
    revert_to: str | None
    force: bool
    include_study_image_sets: bool

    @property
    def is_revert(self) -> bool:
        return self.revert_to is not None


def _parse_blob(name: str, blob: Any, max_blob_bytes: int) -> dict[str, Any]:
    if isinstance(blob, str):
        data = blob.encode()
    elif isinstance(blob, bytes | bytearray | memoryview):
        data = bytes(blob)
    else:
        raise _refuse(f"{name} must be a blob (bytes or a JSON string), not {type(blob).__name__}")
    if not data:
        raise _refuse(f"{name} must not be empty")
    if len(data) > max_blob_bytes:
        raise _refuse(f"{name} is {len(data)} bytes long; the maximum length is {max_blob_bytes}")
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _refuse(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise _refuse(f"{name} must be a JSON object (a partial metadata document), not {type(payload).__name__}")
    if "SchemaVersion" not in payload:
        raise _refuse(f'{name} has no SchemaVersion; a metadata update must carry "SchemaVersion": 1.1')
    version = payload["SchemaVersion"]
    if isinstance(version, bool) or version not in _SCHEMA_VERSIONS:
        raise _refuse(f"{name} has SchemaVersion {version!r}; only 1.1 is supported")
    return payload


def _parse_dicom_updates(dicom_updates: Any, max_blob_bytes: int) -> tuple[dict | None, dict | None]:
    if isinstance(dicom_updates, dict) and "DICOMUpdates" in dicom_updates:
        dicom_updates = dicom_updates["DICOMUpdates"]
    if not isinstance(dicom_updates, dict):
        raise _refuse("DICOMUpdates must be an object with updatableAttributes and/or removableAttributes")
    unknown = set(dicom_updates) - {"updatableAttributes", "removableAttributes"}
    if unknown:
        raise _refuse(f"DICOMUpdates has unknown members: {', '.join(sorted(unknown))}")
    blobs = {name: blob for name, blob in dicom_updates.items() if blob is not None}
    if not blobs:
        raise _refuse("DICOMUpdates must contain updatableAttributes or removableAttributes")
    parsed = {name: _parse_blob(name, blob, max_blob_bytes) for name, blob in blobs.items()}
    return parsed.get("updatableAttributes"), parsed.get("removableAttributes")


def parse_updates(request: dict[str, Any], *, max_blob_bytes: int | None = None) -> ParsedUpdates:
    """Validate an UpdateImageSetMetadata parameter dict (botocore member names) without a document."""
    max_blob_bytes = model_max_blob_bytes() if max_blob_bytes is None else max_blob_bytes
    union = request.get("updateImageSetMetadataUpdates")
    if not isinstance(union, dict):
        raise _refuse("updateImageSetMetadataUpdates is required: provide DICOMUpdates or revertToVersionId")
    unknown = set(union) - {"DICOMUpdates", "revertToVersionId"}
    if unknown:
        raise _refuse(f"updateImageSetMetadataUpdates has unknown members: {', '.join(sorted(unknown))}")
    has_updates = union.get("DICOMUpdates") is not None
    revert_to = union.get("revertToVersionId")
    if has_updates and revert_to is not None:
        raise _refuse("You must provide either revertToVersionId or DICOMUpdates in your request, not both")
    if not has_updates and revert_to is None:
        raise _refuse("You must provide either revertToVersionId or DICOMUpdates in your request")
    force = bool(request.get("force") or False)
    include_study = bool(request.get("includeStudyImageSets") or False)
    if revert_to is not None:
        if not isinstance(revert_to, str) or not _VERSION_ID.fullmatch(revert_to):
            raise _refuse(f"revertToVersionId {revert_to!r} does not match the pattern \\d+")
        if include_study:
            raise _refuse("includeStudyImageSets is not supported with revertToVersionId")
        return ParsedUpdates(None, None, revert_to, force, include_study)
    updatable, removable = _parse_dicom_updates(union["DICOMUpdates"], max_blob_bytes)
    return ParsedUpdates(updatable, removable, None, force, include_study)


# --- attributes -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Attribute:
    """An attribute key as the dictionary knows it: hex-keyed, private, standard, its VR and VM."""

    key: str
    hex_keyed: bool
    private: bool
    standard: bool
    vr: str | None
    vm: str | None


@cache
def _attribute(key: str) -> _Attribute:
    """What the dictionary says of ``key`` (pydicom's, through ``curation.model.dictionary``); refuses hex keys
    that are not uppercase or that name a keyword."""
    if _HEX_KEY.fullmatch(key):
        if key != key.upper():
            raise _refuse(f"tag key {key!r} must be written with 8 uppercase hex digits ({key.upper()})")
        if dictionary.is_private(key):
            return _Attribute(key, True, True, False, None, None)
        keyword = dictionary.keyword_of(key)
        if keyword:
            raise _refuse(f"tag {key} has the keyword {keyword}; AHI metadata keys standard attributes by keyword")
        return _Attribute(key, True, False, False, None, None)
    vr, vm = dictionary.vr_vm_of(key)
    return _Attribute(key, False, False, dictionary.is_standard(key), vr, vm)


def _checked_attribute(key: str, path: str) -> _Attribute:
    """``_attribute(key)``, after refusing an AHI-generated key (the refusal names ``path``)."""
    try:
        return _ALLOWED[key]
    except KeyError:
        pass
    refusal = rules.generated_key_refusal(key)
    if refusal:
        raise _refuse(f"{refusal} ({path})")
    attribute = _ALLOWED[key] = _attribute(key)
    return attribute


#: keys that are not AHI-generated, with what the dictionary says of them (``_checked_attribute``)
_ALLOWED: dict[str, _Attribute] = {}


def _static_force_reasons(key: str, vr: str | None, attribute: _Attribute) -> tuple[str, ...]:
    """``rules.force_reasons`` of a change of ``attribute`` (keyed ``key``) with VR ``vr`` whose value fits (or
    of a removal): a pure function of the two, remembered."""
    try:
        return _STATIC_REASONS[key, vr]
    except KeyError:
        pass
    reasons = _STATIC_REASONS[key, vr] = tuple(
        rules.force_reasons(key, vr=vr, vm=attribute.vm, private=attribute.private, standard=attribute.standard)
    )
    return reasons


def _value_force_reasons(key: str, vr: str | None, attribute: _Attribute, value: Any, problem: str) -> tuple[str, ...]:
    """``rules.force_reasons`` of a set of ``attribute`` (keyed ``key``, VR ``vr``) whose value does not fit."""
    return tuple(
        rules.force_reasons(
            key,
            vr=vr,
            vm=attribute.vm,
            private=attribute.private,
            standard=attribute.standard,
            value_problem=f"value {_short(value)}: {problem}",
        )
    )


_STATIC_REASONS: dict[tuple[str, str | None], tuple[str, ...]] = {}
#: (keyword, level) -> (what the dictionary says, static force reasons, primary refusals) of a set the walk
#: checked once: a pure function of the two for a keyword (not a hex key) that is not AHI-generated
#: (``_Planner._plain_set``)
_PLAIN_SETS: dict[tuple[str, str], tuple[_Attribute, tuple[str, ...], tuple[str, ...]]] = {}
#: ``value_problem`` of text values (and numbers, keyed with their type), remembered (``validation.value_problem``
#: keeps its own cache of every kind of value; these are most of what updates carry and are looked up here
#: without building that cache's key)
_TEXT_PROBLEMS: dict[tuple[Any, ...], str | None] = {}
_TEXT_PROBLEMS_SIZE = 65_536


def _value_problem(vr: str | None, vm: str | None, value: Any) -> str | None:
    """``value_problem(vr, vm, value)``, text values, arrays of text and numbers (with their type) remembered."""
    kind = type(value)
    if kind is str:
        key: tuple[Any, ...] = (vr, vm, value)
    elif kind is list and value and set(map(type, value)) == _TEXT_ONLY:
        key = (vr, vm, tuple(value))
    elif kind is int or kind is float:
        key = (vr, vm, kind, value)
    else:
        return value_problem(vr, vm, value)
    try:
        return _TEXT_PROBLEMS[key]
    except KeyError:
        pass
    if len(_TEXT_PROBLEMS) >= _TEXT_PROBLEMS_SIZE:
        _TEXT_PROBLEMS.clear()
    problem = _TEXT_PROBLEMS[key] = value_problem(vr, vm, value)
    return problem


_TEXT_ONLY = {str}
#: a text value ``_TEXT_PROBLEMS`` has not seen yet
_UNKNOWN = "unknown"


@cache
def _primary_refusals(level: str, key: str, op: EditOp) -> tuple[str, ...]:
    """``rules.primary_refusals`` of one attribute change (a pure function of these three)."""
    return tuple(rules.primary_refusals(level, key, op))


# --- the edit plan ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    """One change an update makes to the document; ``key`` is None for the removal of a series or instance."""

    op: EditOp
    level: str
    path: str
    series: str | None = None
    sop: str | None = None
    key: str | None = None
    value: Any = None
    vr: str | None = None

    @property
    def node(self) -> tuple[str, str | None, str | None]:
        return self.level, self.series, self.sop


_new = object.__new__
_set_attribute = object.__setattr__


def _edit(
    op: EditOp, level: str, path: str, series: str | None, sop: str | None, key: str, value: Any, vr: str | None
) -> Edit:
    """``Edit(op, level, path, series, sop, key, value, vr)`` without the frozen dataclass' ``__init__`` (which
    sets each field through ``object.__setattr__``: half the cost of an edit of the walk); the same object."""
    edit = _new(Edit)
    _set_attribute(
        edit,
        "__dict__",
        {"op": op, "level": level, "path": path, "series": series, "sop": sop, "key": key, "value": value, "vr": vr},
    )
    return edit


class _Target(NamedTuple):
    """A node of the document an update addresses: its level, its path in the payload and its UIDs (a named
    tuple: one is made per node of a payload, and a frozen dataclass costs several times as much to make)."""

    level: str
    path: str
    series: str | None = None
    sop: str | None = None


def _same_json(left: Any, right: Any) -> bool:
    return orjson.dumps(left, option=orjson.OPT_SORT_KEYS) == orjson.dumps(right, option=orjson.OPT_SORT_KEYS)


class _Planner:
    """Walks the payloads against the document, collecting edits, force reasons and primary refusals."""

    def __init__(self, document: dict[str, Any], keep_edits: bool = True) -> None:
        self.document = document
        #: False: the plain sets of ``_sets`` keep no Edit (the caller wants the checks only; the UID sets that
        #: ``_check_new_uids`` reads are kept)
        self.keep_edits = keep_edits
        self.edits: list[Edit] = []
        self.reasons: list[str] = []
        self.primary_refusals: list[str] = []
        self._levels: dict[str, set[str]] = {}
        self.series: dict[str, Any] = document.get("Study", {}).get("Series", {})
        self.image_set: str = document.get("ImageSetID", "<unknown>")
        #: True once a removableAttributes payload is walked (``check_consistency`` has removals to check)
        self.removing = False

    def levels_holding(self, key: str) -> set[str]:
        """The levels at which the document holds attribute ``key`` (any series or instance counts)."""
        if key not in self._levels:
            found = set()
            if key in self.document.get("Patient", {}).get("DICOM", {}):
                found.add("Patient")
            if key in self.document.get("Study", {}).get("DICOM", {}):
                found.add("Study")
            for series in self.series.values():
                if key in series.get("DICOM", {}):
                    found.add("Series")
                if "Instance" not in found and any(
                    key in instance.get("DICOM", {}) for instance in series.get("Instances", {}).values()
                ):
                    found.add("Instance")
            self._levels[key] = found
        return self._levels[key]

    def walk(self, payload: dict[str, Any], op: EditOp) -> None:
        self.removing = self.removing or op == EditOp.REMOVE
        for key, node in payload.items():
            if key == "SchemaVersion":
                continue
            refusal = rules.generated_key_refusal(key)
            if refusal:
                raise _refuse(refusal)
            if key == "Patient":
                self._dicom_holder(node, _Target("Patient", "Patient"), op, allowed=("DICOM",))
            elif key == "Study":
                self._dicom_holder(node, _Target("Study", "Study"), op, allowed=("DICOM", "Series"))
                for series_uid, series_node in self._children(node, "Series", "Study.Series").items():
                    self._series(series_uid, series_node, op)
            else:
                raise _refuse(f"unknown top-level key {key!r} in the metadata update; expected Patient or Study")

    def _children(self, node: dict[str, Any], name: str, path: str) -> dict[str, Any]:
        children = node.get(name, {})
        if not isinstance(children, dict):
            raise _refuse(f"{path} must be an object keyed by UID")
        return children

    def _dicom_holder(self, node: Any, target: _Target, op: EditOp, *, allowed: tuple[str, ...]) -> None:
        path = target.path
        if not isinstance(node, dict):
            raise _refuse(f"{path} must be an object")
        for key in node:
            if key not in allowed:
                refusal = rules.generated_key_refusal(key)
                if refusal:
                    raise _refuse(f"{refusal} ({path}.{key})")
                raise _refuse(f"{path} has unexpected key {key!r}; allowed: {', '.join(allowed)}")
        dicom = node.get("DICOM", {})
        if not isinstance(dicom, dict):
            raise _refuse(f"{path}.DICOM must be an object of attributes")
        vrs = node.get("DICOMVRs", {})
        if not isinstance(vrs, dict):
            raise _refuse(f"{path}.DICOMVRs must be an object mapping tags to VRs")
        current = self._current_node(target)
        current_vrs = current.get("DICOMVRs") or {}
        if vrs:
            _check_payload_vrs(path, vrs, dicom, current_vrs, op)
        current_dicom = current.get("DICOM") or {}
        if op is EditOp.SET and not vrs:
            self._sets(target, dicom, current_dicom, current_vrs)
            return
        attribute = self._attribute
        for key, value in dicom.items():
            attribute(target, key, value, op, current_dicom, current_vrs, vrs.get(key) if vrs else None)

    def _sets(self, target: _Target, dicom: dict[str, Any], current_dicom: dict, current_vrs: dict) -> None:
        """``_attribute`` of each set of a node without DICOMVRs; a keyword already in the node whose key and
        level the walk has checked before (``_PLAIN_SETS``) and whose text value fits, inline."""
        level, prefix, series, sop = target.level, f"{target.path}.DICOM.", target.series, target.sop
        plain_sets, text_problems, edits, op = _PLAIN_SETS, _TEXT_PROBLEMS, self.edits, EditOp.SET
        keep, rekeying = self.keep_edits, rules.REKEYING_UIDS
        for key, value in dicom.items():
            plain = plain_sets.get((key, level)) if key in current_dicom else None
            if plain is None:
                self._attribute(target, key, value, op, current_dicom, current_vrs, None)
                continue
            attribute, static, refusals = plain
            kind = type(value)
            if kind is str:
                problem: str | None = text_problems.get((attribute.vr, attribute.vm, value), _UNKNOWN)
            elif kind is int or kind is float:
                problem = text_problems.get((attribute.vr, attribute.vm, kind, value), _UNKNOWN)
            elif kind is list and value and set(map(type, value)) == _TEXT_ONLY:
                problem = text_problems.get((attribute.vr, attribute.vm, tuple(value)), _UNKNOWN)
            else:
                problem = _UNKNOWN
            if problem is not None:
                self._plain_set(target, key, value, plain)
                continue
            if static:
                self.reasons.extend(f"{prefix}{key}: {reason}" for reason in static)
            if refusals:
                self.primary_refusals.extend(f"{prefix}{key}: {refusal}" for refusal in refusals)
            if not keep and key not in rekeying:
                continue
            edit = _new(Edit)
            _set_attribute(
                edit,
                "__dict__",
                {
                    "op": op,
                    "level": level,
                    "path": prefix + key,
                    "series": series,
                    "sop": sop,
                    "key": key,
                    "value": value,
                    "vr": None,
                },
            )
            edits.append(edit)

    def _current_node(self, target: _Target) -> dict[str, Any]:
        if target.level in ("Patient", "Study"):
            node: dict[str, Any] = self.document.get(target.level, {})
            return node
        series: dict[str, Any] = self.series[_given(target.series)]
        return series if target.level == "Series" else series["Instances"][_given(target.sop)]

    def _series(self, series_uid: str, node: Any, op: EditOp) -> None:
        path = f"Study.Series.{series_uid}"
        if series_uid not in self.series:
            raise _refuse(
                f"Cannot update attributes if the associated attribute module is not present in existing "
                f"ImageSetMetadata: series {series_uid} does not exist in image set {self.image_set} ({path})"
            )
        if not isinstance(node, dict):
            raise _refuse(f"{path} must be an object")
        if op == EditOp.REMOVE and not node:
            self.edits.append(Edit(EditOp.REMOVE_SERIES, "Series", path, series=series_uid))
            self.primary_refusals.append(f"{path}: {rules.PRIMARY_SERIES_REMOVAL_REFUSAL}")
            return
        self._dicom_holder(node, _Target("Series", path, series_uid), op, allowed=("DICOM", "Instances"))
        instances = self.series[series_uid].get("Instances", {})
        for sop_uid, instance_node in self._children(node, "Instances", f"{path}.Instances").items():
            target = _Target("Instance", f"{path}.Instances.{sop_uid}", series_uid, sop_uid)
            if sop_uid not in instances:
                raise _refuse(
                    f"Cannot update attributes if the associated attribute module is not present in existing "
                    f"ImageSetMetadata: instance {sop_uid} does not exist in series {series_uid} ({target.path})"
                )
            if op == EditOp.REMOVE and instance_node == {}:
                self.edits.append(Edit(EditOp.REMOVE_INSTANCE, "Instance", target.path, series_uid, sop_uid))
                continue
            self._dicom_holder(instance_node, target, op, allowed=("DICOM", "DICOMVRs"))

    def _attribute(
        self,
        target: _Target,
        key: str,
        value: Any,
        op: EditOp,
        current_dicom: dict[str, Any],
        current_vrs: dict[str, Any],
        payload_vr: str | None,
    ) -> None:
        level = target.level
        path = f"{target.path}.DICOM.{key}"
        attribute = _checked_attribute(key, path)
        if key not in current_dicom:
            misplaced = rules.level_problem(key, level, self.levels_holding(key), image_set=self.image_set)
            if misplaced:
                raise _refuse(f"Cannot update attributes across modules: {misplaced} ({path})")
        vr = attribute.vr
        if attribute.hex_keyed:
            vr = payload_vr or current_vrs.get(key)
            if vr is None and op == EditOp.SET:
                raise _refuse(f"{path}: tag {key} has no VR; give it in DICOMVRs beside DICOM")
        if op == EditOp.REMOVE:
            self._check_removal(level, path, key, value, current_dicom)
            sent_vr = None
            reasons = _static_force_reasons(key, vr, attribute)
        else:
            sent_vr = payload_vr
            problem = _value_problem(vr, attribute.vm, value)
            if problem:
                reasons = _value_force_reasons(key, vr, attribute, value, problem)
            else:
                reasons = _static_force_reasons(key, vr, attribute)
        refusals = _primary_refusals(level, key, op)
        if refusals:
            self.primary_refusals.extend(f"{path}: {refusal}" for refusal in refusals)
        if reasons:
            self.reasons.extend(f"{path}: {reason}" for reason in reasons)
        self.edits.append(_edit(op, level, path, target.series, target.sop, key, value, sent_vr))
        if op is EditOp.SET and not attribute.hex_keyed:
            _PLAIN_SETS[key, level] = (attribute, _static_force_reasons(key, vr, attribute), refusals)

    def _plain_set(self, target: _Target, key: str, value: Any, plain: tuple[_Attribute, tuple, tuple]) -> None:
        """``_attribute`` of a keyword already in the node, set without a DICOMVRs entry: what the general path
        decided for this key and level before (``_PLAIN_SETS``) and the value's own check."""
        attribute, static, refusals = plain
        path = f"{target.path}.DICOM.{key}"
        problem = _value_problem(attribute.vr, attribute.vm, value)
        if problem:
            self.reasons.extend(
                f"{path}: {reason}" for reason in _value_force_reasons(key, attribute.vr, attribute, value, problem)
            )
        elif static:
            self.reasons.extend(f"{path}: {reason}" for reason in static)
        if refusals:
            self.primary_refusals.extend(f"{path}: {refusal}" for refusal in refusals)
        self.edits.append(_edit(EditOp.SET, target.level, path, target.series, target.sop, key, value, None))

    @staticmethod
    def _check_removal(level: str, path: str, key: str, value: Any, current_dicom: dict[str, Any]) -> None:
        if key not in current_dicom:
            raise _refuse(f"{path}: cannot remove {key}, it does not exist at {level} level")
        if not _same_json(current_dicom[key], value):
            raise _refuse(
                f"{path}: cannot remove {key}: the value given ({_short(value)}) does not match the existing "
                f"value ({_short(current_dicom[key])}); key and value must both match"
            )
        refusal = rules.uid_removal_refusal(key, level)
        if refusal:
            raise _refuse(f"{path}: {refusal}")

    def check_consistency(self) -> None:
        if not self.removing:  # only sets: nothing edited inside a removed node, no path in both blobs
            self._check_remaining(set(), set())
            self._check_new_uids()
            return
        removed_series = {edit.series for edit in self.edits if edit.op == EditOp.REMOVE_SERIES}
        removed_instances = {(edit.series, edit.sop) for edit in self.edits if edit.op == EditOp.REMOVE_INSTANCE}
        seen: dict[tuple, str] = {}
        removing = bool(removed_series or removed_instances)
        for edit in self.edits:
            if edit.op in (EditOp.SET, EditOp.REMOVE):
                inside = removing and (edit.series in removed_series or (edit.series, edit.sop) in removed_instances)
                if inside:
                    raise _refuse(f"{edit.path}: the update edits a series or instance it also removes")
                spot = (edit.level, edit.series, edit.sop, edit.key)
                if spot in seen and seen[spot] != edit.op:
                    raise _refuse(
                        f"{edit.path}: the same attribute is in both updatableAttributes and removableAttributes"
                    )
                seen[spot] = edit.op
            elif edit.op == EditOp.REMOVE_INSTANCE and edit.series in removed_series:
                raise _refuse(f"{edit.path}: the update removes an instance of a series it also removes")
        self._check_remaining(removed_series, removed_instances)
        self._check_new_uids()

    def _check_remaining(self, removed_series: set[str | None], removed_instances: set[tuple]) -> None:
        remaining_series = [uid for uid in self.series if uid not in removed_series]
        if not remaining_series:
            raise _refuse(
                f"the update would remove every series of image set {self.image_set}; use DeleteImageSet instead"
            )
        for uid in remaining_series:
            instances = self.series[uid].get("Instances", {})
            if instances and all((uid, sop) in removed_instances for sop in instances):
                raise _refuse(
                    f"Study.Series.{uid}: the update would remove every instance of series {uid}; "
                    "remove the series instead"
                )

    def _check_new_uids(self) -> None:
        taken: dict[str, set[str]] = {}
        for edit in self.edits:
            if edit.key not in rules.REKEYING_UIDS or edit.op != EditOp.SET:
                continue
            if not rules.rekeys(edit.key, edit.level):
                continue
            old = edit.sop if edit.key == "SOPInstanceUID" else edit.series
            if edit.value == old:
                continue
            if edit.key not in taken:
                taken[edit.key] = (
                    {sop for series in self.series.values() for sop in series.get("Instances", {})}
                    if edit.key == "SOPInstanceUID"
                    else set(self.series)
                )
            problem = rules.new_uid_problem(edit.key, edit.value, taken[edit.key], image_set=self.image_set)
            if problem:
                raise _refuse(f"{edit.path}: {problem}")
            taken[edit.key].add(edit.value)


def _check_payload_vrs(
    path: str, vrs: dict[str, Any], dicom: dict[str, Any], current_vrs: dict[str, Any], op: EditOp
) -> None:
    """A payload's ``DICOMVRs``: each entry a private or keyword-less tag of its ``DICOM``, with a real VR
    (for a removal: the VR the document records)."""
    for key, vr in vrs.items():
        if key not in dicom:
            raise _refuse(f"{path}.DICOMVRs.{key} has no matching {path}.DICOM.{key}")
        if not _HEX_KEY.fullmatch(key):
            raise _refuse(f"{path}.DICOMVRs.{key}: DICOMVRs only holds private and keyword-less tags")
        if vr not in ALL_VRS:
            raise _refuse(f"{path}.DICOMVRs.{key}: {vr!r} is not a DICOM VR")
        if op == EditOp.REMOVE and current_vrs.get(key) != vr:
            raise _refuse(f"{path}.DICOMVRs.{key}: VR {vr} does not match the current VR {current_vrs.get(key)}")


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."


def _plan(document: dict[str, Any], parsed: ParsedUpdates, keep_edits: bool = True) -> _Planner:
    planner = _Planner(document, keep_edits)
    if parsed.removable is not None:
        planner.walk(parsed.removable, EditOp.REMOVE)
    if parsed.updatable is not None:
        planner.walk(parsed.updatable, EditOp.SET)
    planner.check_consistency()
    return planner


def plan_edits(
    document: dict[str, Any], request: dict[str, Any], *, max_blob_bytes: int | None = None
) -> tuple[list[Edit], list[str]]:
    """The edits a DICOMUpdates request makes to ``document`` and the reasons it needs force (for previews)."""
    parsed = parse_updates(request, max_blob_bytes=max_blob_bytes)
    if parsed.is_revert:
        return [], []
    planner = _plan(document, parsed)
    return list(planner.edits), list(planner.reasons)


def force_reasons(document: dict[str, Any], updates: dict[str, Any], *, max_blob_bytes: int | None = None) -> list[str]:
    """Why the DICOMUpdates ``updates`` need ``force`` on ``document``; empty when they do not.

    Raises the AHIError the update would get for refusals that force cannot lift.
    """
    max_blob_bytes = model_max_blob_bytes() if max_blob_bytes is None else max_blob_bytes
    updatable, removable = _parse_dicom_updates(updates, max_blob_bytes)
    planner = _plan(document, ParsedUpdates(updatable, removable, None, False, False))
    return list(planner.reasons)


def updates_need_force(document: dict[str, Any], updates: dict[str, Any]) -> bool:
    """True when the DICOMUpdates ``updates`` are refused on ``document`` unless ``force`` is set."""
    return bool(force_reasons(document, updates))


# --- applying ---------------------------------------------------------------------------------------------------


def _copy(document: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = orjson.loads(orjson.dumps(document))
    return copied


def _given(name: str | None) -> str:
    """A key or UID the planner always fills for the edits that use it."""
    if name is None:  # pragma: no cover - the planner never makes such an edit
        raise ValueError("an edit lacks the key or UID it addresses")
    return name


def _set_vr(node: dict[str, Any], key: str, vr: str) -> None:
    if "DICOMVRs" not in node:
        items = list(node.items())
        at = next((index + 1 for index, (name, _) in enumerate(items) if name == "DICOM"), len(items))
        items.insert(at, ("DICOMVRs", {}))
        node.clear()
        node.update(items)
    node["DICOMVRs"][key] = vr


def _rekey(mapping: dict[str, Any], old: str, new: str) -> None:
    items = [(new if key == old else key, value) for key, value in mapping.items()]
    mapping.clear()
    mapping.update(items)


class _Shared:
    """Copy-on-write access to a document: the nodes on an edited path are copied once, the rest is shared."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.result = dict(document)
        self._copied: set[int] = {id(self.result)}
        self._keep: list[Any] = []

    def own(self, parent: dict[str, Any], key: str) -> Any:
        child = parent[key]
        if id(child) not in self._copied and isinstance(child, dict):
            child = dict(child)
            parent[key] = child
            self._copied.add(id(child))
            self._keep.append(child)
        return child

    def node(self, edit: Edit) -> dict[str, Any]:
        if edit.level in ("Patient", "Study"):
            node: dict[str, Any] = self.own(self.result, edit.level)
            return node
        series: dict[str, Any] = self.own(self.series_map(), _given(edit.series))
        return series if edit.level == "Series" else self.own(self.instances(edit), _given(edit.sop))

    def series_map(self) -> dict[str, Any]:
        study = self.own(self.result, "Study")
        if "Series" not in study:
            return {}
        series: dict[str, Any] = self.own(study, "Series")
        return series

    def instances(self, edit: Edit) -> dict[str, Any]:
        instances: dict[str, Any] = self.own(self.own(self.series_map(), _given(edit.series)), "Instances")
        return instances

    def remove(self, edit: Edit) -> None:
        key = _given(edit.key)
        node = self.node(edit)
        del self.own(node, "DICOM")[key]
        if _HEX_KEY.fullmatch(key) and isinstance(node.get("DICOMVRs"), dict):
            self.own(node, "DICOMVRs").pop(key, None)

    def set(self, edit: Edit) -> None:
        key = _given(edit.key)
        node = self.node(edit)
        if "DICOM" in node:
            self.own(node, "DICOM")[key] = edit.value
        else:
            node["DICOM"] = {key: edit.value}
        if edit.vr is not None:
            if isinstance(node.get("DICOMVRs"), dict):
                self.own(node, "DICOMVRs")
            _set_vr(node, key, edit.vr)

    def remove_node(self, edit: Edit) -> None:
        if edit.op == EditOp.REMOVE_INSTANCE:
            del self.instances(edit)[_given(edit.sop)]
        else:
            del self.series_map()[_given(edit.series)]

    def rekey(self, edit: Edit) -> None:
        if edit.level == "Instance":
            _rekey(self.instances(edit), _given(edit.sop), edit.value)
        else:
            _rekey(self.series_map(), _given(edit.series), edit.value)


def _rekeying(edit: Edit) -> bool:
    old = edit.sop if edit.level == "Instance" else edit.series
    return edit.op == EditOp.SET and rules.rekeys(_given(edit.key), edit.level) and edit.value != old


def _apply_shared(document: dict[str, Any], edits: list[Edit]) -> dict[str, Any]:
    """``_apply_edits`` without the deep copy: the result shares every node it does not change with
    ``document`` (which stays untouched), so it must be treated as read-only.

    The order is AHI's: removals, then updates, then instance and series removals, then the re-keying of
    instances and of series (every edit of the call addresses a node by its old UID)."""
    shared = _Shared(document)
    for edit in edits:
        if edit.op == EditOp.REMOVE:
            shared.remove(edit)
    for edit in edits:
        if edit.op == EditOp.SET:
            shared.set(edit)
    for edit in edits:
        if edit.op in (EditOp.REMOVE_INSTANCE, EditOp.REMOVE_SERIES):
            shared.remove_node(edit)
    for level in ("Instance", "Series"):
        for edit in edits:
            if edit.level == level and _rekeying(edit):
                shared.rekey(edit)
    return shared.result


def _apply_edits(document: dict[str, Any], edits: list[Edit]) -> dict[str, Any]:
    """``edits`` applied to an independent copy: the shared-path result, deep-copied so nothing aliases."""
    return _copy(_apply_shared(document, edits))


def _revert(
    document: dict[str, Any], version_id: str, history: Callable[[str], dict[str, Any]] | None
) -> dict[str, Any]:
    if history is None:
        raise _refuse(f"revertToVersionId {version_id}: no version history is available for this image set")
    try:
        old = history(version_id)
    except AHIError:
        raise
    except (LookupError, ValueError):
        old = None
    if not isinstance(old, dict):
        raise _refuse(
            f"revertToVersionId {version_id} is not a version of image set {document.get('ImageSetID', '<unknown>')}"
        )
    result = _copy(old)
    for key in ("DatastoreID", "ImageSetID"):
        if key in document:
            result[key] = document[key]
    return result


def check_updates(
    document: dict[str, Any],
    updates: dict[str, Any],
    *,
    is_primary: bool = False,
    max_blob_bytes: int | None = None,
    keep_edits: bool = True,
) -> tuple[list[str], list[Edit]]:
    """The planner's fast path: ``(force_reasons(document, updates), the edits)``, the blobs parsed once
    (``keep_edits=False``: the checks only, no edits returned, for a caller that will not apply them).

    Raises the same refusals, in the same order, as ``force_reasons`` followed by ``apply_to_document`` of the
    DICOMUpdates ``updates`` with ``force`` set exactly when there are reasons (and ``is_primary``).
    :func:`apply_checked` then gives the document that ``apply_to_document`` would return.
    """
    max_blob_bytes = model_max_blob_bytes() if max_blob_bytes is None else max_blob_bytes
    updatable, removable = _parse_dicom_updates(updates, max_blob_bytes)
    planner = _plan(document, ParsedUpdates(updatable, removable, None, False, False), keep_edits)
    if is_primary and planner.primary_refusals:
        raise _refuse(planner.primary_refusals[0])
    if planner.reasons and is_primary:
        why = "; ".join(planner.reasons)
        raise _refuse(f"The force flag cannot override DICOM metadata constraints on a primary image set: {why}")
    return list(planner.reasons), planner.edits if keep_edits else []


def apply_checked(document: dict[str, Any], edits: list[Edit]) -> dict[str, Any]:
    """``document`` with the ``edits`` of :func:`check_updates` applied, sharing every node it does not change.

    Equal to what ``apply_to_document`` returns, without its deep copy: ``document`` is not mutated, and the
    result aliases its unchanged parts, so treat both as read-only (or use ``apply_to_document``).
    """
    return _apply_shared(document, edits)


def study_part(request: dict[str, Any]) -> dict[str, Any] | None:
    """What ``includeStudyImageSets`` applies to the study's other primary image sets: ``request`` restricted
    to its Patient and ``Study.DICOM`` paths (series and instances stay with the image set addressed), or None
    when it changes nothing there. The blobs come back as compact JSON text."""
    updates = (request.get("updateImageSetMetadataUpdates") or {}).get("DICOMUpdates") or {}
    kept: dict[str, str] = {}
    for key in ("updatableAttributes", "removableAttributes"):
        blob = updates.get(key)
        if not blob:
            continue
        payload = parse_document(blob)
        part: dict[str, Any] = {}
        if "Patient" in payload:
            part["Patient"] = payload["Patient"]
        if isinstance(payload.get("Study"), dict) and "DICOM" in payload["Study"]:
            part["Study"] = {"DICOM": payload["Study"]["DICOM"]}
        if part:
            kept[key] = orjson.dumps({"SchemaVersion": payload.get("SchemaVersion", 1.1), **part}).decode()
    if not kept:
        return None
    rest = {k: v for k, v in request.items() if k != "includeStudyImageSets"}
    return {**rest, "updateImageSetMetadataUpdates": {"DICOMUpdates": kept}}


def apply_to_document(
    document: dict[str, Any],
    request: dict[str, Any],
    *,
    history: Callable[[str], dict[str, Any]] | None = None,
    is_primary: bool = False,
    max_blob_bytes: int | None = None,
) -> dict[str, Any]:
    """Apply an UpdateImageSetMetadata request to ``document`` and return the new document.

    ``request`` holds botocore's member names (``updateImageSetMetadataUpdates``, ``force``,
    ``includeStudyImageSets``; ``latestVersionId`` is the caller's concern). ``history(version_id)`` returns an
    older document for ``revertToVersionId``. The input is never mutated, even when the update is refused.
    """
    parsed = parse_updates(request, max_blob_bytes=max_blob_bytes)
    if parsed.revert_to is not None:
        return _revert(document, parsed.revert_to, history)
    planner = _plan(document, parsed)
    if is_primary and planner.primary_refusals:
        raise _refuse(planner.primary_refusals[0])
    if planner.reasons and (is_primary or not parsed.force):
        why = "; ".join(planner.reasons)
        if is_primary:
            raise _refuse(f"The force flag cannot override DICOM metadata constraints on a primary image set: {why}")
        raise _refuse(f"The force flag is required for this update: {why}")
    return _apply_edits(document, planner.edits)


# --- many payloads of keyword sets checked at once ----------------------------------------------------------------


def _sent(value: Any) -> Any:
    """``value`` as the service reads it back from the blob (a non-finite float is sent as null)."""
    kind = type(value)
    if kind is str or kind is int or (kind is float and math.isfinite(value)):
        return value
    return orjson.loads(orjson.dumps(value))


class PlainSets:
    """:func:`check_updates` (``keep_edits=False``) of many payloads at once, from their rows: each payload
    only sets keyword attributes without DICOMVRs, no attribute twice in a node (the planner's payload groups).

    The rows are given in the order the walk visits them (Patient, Study, then each series: its attributes,
    its instances), each with its node (``levels``, ``series``, ``sops``), attribute ``keys`` and JSON
    ``values``; ``runs`` are the starts of the runs of rows of one node, with ``len(keys)`` last. A value's
    check depends only on the attribute and the value, so each distinct one is checked once for all the
    payloads; per payload, :meth:`reasons` then only looks the nodes and keys up in the document. Where the
    walk could refuse or would do more than check sets of attributes already there (a new attribute, a node
    missing, a UID of a node, an AHI-generated key, a refusal on a primary image set), :meth:`reasons` answers
    None and the caller asks :func:`check_updates`.
    """

    def __init__(
        self,
        levels: list[str],
        series: list[str | None],
        sops: list[str | None],
        keys: list[str],
        values: list[Any],
        runs: list[int],
    ) -> None:
        self.levels, self.series, self.sops, self.keys, self.runs = levels, series, sops, keys, runs
        codes, distinct = _factorize(keys)
        attributes = list(map(_walkable, distinct))
        unchecked = np.fromiter((a is None for a in attributes), dtype=bool, count=len(attributes))
        #: running counts of the rows only the walk can check, and of those a primary image set refuses
        self._unchecked = _running_count(unchecked[codes])
        #: row -> the force reasons of its set, in the walk's words (rows without any are not kept)
        self._reasons: dict[int, tuple[str, ...]] = {}
        self._refused = _running_count(self._static_checks(codes, attributes, levels))
        for row, (value, problem) in self._value_problems(codes, attributes, values).items():
            attribute = attributes[codes[row]]
            assert attribute is not None
            self._reasons[row] = _value_force_reasons(attribute.key, attribute.vr, attribute, value, problem)
        self._reasoned = np.array(sorted(self._reasons), dtype=np.int64)

    def _static_checks(self, codes: np.ndarray, attributes: list[_Attribute | None], levels: list[str]) -> np.ndarray:
        """Each row's static force reasons into ``_reasons`` (by key and level, as the walk remembers them in
        ``_PLAIN_SETS``); returns where a primary image set refuses the set."""
        pairs = codes * len(LEVELS) + np.fromiter(map(LEVELS.index, levels), dtype=np.int64, count=len(levels))
        distinct, pair_of_row = np.unique(pairs, return_inverse=True)
        refusing = np.zeros(len(distinct), dtype=bool)
        for number, pair in enumerate(distinct.tolist()):
            attribute = attributes[pair // len(LEVELS)]
            if attribute is None:
                continue
            refusing[number] = bool(_primary_refusals(LEVELS[pair % len(LEVELS)], attribute.key, EditOp.SET))
            static = _static_force_reasons(attribute.key, attribute.vr, attribute)
            if static:
                self._reasons.update(dict.fromkeys(np.flatnonzero(pair_of_row == number).tolist(), static))
        refused: np.ndarray = refusing[pair_of_row]
        return refused

    @staticmethod
    def _value_problems(codes: np.ndarray, attributes: list[_Attribute | None], values: list[Any]) -> dict:
        """Row -> (value, problem) of each row whose value does not fit its attribute, each distinct value of an
        attribute checked once."""
        found: dict[int, tuple[Any, str]] = {}
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        held = np.fromiter(values, dtype=object, count=len(values))
        for rows in np.split(order, bounds) if len(order) else []:
            attribute = attributes[codes[rows[0]]]
            if attribute is None:
                continue
            vr, vm = attribute.vr, attribute.vm
            column = held[rows].tolist()
            if set(map(type, column)) <= _SCALARS:
                spots = list(zip(map(type, column), column, strict=True))
                bad = {
                    spot: problem
                    for spot in dict.fromkeys(spots)
                    if (problem := _value_problem(vr, vm, _sent(spot[1]))) is not None
                }
                if bad:
                    found.update((int(rows[i]), (s[1], bad[s])) for i, s in enumerate(spots) if s in bad)
                continue
            for row, value in zip(rows.tolist(), column, strict=True):
                problem = _value_problem(vr, vm, _sent(value))
                if problem is not None:
                    found[row] = (value, problem)
        return found

    def reasons(self, document: dict[str, Any], start: int, stop: int, is_primary: bool) -> list[str] | None:
        """``check_updates(document, payload, is_primary=is_primary, keep_edits=False)[0]`` of the payload of
        rows ``start:stop`` (whole runs); None where only the walk can tell (it may refuse)."""
        if self._unchecked[stop] != self._unchecked[start]:
            return None
        if is_primary and self._refused[stop] != self._refused[start]:
            return None
        study = document.get("Study", {})
        every_series = study.get("Series", {})
        if not every_series:
            return None
        runs, levels, keys = self.runs, self.levels, self.keys
        first = bisect.bisect_left(runs, start)
        for a, b in itertools.pairwise(runs[first : bisect.bisect_left(runs, stop) + 1]):
            level = levels[a]
            if level == "Patient":
                node = document.get("Patient", {})
            elif level == "Study":
                node = study
            else:
                node = every_series.get(self.series[a])
                if node is not None and level == "Instance":
                    node = node.get("Instances", {}).get(self.sops[a])
                if node is None:
                    return None
            current = node.get("DICOM") or {}
            if not all(map(current.__contains__, keys[a:b])):
                return None
        low, high = np.searchsorted(self._reasoned, [start, stop]).tolist()
        if is_primary and high > low:
            return None
        return [
            f"{self._path(row)}.DICOM.{keys[row]}: {reason}"
            for row in self._reasoned[low:high].tolist()
            for reason in self._reasons[row]
        ]

    def _path(self, row: int) -> str:
        level = self.levels[row]
        if level in ("Patient", "Study"):
            return level
        if level == "Series":
            return f"Study.Series.{self.series[row]}"
        return f"Study.Series.{self.series[row]}.Instances.{self.sops[row]}"


#: values whose (type, value) is their identity for the checks (hashable, checked as they are sent)
_SCALARS = {str, int, float}


def _walkable(key: str) -> _Attribute | None:
    """What the dictionary says of ``key`` when the walk only checks a set of it; None for a key the walk
    treats otherwise (a UID that keys its node, a hex key, an AHI-generated key)."""
    if key in rules.REKEYING_UIDS or _HEX_KEY.fullmatch(key) or rules.generated_key_refusal(key):
        return None
    return _attribute(key)


def _running_count(flags: np.ndarray) -> np.ndarray:
    """``counts[i]``: how many of ``flags[:i]`` are set (``counts[stop] - counts[start]`` counts a range)."""
    return np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])


def _factorize(keys: list[str]) -> tuple[np.ndarray, list[str]]:
    """Each key's number and the distinct keys (first-seen order)."""
    codes, distinct = pd.factorize(np.asarray(keys, dtype=object))
    return codes.astype(np.int64, copy=False), distinct.tolist()
