"""UpdatePlan: the exact requests a ChangeSet becomes, as plain data a person reviews and a file keeps.

``PlannedRequest`` is one call (boto3's keyword arguments, without ``latestVersionId``); ``UpdatePlan`` holds
them in order with the versions they were planned against, the problems that kept image sets out, a preview
(every request applied with ``apply_to_document``) and its displays. ``curation.curate.planner`` builds plans;
``curation.run`` applies them.

A plan is content-addressed: ``plan_id`` is the hash of everything it holds (``to_dict`` is its one
serialisation, which files and journals keep), recomputed whenever a plan is loaded or applied, so a plan
edited after it was made (a blob, a base version, a flag, the problems) is refused before anything is sent,
with one line naming the part that differs (``PlanEditedError``). The first request of each image set also
records ``planned_on``, the digest of the document it was planned on, which apply compares with the document
at the version it is about to send against: a base version edited *and* re-hashed still cannot send a
request onto another writer's version.
"""

from __future__ import annotations

import hashlib
import os
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd

from curation.curate.changeset import PROBLEM_COLUMNS, empty_problems, payload_removals, removal_text
from curation.curate.planstep import PlannedStep, Ref, StepKind, Undo
from curation.frames.flattening import NULL
from curation.model.updates import apply_to_document, study_part

__all__ = [
    "PlanEditedError",
    "PlanError",
    "PlanFormatError",
    "PlannedRequest",
    "PlannedStep",
    "Ref",
    "StepKind",
    "Undo",
    "UpdatePlan",
    "content_digest",
    "document_digest",
    "snapshot_digest",
]

FORMAT = "ahi-curation-plan"
FORMAT_VERSION = 2
SCHEMA_VERSION = 1.1
UNKNOWN_PRIMARY = "primary flag unknown (snapshot.primary has no entry): treated as primary"
DIGEST_CHARS = 32
_HTML_IMAGE_SETS = 50
_HTML_JSON_CHARS = 20_000
_ID = re.compile(r"[0-9a-z]{1,64}")


class PlanError(ValueError):
    """Planning stopped: ``problems`` (a DataFrame of PROBLEM_COLUMNS) lists every problem found."""

    def __init__(self, problems: pd.DataFrame) -> None:
        self.problems = problems.reset_index(drop=True)
        lines = [f"{len(self.problems)} problem(s) stop the plan (allow_problems=True plans the other image sets):"]
        for record in self.problems.to_dict("records"):
            lines.append("- " + _problem_text(record))
        super().__init__("\n".join(lines))


class PlanFormatError(ValueError):
    """Data that is not a usable plan of this format: the message is one line saying what is wrong."""


class PlanEditedError(PlanFormatError):
    """A plan whose content no longer hashes to its ``plan_id``: it was changed after it was made."""


def _problem_text(record: Mapping[Any, Any]) -> str:
    where = [f"image set {record.get('ImageSetID')}"]
    for name in ("row", "column", "attribute"):
        value = record.get(name)
        if value is not None and not (isinstance(value, float) and value != value):
            where.append(f"{name} {value}")
    return f"{', '.join(where)}: {record.get('reason')}"


# --- content hashes ----------------------------------------------------------------------------------------


def content_digest(value: Any) -> str:
    """The hash of JSON-able ``value`` (keys sorted): what plan IDs and document digests are made of."""
    data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=_json_default)
    return hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


def document_digest(document: Mapping[str, Any]) -> str:
    """The digest of a metadata document (what ``PlannedRequest.planned_on`` records)."""
    return content_digest(document)


#: snapshot -> image set -> (the blob or document object digested, its digest); see ``snapshot_digest``
_SNAPSHOT_DIGESTS: weakref.WeakKeyDictionary[Any, dict[str, tuple[object, str]]] = weakref.WeakKeyDictionary()


def snapshot_digest(snapshot: Any, image_set_id: str) -> str:
    """``document_digest`` of a snapshot's document, computed once per snapshot and document.

    Why: a plan records the digest of every planned document (``planned_on``), and hashing a 100-instance
    document costs about as much as diffing it; a snapshot's documents never change (they are read-only), so
    a second plan on the same snapshot reuses the digests. The cache holds the blob (or document object) it
    hashed and is used only while the snapshot still hands out that same object.
    """
    documents = snapshot.documents
    blob = getattr(documents, "blob", None)
    source: object = blob(image_set_id) if callable(blob) else None
    if source is None:
        source = documents[image_set_id]
    try:
        known = _SNAPSHOT_DIGESTS.setdefault(snapshot, {})
    except TypeError:  # a snapshot-like object that cannot be weakly referenced
        return document_digest(documents[image_set_id])
    cached = known.get(image_set_id)
    if cached is not None and cached[0] is source:
        return cached[1]
    digest = document_digest(documents[image_set_id] if not isinstance(source, dict) else source)
    known[image_set_id] = (source, digest)
    return digest


def forget_snapshot_digests() -> None:
    """Drop every remembered ``snapshot_digest`` (benchmarks measure a first plan with it)."""
    _SNAPSHOT_DIGESTS.clear()


# --- plan data ---------------------------------------------------------------------------------------------


@dataclass
class PlannedRequest:
    """One UpdateImageSetMetadata call: ``params`` are boto3's kwargs except ``latestVersionId``.

    ``planned_on`` is the ``document_digest`` of the document the request was planned against (set on each
    image set's first request by the planner; None where unknown, e.g. a revert plan made from a journal).
    """

    image_set_id: str
    index: int
    params: dict[str, Any]
    force_reasons: list[str] = field(default_factory=list)
    affects: list[str] = field(default_factory=list)
    description: str = ""
    planned_on: str | None = None

    @property
    def force(self) -> bool:
        return bool(self.params.get("force"))

    @property
    def step_id(self) -> str:
        """This request's ID among the plan's steps: ``<image set>:update.<index>``."""
        return f"{self.image_set_id}:update.{self.index}"

    def as_step(self) -> PlannedStep:
        """This request as a ``PlannedStep`` (kind ``update``), after the image set's previous request."""
        params = {k: v for k, v in self.params.items() if k not in ("datastoreId", "imageSetId")}
        after = (f"{self.image_set_id}:update.{self.index - 1}",) if self.index else ()
        return PlannedStep(
            self.step_id,
            StepKind.UPDATE,
            self.image_set_id,
            self.image_set_id,
            params,
            after,
            force_reasons=tuple(self.force_reasons),
            description=self.description,
        )

    @property
    def include_study_image_sets(self) -> bool:
        return bool(self.params.get("includeStudyImageSets"))

    @property
    def blobs(self) -> dict[str, str]:
        """The DICOMUpdates blobs (``updatableAttributes``/``removableAttributes`` -> JSON text)."""
        return dict(self.params["updateImageSetMetadataUpdates"].get("DICOMUpdates") or {})

    @property
    def revert_to(self) -> str | None:
        return self.params["updateImageSetMetadataUpdates"].get("revertToVersionId")

    def blob_bytes(self, name: str) -> int:
        """Length in bytes of one blob as sent (0 when absent)."""
        blob = self.blobs.get(name)
        return 0 if blob is None else len(blob.encode() if isinstance(blob, str) else blob)

    def payload(self, name: str) -> dict[str, Any] | None:
        """One blob parsed back to a dict (None when absent)."""
        blob = self.blobs.get(name)
        return None if blob is None else orjson.loads(blob)

    def call(self, latest_version_id: str) -> dict[str, Any]:
        """The keyword arguments of ``update_image_set_metadata`` sent against ``latest_version_id``."""
        return {**self.params, "latestVersionId": str(latest_version_id)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_set_id": self.image_set_id,
            "index": self.index,
            "params": self.params,
            "force_reasons": list(self.force_reasons),
            "affects": list(self.affects),
            "description": self.description,
            "planned_on": self.planned_on,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], datastore_id: str, number: int = 0) -> PlannedRequest:
        """A request from ``to_dict`` output, checked (``PlanFormatError`` names request ``number``)."""
        return _RequestReader(data, datastore_id, number).read()


@dataclass(frozen=True)
class PlanDigests:
    """The digest of each part of a plan; ``plan_id`` is the digest of these (so an edit names its part)."""

    datastore_id: str
    base_versions: str
    problems: str
    requests: tuple[str, ...]
    #: the copy-and-promote steps and their undo (absent from plans that have none, so their IDs stay as made)
    steps: tuple[str, ...] = ()
    undo: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "datastore_id": self.datastore_id,
            "base_versions": self.base_versions,
            "problems": self.problems,
            "requests": list(self.requests),
        }
        if self.steps:
            out["steps"] = list(self.steps)
            out["undo"] = self.undo
        return out

    @property
    def plan_id(self) -> str:
        return content_digest({"format_version": FORMAT_VERSION, **self.to_dict()})

    def difference(self, other: PlanDigests, requests: Sequence[PlannedRequest]) -> str:
        """One line saying which part of ``other`` (the plan now) differs from ``self`` (the plan as made)."""
        if len(other.requests) != len(self.requests):
            return f"it has {len(other.requests)} request(s), {len(self.requests)} were planned"
        for number, (then, now) in enumerate(zip(self.requests, other.requests, strict=True)):
            if then != now:
                request = requests[number]
                return (
                    f"request {number} (image set {request.image_set_id}, #{request.index}) differs from the "
                    "request that was planned"
                )
        if len(other.steps) != len(self.steps):
            return f"it has {len(other.steps)} procedure step(s), {len(self.steps)} were planned"
        for number, (then, now) in enumerate(zip(self.steps, other.steps, strict=True)):
            if then != now:
                return f"procedure step {number} differs from the step that was planned"
        for part in ("datastore_id", "base_versions", "problems", "undo"):
            if getattr(self, part) != getattr(other, part):
                return f"its {part} differ from what was planned"
        return "its plan_id does not match its content"


def _problem_records(problems: pd.DataFrame) -> list[dict[str, Any]]:
    return [{name: _jsonable(record.get(name)) for name in PROBLEM_COLUMNS} for record in problems.to_dict("records")]


def _digests(
    datastore_id: str,
    base_versions: Mapping[str, str],
    requests: Sequence[PlannedRequest],
    problems: pd.DataFrame,
    steps: Sequence[PlannedStep] = (),
    undo: Mapping[str, Undo] | None = None,
) -> PlanDigests:
    return PlanDigests(
        datastore_id=content_digest(datastore_id),
        base_versions=content_digest(dict(base_versions)),
        problems=content_digest(_problem_records(problems)),
        requests=tuple(content_digest(r.to_dict()) for r in requests),
        steps=tuple(content_digest(step.to_dict()) for step in steps),
        undo=content_digest({k: u.to_dict() for k, u in (undo or {}).items()}) if steps else None,
    )


@dataclass(eq=False)
class UpdatePlan:
    """The requests that express a ChangeSet, per image set in order, with the versions they were made against.

    ``requests`` are the plain UpdateImageSetMetadata calls. ``steps`` are the copy-and-promote procedures
    (``plan(changes, primary="promote")``) of the image sets whose changes AHI refuses on a primary image set,
    in a topological order (each step after the steps of its ``after``), and ``undo`` what revert needs to
    restore their pre-plan content. ``all_steps()`` lists every step, plain requests included.

    Make plans with ``UpdatePlan.build`` (or ``curation.plan``), which sets ``plan_id`` to the hash of the
    content; ``check()`` tells whether the content still matches it.
    """

    plan_id: str
    datastore_id: str
    base_versions: dict[str, str]
    requests: list[PlannedRequest]
    problems: pd.DataFrame = field(default_factory=empty_problems)
    #: the digests of the parts as made (build) or as saved (from_dict); None for a plan made by hand
    digests: PlanDigests | None = field(default=None, repr=False)
    steps: list[PlannedStep] = field(default_factory=list)
    undo: dict[str, Undo] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        datastore_id: str,
        base_versions: Mapping[str, str],
        requests: list[PlannedRequest],
        problems: pd.DataFrame | None = None,
        steps: list[PlannedStep] | None = None,
        undo: Mapping[str, Undo] | None = None,
    ) -> UpdatePlan:
        """A plan whose ``plan_id`` is the hash of its content."""
        versions = {k: str(v) for k, v in base_versions.items()}
        table = empty_problems() if problems is None else problems.reset_index(drop=True)
        steps, undo = list(steps or []), dict(undo or {})
        digests = _digests(datastore_id, versions, requests, table, steps, undo)
        return cls(digests.plan_id, datastore_id, versions, requests, table, digests, steps, undo)

    def __len__(self) -> int:
        return len(self.requests)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UpdatePlan):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        from curation.curate.planview import counts_text

        forced = sum(r.force for r in self.requests) + sum(s.force for s in self.steps)
        steps = f", {counts_text(self)}" if self.steps else ""
        return (
            f"UpdatePlan(plan_id={self.plan_id!r}, image_sets={len(self.image_set_ids)}, "
            f"requests={len(self.requests)}{steps}, forced={forced}, {self._removals()}, "
            f"problems={len(self.problems)})"
        )

    def _removals(self) -> str:
        """What the plan removes, for its first line (attributes, instances, series)."""
        payloads = [r.payload("removableAttributes") for r in self.requests]
        payloads += [s.payload("removableAttributes") for s in self.steps if s.kind is StepKind.UPDATE]
        return removal_text(payload_removals(payloads))

    @property
    def image_set_ids(self) -> list[str]:
        """The pre-plan image sets the plan changes (plain requests first, then procedure members)."""
        ids = [r.image_set_id for r in self.requests] + [s.original for s in self.steps]
        return list(dict.fromkeys(ids))

    @property
    def members(self) -> list[str]:
        """The image sets that go through the copy-and-promote procedure (their IDs change when applied)."""
        return list(dict.fromkeys(s.original for s in self.steps if s.kind is StepKind.PROMOTE))

    def by_image_set(self) -> dict[str, list[PlannedRequest]]:
        """Requests grouped by image set (in plan order), each list in application order."""
        groups: dict[str, list[PlannedRequest]] = {}
        for request in self.requests:
            groups.setdefault(request.image_set_id, []).append(request)
        return {key: sorted(value, key=lambda r: r.index) for key, value in groups.items()}

    def all_steps(self) -> list[PlannedStep]:
        """Every step in a topological order: the plain requests (as ``update`` steps), then the procedures."""
        return [r.as_step() for r in self.requests] + list(self.steps)

    def steps_by_image_set(self) -> dict[str, list[PlannedStep]]:
        """Every step grouped by the pre-plan image set it works for (study checks under each member)."""
        groups: dict[str, list[PlannedStep]] = {}
        for step in self.all_steps():
            groups.setdefault(step.original, []).append(step)
        return groups

    # --- integrity ---------------------------------------------------------------------------------------

    def current_digests(self) -> PlanDigests:
        """The digests of the plan's content as it is now."""
        return _digests(self.datastore_id, self.base_versions, self.requests, self.problems, self.steps, self.undo)

    def check(self) -> None:
        """Raise ``PlanEditedError`` (one line) unless the content still hashes to ``plan_id``, and
        ``PlanFormatError`` when a request names another datastore or image set than the plan does."""
        now = self.current_digests()
        if now.plan_id != self.plan_id:
            made = self.digests if self.digests is not None and self.digests.plan_id == self.plan_id else None
            what = made.difference(now, self.requests) if made is not None else "its content does not hash to it"
            raise PlanEditedError(f"plan {self.plan_id} was changed after it was made: {what}")
        _check_consistency(self)

    # --- persistence -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-able data: what ``save`` writes and what the apply journal's first record holds."""
        out = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "plan_id": self.plan_id,
            "digests": (self.digests or self.current_digests()).to_dict(),
            "datastore_id": self.datastore_id,
            "base_versions": self.base_versions,
            "requests": [r.to_dict() for r in self.requests],
            "problems": _problem_records(self.problems),
        }
        if self.steps:
            out["steps"] = [step.to_dict() for step in self.steps]
            out["undo"] = {key: undo.to_dict() for key, undo in self.undo.items()}
        return out

    def to_json(self) -> str:
        """The plan as JSON text (blobs stay JSON strings inside it)."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2, default=_json_default).decode()

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "the plan") -> UpdatePlan:
        """The plan ``to_dict`` made, checked: ``PlanFormatError`` (``PlanEditedError`` for an edited plan)
        with one line naming ``source`` and what is wrong."""
        try:
            plan = _PlanReader(data).read()
            plan.check()
        except PlanFormatError as exc:
            raise type(exc)(f"{source}: {exc}") from None
        return plan

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "the plan") -> UpdatePlan:
        """``from_dict`` of JSON text."""
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise PlanFormatError(f"{source}: {_json_problem(text, exc)}") from None
        return cls.from_dict(data, source=source)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan as JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UpdatePlan:
        """The plan saved at ``path``, checked (``PlanFormatError`` names the file and what is wrong)."""
        with open(path, "rb") as handle:
            return cls.from_json(handle.read(), source=os.fspath(path))

    # --- preview -----------------------------------------------------------------------------------------

    def preview(
        self,
        documents: Mapping[str, dict[str, Any]],
        *,
        history: Callable[[str, str], dict[str, Any]] | None = None,
        primary: Mapping[str, bool] | None = None,
        max_blob_bytes: int | None = None,
    ) -> dict[str, dict[str, Any]]:
        """The documents the plan will produce: every request applied in order with ``apply_to_document``.

        ``documents`` maps image set IDs to current documents (others are returned unchanged); a request with
        ``includeStudyImageSets`` also applies its Patient/Study part to the documents of ``affects``; a
        procedure member's document (under its pre-plan ID: the new one is known only when applied) gets its
        working copy's updates (non-primary) and its post-promotion updates (primary).
        ``history(image_set_id, version_id)`` serves reverts. Raises the AHIError AHI would answer.
        """
        result = dict(documents)
        primary = primary or {}
        for request in self.requests:
            image_set = request.image_set_id
            if image_set not in result:
                raise KeyError(f"no document for image set {image_set}")
            past = None if history is None else (lambda version, _id=image_set: history(_id, version))
            result[image_set] = apply_to_document(
                result[image_set],
                request.params,
                history=past,
                is_primary=bool(primary.get(image_set, False)),
                max_blob_bytes=max_blob_bytes,
            )
            part = study_part(request.params) if request.affects else None
            if part is not None:
                for other in request.affects:
                    if other in result:
                        result[other] = apply_to_document(
                            result[other],
                            part,
                            is_primary=bool(primary.get(other, True)),
                            max_blob_bytes=max_blob_bytes,
                        )
        for step in self.steps:
            if step.kind is StepKind.UPDATE and step.original in result:
                promoted = isinstance(step.target, Ref) and step.target.step.endswith(":promote")
                result[step.original] = apply_to_document(
                    result[step.original], step.params, is_primary=promoted, max_blob_bytes=max_blob_bytes
                )
        return result

    # --- display (curation.curate.planview) --------------------------------------------------------------

    def requests_frame(self) -> pd.DataFrame:
        """One row per plain request: image set, index, force and reasons, blob sizes, description."""
        from curation.curate.planview import requests_frame

        return requests_frame(self)

    def steps_frame(self) -> pd.DataFrame:
        """One row per step (plain requests and procedure steps), numbered, with what deletes and what changes
        an image set ID marked."""
        from curation.curate.planview import steps_frame

        return steps_frame(self)

    def summary(self) -> str:
        """The plan's first line: image sets, steps by action, deletes, ID changes, removals, problems."""
        from curation.curate.planview import first_line

        return first_line(self)

    def describe(self) -> str:
        """Every step as one line of text, numbered, marked [DELETE] / [NEW ID] (what a dry run prints)."""
        from curation.curate.planview import text

        return text(self)

    def _repr_html_(self) -> str:
        from curation.curate.planview import plan_html

        return plan_html(self)


def _cell_text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _json_default(value: Any) -> Any:
    if value is NULL:
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, tuple):
        return {"tuple": [_jsonable(v) for v in value]}
    if isinstance(value, np.generic):
        return value.item()
    if value is NULL or value is pd.NA:
        return None
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"tuple"}:
        return tuple(_from_jsonable(v) for v in value["tuple"])
    return value


# --- reading plans back ------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _json_problem(text: str | bytes, exc: Exception) -> str:
    data = text.encode() if isinstance(text, str) else bytes(text)
    if not data.strip():
        return "the file is empty, not a plan"
    first = data.split(b"\n", 1)[0]
    try:
        head = orjson.loads(first)
    except orjson.JSONDecodeError:
        head = None
    if isinstance(head, dict) and head.get("kind") == "plan":
        return "this is an apply journal (JSON lines), not a plan: give it as the journal"
    return f"not valid JSON (truncated or not a plan file): {exc}"


def _need(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise PlanFormatError(f"{where} has no {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise PlanFormatError(f"{where}: {key!r} is {_kind(value)}, which is not what a plan holds there")
    return value


def _string_list(data: Mapping[str, Any], key: str, where: str) -> list[str]:
    values = data.get(key) or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise PlanFormatError(f"{where}: {key!r} must be a list of strings")
    return list(values)


def _update_members() -> frozenset[str]:
    from botocore.model import StructureShape

    from curation.model.service import shape

    request = shape("UpdateImageSetMetadataRequest")
    assert isinstance(request, StructureShape)
    return frozenset(request.members) - {"latestVersionId"}


class _RequestReader:
    """Reads and checks one request of a saved plan (``PlanFormatError`` names the request)."""

    def __init__(self, data: Any, datastore_id: str, number: int) -> None:
        self.data = data
        self.datastore_id = datastore_id
        self.where = f"request {number}"

    def read(self) -> PlannedRequest:
        if not isinstance(self.data, dict):
            raise PlanFormatError(f"{self.where} is {_kind(self.data)}, not a request object")
        image_set_id = _need(self.data, "image_set_id", str, self.where)
        index = _need(self.data, "index", int, self.where)
        if index < 0 or not _ID.fullmatch(image_set_id):
            raise PlanFormatError(f"{self.where}: image set {image_set_id!r} #{index} is not a request position")
        params = _need(self.data, "params", dict, self.where)
        self._check_params(params, image_set_id)
        planned_on = self.data.get("planned_on")
        if planned_on is not None and not isinstance(planned_on, str):
            raise PlanFormatError(f"{self.where}: 'planned_on' must be a digest string or null")
        description = self.data.get("description") or ""
        if not isinstance(description, str):
            raise PlanFormatError(f"{self.where}: 'description' must be a string")
        return PlannedRequest(
            image_set_id=image_set_id,
            index=index,
            params=params,
            force_reasons=_string_list(self.data, "force_reasons", self.where),
            affects=_string_list(self.data, "affects", self.where),
            description=description,
            planned_on=planned_on,
        )

    def _check_params(self, params: dict[str, Any], image_set_id: str) -> None:
        unknown = sorted(set(params) - _update_members())
        if unknown:
            raise PlanFormatError(f"{self.where}: {', '.join(unknown)} is not an UpdateImageSetMetadata parameter")
        if params.get("datastoreId") != self.datastore_id:
            raise PlanFormatError(
                f"{self.where} is for datastore {params.get('datastoreId')!r}, the plan for {self.datastore_id!r}"
            )
        if params.get("imageSetId") != image_set_id:
            raise PlanFormatError(f"{self.where} sends to image set {params.get('imageSetId')!r}, not {image_set_id}")
        updates = params.get("updateImageSetMetadataUpdates")
        if not isinstance(updates, dict) or len(set(updates) & {"DICOMUpdates", "revertToVersionId"}) != 1:
            raise PlanFormatError(f"{self.where}: its updates need DICOMUpdates or revertToVersionId, one of them")
        blobs = updates.get("DICOMUpdates", {})
        if not isinstance(blobs, dict) or not all(isinstance(v, str) for v in blobs.values()):
            raise PlanFormatError(f"{self.where}: the DICOMUpdates blobs must be JSON text")


class _PlanReader:
    """Reads and checks a saved plan's structure (the hash is checked by ``UpdatePlan.check``)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def read(self) -> UpdatePlan:
        data = self.data
        if not isinstance(data, dict):
            raise PlanFormatError(f"holds {_kind(data)}, not a plan object")
        if data.get("kind") == "plan" or data.get("format") == "ahi-curation-journal":
            raise PlanFormatError("this is an apply journal's record, not a plan: give it as the journal")
        if data.get("format") != FORMAT:
            raise PlanFormatError(f"not an ahi-curation plan (format {data.get('format')!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise PlanFormatError(
                f"plan format version {data.get('format_version')!r}; this ahi-curation reads version "
                f"{FORMAT_VERSION} (plan the changes again)"
            )
        datastore_id = _need(data, "datastore_id", str, "the plan")
        versions = _need(data, "base_versions", dict, "the plan")
        if not all(isinstance(k, str) and isinstance(v, str | int) for k, v in versions.items()):
            raise PlanFormatError("the plan: 'base_versions' must map image set IDs to version IDs")
        listed = _need(data, "requests", list, "the plan")
        requests = [PlannedRequest.from_dict(r, datastore_id, n) for n, r in enumerate(listed)]
        steps, undo = self._steps()
        return UpdatePlan(
            plan_id=_need(data, "plan_id", str, "the plan"),
            datastore_id=datastore_id,
            base_versions={k: str(v) for k, v in versions.items()},
            requests=requests,
            problems=self._problems(),
            digests=self._digests(),
            steps=steps,
            undo=undo,
        )

    def _steps(self) -> tuple[list[PlannedStep], dict[str, Undo]]:
        listed = self.data.get("steps") or []
        undo = self.data.get("undo") or {}
        if not isinstance(listed, list) or not isinstance(undo, dict):
            raise PlanFormatError("the plan: 'steps' must be a list and 'undo' an object")
        steps = []
        for number, item in enumerate(listed):
            try:
                steps.append(PlannedStep.from_dict(item))
            except (KeyError, TypeError, ValueError) as exc:
                raise PlanFormatError(f"procedure step {number} is not what a plan holds there: {exc}") from None
        try:
            return steps, {str(k): Undo.from_dict(v) for k, v in undo.items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PlanFormatError(f"the plan: its 'undo' is not what a plan holds there: {exc}") from None

    def _problems(self) -> pd.DataFrame:
        records = _need(self.data, "problems", list, "the plan")
        if not all(isinstance(p, dict) for p in records):
            raise PlanFormatError("the plan: every problem must be an object")
        return pd.DataFrame(
            {name: pd.Series([_from_jsonable(p.get(name)) for p in records], dtype=object) for name in PROBLEM_COLUMNS}
        )

    def _digests(self) -> PlanDigests:
        digests = _need(self.data, "digests", dict, "the plan")
        parts = [digests.get(k) for k in ("datastore_id", "base_versions", "problems")]
        requests = digests.get("requests")
        if not all(isinstance(p, str) for p in parts) or not isinstance(requests, list):
            raise PlanFormatError("the plan: 'digests' is not what a plan holds there")
        datastore_id, base_versions, problems = (str(p) for p in parts)
        steps = digests.get("steps") or []
        undo = digests.get("undo")
        if not isinstance(steps, list) or not (undo is None or isinstance(undo, str)):
            raise PlanFormatError("the plan: 'digests' is not what a plan holds there")
        return PlanDigests(
            datastore_id, base_versions, problems, tuple(str(r) for r in requests), tuple(str(d) for d in steps), undo
        )


def _check_consistency(plan: UpdatePlan) -> None:
    """Every request names the plan's datastore and its own image set, once per index, with a base version."""
    seen: set[tuple[str, int]] = set()
    for number, request in enumerate(plan.requests):
        where = f"request {number} (image set {request.image_set_id}, #{request.index})"
        if request.params.get("datastoreId") != plan.datastore_id:
            raise PlanFormatError(
                f"{where} is for datastore {request.params.get('datastoreId')!r}, the plan for {plan.datastore_id!r}"
            )
        if request.params.get("imageSetId") != request.image_set_id:
            raise PlanFormatError(f"{where} sends to image set {request.params.get('imageSetId')!r}")
        if (request.image_set_id, request.index) in seen:
            raise PlanFormatError(f"{where} appears twice")
        seen.add((request.image_set_id, request.index))
        if request.image_set_id not in plan.base_versions:
            raise PlanFormatError(f"{where}: the plan has no base version for its image set")
    _check_steps(plan)


def _check_steps(plan: UpdatePlan) -> None:
    """Procedure steps: unique IDs, known dependencies (steps or plain requests) that come earlier, references to
    steps that create an image set, and a base version for every image set a step addresses by its ID."""
    known = {r.step_id for r in plan.requests}
    creators: set[str] = set()
    for number, step in enumerate(plan.steps):
        where = f"procedure step {number} ({step.step_id})"
        if step.step_id in known:
            raise PlanFormatError(f"{where} appears twice")
        missing = [a for a in step.after if a not in known]
        if missing:
            raise PlanFormatError(f"{where} waits for {missing[0]}, which is not an earlier step of the plan")
        targets = [step.target, step.params.get("destination")]
        for target in targets:
            if isinstance(target, Ref) and target.step not in creators:
                raise PlanFormatError(f"{where} addresses the image set of {target.step}, which no step before creates")
        addressed = isinstance(step.target, str) and step.kind is not StepKind.CHECK_STUDY
        if addressed and step.target not in plan.base_versions:
            raise PlanFormatError(f"{where}: the plan has no base version for image set {step.target}")
        known.add(step.step_id)
        if step.kind.creates:
            creators.add(step.step_id)
