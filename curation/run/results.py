"""What an apply or revert returns: one row per image set, with a status from ``ResultStatus``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import pandas as pd

RESULT_COLUMNS = (
    "ImageSetID",
    "status",
    "version_before",
    "version_after",
    "requests_done",
    "requests_planned",
    "error",
)
#: the columns a plan with copy-and-promote procedures adds (its members' IDs change)
PROCEDURE_COLUMNS = ("new_image_set_id", "held_by")
MISMATCH_COLUMNS = ("ImageSetID", "path", "expected", "actual", "note")


class ResultStatus(StrEnum):
    """The status of an image set in an apply's (or revert's) result."""

    APPLIED = "applied"  # every planned request is done
    CONFLICT = "conflict"  # someone else changed it: nothing of theirs was overwritten
    FAILED = "failed"  # AHI refused or failed a request (error says which, and whether to run again)
    SKIPPED = "skipped"  # not run (e.g. reconcile only, or the study-wide request was not applied)
    CANCELLED = "cancelled"  # the run was cancelled before its requests were sent: run again to continue
    DRY_RUN = "dry-run"  # dry run: shown, not sent
    STOPPED = "stopped"  # a procedure member not run to its end because another member of its group failed
    INCOMPLETE = "incomplete"  # its primary is deleted, no new one yet: the content is in ``held_by``


#: Statuses of an image set that needs nothing more.
SUCCESS = frozenset({ResultStatus.APPLIED, ResultStatus.DRY_RUN})


@dataclass
class ImageSetResult:
    """The result row of one image set while a run fills it in."""

    image_set_id: str
    version_before: str | None
    planned: int
    status: ResultStatus | None = None
    version_after: str | None = None
    done: int = 0
    error: str | None = None
    new_image_set_id: str | None = None
    held_by: str | None = None


def result_frame(rows: Iterable[ImageSetResult], *, procedures: bool = False) -> pd.DataFrame:
    """The result table: one row per image set, in RESULT_COLUMNS (+ PROCEDURE_COLUMNS with ``procedures``)."""
    rows = list(rows)
    data = [
        {
            "ImageSetID": r.image_set_id,
            "status": str(r.status or ResultStatus.SKIPPED),
            "version_before": r.version_before,
            "version_after": r.version_after,
            "requests_done": r.done,
            "requests_planned": r.planned,
            "error": r.error,
        }
        for r in rows
    ]
    columns = list(RESULT_COLUMNS)
    if procedures:
        columns += list(PROCEDURE_COLUMNS)
        for record, row in zip(data, rows, strict=True):
            record.update(new_image_set_id=row.new_image_set_id, held_by=row.held_by)
    frame = pd.DataFrame(data, columns=columns)
    return frame.astype({"requests_done": "int64", "requests_planned": "int64"}) if len(frame) else frame
