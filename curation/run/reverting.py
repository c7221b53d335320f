"""Undo an apply from its journal: ``revert`` returns every image set it touched to its pre-plan version.

The versions come from the journal's chains (``curation.run.journal.VersionChains``): for each image set,
the chain of versions our requests made from its base version. A revert sends ``revertToVersionId`` (the base
version) against the end of that chain, so an image set someone else changed since is refused as stale and
reported as a conflict, never overwritten. Requests of the apply journal whose outcome is unknown are
reconciled first. The revert is itself journaled (default ``<journal>.revert``) and resumable; both journals
are locked for the whole revert.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from curation.curate.updateplan import PlannedRequest, UpdatePlan
from curation.run.applying import dry_run_frame, dry_run_steps, run_plan
from curation.run.journal import (
    Journal,
    JournalError,
    JournalLock,
    Purpose,
    Record,
    RequestStatus,
    VersionChains,
    journal_header,
    journal_plan,
    last_states,
    purpose_of,
    read_journal,
)
from curation.run.options import RunKeywords, RunOptions, run_options

if TYPE_CHECKING:
    from mypy_boto3_medical_imaging import HealthImagingClient
    from typing_extensions import Unpack

__all__ = ["default_revert_journal", "revert", "revert_plan_from_journal"]


def default_revert_journal(journal: str | os.PathLike[str]) -> Path:
    """Where ``revert`` journals by default: ``<journal>.revert`` beside the apply journal."""
    path = Path(journal)
    return path.with_name(path.name + ".revert")


def revert_plan_from_journal(records: list[Record], plan: UpdatePlan) -> UpdatePlan:
    """The plan that returns every image set the apply journal of ``plan`` touched to its pre-plan version."""
    before, last = VersionChains(records, plan.base_versions).touched()
    planned = [r.image_set_id for r in plan.requests] + [s for r in plan.requests for s in r.affects]
    order = {image_set_id: n for n, image_set_id in enumerate(dict.fromkeys(planned))}
    targets = sorted(before.items(), key=lambda item: order.get(item[0], len(order)))
    requests = [
        PlannedRequest(
            image_set_id=image_set_id,
            index=0,
            params={
                "datastoreId": plan.datastore_id,
                "imageSetId": image_set_id,
                "updateImageSetMetadataUpdates": {"revertToVersionId": str(version)},
            },
            description=f"revert {image_set_id} to version {version}",
        )
        for image_set_id, version in targets
    ]
    plain = UpdatePlan.build(plan.datastore_id, dict(last), requests)
    if not plan.steps:
        return plain
    from curation.run.memberrevert import revert_steps_plan

    return revert_steps_plan(records, plan, plain)


def _apply_journal(source: Path) -> tuple[list[Record], UpdatePlan]:
    records = read_journal(source)
    header = journal_header(records, source)
    if purpose_of(header) != Purpose.APPLY:
        raise JournalError(f"{source} journals a {header.get('purpose')}; give the apply journal")
    return records, journal_plan(header, source)


def _revert_plan(out: Path, records: list[Record], plan: UpdatePlan) -> UpdatePlan:
    """The revert plan already journaled in ``out`` (resumed), or the one the apply journal calls for."""
    existing = read_journal(out) if out.exists() and out.stat().st_size else []
    if not existing:
        return revert_plan_from_journal(records, plan)
    header = journal_header(existing, out)
    if header.get("source_plan_id") != plan.plan_id:
        raise JournalError(
            f"{out} is the revert journal of plan {header.get('source_plan_id')!r}, not of {plan.plan_id!r}"
        )
    return journal_plan(header, out)


def revert(
    journal: str | os.PathLike[str],
    client: HealthImagingClient,
    *,
    journal_out: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    options: RunOptions | None = None,
    **keywords: Unpack[RunKeywords],
) -> pd.DataFrame:
    """Return every image set the apply ``journal`` touched to its pre-plan version (``revertToVersionId``).

    Each revert is sent against the version our apply left (the end of the journal's chain), so an image set
    someone else changed since is reported as a conflict, never overwritten. Requests of the apply journal
    whose outcome is unknown are reconciled first. The revert is journaled in ``journal_out`` (default
    ``<journal>.revert``) and resumable: calling ``revert`` again continues it. The keyword arguments and
    ``options`` are ``apply``'s (``RunKeywords``); returns apply's table.

    Image sets that went through AHI's copy-and-promote procedure are restored to their pre-plan content as
    primary image sets by the procedure once more, so **their image set IDs change again** (P -> N at apply,
    N -> R at revert: a promotion always returns a new ID, and no AHI call reuses one); the result's
    ``attrs["id_mapping"]`` maps both P and N to R (``curation.run.memberrevert``).
    """
    opts = run_options(options, **keywords)
    source = Path(journal)
    out = Path(journal_out) if journal_out is not None else default_revert_journal(source)
    with JournalLock(source):
        records, plan = _apply_journal(source)
        unknown = any(RequestStatus(r["status"]).unknown for r in last_states(records).values())
        if unknown:
            if dry_run:
                raise JournalError(f"{source} has requests of unknown outcome: run apply (or revert) without dry_run")
            with Journal(source) as opened:
                run_plan(plan, client, opened, opts, purpose=Purpose.APPLY, send_new=False, desc="reconcile")
            records = read_journal(source)
        with JournalLock(out):
            undo = _revert_plan(out, records, plan)
            if dry_run:
                return dry_run_frame(undo) if not undo.steps else dry_run_steps(undo)
            with Journal(out) as opened:
                extra = {"source_plan_id": plan.plan_id, "source_journal": str(source)}
                opened.start(undo, Purpose.REVERT, extra)
                if undo.steps:
                    return _revert_steps(undo, client, opened, opts, records)
                frame, _ = run_plan(undo, client, opened, opts, purpose=Purpose.REVERT, desc="revert")
    return frame


def _revert_steps(
    undo: UpdatePlan, client: HealthImagingClient, journal: Journal, options: RunOptions, records: list[Record]
) -> pd.DataFrame:
    """Run a revert plan with procedures; its result maps pre-plan IDs and apply's new IDs to the third ones."""
    from curation.run.mapping import mapping_from_records
    from curation.run.promoting import run_steps

    frame = run_steps(undo, client, journal, options, purpose=Purpose.REVERT)
    frame.attrs["id_mapping"] = mapping_from_records(records).then(frame.attrs["id_mapping"])
    return frame
