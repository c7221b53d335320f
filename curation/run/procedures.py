"""The write steps of AHI's copy-and-promote procedure: copy, update the copy, delete, promote, each exactly once.

The procedure is AHI's documented way to change what a primary image set refuses (Developer Guide, "Updating
image set metadata": "The Patient and Series level metadata elements can not be updated for primary image
sets"): copy the primary to a new non-primary image set, update the copy, delete the primary, copy the copy back
with ``promoteToPrimary`` ("If successful, a new primary image set ID will be returned as the destination image
set", API reference CopyImageSet) and delete the copy.

Every step is journaled before its call (``sending``) and after (``accepted`` with the answer, then ``done``,
``failed``, ``conflict`` or ``unsent``), each record fsynced. A step found ``sending`` on resume is reconciled,
never blindly repeated:

- CopyImageSet has no client token (botocore's model: no idempotency member), so a copy or promotion whose answer
  was lost is looked for with SearchImageSets (the series UID, and the creation time or ``isPrimary``: the API
  takes at most two filters): an image set no step of this journal claims whose document is the source's is
  adopted; none found means the call never landed and it is sent again; extra ones are journaled as orphans.
- DeleteImageSet has no version guard (API reference: only ``datastoreId`` and ``imageSetId``): the primary's
  version is read just before the call, and a version other than the one this plan left stops the group with
  nothing deleted (another writer); on resume a DELETED image set is done, an ACTIVE one at that version is sent.
- UpdateImageSetMetadata keeps its ``latestVersionId`` guard: the version after the one sent against is ours when
  its document is what the update makes of the earlier one.

Waiting is botocore's waiter convention (``curation.run.waiters``).
"""

from __future__ import annotations

import datetime as dt
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from curation.curate.planstep import PlannedStep, Ref, StepKind
from curation.model import copies
from curation.model.document import digest
from curation.model.errors import AHIError
from curation.model.quotas import Action
from curation.model.updates import apply_to_document
from curation.run.journal import RecordKind, RequestStatus
from curation.run.limits import Attempts, Cancelled
from curation.run.retries import describe, is_throttling, never_sent
from curation.run.servicecalls import ServiceCalls
from curation.run.stepstate import Ledger, Pending, StepOutcome
from curation.run.waiters import (
    IMAGE_SET_COPIED,
    IMAGE_SET_DELETED,
    IMAGE_SET_NOT_LOCKED,
    IMAGE_SET_UPDATED,
    WaiterError,
    WaitSettings,
    wait_for,
)

__all__ = ["WriteSteps"]

#: how far before the ``sending`` record a copy's ``createdAt`` may lie (clocks of client and service differ)
CLOCK_SLACK = dt.timedelta(minutes=5)


def _content(document: dict[str, Any]) -> str:
    """The digest of a document without the keys that name its image set (a merge's result vs. the service's)."""
    return digest({k: v for k, v in document.items() if k not in ("DatastoreID", "ImageSetID")})


def _failure(exc: BaseException, what: str) -> StepOutcome:
    return StepOutcome(RequestStatus.FAILED, f"{what}: {describe(exc)}")


class WriteSteps:
    """Send, wait for and reconcile the write steps of a plan (one instance per run)."""

    def __init__(self, ledger: Ledger, calls: ServiceCalls) -> None:
        self.ledger = ledger
        self.calls = calls
        poll = calls.poll
        self.wait_settings = WaitSettings(delay=poll.initial, timeout=poll.timeout, sleep=poll.sleep, clock=poll.clock)

    # --- calls -----------------------------------------------------------------------------------------------
    def _ids(self, image_set_id: str) -> dict[str, str]:
        return {"datastoreId": self.calls.datastore_id, "imageSetId": image_set_id}

    def wait(self, name: str, image_set_id: str) -> dict[str, Any]:
        """Wait with waiter ``name`` (GetImageSet under its limiter); WaiterError on a failure state."""
        client = self.calls.client

        def get(**params: Any) -> Any:
            return self.calls.limiters.call(client, Action.GET_IMAGE_SET, lambda: client.get_image_set(**params))

        return wait_for(name, get, self.wait_settings, **self._ids(image_set_id))

    def write(self, action: Action, fn: Any) -> tuple[Any, Attempts]:
        attempts = Attempts()
        result = self.calls.limiters.call(self.calls.client, action, fn, cancel=self.calls.cancel, attempts=attempts)
        return result, attempts

    def search(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every SearchImageSets summary matching ``filters`` (all pages)."""
        client, token = self.calls.client, None
        out: list[dict[str, Any]] = []
        while True:
            params: dict[str, Any] = {"datastoreId": self.calls.datastore_id, "searchCriteria": {"filters": filters}}
            if token:
                params["nextToken"] = token
            page: Any = self.calls.read(Action.SEARCH_IMAGE_SETS, partial(client.search_image_sets, **params))
            out.extend(dict(summary) for summary in page.get("imageSetsMetadataSummaries", []))
            token = page.get("nextToken")
            if not token:
                return out

    # --- dispatch ----------------------------------------------------------------------------------------------
    def send(self, step: PlannedStep) -> StepOutcome | Pending:
        """Run ``step``'s call (or resume it from its journal state); a Pending finishes it."""
        state = self.ledger.state(step)
        status = RequestStatus(state["status"]) if state else None
        if state is not None and status is not None and status.final:
            version = state.get("version") or state.get("new_version")
            return StepOutcome(status, state.get("message"), state.get("created"), version, state.get("held_by"))
        if state is not None and status == RequestStatus.ACCEPTED:
            return Pending(lambda: self._finish(step, dict(state)))
        if state is not None and status == RequestStatus.SENDING:
            found = self._reconcile(step, dict(state))
            if found is not None:
                return found
        if step.kind is StepKind.UPDATE:
            return self._send_update(step)
        if step.kind.deletes:
            return self._send_delete(step)
        return self._send_copy(step)

    def _finish(self, step: PlannedStep, state: dict[str, Any]) -> StepOutcome:
        if step.kind is StepKind.UPDATE:
            return self._finish_update(step, state["target"], state["new_version"])
        if step.kind.deletes:
            return self._finish_delete(step, state["target"])
        return self._finish_copy(step, state["created"], state.get("created_version"))

    def _reconcile(self, step: PlannedStep, state: dict[str, Any]) -> StepOutcome | Pending | None:
        """What became of a step journaled ``sending`` (None: it never landed, send it)."""
        if step.kind is StepKind.UPDATE:
            return self._reconcile_update(step, state)
        if step.kind.deletes:
            return self._reconcile_delete(step, state)
        return self._reconcile_copy(step, state)

    # --- updates -----------------------------------------------------------------------------------------------
    def _promoted(self, step: PlannedStep) -> bool:
        return (isinstance(step.target, Ref) and step.target.step.endswith(":promote")) or isinstance(step.target, str)

    def _send_update(self, step: PlannedStep) -> StepOutcome | Pending:
        target = self.ledger.resolve(step.target)
        version = self.ledger.versions.get(target)
        if version is None:
            return StepOutcome(RequestStatus.CONFLICT, f"the version of image set {target} to update is unknown")
        call = {**step.params, **self._ids(target), "latestVersionId": str(version)}
        self.ledger.log(step, RequestStatus.SENDING, target=target, base_version=version)
        try:
            response, _ = self.write(
                Action.UPDATE_IMAGE_SET_METADATA, lambda: self.calls.client.update_image_set_metadata(**call)
            )
        except Cancelled:
            self.ledger.log(step, RequestStatus.UNSENT, target=target, message="cancelled")
            return StepOutcome(RequestStatus.UNSENT, "cancelled before it was sent")
        except ClientError as exc:
            found = self._reconcile_update(step, {"target": target, "base_version": version})
            return found if found is not None else self._final(step, _failure(exc, "UpdateImageSetMetadata"))
        new_version = str(response["latestVersionId"])
        self.ledger.log(step, RequestStatus.ACCEPTED, target=target, base_version=version, new_version=new_version)
        return Pending(lambda: self._finish_update(step, target, new_version))

    def _finish_update(self, step: PlannedStep, target: str, new_version: str) -> StepOutcome:
        try:
            self.wait(IMAGE_SET_UPDATED, target)
            outcome = StepOutcome(RequestStatus.DONE, version=new_version)
        except WaiterError as exc:
            info = exc.last_response or {}
            message = f"{info.get('imageSetWorkflowStatus', 'failed')}: {info.get('message', exc)}"
            outcome = StepOutcome(RequestStatus.FAILED, message, version=new_version)
        return self._final(step, outcome, target=target, new_version=new_version)

    def _reconcile_update(self, step: PlannedStep, state: dict[str, Any]) -> StepOutcome | None:
        target, sent = str(state["target"]), str(state["base_version"])
        latest = str(self.wait(IMAGE_SET_NOT_LOCKED, target)["versionId"])
        if latest == sent:
            return None
        candidate = str(int(sent) + 1)
        before = self.calls.document(target, sent)
        try:
            expected = apply_to_document(
                before, step.params, is_primary=self._promoted(step), history=lambda v: self.calls.document(target, v)
            )
        except AHIError:
            expected = None
        ours = expected is not None and self.calls.document(target, candidate) == expected
        if ours:
            return self._finish_update(step, target, candidate)
        message = f"image set {target} changed by another writer: sent against version {sent}, latest is {latest}"
        return self._final(step, StepOutcome(RequestStatus.CONFLICT, message), target=target)

    # --- deletes -----------------------------------------------------------------------------------------------
    def _send_delete(self, step: PlannedStep) -> StepOutcome | Pending:
        target = self.ledger.resolve(step.target)
        guard = self.ledger.versions.get(target)
        info = self.wait(IMAGE_SET_NOT_LOCKED, target)
        if info.get("imageSetState") == "DELETED":
            return self._final(step, StepOutcome(RequestStatus.DONE), target=target)
        if step.kind is StepKind.DELETE_PRIMARY and str(info.get("versionId")) != str(guard):
            return self._final(step, self._changed(step, target, guard, info.get("versionId")), target=target)
        self.ledger.log(step, RequestStatus.SENDING, target=target, guard_version=guard)
        try:
            self.write(Action.DELETE_IMAGE_SET, lambda: self.calls.client.delete_image_set(**self._ids(target)))
        except Cancelled:
            self.ledger.log(step, RequestStatus.UNSENT, target=target, message="cancelled")
            return StepOutcome(RequestStatus.UNSENT, "cancelled before it was sent")
        except ClientError as exc:
            found = self._reconcile_delete(step, {"target": target, "guard_version": guard})
            return found if found is not None else self._final(step, _failure(exc, "DeleteImageSet"), target=target)
        self.ledger.log(step, RequestStatus.ACCEPTED, target=target)
        return Pending(lambda: self._finish_delete(step, target))

    def _changed(self, step: PlannedStep, target: str, guard: Any, found: Any) -> StepOutcome:
        copy = next((k for s, k in self.ledger.created.items() if s.startswith(f"{step.original}:")), None)
        held = (
            f"; the working copy {copy} (non-primary, with the planned edits) is left: cleanup_plan(journal, client) "
            "deletes it"
            if copy
            else ""
        )
        return StepOutcome(
            RequestStatus.CONFLICT,
            f"image set {target} changed by another writer: planned against version {guard}, found {found}; "
            f"nothing deleted{held}",
        )

    def _finish_delete(self, step: PlannedStep, target: str) -> StepOutcome:
        try:
            self.wait(IMAGE_SET_DELETED, target)
        except WaiterError as exc:
            return self._final(step, _failure(exc, "DeleteImageSet"), target=target)
        return self._final(step, StepOutcome(RequestStatus.DONE), target=target)

    def _reconcile_delete(self, step: PlannedStep, state: dict[str, Any]) -> StepOutcome | Pending | None:
        target = str(state["target"])
        info = self.wait(IMAGE_SET_NOT_LOCKED, target)
        if info.get("imageSetState") == "DELETED":
            return self._final(step, StepOutcome(RequestStatus.DONE), target=target)
        guard = state.get("guard_version")
        if step.kind is StepKind.DELETE_PRIMARY and str(info.get("versionId")) != str(guard):
            return self._final(step, self._changed(step, target, guard, info.get("versionId")), target=target)
        return None

    # --- copies and promotions ---------------------------------------------------------------------------------
    def _copy_call(self, step: PlannedStep, source: str, version: str) -> dict[str, Any]:
        source_info: dict[str, Any] = {"latestVersionId": str(version)}
        if step.params.get("copiableAttributes"):
            source_info["DICOMCopies"] = {"copiableAttributes": step.params["copiableAttributes"]}
        information: dict[str, Any] = {"sourceImageSet": source_info}
        destination = step.params.get("destination")
        if destination is not None:
            target = self.ledger.resolve(destination)
            information["destinationImageSet"] = {
                "imageSetId": target,
                "latestVersionId": str(self.ledger.versions.get(target)),
            }
        call: dict[str, Any] = {
            "datastoreId": self.calls.datastore_id,
            "sourceImageSetId": source,
            "copyImageSetInformation": information,
        }
        if step.params.get("force"):
            call["force"] = True
        if step.kind is StepKind.PROMOTE:
            call["promoteToPrimary"] = True
        return call

    def _destination(self, step: PlannedStep) -> dict[str, Any]:
        """A merge's destination and the version our steps left it at (journal fields); {} for other copies."""
        if step.params.get("destination") is None:
            return {}
        target = self.ledger.resolve(step.params["destination"])
        return {"destination": target, "destination_version": self.ledger.versions.get(target)}

    def _send_copy(self, step: PlannedStep) -> StepOutcome | Pending:
        source = self.ledger.resolve(step.target)
        version = self.ledger.versions.get(source)
        self.wait(IMAGE_SET_NOT_LOCKED, source)
        into = self._destination(step)
        if into:
            self.wait(IMAGE_SET_NOT_LOCKED, into["destination"])
        call = self._copy_call(step, source, str(version))
        self.ledger.log(step, RequestStatus.SENDING, source=source, source_version=version, **into)
        try:
            response, attempts = self.write(Action.COPY_IMAGE_SET, lambda: self.calls.client.copy_image_set(**call))
        except Cancelled:
            self.ledger.log(step, RequestStatus.UNSENT, source=source, message="cancelled")
            return StepOutcome(RequestStatus.UNSENT, "cancelled before it was sent")
        except ClientError as exc:
            return self._copy_refused(step, source, version, exc)
        destination = response["destinationImageSetProperties"]
        created, created_version = str(destination["imageSetId"]), str(destination["latestVersionId"])
        self.ledger.log(
            step,
            RequestStatus.ACCEPTED,
            source=source,
            created=created,
            created_version=created_version,
            retried=attempts.sent > 1 or None,
        )
        if attempts.sent > 1:  # a retried CopyImageSet may have landed twice (no client token)
            self._orphans(step, source, version, keep=created)
        return Pending(lambda: self._finish_copy(step, created, created_version))

    def _copy_refused(self, step: PlannedStep, source: str, version: Any, exc: ClientError) -> StepOutcome:
        code = exc.response.get("Error", {}).get("Code", "")
        if is_throttling(exc) or never_sent(exc):
            self.ledger.log(step, RequestStatus.UNSENT, source=source, message=describe(exc))
            return StepOutcome(RequestStatus.UNSENT, f"{describe(exc)} (not applied; run apply again to retry)")
        if code == "InternalServerException":
            state = {"source": source, "source_version": version, "time": None, **self._destination(step)}
            found = self._reconcile_copy(step, state)
            if isinstance(found, Pending):
                return found.wait()
            if found is not None:
                return found
        status = RequestStatus.CONFLICT if code == "ConflictException" else RequestStatus.FAILED
        what = "promotion refused" if step.kind is StepKind.PROMOTE else "CopyImageSet refused"
        outcome = StepOutcome(status, f"{what}: {describe(exc)}")
        if step.kind is StepKind.PROMOTE:
            outcome.held_by = source
            outcome.message = f"{outcome.message}; content safe in non-primary image set {source}"
        return self._final(step, outcome, source=source)

    def _finish_copy(self, step: PlannedStep, created: str, created_version: Any) -> StepOutcome:
        try:
            info = self.wait(IMAGE_SET_COPIED, created)
        except WaiterError as exc:
            info = dict(exc.last_response or {})
            message = f"{step.kind} ended {info.get('imageSetWorkflowStatus', 'failed')}: {info.get('message', exc)}"
            if step.kind is StepKind.MERGE:  # the destination is ours (a working copy), not an orphan
                return self._final(step, StepOutcome(RequestStatus.FAILED, message))
            self.ledger.note(
                RecordKind.ORPHAN,
                image_set=created,
                step=step.step_id,
                reason=f"{info.get('imageSetWorkflowStatus', 'failed')}: {info.get('message', '')}",
            )
            if step.kind is StepKind.PROMOTE:  # content only in the copy: a resume promotes it again
                source = self.ledger.resolve(step.target)
                outcome = StepOutcome(
                    RequestStatus.UNSENT,
                    f"{message}; content safe in non-primary image set {source}: run apply again to promote it",
                    held_by=source,
                )
                self.ledger.log(step, RequestStatus.UNSENT, message=outcome.message)
                return outcome
            return self._final(step, StepOutcome(RequestStatus.FAILED, message), failed_copy=created)
        version = str(info.get("versionId") or created_version)
        outcome = StepOutcome(RequestStatus.DONE, created=created, version=version)
        return self._final(step, outcome, created=created, version=version)

    def _reconcile_merge(self, step: PlannedStep, state: dict[str, Any]) -> StepOutcome | Pending | None:
        """A merge journaled ``sending``: it landed when its destination moved on from the version it was sent
        against to the document the merge makes of it (CopyImageSet into an existing image set makes a new
        version of the destination); still at that version, it never landed."""
        source, version = str(state["source"]), str(state["source_version"])
        target, sent = str(state["destination"]), str(state["destination_version"])
        latest = str(self.wait(IMAGE_SET_NOT_LOCKED, target).get("versionId"))
        if latest == sent:
            return None
        selected = copies.select(self.calls.document(source, version), step.params.get("copiableAttributes"))
        try:
            expected: dict[str, Any] | None = copies.merge(self.calls.document(target, sent), selected)[0]
        except AHIError:
            expected = None
        if expected is not None and _content(expected) == _content(self.calls.document(target, latest)):
            self.ledger.log(step, RequestStatus.ACCEPTED, source=source, created=target, created_version=latest)
            return Pending(lambda: self._finish_copy(step, target, latest))
        message = f"image set {target} changed by another writer: merge sent against version {sent}, latest {latest}"
        return self._final(step, StepOutcome(RequestStatus.CONFLICT, message), source=source)

    def _reconcile_copy(self, step: PlannedStep, state: dict[str, Any]) -> StepOutcome | Pending | None:
        if step.kind is StepKind.MERGE:
            return self._reconcile_merge(step, state)
        source, version = str(state["source"]), str(state["source_version"])
        found = self._candidates(step, source, version, state.get("time"))
        if not found:
            return None
        keep, *extra = found
        for other in extra:
            self.ledger.note(
                RecordKind.ORPHAN,
                image_set=other["imageSetId"],
                step=step.step_id,
                reason="duplicate copy from a retried CopyImageSet",
            )
        created = str(keep["imageSetId"])
        self.ledger.log(
            step,
            RequestStatus.ACCEPTED,
            source=source,
            created=created,
            created_version=str(keep.get("version", "1")),
            adopted=True,
        )
        return Pending(lambda: self._finish_copy(step, created, keep.get("version")))

    def _orphans(self, step: PlannedStep, source: str, version: Any, *, keep: str) -> None:
        for other in self._candidates(step, source, str(version), None):
            if other["imageSetId"] != keep:
                self.ledger.note(
                    RecordKind.ORPHAN,
                    image_set=other["imageSetId"],
                    step=step.step_id,
                    reason="duplicate copy from a retried CopyImageSet",
                )

    def _candidates(self, step: PlannedStep, source: str, version: str, sent_at: Any) -> list[dict[str, Any]]:
        """Image sets a lost CopyImageSet of ``source`` at ``version`` may have made, earliest first."""
        document = self.calls.document(source, version)
        series = next(iter(document.get("Study", {}).get("Series", {})), None)
        if series is None:
            return []
        filters: list[dict[str, Any]] = [{"operator": "EQUAL", "values": [{"DICOMSeriesInstanceUID": series}]}]
        promote = step.kind is StepKind.PROMOTE
        if promote:
            filters.append({"operator": "EQUAL", "values": [{"isPrimary": True}]})
        since = dt.datetime.fromisoformat(sent_at) - CLOCK_SLACK if sent_at else None
        claimed = self.ledger.claimed() | {source}
        wanted = digest(copies.select(document, step.params.get("copiableAttributes")))
        out = []
        for summary in self.search(filters):
            image_set_id = str(summary["imageSetId"])
            if image_set_id in claimed or bool(summary.get("isPrimary")) is not promote:
                continue
            created = summary.get("createdAt")
            if since is not None and isinstance(created, dt.datetime) and created < since:
                continue
            info = self.wait(IMAGE_SET_NOT_LOCKED, image_set_id)
            if digest(self.calls.document(image_set_id, str(info["versionId"]))) == wanted:
                out.append(summary)
        return sorted(out, key=lambda s: s.get("createdAt") or dt.datetime.min.replace(tzinfo=dt.UTC))

    # --- journal -----------------------------------------------------------------------------------------------
    def _final(self, step: PlannedStep, outcome: StepOutcome, **extra: Any) -> StepOutcome:
        extra.setdefault("version", outcome.version)
        extra.setdefault("created", outcome.created)
        self.ledger.log(step, outcome.status, message=outcome.message, held_by=outcome.held_by, **extra)
        return outcome
