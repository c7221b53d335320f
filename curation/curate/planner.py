"""From a ChangeSet to the fewest validated UpdateImageSetMetadata requests: ``plan`` and ``revert_plan``.

Choices (documented because AHI leaves them to the caller):

- Fewest requests first. Per image set, every change normally goes out in ONE request carrying an
  ``updatableAttributes`` and a ``removableAttributes`` blob. AHI's strict rules (see ``curation.model.updates``)
  refuse one path in both blobs and edits inside a node the same call removes: a ChangeSet never puts one
  attribute in both (one row per attribute; conflicting rows are a problem), and edits of an instance or series
  that is also removed are dropped (the removal makes them moot: same resulting document, fewer requests).
  Removing every instance of a series is sent as the removal of the series (AHI refuses the former). When the
  one request is refused but the removals sent first and the rest after are not (an attribute moved from the
  instances to their series), the image set gets those two requests, in that order.
- ``force`` is set on a request when, and only when, its own content needs it (``update.force_reasons`` on the
  document as it will be when that request runs); the reasons are listed on the request. Unforced changes are
  not moved to a separate request to avoid riding on a forced one: that would cost a request (0.25 per second)
  and force lifts nothing that was not already allowed.
- Each blob is at most ``max_blob_bytes`` long, measured exactly as sent (compact JSON from orjson, the
  ``"SchemaVersion": 1.1`` wrapper included). Larger change sets are split greedily in a fixed order: Patient
  attributes, Study attributes, then each series by UID (its attributes, its instances by SOPInstanceUID, each
  instance whole when it fits, and its SeriesInstanceUID change last so earlier requests address the series by
  its old UID). An instance too large for one blob is split by attribute (its SOPInstanceUID change last); a
  single attribute that alone exceeds the limit is a problem naming it.
- Every request is run through ``update.check_updates`` (exactly ``force_reasons`` then ``apply_to_document``,
  with the blobs parsed once) on the snapshot's document, chained per image set by ``update.apply_checked``
  (copies only the edited nodes), with the image set's primary flag, so what AHI would refuse is found before
  anything is sent. The primary
  flags come from ``snapshot.primary`` (image set -> bool); an image set without a flag is treated as primary
  (strict) and the problem says so. An image set with any problem is planned not at all (never partially).
- ``include_study_image_sets=True`` folds a Patient/Study-level change that every primary image set of a study
  in the snapshot makes identically (same path, same payload) into the first of them (by ImageSetID): its
  request gets ``includeStudyImageSets`` and lists the others in ``affects``; their own requests drop it. AHI
  applies such a request to every primary image set of the study, so folding assumes the snapshot holds all
  of them, and a study with an image set whose primary flag is unknown is not folded (folding onto an image set
  that turns out not to be primary would silently skip its change). Requests with ``affects`` come first in
  ``requests`` and bump the affected image sets' versions: whoever applies the plan must run them first and
  refresh those image sets' latest versions.
- ``primary="promote"`` (default ``"refuse"``): an image set whose changes a primary image set refuses is
  planned, whole, as AHI's copy-and-promote procedure (``curation.curate.procedure``: ``UpdatePlan.steps``),
  its changes packed by the same packer on a non-primary copy; image sets whose changes AHI accepts on a primary
  keep their plain requests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd

from curation.curate.changeset import OPERATIONS, PROBLEM_COLUMNS, ChangeSet, empty_problems
from curation.curate.payloads import Group, simple_groups
from curation.curate.payloads import build as build_groups
from curation.curate.procedure import Hooks, PrimaryMode, Procedures
from curation.curate.updateplan import (
    SCHEMA_VERSION,
    UNKNOWN_PRIMARY,
    PlanError,
    PlannedRequest,
    PlannedStep,
    Undo,
    UpdatePlan,
    _json_default,
    _jsonable,
    snapshot_digest,
)
from curation.frames.flattening import NULL
from curation.frames.gcpause import gc_paused
from curation.model.document import LEVELS
from curation.model.errors import AHIError
from curation.model.rules import PRIMARY_WORKAROUND
from curation.model.updates import apply_checked, check_updates, force_reasons, study_part

__all__ = ["plan", "revert_plan"]

_EMPTY_BLOB_SIZE = len(orjson.dumps({"SchemaVersion": SCHEMA_VERSION}))
_ATTRIBUTE_OPS = ("add", "update", "remove")
_HEX_KEY = re.compile(r"[0-9A-Fa-f]{8}")


# --- changes -> fragments ----------------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    """A ChangeSet value as the JSON value sent (NULL -> null, NumPy scalars -> Python, tuples -> lists)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool:
        return value
    if kind is float:
        return None if value != value else value
    if kind is list:
        return [v if type(v) is str else _json_value(v) for v in value]
    if value is NULL or _missing(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_json_value(v) for v in value.tolist()]
    return value


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and value != value


@dataclass(slots=True)
class _Change:
    """One ChangeSet row, resolved against the current document."""

    image_set: str
    level: str
    series: str | None
    sop: str | None
    attribute: str | None
    op: str
    new: Any
    vr: str | None
    row: Any
    column: Any
    old: Any = None  # as in the ChangeSet; _json_value when used
    fragments: list[tuple[str, tuple[str, ...], Any]] = field(default_factory=list)

    @property
    def spot(self) -> tuple:
        return self.level, self.series, self.sop, self.attribute

    def describe(self) -> str:
        if self.op == "remove_instance":
            return f"remove instance {self.sop}"
        if self.op == "remove_series":
            return f"remove series {self.series}"
        where = self.level
        if self.level == "Series":
            where = f"series {self.series}"
        elif self.level == "Instance":
            where = f"instance {self.sop}"
        if self.op == "remove":
            return f"remove {self.attribute} ({where})"
        return f"{self.op} {self.attribute} = {_short(self.fragments[0][2])} ({where})"

    def problem(self, reason: str) -> dict[str, Any]:
        return {
            "ImageSetID": self.image_set,
            "row": self.row,
            "column": self.column,
            "attribute": self.attribute,
            "reason": reason,
        }


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def _node_path(change: _Change) -> tuple[str, ...]:
    if change.level == "Patient":
        return ("Patient",)
    if change.level == "Study":
        return ("Study",)
    if change.level == "Series":
        return ("Study", "Series", str(change.series))
    return ("Study", "Series", str(change.series), "Instances", str(change.sop))


def _current_node(document: dict[str, Any], change: _Change) -> dict[str, Any] | None:
    node: Any = document
    for key in _node_path(change):
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _fragments(change: _Change, document: dict[str, Any], vrs: Mapping[str, str]) -> None:
    """The (blob, path, value) fragments that express one change."""
    path = _node_path(change)
    op = change.op
    if op == "remove_instance":
        change.fragments = [("r", path, {})]
        return
    if op == "remove_series":
        change.fragments = [("r", ("Study", "Series", str(change.series)), {})]
        return
    key = str(change.attribute)
    if op != "remove" and (change.level != "Instance" or len(key) != 8 or not _HEX_KEY.fullmatch(key)):
        change.fragments = [("u", (*path, "DICOM", key), change.new)]
        return
    node = _current_node(document, change) or {}
    dicom = node.get("DICOM") or {}
    if change.op == "remove":
        current = dicom[key] if key in dicom else _json_value(change.old)
        change.fragments = [("r", (*path, "DICOM", key), current)]
        return
    change.fragments = [("u", (*path, "DICOM", key), change.new)]
    if _HEX_KEY.fullmatch(key) and change.level == "Instance" and key not in (node.get("DICOMVRs") or {}):
        vr = change.vr if isinstance(change.vr, str) and len(change.vr) == 2 else vrs.get(key)
        if vr:
            change.fragments.append(("u", (*path, "DICOMVRs", key), vr))


def _read_changes(
    table: pd.DataFrame, snapshot: Any, problems: list[dict[str, Any]], first: dict[str, int] | None = None
) -> dict[str, list[_Change]]:
    """ChangeSet rows -> _Change per image set (first-seen order); malformed rows become problems. ``first``
    (when given) gets the position of each image set's first row kept."""
    out: dict[str, list[_Change]] = {}
    documents = snapshot.documents
    count = len(table)

    def column(name: str) -> list[Any]:
        if name not in table.columns:
            return [None] * count
        return table[name].to_numpy(dtype=object).tolist()

    def present(name: str) -> list[Any]:
        return [v if type(v) is str else (None if _missing(v) else v) for v in column(name)]

    def json_values(name: str) -> list[Any]:
        return [v if type(v) is str else _json_value(v) for v in column(name)]

    rows = zip(
        column("ImageSetID"),
        column("level"),
        present("SeriesInstanceUID"),
        present("SOPInstanceUID"),
        present("attribute"),
        column("op"),
        json_values("new"),
        present("VR"),
        column("row"),
        column("column"),
        column("old"),
        strict=True,
    )
    known: set[str] = set()
    for position, values in enumerate(rows):
        change = _Change(*values)
        image_set = change.image_set
        reason = None
        if image_set not in known:
            if image_set in documents:
                known.add(image_set)
            else:
                reason = f"image set {image_set} is not in the snapshot"
        reason = reason or _malformed(change)
        if reason:
            problems.append(change.problem(reason))
            continue
        if image_set not in out and first is not None:
            first[image_set] = position
        out.setdefault(image_set, []).append(change)
    return out


def _malformed(change: _Change) -> str | None:
    """Why a ChangeSet row cannot be planned as it is written (None when it can); node removals get their
    level."""
    op, level = change.op, change.level
    if op not in OPERATIONS:
        return f"unknown operation {op!r}; expected one of {', '.join(OPERATIONS)}"
    if op == "remove_series":
        change.level = "Series"
        return "remove_series needs a SeriesInstanceUID" if change.series is None else None
    if op == "remove_instance":
        change.level = "Instance"
        if change.series is None or change.sop is None:
            return "remove_instance needs a SeriesInstanceUID and a SOPInstanceUID"
        return None
    if level not in LEVELS:
        return f"unknown level {level!r}"
    if not isinstance(change.attribute, str) or not change.attribute:
        return f"{op} needs an attribute"
    if level in ("Series", "Instance") and change.series is None:
        return f"a {level}-level change needs a SeriesInstanceUID"
    if level == "Instance" and change.sop is None:
        return "an Instance-level change needs a SOPInstanceUID"
    return None


def _normalize(
    image_set: str, changes: list[_Change], document: dict[str, Any], problems: list[dict[str, Any]]
) -> list[_Change]:
    """Drop duplicates and edits made moot by a removal; all instances removed -> the series removed."""
    series_nodes = (document.get("Study") or {}).get("Series") or {}
    removed_series = {c.series for c in changes if c.op == "remove_series"}
    removed_instances: dict[Any, set[Any]] = {}
    for change in changes:
        if change.op == "remove_instance" and change.series not in removed_series:
            removed_instances.setdefault(change.series, set()).add(change.sop)
    for series, sops in removed_instances.items():
        existing = set((series_nodes.get(series) or {}).get("Instances") or {})
        if existing and existing <= sops:
            removed_series.add(series)
    kept: list[_Change] = []
    seen: dict[tuple, _Change] = {}
    series_rows: dict[Any, _Change] = {}
    instance_rows: set[tuple] = set()
    for change in changes:
        if change.series in removed_series:
            if change.op in ("remove_series", "remove_instance") and change.series not in series_rows:
                series_rows[change.series] = _Change(
                    image_set,
                    "Series",
                    change.series,
                    None,
                    None,
                    "remove_series",
                    None,
                    None,
                    change.row if change.op == "remove_series" else None,
                    change.column,
                )
            elif change.op == "remove_series":
                series_rows[change.series].row = change.row
            continue
        if change.op == "remove_instance":
            if (change.series, change.sop) not in instance_rows:
                instance_rows.add((change.series, change.sop))
                kept.append(change)
            continue
        if change.level == "Instance" and change.sop in removed_instances.get(change.series, ()):
            continue
        previous = seen.get(change.spot)
        if previous is not None:
            if previous.op == change.op and _same(previous.new, change.new):
                continue
            problems.append(
                change.problem(
                    f"conflicting changes of {change.attribute} at {change.level} level: {previous.op} "
                    f"{_short(previous.new)} (row {previous.row}) and {change.op} {_short(change.new)}"
                )
            )
            continue
        seen[change.spot] = change
        kept.append(change)
    return kept + list(series_rows.values())


def _same(left: Any, right: Any) -> bool:
    return orjson.dumps(left, option=orjson.OPT_SORT_KEYS) == orjson.dumps(right, option=orjson.OPT_SORT_KEYS)


# --- packing -------------------------------------------------------------------------------------------------


class _Blob:
    """A payload being built, with its exact compact-JSON size maintained as paths are added."""

    def __init__(self) -> None:
        self.root: dict[str, Any] = {"SchemaVersion": SCHEMA_VERSION}
        self.size = _EMPTY_BLOB_SIZE
        self.count = 0

    def add(self, path: tuple[str, ...], value: Any) -> tuple[dict, str, int]:
        point = _insertion_point(self.root, path)
        if point is None:
            raise ValueError(f"path {'.'.join(path)} is set twice in one payload (or is empty)")
        node, depth = point
        key = path[depth]
        sub = value
        for inner in reversed(path[depth + 1 :]):
            sub = {inner: sub}
        delta = (1 if node else 0) + len(orjson.dumps(key)) + 1 + len(orjson.dumps(sub))
        node[key] = sub
        self.size += delta
        self.count += 1
        return node, key, delta

    def undo(self, entry: tuple[dict, str, int]) -> None:
        node, key, delta = entry
        del node[key]
        self.size -= delta
        self.count -= 1

    def text(self) -> str:
        return orjson.dumps(self.root).decode()


@dataclass
class _Unit:
    """Changes that go in the same request when they fit (one instance, or one attribute)."""

    changes: list[_Change]

    def atoms(self) -> list[_Unit]:
        return [_Unit([change]) for change in self.changes]


class _Pending:
    """A request being filled."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.blobs = {"u": _Blob(), "r": _Blob()}
        self.changes: list[_Change] = []

    @property
    def empty(self) -> bool:
        return not self.changes

    def try_add(self, unit: _Unit) -> bool:
        entries = []
        blobs = self.blobs
        try:
            for change in unit.changes:
                for kind, path, value in change.fragments:
                    entries.append((kind, blobs[kind].add(path, value)))
        except ValueError:
            fits = False
        else:
            fits = blobs["u"].size <= self.limit and blobs["r"].size <= self.limit
        if not fits:
            for kind, entry in reversed(entries):
                self.blobs[kind].undo(entry)
            return False
        self.changes.extend(unit.changes)
        return True

    def updates(self) -> dict[str, str]:
        out = {}
        if self.blobs["u"].count:
            out["updatableAttributes"] = self.blobs["u"].text()
        if self.blobs["r"].count:
            out["removableAttributes"] = self.blobs["r"].text()
        return out


def _units(changes: list[_Change]) -> list[_Unit]:
    """Changes in the fixed packing order: Patient, Study, then each series (attributes, instances, UID)."""

    def by_attribute(change: _Change) -> tuple:
        return (change.attribute in ("SOPInstanceUID", "SeriesInstanceUID"), change.attribute or "")

    top: dict[str, list[_Change]] = {"Patient": [], "Study": []}
    series_changes: dict[Any, list[_Change]] = {}
    instance_changes: dict[Any, dict[Any, list[_Change]]] = {}
    for change in changes:
        if change.level in top:
            top[change.level].append(change)
        elif change.level == "Series":
            series_changes.setdefault(change.series, []).append(change)
        else:
            instance_changes.setdefault(change.series, {}).setdefault(change.sop, []).append(change)
    units: list[_Unit] = []
    for level in ("Patient", "Study"):
        units.extend(_Unit([c]) for c in sorted(top[level], key=by_attribute))
    for series in sorted(set(series_changes) | set(instance_changes)):
        attributes = sorted(series_changes.get(series, []), key=by_attribute)
        removal = [c for c in attributes if c.op == "remove_series"]
        if removal:
            units.append(_Unit(removal[:1]))
            continue
        units.extend(_Unit([c]) for c in attributes if c.attribute != "SeriesInstanceUID")
        instances = instance_changes.get(series, {})
        units.extend(_Unit(sorted(instances[sop], key=by_attribute)) for sop in sorted(instances))
        units.extend(_Unit([c]) for c in attributes if c.attribute == "SeriesInstanceUID")
    return units


def _whole(units: list[_Unit], limit: int) -> _Pending | None:
    """All ``units`` in one request when they fit (what the greedy packing gives then), else None.

    The blobs are built without keeping their size up to date and measured once at the end: a blob's compact
    JSON only grows as paths are added, so when the whole fits, every unit fits in turn and the greedy packing
    puts them all in this one request, in this order. A path set twice (the greedy packing would start a new
    request there) also gives None.
    """
    pending = _Pending(limit)
    roots = {"u": pending.blobs["u"].root, "r": pending.blobs["r"].root}
    parents: dict[str, dict[tuple[str, ...], dict[str, Any]]] = {"u": {}, "r": {}}
    counts = {"u": 0, "r": 0}
    for unit in units:
        for change in unit.changes:
            for kind, path, value in change.fragments:
                known = parents[kind]
                parent = known.get(path[:-1])
                if parent is None:
                    parent = _put_path(roots[kind], path, value)
                    if parent is None:
                        return None
                    known[path[:-1]] = parent
                elif path[-1] in parent:
                    return None
                else:
                    parent[path[-1]] = value
                counts[kind] += 1
    for kind, blob in pending.blobs.items():
        blob.count = counts[kind]
        blob.size = len(orjson.dumps(blob.root))
        if blob.size > limit:
            return None
    pending.changes = [change for unit in units for change in unit.changes]
    return pending


def _insertion_point(node: dict[str, Any], path: tuple[str, ...]) -> tuple[dict[str, Any], int] | None:
    """Where setting ``path`` adds its first new key: the object and the key's depth in ``path`` (the objects on
    the way exist); None when the path is already set (or empty)."""
    last = len(path) - 1
    for depth, key in enumerate(path):
        if depth != last:
            child = node.get(key)
            if isinstance(child, dict):
                node = child
                continue
        return None if key in node else (node, depth)
    return None


def _put_path(root: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any] | None:
    """``_Blob.add`` without the size: set ``path`` to ``value``; returns the object that holds the last key
    (``_whole`` puts the next value with the same parent path straight in it), None when the path is already
    set."""
    point = _insertion_point(root, path)
    if point is None:
        return None
    node, depth = point
    key = path[depth]
    for inner in path[depth + 1 :]:
        node[key] = node = {}
        key = inner
    node[key] = value
    return node


def _pack(units: list[_Unit], limit: int, problems: list[dict[str, Any]]) -> list[_Pending]:
    """Greedy, deterministic packing of units into requests whose blobs stay within ``limit`` bytes."""
    whole = _whole(units, limit)
    if whole is not None:
        return [whole] if not whole.empty else []
    done: list[_Pending] = []
    current = _Pending(limit)

    def place(unit: _Unit) -> bool:
        nonlocal current
        if current.try_add(unit):
            return True
        if not current.empty:
            done.append(current)
            current = _Pending(limit)
            return current.try_add(unit)
        return False

    for unit in units:
        if place(unit):
            continue
        for atom in unit.atoms():
            if not place(atom):
                change = atom.changes[0]
                alone = _Pending(10**12)
                alone.try_add(atom)
                size = max(blob.size for blob in alone.blobs.values())
                problems.append(
                    change.problem(f"{change.describe()} alone needs a {size}-byte blob; the limit is {limit} bytes")
                )
    if not current.empty:
        done.append(current)
    return done


# --- validation --------------------------------------------------------------------------------------------


def _params(datastore_id: str, image_set: str, updates: dict[str, str]) -> dict[str, Any]:
    return {
        "datastoreId": datastore_id,
        "imageSetId": image_set,
        "updateImageSetMetadataUpdates": {"DICOMUpdates": updates},
    }


def _with_force(document: dict[str, Any], params: dict[str, Any], limit: int) -> tuple[dict[str, Any], list[str]]:
    """``params`` with force set when its content needs it, and the reasons (raises refusals)."""
    reasons = force_reasons(document, params["updateImageSetMetadataUpdates"]["DICOMUpdates"], max_blob_bytes=limit)
    if reasons:
        params = {**params, "force": True}
    return params, reasons


def _primary_reason(message: str, flag: bool | None) -> str:
    reason = f"ValidationException: {message}. {PRIMARY_WORKAROUND}"
    return f"{reason} ({UNKNOWN_PRIMARY})" if flag is None else reason


def _row_problems(
    datastore_id: str,
    image_set: str,
    document: dict[str, Any],
    changes: list[_Change],
    flag: bool | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Each change alone against the current document: which ones AHI refuses and why."""
    primary = flag is None or flag
    found = []
    for change in changes:
        pending = _Pending(10**12)
        pending.try_add(_Unit([change]))
        updates = pending.updates()
        # check_updates + apply_checked raise what force_reasons + apply_to_document would, without the deep
        # copy of the document per change (quadratic on a large image set with many refused changes)
        try:
            _, edits = check_updates(document, updates, is_primary=False, max_blob_bytes=limit)
            apply_checked(document, edits)
        except AHIError as exc:
            found.append(change.problem(f"{exc.code}: {exc.message}"))
            continue
        if primary:
            try:
                check_updates(document, updates, is_primary=True, max_blob_bytes=limit)
            except AHIError as exc:
                found.append(change.problem(_primary_reason(exc.message, flag)))
    return found


@dataclass
class _Planned:
    requests: list[tuple[dict[str, Any], list[str], list[_Change]]]
    #: each request's description when made without _Change objects (``_plan_group``)
    descriptions: list[str] | None = None


def _plan_image_set(
    datastore_id: str,
    image_set: str,
    document: dict[str, Any],
    groups: list[tuple[list[_Unit], bool]],
    flag: bool | None,
    limit: int,
    problems: list[dict[str, Any]],
    diagnose: bool = True,
) -> _Planned | None:
    """Pack and validate one image set's units (groups packed separately, flagged ones with
    includeStudyImageSets); None with ``problems`` extended when anything is refused (each change tried alone
    to name the rows at fault, unless ``diagnose`` is False: then one problem for the request)."""
    primary = flag is None or flag
    pending: list[tuple[_Pending, bool]] = []
    before = len(problems)
    for units, flagged in groups:
        pending.extend((p, flagged) for p in _pack(units, limit, problems))
    if len(problems) > before:
        return None
    current = document
    requests = []
    edits: list = []
    for request, flagged in pending:
        params = _params(datastore_id, image_set, request.updates())
        if flagged:
            params["includeStudyImageSets"] = True
        try:
            if edits:
                current = apply_checked(current, edits)
            updates = params["updateImageSetMetadataUpdates"]["DICOMUpdates"]
            reasons, edits = check_updates(current, updates, is_primary=primary, max_blob_bytes=limit)
        except AHIError as exc:
            changes = [c for p, _ in pending for c in p.changes]
            found = _row_problems(datastore_id, image_set, document, changes, flag, limit) if diagnose else []
            if not found:
                rows = sorted({str(c.row) for c in request.changes if c.row is not None})
                message = f"{exc.code}: {exc.message}"
                if primary and "primary" in exc.message:
                    message = _primary_reason(exc.message, flag)
                found = [
                    {
                        "ImageSetID": image_set,
                        "row": None,
                        "column": None,
                        "attribute": None,
                        "reason": f"{message} (changes of rows {', '.join(rows) or '-'} together)",
                    }
                ]
            problems.extend(found)
            return None
        if reasons:
            params = {**params, "force": True}
        requests.append((params, reasons, request.changes))
    return _Planned(requests)


def _description(changes: list[_Change]) -> str:
    if len(changes) <= 3:
        return "; ".join(c.describe() for c in changes)
    counts: dict[str, int] = {}
    for change in changes:
        counts[change.op] = counts.get(change.op, 0) + 1
    names = {
        "add": "addition",
        "update": "update",
        "remove": "removal",
        "remove_instance": "instance removal",
        "remove_series": "series removal",
    }
    nodes = {(c.level, c.series, c.sop) for c in changes}
    text = ", ".join(f"{n} {names[op]}{'s' if n > 1 else ''}" for op, n in counts.items())
    return f"{len(changes)} changes ({text}) on {len(nodes)} node(s)"


# --- folding -----------------------------------------------------------------------------------------------


def _fold_key(change: _Change) -> bytes:
    return orjson.dumps([[k, list(p), v] for k, p, v in change.fragments], option=orjson.OPT_SORT_KEYS)


def _study_uid(document: dict[str, Any]) -> Any:
    return ((document.get("Study") or {}).get("DICOM") or {}).get("StudyInstanceUID")


def _folds(
    per_image_set: dict[str, list[_Change]], documents: Mapping[str, dict[str, Any]], flags: Mapping[str, Any]
) -> dict[str, tuple[list[str], set[bytes]]]:
    """carrier image set -> (siblings, fold keys of the changes every primary image set of the study makes)."""
    studies: dict[Any, list[str]] = {}
    for image_set, document in documents.items():
        if flags.get(image_set) is not False and _study_uid(document) is not None:
            studies.setdefault(_study_uid(document), []).append(image_set)
    out = {}
    for members in studies.values():
        members = sorted(members)
        if len(members) < 2 or any(m not in per_image_set or flags.get(m) is None for m in members):
            continue
        common: set[bytes] | None = None
        for member in members:
            keys = {
                _fold_key(c)
                for c in per_image_set[member]
                if c.level in ("Patient", "Study") and c.op in _ATTRIBUTE_OPS
            }
            common = keys if common is None else common & keys
        if common:
            out[members[0]] = (members[1:], common)
    return out


# --- entry points ------------------------------------------------------------------------------------------


def _primary_flags(snapshot: Any) -> dict[str, bool]:
    flags = getattr(snapshot, "primary", None)
    if flags is None:
        return {}
    return {k: bool(v) for k, v in dict(flags).items() if v is not None and not _missing(v)}


def _problems_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    records = list(records)
    if not records:
        return empty_problems()
    return pd.DataFrame({name: pd.Series([r.get(name) for r in records], dtype=object) for name in PROBLEM_COLUMNS})


def _merge_problems(first: pd.DataFrame, found: list[dict[str, Any]]) -> pd.DataFrame:
    """The ChangeSet's problems, then the planner's (a planner problem about a cell the ChangeSet already
    reports is not repeated)."""
    if not len(first):
        return _problems_frame(found)
    first = first.astype(object)
    for name in PROBLEM_COLUMNS:
        if name not in first.columns:
            first[name] = pd.Series([None] * len(first), dtype=object, index=first.index)
    first = first[list(PROBLEM_COLUMNS)]
    known = {_problem_key(record) for record in first.to_dict("records")}
    extra = [p for p in found if p["row"] is None or _problem_key(p) not in known]
    return pd.concat([first, _problems_frame(extra)], ignore_index=True) if extra else first.reset_index(drop=True)


def _problem_key(record: Mapping[Any, Any]) -> bytes:
    return orjson.dumps([_jsonable(record.get(name)) for name in PROBLEM_COLUMNS[:4]], default=_json_default)


def plan(
    changes: ChangeSet,
    *,
    primary: PrimaryMode | Literal["refuse", "promote"] = "refuse",
    max_blob_bytes: int = 30_000,
    include_study_image_sets: bool = False,
    allow_problems: bool = False,
) -> UpdatePlan:
    """The fewest validated UpdateImageSetMetadata requests that express ``changes`` (see the module docstring).

    ``primary``: what to do with the changes AHI refuses on a primary image set. ``"refuse"`` (the default)
    reports them as problems, each naming the other value; ``"promote"`` plans, for each image set whose
    changes a primary refuses, AHI's documented copy-and-promote procedure as ordered steps
    (``curation.curate.procedure``; the image set ID changes when it is applied), while changes AHI accepts
    on a primary stay plain updates.

    Raises ``PlanError`` listing every problem (the ChangeSet's and the refusals found by validation) unless
    ``allow_problems``. With ``allow_problems`` the problems are carried and every image set whose requests
    pass validation is planned: an image set with a refusal is left out whole, while the changes the ChangeSet
    kept despite its own problems (e.g. a value breaking a VR rule, which ``force`` lets through) are sent.
    """
    mode = PrimaryMode.parse(primary)
    with gc_paused():
        return _plan(
            changes,
            primary=mode,
            max_blob_bytes=max_blob_bytes,
            include_study_image_sets=include_study_image_sets,
            allow_problems=allow_problems,
        )


def _plan(
    changes: ChangeSet,
    *,
    primary: PrimaryMode = PrimaryMode.REFUSE,
    max_blob_bytes: int = 30_000,
    include_study_image_sets: bool = False,
    allow_problems: bool = False,
) -> UpdatePlan:
    snapshot = changes.snapshot
    if snapshot is None:
        raise ValueError("the ChangeSet has no snapshot: plan needs the documents the edits were made on")
    limit = int(max_blob_bytes)
    documents = snapshot.documents
    datastore_id = snapshot.datastore_id
    flags = _primary_flags(snapshot)
    problems: list[dict[str, Any]] = []
    fast = primary is PrimaryMode.REFUSE and not include_study_image_sets
    per_image_set = _prepared(changes, snapshot, problems, fast)
    procedures = _procedures(snapshot, flags, limit, changes.vrs) if primary is PrimaryMode.PROMOTE else None
    lists = {k: v for k, v in per_image_set.items() if isinstance(v, list)}  # all of them when folding
    folds = _folds(lists, documents, flags) if include_study_image_sets else {}
    planned: dict[str, _Planned] = {}
    affects: dict[str, list[str]] = {}
    start: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for carrier, (siblings, keys) in folds.items():
        folded = _plan_fold(datastore_id, carrier, siblings, keys, lists, documents, flags, limit)
        if folded is None:
            continue
        planned[carrier], after = folded
        affects[carrier] = siblings
        order.append(carrier)
        for sibling in siblings:
            start[sibling] = after[sibling]
            per_image_set[sibling] = [c for c in lists[sibling] if _fold_key(c) not in keys]
    for image_set, items in per_image_set.items():
        if image_set in planned:
            continue
        if image_set not in order:
            order.append(image_set)
        document = start.get(image_set, documents[image_set])
        result = _plan_items(changes, image_set, document, items, flags.get(image_set), limit, procedures, problems)
        if result is not None:
            planned[image_set] = result

    bad = {p["ImageSetID"] for p in problems if not _missing(p["ImageSetID"])}
    for carrier in list(affects):
        if bad & {carrier, *affects[carrier]}:
            bad |= {carrier, *affects[carrier]}
    requests, base_versions = _requests(order, bad, planned, affects, snapshot, start)
    steps: list[PlannedStep] = []
    undo: dict[str, Undo] = {}
    first = changes.problems
    if procedures is not None:
        steps, undo, found = procedures.build(requests, base_versions, bad)
        problems.extend(found)
        first = procedures.kept_problems(first)
    problem_frame = _merge_problems(first, problems)
    if len(problem_frame) and not allow_problems:
        raise PlanError(problem_frame)
    return UpdatePlan.build(datastore_id, base_versions, requests, problem_frame, steps, undo)


def _plan_items(
    changes: ChangeSet,
    image_set: str,
    document: dict[str, Any],
    items: list[_Change] | Group,
    flag: bool | None,
    limit: int,
    procedures: Procedures | None,
    problems: list[dict[str, Any]],
) -> _Planned | None:
    """One image set planned: its payload group as it is when AHI takes it, else the general path."""
    datastore_id = changes.snapshot.datastore_id
    if isinstance(items, Group):
        result = _plan_group(datastore_id, image_set, document, items, flag, limit)
        if result is not None:
            return result
        items = _group_changes(changes, changes.snapshot, items, problems)
    if not items:
        return None
    return _plan_or_take(datastore_id, image_set, document, items, flag, limit, procedures, problems)


def _plan_or_take(
    datastore_id: str,
    image_set: str,
    document: dict[str, Any],
    items: list[_Change],
    flag: bool | None,
    limit: int,
    procedures: Procedures | None,
    problems: list[dict[str, Any]],
) -> _Planned | None:
    """The image set's plain requests; else, with procedures, the image set taken as a procedure member (None);
    else None with ``problems`` extended. The rows at fault are named (each change tried alone) only when the
    image set is neither planned nor taken."""
    found: list[dict[str, Any]] = []
    result = _plan_one(datastore_id, image_set, document, items, flag, limit, found, procedures is None)
    if result is not None:
        return result
    if procedures is None:
        problems.extend(found)
        return None
    refused: list[dict[str, Any]] = []
    if not procedures.take(image_set, document, items, refused):
        diagnosed: list[dict[str, Any]] = []
        _plan_one(datastore_id, image_set, document, items, flag, limit, diagnosed)
        problems.extend(diagnosed + refused)
    return None


def _procedures(snapshot: Any, flags: Mapping[str, bool], limit: int, vrs: Mapping[str, str]) -> Procedures:
    """The copy-and-promote builder, with the planner's packing, fragments and descriptions as its hooks."""

    def pack(
        image_set: str, document: dict[str, Any], items: list[_Change], is_primary: bool, found: list[dict[str, Any]]
    ) -> list[Any] | None:
        result = _plan_one(snapshot.datastore_id, image_set, document, items, is_primary, limit, found)
        return None if result is None else result.requests

    def replan(inverse: ChangeSet) -> UpdatePlan:
        return _plan(inverse, max_blob_bytes=limit, allow_problems=True)

    return Procedures(snapshot, flags, limit, Hooks(pack, lambda c, d: _fragments(c, d, vrs), _description, replan))


def _prepared(
    changes: ChangeSet, snapshot: Any, problems: list[dict[str, Any]], fast: bool = False
) -> dict[str, list[_Change] | Group]:
    """The ChangeSet's rows per image set (first-seen order), normalized, each with the payload fragments that
    express it; with ``fast``, an image set of plain changes is its payload group instead (``payloads``)."""
    documents = snapshot.documents
    table = changes.changes
    groups = simple_groups(table, documents) if fast else {}
    built = build_groups(table, groups, _json_value, SCHEMA_VERSION)
    first: dict[str, int] = {}
    if built:
        taken = np.zeros(len(table), dtype=bool)
        for rows in groups.values():
            taken[rows] = True
        rest = np.flatnonzero(~taken)
        per_image_set = _read_changes(table.take(rest), snapshot, problems, first)
        first = {image_set: int(rest[position]) for image_set, position in first.items()}
    else:
        per_image_set = _read_changes(table, snapshot, problems)
    out: dict[str, list[_Change] | Group] = {}
    for image_set, items in per_image_set.items():
        out[image_set] = _expressed(image_set, items, documents[image_set], changes.vrs, problems)
    if not built:
        return out
    first.update({image_set: int(groups[image_set][0]) for image_set in built})
    out.update(built)
    return {image_set: out[image_set] for image_set in sorted(out, key=first.__getitem__)}


def _expressed(
    image_set: str, items: list[_Change], document: dict[str, Any], vrs: Mapping[str, str], problems: list
) -> list[_Change]:
    """One image set's changes normalized, each with its fragments."""
    items = _normalize(image_set, items, document, problems)
    for change in items:
        _fragments(change, document, vrs)
    return items


def _group_changes(changes: ChangeSet, snapshot: Any, group: Group, problems: list) -> list[_Change]:
    """A payload group's rows as the general path reads them (when its payload does not go as it is)."""
    image_set = str(changes.changes["ImageSetID"].iat[int(group.rows[0])])
    items = _read_changes(changes.changes.take(group.rows), snapshot, problems).get(image_set, [])
    return _expressed(image_set, items, snapshot.documents[image_set], changes.vrs, problems)


def _plan_group(
    datastore_id: str, image_set: str, document: dict[str, Any], group: Group, flag: bool | None, limit: int
) -> _Planned | None:
    """A payload group's one request, as ``_plan_image_set`` makes it; None when the blob is over the limit or
    AHI would refuse it (the general path then packs it and names the rows at fault)."""
    text = orjson.dumps(group.payload)
    if len(text) > limit:
        return None
    params = _params(datastore_id, image_set, {"updatableAttributes": text.decode()})
    primary = flag is None or flag
    reasons = group.reasons(document, primary)
    if reasons is None:
        try:
            updates = params["updateImageSetMetadataUpdates"]["DICOMUpdates"]
            reasons, _ = check_updates(document, updates, is_primary=primary, max_blob_bytes=limit, keep_edits=False)
        except AHIError:
            return None
    if reasons:
        params = {**params, "force": True}
    return _Planned([(params, reasons, [])], [group.description])


def _plan_one(
    datastore_id: str,
    image_set: str,
    document: dict[str, Any],
    items: list[_Change],
    flag: bool | None,
    limit: int,
    problems: list[dict[str, Any]],
    diagnose: bool = True,
) -> _Planned | None:
    """One image set's requests: one request when AHI takes it, else the removals first and the rest after
    (e.g. an attribute moved from the instances to their series); None with ``problems`` extended (see
    ``_plan_image_set`` for ``diagnose``)."""
    found: list[dict[str, Any]] = []
    result = _plan_image_set(datastore_id, image_set, document, [(_units(items), False)], flag, limit, found, diagnose)
    removals = [c for c in items if c.op in ("remove", "remove_instance", "remove_series")]
    if result is None and 0 < len(removals) < len(items):
        rest = [c for c in items if c not in removals]
        groups = [(_units(removals), False), (_units(rest), False)]
        result = _plan_image_set(datastore_id, image_set, document, groups, flag, limit, [], diagnose=False)
    if result is None:
        problems.extend(found)
    return result


def _requests(
    order: list[str],
    bad: set[str],
    planned: dict[str, _Planned],
    affects: dict[str, list[str]],
    snapshot: Any,
    start: Mapping[str, dict[str, Any]],
) -> tuple[list[PlannedRequest], dict[str, str]]:
    """The planned requests in plan order (image sets with problems left out) and their base versions; the
    first request of an image set planned on its snapshot document carries that document's digest
    (``planned_on``: apply checks it before sending; remembered per snapshot)."""
    version_ids = snapshot.version_ids
    requests: list[PlannedRequest] = []
    base_versions: dict[str, str] = {}
    for image_set in order:
        if image_set in bad or image_set not in planned:
            continue
        for index, (params, reasons, items) in enumerate(planned[image_set].requests):
            touched = affects.get(image_set, []) if params.get("includeStudyImageSets") else []
            descriptions = planned[image_set].descriptions
            description = _description(items) if descriptions is None else descriptions[index]
            if touched:
                description += f" (includeStudyImageSets: also {len(touched)} other image set(s) of the study)"
            planned_on = snapshot_digest(snapshot, image_set) if index == 0 and image_set not in start else None
            requests.append(PlannedRequest(image_set, index, params, reasons, list(touched), description, planned_on))
        for member in (image_set, *affects.get(image_set, [])):
            if member in version_ids:
                base_versions[member] = version_ids[member]
    return requests, base_versions


def _plan_fold(
    datastore_id: str,
    carrier: str,
    siblings: list[str],
    keys: set[bytes],
    per_image_set: dict[str, list[_Change]],
    documents: Mapping[str, dict[str, Any]],
    flags: Mapping[str, bool],
    limit: int,
) -> tuple[_Planned, dict[str, dict[str, Any]]] | None:
    """Plan the carrier with the folded changes flagged; None (no folding) if any sibling refuses them."""
    items = per_image_set[carrier]
    folded = [c for c in items if _fold_key(c) in keys]
    own = [c for c in items if c.level in ("Series", "Instance")]
    rest = [c for c in items if c.level in ("Patient", "Study") and _fold_key(c) not in keys]
    groups = [(_units(folded + own), True)]
    if rest:
        groups.append((_units(rest), False))
    scratch: list[dict[str, Any]] = []
    result = _plan_image_set(datastore_id, carrier, documents[carrier], groups, flags.get(carrier), limit, scratch)
    if result is None:
        return None
    after = {sibling: documents[sibling] for sibling in siblings}
    for params, _, _ in result.requests:
        part = study_part(params) if params.get("includeStudyImageSets") else None
        for sibling in siblings if part is not None else []:
            try:
                updates = part["updateImageSetMetadataUpdates"]["DICOMUpdates"]  # type: ignore[index]
                _, edits = check_updates(after[sibling], updates, is_primary=True, max_blob_bytes=limit)
                after[sibling] = apply_checked(after[sibling], edits)
            except AHIError:
                return None
    return result, after


def revert_plan(
    source: Any,
    *,
    datastore_id: str | None = None,
    latest_versions: Mapping[str, Any] | None = None,
    image_set_ids: Iterable[str] | None = None,
) -> UpdatePlan:
    """Revert requests (``revertToVersionId``) restoring image sets to given versions.

    ``source`` is a Snapshot (restore each image set to the version it was fetched at) or a mapping
    ``{image_set_id: version_to_restore}`` (then ``datastore_id`` is required). ``latest_versions`` (the
    versions now, e.g. after an apply) become the plan's base versions; an image set already at the version to
    restore is left out. ``image_set_ids`` restricts the plan.
    """
    if isinstance(source, Mapping):
        versions = {k: str(v) for k, v in source.items()}
        if datastore_id is None:
            raise ValueError("revert_plan(versions) needs datastore_id=")
    else:
        versions = dict(source.version_ids)
        datastore_id = datastore_id or source.datastore_id
    if image_set_ids is not None:
        wanted = set(image_set_ids)
        versions = {k: v for k, v in versions.items() if k in wanted}
    latest = {k: str(v) for k, v in (latest_versions or {}).items()}
    problems = [
        {
            "ImageSetID": k,
            "row": None,
            "column": None,
            "attribute": None,
            "reason": f"revertToVersionId {v!r} does not match the pattern \\d+",
        }
        for k, v in versions.items()
        if not re.fullmatch(r"\d+", v)
    ]
    if problems:
        raise PlanError(_problems_frame(problems))
    requests = []
    base_versions = {}
    for image_set, version in versions.items():
        if latest.get(image_set) == version:
            continue
        params = {
            "datastoreId": datastore_id,
            "imageSetId": image_set,
            "updateImageSetMetadataUpdates": {"revertToVersionId": version},
        }
        requests.append(PlannedRequest(image_set, 0, params, [], [], f"revert to version {version}"))
        if image_set in latest:
            base_versions[image_set] = latest[image_set]
    return UpdatePlan.build(datastore_id, base_versions, requests)
