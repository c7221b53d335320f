"""``plan(changes, primary="promote")``: AHI's copy-and-promote procedure as ordered, dependent plan steps.

On a primary image set AHI refuses Patient- and Series-level edits, UID changes and anything that needs force
(Developer Guide, "Updating image set metadata": "The Patient and Series level metadata elements can not be
updated for primary image sets. The UpdateImageSet will not support --force to update StudyInstanceUID,
SeriesInstanceUID, and SOPInstanceUID for primary image sets"; force works "to update elements of non-primary
image sets"). The documented way around it: copy the primary to a new non-primary image set, update the copy
(with force where needed), delete the primary, copy the edited copy with ``promoteToPrimary`` ("If successful,
a new primary image set ID will be returned as the destination image set", API reference CopyImageSet) and
delete the copy. AHI "keeps" conflicting data non-primary: "Imported P10 data that conflicts with primary image
sets already in the store will be persisted as non-primary. After resolving metadata conflicts that data can be
made primary" ("Understanding image sets"); which conflicts refuse a promotion is not documented, so the strict
rule of ``curation.model.rules.promotion_refusal`` is planned against (/work/team/primary-design.md D2, D10).

``Procedures`` is the builder the planner calls, in named phases: ``take`` (per image set the planner found
refused on a primary: can it be planned as a non-primary copy?), then ``build``: ``_consistent`` (D10.1: the
primaries of every target study end with the same Patient/Study values), ``_groups`` (D10.2: which deletions
must precede which promotions), ``_simulate`` (D10.4: every promotion passes the promotion rule in the plan's
order), ``_undo`` (D28: the inverse updates revert needs, checked to reproduce the pre-plan digest) and
``_steps`` (D7, D9: the steps of each group, in a topological order, groups contiguous). A member whose
procedure cannot be planned is a problem naming the image set (and the attribute at fault), never planned in
part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

import pandas as pd

from curation.curate.changeset import CHANGE_COLUMNS, ChangeSet, empty_problems
from curation.curate.planstep import PlannedStep, Ref, StepKind, Undo
from curation.curate.updateplan import PlannedRequest, UpdatePlan
from curation.model import copies, rules
from curation.model.document import PrimaryFacts, digest, iter_series, primary_facts
from curation.model.errors import AHIError
from curation.model.updates import apply_to_document

__all__ = ["Hooks", "PrimaryMode", "Procedures"]

#: One planned request as the planner's packer gives it: params (IDs included), force reasons, the changes.
Packed = tuple[dict[str, Any], list[str], list[Any]]


class PrimaryMode(StrEnum):
    """What ``plan`` does with changes AHI refuses on a primary image set."""

    REFUSE = "refuse"  #: report them as problems (each names ``primary="promote"``)
    PROMOTE = "promote"  #: plan the copy-and-promote procedure for their image sets

    @classmethod
    def parse(cls, value: Any) -> PrimaryMode:
        """The mode named by ``value`` (ValueError naming the two values otherwise)."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f'primary must be "refuse" or "promote", not {value!r}') from None


@dataclass(frozen=True)
class Hooks:
    """What the builder needs from the planner (passed in, so this module does not import the planner):

    - ``pack(image_set, document, changes, primary, problems)``: the planner's packing and validation of one
      image set's changes on ``document`` (None with ``problems`` extended when AHI would refuse them);
    - ``refragment(change, document)``: recompute a change's payload fragments after its UIDs were changed;
    - ``describe(changes)``: the planner's one-line description of a request's changes;
    - ``replan(changes)``: ``plan`` of a ChangeSet (used for the inverse updates of revert).
    """

    pack: Callable[[str, dict[str, Any], list[Any], bool, list[dict[str, Any]]], list[Packed] | None]
    refragment: Callable[[Any, dict[str, Any]], None]
    describe: Callable[[list[Any]], str]
    replan: Callable[[ChangeSet], UpdatePlan]


@dataclass
class _Member:
    """One image set that goes through the procedure (P: its primary image set today)."""

    image_set: str
    flag: bool | None
    pre: dict[str, Any]  # the snapshot's document (pre-plan: what revert restores)
    base: dict[str, Any]  # the document the copy is made of (``pre`` after plain study-wide updates, D8)
    copy_updates: list[Packed]
    post_updates: list[Packed]
    intended: dict[str, Any]  # the working copy after its updates: what the new primary holds when promoted
    final: dict[str, Any]  # after the post-promotion updates (instance removals, D9)
    removed_series: dict[str, list[str]]
    after: tuple[str, ...] = ()  # plain steps that change P before its copy (D8)
    undo: Undo | None = None

    @cached_property
    def facts(self) -> PrimaryFacts:
        """What the promotion rule sees of the new primary."""
        return primary_facts(self.intended, f"new primary of {self.image_set}")

    @property
    def target(self) -> str | None:
        """The study the new primary belongs to."""
        return self.facts.study_uid

    @cached_property
    def current(self) -> PrimaryFacts:
        """What the promotion rule sees of the primary today."""
        return primary_facts(self.base, self.image_set)


@dataclass
class _Group:
    name: str
    members: list[_Member] = field(default_factory=list)
    deletes_before: dict[str, set[str]] = field(default_factory=dict)


class Procedures:
    """Builds the procedure steps of one plan (see the module docstring)."""

    def __init__(self, snapshot: Any, flags: Mapping[str, bool], limit: int, hooks: Hooks) -> None:
        self.snapshot = snapshot
        self.documents: Mapping[str, dict[str, Any]] = snapshot.documents
        self.flags = flags
        self.limit = limit
        self.hooks = hooks
        self.members: dict[str, _Member] = {}
        self.taken: set[str] = set()  # every image set planned as a member (some may be dropped by a problem)
        self._plain_cache: dict[str, PrimaryFacts] | None = None

    # --- phase 1: members ----------------------------------------------------------------------------------

    def take(self, image_set: str, document: dict[str, Any], items: list[Any], problems: list[dict[str, Any]]) -> bool:
        """Plan ``image_set`` (refused as a primary) as a procedure member: every change on the working copy
        (non-primary, force where needed), except instance removals, which go to the new primary after
        promotion (D9: accepted there, and its version history keeps the instances for revert). False with
        ``problems`` extended when AHI would refuse the changes on a non-primary image set too."""
        flag = self.flags.get(image_set)
        if flag is False:
            return False
        removals = [c for c in items if c.op == "remove_instance"]
        rest = [c for c in items if c.op != "remove_instance"]
        found: list[dict[str, Any]] = []
        copy_updates = self.hooks.pack(image_set, document, rest, False, found) if rest else []
        if copy_updates is None:
            problems.extend(found)
            return False
        intended = _applied(document, copy_updates, primary=False, limit=self.limit)
        post_updates: list[Packed] = []
        if removals:
            renamed = _renamed_series(rest)
            moved = []
            for change in removals:
                change = dataclasses.replace(change, series=renamed.get(change.series, change.series))
                self.hooks.refragment(change, intended)
                moved.append(change)
            packed = self.hooks.pack(image_set, intended, moved, True, found)
            if packed is None:
                problems.extend(found)
                return False
            post_updates = packed
        removed = {
            c.series: sorted(_series_node(self.documents[image_set], c.series).get("Instances") or {})
            for c in rest
            if c.op == "remove_series"
        }
        self.taken.add(image_set)
        self.members[image_set] = _Member(
            image_set,
            flag,
            self.documents[image_set],
            document,
            copy_updates,
            post_updates,
            intended,
            _applied(intended, post_updates, primary=True, limit=self.limit),
            removed,
        )
        return True

    def kept_problems(self, problems: pd.DataFrame) -> pd.DataFrame:
        """The ChangeSet's problems without the primary refusals of the image sets planned as members: the
        procedure lifts them (and a member dropped later has its own problem saying why)."""
        if not len(problems) or not self.taken:
            return problems
        lifted = [
            str(image_set) in self.taken and isinstance(reason, str) and rules.PRIMARY_WORKAROUND in reason
            for image_set, reason in zip(problems["ImageSetID"], problems["reason"], strict=True)
        ]
        return problems[[not x for x in lifted]].reset_index(drop=True)

    # --- phase 2: the whole plan -----------------------------------------------------------------------------

    def build(
        self, requests: list[PlannedRequest], base_versions: dict[str, str], bad: set[str]
    ) -> tuple[list[PlannedStep], dict[str, Undo], list[dict[str, Any]]]:
        """The steps and undo records of every member, and the problems of the members left out.

        ``requests`` are the plain requests (their image sets' documents simulated through them); members
        with a problem are dropped and the rest re-checked until none is found. ``base_versions`` gains the
        members' versions.
        """
        for image_set in bad:
            self.members.pop(image_set, None)
        plain = UpdatePlan.build(self.snapshot.datastore_id, {}, requests).preview(
            self.documents, primary={k: v is not False for k, v in self._flags().items()}, max_blob_bytes=self.limit
        )
        for member in self.members.values():
            member.after = tuple(r.step_id for r in requests if member.image_set in r.affects)
        problems: list[dict[str, Any]] = []
        while True:
            found = self._consistent(plain, requests) or self._simulate(plain, requests) or self._undo()
            if not found:
                break
            problems.extend(found)
            for problem in found:
                self.members.pop(problem["ImageSetID"], None)
        writer = _StepWriter(self, requests)
        steps = [step for group in self._groups() for step in writer.steps(group)]
        versions = self.snapshot.version_ids
        for image_set in self.members:
            if image_set in versions:
                base_versions[image_set] = str(versions[image_set])
        undo = {k: m.undo for k, m in self.members.items() if m.undo is not None}
        return steps, undo, problems

    def _flags(self) -> dict[str, bool | None]:
        return {image_set: self.flags.get(image_set) for image_set in self.documents}

    def _plain_facts(self, plain: Mapping[str, dict[str, Any]]) -> dict[str, PrimaryFacts]:
        """Image set -> facts of every primary as the plain requests leave it (computed once per plan)."""
        if self._plain_cache is None:
            self._plain_cache = {
                k: primary_facts(plain[k], k) for k, flag in self._flags().items() if flag is not False
            }
        return self._plain_cache

    def _end_primaries(self, plain: Mapping[str, dict[str, Any]]) -> dict[str, PrimaryFacts]:
        """Image set -> facts of every primary as the plan leaves it (members: their new primary)."""
        out = dict(self._plain_facts(plain))
        for image_set, member in self.members.items():
            out[image_set] = member.facts
        return out

    def _consistent(self, plain: Mapping[str, dict[str, Any]], requests: list[PlannedRequest]) -> list[dict[str, Any]]:
        """D10.1: every member ends with the Patient/Study values of the other primaries of its target study."""
        end = self._end_primaries(plain)
        by_study: dict[str | None, list[tuple[str, PrimaryFacts]]] = {}
        for key, facts in end.items():
            by_study.setdefault(facts.study_uid, []).append((key, facts))
        found = []
        for member in self.members.values():
            ours = end[member.image_set]
            others = [f for k, f in by_study[ours.study_uid] if k != member.image_set]
            for level, attribute, value in _first_conflict(ours, others):
                stays = [(k, f) for k, f in by_study[ours.study_uid] if k != member.image_set]
                found.append(self._inconsistent(member, level, attribute, value, stays))
                break
        return found

    def _inconsistent(
        self, member: _Member, level: str, attribute: str, value: Any, others: list[tuple[str, PrimaryFacts]]
    ) -> dict[str, Any]:
        study = member.target
        shown = []
        for image_set, facts in others:
            theirs = (facts.patient if level == "Patient" else facts.study).get(attribute, _ABSENT)
            if theirs is _ABSENT or not rules._same_json(theirs, value):
                shown.append(f"{image_set} ({_text(theirs)})")
        moved = member.current.study_uid != study
        if not moved:
            hint = (
                f'edit every row of the study, e.g. studies.loc[studies["StudyInstanceUID"] == "{study}", '
                f'"{attribute}"] = {_text(value)}'
            )
        elif others:
            hint = (
                f"set it too, or take every Patient/Study value of the target study with "
                f"curation.adopt_study(studies, {member.image_set!r}, like={others[0][0]!r})"
            )
        else:
            hint = "set it too"
        reason = (
            f"study {study}: {level}-level {attribute} is {_text(value)} on image set {member.image_set} "
            f"after the plan but {', '.join(shown)} on the other primary image set(s) of the study; AHI "
            "refuses a promotion into a study whose primary image sets disagree (they keep Patient- and "
            f"Study-level metadata consistent, strict reading of the Developer Guide): {hint}"
        )
        row = next((c.row for p in member.copy_updates for c in p[2] if c.attribute == attribute), None)
        column = attribute if row is not None else None
        return {"ImageSetID": member.image_set, "row": row, "column": column, "attribute": attribute, "reason": reason}

    def _groups(self) -> list[_Group]:
        """D10.2: ``deletes_before(X)`` = X and the members now in X's target study whose Patient/Study values
        differ from X's intended ones; a group is a connected component of that relation (plan order)."""
        order = list(self.members)
        parent = {k: k for k in order}

        def root(key: str) -> str:
            while parent[key] != key:
                parent[key] = parent[parent[key]]
                key = parent[key]
            return key

        now_in: dict[str | None, list[_Member]] = {}
        for member in self.members.values():
            now_in.setdefault(member.current.study_uid, []).append(member)
        before: dict[str, set[str]] = {}
        for member in self.members.values():
            ours = member.facts
            before[member.image_set] = {member.image_set} | {
                other.image_set
                for other in now_in.get(ours.study_uid, [])
                if other is not member and _first_conflict(ours, [other.current])
            }
            for other in before[member.image_set]:
                parent[root(other)] = root(member.image_set)
        groups: dict[str, _Group] = {}
        for key in order:
            top = root(key)
            if top not in groups:
                groups[top] = _Group(f"g{len(groups)}")
            groups[top].members.append(self.members[key])
            groups[top].deletes_before[key] = before[key]
        return list(groups.values())

    def _simulate(self, plain: Mapping[str, dict[str, Any]], requests: list[PlannedRequest]) -> list[dict[str, Any]]:
        """D10.4: run every group's deletions and promotions in the plan's order against the primaries the
        plain requests leave; a promotion the rule refuses is a problem of that member."""
        primaries = _Primaries(self._plain_facts(plain).values())
        found = []
        for group in self._groups():
            for member in group.members:
                primaries.pop(member.image_set)
            for member in group.members:
                refusal = rules.promotion_refusal(member.facts, primaries.near(member.facts))
                if refusal is not None:
                    found.append(
                        {
                            "ImageSetID": member.image_set,
                            "row": None,
                            "column": None,
                            "attribute": refusal.attribute,
                            "reason": f"its promotion would be refused: {refusal.message}",
                        }
                    )
                primaries.add(member.facts)
        return found

    def _undo(self) -> list[dict[str, Any]]:
        """D28: per member, the updates that take its new primary (before the post-promotion updates) back to
        the pre-plan document, planned on non-primary copies (one planner pass for every member); a member
        whose inverse does not reproduce the pre-plan digest is a problem (revert could not be exact)."""
        todo = [m for m in self.members.values() if m.undo is None]
        rows = [row for m in todo for row in _inverse_rows(m, _without_series(m.pre, m.removed_series))]
        frame = pd.DataFrame(
            [{c: r.get(c) for c in CHANGE_COLUMNS} for r in rows], columns=list(CHANGE_COLUMNS), dtype=object
        )
        scope = _OneDocument(
            self.snapshot.datastore_id, {m.image_set: m.intended for m in todo}, {m.image_set: False for m in todo}, {}
        )
        planned = self.hooks.replan(ChangeSet(frame, empty_problems(), scope, {})) if rows else None
        inverses: dict[str, list[dict[str, Any]]] = {}
        refused: dict[str, str] = {}
        for request in planned.requests if planned is not None else []:
            inverses.setdefault(request.image_set_id, []).append(_call_params(request.params))
        for record in planned.problems.to_dict("records") if planned is not None else []:
            refused.setdefault(str(record["ImageSetID"]), str(record["reason"]))
        found = []
        for member in todo:
            try:
                if member.image_set in refused:
                    raise ValueError(refused[member.image_set])
                member.undo = self._checked_undo(member, inverses.get(member.image_set, []))
            except (AHIError, ValueError) as exc:
                found.append(
                    {
                        "ImageSetID": member.image_set,
                        "row": None,
                        "column": None,
                        "attribute": None,
                        "reason": f"revert of its procedure could not be planned exactly: {exc}",
                    }
                )
        return found

    def _checked_undo(self, member: _Member, inverse: list[dict[str, Any]]) -> Undo:
        """The Undo of ``member``, after checking that ``inverse`` (and merging the backup of removed series)
        takes its new primary back to the pre-plan digest (D12)."""
        pre = member.pre
        restored = member.intended
        for params in inverse:
            restored = apply_to_document(restored, params, is_primary=False, max_blob_bytes=self.limit)
        backup = None
        if member.removed_series:
            backup = f"{member.image_set}:backup"
            selected = copies.select(pre, copies.copiable_attributes(dict(member.removed_series)))
            restored, _ = copies.merge(restored, selected)
        if digest(restored) != digest(pre):
            raise ValueError("its inverse updates do not reproduce the pre-plan document")
        return Undo(inverse, digest(pre), len(member.post_updates), backup)


class _StepWriter:
    """Phase 3: the steps of each group (D7, D9, D10), in a topological order."""

    def __init__(self, procedures: Procedures, requests: list[PlannedRequest]) -> None:
        self.flags = procedures._flags()
        self.order = list(procedures.members)
        self.describe = procedures.hooks.describe
        members = set(self.order)
        study_of = {k: _study_uid(d) for k, d in procedures.documents.items()}
        self.primaries: dict[str | None, list[str]] = {}  # study -> its primaries today
        for image_set, flag in self.flags.items():
            if flag is not False:
                self.primaries.setdefault(study_of[image_set], []).append(image_set)
        self.plain: dict[str | None, dict[str, str]] = {}  # study -> primary -> its last plain request
        for request in requests:
            image_set = request.image_set_id
            if self.flags.get(image_set) is not False and image_set not in members:
                self.plain.setdefault(study_of[image_set], {})[image_set] = request.step_id

    def steps(self, group: _Group) -> list[PlannedStep]:
        """The steps of one group, phase by phase (a topological order): backups, copies, copy updates,
        copy checks, a check of each target study, the deletions, then per member promote, check, post
        updates, delete."""
        phases: dict[str, list[PlannedStep]] = {
            name: []
            for name in (
                "backup",
                "copy",
                "update",
                "verify",
                "check",
                "delete",
                "promote",
                "verify-primary",
                "post",
                "delete-copy",
            )
        }
        verified = tuple(self._copy_steps(member, group.name, phases) for member in group.members)
        studies = list(dict.fromkeys(member.target for member in group.members))
        checks = []
        for number, study in enumerate(studies):
            checks.append(f"{group.name}:check-study" + (f".{number}" if number else ""))
            phases["check"].append(self._check(group, study, checks[-1], verified))
        for member in group.members:
            self._promotion_steps(
                member, group, verified, tuple(checks), self._plain_steps(group, member.target), phases
            )
        return [step for steps in phases.values() for step in steps]

    def _check(self, group: _Group, study: str | None, step_id: str, verified: tuple[str, ...]) -> PlannedStep:
        """CHECK_STUDY of one target study of the group: its primaries are the ones the plan expects (``params``:
        ``primaries``; ``empties`` when the group deletes all of them before the first promotion into it,
        ``promotes``: the promotions into it)."""
        expected = sorted(self.primaries.get(study, []))
        deleted = {m.image_set for m in group.members}
        into = [m.image_set for m in group.members if m.target == study]
        empties = [study] if expected and set(expected) <= deleted else []
        return PlannedStep(
            step_id,
            StepKind.CHECK_STUDY,
            str(study),
            into[0],
            {
                "study": study,
                "primaries": expected,
                "members": [m.image_set for m in group.members],
                "promotes": [f"{m}:promote" for m in into],
                "empties": empties,
            },
            verified + self._plain_steps(group, study),
            group.name,
            description=f"the primary image sets of study {study} are the {len(expected)} the plan expects "
            f"({', '.join(expected) or 'none'}), at the versions the plan leaves, and every promotion of "
            f"{group.name} into it can pass",
        )

    def _plain_steps(self, group: _Group, study: str | None) -> tuple[str, ...]:
        """The last plain request of each primary image set of ``study`` (they run before any promotion into
        it, so that the promoted image sets meet the values those requests leave)."""
        return tuple((self.plain.get(study) or {}).values())

    def _copy_steps(self, member: _Member, group: str, phases: dict[str, list[PlannedStep]]) -> str:
        """BACKUP (series removals), COPY, the copy's UPDATEs and VERIFY_COPY; the VERIFY_COPY step ID."""
        image_set = member.image_set
        copy = f"{image_set}:copy"
        unknown = " (primary flag unknown: treated as primary)" if member.flag is None else ""
        if member.removed_series:
            phases["backup"].append(
                PlannedStep(
                    f"{image_set}:backup",
                    StepKind.BACKUP,
                    image_set,
                    image_set,
                    {"copiableAttributes": copies.copiable_attributes(dict(member.removed_series))},
                    member.after,
                    group,
                    description=f"keep series {', '.join(sorted(member.removed_series))} of {image_set} in a "
                    "non-primary image set, retained after apply so that revert can restore them",
                )
            )
        phases["copy"].append(
            PlannedStep(
                copy,
                StepKind.COPY,
                image_set,
                image_set,
                {},
                member.after,
                group,
                description=f"copy primary image set {image_set} to a new non-primary working copy{unknown}",
            )
        )
        updates = self._updates(member.copy_updates, image_set, "update", copy, copy, group, "the working copy")
        phases["update"].extend(updates)
        previous = updates[-1].step_id if updates else copy
        verify = f"{image_set}:verify-copy"
        phases["verify"].append(
            PlannedStep(
                verify,
                StepKind.VERIFY_COPY,
                Ref(copy),
                image_set,
                {},
                (previous,),
                group,
                digest(member.intended),
                description=f"the working copy of {image_set} is ACTIVE, non-primary and holds the intended document "
                f"(frames included); {image_set} is unlocked and still at the version the plan expects",
            )
        )
        return verify

    def _promotion_steps(
        self,
        member: _Member,
        group: _Group,
        verified: tuple[str, ...],
        checks: tuple[str, ...],
        plain: tuple[str, ...],
        phases: dict[str, list[PlannedStep]],
    ) -> None:
        image_set, name = member.image_set, group.name
        copy, promote = f"{image_set}:copy", f"{image_set}:promote"
        backup = (f"{image_set}:backup",) if member.removed_series else ()
        series = ", ".join(sorted(uid for uid, _ in iter_series(member.base)))
        phases["delete"].append(
            PlannedStep(
                f"{image_set}:delete-primary",
                StepKind.DELETE_PRIMARY,
                image_set,
                image_set,
                {},
                (*verified, *checks, *backup),
                name,
                description=f"old primary of series {series} (once "
                + (
                    "its working copy is verified)"
                    if len(verified) == 1
                    else f"all {len(verified)} working copies of {group.name} are verified)"
                ),
            )
        )
        deletes = tuple(
            f"{other}:delete-primary" for other in sorted(group.deletes_before[image_set], key=self.order.index)
        )
        phases["promote"].append(
            PlannedStep(
                promote,
                StepKind.PROMOTE,
                Ref(copy),
                image_set,
                {},
                deletes + plain,
                name,
                description=f"promoteToPrimary the working copy of {image_set} → new primary of study "
                f"{member.target} (the image set ID changes; known when applied)",
            )
        )
        verify = f"{image_set}:verify-primary"
        phases["verify-primary"].append(
            PlannedStep(
                verify,
                StepKind.VERIFY_PRIMARY,
                Ref(promote),
                image_set,
                {},
                (promote,),
                name,
                digest(member.intended),
                description=f"the new primary of {image_set} is ACTIVE, primary and holds the intended document",
            )
        )
        self._after_promotion(member, name, verify, phases)

    def _updates(
        self, packed: list[Packed], image_set: str, prefix: str, target: str, first: str, group: str, where: str
    ) -> list[PlannedStep]:
        """UpdateImageSetMetadata steps ``<image set>:<prefix>.<i>`` of the image set created by step ``target``,
        in order, the first after step ``first``."""
        steps: list[PlannedStep] = []
        previous = first
        for index, (params, reasons, changes) in enumerate(packed):
            step = PlannedStep(
                f"{image_set}:{prefix}.{index}",
                StepKind.UPDATE,
                Ref(target),
                image_set,
                _call_params(params),
                (previous,),
                group,
                force_reasons=tuple(reasons),
                description=f"on {where} of {image_set}: {self.describe(changes)}",
            )
            steps.append(step)
            previous = step.step_id
        return steps

    def _after_promotion(self, member: _Member, name: str, verify: str, phases: dict[str, list[PlannedStep]]) -> None:
        """The post-promotion updates (instance removals, D9) and the deletion of the working copy."""
        image_set = member.image_set
        copy, promote = f"{image_set}:copy", f"{image_set}:promote"
        updates = self._updates(member.post_updates, image_set, "post", promote, verify, name, "the new primary")
        phases["post"].extend(updates)
        previous = updates[-1].step_id if updates else verify
        phases["delete-copy"].append(
            PlannedStep(
                f"{image_set}:delete-copy",
                StepKind.DELETE_COPY,
                Ref(copy),
                image_set,
                {},
                (previous,),
                name,
                description=f"the working copy of {image_set} (its content is verified in the new primary)",
            )
        )


# --- helpers -------------------------------------------------------------------------------------------------


class _Primaries:
    """The primaries of a simulation, indexed so that a promotion is compared only with the primaries that can
    refuse it: those of its study (consistency key) and those holding one of its series or SOP instances."""

    def __init__(self, facts: Iterable[PrimaryFacts]) -> None:
        self.by_id: dict[str, PrimaryFacts] = {}
        self.index: dict[tuple[str, Any], set[str]] = {}
        for item in facts:
            self.add(item)

    def _keys(self, facts: PrimaryFacts) -> list[tuple[str, Any]]:
        keys: list[tuple[str, Any]] = [("study", rules.consistency_key(facts))]
        keys += [("series", uid) for uid in facts.series] + [("sop", uid) for uid in facts.sops]
        return keys

    def add(self, facts: PrimaryFacts) -> None:
        self.by_id[facts.image_set_id] = facts
        for key in self._keys(facts):
            self.index.setdefault(key, set()).add(facts.image_set_id)

    def pop(self, image_set: str) -> None:
        facts = self.by_id.pop(image_set, None)
        for key in self._keys(facts) if facts is not None else []:
            self.index[key].discard(image_set)

    def near(self, facts: PrimaryFacts) -> list[PrimaryFacts]:
        found: set[str] = set()
        for key in self._keys(facts):
            found |= self.index.get(key, set())
        return [self.by_id[k] for k in sorted(found)]


_ABSENT = object()


def _text(value: Any) -> str:
    return "absent" if value is _ABSENT else repr(value)


def _first_conflict(ours: PrimaryFacts, others: Iterable[PrimaryFacts]) -> list[tuple[str, str, Any]]:
    """[(level, attribute, our value)] of the first Patient/Study attribute on which ``others`` disagree."""
    for other in others:
        for level, mine, theirs in (("Patient", ours.patient, other.patient), ("Study", ours.study, other.study)):
            conflict = rules.level_conflict(level, mine, theirs)
            if conflict is not None:
                value = mine.get(conflict[0], _ABSENT)
                return [(level, conflict[0], value)]
    return []


def _applied(document: dict[str, Any], packed: list[Packed], *, primary: bool, limit: int) -> dict[str, Any]:
    for params, _, _ in packed:
        document = apply_to_document(document, params, is_primary=primary, max_blob_bytes=limit)
    return document


def _call_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A request's parameters without the IDs (a step's target is resolved when it runs)."""
    return {k: v for k, v in params.items() if k not in ("datastoreId", "imageSetId", "latestVersionId")}


def _renamed_series(changes: Iterable[Any]) -> dict[Any, Any]:
    return {
        c.series: c.new
        for c in changes
        if c.level == "Series" and c.attribute == "SeriesInstanceUID" and c.op in ("add", "update")
    }


def _study_uid(document: dict[str, Any]) -> str | None:
    uid = ((document.get("Study") or {}).get("DICOM") or {}).get("StudyInstanceUID")
    return uid if isinstance(uid, str) else None


def _series_node(document: dict[str, Any], uid: Any) -> dict[str, Any]:
    return ((document.get("Study") or {}).get("Series") or {}).get(uid) or {}


def _without_series(document: dict[str, Any], removed: Mapping[str, Any]) -> dict[str, Any]:
    if not removed:
        return document
    study = dict(document["Study"])
    study["Series"] = {k: v for k, v in (study.get("Series") or {}).items() if k not in removed}
    return {**document, "Study": study}


@dataclass
class _OneDocument:
    """What the planner reads of a snapshot, for planning the inverse updates of one working copy."""

    datastore_id: str
    documents: dict[str, dict[str, Any]]
    primary: dict[str, bool]
    version_ids: dict[str, str]


def _inverse_rows(member: _Member, target: dict[str, Any]) -> list[dict[str, Any]]:
    """The ChangeSet rows that take ``member.intended`` (non-primary) back to ``target``: per node, the attributes
    that differ, addressed by the node's UIDs in the intended document (a UID the plan changes is changed back,
    last, by the planner's packing order)."""
    changes = [c for packed in member.copy_updates for c in packed[2]]
    series_names = _renamed_series(changes)
    sop_names = {
        (c.series, c.sop): c.new
        for c in changes
        if c.level == "Instance" and c.attribute == "SOPInstanceUID" and c.op in ("add", "update")
    }
    image_set, rows = member.image_set, []

    def compare(
        level: str,
        series: str | None,
        sop: str | None,
        ours: dict[str, Any],
        theirs: dict[str, Any],
        vrs: Mapping[str, str],
    ) -> None:
        mine, wanted = ours.get("DICOM") or {}, theirs.get("DICOM") or {}
        if mine is wanted or (mine == wanted and rules._same_json(mine, wanted)):
            return  # the node is unchanged (one comparison instead of one per attribute)
        for key in sorted(set(mine) | set(wanted)):
            if key in wanted and key in mine and rules._same_json(mine[key], wanted[key]):
                continue
            op = "remove" if key not in wanted else "add" if key not in mine else "update"
            rows.append(
                {
                    "ImageSetID": image_set,
                    "level": level,
                    "SeriesInstanceUID": series,
                    "SOPInstanceUID": sop,
                    "attribute": key,
                    "VR": vrs.get(key),
                    "op": op,
                    "old": mine.get(key),
                    "new": wanted.get(key),
                    "row": None,
                    "column": key,
                }
            )

    intended = member.intended
    compare("Patient", None, None, intended.get("Patient") or {}, target.get("Patient") or {}, {})
    compare("Study", None, None, intended.get("Study") or {}, target.get("Study") or {}, {})
    for old_series, node in ((target.get("Study") or {}).get("Series") or {}).items():
        series = series_names.get(old_series, old_series)
        ours = _series_node(intended, series)
        compare("Series", series, None, ours, node, {})
        for old_sop, instance in (node.get("Instances") or {}).items():
            sop = sop_names.get((old_series, old_sop), old_sop)
            mine = (ours.get("Instances") or {}).get(sop) or {}
            compare("Instance", series, sop, mine, instance, instance.get("DICOMVRs") or {})
    return rows
