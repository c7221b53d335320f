"""The checks that gate every delete of a copy-and-promote procedure: VERIFY_COPY, CHECK_STUDY, VERIFY_PRIMARY.

A primary image set is never deleted until its replacement is verified in place: the copy is ACTIVE, its status
COPIED or UPDATED (not ``*_FAILED``), non-primary, and its document (frames included: every instance's
``ImageFrames`` with their IDs and pixel-data checksums) has the digest the plan expects
(``curation.model.document.digest``); the primary it replaces is unlocked and still at the version this plan
left ("Other write operations cannot be performed on a locked image set", "Copying an image set"). CHECK_STUDY
reads the study's primaries fresh (SearchImageSets ``DICOMStudyInstanceUID`` and ``isPrimary``, the two filters
the API allows) and runs the promotion rule (``curation.model.rules.promotion_refusal``: AWS documents the
principle only, "Imported P10 data that conflicts with primary image sets already in the a store will be persisted
as non-primary", so the strict reading is taken) for every promotion of the group, so a conflict stops the group
before its first delete, naming the attribute. A new primary is checked the same way before its copy is deleted.
Checks only read; on resume they run again.
"""

from __future__ import annotations

from typing import Any

from curation.curate.planstep import PlannedStep, Ref, StepKind
from curation.model.document import digest, primary_facts
from curation.model.rules import promotion_refusal
from curation.model.updates import apply_to_document
from curation.run.docdiff import differences
from curation.run.journal import RequestStatus
from curation.run.procedures import WriteSteps
from curation.run.stepstate import StepOutcome
from curation.run.waiters import IMAGE_SET_NOT_LOCKED

__all__ = ["Gates"]

_GOOD = {"COPIED", "UPDATED"}


class Gates:
    """Run the check steps of a plan with the run's ``WriteSteps`` (its calls, ledger and waiters)."""

    def __init__(self, writes: WriteSteps) -> None:
        self.writes = writes
        self.ledger = writes.ledger
        self.calls = writes.calls
        self.steps = {step.step_id: step for step in self.ledger.plan.steps}

    def run(self, step: PlannedStep) -> StepOutcome:
        """Check ``step``; journal the outcome (``done``, or ``conflict`` naming what differs)."""
        outcome = self.check_study(step) if step.kind is StepKind.CHECK_STUDY else self.verify_image_set(step)
        self.ledger.log(step, outcome.status, message=outcome.message, version=outcome.version)
        return outcome

    # --- VERIFY_COPY / VERIFY_PRIMARY -------------------------------------------------------------------------
    def _source_of(self, step: PlannedStep) -> str | None:
        """The image set a verified image set was copied from (the copy step's source), if still known."""
        if not isinstance(step.target, Ref) or step.target.step not in self.steps:
            return None
        creator = self.steps[step.target.step]
        try:
            return self.ledger.resolve(creator.target)
        except LookupError:
            return None

    def verify_image_set(self, step: PlannedStep) -> StepOutcome:
        target = self.ledger.resolve(step.target)
        primary = step.kind is StepKind.VERIFY_PRIMARY
        info = self.writes.wait(IMAGE_SET_NOT_LOCKED, target)
        version = str(info.get("versionId"))
        expected_version = self.ledger.versions.get(target)
        problems = []
        if info.get("imageSetState") != "ACTIVE" or info.get("imageSetWorkflowStatus") not in _GOOD:
            problems.append(
                f"it is {info.get('imageSetState')} {info.get('imageSetWorkflowStatus')} "
                f"{info.get('message', '')}".rstrip()
            )
        if bool(info.get("isPrimary")) is not primary:
            problems.append("it is primary" if not primary else "it is not primary")
        if expected_version is not None and version != str(expected_version):
            problems.append(f"its version is {version}, our last step made {expected_version} (another writer)")
        if not problems and step.expect is not None:
            document = self.calls.document(target, version)
            if digest(document) != step.expect:
                problems.append("its metadata is not the intended document" + self._paths(step, document))
        if not primary and not problems:
            problems.extend(self._source_unchanged(step))
        if problems:
            what = "new primary" if primary else "working copy"
            return StepOutcome(RequestStatus.CONFLICT, f"{what} {target} of {step.original}: " + "; ".join(problems))
        return StepOutcome(RequestStatus.DONE, version=version)

    def _source_unchanged(self, step: PlannedStep) -> list[str]:
        source = self._source_of(step)
        if source is None:
            return []
        info = self.writes.wait(IMAGE_SET_NOT_LOCKED, source)
        guard = self.ledger.versions.get(source)
        if info.get("imageSetState") == "DELETED":
            return []  # deleted by this plan's own DELETE_PRIMARY on a resume
        if guard is not None and str(info.get("versionId")) != str(guard):
            copy = self.ledger.resolve(step.target)
            return [
                f"image set {source} changed by another writer: planned against version {guard}, found "
                f"{info.get('versionId')}; nothing deleted; the working copy {copy} (non-primary, with the planned "
                "edits) is left: cleanup_plan(journal, client) deletes it"
            ]
        return []

    def _paths(self, step: PlannedStep, document: dict[str, Any]) -> str:
        """Where ``document`` differs from the intended one, when that can be re-derived (the source still
        readable at its version and the copy's updates in the plan)."""
        source = self._source_of(step)
        version = self.ledger.versions.get(source) if source else None
        if source is None or version is None or step.kind is not StepKind.VERIFY_COPY:
            return ""
        try:
            intended = self.calls.document(source, str(version))
            for update in self._updates_of(step):
                intended = apply_to_document(intended, update.params, is_primary=False)
        except Exception:
            return ""
        found: list[tuple[str, Any, Any]] = []
        strip = {"DatastoreID", "ImageSetID"}
        differences(
            {k: v for k, v in intended.items() if k not in strip},
            {k: v for k, v in document.items() if k not in strip},
            "",
            found,
        )
        return f" (differs at {', '.join(path for path, _, _ in found[:5])})" if found else ""

    def _updates_of(self, step: PlannedStep) -> list[PlannedStep]:
        assert isinstance(step.target, Ref)
        return [s for s in self.ledger.plan.steps if s.kind is StepKind.UPDATE and s.target == step.target]

    # --- CHECK_STUDY ------------------------------------------------------------------------------------------
    def _group(self, step: PlannedStep) -> list[PlannedStep]:
        return [s for s in self.ledger.plan.steps if s.group == step.group and s.kind is StepKind.VERIFY_COPY]

    def check_study(self, step: PlannedStep) -> StepOutcome:
        """The study's fresh primaries: each one this group replaces still at its version, and every promotion
        of the group passing the promotion rule against the primaries that stay."""
        study = str(step.target)
        filters = [
            {"operator": "EQUAL", "values": [{"DICOMStudyInstanceUID": study}]},
            {"operator": "EQUAL", "values": [{"isPrimary": True}]},
        ]
        fresh = {str(s["imageSetId"]): str(s.get("version")) for s in self.writes.search(filters)}
        replaced = {}
        for verify in self._group(step):
            source = self._source_of(verify)
            if source is not None:
                replaced[source] = verify
        problems = []
        for source in replaced:
            guard = self.ledger.versions.get(source)
            if source in fresh and guard is not None and fresh[source] != str(guard):
                problems.append(
                    f"image set {source} changed by another writer: planned against version {guard}, "
                    f"found {fresh[source]}; nothing deleted"
                )
        staying = []
        for image_set_id in fresh:
            if image_set_id in replaced:
                continue
            latest = self.writes.wait(IMAGE_SET_NOT_LOCKED, image_set_id)
            staying.append(primary_facts(self.calls.document(image_set_id, str(latest["versionId"])), image_set_id))
        for verify in replaced.values():
            copy_id = self.ledger.resolve(verify.target)
            version = self.ledger.versions.get(copy_id)
            facts = primary_facts(self.calls.document(copy_id, str(version)), copy_id)
            refusal = promotion_refusal(facts, staying)
            if refusal is not None:
                problems.append(
                    f"the promotion of {verify.original}'s copy would be refused: {refusal.message}; nothing deleted"
                )
        if problems:
            return StepOutcome(RequestStatus.CONFLICT, f"study {study}: " + "; ".join(problems))
        return StepOutcome(RequestStatus.DONE)
