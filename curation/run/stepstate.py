"""The shared state of a run of procedure steps: the journal records a step writes, the image sets steps created,
the versions each image set is expected at, and what a step's outcome is.

Each record is one fsynced line (``curation.run.journal``): ``sending`` before a call, ``accepted`` with the
answer (fsynced too: for a copy the new image set's ID exists only in that answer), then ``done`` / ``failed`` /
``conflict`` / ``unsent``. ``Ledger.adopt`` replays a ``done`` record on resume, so created IDs and versions are
rebuilt from the journal in dependency order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from curation.curate.planstep import PlannedStep, Ref, StepKind
from curation.curate.updateplan import UpdatePlan
from curation.run.journal import Journal, RecordKind, RequestStatus, step_states

__all__ = ["Ledger", "Pending", "StepOutcome"]


@dataclass
class StepOutcome:
    """What became of one step: ``status`` (done, failed, conflict, unsent), the image set it created and its
    version, and a message; ``held_by`` names the non-primary image set that holds a member's content when its
    primary is gone and no new one exists yet."""

    status: RequestStatus
    message: str | None = None
    created: str | None = None
    version: str | None = None
    held_by: str | None = None

    @property
    def done(self) -> bool:
        return self.status == RequestStatus.DONE


@dataclass
class Pending:
    """A step whose call was sent: ``wait()`` (run off the sender's thread) finishes it."""

    wait: Callable[[], StepOutcome]


@dataclass
class Ledger:
    """What a run of ``plan`` knows: step states from the journal, created IDs, expected versions."""

    plan: UpdatePlan
    journal: Journal | None
    states: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    created: dict[str, str] = field(default_factory=dict)  # step id -> image set it created
    versions: dict[str, str | None] = field(default_factory=dict)  # image set -> version our steps left
    orphans: set[str] = field(default_factory=set)
    mapped: set[str] = field(default_factory=set)  # pre-plan image sets with a ``mapping`` record
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        records = self.journal.records if self.journal is not None else []
        self.states = step_states(records)
        self.orphans = {str(r["image_set"]) for r in records if r.get("kind") == RecordKind.ORPHAN}
        self.mapped = {str(r["original"]) for r in records if r.get("kind") == RecordKind.MAPPING}
        for key, value in self.plan.base_versions.items():
            self.versions.setdefault(key, str(value))

    def log(self, step: PlannedStep, status: RequestStatus, **extra: Any) -> None:
        """Journal one record of ``step`` (fsynced)."""
        if self.journal is None:
            return
        record = {
            "kind": RecordKind.STEP,
            "plan_id": self.plan.plan_id,
            "step": step.step_id,
            "step_kind": str(step.kind),
            "original": step.original,
            "status": status,
        }
        record.update({k: v for k, v in extra.items() if v is not None})
        self.journal.append(record)

    def note(self, kind: RecordKind, **fields: Any) -> None:
        """Journal a ``mapping`` or ``orphan`` record."""
        if kind is RecordKind.ORPHAN:
            with self._lock:
                self.orphans.add(str(fields["image_set"]))
        if self.journal is not None:
            self.journal.append({"kind": kind, "plan_id": self.plan.plan_id, **fields})

    def claimed(self) -> set[str]:
        """Every image set a step of this run created or adopted, and every orphan."""
        records = self.journal.reread() if self.journal is not None else []
        ids = {str(r["created"]) for r in records if r.get("kind") == RecordKind.STEP and r.get("created")}
        return ids | set(self.created.values()) | self.orphans

    def resolve(self, target: str | Ref | None) -> str:
        """The image set ID a target names (a Ref: the image set its step created)."""
        if isinstance(target, Ref):
            try:
                return self.created[target.step]
            except KeyError:
                raise LookupError(f"step {target.step} has not created its image set yet") from None
        if target is None:
            raise LookupError("the step names no image set")
        return target

    def adopt(self, step: PlannedStep, outcome: StepOutcome) -> None:
        """Make a finished step's effects known to the steps after it (created ID, versions)."""
        if not outcome.done:
            return
        if step.kind.creates and outcome.created:
            self.created[step.step_id] = outcome.created
            self.versions[outcome.created] = outcome.version
            if step.kind is StepKind.PROMOTE and step.original not in self.mapped:
                # journaled here, so a crash between the promotion's "done" and this record is repaired on resume
                self.mapped.add(step.original)
                self.note(
                    RecordKind.MAPPING,
                    original=step.original,
                    new=outcome.created,
                    version=outcome.version,
                    step=step.step_id,
                )
        elif step.kind is StepKind.UPDATE and outcome.version is not None:
            self.versions[self.resolve(step.target)] = outcome.version
        elif step.kind is StepKind.MERGE and outcome.version is not None:  # a new version of its destination
            self.versions[self.resolve(step.params.get("destination"))] = outcome.version

    def state(self, step: PlannedStep) -> Mapping[str, Any] | None:
        return self.states.get(step.step_id)
