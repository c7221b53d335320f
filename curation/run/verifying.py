"""Check that the service holds what a plan intended: ``verify``, one row per mismatch.

The intended result is every request of the plan applied (``apply_to_document``) to the document at the plan's
base version; image sets reached through ``includeStudyImageSets`` get the Patient and ``Study.DICOM`` parts.
With a journal, each image set is compared at the last version whose document the plan's requests changed,
found by following the journal's chain of versions from the base version (``VersionChains``), never by file
order; without one, at its latest version.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pandas as pd

from curation.curate.updateplan import PlannedRequest, UpdatePlan
from curation.model.updates import apply_to_document, study_part
from curation.run.docdiff import Found, differences
from curation.run.journal import RequestStatus, VersionChains, journal_header, last_states, read_journal
from curation.run.memberverify import member_rows, procedure_members
from curation.run.options import RunKeywords, RunOptions, run_options
from curation.run.plainrunner import components
from curation.run.results import MISMATCH_COLUMNS
from curation.run.servicecalls import ServiceCalls

if TYPE_CHECKING:
    from mypy_boto3_medical_imaging import HealthImagingClient
    from typing_extensions import Unpack

__all__ = ["verify"]


def _note_row(image_set_id: str, note: str) -> dict[str, Any]:
    return {"ImageSetID": image_set_id, "path": None, "expected": None, "actual": None, "note": note}


class _JournalState:
    """What a journal says of a plan's image sets: where each chain ends, and which did not finish."""

    def __init__(self, plan: UpdatePlan, journal: str | os.PathLike[str] | None) -> None:
        self.journaled = journal is not None
        self.finished: dict[str, str] = {}
        self.unfinished: dict[str, str] = {}
        if journal is None:
            return
        records = read_journal(journal)
        journal_header(records, journal)
        chains = VersionChains(records, plan.base_versions)
        for image_set_id in chains.image_set_ids():
            version = chains.last_changed(image_set_id)
            if version is not None:
                self.finished[image_set_id] = version
        states = last_states(records)
        for image_set_id, requests in plan.by_image_set().items():
            for request in requests:
                state = states.get((image_set_id, int(request.index)))
                if state is None or state["status"] != RequestStatus.DONE:
                    self.unfinished[image_set_id] = str(state["status"]) if state else "not sent"
                    break


class _Component:
    """The intended documents of the image sets of one component (requests linked by ``affects``)."""

    def __init__(self, plan: UpdatePlan, calls: ServiceCalls, requests: list[PlannedRequest]) -> None:
        self.plan, self.calls, self.requests = plan, calls, requests
        self.documents: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}

    def _history(self, image_set_id: str) -> Callable[[str], dict[str, Any]]:
        return lambda version: self.calls.document(image_set_id, version)

    def _current(self, image_set_id: str) -> dict[str, Any] | None:
        if image_set_id not in self.documents:
            base = self.plan.base_versions.get(image_set_id)
            if base is None:
                self.errors[image_set_id] = "no base version in the plan"
                return None
            self.documents[image_set_id] = self.calls.document(image_set_id, str(base))
        return self.documents[image_set_id]

    def _advance(self, image_set_id: str, params: dict[str, Any]) -> None:
        document = None if image_set_id in self.errors else self._current(image_set_id)
        if document is None:
            return
        try:
            self.documents[image_set_id] = apply_to_document(document, params, history=self._history(image_set_id))
        except Exception as exc:
            self.errors[image_set_id] = f"the plan cannot be previewed: {exc}"

    def intended(self) -> list[str]:
        """Build the intended documents; return the image sets touched, in plan order."""
        for request in self.requests:
            self._advance(request.image_set_id, request.params)
            part = study_part(request.params) if request.include_study_image_sets else None
            if part is not None:
                for sibling in request.affects:
                    self._advance(sibling, part)
        touched = [r.image_set_id for r in self.requests] + [s for r in self.requests for s in r.affects]
        return list(dict.fromkeys(touched))

    def rows(self, progress: _JournalState) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for image_set_id in self.intended():
            if image_set_id in self.errors:
                rows.append(_note_row(image_set_id, self.errors[image_set_id]))
                continue
            if image_set_id in progress.unfinished:
                rows.append(_note_row(image_set_id, f"not applied: {progress.unfinished[image_set_id]}"))
                continue
            version = progress.finished.get(image_set_id) if progress.journaled else None
            if version is None:
                version = str(self.calls.get_image_set(image_set_id)["versionId"])
            found: Found = []
            differences(self.documents[image_set_id], self.calls.document(image_set_id, version), "", found)
            rows.extend(
                {"ImageSetID": image_set_id, "path": p, "expected": e, "actual": a, "note": f"version {version}"}
                for p, e, a in found
            )
        return rows


def verify(
    plan: UpdatePlan,
    client: HealthImagingClient,
    journal: str | os.PathLike[str] | None = None,
    *,
    options: RunOptions | None = None,
    **keywords: Unpack[RunKeywords],
) -> pd.DataFrame:
    """Re-fetch every image set the plan touches and compare it with the intended result; one row per mismatch.

    Without a journal the latest versions are compared. With one, each image set is compared at the last
    version the journal's chain says our requests made (so later edits by others are not reported), and image
    sets the journal did not finish are reported with their status in ``note``. An empty frame means verified.
    Columns: ImageSetID, path (dotted document path), expected, actual, note. Members of copy-and-promote
    procedures are checked under their new image set ID (the journal's mapping; ``curation.run.memberverify``).
    Image sets are checked
    ``max_workers`` at a time (8 unless given); reads are limited per action (``control_rate``: "auto" is AHI's
    quotas, adapting). The keyword arguments are ``apply``'s (``RunKeywords``; rate and burst play no part).
    """
    from tqdm.auto import tqdm

    plan.check()
    keywords.setdefault("max_workers", 8)
    opts = run_options(options, **keywords)
    calls = ServiceCalls(client, plan.datastore_id, opts)
    state = _JournalState(plan, journal)
    groups = components(plan)
    total = len(groups) + len(procedure_members(plan))  # a plan of procedures only counts its members
    executor = ThreadPoolExecutor(max_workers=opts.max_workers, thread_name_prefix="ahi-verify")
    try:
        with tqdm(total=total, desc="verify", unit=" image sets", disable=not opts.progress) as bar:

            def check(component: list[PlannedRequest]) -> list[dict[str, Any]]:
                rows = _Component(plan, calls, component).rows(state)
                bar.update(1)
                return rows

            results = list(executor.map(check, groups))
            rows = [row for rows in results for row in rows]
            if plan.steps:
                rows.extend(member_rows(plan, calls, journal, progress=lambda: bar.update(1)))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return pd.DataFrame(rows, columns=list(MISMATCH_COLUMNS), dtype=object)
