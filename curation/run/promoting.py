"""Run a plan with copy-and-promote procedures: its plain requests and its steps on one DAG scheduler.

The plain requests run as today (``curation.run.applying``'s runner and ``curation.run.steps``: version guard,
reconcile, study-wide siblings), each after the previous request of its image set and of every image set its
``includeStudyImageSets`` reaches; the procedure steps run with ``curation.run.procedures`` (writes) and
``curation.run.gates`` (checks). Everything is journaled and resumable. The result has one row per pre-plan
image set, with ``new_image_set_id`` (the promoted primary: the ID changes) and ``held_by`` (the non-primary
image set holding a member's content while it has no primary), and ``attrs["id_mapping"]`` (``IdMapping``).
"""

from __future__ import annotations

import threading
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import pandas as pd

from curation.curate.planstep import PlannedStep, StepKind
from curation.curate.updateplan import PlannedRequest, UpdatePlan
from curation.run.journal import Journal, Purpose, RecordKind, RequestStatus
from curation.run.mapping import IdMapping
from curation.run.options import RunOptions
from curation.run.plainrunner import PlainRunner, result_rows
from curation.run.procedures import WriteSteps
from curation.run.results import ImageSetResult, ResultStatus, result_frame
from curation.run.scheduler import Node, Scheduler
from curation.run.servicecalls import ServiceCalls
from curation.run.stepstate import Ledger, Pending, StepOutcome

if TYPE_CHECKING:
    from mypy_boto3_medical_imaging import HealthImagingClient

__all__ = ["DEFAULT_WINDOW", "run_steps"]

#: procedure members between their first copy and their last step, at most (a group is admitted whole)
DEFAULT_WINDOW = 16


def _plain_after(plan: UpdatePlan) -> dict[str, tuple[str, ...]]:
    """Each plain request after the previous one on its image set and on every sibling it reaches."""
    last: dict[str, str] = {}
    after: dict[str, tuple[str, ...]] = {}
    for request in sorted(plan.requests, key=lambda r: int(r.index)):
        touched = [request.image_set_id, *request.affects]
        after[request.step_id] = tuple(dict.fromkeys(last[i] for i in touched if i in last))
        for image_set_id in touched:
            last[image_set_id] = request.step_id
    return after


class _Run:
    """One run of a plan with steps: the nodes, their executors, the result rows."""

    def __init__(
        self,
        plan: UpdatePlan,
        client: HealthImagingClient,
        journal: Journal | None,
        options: RunOptions,
        purpose: Purpose,
    ) -> None:
        from curation.run.gates import Gates
        from curation.run.steps import Steps

        self.plan = plan
        self.calls = ServiceCalls(client, plan.datastore_id, options)
        self.ledger = Ledger(plan, journal)
        self.writes = WriteSteps(self.ledger, self.calls)
        self.gates = Gates(self.writes)
        self.rows = result_rows(plan)
        self.options = options
        self.purpose = purpose
        self.runner = PlainRunner(
            Steps(plan, self.calls, journal), journal, cast(Any, _NoReport()), send_new=True, cancel=options.cancel
        )
        self._lock = threading.Lock()
        self.finished = 0
        from tqdm.auto import tqdm

        total = len(plan.requests) + len(plan.steps)
        self.bar = tqdm(total=total, desc=str(purpose), unit=" steps", disable=not options.progress)

    # --- nodes -------------------------------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        after = _plain_after(self.plan)
        nodes = [
            Node(r.step_id, StepKind.UPDATE, partial(self._plain, r), after[r.step_id], None, order=n)
            for n, r in enumerate(self.plan.requests)
        ]
        offset = len(nodes)
        for n, step in enumerate(self.plan.steps):
            action = None if step.kind.check else str(step.kind.action)
            nodes.append(
                Node(
                    step.step_id,
                    step.kind,
                    partial(self._step, step),
                    step.after,
                    action,
                    step.group or f"member:{step.original}",
                    step.original,
                    offset + n,
                )
            )
        return nodes

    def _plain(self, request: PlannedRequest) -> StepOutcome:
        row = self.rows[request.image_set_id]
        versions = self.ledger.versions
        versions.setdefault(request.image_set_id, row.version_before)
        outcome = self.runner._attempt(request, versions, row)
        if outcome is None:
            return StepOutcome(RequestStatus.UNSENT, row.error)
        self.runner._apply(outcome, versions, row, request.image_set_id)
        return StepOutcome(outcome.status, outcome.message, version=outcome.new_version)

    def _step(self, step: PlannedStep) -> StepOutcome | Pending:
        state = self.ledger.state(step)
        if step.kind.check:
            if state is not None and state.get("status") == RequestStatus.DONE:
                outcome = StepOutcome(RequestStatus.DONE, version=state.get("version"))
            else:
                outcome = self.gates.run(step)
            return outcome
        result = self.writes.send(step)
        if isinstance(result, StepOutcome):
            self.ledger.adopt(step, result)
            return result

        def finish() -> StepOutcome:
            outcome = result.wait()
            self.ledger.adopt(step, outcome)
            return outcome

        return Pending(finish)

    # --- results -----------------------------------------------------------------------------------------------
    def on_finish(self, node: Node, outcome: StepOutcome) -> None:
        with self._lock:
            self.finished += 1
            self.bar.update(1)
        callback = self.options.on_progress
        if callback is not None:
            from curation.run.options import Progress

            callback(
                Progress(
                    purpose=self.purpose,
                    image_set_id=node.member or node.step_id.split(":")[0],
                    index=node.order,
                    status=outcome.status,
                    requests_finished=self.finished,
                    requests_total=len(self.plan.requests) + len(self.plan.steps),
                )
            )

    def member_rows(self, outcomes: dict[str, StepOutcome]) -> IdMapping:
        by_member: dict[str, list[PlannedStep]] = {}
        for step in self.plan.steps:
            by_member.setdefault(step.original, []).append(step)
        pairs, versions = {}, {}
        for member, steps in by_member.items():
            row = self.rows.setdefault(member, ImageSetResult(member, self.plan.base_versions.get(member), 0))
            row.planned += len(steps)
            row.done += sum(1 for s in steps if outcomes.get(s.step_id, StepOutcome(RequestStatus.UNSENT)).done)
            promote = next((s for s in steps if s.kind is StepKind.PROMOTE), None)
            if promote is not None and promote.step_id in self.ledger.created:
                new = self.ledger.created[promote.step_id]
                pairs[member], row.new_image_set_id = new, new
                versions[new] = str(self.ledger.versions.get(new))
                row.version_after = versions[new]
            self._member_status(row, steps, outcomes)
        return IdMapping(pairs, versions)

    def _member_status(self, row: ImageSetResult, steps: list[PlannedStep], outcomes: dict[str, StepOutcome]) -> None:
        failed = [(s, outcomes[s.step_id]) for s in steps if s.step_id in outcomes and not outcomes[s.step_id].done]
        if row.status not in (None, ResultStatus.APPLIED):
            return
        if not failed:
            row.status = ResultStatus.APPLIED if row.status in (None, ResultStatus.APPLIED) else row.status
            return
        deleted = any(s.kind is StepKind.DELETE_PRIMARY and outcomes.get(s.step_id, _UNSENT).done for s in steps)
        promoted = any(s.kind is StepKind.PROMOTE and outcomes.get(s.step_id, _UNSENT).done for s in steps)
        first_step, first = next(((s, o) for s, o in failed if not o.message or "not run:" not in o.message), failed[0])
        if deleted and not promoted:
            row.status = ResultStatus.INCOMPLETE
            copy = next((s for s in steps if s.kind is StepKind.COPY), None)
            row.held_by = self.ledger.created.get(copy.step_id) if copy else None
            message = first.message or f"{first_step.step_id} did not succeed"
            if "content safe" not in message:
                message += f"; content safe in non-primary image set {row.held_by}"
            row.error = f"{message}: fix the cause and run apply again, or revert"
            return
        if first.message and first.message.startswith("cancelled"):
            row.status = ResultStatus.CANCELLED
        elif first.message and "not run:" in first.message:
            row.status = ResultStatus.STOPPED
        elif first.status == RequestStatus.CONFLICT:
            row.status = ResultStatus.CONFLICT
        else:
            row.status = ResultStatus.FAILED
        row.error = f"{first_step.step_id}: {first.message}"


_UNSENT = StepOutcome(RequestStatus.UNSENT)


class _NoReport:
    """The plain runner's reporter, unused here (the scheduler reports every step)."""

    def step(self, *args: object) -> None:
        return None


def run_steps(
    plan: UpdatePlan,
    client: HealthImagingClient,
    journal: Journal | None,
    options: RunOptions,
    *,
    purpose: Purpose = Purpose.APPLY,
    window: int = DEFAULT_WINDOW,
    pipeline: bool = True,
) -> pd.DataFrame:
    """Run every request and step of ``plan``; the result table (``attrs["id_mapping"]``: an ``IdMapping``).

    ``pipeline=False`` runs one step at a time, its wait included (as a loop over the steps would): the baseline
    the benchmark compares the pipeline with.
    """
    run = _Run(plan, client, journal, options, purpose)
    nodes = run.nodes()
    if not pipeline:
        for node in nodes:
            node.action = "all"
    scheduler = Scheduler(
        nodes,
        workers=max(4, options.max_workers * 2),
        window=window,
        cancel=options.cancel,
        serial=not pipeline,
        on_finish=run.on_finish,
    )
    try:
        outcomes = scheduler.run()
    finally:
        run.bar.close()
    mapping = run.member_rows(outcomes)
    for request in plan.requests:
        outcome = outcomes.get(request.step_id)
        row = run.rows[request.image_set_id]
        if row.status is None and outcome is not None and not outcome.done:
            row.status = ResultStatus.CANCELLED if "cancelled" in (outcome.message or "") else ResultStatus.SKIPPED
            row.error = outcome.message
    reached: dict[str, str | None] = {}
    for request in plan.requests:
        outcome = outcomes.get(request.step_id)
        if outcome is not None and outcome.done:
            reached.update({s: run.ledger.versions.get(s) for s in request.affects})
    run.runner._sibling_rows(plan.requests, run.rows, reached)
    if journal is not None and options.cancel is not None and options.cancel.is_set():
        stop = {"kind": RecordKind.STOP, "plan_id": plan.plan_id, "reason": "cancelled", "message": "cancelled"}
        journal.append(stop)
    frame = result_frame(run.rows.values(), procedures=True)
    frame.attrs["id_mapping"] = mapping
    return frame
