"""One step of a run: send a request against a version and journal it, or find out what became of a request
whose answer was lost.

Before the first request of an image set is sent against its base version, the document at that version is
compared with the digest the plan recorded (``PlannedRequest.planned_on``): a base version that is not the
document the plan was made on (edited, or another writer's) is a conflict, and nothing is sent.

After a send fails, the ``Attempts`` of the call decide: when no attempt could have changed anything (all
throttled, refused, never connected) the request was not applied (``unsent``: a resume sends it again; a
connection that could not be made stops the run, naming the endpoint); a stale refusal on a call none of whose
attempts could have applied it is another writer's version, unless the journal says that version is this
plan's own; anything else is reconciled with the service. Reconciling: the version after the one the request
was sent against is ours when its document is what ``apply_to_document`` makes of the earlier one; if no
version appeared, it was never applied. No change is ever applied twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from botocore.exceptions import ClientError

from curation.curate.updateplan import PlannedRequest, UpdatePlan, document_digest
from curation.model.document import DocumentError
from curation.model.errors import AHIError
from curation.model.updates import apply_to_document
from curation.run.journal import Journal, Operation, RecordKind, RequestStatus, VersionChains, last_states
from curation.run.limits import Cancelled
from curation.run.retries import describe, is_conflict, is_stale, is_throttling, is_transient, never_sent
from curation.run.servicecalls import ServiceCalls, UpdateFailed

Current = dict[str, str | None]


class StopReason(StrEnum):
    """Why a run stopped before its end (journaled as a ``stop`` record)."""

    CANCELLED = "cancelled"
    UNREACHABLE = "unreachable"


@dataclass
class Outcome:
    """What became of one request."""

    status: RequestStatus  # DONE, FAILED, CONFLICT or UNSENT
    new_version: str | None = None
    message: str | None = None
    actual: str | None = None
    stop: StopReason | None = None


def version_number(version: Any) -> int | None:
    try:
        return int(str(version))
    except (TypeError, ValueError):
        return None


def someone_else(expected: str | None, latest: str | None) -> str:
    return f"image set changed by someone else: expected version {expected}, latest is {latest}"


class Steps:
    """The per-request work of one run of ``plan``: journal records, sends, reconciliation, siblings."""

    def __init__(self, plan: UpdatePlan, calls: ServiceCalls, journal: Journal | None) -> None:
        self.plan = plan
        self.calls = calls
        self.journal = journal

    # journal -------------------------------------------------------------------------------------------
    def log(
        self, request: PlannedRequest, status: RequestStatus, base: str | None, *, sync: bool = True, **extra: Any
    ) -> None:
        if self.journal is None:
            return
        record = {
            "kind": RecordKind.REQUEST,
            "plan_id": self.plan.plan_id,
            "operation": Operation.UPDATE,
            "image_set_id": request.image_set_id,
            "index": int(request.index),
            "base_version": base,
            "status": status,
        }
        record.update({k: v for k, v in extra.items() if v is not None})
        self.journal.append(record, sync=sync)

    def record(self, request: PlannedRequest, sent: str | None, outcome: Outcome, current: Current) -> Outcome:
        """Journal the outcome of ``request`` (and, for a study-wide one, where its siblings went)."""
        if outcome.status == RequestStatus.UNSENT:
            self.log(request, RequestStatus.UNSENT, sent, message=outcome.message)
            return outcome
        affected = None
        if outcome.status == RequestStatus.DONE and request.affects:
            affected = self.siblings(request, current)
        self.log(
            request,
            outcome.status,
            sent,
            new_version=outcome.new_version,
            message=outcome.message,
            actual=outcome.actual,
            affected=affected,
        )
        if affected:
            apply_affected(affected, current)
        return outcome

    # outcomes ------------------------------------------------------------------------------------------
    def finish(self, image_set_id: str, new_version: str) -> Outcome:
        """Wait until the image set is ACTIVE and read what became of ``new_version``."""
        info = self.calls.wait_active(image_set_id)
        if str(info.get("versionId")) != str(new_version):
            info = self.calls.get_image_set(image_set_id, new_version)
        status = str(info.get("imageSetWorkflowStatus", ""))
        if status.endswith("_FAILED"):
            return Outcome(RequestStatus.FAILED, new_version, f"{status}: {info.get('message', '')}".rstrip(": "))
        return Outcome(RequestStatus.DONE, new_version)

    def _expected(self, image_set_id: str, before: dict[str, Any], params: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return apply_to_document(before, params, history=lambda v: self.calls.document(image_set_id, v))
        except (AHIError, DocumentError):
            return None

    def reconcile(self, request: PlannedRequest, sent: str) -> Outcome:
        """What became of ``request`` sent against version ``sent`` when its answer was lost."""
        image_set_id = request.image_set_id
        latest = str(self.calls.wait_active(image_set_id)["versionId"])
        if latest == str(sent):
            return Outcome(RequestStatus.UNSENT)
        number = version_number(sent)
        if number is None:
            return Outcome(RequestStatus.CONFLICT, message=f"cannot tell the version after {sent}", actual=latest)
        candidate = str(number + 1)
        info = self.calls.get_image_set(image_set_id, candidate)
        expected = self._expected(image_set_id, self.calls.document(image_set_id, sent), request.params)
        ours = expected is not None and self.calls.document(image_set_id, candidate) == expected
        status = str(info.get("imageSetWorkflowStatus", ""))
        if status.endswith("_FAILED"):
            return Outcome(
                RequestStatus.FAILED,
                candidate,
                f"version {candidate} after {sent} ended {status}: {info.get('message', '')} "
                "(our request or another writer's)",
            )
        if ours:
            return Outcome(RequestStatus.DONE, candidate)
        return Outcome(RequestStatus.CONFLICT, message=someone_else(sent, latest), actual=latest)

    # sending -------------------------------------------------------------------------------------------
    def check_planned_on(self, request: PlannedRequest, version: str) -> Outcome | None:
        """A conflict when ``version`` is the base version but not the document the request was planned on."""
        if request.planned_on is None or str(self.plan.base_versions.get(request.image_set_id)) != str(version):
            return None
        try:
            document = self.calls.document(request.image_set_id, version)
        except ClientError as exc:
            return Outcome(RequestStatus.CONFLICT, message=f"version {version} cannot be read: {describe(exc)}")
        except Exception as exc:
            if never_sent(exc):
                return self.unreachable(exc)
            raise
        if document_digest(document) == request.planned_on:
            return None
        return Outcome(
            RequestStatus.CONFLICT,
            message=f"version {version} of image set {request.image_set_id} is not the document this plan was made "
            "on (its base version was changed, or that version is another writer's): nothing was sent",
            actual=str(version),
        )

    def unreachable(self, cause: BaseException) -> Outcome:
        """Nothing was sent: no connection could be made (the run stops, naming the endpoint)."""
        return Outcome(
            RequestStatus.UNSENT,
            message=f"could not connect to {self.calls.endpoint}: nothing was sent ({describe(cause)})",
            stop=StopReason.UNREACHABLE,
        )

    def send(self, request: PlannedRequest, version: str) -> Outcome:
        """Send ``request`` against ``version``, journaled before and after; wait for its outcome."""
        refused = self.check_planned_on(request, version)
        if refused is not None:
            return refused
        self.log(request, RequestStatus.SENDING, version, affects=list(request.affects) or None)
        try:
            response = self.calls.update(request.call(version))
        except Cancelled:
            return Outcome(RequestStatus.UNSENT, message="cancelled before it was sent", stop=StopReason.CANCELLED)
        except UpdateFailed as failure:
            return self._failed(request, version, failure)
        new_version = str(response["latestVersionId"])
        # not fsynced: if it is lost, the "sending" record alone makes a resume reconcile the request
        self.log(request, RequestStatus.ACCEPTED, version, new_version=new_version, sync=False)
        return self.finish(request.image_set_id, new_version)

    def _failed(self, request: PlannedRequest, version: str, failure: UpdateFailed) -> Outcome:
        cause, attempts = failure.cause, failure.attempts
        could_apply = attempts.sent == 0 or not attempts.nothing_reached
        if is_stale(cause) and not could_apply:
            return self._stale(request, version, cause)
        if not could_apply and never_sent(cause):
            return self.unreachable(cause)
        if not could_apply and (is_throttling(cause) or is_conflict(cause)):
            return Outcome(RequestStatus.UNSENT, message=f"{describe(cause)} (not applied; run apply again to retry)")
        if could_apply and (is_transient(cause) or is_conflict(cause) or is_stale(cause)):
            outcome = self.reconcile(request, version)
            if outcome.status == RequestStatus.UNSENT:
                if is_stale(cause):  # refused as stale, yet no new version: the version moved under us
                    return Outcome(RequestStatus.CONFLICT, message=describe(cause), actual=version)
                outcome.message = f"{describe(cause)} (not applied; run apply again to retry)"
            return outcome
        if isinstance(cause, ClientError):
            return Outcome(RequestStatus.FAILED, message=describe(cause))
        raise cause

    def _stale(self, request: PlannedRequest, version: str, cause: Exception) -> Outcome:
        """A stale refusal of a request that cannot have been applied by this call: whose is the newer version?"""
        latest = str(self.calls.wait_active(request.image_set_id)["versionId"])
        if self.journal is not None:
            records = self.journal.reread()
            state = last_states(records).get((request.image_set_id, int(request.index)))
            if state is not None and state.get("status") == RequestStatus.DONE:  # done by another run of this plan
                return Outcome(RequestStatus.DONE, str(state["new_version"]))
            if latest in VersionChains(records, self.plan.base_versions).ours(request.image_set_id):
                return self.reconcile(request, version)  # the newer version is this plan's own
        return Outcome(RequestStatus.CONFLICT, message=someone_else(version, latest), actual=latest)

    def siblings(self, request: PlannedRequest, current: Current) -> dict[str, list[str | None]]:
        """After a study-wide request: each sibling's [version before, version after] (after None if unknown)."""
        moved: dict[str, list[str | None]] = {}
        for sibling in request.affects:
            before = current.get(sibling, self.plan.base_versions.get(sibling))
            latest = str(self.calls.wait_active(sibling)["versionId"])
            number = version_number(before)
            if before is None and version_number(latest) is not None:
                before = str(int(latest) - 1)
                number = int(before)
            after = latest if number is not None and version_number(latest) == number + 1 else None
            moved[sibling] = [before, after]
        return moved


def apply_affected(affected: Mapping[str, list[str | None]], current: Current) -> None:
    """Move each sibling's current version to where a study-wide request of ours left it."""
    for sibling, (_, after) in affected.items():
        current[sibling] = after
