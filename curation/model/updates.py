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
- an attribute lives where the document puts it; a new one where :func:`curation.model.levels.level_of` says;
- private and keyword-less tags are keyed by 8 uppercase hex digits, live at instance level and need a VR:
  the instance's ``DICOMVRs`` or the payload's; a hex key that has a keyword must be sent by keyword;
- force is needed for removals by the same rules as for updates; StudyInstanceUID, SeriesInstanceUID and
  SOPInstanceUID cannot be removed at all (they key the document);
- a removal must carry the current value exactly (same JSON: ``1`` is not ``1.0``, key order is ignored);
- one path in both blobs, or an edit inside a removed series/instance, is refused; removing the last instance
  of a series (use the series removal) or the last series of the image set (use DeleteImageSet) is refused;
- a new SOPInstanceUID/SeriesInstanceUID must be a non-empty string not already used in the image set; the
  node is re-keyed in place (same position), all other edits of the call address it by its old UID;
- value compatibility follows pydicom's VR validators plus AHI's JSON typing: text VRs are strings, US/SS/UL/
  SL/SV/UV integers, FL/FD numbers, binary VRs base64 strings, AT 8-hex strings, multi-valued attributes
  (dictionary VM other than 1) arrays with as many values as the VM allows, SQ arrays of objects;
- a revert to a version ``history`` does not know is refused with ValidationException.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
from pydicom import datadict
from pydicom.valuerep import VALIDATORS

from curation.model import rules
from curation.model.document import AHI_GENERATED_KEYS, INSTANCE_SYSTEM_KEYS, parse_document
from curation.model.errors import AHIError
from curation.model.levels import level_of
from curation.model.rules import UID_KEYWORDS
from curation.model.vr import ALL_VRS, BINARY_VRS, FLOAT_VRS, INT_VRS, TEXT_VRS

#: Instance-node keys beside DICOM that AHI maintains itself.
INTERNAL_INSTANCE_KEYS = frozenset(INSTANCE_SYSTEM_KEYS) - {"DICOMVRs"}

_HEX_KEY = re.compile(r"[0-9A-Fa-f]{8}")
_SCHEMA_VERSIONS = (1.1, "1.1")
_VERSION_ID = re.compile(r"\d+")


def _refuse(message: str) -> AHIError:
    return AHIError("ValidationException", message)


@cache
def model_max_blob_bytes() -> int:
    """The maximum length of a DICOMUpdates blob in botocore's ``medical-imaging`` model (30,000 today)."""
    from curation.model.service import shape as model_shape

    shape = model_shape("DICOMUpdates").members["updatableAttributes"]
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
    key: str
    hex_keyed: bool
    private: bool
    standard: bool
    vr: str | None
    vm: str | None


@cache
def _repeater_entries() -> dict[str, tuple[str, str]]:
    return {entry[4]: (entry[0], entry[1]) for entry in datadict.RepeatersDictionary.values()}


@cache
def _attribute(key: str) -> _Attribute:
    if _HEX_KEY.fullmatch(key):
        if key != key.upper():
            raise _refuse(f"tag key {key!r} must be written with 8 uppercase hex digits ({key.upper()})")
        tag = int(key, 16)
        if tag >> 16 & 1:
            return _Attribute(key, True, True, False, None, None)
        keyword = datadict.keyword_for_tag(tag)
        if keyword:
            raise _refuse(f"tag {key} has the keyword {keyword}; AHI metadata keys standard attributes by keyword")
        return _Attribute(key, True, False, False, None, None)
    tag = datadict.tag_for_keyword(key)
    if tag is not None:
        return _Attribute(key, False, False, True, datadict.dictionary_VR(tag), datadict.dictionary_VM(tag))
    if key in _repeater_entries():
        vr, vm = _repeater_entries()[key]
        return _Attribute(key, False, False, True, vr, vm)
    return _Attribute(key, False, False, False, None, None)


def _vm_bounds(vm: str | None) -> tuple[int, int | None]:
    if not vm:
        return 0, None
    low, _, high = vm.partition("-")
    minimum = int(low) if low.isdigit() else 1
    if not high:
        return minimum, minimum
    return minimum, int(high) if high.isdigit() else None


def _pydicom_problem(vr: str, value: Any) -> str | None:
    validator = VALIDATORS.get(vr)
    if validator is None:
        return None
    valid, message = validator(vr, value)
    return None if valid else message.split(" Please see")[0]


_JSON_TYPES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
}


def _element_problem(vr: str, value: Any) -> str | None:
    if value is None:
        return None
    kind = _JSON_TYPES.get(type(value), f"a {type(value).__name__}")
    if vr in TEXT_VRS:
        if not isinstance(value, str):
            return f"VR {vr} is text and takes a JSON string, not {kind}"
        return _pydicom_problem(vr, value)
    if vr in INT_VRS:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"VR {vr} takes a JSON integer, not {kind}"
        return _pydicom_problem(vr, value)
    if vr in FLOAT_VRS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"VR {vr} takes a JSON number, not {kind}"
        return None
    if vr in BINARY_VRS:
        if not isinstance(value, str):
            return f"VR {vr} is binary and takes a base64 JSON string, not {kind}"
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return f"VR {vr} is binary and {value[:40]!r} is not base64"
        return None
    if vr == "AT":
        if not isinstance(value, str) or not re.fullmatch(r"[0-9A-F]{8}", value):
            return "VR AT takes a tag as 8 uppercase hex digits"
        return None
    return None


_SCALAR_TYPES = (str, int, float, bool)
_PROBLEM_CACHE: dict[tuple, str | None] = {}
_PROBLEM_CACHE_SIZE = 65_536


def _frozen(value: Any) -> Any:
    """A hashable key equal only for JSON values of the same types and contents (None for objects)."""
    kind = type(value)
    if kind in _SCALAR_TYPES:
        return kind, value
    if kind is list:
        items = []
        for item in value:
            if type(item) not in _SCALAR_TYPES:
                return None
            items.append((type(item), item))
        return list, tuple(items)
    return None


def value_problem(vr: str | None, vm: str | None, value: Any) -> str | None:
    """Why ``value`` (AHI JSON) is not compatible with VR/VM, or None when it is (or cannot be judged)."""
    if value is None or vr is None:
        return None
    frozen = _frozen(value)
    if frozen is None:
        return _value_problem(vr, vm, value)
    key = (vr, vm, frozen)
    try:
        return _PROBLEM_CACHE[key]
    except KeyError:
        pass
    problem = _value_problem(vr, vm, value)
    if len(_PROBLEM_CACHE) >= _PROBLEM_CACHE_SIZE:
        _PROBLEM_CACHE.clear()
    _PROBLEM_CACHE[key] = problem
    return problem


def _value_problem(vr: str, vm: str | None, value: Any) -> str | None:
    if vr == "SQ":
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            return "VR SQ takes a JSON array of objects"
        return None
    minimum, maximum = _vm_bounds(vm)
    if isinstance(value, list):
        if vm == "1":
            return "the attribute is single-valued (VM 1) and takes one value, not a JSON array"
        if len(value) < minimum or (maximum is not None and len(value) > maximum):
            return f"{len(value)} value(s) do not fit VM {vm}"
        items = value
    else:
        if vm and vm != "1":
            return f"the attribute is multi-valued (VM {vm}) and takes a JSON array"
        items = [value]
    candidates = [part.strip() for part in vr.split(" or ")]
    for item in items:
        problems = [_element_problem(candidate, item) for candidate in candidates]
        if all(problems):
            return problems[0]
    return None


# --- the edit plan ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    """One change an update makes: ``op`` is set, remove, remove_instance or remove_series."""

    op: str
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


def _same_json(left: Any, right: Any) -> bool:
    return orjson.dumps(left, option=orjson.OPT_SORT_KEYS) == orjson.dumps(right, option=orjson.OPT_SORT_KEYS)


class _Planner:
    """Walks the payloads against the document, collecting edits, force reasons and primary refusals."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.edits: list[Edit] = []
        self.reasons: list[str] = []
        self.primary_refusals: list[str] = []
        self._levels: dict[str, set[str]] = {}
        self.series = document.get("Study", {}).get("Series", {})
        self.image_set = document.get("ImageSetID", "<unknown>")

    def levels_holding(self, key: str) -> set[str]:
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

    def walk(self, payload: dict[str, Any], op: str) -> None:
        for key, node in payload.items():
            if key == "SchemaVersion":
                continue
            if key in AHI_GENERATED_KEYS:
                raise _refuse(f"Cannot update the AWS HealthImaging generated attribute {key}")
            if key == "Patient":
                self._dicom_holder(node, "Patient", "Patient", op, allowed=("DICOM",))
            elif key == "Study":
                self._dicom_holder(node, "Study", "Study", op, allowed=("DICOM", "Series"))
                for series_uid, series_node in self._children(node, "Series", "Study.Series").items():
                    self._series(series_uid, series_node, op)
            else:
                raise _refuse(f"unknown top-level key {key!r} in the metadata update; expected Patient or Study")

    def _children(self, node: dict[str, Any], name: str, path: str) -> dict[str, Any]:
        children = node.get(name, {})
        if not isinstance(children, dict):
            raise _refuse(f"{path} must be an object keyed by UID")
        return children

    def _dicom_holder(
        self,
        node: Any,
        level: str,
        path: str,
        op: str,
        *,
        allowed: tuple[str, ...],
        series: str | None = None,
        sop: str | None = None,
    ) -> None:
        if not isinstance(node, dict):
            raise _refuse(f"{path} must be an object")
        for key in node:
            if key not in allowed:
                if key in AHI_GENERATED_KEYS or key in INTERNAL_INSTANCE_KEYS:
                    raise _refuse(f"Cannot update the AWS HealthImaging generated attribute {key} ({path}.{key})")
                raise _refuse(f"{path} has unexpected key {key!r}; allowed: {', '.join(allowed)}")
        dicom = node.get("DICOM", {})
        if not isinstance(dicom, dict):
            raise _refuse(f"{path}.DICOM must be an object of attributes")
        vrs = node.get("DICOMVRs", {})
        if not isinstance(vrs, dict):
            raise _refuse(f"{path}.DICOMVRs must be an object mapping tags to VRs")
        current = self._current_node(level, series, sop)
        current_vrs = current.get("DICOMVRs") or {}
        for key, vr in vrs.items():
            if key not in dicom:
                raise _refuse(f"{path}.DICOMVRs.{key} has no matching {path}.DICOM.{key}")
            if not _HEX_KEY.fullmatch(key):
                raise _refuse(f"{path}.DICOMVRs.{key}: DICOMVRs only holds private and keyword-less tags")
            if vr not in ALL_VRS:
                raise _refuse(f"{path}.DICOMVRs.{key}: {vr!r} is not a DICOM VR")
            if op == "remove" and current_vrs.get(key) != vr:
                raise _refuse(f"{path}.DICOMVRs.{key}: VR {vr} does not match the current VR {current_vrs.get(key)}")
        current_dicom = current.get("DICOM") or {}
        for key, value in dicom.items():
            self._attribute(
                level, f"{path}.DICOM.{key}", key, value, op, series, sop, current, current_dicom, vrs.get(key)
            )

    def _current_node(self, level: str, series: str | None, sop: str | None) -> dict[str, Any]:
        if level == "Patient":
            return self.document.get("Patient", {})
        if level == "Study":
            return self.document.get("Study", {})
        if level == "Series":
            return self.series[series]
        return self.series[series]["Instances"][sop]

    def _series(self, series_uid: str, node: Any, op: str) -> None:
        path = f"Study.Series.{series_uid}"
        if series_uid not in self.series:
            raise _refuse(
                f"Cannot update attributes if the associated attribute module is not present in existing "
                f"ImageSetMetadata: series {series_uid} does not exist in image set {self.image_set} ({path})"
            )
        if not isinstance(node, dict):
            raise _refuse(f"{path} must be an object")
        if op == "remove" and not node:
            self.edits.append(Edit("remove_series", "Series", path, series=series_uid))
            self.primary_refusals.append(f"{path}: {rules.PRIMARY_SERIES_REMOVAL_REFUSAL}")
            return
        self._dicom_holder(node, "Series", path, op, allowed=("DICOM", "Instances"), series=series_uid)
        instances = self.series[series_uid].get("Instances", {})
        for sop_uid, instance_node in self._children(node, "Instances", f"{path}.Instances").items():
            instance_path = f"{path}.Instances.{sop_uid}"
            if sop_uid not in instances:
                raise _refuse(
                    f"Cannot update attributes if the associated attribute module is not present in existing "
                    f"ImageSetMetadata: instance {sop_uid} does not exist in series {series_uid} ({instance_path})"
                )
            if op == "remove" and instance_node == {}:
                self.edits.append(Edit("remove_instance", "Instance", instance_path, series=series_uid, sop=sop_uid))
                continue
            self._dicom_holder(
                instance_node,
                "Instance",
                instance_path,
                op,
                allowed=("DICOM", "DICOMVRs"),
                series=series_uid,
                sop=sop_uid,
            )

    def _attribute(
        self,
        level: str,
        path: str,
        key: str,
        value: Any,
        op: str,
        series: str | None,
        sop: str | None,
        current: dict[str, Any],
        current_dicom: dict[str, Any],
        payload_vr: str | None,
    ) -> None:
        if key in AHI_GENERATED_KEYS or key in INTERNAL_INSTANCE_KEYS:
            raise _refuse(f"Cannot update the AWS HealthImaging generated attribute {key} ({path})")
        attribute = _attribute(key)
        if key not in current_dicom:
            self._check_level(level, key, path)
        vr = attribute.vr
        if attribute.hex_keyed:
            vr = payload_vr or (current.get("DICOMVRs") or {}).get(key)
            if vr is None and op == "set":
                raise _refuse(f"{path}: tag {key} has no VR; give it in DICOMVRs beside DICOM")
        if op == "remove":
            if key not in current_dicom:
                raise _refuse(f"{path}: cannot remove {key}, it does not exist at {level} level")
            if not _same_json(current_dicom[key], value):
                raise _refuse(
                    f"{path}: cannot remove {key}: the value given ({_short(value)}) does not match the existing "
                    f"value ({_short(current_dicom[key])}); key and value must both match"
                )
            if key in UID_KEYWORDS:
                raise _refuse(f"{path}: {key} cannot be removed, it identifies the {level.lower()}")
        self.primary_refusals.extend(f"{path}: {refusal}" for refusal in rules.primary_refusals(level, key, op))
        self._force_reasons(attribute, vr, path, key, value, op)
        self.edits.append(
            Edit(op, level, path, series=series, sop=sop, key=key, value=value, vr=payload_vr if op == "set" else None)
        )

    def _check_level(self, level: str, key: str, path: str) -> None:
        holding = self.levels_holding(key)
        if level in holding:
            return
        if holding:
            where = " and ".join(sorted(holding))
            raise _refuse(
                f"Cannot update attributes across modules: {key} is stored at {where} level in image set "
                f"{self.image_set}, not at {level} level ({path})"
            )
        expected = level_of(key)
        if expected != level:
            raise _refuse(
                f"Cannot update attributes across modules: {key} belongs to the {expected} level, "
                f"not to the {level} level ({path})"
            )

    def _force_reasons(self, attribute: _Attribute, vr: str | None, path: str, key: str, value: Any, op: str) -> None:
        problem = value_problem(vr, attribute.vm, value) if op == "set" else None
        found = rules.force_reasons(
            key, vr=vr, vm=attribute.vm, private=attribute.private, standard=attribute.standard,
            value_problem=f"value {_short(value)}: {problem}" if problem else None,
        )
        self.reasons.extend(f"{path}: {reason}" for reason in found)

    def check_consistency(self) -> None:
        removed_series = {edit.series for edit in self.edits if edit.op == "remove_series"}
        removed_instances = {(edit.series, edit.sop) for edit in self.edits if edit.op == "remove_instance"}
        seen: dict[tuple, str] = {}
        for edit in self.edits:
            if edit.op in ("set", "remove"):
                inside = edit.series in removed_series or (edit.series, edit.sop) in removed_instances
                if inside:
                    raise _refuse(f"{edit.path}: the update edits a series or instance it also removes")
                spot = (*edit.node, edit.key)
                if spot in seen and seen[spot] != edit.op:
                    raise _refuse(
                        f"{edit.path}: the same attribute is in both updatableAttributes and removableAttributes"
                    )
                seen[spot] = edit.op
            elif edit.op == "remove_instance" and edit.series in removed_series:
                raise _refuse(f"{edit.path}: the update removes an instance of a series it also removes")
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
        self._check_new_uids()

    def _check_new_uids(self) -> None:
        used_sops: set[str] | None = None
        new_uids: set[str] = set()
        for edit in self.edits:
            if edit.op != "set" or edit.key not in ("SOPInstanceUID", "SeriesInstanceUID"):
                continue
            if (edit.key == "SOPInstanceUID") != (edit.level == "Instance"):
                continue
            old = edit.sop if edit.key == "SOPInstanceUID" else edit.series
            if edit.value == old:
                continue
            if not isinstance(edit.value, str) or not edit.value:
                raise _refuse(f"{edit.path}: the new {edit.key} must be a non-empty string, it keys the document")
            if used_sops is None:
                used_sops = {sop for series in self.series.values() for sop in series.get("Instances", {})}
            taken = used_sops if edit.key == "SOPInstanceUID" else set(self.series)
            if edit.value in taken or edit.value in new_uids:
                raise _refuse(f"{edit.path}: {edit.key} {edit.value} is already used in image set {self.image_set}")
            new_uids.add(edit.value)


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."


def _plan(document: dict[str, Any], parsed: ParsedUpdates) -> _Planner:
    planner = _Planner(document)
    if parsed.removable is not None:
        planner.walk(parsed.removable, "remove")
    if parsed.updatable is not None:
        planner.walk(parsed.updatable, "set")
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
    return orjson.loads(orjson.dumps(document))


def _node(document: dict[str, Any], edit: Edit) -> dict[str, Any]:
    if edit.level in ("Patient", "Study"):
        return document[edit.level]
    series = document["Study"]["Series"][edit.series]
    return series if edit.level == "Series" else series["Instances"][edit.sop]


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
            return self.own(self.result, edit.level)
        series = self.own(self.series_map(), edit.series)
        return series if edit.level == "Series" else self.own(self.own(series, "Instances"), edit.sop)

    def series_map(self) -> dict[str, Any]:
        study = self.own(self.result, "Study")
        if "Series" not in study:
            return {}
        return self.own(study, "Series")


def _apply_shared(document: dict[str, Any], edits: list[Edit]) -> dict[str, Any]:
    """``_apply_edits`` without the deep copy: the result shares every node it does not change with
    ``document`` (which stays untouched), so it must be treated as read-only."""
    shared = _Shared(document)
    for edit in edits:
        if edit.op == "remove":
            node = shared.node(edit)
            del shared.own(node, "DICOM")[edit.key]
            if _HEX_KEY.fullmatch(edit.key) and isinstance(node.get("DICOMVRs"), dict):
                shared.own(node, "DICOMVRs").pop(edit.key, None)
    for edit in edits:
        if edit.op == "set":
            node = shared.node(edit)
            if "DICOM" in node:
                shared.own(node, "DICOM")[edit.key] = edit.value
            else:
                node["DICOM"] = {edit.key: edit.value}
            if edit.vr is not None:
                if isinstance(node.get("DICOMVRs"), dict):
                    shared.own(node, "DICOMVRs")
                _set_vr(node, edit.key, edit.vr)
    for edit in edits:
        if edit.op == "remove_instance":
            del shared.own(shared.own(shared.series_map(), edit.series), "Instances")[edit.sop]
        elif edit.op == "remove_series":
            del shared.series_map()[edit.series]
    for edit in edits:
        if edit.op == "set" and edit.level == "Instance" and edit.key == "SOPInstanceUID" and edit.value != edit.sop:
            _rekey(shared.own(shared.own(shared.series_map(), edit.series), "Instances"), edit.sop, edit.value)
    for edit in edits:
        if (
            edit.op == "set"
            and edit.level == "Series"
            and edit.key == "SeriesInstanceUID"
            and edit.value != edit.series
        ):
            _rekey(shared.series_map(), edit.series, edit.value)
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
) -> tuple[list[str], list[Edit]]:
    """The planner's fast path: ``(force_reasons(document, updates), the edits)``, the blobs parsed once.

    Raises the same refusals, in the same order, as ``force_reasons`` followed by ``apply_to_document`` of the
    DICOMUpdates ``updates`` with ``force`` set exactly when there are reasons (and ``is_primary``).
    :func:`apply_checked` then gives the document that ``apply_to_document`` would return.
    """
    max_blob_bytes = model_max_blob_bytes() if max_blob_bytes is None else max_blob_bytes
    updatable, removable = _parse_dicom_updates(updates, max_blob_bytes)
    planner = _plan(document, ParsedUpdates(updatable, removable, None, False, False))
    if is_primary and planner.primary_refusals:
        raise _refuse(planner.primary_refusals[0])
    if planner.reasons and is_primary:
        why = "; ".join(planner.reasons)
        raise _refuse(f"The force flag cannot override DICOM metadata constraints on a primary image set: {why}")
    return list(planner.reasons), planner.edits


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
    if parsed.is_revert:
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
