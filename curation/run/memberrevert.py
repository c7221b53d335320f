"""The revert plan of an apply with copy-and-promote procedures: each member's pre-plan content, primary again.

A promotion always returns a new image set ID (API reference, CopyImageSet ``promoteToPrimary``: "a new primary
image set ID will be returned as the destination image set") and no AHI call lets a caller choose or reuse one,
so reverting a member whose content now lives in new primary N is the procedure once more, under a third ID:
post-promotion updates undone with ``revertToVersionId`` on N; COPY N -> K2; UPDATE K2 with the plan's
``Undo.inverse`` (``force`` where needed, K2 being non-primary); MERGE B -> K2 when the apply removed a series
(CopyImageSet of the backup B that the apply's BACKUP step ``Undo.backup`` retained, into the existing K2:
design D9/D28); VERIFY_COPY K2 against ``Undo.digest`` (the pre-plan document's digest, frames included);
CHECK_STUDY; DELETE_PRIMARY N; PROMOTE K2 -> R; VERIFY_PRIMARY R against the same digest; DELETE_COPY K2 (and B,
whose series are primary again in R). Groups are reverted in the reverse order of the apply, each group's
deletes before any of its promotions (a study-wide fix is undone across the study at once), and every
promotion after the plain reverts (``revertToVersionId``) of the image sets that were updated in place, so the
study is back to its pre-plan values when R becomes primary. Exactness: the content (digests), not IDs or
version numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from curation.curate.planstep import PlannedStep, Ref, StepKind
from curation.curate.updateplan import UpdatePlan
from curation.run.journal import JournalError, Record, RequestStatus, mappings, step_states

__all__ = ["revert_steps_plan"]


def _groups(plan: UpdatePlan) -> list[tuple[str, str | None, list[str]]]:
    """(group, study UID, members) in apply order."""
    order: dict[str, tuple[str | None, list[str]]] = {}
    for step in plan.steps:
        group = step.group or f"member:{step.original}"
        _study, members = order.setdefault(group, (None, []))
        if step.kind is StepKind.CHECK_STUDY:
            order[group] = (str(step.target), members)
        elif step.original not in members and step.kind is StepKind.PROMOTE:
            members.append(step.original)
    return [(group, study, members) for group, (study, members) in order.items()]


def _end_version(member: str, plan: UpdatePlan, mapped: Mapping[str, Any], states: Mapping[str, Any]) -> str:
    version = str(mapped["version"])
    promote = f"{member}:promote"
    for step in plan.steps:
        if step.kind is StepKind.UPDATE and step.target == Ref(promote):
            state = states.get(step.step_id) or {}
            if state.get("status") == RequestStatus.DONE:
                version = str(state.get("version") or state.get("new_version"))
    return version


def backup_of(member: str, plan: UpdatePlan, states: Mapping[str, Any]) -> tuple[str, str] | None:
    """The non-primary image set (and its version) the apply's BACKUP step of ``member`` made, None if the plan
    backs nothing up for it; JournalError if the plan does but the journal holds no finished backup."""
    undo = plan.undo.get(member)
    if undo is None or not undo.backup:
        return None
    state = states.get(undo.backup) or {}
    if state.get("status") != RequestStatus.DONE or not state.get("created"):
        raise JournalError(
            f"step {undo.backup} (the backup of the series {member} removes) is not done in the journal: "
            "its series cannot be restored"
        )
    return str(state["created"]), str(state.get("version") or state.get("created_version") or "1")


def _merge_step(member: str, new: str, backup: str, after: str, group: str) -> PlannedStep:
    """MERGE of ``member``'s retained backup into the working copy of its revert (CopyImageSet with a
    ``destinationImageSet``)."""
    return PlannedStep(
        f"{new}:merge-backup",
        StepKind.MERGE,
        backup,
        new,
        {"destination": Ref(f"{new}:copy")},
        (after,),
        group=group,
        description=f"put the series {member} removed back: CopyImageSet of its backup {backup} into the working copy",
    )


def _closing_steps(new: str, digest: str, group: str, backup: tuple[str, str] | None) -> list[PlannedStep]:
    """VERIFY_PRIMARY of the third primary, then DELETE_COPY of the working copy (and of the backup)."""
    verify = f"{new}:verify-primary"
    steps = [
        PlannedStep(
            verify,
            StepKind.VERIFY_PRIMARY,
            Ref(f"{new}:promote"),
            new,
            after=(f"{new}:promote",),
            group=group,
            expect=digest,
        ),
        PlannedStep(f"{new}:delete-copy", StepKind.DELETE_COPY, Ref(f"{new}:copy"), new, after=(verify,), group=group),
    ]
    if backup is not None:  # its series are primary again in R: the backup is no longer needed
        steps.append(
            PlannedStep(
                f"{new}:delete-backup",
                StepKind.DELETE_COPY,
                backup[0],
                new,
                after=(verify,),
                group=group,
                description=f"delete the backup {backup[0]} of the series removed: restored",
            )
        )
    return steps


def _member_steps(
    plan: UpdatePlan,
    member: str,
    new: str,
    mapped: Mapping[str, Any],
    group: str,
    end: str,
    backup: tuple[str, str] | None = None,
) -> list[PlannedStep]:
    undo = plan.undo.get(member)
    if undo is None:
        raise JournalError(f"the plan holds no undo for image set {member}: it cannot be reverted exactly")
    steps: list[PlannedStep] = []
    first: tuple[str, ...] = ()
    if end != str(mapped["version"]):
        params = {"updateImageSetMetadataUpdates": {"revertToVersionId": str(mapped["version"])}}
        steps.append(
            PlannedStep(
                f"{new}:revert-post",
                StepKind.UPDATE,
                new,
                new,
                params,
                group=group,
                description=f"undo the updates made after {member} was promoted",
            )
        )
        first = (steps[-1].step_id,)
    copy = f"{new}:copy"
    steps.append(
        PlannedStep(
            copy,
            StepKind.COPY,
            new,
            new,
            after=first,
            group=group,
            description=f"working copy of {new} (was {member}) for revert",
        )
    )
    previous = copy
    for number, params in enumerate(undo.inverse):
        step_id = f"{new}:update.{number}"
        steps.append(
            PlannedStep(
                step_id,
                StepKind.UPDATE,
                Ref(copy),
                new,
                dict(params),
                (previous,),
                group=group,
                description=f"back to the pre-plan content of {member}",
            )
        )
        previous = step_id
    if backup is not None:  # D9/D28: the removed series back, merged from the retained backup into the copy
        steps.append(_merge_step(member, new, backup[0], previous, group))
        previous = steps[-1].step_id
    steps.append(
        PlannedStep(
            f"{new}:verify-copy",
            StepKind.VERIFY_COPY,
            Ref(copy),
            new,
            after=(previous,),
            group=group,
            expect=undo.digest,
        )
    )
    return steps


def revert_steps_plan(records: list[Record], plan: UpdatePlan, plain: UpdatePlan) -> UpdatePlan:
    """The revert plan of ``plan``'s apply journal ``records``: ``plain`` (the plain reverts) and the procedure
    of every promoted member back to its pre-plan content (module docstring)."""
    mapped, states = mappings(records), step_states(records)
    unknown = [key for key, state in states.items() if RequestStatus(state["status"]).unknown]
    if unknown:
        raise JournalError(f"step {unknown[0]} has an unknown outcome: run apply again first, then revert")
    steps: list[PlannedStep] = []
    versions = dict(plain.base_versions)
    plain_ids = tuple(r.step_id for r in plain.requests)
    for group, study, members in reversed(_groups(plan)):
        done = [m for m in members if m in mapped]
        for member in members:
            state = states.get(f"{member}:delete-primary") or {}
            if member not in mapped and state.get("status") == RequestStatus.DONE:
                raise JournalError(f"image set {member} was deleted and not promoted yet: run apply again first")
        if not done:
            continue
        rgroup = f"revert-{group}"
        news = {m: str(mapped[m]["new"]) for m in done}
        backups = {m: backup_of(m, plan, states) for m in done}
        for member in done:
            end = _end_version(member, plan, mapped[member], states)
            versions[news[member]] = end
            backup = backups[member]
            if backup is not None:
                versions[backup[0]] = backup[1]
            steps.extend(_member_steps(plan, member, news[member], mapped[member], rgroup, end, backup))
        verifies = tuple(f"{news[m]}:verify-copy" for m in done)
        check = f"{rgroup}:check-study"
        if study is not None:
            steps.append(PlannedStep(check, StepKind.CHECK_STUDY, study, news[done[0]], after=verifies, group=rgroup))
        gate = (check,) if study is not None else ()
        for member in done:
            steps.append(
                PlannedStep(
                    f"{news[member]}:delete-primary",
                    StepKind.DELETE_PRIMARY,
                    news[member],
                    news[member],
                    after=(*gate, *verifies),
                    group=rgroup,
                )
            )
        deletes = tuple(f"{news[m]}:delete-primary" for m in done)
        for member in done:
            new = news[member]
            steps.append(
                PlannedStep(
                    f"{new}:promote",
                    StepKind.PROMOTE,
                    Ref(f"{new}:copy"),
                    new,
                    after=(*deletes, *plain_ids),
                    group=rgroup,
                )
            )
        for member in done:
            steps.extend(_closing_steps(news[member], plan.undo[member].digest, rgroup, backups[member]))
    return UpdatePlan.build(plan.datastore_id, versions, list(plain.requests), steps=steps)
