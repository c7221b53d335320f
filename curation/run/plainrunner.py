"""The plain requests of a run: each image set's UpdateImageSetMetadata requests in order, resumed from the
journal, reconciled when their outcome is unknown, stopped on cancel or failure (``curation.run.steps`` does the
per-request work). ``curation.run.applying.run_plan`` runs components of a plain plan with it;
``curation.run.promoting`` runs its requests as nodes of the DAG scheduler.
"""

from __future__ import annotations

import threading
from typing import Any

from curation.curate.updateplan import PlannedRequest, UpdatePlan
from curation.run.journal import UNKNOWN_STATUSES, Journal, Purpose, RequestStatus
from curation.run.limits import CancelSignal
from curation.run.options import Progress, RunOptions
from curation.run.results import ImageSetResult, ResultStatus
from curation.run.retries import describe, never_sent
from curation.run.steps import Current, Outcome, Steps, StopReason, apply_affected

__all__ = ["PlainRunner", "Reporter", "components", "result_rows"]

Rows = dict[str, ImageSetResult]


def components(plan: UpdatePlan) -> list[list[PlannedRequest]]:
    """Requests grouped into independent runs: image sets linked by ``affects`` share one, in plan order."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for request in plan.requests:
        find(request.image_set_id)
        for other in request.affects:
            parent[find(other)] = find(request.image_set_id)
    groups: dict[str, list[PlannedRequest]] = {}
    for request in plan.requests:
        groups.setdefault(find(request.image_set_id), []).append(request)
    for requests in groups.values():
        # plan order, but each image set's own requests by index
        queues: dict[str, list[PlannedRequest]] = {}
        for r in requests:
            queues.setdefault(r.image_set_id, []).append(r)
        iterators = {k: iter(sorted(v, key=lambda r: int(r.index))) for k, v in queues.items()}
        requests[:] = [next(iterators[r.image_set_id]) for r in requests]
    return list(groups.values())


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def result_rows(plan: UpdatePlan) -> Rows:
    """An empty result row per image set of the plan (siblings reached by ``affects`` included)."""
    rows = {
        image_set_id: ImageSetResult(image_set_id, _opt_str(plan.base_versions.get(image_set_id)), len(requests))
        for image_set_id, requests in plan.by_image_set().items()
    }
    for request in plan.requests:
        for sibling in request.affects:
            rows.setdefault(sibling, ImageSetResult(sibling, _opt_str(plan.base_versions.get(sibling)), 0))
    return rows


class _Reporter:
    """Progress of a run: the tqdm bar and the caller's callback, called under one lock."""

    def __init__(self, total: int, purpose: Purpose, options: RunOptions, desc: str) -> None:
        from tqdm.auto import tqdm

        self.total, self.purpose, self.callback = total, purpose, options.on_progress
        self.finished = 0
        self._lock = threading.Lock()
        self._bar = tqdm(total=total, desc=desc, unit=" requests", disable=not options.progress)

    def step(self, request: PlannedRequest, status: RequestStatus | None, row: ImageSetResult) -> None:
        with self._lock:
            self.finished += 1
            self._bar.update(1)
            if self.callback is not None:
                last = row.status is not None
                self.callback(
                    Progress(
                        purpose=self.purpose,
                        image_set_id=request.image_set_id,
                        index=int(request.index),
                        status=status,
                        requests_finished=self.finished,
                        requests_total=self.total,
                        image_set_status=row.status if last else None,
                    )
                )

    def close(self) -> None:
        self._bar.close()


class _Runner:
    """Runs components of a plan (one worker each at a time): resume, send, stop on cancel or failure."""

    def __init__(
        self, steps: Steps, journal: Journal | None, reporter: _Reporter, *, send_new: bool, cancel: CancelSignal | None
    ) -> None:
        self.steps = steps
        self.journal = journal
        self.reporter = reporter
        self.send_new = send_new
        self.cancel = cancel
        self.states = journal.last_states() if journal is not None else {}
        self.halted = threading.Event()
        self.stop: tuple[StopReason, str] | None = None
        self._lock = threading.Lock()

    def halt(self, reason: StopReason, message: str) -> None:
        with self._lock:
            if self.stop is None:
                self.stop = (reason, message)
        self.halted.set()

    def _stopped_row(self, row: ImageSetResult) -> None:
        if self.cancel is not None and self.cancel.is_set() and self.stop is None:
            self.halt(StopReason.CANCELLED, "cancelled")
        if row.status is not None or self.stop is None:
            return
        reason, message = self.stop
        if reason == StopReason.CANCELLED:
            row.status, row.error = ResultStatus.CANCELLED, "cancelled before it was sent: run apply again to continue"
        elif reason == StopReason.UNREACHABLE:
            row.status, row.error = ResultStatus.FAILED, message
        else:
            row.status, row.error = ResultStatus.SKIPPED, message

    def _must_stop(self) -> bool:
        return self.halted.is_set() or (self.cancel is not None and self.cancel.is_set())

    def run_component(self, requests: list[PlannedRequest], rows: Rows) -> None:
        current: Current = {}
        stopped: set[str] = set()
        for request in requests:
            image_set_id = request.image_set_id
            row = rows[image_set_id]
            current.setdefault(image_set_id, row.version_before)
            if image_set_id in stopped or self._must_stop():
                if image_set_id not in stopped:
                    self._stopped_row(row)
                    stopped.add(image_set_id)
                self.reporter.step(request, None, row)
                continue
            outcome = self._attempt(request, current, row)
            if outcome is None or outcome.status != RequestStatus.DONE:
                stopped.add(image_set_id)
            if outcome is not None:
                self._apply(outcome, current, row, image_set_id)
            self.reporter.step(request, outcome.status if outcome else None, row)
        self._sibling_rows(requests, rows, current)

    def _attempt(self, request: PlannedRequest, current: Current, row: ImageSetResult) -> Outcome | None:
        try:
            outcome = self._run_one(request, current, row)
        except Exception as exc:
            if never_sent(exc):  # the service went away while we waited for an answer: stop the run
                self.halt(StopReason.UNREACHABLE, f"could not connect to {self.steps.calls.endpoint}")
            return Outcome(
                RequestStatus.FAILED,
                message=f"{describe(exc)} (outcome journaled as unknown: run apply again to reconcile)",
            )
        if outcome is not None and outcome.stop is not None:
            self.halt(outcome.stop, outcome.message or str(outcome.stop))
        return outcome

    def _apply(self, outcome: Outcome, current: Current, row: ImageSetResult, image_set_id: str) -> None:
        if outcome.status == RequestStatus.DONE:
            row.done += 1
            current[image_set_id] = outcome.new_version
            row.version_after = outcome.new_version
            if row.done == row.planned:
                row.status = ResultStatus.APPLIED
            return
        if outcome.stop == StopReason.CANCELLED:
            self._stopped_row(row)
            return
        row.status = ResultStatus.FAILED if outcome.status == RequestStatus.UNSENT else ResultStatus(outcome.status)
        row.error = outcome.message
        if outcome.status == RequestStatus.FAILED and outcome.new_version:
            row.version_after = outcome.new_version

    def _sibling_rows(self, requests: list[PlannedRequest], rows: Rows, current: Current) -> None:
        """Rows of image sets changed only through includeStudyImageSets."""
        for request in requests:
            for sibling in request.affects:
                row = rows[sibling]
                if row.planned or row.status:
                    continue
                if sibling not in current:
                    row.status, row.error = ResultStatus.SKIPPED, "the study-wide request was not applied"
                elif current[sibling] is None:
                    row.status = ResultStatus.CONFLICT
                    row.error = "changed by another writer too: the version our study-wide request made is unknown"
                else:
                    row.status, row.version_after, row.done = ResultStatus.APPLIED, current[sibling], 0

    def _run_one(self, request: PlannedRequest, current: Current, row: ImageSetResult) -> Outcome | None:
        image_set_id = request.image_set_id
        state = self.states.get((image_set_id, int(request.index)))
        status = RequestStatus(state["status"]) if state else None
        if state is not None and status == RequestStatus.DONE:
            apply_affected(state.get("affected") or {}, current)
            return Outcome(RequestStatus.DONE, state["new_version"])
        if state is not None and status in (RequestStatus.FAILED, RequestStatus.CONFLICT):
            return Outcome(status, state.get("new_version"), state.get("message"), state.get("actual"))
        version = current.get(image_set_id)
        if state is not None and status in UNKNOWN_STATUSES:
            sent = state["base_version"]
            if status == RequestStatus.ACCEPTED:
                outcome = self.steps.finish(image_set_id, state["new_version"])
            else:
                outcome = self.steps.reconcile(request, sent)
            if outcome.status != RequestStatus.UNSENT:
                return self.steps.record(request, sent, outcome, current)
            version = sent if version is None else version  # never applied: the next "sending" supersedes it
        if not self.send_new:
            row.status = row.status or ResultStatus.SKIPPED
            row.error = row.error or "not sent (reconcile only)"
            return None
        if version is None:
            outcome = Outcome(
                RequestStatus.CONFLICT,
                message="the version to send against is unknown (a study-wide update "
                "by this plan could not be told apart from another writer's)",
            )
            return self.steps.record(request, None, outcome, current)
        return self.steps.record(request, version, self.steps.send(request, version), current)


#: the runner of plain requests (``curation.run.promoting`` runs them on its scheduler too)
PlainRunner = _Runner
Reporter = _Reporter
