"""``cleanup_plan(journal, client)``: the plan that deletes what an apply of copy-and-promote procedures left.

A run that stopped leaves non-primary image sets behind on purpose: a working copy of a member whose group stopped
before its primary was deleted (the primary is untouched; the copy holds the planned edits), a copy that ended
COPY_FAILED, a duplicate a retried CopyImageSet made (CopyImageSet has no client token, so a lost answer can mean
two copies). None is ever deleted silently: this plan lists them, one DeleteImageSet each, to be shown and applied
like any other plan (``curation.apply``). A working copy whose primary is already deleted and not yet promoted
(``incomplete``) holds the only copy of the content and is never listed; neither is anything already deleted.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from curation.curate.planstep import PlannedStep, StepKind
from curation.curate.updateplan import UpdatePlan
from curation.run.journal import RecordKind, RequestStatus, journal_header, journal_plan, read_journal, step_states

if TYPE_CHECKING:
    from mypy_boto3_medical_imaging import HealthImagingClient

__all__ = ["cleanup_plan"]


def _leftovers(journal: str | os.PathLike[str]) -> tuple[str, dict[str, str]]:
    """The journal's datastore and {image set: why it is left} (orphans, failed copies, stopped working copies)."""
    records = read_journal(journal)
    plan = journal_plan(journal_header(records, journal), journal)
    states = step_states(records)
    found: dict[str, str] = {}
    for record in records:
        if record.get("kind") == RecordKind.ORPHAN:
            found[str(record["image_set"])] = f"left by step {record.get('step')}: {record.get('reason')}"

    def done(member: str, suffix: str) -> bool:
        return (states.get(f"{member}:{suffix}") or {}).get("status") == RequestStatus.DONE

    for step in plan.steps:
        created = (states.get(step.step_id) or {}).get("created")
        if step.kind is not StepKind.COPY or not created:
            continue
        if not done(step.original, "delete-primary") and not done(step.original, "delete-copy"):
            found[str(created)] = (
                f"working copy of {step.original}; its procedure stopped before its primary was deleted"
            )
    return plan.datastore_id, found


def cleanup_plan(journal: str | os.PathLike[str], client: HealthImagingClient) -> UpdatePlan:
    """A plan deleting the non-primary image sets the apply ``journal`` left (module docstring); ``client`` reads
    each one's state (deleted ones are left out) and version."""
    datastore_id, found = _leftovers(journal)
    steps, versions = [], {}
    for image_set_id, why in found.items():
        try:
            info = client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
        except ClientError:
            continue
        if info.get("imageSetState") == "DELETED" or info.get("isPrimary"):
            continue
        versions[image_set_id] = str(info["versionId"])
        steps.append(
            PlannedStep(
                f"{image_set_id}:delete-copy",
                StepKind.DELETE_COPY,
                image_set_id,
                image_set_id,
                description=f"delete non-primary image set {image_set_id}: {why}",
            )
        )
    return UpdatePlan.build(datastore_id, versions, [], steps=steps)
