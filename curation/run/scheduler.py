"""A DAG scheduler for the steps of a plan: one sender per HealthImaging action, waits and checks off the senders.

AHI's quotas are per action ("Throttling limits", HealthImaging Developer Guide: CopyImageSet and DeleteImageSet
0.25 tps, UpdateImageSetMetadata 10 tps by default, each adjustable): a run whose actions take turns is bounded by
the sum of the actions' times, one whose actions run side by side by the busiest action's. So each action has one
sender thread that takes the best *ready* step of its action (all of its ``after`` steps done), sends it under the
action's limiter (``curation.run.limits``), and hands the wait for LOCKED to end to a small pool: no sender holds
its quota while an image set is locked. Checks and plain requests run in that pool too (their calls take tokens
of their own actions). Priorities within an action: a promotion before a copy and a primary's delete before a
copy's (they end the time a study has no primary image set), then plan order. ``window`` bounds the procedure
members between their first copy and their last step: the non-primary copies in flight.

A step whose dependency did not end ``done`` is not run, and neither is any step of the same ``group`` after a
failure in it: a group stands or falls together, so nothing more of it is deleted.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from curation.curate.planstep import StepKind
from curation.run.journal import RequestStatus
from curation.run.limits import CancelSignal
from curation.run.retries import describe
from curation.run.stepstate import Pending, StepOutcome

__all__ = ["Node", "Scheduler"]

_RANK = {
    StepKind.PROMOTE: 0,
    StepKind.DELETE_PRIMARY: 0,
    StepKind.COPY: 1,
    StepKind.BACKUP: 1,
    StepKind.MERGE: 1,
    StepKind.DELETE_COPY: 1,
    StepKind.UPDATE: 0,
}
#: a step that was not run because a step it waits for, or a step of its group, did not succeed
BLOCKED = "blocked"


@dataclass
class Node:
    """One step to schedule: ``run()`` sends it (a ``Pending`` finishes it in the pool) or runs it whole."""

    step_id: str
    kind: StepKind
    run: Callable[[], StepOutcome | Pending]
    after: tuple[str, ...] = ()
    action: str | None = None  #: the sender it needs (None: run in the pool)
    group: str | None = None
    member: str | None = None  #: the procedure member it belongs to (the window counts these)
    order: int = 0

    @property
    def rank(self) -> tuple[int, int]:
        return _RANK.get(self.kind, 1), self.order


@dataclass
class _State:
    outcomes: dict[str, StepOutcome] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)
    stopped_groups: dict[str, str] = field(default_factory=dict)
    started_members: set[str] = field(default_factory=set)
    started_groups: set[str] = field(default_factory=set)


class Scheduler:
    """Run ``nodes`` (a DAG by ``after``) to the end; ``run()`` returns every node's outcome."""

    def __init__(
        self,
        nodes: Iterable[Node],
        *,
        workers: int = 8,
        window: int = 16,
        cancel: CancelSignal | None = None,
        serial: bool = False,
        on_finish: Callable[[Node, StepOutcome], object] | None = None,
    ) -> None:
        self.nodes = {node.step_id: node for node in nodes}
        self.workers = max(1, workers)
        self.window = max(1, window)
        self.cancel = cancel
        self.serial = serial
        self.on_finish = on_finish
        self._state = _State()
        self._cond = threading.Condition()
        self._remaining: dict[str, int] = {}
        members: dict[str, set[str]] = {}
        for node in self.nodes.values():
            if node.member is not None:
                self._remaining[node.member] = self._remaining.get(node.member, 0) + 1
                members.setdefault(node.group or node.member, set()).add(node.member)
        self._sizes = {key: len(value) for key, value in members.items()}
        # readiness kept incrementally (a heap of ready steps per sender), so a dispatch costs O(log n), not O(n)
        self._dependents: dict[str, list[str]] = {}
        self._waiting: dict[str, int] = {}
        for node in self.nodes.values():
            known = [d for d in dict.fromkeys(node.after) if d in self.nodes]
            self._waiting[node.step_id] = len(known)
            for dependency in known:
                self._dependents.setdefault(dependency, []).append(node.step_id)
        self._heaps: dict[str | None, list[tuple[tuple[int, int], str]]] = {}
        for node in self.nodes.values():
            if not self._waiting[node.step_id]:
                self._push(node)

    def run(self) -> dict[str, StepOutcome]:
        senders = {a: ThreadPoolExecutor(1, f"ahi-send-{a}") for a in {n.action for n in self.nodes.values()} if a}
        pool = ThreadPoolExecutor(self.workers, "ahi-steps")
        self._senders, self._pool = senders, pool
        try:
            with self._cond:
                while len(self._state.outcomes) < len(self.nodes):
                    self._dispatch()
                    if len(self._state.outcomes) >= len(self.nodes):
                        break
                    if not self._state.running and not self._admitted_anywhere():
                        raise RuntimeError("the plan's steps wait for each other: no step can run")  # a planner bug
                    self._cond.wait(0.5)
        finally:
            for executor in [*senders.values(), pool]:
                executor.shutdown(wait=True)
        return dict(self._state.outcomes)

    # --- under the lock ----------------------------------------------------------------------------------------
    def _active_members(self) -> int:
        return sum(1 for m in self._state.started_members if self._remaining.get(m, 0) > 0)

    def _blocked(self, node: Node) -> str | None:
        state = self._state
        for dependency in node.after:
            outcome = state.outcomes.get(dependency)
            if outcome is not None and not outcome.done:
                return f"not run: step {dependency} did not succeed"
        if node.group is not None and node.group in state.stopped_groups:
            return f"not run: group {node.group} stopped ({state.stopped_groups[node.group]})"
        if self.cancel is not None and self.cancel.is_set():
            return "cancelled before it was sent: run apply again to continue"
        return None

    def _admitted_anywhere(self) -> bool:
        """With nothing running, start the best admitted step behind a waiting new member (rare: a started
        member's copy ranked after a new member's), scanning the heaps; False if there is none."""
        for action, heap in self._heaps.items():
            for entry in sorted(heap):
                node = self.nodes[entry[1]]
                if action is not None and self._blocked(node) is None and self._admit(node):
                    heap.remove(entry)
                    heapq.heapify(heap)
                    self._state.busy.add(action)
                    self._start(node, self._senders[action], action)
                    return True
        return False

    def _push(self, node: Node) -> None:
        heapq.heappush(self._heaps.setdefault(node.action, []), (node.rank, node.step_id))

    def _pop_blocked(self, heap: list[tuple[tuple[int, int], str]]) -> Node | None:
        """The best ready step of ``heap`` that may run (blocked ones are finished on the way), or None."""
        while heap:
            node = self.nodes[heap[0][1]]
            why = self._blocked(node)
            if why is None:
                return node
            heapq.heappop(heap)
            self._finish(node, StepOutcome(RequestStatus.UNSENT, why), blocked=True)
        return None

    def _admit(self, node: Node) -> bool:
        """Whether ``node`` may start: a member already started, or one whose group fits the window (a group
        larger than the window is admitted alone, so a group never waits for itself)."""
        state = self._state
        if node.member is None or node.member in state.started_members:
            return True
        if node.group is not None and node.group in state.started_groups:
            return True
        active = self._active_members()
        return active == 0 or active + self._sizes.get(node.group or node.member, 1) <= self.window

    def _dispatch(self) -> None:
        """Start every ready check and plain request, and the best ready step of each idle sender."""
        while True:  # a blocked step finishing makes its dependents ready: look again until nothing changes
            seen = (len(self._state.outcomes), len(self._state.running))
            for action, heap in list(self._heaps.items()):
                if action is not None and action in self._state.busy:
                    self._pop_blocked(heap)
                    continue
                while (node := self._pop_blocked(heap)) is not None:
                    if action is not None and not self._admit(node):
                        break  # the window is full: new members wait, in plan order
                    heapq.heappop(heap)
                    if action is None:
                        self._start(node, self._pool)
                        continue
                    self._state.busy.add(action)
                    self._start(node, self._senders[action], action)
                    break
            if (len(self._state.outcomes), len(self._state.running)) == seen:
                return

    def _start(self, node: Node, executor: ThreadPoolExecutor, action: str | None = None) -> None:
        self._state.running.add(node.step_id)
        if node.member is not None:
            self._state.started_members.add(node.member)
            if node.group is not None:
                self._state.started_groups.add(node.group)
        executor.submit(self._call, node, action)

    def _finish(self, node: Node, outcome: StepOutcome, *, blocked: bool = False) -> None:
        state = self._state
        state.running.discard(node.step_id)
        state.outcomes[node.step_id] = outcome
        if node.member is not None:
            self._remaining[node.member] -= 1
        if not outcome.done and not blocked and node.group is not None:
            state.stopped_groups.setdefault(node.group, f"{node.step_id}: {outcome.message}")
        for dependent in self._dependents.get(node.step_id, ()):
            self._waiting[dependent] -= 1
            if not self._waiting[dependent]:
                self._push(self.nodes[dependent])
        if self.on_finish is not None:
            self.on_finish(node, outcome)
        self._cond.notify_all()

    # --- in the threads ----------------------------------------------------------------------------------------
    def _call(self, node: Node, action: str | None) -> None:
        try:
            result = node.run()
            if self.serial and isinstance(result, Pending):
                result = result.wait()  # one step at a time, its wait included
        except Exception as exc:  # journaled as sending: the next apply reconciles it
            result = StepOutcome(RequestStatus.FAILED, f"{describe(exc)} (run apply again to reconcile)")
        with self._cond:
            if action is not None:
                self._state.busy.discard(action)
            if isinstance(result, Pending):
                self._pool.submit(self._wait, node, result)
                self._cond.notify_all()
            else:
                self._finish(node, result)

    def _wait(self, node: Node, pending: Pending) -> None:
        try:
            result = pending.wait()
        except Exception as exc:
            result = StepOutcome(RequestStatus.FAILED, f"{describe(exc)} (run apply again to reconcile)")
        with self._cond:
            self._finish(node, result)
