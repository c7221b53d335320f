"""diff's rule checks, after the cells became changes: node removals, moot edits, conflicts, UIDs, primary sets.

Each function takes the changes found so far and reports what AHI would refuse as ``Problem`` rows; the rules
themselves (what a primary image set refuses, which UIDs key the document, what needs ``force``) are
``curation.model.rules``'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import orjson

from curation.curate.changeset import Change, ChangeBlock, ChangeOp, Problem
from curation.curate.targets import Targets
from curation.frames.cells import is_empty
from curation.model import rules
from curation.model.levels import level_of
from curation.model.missing import NULL

__all__ = [
    "check_primary",
    "check_primary_block",
    "check_targets",
    "check_uids",
    "dedupe",
    "level_problem",
    "node_removals",
]

_NODE_OPS = (ChangeOp.REMOVE_INSTANCE, ChangeOp.REMOVE_SERIES)
_LEVEL_RANK = {"Patient": 0, "Study": 1, "Series": 2, "Instance": 3}


def key(value: Any) -> bytes:
    """A value's identity for comparisons of edits: its sorted-keys JSON (NULL and absent apart)."""
    if value is NULL:
        return b"\x00NULL"
    if value is None:
        return b"\x00ABSENT"
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def short(value: Any) -> str:
    """A value for messages (JSON, cut at 60 characters)."""
    if value is None:
        return "absent"
    if value is NULL:
        return "NULL"
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def node_removals(
    targets: Targets, dropped_instances: Mapping[int, Any], dropped_series: Mapping[int, Any], problems: list[Problem]
) -> list[Change]:
    """``remove_series``/``remove_instance`` changes for dropped rows (every instance of a series -> the series;
    every series of an image set -> a problem, nothing removed)."""
    series_ids = targets.ids("series")
    wanted = dict(dropped_series)
    if dropped_instances:
        of_series = targets.map_to("series")
        dropped = np.fromiter(dropped_instances, dtype=np.int64, count=len(dropped_instances))
        total = np.bincount(of_series[of_series >= 0], minlength=len(series_ids[0]))
        gone = np.bincount(of_series[dropped], minlength=len(series_ids[0]))
        for found in np.flatnonzero((gone == total) & (total > 0)).tolist():
            wanted.setdefault(found, targets.label("series", found))
    blocked = _every_series_problems(targets, wanted, problems)
    changes = [
        Change(
            series_ids[0][p],
            "Series",
            series_ids[1][p],
            None,
            None,
            None,
            None,
            None,
            ChangeOp.REMOVE_SERIES,
            label,
            None,
        )
        for p, label in wanted.items()
    ]
    removed = {(c.image_set, c.series) for c in changes} | blocked
    instance_ids = targets.ids("instances")
    for position, label in dropped_instances.items():
        image_set, series, sop = (instance_ids[i][position] for i in range(3))
        if (image_set, series) not in removed:
            changes.append(
                Change(
                    image_set, "Instance", series, sop, None, None, None, None, ChangeOp.REMOVE_INSTANCE, label, None
                )
            )
    return changes


def _every_series_problems(targets: Targets, wanted: dict[int, Any], problems: list[Problem]) -> set[tuple]:
    """Drop from ``wanted`` the series of image sets that would lose every series (a problem each)."""
    blocked: set[tuple[str, str]] = set()
    if not wanted:
        return blocked
    series_ids = targets.ids("series")
    owner = targets.series_to_studies()
    per_image_set = np.bincount(owner, minlength=len(targets.frame("studies")))
    positions = np.fromiter(wanted, dtype=np.int64, count=len(wanted))
    removed = np.bincount(owner[positions], minlength=len(per_image_set))
    for study in np.flatnonzero((removed == per_image_set) & (removed > 0)):
        image_set = targets.frame("studies").index[int(study)]
        problems.append(
            Problem(
                image_set,
                image_set,
                None,
                None,
                "the edits remove every series of this image set: an update cannot do that, use "
                "DeleteImageSet (nothing is removed from it)",
            )
        )
        for position in positions[owner[positions] == study]:
            del wanted[int(position)]
            blocked.add((series_ids[0][position], series_ids[1][position]))
    return blocked


def check_targets(removals: list[Change], changes: list[Change], problems: list[Problem]) -> list[Change]:
    """The removals, then the changes not inside a series/instance the edits also remove (those are problems)."""
    series = {(c.image_set, c.series) for c in removals if c.op is ChangeOp.REMOVE_SERIES}
    instances = {(c.image_set, c.series, c.sop) for c in removals if c.op is ChangeOp.REMOVE_INSTANCE}
    if not series and not instances:
        return removals + changes
    kept = list(removals)
    for change in changes:
        inside = (change.level in ("Series", "Instance") and (change.image_set, change.series) in series) or (
            change.level == "Instance" and (change.image_set, change.series, change.sop) in instances
        )
        if inside:
            problems.append(
                Problem(
                    change.image_set,
                    change.row,
                    change.column,
                    change.attribute,
                    f"the edits change {change.attribute} of a {change.level.lower()} they also remove",
                )
            )
            continue
        kept.append(change)
    return kept


def dedupe(changes: list[Change], problems: list[Problem]) -> list[Change]:
    """One change per spot when several frames make the same edit; different edits of one spot: a problem."""
    seen: dict[tuple, Change] = {}
    conflicts: set[tuple] = set()
    for change in changes:
        spot = change.spot
        other = seen.setdefault(spot, change)
        if other is change or (other.op == change.op and key(other.new) == key(change.new)):
            continue
        conflicts.add(spot)
        problems.append(
            Problem(
                change.image_set,
                change.row,
                change.column,
                change.attribute,
                f"conflicting edits of {change.attribute}: {short(other.new)} ({other.op}, from row "
                f"{other.row!r} column {other.column!r}) and {short(change.new)} ({change.op}): "
                "neither is kept",
            )
        )
    return [c for spot, c in seen.items() if spot not in conflicts]


def check_uids(targets: Targets, changes: list[Change], problems: list[Problem]) -> None:
    """A new SOPInstanceUID / SeriesInstanceUID must not be one the image set already uses."""
    used: dict[tuple[str, str], set[str]] = {}
    for change in changes:
        if change.op not in (ChangeOp.ADD, ChangeOp.UPDATE) or change.attribute is None:
            continue
        if not rules.rekeys(change.attribute, change.level):
            continue
        source = "instances" if change.level == "Instance" else "series"
        spot = (change.image_set, source)
        if spot not in used:
            ids = targets.ids(source)
            used[spot] = set(ids[-1][ids[0] == change.image_set])
        problem = rules.new_uid_problem(change.attribute, change.new, used[spot], image_set=change.image_set)
        if problem:
            problems.append(Problem(change.image_set, change.row, change.column, change.attribute, problem))
        else:
            used[spot].add(change.new)


def check_primary(targets: Targets, changes: list[Change], problems: list[Problem]) -> None:
    """What a primary image set refuses (``rules.primary_refusals``), with the documented workaround."""
    for change in changes:
        flag = targets.is_primary(change.image_set)
        if flag is False:
            continue
        op = "set" if change.op in (ChangeOp.ADD, ChangeOp.UPDATE) else change.op.value
        reasons = rules.change_force_reasons(change.attribute, change.vr, change.op.value)
        refusals = rules.primary_refusals(change.level, change.attribute, op, reasons)
        if not refusals:
            continue
        problems.append(
            Problem(change.image_set, change.row, change.column, change.attribute, _primary_reason(refusals, flag))
        )


def _primary_reason(refusals: list[str], flag: bool | None) -> str:
    """The problem text of a change a primary image set refuses (``flag`` None: the flag is unknown)."""
    note = (
        ""
        if flag
        else " (the snapshot has no primary flag for this image set: it is treated as primary; "
        "set snapshot.primary to override)"
    )
    return "; ".join(refusals) + note + ". " + rules.PRIMARY_WORKAROUND


def check_primary_block(targets: Targets, block: ChangeBlock, problems: list[Problem]) -> None:
    """``check_primary`` of a block's changes: the refusals worked out once per operation, flags per image set."""
    image_sets = block.image_set.tolist()
    flags = {image_set: targets.is_primary(image_set) for image_set in set(image_sets)}
    if all(flag is False for flag in flags.values()):
        return
    refused: dict[str, list[str]] = {}
    for op in set(block.op.tolist()):
        reasons = rules.change_force_reasons(block.attribute, block.vr, op)
        refused[op] = rules.primary_refusals(block.level, block.attribute, "set", reasons)
    for image_set, op, row in zip(image_sets, block.op.tolist(), block.row.tolist(), strict=True):
        flag = flags[image_set]
        if flag is False or not refused[op]:
            continue
        problems.append(Problem(image_set, row, block.column, block.attribute, _primary_reason(refused[op], flag)))


def level_problem(
    holding: Callable[[str], Mapping[str, set[str]]], image_set: str, key_: str, level: str
) -> str | None:
    """Why attribute ``key_`` cannot be added at ``level`` of ``image_set`` (None when it can): the document
    holds it elsewhere, or AHI's normalization puts it at another level (``curation.model.levels``)."""
    held = holding(key_).get(image_set, set())
    reason = rules.level_problem(key_, level, held, image_set=image_set)
    if reason is None:
        return None
    if held:
        return f"{reason}: edit it where the document puts it"
    frame = {"Patient": "studies", "Study": "studies", "Series": "series"}.get(level_of(key_), "instances")
    return f"{reason}: add it in the {frame} frame"


def empty_value(value: Any) -> bool:
    """True for a present-empty JSON value or cell (``null``/NULL or ``""``)."""
    return is_empty(value)
