"""ChangeSet: the tidy table of what a curator's edits change, one row per change, between diff and plan.

A ChangeSet is plain data: a DataFrame with the columns of ``CHANGE_COLUMNS`` (one row per change), the
problems found while validating them, and the VRs the user gave for new private tags. ``diff`` makes one,
``plan`` turns it into requests, notebooks display it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

#: The columns of ``ChangeSet.changes``, in display order.
CHANGE_COLUMNS = (
    "ImageSetID",  # the image set the change is sent to
    "level",  # "Patient" | "Study" | "Series" | "Instance": where the attribute lives in the document
    "SeriesInstanceUID",  # the series addressed (its UID before any change); None above Series level
    "SOPInstanceUID",  # the instance addressed (its UID before any change); None above Instance level
    "attribute",  # keyword or 8-hex tag; None for remove_instance / remove_series
    "VR",  # the attribute's VR (pydicom's dictionary, DICOMVRs, or the user's vrs=); None for removals of nodes
    "old",  # the current value exactly as AHI encodes it (NULL for present-and-null); None when absent
    "new",  # the value to send, coerced to AHI's encoding (NULL to make it empty); None for removals
    "op",  # one of OPERATIONS
    "row",  # the edited frame's index label the change came from (for messages); None when not from a row
    "column",  # the edited frame's column the change came from
)

OPERATIONS = ("add", "update", "remove", "remove_instance", "remove_series")

#: The columns of ``ChangeSet.problems``: what is wrong, where, and whether planning must stop for it.
PROBLEM_COLUMNS = ("ImageSetID", "row", "column", "attribute", "reason")


def empty_changes() -> pd.DataFrame:
    """A ChangeSet table with no rows and every column (object dtype, values kept as they are)."""
    return pd.DataFrame({name: pd.Series([], dtype=object) for name in CHANGE_COLUMNS})


def empty_problems() -> pd.DataFrame:
    """A problems table with no rows."""
    return pd.DataFrame({name: pd.Series([], dtype=object) for name in PROBLEM_COLUMNS})


@dataclass
class ChangeSet:
    """What the edits change (``changes``), what is wrong with them (``problems``), and their context.

    ``snapshot`` is the Snapshot the edits were made on: plan reads the current documents, version IDs and
    primary flags from it. ``vrs`` maps new private tags to the VR the user gave.
    """

    changes: pd.DataFrame = field(default_factory=empty_changes)
    problems: pd.DataFrame = field(default_factory=empty_problems)
    snapshot: Any = None
    vrs: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.changes)

    @property
    def ok(self) -> bool:
        """True when no problem stops planning."""
        return self.problems.empty

    @property
    def image_set_ids(self) -> list[str]:
        """The image sets this ChangeSet touches, in first-seen order."""
        return list(dict.fromkeys(self.changes["ImageSetID"]))
