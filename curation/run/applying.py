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
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING

import pandas as pd

from curation.curate.updateplan import PlannedRequest, UpdatePlan
from curation.run.journal import Journal, JournalLock, Purpose, RecordKind
from curation.run.options import RunKeywords, RunOptions, run_options
from curation.run.plainrunner import PlainRunner, Reporter, _opt_str, components, result_rows
from curation.run.promoting import run_steps
from curation.run.results import ImageSetResult, ResultStatus, result_frame
from curation.run.servicecalls import ServiceCalls
from curation.run.steps import Steps, StopReason

if TYPE_CHECKING:
    from mypy_boto3_medical_imaging import HealthImagingClient
    from typing_extensions import Unpack

__all__ = ["apply", "components", "dry_run_frame", "dry_run_steps", "run_plan"]


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
    reporter = Reporter(len(plan.requests), purpose, options, desc)
    runner = PlainRunner(Steps(plan, calls, journal), journal, reporter, send_new=send_new, cancel=options.cancel)
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
    rows = [
        ImageSetResult(i, _opt_str(plan.base_versions.get(i)), 0, status=ResultStatus.DRY_RUN)
        for i in plan.image_set_ids
    ]
    return result_frame(rows, procedures=True)
