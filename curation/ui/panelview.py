"""The parts of the curation panel that report: the review (ChangeSet and plan) and a run's progress.

``review_html(state)`` turns a ``PanelState``'s edits into the HTML of the ChangeSet and of the plan, and says
whether there is a plan to apply. ``RunView`` runs an apply or undo in a background thread, moves the
progress bar from the run's own ``on_progress`` callback (``curation.run.options.Progress``), shows its
status, and cancels it through the ``threading.Event`` that ``curation.apply(..., cancel=...)`` takes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import ipywidgets as widgets
import pandas as pd

from curation.ui.display import frame_html, message_html

if TYPE_CHECKING:
    from curation.run.options import Progress
    from curation.ui.panelstate import PanelState

__all__ = ["RunView", "review_html"]

#: What a run's result status reads as in the panel, by kind of run (an undo's "applied" is a revert done).
_WORDS = {"apply": {}, "undo": {"applied": "reverted"}}
_GOOD = frozenset({"applied"})
#: The order statuses are counted in.
_ORDER = {s: n for n, s in enumerate(("applied", "conflict", "failed", "skipped", "cancelled", "dry-run"))}


def review_html(state: PanelState) -> tuple[str, str, bool]:
    """(ChangeSet HTML, plan HTML, whether the plan can be applied) for the state's edits."""
    if not state.edited_columns:
        return "<i>no edits</i>", "", False
    try:
        changes = state.changes()
    except Exception as exc:
        return message_html("error", f"cannot compute the changes: {exc}"), "", False
    shown = changes._repr_html_()
    if not changes.ok:
        return shown, message_html("error", "fix the problems above before planning"), False
    if not len(changes):
        return shown, "<i>the edits change nothing</i>", False
    try:
        plan = state.plan()
    except Exception as exc:
        problems = getattr(exc, "problems", None)
        text = message_html("error", "the plan is refused:" if problems is not None else f"cannot plan: {exc}")
        if isinstance(problems, pd.DataFrame):
            text += frame_html(problems, index=False)
        return shown, text, False
    return shown, plan._repr_html_(), bool(len(plan))


class RunView:
    """One apply or undo at a time, in the background or not: progress bar, status line, cancel."""

    def __init__(self, bar: widgets.IntProgress, status: widgets.HTML, say: Callable[[str, str], None]) -> None:
        self.bar = bar
        self.status = status
        self.say = say
        self.what = ""
        self._active = False
        self._thread: threading.Thread | None = None
        self._cancel: threading.Event | None = None

    @property
    def running(self) -> bool:
        """True while a background run has not finished."""
        return self._active

    def begin(self, what: str) -> None:
        """A run starts: the bar at zero, the status says what runs."""
        self.what = what
        self.bar.max, self.bar.value, self.bar.description = 1, 0, what
        self.bar.bar_style = ""
        self.status.value = f"{what}…"

    def on_progress(self, progress: Progress) -> None:
        """The run's callback (from its worker threads): move the bar, say how far it is."""
        self.bar.max = max(1, progress.requests_total)
        self.bar.value = progress.requests_finished
        stopping = " (cancelling)" if self._cancel is not None and self._cancel.is_set() else ""
        done, total = progress.requests_finished, progress.requests_total
        self.status.value = f"{self.what}: {done} of {total} request(s){stopping}"

    def start(
        self,
        what: str,
        job: Callable[[threading.Event], pd.DataFrame],
        done: Callable[[pd.DataFrame], None],
        controls: Callable[[], None],
    ) -> None:
        """Run ``job(cancel)`` in a background thread; then ``done(result)`` (or the error shown), ``controls()``."""
        cancel = threading.Event()
        self._cancel = cancel
        self.begin(what)
        self._active = True
        controls()

        def work() -> None:
            try:
                result = job(cancel)
            except Exception as exc:
                self._active = False
                self.status.value = f"{self.what}: stopped"
                self.say("error", f"{type(exc).__name__}: {exc}")
            else:
                self._active = False
                done(result)
            finally:
                self._active = False
                controls()

        self._thread = threading.Thread(target=work, name=f"curation-panel-{what}", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Ask the background run to stop between requests."""
        if not self._active or self._cancel is None:
            raise ValueError("nothing is running")
        self._cancel.set()
        self.status.value = f"{self.what}: cancelling after the request(s) in flight…"

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the background run; True when none is running any more."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self._active

    def summary(self, result: pd.DataFrame, kind: str, where: str) -> tuple[str, str]:
        """("ok"|"error", text) for a result table: statuses counted in the panel's words (an undo's requests
        read "reverted"), what to do after a cancel."""
        words = _WORDS.get(kind, {})
        counts = result["status"].value_counts() if "status" in result.columns else pd.Series(dtype="int64")
        counts = counts.reindex(sorted(counts.index, key=lambda s: _ORDER.get(str(s), len(_ORDER))))
        text = ", ".join(f"{n} {words.get(str(s), s)}" for s, n in counts.items()) or "nothing to do"
        cancelled = "cancelled" in counts.index
        self.bar.bar_style = "warning" if cancelled else "success" if set(counts.index) <= _GOOD else "danger"
        if cancelled:
            again = "resume apply" if kind == "apply" else "undo last apply"
            self.status.value = "cancelled"
            return "error", f"cancelled: {text} ({where}; journaled: click '{again}' to continue)"
        self.status.value = "done" if kind == "apply" else "reverted"
        return ("ok" if set(counts.index) <= _GOOD else "error"), f"{text} ({where})"
