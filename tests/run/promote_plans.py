"""Plans with copy-and-promote procedures built by hand from planstep objects (the planner's ``primary="promote"``
is another branch's work): one group per study, the steps and edges of primary-design.md D7/D10."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import orjson

from curation.curate.planstep import PlannedStep, Ref, StepKind, Undo
from curation.curate.updateplan import UpdatePlan
from curation.model.document import digest, parse_document
from curation.model.updates import apply_to_document

Edit = Callable[[dict[str, Any]], dict[str, Any]]  # document -> the partial document to set (updatableAttributes)


def update_params(partial: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
    blob = orjson.dumps({"SchemaVersion": 1.1, **partial}).decode()
    params: dict[str, Any] = {"updateImageSetMetadataUpdates": {"DICOMUpdates": {"updatableAttributes": blob}}}
    if force:
        params["force"] = True
    return params


def inverse_of(partial: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """The partial document that sets every attribute ``partial`` sets back to its value in ``document``."""
    out: dict[str, Any] = {}
    for key, value in partial.items():
        if isinstance(value, dict):
            out[key] = inverse_of(value, document.get(key) or {})
        else:
            out[key] = document.get(key)
    return out


def fetch_document(client: Any, datastore_id: str, image_set_id: str) -> tuple[dict[str, Any], str]:
    info = client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
    blob = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)["imageSetMetadataBlob"]
    return parse_document(blob.read()), str(info["versionId"])


def member_steps(
    image_set_id: str,
    document: dict[str, Any],
    partial: dict[str, Any],
    group: str,
) -> tuple[list[PlannedStep], Undo, str]:
    """The COPY, UPDATE and VERIFY_COPY steps of one member; its undo; the intended digest."""
    params = update_params(partial)
    intended = apply_to_document(copy.deepcopy(document), params, is_primary=False)
    copy_id = f"{image_set_id}:copy"
    steps = [
        PlannedStep(copy_id, StepKind.COPY, image_set_id, image_set_id, group=group),
        PlannedStep(
            f"{image_set_id}:update.0", StepKind.UPDATE, Ref(copy_id), image_set_id, params, (copy_id,), group=group
        ),
        PlannedStep(
            f"{image_set_id}:verify-copy",
            StepKind.VERIFY_COPY,
            Ref(copy_id),
            image_set_id,
            after=(f"{image_set_id}:update.0",),
            group=group,
            expect=digest(intended),
        ),
    ]
    undo = Undo([update_params(inverse_of(partial, document))], digest(document))
    return steps, undo, digest(intended)


def promote_plan(
    client: Any,
    datastore_id: str,
    edits: dict[str, Edit],
    *,
    study: Callable[[dict], str] | None = None,
) -> UpdatePlan:
    """A plan running the procedure for every image set of ``edits`` (ID -> edit), grouped by study."""
    documents = {i: fetch_document(client, datastore_id, i) for i in edits}
    groups: dict[str, list[str]] = {}
    for image_set_id, (document, _) in documents.items():
        uid = document["Study"]["DICOM"]["StudyInstanceUID"]
        groups.setdefault(uid, []).append(image_set_id)
    steps: list[PlannedStep] = []
    undo: dict[str, Undo] = {}
    for number, (uid, members) in enumerate(groups.items()):
        group = f"g{number}"
        expects: dict[str, str] = {}
        for member in members:
            member_part, undo[member], expects[member] = member_steps(
                member, documents[member][0], edits[member](documents[member][0]), group
            )
            steps.extend(member_part)
        verifies = tuple(f"{m}:verify-copy" for m in members)
        check = f"{group}:check-study"
        steps.append(PlannedStep(check, StepKind.CHECK_STUDY, uid, members[0], after=verifies, group=group))
        for member in members:
            steps.append(
                PlannedStep(
                    f"{member}:delete-primary",
                    StepKind.DELETE_PRIMARY,
                    member,
                    member,
                    after=(check, *verifies),
                    group=group,
                )
            )
        deletes = tuple(f"{m}:delete-primary" for m in members)
        for member in members:
            copy_ref = Ref(f"{member}:copy")
            steps.append(
                PlannedStep(f"{member}:promote", StepKind.PROMOTE, copy_ref, member, after=deletes, group=group)
            )
        for member in members:
            promoted = Ref(f"{member}:promote")
            steps.append(
                PlannedStep(
                    f"{member}:verify-primary",
                    StepKind.VERIFY_PRIMARY,
                    promoted,
                    member,
                    after=(f"{member}:promote",),
                    group=group,
                    expect=expects[member],
                )
            )
            steps.append(
                PlannedStep(
                    f"{member}:delete-copy",
                    StepKind.DELETE_COPY,
                    Ref(f"{member}:copy"),
                    member,
                    after=(f"{member}:verify-primary",),
                    group=group,
                )
            )
    versions = {i: v for i, (_, v) in documents.items()}
    return UpdatePlan.build(datastore_id, versions, [], steps=steps, undo=undo)


def patient_name(name: str) -> Edit:
    return lambda document: {"Patient": {"DICOM": {"PatientName": name}}}
