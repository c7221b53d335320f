"""The DAG scheduler of procedure steps: actions side by side, priorities within an action, a failed step stopping
its dependents and its group, the window of members in flight. Fake steps, no clock: events order them."""

from __future__ import annotations

import threading
from typing import Any

from curation.curate.planstep import StepKind
from curation.run.journal import RequestStatus
from curation.run.scheduler import Node, Scheduler
from curation.run.stepstate import Pending, StepOutcome

DONE = StepOutcome(RequestStatus.DONE)


def _node(
    step_id: str,
    kind: StepKind,
    log: list[str],
    *,
    wait: threading.Event | None = None,
    outcome: StepOutcome = DONE,
    **kwargs: Any,
) -> Node:
    def run() -> StepOutcome:
        log.append(step_id)
        if wait is not None:
            assert wait.wait(10), f"{step_id} waited in vain"
        return outcome

    action = None if kind.check else str(kind.action)
    return Node(step_id, kind, run, action=action, **kwargs)


def test_actions_send_side_by_side_and_waits_leave_the_sender_free() -> None:
    log: list[str] = []
    delete_started = threading.Event()
    copy = _node("copy", StepKind.COPY, log, wait=delete_started)  # holds the copy sender until a delete runs

    def delete() -> StepOutcome:
        log.append("delete")
        delete_started.set()
        return DONE

    released = threading.Event()
    pending = Node(
        "update",
        StepKind.UPDATE,
        lambda: Pending(lambda: (released.wait(10), DONE)[1]),
        action="UpdateImageSetMetadata",
    )
    after_update = _node("update-2", StepKind.UPDATE, log, order=2)

    def release(node: Node, _: StepOutcome) -> None:
        if node.step_id == "delete":
            released.set()

    nodes = [copy, Node("delete", StepKind.DELETE_COPY, delete, action="DeleteImageSet"), pending, after_update]
    outcomes = Scheduler(nodes, on_finish=release).run()
    assert all(o.done for o in outcomes.values())
    assert "update-2" in log  # sent while "update" was still waiting on its image set


def test_a_promotion_goes_before_a_copy_and_a_primary_delete_before_a_copy_delete() -> None:
    log: list[str] = []
    nodes = [
        _node("copy", StepKind.COPY, log, order=0),
        _node("promote", StepKind.PROMOTE, log, order=1),
        _node("delete-copy", StepKind.DELETE_COPY, log, order=2),
        _node("delete-primary", StepKind.DELETE_PRIMARY, log, order=3),
    ]
    Scheduler(nodes).run()
    assert log.index("promote") < log.index("copy")
    assert log.index("delete-primary") < log.index("delete-copy")


def test_a_failure_stops_its_dependents_and_its_group_but_not_other_groups() -> None:
    log: list[str] = []
    failed = threading.Event()
    nodes = [
        _node("check", StepKind.CHECK_STUDY, log, group="g", outcome=StepOutcome(RequestStatus.CONFLICT, "changed")),
        _node("busy", StepKind.DELETE_PRIMARY, log, wait=failed, group="h"),
        _node("delete-primary", StepKind.DELETE_PRIMARY, log, group="g", order=5),  # same sender, after "busy"
        _node("promote", StepKind.PROMOTE, log, after=("check",), group="g"),
        _node("other", StepKind.COPY, log, group="h", order=9),
    ]

    def finished(node: Node, _: StepOutcome) -> None:
        if node.step_id == "check":
            failed.set()

    outcomes = Scheduler(nodes, on_finish=finished).run()
    assert outcomes["promote"].message == "not run: step check did not succeed"
    assert "group g stopped" in (outcomes["delete-primary"].message or "")
    assert "delete-primary" not in log and "promote" not in log
    assert outcomes["other"].done and outcomes["busy"].done


def test_the_window_bounds_the_members_in_flight() -> None:
    log: list[str] = []
    nodes = []
    for number, member in enumerate(("m1", "m2", "m3")):
        nodes.append(_node(f"{member}:copy", StepKind.COPY, log, member=member, order=2 * number))
        nodes.append(
            _node(
                f"{member}:delete-copy",
                StepKind.DELETE_COPY,
                log,
                member=member,
                after=(f"{member}:copy",),
                order=2 * number + 1,
            )
        )
    Scheduler(nodes, window=1).run()
    assert log == ["m1:copy", "m1:delete-copy", "m2:copy", "m2:delete-copy", "m3:copy", "m3:delete-copy"]


def test_serial_runs_one_step_at_a_time_its_wait_included() -> None:
    log: list[str] = []
    nodes = [
        Node("a", StepKind.COPY, lambda: Pending(lambda: (log.append("a waited"), DONE)[1]), action="all"),
        _node("b", StepKind.DELETE_COPY, log, order=1),
    ]
    nodes[1].action = "all"
    Scheduler(nodes, serial=True).run()
    assert log == ["a waited", "b"]
