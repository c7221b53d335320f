"""``verify`` for the members of copy-and-promote procedures: follow the ID mapping to the new primary image set.

A member's pre-plan image set is deleted by the procedure, so its content is checked under the ID the journal's
``mapping`` record gives it (a promotion returns a new image set ID: API reference, CopyImageSet
``promoteToPrimary``), at the version the promotion made: its digest must be the one the plan intended (frames
included), and every attribute the plan set must hold the planned value there; updates the plan makes after the
promotion are then checked at the version our last one left. Rows are reported under the pre-plan ID, with
``note`` ``now <new ID>``. Without a journal the new IDs are unknown: each member is one row saying so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import orjson

from curation.curate.planstep import PlannedStep, Ref, StepKind
from curation.curate.updateplan import UpdatePlan
from curation.model.document import digest
from curation.model.updates import apply_to_document
from curation.run.docdiff import differences
from curation.run.journal import RequestStatus, mappings, read_journal, step_states
from curation.run.servicecalls import ServiceCalls

__all__ = ["member_rows", "procedure_members"]

_SKIP = frozenset({"SchemaVersion"})


def _row(
    image_set_id: str,
    note: str,
    path: str | None = None,
    expected: Any = None,
    actual: Any = None,
) -> dict[str, Any]:
    return {"ImageSetID": image_set_id, "path": path, "expected": expected, "actual": actual, "note": note}


#: the UID attribute that keys a node of the document under ``Series`` / ``Instances``
_KEYED_BY = {"Series": "SeriesInstanceUID", "Instances": "SOPInstanceUID"}


def _renamed(parent: str, key: str, value: Any) -> str:
    """The key a node of an update payload has once applied: a payload keys a series or an instance by its old UID
    and carries the new one in its ``DICOM`` (use case 7, "change SOPInstanceUID"), so the promoted document
    holds it under the new UID."""
    attribute = _KEYED_BY.get(parent)
    dicom = value.get("DICOM") if attribute is not None and isinstance(value, dict) else None
    new = dicom.get(attribute) if isinstance(dicom, dict) else None
    return new if isinstance(new, str) and new else key


def _leaves(partial: Any, document: Any, path: str, out: list[tuple[str, Any, Any]]) -> None:
    """(path, planned value, value found) for every value of an update payload that ``document`` lacks; a series
    or instance whose UID the payload changes is looked for under its new UID (the path names that one)."""
    if isinstance(partial, dict):
        parent = path.rsplit(".", 1)[-1]
        for key, value in partial.items():
            if key in _SKIP and not path:
                continue
            key = _renamed(parent, key, value)
            held = document.get(key) if isinstance(document, dict) else None
            _leaves(value, held, f"{path}.{key}" if path else key, out)
        return
    if partial != document:
        out.append((path, partial, document))


def _planned_values(steps: list[PlannedStep], document: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    found: list[tuple[str, Any, Any]] = []
    for step in steps:
        blob = (step.params.get("updateImageSetMetadataUpdates") or {}).get("DICOMUpdates") or {}
        partial = blob.get("updatableAttributes")
        if partial:
            _leaves(orjson.loads(partial), document, "", found)
    return found


def _member(
    plan: UpdatePlan,
    calls: ServiceCalls,
    member: str,
    steps: list[PlannedStep],
    new: str,
    version: str,
    states: dict[str, Any],
) -> list[dict[str, Any]]:
    note = f"now {new}"
    promote = next(s for s in steps if s.kind is StepKind.PROMOTE)
    copy_updates = [s for s in steps if s.kind is StepKind.UPDATE and s.target == promote.target]
    post = [s for s in steps if s.kind is StepKind.UPDATE and s.target == Ref(promote.step_id)]
    check = next((s for s in steps if s.kind is StepKind.VERIFY_PRIMARY), None)
    document = calls.document(new, version)
    intended = check is not None and check.expect is not None and digest(document) == check.expect
    # the digest covers the whole document, frames included: when it is the intended one, so is every value the
    # plan set; the payloads are read only to name the paths of a difference
    rows = [] if intended else [_row(member, note, p, e, a) for p, e, a in _planned_values(copy_updates, document)]
    if check is not None and check.expect is not None and not intended and not rows:
        rows.append(
            _row(
                member, f"{note}: its content is not the intended document", "(digest)", check.expect, digest(document)
            )
        )
    expected = document
    end = version
    for step in post:
        state = states.get(step.step_id) or {}
        if state.get("status") != RequestStatus.DONE:
            return [*rows, _row(member, f"{note}: {step.step_id} not applied")]
        expected = apply_to_document(expected, step.params, is_primary=True)
        end = str(state.get("version") or state.get("new_version"))
    if post:
        found: list[tuple[str, Any, Any]] = []
        strip = {"DatastoreID", "ImageSetID"}
        differences(
            {k: v for k, v in expected.items() if k not in strip},
            {k: v for k, v in calls.document(new, end).items() if k not in strip},
            "",
            found,
        )
        rows.extend(_row(member, f"{note} version {end}", p, e, a) for p, e, a in found)
    return rows


def procedure_members(plan: UpdatePlan) -> dict[str, list[PlannedStep]]:
    """The steps of each pre-plan image set of ``plan`` that goes through a procedure (it has a PROMOTE step)."""
    by_member: dict[str, list[PlannedStep]] = {}
    for step in plan.steps:
        by_member.setdefault(step.original, []).append(step)
    return {m: steps for m, steps in by_member.items() if any(s.kind is StepKind.PROMOTE for s in steps)}


def member_rows(
    plan: UpdatePlan,
    calls: ServiceCalls,
    journal: str | os.PathLike[str] | None,
    *,
    progress: Callable[[], object] | None = None,
) -> list[dict[str, Any]]:
    """The mismatch rows of every procedure member of ``plan`` (see the module docstring); ``progress`` is
    called once per member checked."""
    by_member = procedure_members(plan)
    if journal is None:
        if progress is not None:
            for _ in by_member:
                progress()
        return [_row(m, "ID changed: give the journal to verify the new primary image set") for m in by_member]
    records = read_journal(journal)
    mapped, states = mappings(records), step_states(records)
    rows: list[dict[str, Any]] = []
    for member, steps in by_member.items():
        if progress is not None:
            progress()
        record = mapped.get(member)
        if record is None:
            rows.append(_row(member, "not applied: no new primary image set in the journal"))
            continue
        rows.extend(_member(plan, calls, member, steps, str(record["new"]), str(record["version"]), states))
    return rows
