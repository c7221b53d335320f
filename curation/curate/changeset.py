"""ChangeSet: the tidy table of what a curator's edits change, one row per change, between diff and plan.

A ChangeSet is plain data: a DataFrame with the columns of ``CHANGE_COLUMNS`` (one row per change), the
problems found while validating them, and the VRs the user gave for new private tags. ``diff`` makes one,
``plan`` turns it into requests, notebooks display it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd

from curation.model.rules import change_force_reasons

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


class ChangeOp(StrEnum):
    """What one ChangeSet row does (the ``op`` column holds these values as plain strings)."""

    ADD = "add"
    UPDATE = "update"
    REMOVE = "remove"
    REMOVE_INSTANCE = "remove_instance"
    REMOVE_SERIES = "remove_series"


OPERATIONS = tuple(op.value for op in ChangeOp)
#: Operations that remove something (an attribute, an instance, a series).
REMOVALS = (ChangeOp.REMOVE.value, ChangeOp.REMOVE_INSTANCE.value, ChangeOp.REMOVE_SERIES.value)


@dataclass(slots=True)
class Change:
    """One ChangeSet row while it is being built (fields in ``CHANGE_COLUMNS`` order)."""

    image_set: str
    level: str
    series: str | None
    sop: str | None
    attribute: str | None
    vr: str | None
    old: Any
    new: Any
    op: ChangeOp
    row: Any
    column: Any

    @property
    def spot(self) -> tuple:
        """Where it lands: image set, level, series, instance, attribute, and whether it removes a node."""
        node = self.op in (ChangeOp.REMOVE_INSTANCE, ChangeOp.REMOVE_SERIES)
        return self.image_set, self.level, self.series, self.sop, self.attribute, node

    def record(self) -> tuple:
        """The row as a tuple in ``CHANGE_COLUMNS`` order (``op`` as its plain string)."""
        return (
            self.image_set,
            self.level,
            self.series,
            self.sop,
            self.attribute,
            self.vr,
            self.old,
            self.new,
            self.op.value,
            self.row,
            self.column,
        )


@dataclass(slots=True)
class ChangeBlock:
    """Many ChangeSet rows of one attribute of one edited column, held as arrays (diff's bulk path).

    Why: a frame with 10% of its cells edited makes hundreds of thousands of changes; one object per change
    costs more than finding them. The arrays are object arrays of one length, in ``CHANGE_COLUMNS`` order
    (``level``, ``attribute``, ``VR`` and ``column`` are the same for every row); ``op`` holds plain strings.
    """

    image_set: np.ndarray
    level: str
    series: np.ndarray
    sop: np.ndarray
    attribute: str
    vr: str | None
    old: np.ndarray
    new: np.ndarray
    op: np.ndarray
    row: np.ndarray
    column: Any

    def __len__(self) -> int:
        return len(self.image_set)

    def columns(self) -> list[np.ndarray]:
        """The block's columns in ``CHANGE_COLUMNS`` order, as object arrays."""
        count = len(self)

        def same(value: Any) -> np.ndarray:
            out = np.empty(count, dtype=object)
            out[:] = [value] * count if isinstance(value, tuple) else value
            return out

        return [
            self.image_set,
            same(self.level),
            self.series,
            self.sop,
            same(self.attribute),
            same(self.vr),
            self.old,
            self.new,
            self.op,
            self.row,
            same(self.column),
        ]

    def changes(self) -> list[Change]:
        """The rows as ``Change`` objects (for the rule checks that need them one by one)."""
        ops = {op: ChangeOp(op) for op in set(self.op.tolist())}
        return [
            Change(image_set, self.level, series, sop, self.attribute, self.vr, old, new, ops[op], row, self.column)
            for image_set, series, sop, old, new, op, row in zip(
                self.image_set.tolist(),
                self.series.tolist(),
                self.sop.tolist(),
                self.old.tolist(),
                self.new.tolist(),
                self.op.tolist(),
                self.row.tolist(),
                strict=True,
            )
        ]


@dataclass(slots=True)
class Problem:
    """One problems row (``PROBLEM_COLUMNS`` order)."""

    image_set: Any
    row: Any
    column: Any
    attribute: Any
    reason: str

    def record(self) -> tuple:
        return self.image_set, self.row, self.column, self.attribute, self.reason


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

    # --- display (added with diff) ------------------------------------------------------------------------

    def force_reasons(self) -> pd.Series:
        """Per change, why it needs ``force`` (a list of reasons; empty when it does not): information only."""
        reasons = [
            change_force_reasons(attribute, vr, op)
            for attribute, vr, op in zip(self.changes["attribute"], self.changes["VR"], self.changes["op"], strict=True)
        ]
        return pd.Series(reasons, index=self.changes.index, dtype=object, name="force_reasons")

    def summary(self) -> pd.DataFrame:
        """Number of changes per image set and operation (one row per image set, one column per operation)."""
        if self.changes.empty:
            return pd.DataFrame(columns=list(OPERATIONS), index=pd.Index([], name="ImageSetID"), dtype="int64")
        counts = self.changes.groupby(["ImageSetID", "op"], sort=False).size().unstack(fill_value=0)
        return counts.reindex(columns=list(OPERATIONS), fill_value=0).astype("int64")

    def by_image_set(self) -> dict[str, pd.DataFrame]:
        """The changes split per image set (first-seen order)."""
        return {str(image_set): group for image_set, group in self.changes.groupby("ImageSetID", sort=False)}

    def removals(self) -> dict[str, int]:
        """How many attributes, instances and series the changes remove."""
        ops = self.changes["op"].value_counts()
        return {
            what: int(ops.get(op, 0)) for what, op in zip(("attributes", "instances", "series"), REMOVALS, strict=True)
        }

    def __repr__(self) -> str:
        ops = self.changes["op"].value_counts()
        parts = ", ".join(f"{int(ops[op])} {op}" for op in OPERATIONS if op in ops.index)
        sets = len(self.image_set_ids)
        text = f"ChangeSet({len(self.changes)} change(s) in {sets} image set(s)"
        text += f": {parts}" if parts else ""
        text += "; " + removal_text(self.removals())
        problems = len(self.problems)
        return text + (f"; {problems} problem(s))" if problems else "; no problems)")

    def _repr_html_(self, max_rows: int = 200) -> str:
        """Problems first, then one row per change (old -> new), UIDs by the part that tells them apart
        (``curation.ui.display.changeset_html``)."""
        from curation.ui.display import changeset_html

        return changeset_html(self, repr(self), max_rows)


def payload_removals(payloads: Iterable[Any]) -> dict[str, int]:
    """The attributes, instances and series that ``removableAttributes`` payloads (parsed JSON) remove."""
    counts = {"attributes": 0, "instances": 0, "series": 0}
    for payload in payloads:
        if not isinstance(payload, dict):
            continue
        for level in ("Patient", "Study"):
            counts["attributes"] += len((payload.get(level) or {}).get("DICOM") or {})
        for series in ((payload.get("Study") or {}).get("Series") or {}).values():
            if not series:
                counts["series"] += 1
                continue
            counts["attributes"] += len(series.get("DICOM") or {})
            for instance in (series.get("Instances") or {}).values():
                if not instance:
                    counts["instances"] += 1
                else:
                    counts["attributes"] += len(instance.get("DICOM") or {})
    return counts


def removal_text(counts: dict[str, int]) -> str:
    """``"removes 2 attribute(s), 0 instance(s), 1 series"``: the removals a first line always shows."""
    return (
        f"removes {counts.get('attributes', 0)} attribute(s), {counts.get('instances', 0)} instance(s), "
        f"{counts.get('series', 0)} series"
    )
