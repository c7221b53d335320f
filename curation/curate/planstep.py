"""The steps of AHI's copy-and-promote procedure as plain data: ``StepKind``, ``Ref``, ``PlannedStep``, ``Undo``.

A primary image set refuses Patient- and Series-level edits, UID changes and anything that needs ``force``
(Developer Guide, "Updating image set metadata": "The Patient and Series level metadata elements can not be
updated for primary image sets. The UpdateImageSet will not support --force to update StudyInstanceUID,
SeriesInstanceUID, and SOPInstanceUID for primary image sets"). The documented way around it is a procedure of
calls: copy the primary to a new non-primary image set, update the copy (with ``force`` where needed), delete the
primary, copy the edited copy with ``promoteToPrimary`` ("If successful, a new primary image set ID will be
returned as the destination image set", API reference CopyImageSet) and delete the copy. ``plan(changes,
primary="promote")`` (``curation.curate.procedure``) writes that procedure as ``PlannedStep`` objects, each one
call or one check, with the steps it must wait for (``after``); ``curation.run`` runs them.

An image set that a step creates has no ID until the step has run: a ``Ref`` names it by the step that creates
it (``{"created_by": "<step id>"}`` in JSON, which cannot be mistaken for an ID).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from curation.model.quotas import Action

__all__ = ["PlannedStep", "Ref", "StepKind", "Undo"]


class StepKind(StrEnum):
    """What one step of a plan does (a ``str``: compares equal to its value)."""

    UPDATE = "update"  #: UpdateImageSetMetadata (of the working copy, or after promotion of the new primary)
    COPY = "copy"  #: CopyImageSet to a new, non-primary image set: the working copy
    BACKUP = "backup"  #: CopyImageSet of the series a procedure removes, kept so that revert can restore them
    MERGE = "merge"  #: CopyImageSet into an existing image set (revert puts a backed-up series back)
    VERIFY_COPY = "verify_copy"  #: check: the working copy is ACTIVE, non-primary, and holds the intended document
    CHECK_STUDY = "check_study"  #: check: the study's primaries are what the plan expects; every promotion can pass
    DELETE_PRIMARY = "delete_primary"  #: DeleteImageSet of the old primary image set
    PROMOTE = "promote"  #: CopyImageSet of the working copy with promoteToPrimary: a new primary image set ID
    VERIFY_PRIMARY = "verify_primary"  #: check: the new primary is ACTIVE, primary, and holds the intended document
    DELETE_COPY = "delete_copy"  #: DeleteImageSet of the working copy

    @property
    def action(self) -> Action | None:
        """The HealthImaging action the step calls (None for a check, which only reads)."""
        return _ACTIONS.get(self)

    @property
    def deletes(self) -> bool:
        """True for the steps that delete an image set."""
        return self in (StepKind.DELETE_PRIMARY, StepKind.DELETE_COPY)

    @property
    def changes_id(self) -> bool:
        """True for the step after which the image set's content lives under a new primary image set ID."""
        return self is StepKind.PROMOTE

    @property
    def creates(self) -> bool:
        """True for the steps that create an image set (its ID is known only once the step has run)."""
        return self in (StepKind.COPY, StepKind.BACKUP, StepKind.PROMOTE)

    @property
    def check(self) -> bool:
        """True for the steps that only read."""
        return self.action is None


_ACTIONS = {
    StepKind.UPDATE: Action.UPDATE_IMAGE_SET_METADATA,
    StepKind.COPY: Action.COPY_IMAGE_SET,
    StepKind.BACKUP: Action.COPY_IMAGE_SET,
    StepKind.MERGE: Action.COPY_IMAGE_SET,
    StepKind.PROMOTE: Action.COPY_IMAGE_SET,
    StepKind.DELETE_PRIMARY: Action.DELETE_IMAGE_SET,
    StepKind.DELETE_COPY: Action.DELETE_IMAGE_SET,
}


@dataclass(frozen=True)
class Ref:
    """The image set created by step ``step`` (its ID is known once that step has run)."""

    step: str

    def to_json(self) -> dict[str, str]:
        return {"created_by": self.step}


Target = str | Ref


def target_to_json(target: Target) -> Any:
    return target.to_json() if isinstance(target, Ref) else target


def target_from_json(value: Any) -> Target:
    if isinstance(value, dict) and set(value) == {"created_by"} and isinstance(value["created_by"], str):
        return Ref(value["created_by"])
    if isinstance(value, str):
        return value
    raise ValueError(f"a step target must be an image set ID or {{'created_by': <step id>}}, not {value!r}")


@dataclass
class PlannedStep:
    """One step of a copy-and-promote procedure: one HealthImaging call, or one check.

    - ``step_id``: unique in the plan (``<original>:copy``, ``<original>:update.0``, ``<group>:check-study`` ...);
    - ``target``: the image set the call addresses (the source of a copy), an ID or a ``Ref``;
    - ``params``: the call's own parameters: for an update ``updateImageSetMetadataUpdates`` and ``force``; for
      a copy ``copiableAttributes`` / ``force`` / ``destination`` (a merge's); never the IDs, the datastore or
      the ``latestVersionId`` (resolved when the step runs);
    - ``after``: the step IDs (and plain request IDs ``<image set>:update.<index>``) it waits for;
    - ``original``: the pre-plan image set the step works for; ``group``: the steps that stand or fall together;
    - ``expect``: for a check of a copy or of a new primary, the digest of the intended document
      (``curation.model.document.digest``).
    """

    step_id: str
    kind: StepKind
    target: Target
    original: str
    params: dict[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    group: str | None = None
    expect: str | None = None
    force_reasons: tuple[str, ...] = ()
    description: str = ""

    @property
    def action(self) -> Action | None:
        return self.kind.action

    @property
    def force(self) -> bool:
        return bool(self.params.get("force"))

    def payload(self, name: str) -> dict[str, Any] | None:
        """An update step's blob (``updatableAttributes`` / ``removableAttributes``) parsed, or None."""
        import orjson

        blob = ((self.params.get("updateImageSetMetadataUpdates") or {}).get("DICOMUpdates") or {}).get(name)
        return None if blob is None else orjson.loads(blob)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step_id": self.step_id,
            "kind": str(self.kind),
            "target": target_to_json(self.target),
            "original": self.original,
            "params": _params_to_json(self.params),
            "after": list(self.after),
            "group": self.group,
            "expect": self.expect,
            "force_reasons": list(self.force_reasons),
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlannedStep:
        """A step from ``to_dict`` output (ValueError / KeyError / TypeError on anything else)."""
        after = data.get("after") or []
        reasons = data.get("force_reasons") or []
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            raise ValueError("'after' must be a list of step IDs")
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise ValueError("'force_reasons' must be a list of strings")
        for name in ("step_id", "original"):
            if not isinstance(data.get(name), str):
                raise ValueError(f"{name!r} must be a string")
        params = data.get("params") or {}
        if not isinstance(params, dict):
            raise ValueError("'params' must be an object")
        return cls(
            step_id=data["step_id"],
            kind=StepKind(data["kind"]),
            target=target_from_json(data["target"]),
            original=data["original"],
            params=_params_from_json(params),
            after=tuple(after),
            group=data.get("group"),
            expect=data.get("expect"),
            force_reasons=tuple(reasons),
            description=str(data.get("description") or ""),
        )


def _params_to_json(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: target_to_json(v) if isinstance(v, Ref) else v for k, v in params.items()}


def _params_from_json(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        out[key] = target_from_json(value) if key == "destination" else value
    return out


@dataclass
class Undo:
    """What ``revert`` needs to restore one procedure member's pre-plan content exactly (kept in the plan).

    ``inverse``: the UpdateImageSetMetadata parameters (``updateImageSetMetadataUpdates``, ``force``) that take
    the promoted document (before any post-promotion update) back to the pre-plan one, in order; ``digest``: the
    pre-plan document's digest; ``post``: how many post-promotion updates the plan makes (revert first undoes
    them with ``revertToVersionId``); ``backup``: the step that keeps removed series for revert, if any.
    """

    inverse: list[dict[str, Any]]
    digest: str
    post: int = 0
    backup: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"inverse": self.inverse, "digest": self.digest, "post": self.post, "backup": self.backup}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Undo:
        inverse = data.get("inverse")
        if not isinstance(inverse, list) or not all(isinstance(p, dict) for p in inverse):
            raise ValueError("'inverse' must be a list of update parameters")
        if not isinstance(data.get("digest"), str):
            raise ValueError("'digest' must be a string")
        return cls(list(inverse), data["digest"], int(data.get("post") or 0), data.get("backup"))
