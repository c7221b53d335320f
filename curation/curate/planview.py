"""How an UpdatePlan shows itself: its first line, its tables, its text (what a dry run prints) and its HTML.

Every step is shown, numbered in the plan's order (plain requests first, then the copy-and-promote procedures);
the steps that delete an image set are marked ``[DELETE]`` and the one after which an image set lives under a
new primary image set ID ``[NEW ID]``; the first line counts both. The HTML display is collapsed by default: a
table with one summary row per image set, then one closed ``<details>`` per image set holding its steps and
payloads (issue 16: a plan of thousands of image sets stays readable).
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import pandas as pd

from curation.curate.changeset import PROBLEM_COLUMNS
from curation.curate.planstep import PlannedStep, Ref, StepKind


class ShownRequest(Protocol):
    """What the display reads of a plain request (``curation.curate.updateplan.PlannedRequest``)."""

    image_set_id: str
    index: int
    params: dict[str, Any]
    force_reasons: list[str]
    affects: list[str]
    description: str

    @property
    def force(self) -> bool: ...
    @property
    def step_id(self) -> str: ...
    @property
    def include_study_image_sets(self) -> bool: ...
    @property
    def revert_to(self) -> str | None: ...
    def blob_bytes(self, name: str) -> int: ...
    def payload(self, name: str) -> dict[str, Any] | None: ...


class ShownPlan(Protocol):
    """What the display reads of a plan (``curation.curate.updateplan.UpdatePlan``; a protocol, so that this
    module does not import the one that imports it)."""

    plan_id: str
    datastore_id: str
    base_versions: dict[str, str]
    problems: pd.DataFrame

    @property
    def requests(self) -> Sequence[ShownRequest]: ...
    @property
    def steps(self) -> Sequence[PlannedStep]: ...
    @property
    def image_set_ids(self) -> list[str]: ...
    @property
    def members(self) -> list[str]: ...
    def all_steps(self) -> list[PlannedStep]: ...
    def steps_by_image_set(self) -> dict[str, list[PlannedStep]]: ...
    def _removals(self) -> str: ...


_HTML_IMAGE_SETS = 50
_HTML_JSON_CHARS = 20_000
_SHORT_ID = 8
_BOTO3_NAMES = {
    "UpdateImageSetMetadata": "update_image_set_metadata",
    "CopyImageSet": "copy_image_set",
    "DeleteImageSet": "delete_image_set",
}

STEP_COLUMNS = (
    "step",
    "step_id",
    "ImageSetID",
    "kind",
    "action",
    "target",
    "after",
    "deletes",
    "new_id",
    "force",
    "force_reasons",
    "group",
    "description",
)


def numbers(plan: ShownPlan) -> dict[str, int]:
    """Step ID -> its number in the plan's display (1-based)."""
    return {step.step_id: number for number, step in enumerate(plan.all_steps(), 1)}


def counts(plan: ShownPlan) -> Counter[str]:
    """Steps by action (checks as ``checks``), and ``delete`` / ``new_id`` / ``steps`` totals."""
    found: Counter[str] = Counter()
    for step in plan.all_steps():
        found["steps"] += 1
        found[str(step.action) if step.action is not None else "checks"] += 1
        found["delete"] += step.kind.deletes
        found["new_id"] += step.kind.changes_id
    return found


def counts_text(plan: ShownPlan) -> str:
    """``27 steps — 3 UpdateImageSetMetadata, 6 CopyImageSet, 6 DeleteImageSet, 12 checks · 6 DELETE an image
    set · 3 CHANGE an image set ID``."""
    found = counts(plan)
    actions = [
        f"{found[name]} {name}" for name in ("UpdateImageSetMetadata", "CopyImageSet", "DeleteImageSet") if found[name]
    ]
    if found["checks"]:
        actions.append(f"{found['checks']} checks")
    return (
        f"{found['steps']} steps — {', '.join(actions) or 'none'} · {found['delete']} DELETE an image set · "
        f"{found['new_id']} CHANGE an image set ID"
    )


def windows(plan: ShownPlan) -> list[str]:
    """``study <uid> has no primary image set between steps 11 and 14`` for every study the plan empties for a
    while: its study check (``params["empties"]``) says every primary of it is deleted before the group's first
    promotion (AHI refuses the promotion otherwise, /work/team/primary-design.md D10)."""
    number = numbers(plan)
    out = []
    for check in plan.steps:
        if check.kind is not StepKind.CHECK_STUDY:
            continue
        for uid in check.params.get("empties") or []:
            group = [s for s in plan.steps if s.group == check.group]
            promoting = set(check.params.get("promotes") or [])
            deletes = [number[s.step_id] for s in group if s.kind is StepKind.DELETE_PRIMARY]
            promotes = [
                number[s.step_id]
                for s in group
                if s.kind is StepKind.PROMOTE and (not promoting or s.step_id in promoting)
            ]
            if deletes and promotes:
                out.append(f"study {uid} has no primary image set between steps {min(deletes)} and {min(promotes)}")
    return out


def first_line(plan: ShownPlan) -> str:
    """The plan's first line (the HTML heading, ``summary()``, the dry run's header): for a plan with
    copy-and-promote steps, every step counted by action, the deletions, the ID changes and the studies left
    without a primary image set for a while."""
    forced = sum(r.force for r in plan.requests) + sum(s.force for s in plan.steps)
    problems = f" · {len(plan.problems)} problem(s)" if len(plan.problems) else ""
    if not plan.steps:
        return (
            f"UpdatePlan {plan.plan_id}: {len(plan.requests)} request(s) on {len(plan.image_set_ids)} image "
            f"set(s), {forced} forced, {plan._removals()}{problems}"
        )
    empty = [w.rsplit(" between steps ", 1)[1].replace(" and ", "-") for w in windows(plan)]
    gaps = (
        (f" · {len(empty)} stud{'y' if len(empty) == 1 else 'ies'} without a primary between steps {', '.join(empty)}")
        if empty
        else ""
    )
    return (
        f"UpdatePlan {plan.plan_id}: {len(plan.image_set_ids)} image set(s) ({len(plan.members)} through "
        f"copy-and-promote), {counts_text(plan)}{gaps} · {forced} forced · {plan._removals()}{problems}"
    )


# --- tables -------------------------------------------------------------------------------------------------


def requests_frame(plan: ShownPlan) -> pd.DataFrame:
    """One row per plain request: image set, index, force and reasons, blob sizes, description."""
    columns = [
        "ImageSetID",
        "index",
        "force",
        "force_reasons",
        "includeStudyImageSets",
        "affects",
        "updatable_bytes",
        "removable_bytes",
        "revertToVersionId",
        "base_version",
        "description",
    ]
    rows = [
        {
            "ImageSetID": r.image_set_id,
            "index": r.index,
            "force": r.force,
            "force_reasons": list(r.force_reasons),
            "includeStudyImageSets": r.include_study_image_sets,
            "affects": list(r.affects),
            "updatable_bytes": r.blob_bytes("updatableAttributes"),
            "removable_bytes": r.blob_bytes("removableAttributes"),
            "revertToVersionId": r.revert_to,
            "base_version": plan.base_versions.get(r.image_set_id),
            "description": r.description,
        }
        for r in plan.requests
    ]
    return pd.DataFrame(rows, columns=columns)


def target_text(target: str | Ref, number: dict[str, int], plan: ShownPlan) -> str:
    """An image set as a step addresses it: its ID, or ``<image set created by step #n (copy of …)>``."""
    if isinstance(target, str):
        return target
    creator = next((s for s in plan.steps if s.step_id == target.step), None)
    what = "copy" if creator is None or creator.kind is not StepKind.PROMOTE else "new primary"
    original = creator.original if creator is not None else "?"
    return f"<image set created by step #{number.get(target.step, '?')} ({what} of {original})>"


def steps_frame(plan: ShownPlan) -> pd.DataFrame:
    """One row per step, numbered: what it calls, on what, after which steps, and whether it deletes an image
    set or changes an image set ID."""
    number = numbers(plan)
    rows = [
        {
            "step": number[step.step_id],
            "step_id": step.step_id,
            "ImageSetID": step.original,
            "kind": str(step.kind),
            "action": str(step.action) if step.action is not None else "check",
            "target": target_text(step.target, number, plan),
            "after": [number[a] for a in step.after if a in number],
            "deletes": step.kind.deletes,
            "new_id": step.kind.changes_id,
            "force": step.force,
            "force_reasons": list(step.force_reasons),
            "group": step.group,
            "description": step.description,
        }
        for step in plan.all_steps()
    ]
    return pd.DataFrame(rows, columns=list(STEP_COLUMNS))


# --- text: the calls, as a dry run prints them --------------------------------------------------------------


def marker(step: PlannedStep) -> str:
    """``[DELETE]``, ``[NEW ID]`` or nothing."""
    return "[DELETE] " if step.kind.deletes else "[NEW ID] " if step.kind.changes_id else ""


def call(step: PlannedStep, plan: ShownPlan, number: dict[str, int]) -> tuple[str, dict[str, Any]]:
    """The boto3 method and keyword arguments a step sends (IDs not known yet spelled as placeholders)."""
    target = target_text(step.target, number, plan)
    version = f"<latest version of {target} when sent>"
    if step.kind is StepKind.UPDATE:
        kwargs = {"datastoreId": plan.datastore_id, "imageSetId": target, "latestVersionId": version, **step.params}
        return "update_image_set_metadata", kwargs
    if step.kind.deletes:
        return "delete_image_set", {"datastoreId": plan.datastore_id, "imageSetId": target}
    source: dict[str, Any] = {"latestVersionId": version}
    if step.params.get("copiableAttributes"):
        source["DICOMCopies"] = {"copiableAttributes": step.params["copiableAttributes"]}
    information: dict[str, Any] = {"sourceImageSet": source}
    destination = step.params.get("destination")
    if destination is not None:
        name = target_text(destination, number, plan)
        information["destinationImageSet"] = {"imageSetId": name, "latestVersionId": f"<latest version of {name}>"}
    kwargs = {"datastoreId": plan.datastore_id, "sourceImageSetId": target, "copyImageSetInformation": information}
    if step.kind is StepKind.PROMOTE:
        kwargs["promoteToPrimary"] = True
    if step.params.get("force"):
        kwargs["force"] = True
    return "copy_image_set", kwargs


def step_line(step: PlannedStep, plan: ShownPlan, number: dict[str, int]) -> str:
    """One numbered line: the call it makes (or ``# check: …``), marked, with what it waits for."""
    after = sorted(number[a] for a in step.after if a in number)
    wait = f" (after #{', #'.join(map(str, after))})" if after else ""
    head = f"#{number[step.step_id]} {marker(step)}"
    if step.kind.check:
        return f"{head}# check: {step.description}{wait}"
    method, kwargs = call(step, plan, number)
    return f"{head}{method}(**{json.dumps(kwargs, sort_keys=True)}){wait}  # {step.description}"


def text(plan: ShownPlan) -> str:
    """The first line, then every step as one line."""
    number = numbers(plan)
    return "\n".join([first_line(plan), *(step_line(step, plan, number) for step in plan.all_steps())])


# --- HTML ---------------------------------------------------------------------------------------------------


def _cell_text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _problems_html(plan: ShownPlan) -> str:
    esc = html.escape
    parts = [
        f'<div style="background:#fde2e2;border:1px solid #c00;padding:4px"><b>{len(plan.problems)} '
        "problem(s): these image sets are not planned</b><table>"
        "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in PROBLEM_COLUMNS) + "</tr>"
    ]
    for record in plan.problems.to_dict("records"):
        parts.append("<tr>" + "".join(f"<td>{esc(_cell_text(record.get(c)))}</td>" for c in PROBLEM_COLUMNS) + "</tr>")
    parts.append("</table></div>")
    return "".join(parts)


def summary_rows(plan: ShownPlan) -> pd.DataFrame:
    """One row per image set: its steps by kind, deletes, whether its ID changes, force, base version."""
    rows = []
    for image_set, steps in plan.steps_by_image_set().items():
        kinds = Counter(step.action or "check" for step in steps)
        rows.append(
            {
                "ImageSetID": image_set,
                "steps": len(steps),
                "UpdateImageSetMetadata": kinds["UpdateImageSetMetadata"],
                "CopyImageSet": kinds["CopyImageSet"],
                "DeleteImageSet": kinds["DeleteImageSet"],
                "checks": kinds["check"],
                "new_id": any(step.kind.changes_id for step in steps),
                "force": any(step.force for step in steps),
                "base_version": plan.base_versions.get(image_set),
                "group": next((step.group for step in steps if step.group), None),
            }
        )
    return pd.DataFrame(rows)


def _summary_table(plan: ShownPlan) -> str:
    esc = html.escape
    table = summary_rows(plan)
    if not len(table):
        return ""
    shown = table.head(_HTML_IMAGE_SETS)
    head = "".join(f"<th>{esc(str(c))}</th>" for c in shown.columns)
    body = []
    for record in shown.to_dict("records"):
        marks = {"new_id": "NEW ID" if record["new_id"] else "", "force": "force" if record["force"] else ""}
        cells = [marks.get(str(name), _cell_text(value)) for name, value in record.items()]
        body.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    more = (
        f"<p>... and {len(table) - len(shown)} more image set(s) (see steps_frame())</p>"
        if len(table) > len(shown)
        else ""
    )
    return f'<table class="ahi-plan-summary"><tr>{head}</tr>{"".join(body)}</table>{more}'


def plan_html(plan: ShownPlan) -> str:
    """The plan as HTML: the first line, the problems, a summary row per image set, then each image set's
    steps in a closed ``<details>``."""
    esc = html.escape
    parts = [
        '<div class="ahi-update-plan">',
        f"<h4>{esc(first_line(plan))}, datastore {esc(plan.datastore_id)}</h4>",
    ]
    if len(plan.problems):
        parts.append(_problems_html(plan))
    parts.append(_summary_table(plan))
    number = numbers(plan)
    groups = plan.steps_by_image_set()
    for count, (image_set, steps) in enumerate(groups.items()):
        if count == _HTML_IMAGE_SETS:
            parts.append(f"<p>... and {len(groups) - count} more image set(s) (see steps_frame())</p>")
            break
        base = plan.base_versions.get(image_set)
        deletes = sum(step.kind.deletes for step in steps)
        new_id = any(step.kind.changes_id for step in steps)
        marks = (f", {deletes} [DELETE]" if deletes else "") + (", [NEW ID]" if new_id else "")
        parts.append(
            f"<details><summary><b>image set {esc(image_set)}</b>: {len(steps)} step(s){marks}"
            f"{'' if base is None else f', against version {esc(base)}'}</summary>"
        )
        parts.extend(_step_html(step, plan, number) for step in steps)
        parts.append("</details>")
    parts.append("</div>")
    return "".join(parts)


def _step_html(step: PlannedStep, plan: ShownPlan, number: dict[str, int]) -> str:
    esc = html.escape
    request = _plain_request(plan, step)
    if request is not None:
        return _request_html(request, number[step.step_id])
    color = "#c00" if step.kind.deletes else "#06c" if step.kind.changes_id else "#888" if step.kind.check else "#444"
    line = (
        esc(step_line(step, plan, number))
        if not step.kind.check
        else (f'<span style="color:#888">{esc(step_line(step, plan, number))}</span>')
    )
    out = [f'<div style="border-left:4px solid {color};margin:4px 0 8px 8px;padding-left:6px">', f"<div>{line}</div>"]
    if step.force_reasons:
        out.append('<div style="color:#c00">force needed because:<ul>')
        out.extend(f"<li>{esc(reason)}</li>" for reason in step.force_reasons)
        out.append("</ul></div>")
    out.extend(_payloads_html(step.payload))
    out.append("</div>")
    return "".join(out)


def _plain_request(plan: ShownPlan, step: PlannedStep) -> ShownRequest | None:
    if step.kind is not StepKind.UPDATE or step.step_id not in {r.step_id for r in plan.requests}:
        return None
    return next(r for r in plan.requests if r.step_id == step.step_id)


def _payloads_html(payload: Any, sizes: Any = None) -> list[str]:
    esc = html.escape
    out = []
    for name in ("updatableAttributes", "removableAttributes"):
        found = payload(name)
        if found is None:
            continue
        shown = json.dumps(found, indent=2, ensure_ascii=False)
        if len(shown) > _HTML_JSON_CHARS:
            shown = shown[:_HTML_JSON_CHARS] + "\n... (truncated)"
        size = f" ({sizes(name)} bytes)" if sizes is not None else ""
        out.append(f"<div>{name}{size}:</div><pre>{esc(shown)}</pre>")
    return out


def _request_html(request: ShownRequest, number: int) -> str:
    esc = html.escape
    color = "#c00" if request.force else "#888"
    out = [
        f'<div style="border-left:4px solid {color};margin:4px 0 8px 8px;padding-left:6px">',
        f"<div><b>#{number}</b> (request {request.index}) {esc(request.description)}</div>",
    ]
    flags = [f"datastoreId={esc(request.params.get('datastoreId', ''))}", f"imageSetId={esc(request.image_set_id)}"]
    if request.force:
        flags.append('<b style="color:#c00">force=True</b>')
    if request.include_study_image_sets:
        flags.append("<b>includeStudyImageSets=True</b>")
    out.append(f"<div><code>{' '.join(flags)}</code></div>")
    if request.force_reasons:
        out.append('<div style="color:#c00">force needed because:<ul>')
        out.extend(f"<li>{esc(reason)}</li>" for reason in request.force_reasons)
        out.append("</ul></div>")
    if request.affects:
        out.append(f"<div>also updates (study consistency): {esc(', '.join(request.affects))}</div>")
    if request.revert_to is not None:
        out.append(f"<div>revertToVersionId = <code>{esc(request.revert_to)}</code></div>")
    out.extend(_payloads_html(request.payload, request.blob_bytes))
    out.append("</div>")
    return "".join(out)
