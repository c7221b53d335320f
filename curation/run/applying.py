"""Apply an UpdatePlan to HealthImaging exactly once, resumably: ``apply``, and ``run_plan`` under it.

``apply`` checks the plan (its content must still hash to its ``plan_id``, its requests name its datastore),
takes the journal's lock (one writer per journal), and runs the plan: each image set's requests in order,
each with the version the previous one produced (the first with the plan's base version, after checking it
is the document the plan was made on), under per-action limiters shared by every worker
(``curation.run.limits``: the account's or documented quota, adapting to ThrottlingExceptions). After each
request it waits out ``LOCKED`` and reads UPDATED or UPDATE_FAILED and its message. A stale version (AHI:
ResourceNotFoundException "Requested version(s) of ImageSet(s) is not the latest.") stops that image set
with status ``"conflict"``: someone else changed it since the snapshot, and nothing is overwritten.

Image sets linked by ``includeStudyImageSets`` (a request's ``affects``) run one after another in one worker,
in plan order; a sibling's expected version moves on only when GetImageSet shows exactly one new version after
our study-wide request (the journal holds that request's "done" record), else its requests stop as a conflict.

Every step is journaled (``curation.run.journal``) before and after the call; running ``apply`` again with the
same plan and journal resumes. A request whose outcome is unknown is reconciled with the service
(``curation.run.steps``). ``on_progress`` is called after each finished request; ``cancel`` (a
``threading.Event``) stops the run between requests: what was not sent is sent by the next ``apply``.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any

import pandas as pd

from curation.curate.updateplan import PlannedRequest, UpdatePlan
from curation.run.journal import (
    UNKNOWN_STATUSES,
    Journal,
    JournalLock,
    Purpose,
    RecordKind,
    RequestStatus,
)
from curation.run.limits import CancelSignal
from curation.run.options import Progress, RunKeywords, RunOptions, run_options
from curation.run.results import ImageSetResult, ResultStatus, result_frame
from curation.run.retries import describe, never_sent
from curation.run.servicecalls import ServiceCalls
from curation.run.steps import Current, Outcome, Steps, StopReason, apply_affected

if TYPE_CHECKING:
    from mypy_boto3_medical_imaging import HealthImagingClient
    from typing_extensions import Unpack

__all__ = ["apply", "components", "run_plan"]

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

    def __init__(self, steps: Steps, journal: Journal | None, reporter: _Reporter, *, send_new: bool,
                 cancel: CancelSignal | None) -> None:
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


#: the runner of plain requests, which ``curation.run.promoting`` runs on its scheduler too
PlainRunner = _Runner


def run_plan(
    plan: UpdatePlan,
    client: HealthImagingClient,
    journal: Journal | None,
    options: RunOptions,
    *,
    purpose: Purpose = Purpose.APPLY,
    send_new: bool = True,
    desc: str = "UpdateImageSetMetadata",
) -> tuple[pd.DataFrame, ServiceCalls]:
    """Run ``plan`` with ``client``, journaled in the open ``journal``; return the result table and the calls."""
    calls = ServiceCalls(client, plan.datastore_id, options)
    rows = result_rows(plan)
    reporter = _Reporter(len(plan.requests), purpose, options, desc)
    runner = _Runner(Steps(plan, calls, journal), journal, reporter, send_new=send_new, cancel=options.cancel)
    executor = ThreadPoolExecutor(max_workers=options.max_workers, thread_name_prefix=f"ahi-{purpose}")
    completed = False
    try:
        futures: dict[Future[None], list[PlannedRequest]] = {
            executor.submit(runner.run_component, component, rows): component for component in components(plan)
        }
        for future in as_completed(futures):
            future.result()
        completed = True
    finally:
        if not completed:
            runner.halt(StopReason.CANCELLED, "interrupted")
        executor.shutdown(wait=True, cancel_futures=not completed)
        reporter.close()
    if runner.stop is not None and journal is not None:
        reason, message = runner.stop
        journal.append({"kind": RecordKind.STOP, "plan_id": plan.plan_id, "reason": reason, "message": message})
    return result_frame(rows.values()), calls


def apply(
    plan: UpdatePlan,
    client: HealthImagingClient,
    journal: str | os.PathLike[str] | None = None,
    *,
    dry_run: bool = False,
    options: RunOptions | None = None,
    window: int = 16,
    pipeline: bool = True,
    **keywords: Unpack[RunKeywords],
) -> pd.DataFrame:
    """Apply ``plan`` (an UpdatePlan) with ``client`` (a boto3 ``medical-imaging`` client), journaled.

    Returns one row per image set: ImageSetID, status (``"applied"``, ``"conflict"``, ``"failed"``,
    ``"skipped"``, ``"cancelled"``, ``"dry-run"``), version_before (the plan's base version), version_after
    (the last version our requests made), requests_done, requests_planned, error.

    - ``journal``: the JSON-lines journal path (required unless ``dry_run``). Calling ``apply`` again with the
      same plan and journal resumes: done requests are skipped, unknown outcomes reconciled, nothing is sent
      twice. A journal of another plan is refused, and so is a journal another process is using (``JournalError``).
    - ``rate``/``burst``: UpdateImageSetMetadata calls per second, shared by all workers. ``"auto"`` (default):
      start at ``quotas`` (the account's, ``curation.run.limits.account_quotas``) or AHI's documented quota
      (10 per second, burst 40) and adapt to ThrottlingExceptions; a number is a ceiling; None: no limit.
    - ``max_workers``: image sets applied concurrently. ``control_rate``: the same for the reads made while
      polling and reconciling (GetImageSet, GetImageSetMetadata).
    - ``poll``: a ``PollPolicy`` (or the first poll interval in seconds) for waiting out LOCKED.
    - ``retries``: a ``RetryPolicy`` (or a number of attempts) for ConflictException (LOCKED); throttling and
      5xx are retried by botocore (create your client with ``Config(retries={"mode": "standard"})``).
    - ``dry_run``: print every request exactly as it would be sent and send none (the table says
      ``"dry-run"``; ``frame.attrs["requests"]`` holds the calls' keyword arguments).
    - ``progress``: a tqdm bar; ``on_progress(Progress)``: called after each finished request, from the worker
      that finished it; ``cancel``: a ``threading.Event`` that stops the run between requests (the journal
      records it; ``apply`` again continues).
    - ``options``: a ``RunOptions`` with all of the above (the keyword arguments given override it; the
      keywords are ``RunKeywords``).

    A plan with copy-and-promote procedures (``plan.steps``, AHI's documented way to change what a primary image
    set refuses) runs on a DAG scheduler (``curation.run.scheduler``, ``curation.run.promoting``): each action
    (CopyImageSet, DeleteImageSet, UpdateImageSetMetadata) sends at its own quota (set them with ``quotas``),
    side by side (``pipeline=False``: one step at a time, its wait included); ``window`` caps the members
    between their copy and their last step. Its table adds ``new_image_set_id`` (a promotion changes the image
    set ID) and ``held_by``, statuses ``stopped`` and ``incomplete``, and ``attrs["id_mapping"]``
    (``curation.id_mapping``).
    """
    plan.check()
    if dry_run:
        return dry_run_frame(plan) if not plan.steps else dry_run_steps(plan)
    if journal is None:
        raise ValueError("apply needs a journal path (journal=...): it is what makes a crash resumable")
    opts = run_options(options, **keywords)
    with JournalLock(journal), Journal(journal) as opened:
        opened.start(plan, Purpose.APPLY)
        if plan.steps:
            from curation.run.promoting import run_steps

            return run_steps(plan, client, opened, opts, purpose=Purpose.APPLY, window=window, pipeline=pipeline)
        frame, _ = run_plan(plan, client, opened, opts, purpose=Purpose.APPLY)
    return frame


def dry_run_frame(plan: UpdatePlan) -> pd.DataFrame:
    """Print every request of ``plan`` as it would be sent; the result table says ``"dry-run"``."""
    calls = []
    rows = []
    for image_set_id, requests in plan.by_image_set().items():
        base = _opt_str(plan.base_versions.get(image_set_id))
        for number, request in enumerate(requests):
            version = base if number == 0 else f"<latestVersionId returned by request {number - 1}>"
            call = request.call(str(version))
            calls.append(call)
            print(f"update_image_set_metadata(**{json.dumps(call, sort_keys=True)})")
        rows.append(ImageSetResult(image_set_id, base, len(requests), status=ResultStatus.DRY_RUN))
    frame = result_frame(rows)
    frame.attrs["requests"] = calls
    return frame


def dry_run_steps(plan: UpdatePlan) -> pd.DataFrame:
    """Print every request and step of a plan with procedures in order, as the call it makes (image sets a step
    creates spelled ``<image set created by step S>``; checks as ``# check:`` lines); send nothing."""
    from curation.curate.planstep import Ref

    def spell(target: object) -> str:
        return f"<image set created by step {target.step}>" if isinstance(target, Ref) else str(target)

    for request in plan.requests:
        call = request.call(str(plan.base_versions.get(request.image_set_id)))
        print(f"update_image_set_metadata(**{json.dumps(call, sort_keys=True)})")
    for step in plan.steps:
        if step.kind.check:
            print(f"# check: {step.kind} {spell(step.target)} ({step.step_id}) {step.description}".rstrip())
            continue
        params = {k: (spell(v) if isinstance(v, Ref) else v) for k, v in step.params.items()}
        marker = " [DELETE]" if step.kind.deletes else " [NEW ID]" if step.kind.changes_id else ""
        print(f"{step.action}{marker} {spell(step.target)} {json.dumps(params, sort_keys=True)} ({step.step_id})")
    rows = [ImageSetResult(i, _opt_str(plan.base_versions.get(i)), 0, status=ResultStatus.DRY_RUN)
            for i in plan.image_set_ids]
    return result_frame(rows, procedures=True)
