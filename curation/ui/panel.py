"""An ipywidgets curation panel over a Snapshot: select rows, edit an attribute, review, apply, undo.

``CurationPanel(snapshot, client, journal)`` shows, top to bottom: a filter builder (attribute, operator,
value; rows combined with AND; a row without a value is ignored until it has one), the number of matching
instances and a preview of their attributes (edited cells highlighted), an edit form (set a value, set it
empty (NULL), or remove the attribute on the matching rows; VR and level shown, values checked against the
VR), the resulting ChangeSet and UpdatePlan, Apply / Cancel / Undo buttons with a progress bar fed by the
apply itself (``on_progress``), and the result.

Apply and undo run in a background thread when clicked, so the kernel stays free (run other cells meanwhile);
Cancel stops the run between requests (``curation.apply(..., cancel=...)``): the journal records it and
Apply, now "resume", continues it. ``apply()`` and ``undo()`` called from code run in the caller's thread
and return the result table. Every other button calls a plain method too (``add_filter``, ``set_value``,
``changes``, ``plan``), so the panel is scriptable and testable without a browser. The state lives in a
``PanelState`` (``curation.ui.panelstate``); this module is the widget tree over it. Tables are rendered
inside elements of JupyterLab's ``jp-RenderedHTMLCommon`` class, so they keep JupyterLab's table styling.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import pandas as pd

from curation.frames.flattening import NULL
from curation.ui.display import frame_html, message_html
from curation.ui.filters import OPERATORS, UNARY_OPERATORS, Filter, filter_mask, parse_value
from curation.ui.panelstate import PanelState
from curation.ui.panelview import RunView, review_html

if TYPE_CHECKING:
    from curation.frames.snapshot import Snapshot

__all__ = ["OPERATORS", "CurationPanel", "Filter", "FilterRow", "filter_mask", "parse_value"]

_STYLED = "jp-RenderedHTMLCommon"  # JupyterLab's class for rendered HTML: its table styles apply inside


class FilterRow:
    """The widgets of one filter: attribute dropdown, operator dropdown, value text, remove button."""

    def __init__(
        self,
        columns: list[str],
        attribute: str | None,
        op: str,
        value: str,
        on_change: Callable[[], None],
        on_remove: Callable[[FilterRow], None],
    ) -> None:
        layout = widgets.Layout
        self.attribute = widgets.Dropdown(
            options=columns,
            value=attribute if attribute in columns else None,
            description="attribute",
            layout=layout(width="34%"),
        )
        self.op = widgets.Dropdown(options=OPERATORS, value=op, layout=layout(width="14%"))
        self.value = widgets.Text(value=value, placeholder="value", layout=layout(width="30%"))
        self.remove = widgets.Button(description="remove", icon="minus", layout=layout(width="12%"))
        self.box = widgets.HBox([self.attribute, self.op, self.value, self.remove])
        for widget, name in (
            (self.attribute, "attribute"),
            (self.op, "op"),
            (self.value, "value"),
            (self.remove, "remove"),
            (self.box, "row"),
        ):
            widget.add_class(f"ahi-filter-{name}")
        self.remove.on_click(lambda _button: on_remove(self))
        self._quiet = False
        for widget in (self.attribute, self.op, self.value):
            widget.observe(lambda _change: None if self._quiet else on_change(), names="value")
        self._sync_value_state()
        self.op.observe(lambda _change: self._sync_value_state(), names="value")

    def _sync_value_state(self) -> None:
        self.value.disabled = self.op.value in UNARY_OPERATORS

    @property
    def filter(self) -> Filter:
        """The condition these widgets express."""
        return Filter(self.attribute.value, self.op.value, self.value.value)

    def set_columns(self, columns: list[str]) -> None:
        """Change the attribute choices, keeping the current attribute."""
        current = self.attribute.value
        if current is not None and current not in columns:
            columns = [*columns, current]
        if list(self.attribute.options) == columns:
            return
        self._quiet = True
        try:
            self.attribute.options = columns
            self.attribute.value = current
        finally:
            self._quiet = False


class _FromState:
    """A panel attribute that is its state's (read, and written through)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, panel: Any, owner: type | None = None) -> Any:
        return self if panel is None else getattr(panel.state, self.name)

    def __set__(self, panel: Any, value: Any) -> None:
        setattr(panel.state, self.name, value)


class CurationPanel:
    """A curation panel over ``snapshot`` (see the module docstring). Display it in a notebook cell.

    - ``client``: a boto3 ``medical-imaging`` client (AWS or ``curation.local.client``) for apply and undo;
      without one the panel only reviews.
    - ``journal``: the directory for apply journals (one file per apply; created). Default: a new private
      temporary directory. Keep the journals: they are what undo and ``curation.revert`` read.
    - ``preview_rows``: how many matching rows the preview shows.
    - ``plan_options`` / ``apply_options``: keyword arguments for ``curation.plan`` (e.g.
      ``include_study_image_sets=True``) and for ``curation.apply``/``curation.revert`` (e.g. ``rate=5``;
      the default adapts to the account's UpdateImageSetMetadata quota).
    """

    snapshot = _FromState()
    client = _FromState()
    journals = _FromState()
    vrs = _FromState()
    last_changes = _FromState()
    last_plan = _FromState()
    last_result = _FromState()
    last_undo = _FromState()
    apply_options = _FromState()
    plan_options = _FromState()

    def __init__(
        self,
        snapshot: Snapshot,
        client: Any = None,
        journal: str | os.PathLike[str] | None = None,
        *,
        preview_rows: int = 10,
        plan_options: dict[str, Any] | None = None,
        apply_options: dict[str, Any] | None = None,
    ) -> None:
        self.state = PanelState(snapshot, client, journal, plan_options=plan_options, apply_options=apply_options)
        self.preview_rows = preview_rows
        self.messages: list[tuple[str, str]] = []
        self.filter_rows: list[FilterRow] = []
        self._build()
        self.run = RunView(self.progress, self.status, self._say)
        self.refresh()

    # --- selection -------------------------------------------------------------------------------------

    @property
    def edited(self) -> pd.DataFrame:
        """A copy of the panel's edited wide view."""
        return self.state.edited.copy()

    @property
    def filters(self) -> list[Filter]:
        """The current filters (all must hold; a row without a value is ignored)."""
        return [row.filter for row in self.filter_rows]

    def mask(self) -> pd.Series:
        """Rows matching every filter (all rows without filters)."""
        return self.state.mask(self.filters)

    def matching(self) -> pd.DataFrame:
        """The matching rows of the edited wide view (a copy)."""
        return self.state.edited[self.mask().to_numpy()].copy()

    @property
    def count(self) -> int:
        """How many rows (instances) match the filters."""
        return int(self.mask().sum())

    def add_filter(self, attribute: str | None = None, op: str = "==", value: str = "") -> FilterRow:
        """Add a filter row (also what the "add filter" button does, with no attribute yet); returns its widgets."""
        if op not in OPERATORS:
            raise ValueError(f"unknown operator {op!r}; use one of {', '.join(OPERATORS)}")
        if attribute is not None and attribute not in self.state.edited.columns:
            raise KeyError(f"no column {attribute!r} in the wide view")
        row = FilterRow(self.state.columns(), attribute, op, value, self.refresh_selection, self.remove_filter)
        self.filter_rows.append(row)
        self.filter_box.children = [r.box for r in self.filter_rows]
        self.refresh_selection()
        return row

    def remove_filter(self, row: FilterRow | int) -> None:
        """Remove a filter row (by its widgets or its position)."""
        if isinstance(row, int):
            row = self.filter_rows[row]
        self.filter_rows.remove(row)
        self.filter_box.children = [r.box for r in self.filter_rows]
        self.refresh_selection()

    def clear_filters(self) -> None:
        """Remove every filter."""
        self.filter_rows.clear()
        self.filter_box.children = []
        self.refresh_selection()

    # --- edits -----------------------------------------------------------------------------------------

    def describe(self, attribute: str) -> dict[str, Any]:
        """What the panel knows of an attribute: VR, VM, level, whether it is new or private."""
        return self.state.describe(attribute)

    def set_value(self, attribute: str, value: Any, vr: str | None = None) -> int:
        """Set ``attribute`` on every matching row; returns how many rows (``PanelState.set_value``)."""
        self._idle()
        count = self.state.set_value(attribute, value, vr, self.filters)
        self._on_edit()
        return count

    def clear_value(self, attribute: str) -> int:
        """Make ``attribute`` empty (NULL) on the matching rows."""
        return self.set_value(attribute, NULL)

    def remove_value(self, attribute: str) -> int:
        """Remove ``attribute`` from the matching rows."""
        return self.set_value(attribute, None)

    def reset(self) -> None:
        """Forget every edit (back to the snapshot's values)."""
        self._idle()
        self.state.reset()
        self._on_edit()

    def changes(self) -> Any:
        """The ChangeSet of the edits so far."""
        return self.state.changes()

    def plan(self, **options: Any) -> Any:
        """The UpdatePlan of the current ChangeSet (options override ``plan_options``)."""
        return self.state.plan(**options)

    # --- apply and undo --------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while an apply or undo started by a button runs in the background."""
        return self.run.running

    def _idle(self) -> None:
        if self.running:
            raise RuntimeError("an apply or undo is running: wait for it, or cancel it")

    def apply(self) -> pd.DataFrame:
        """Apply the current plan (or resume a cancelled one) in this thread; returns its result table."""
        self._idle()
        self.run.begin("applying")
        result = self.state.apply(on_progress=self.run.on_progress)
        self._applied(result)
        return result

    def undo(self) -> pd.DataFrame:
        """Revert the last apply not undone yet, in this thread; returns its result table."""
        self._idle()
        self.run.begin("reverting")
        result = self.state.undo(on_progress=self.run.on_progress)
        self._undone(result)
        return result

    def start_apply(self) -> None:
        """Apply in a background thread (what the Apply button does); ``wait`` for it, ``cancel`` it."""
        self._idle()
        self.run.start(
            "applying",
            lambda cancel: self.state.apply(on_progress=self.run.on_progress, cancel=cancel),
            self._applied,
            self._controls,
        )

    def start_undo(self) -> None:
        """Undo in a background thread (what the Undo button does)."""
        self._idle()
        self.run.start(
            "reverting",
            lambda cancel: self.state.undo(on_progress=self.run.on_progress, cancel=cancel),
            self._undone,
            self._controls,
        )

    def cancel(self) -> None:
        """Stop the background run between requests (what the Cancel button does); apply again resumes it."""
        self.run.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the background run to end; True when it has."""
        return self.run.wait(timeout)

    def _applied(self, result: pd.DataFrame) -> None:
        journal = self.state.pending.journal if self.state.pending else self.state.journals[-1]
        self.result_html.value = "<h5>Apply result</h5>" + frame_html(result, index=False)
        self._say(*self.run.summary(result, "apply", f"journal {journal}"))
        self.refresh()

    def _undone(self, result: pd.DataFrame) -> None:
        self.result_html.value = "<h5>Undo result</h5>" + frame_html(result, index=False)
        self._say(*self.run.summary(result, "undo", "the versions before the apply are the latest again"))
        self.refresh()

    # --- widgets ---------------------------------------------------------------------------------------

    def _build(self) -> None:
        layout = widgets.Layout
        self.filter_box = widgets.VBox([])
        self.add_filter_button = widgets.Button(description="add filter", icon="plus")
        self.add_filter_button.on_click(lambda _b: self._handle(lambda: self.add_filter()))
        self.count_label = widgets.HTML()
        self.preview = widgets.HTML()
        self.attribute = widgets.Combobox(
            options=self.state.editable_columns(),
            ensure_option=False,
            placeholder="attribute",
            description="attribute",
            layout=layout(width="40%"),
        )
        self.attribute_info = widgets.HTML()
        self.vr = widgets.Text(placeholder="VR (private tags)", description="VR", layout=layout(width="20%"))
        self.value = widgets.Text(
            placeholder="value (backslash between values)", description="value", layout=layout(width="60%")
        )
        self.set_button = widgets.Button(description="set", button_style="primary")
        self.null_button = widgets.Button(description="set empty (NULL)")
        self.remove_button = widgets.Button(description="remove", button_style="warning")
        self.reset_button = widgets.Button(description="reset edits")
        self.message = widgets.HTML()
        self.attribute.observe(lambda _c: self._show_attribute(), names="value")
        self.set_button.on_click(
            lambda _b: self._edit(lambda a: self.set_value(a, self.value.value, self.vr.value or None))
        )
        self.null_button.on_click(lambda _b: self._edit(lambda a: self.set_value(a, NULL, self.vr.value or None)))
        self.remove_button.on_click(lambda _b: self._edit(lambda a: self.set_value(a, None)))
        self.reset_button.on_click(lambda _b: self._handle(self.reset, "edits cleared"))
        self.changes_html = widgets.HTML()
        self.plan_html = widgets.HTML()
        self.apply_button = widgets.Button(description="apply", button_style="danger", disabled=True)
        self.cancel_button = widgets.Button(description="cancel", icon="stop", disabled=True)
        self.undo_button = widgets.Button(description="undo last apply", disabled=True)
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="")
        self.status = widgets.HTML()
        self.result_html = widgets.HTML()
        self.apply_button.on_click(lambda _b: self._handle(self.start_apply))
        self.cancel_button.on_click(lambda _b: self._handle(self.cancel))
        self.undo_button.on_click(lambda _b: self._handle(self.start_undo))
        self.widget = widgets.VBox(self._tree())
        self._classes()

    def _tree(self) -> list[widgets.Widget]:
        def heading(text: str) -> widgets.HTML:
            return widgets.HTML(f"<h4 style='margin:6px 0 2px'>{text}</h4>")

        return [
            heading("1. Select instances"),
            self.filter_box,
            self.add_filter_button,
            self.count_label,
            self.preview,
            heading("2. Edit the matching instances"),
            widgets.HBox([self.attribute, self.vr, self.attribute_info]),
            widgets.HBox([self.value]),
            widgets.HBox([self.set_button, self.null_button, self.remove_button, self.reset_button]),
            self.message,
            heading("3. Review"),
            self.changes_html,
            self.plan_html,
            heading("4. Apply"),
            widgets.HBox([self.apply_button, self.cancel_button, self.progress, self.status, self.undo_button]),
            self.result_html,
        ]

    def _classes(self) -> None:
        """CSS classes: JupyterLab's table styling on the tables, and names a browser test can find."""
        self.widget.add_class("ahi-curation-panel")
        for name in (
            "count_label",
            "preview",
            "attribute",
            "attribute_info",
            "vr",
            "value",
            "set_button",
            "null_button",
            "remove_button",
            "reset_button",
            "message",
            "changes_html",
            "plan_html",
            "apply_button",
            "cancel_button",
            "undo_button",
            "progress",
            "status",
            "result_html",
            "add_filter_button",
        ):
            getattr(self, name).add_class("ahi-" + name.replace("_", "-"))
        for name in ("preview", "changes_html", "plan_html", "result_html"):
            getattr(self, name).add_class(_STYLED)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _say(self, kind: str, text: str) -> None:
        self.messages.append((kind, text))
        self.message.value = message_html(kind, text)

    def _handle(self, action: Callable[[], Any], success: str | None = None) -> Any:
        """Run a button's action; show its error instead of raising (a widget callback has no caller)."""
        try:
            result = action()
        except Exception as exc:
            self._say(
                "error",
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError | KeyError) else str(exc).strip("'\""),
            )
            return None
        if success:
            self._say("ok", success)
        return result

    def _edit(self, action: Callable[[str], int]) -> None:
        attribute = (self.attribute.value or "").strip()
        count = self._handle(lambda: action(attribute))
        if count is not None:
            self._say("ok", f"{attribute}: edited on {count} row(s)")

    def _show_attribute(self) -> None:
        attribute = (self.attribute.value or "").strip()
        if not attribute:
            self.attribute_info.value = ""
            return
        info = self.describe(attribute)
        parts = [f"VR <b>{info['VR'] or '?'}</b>", f"VM {info['VM'] or '?'}", f"level {info['level'] or '?'}"]
        if info["new"]:
            parts.append("new attribute")
        if info["private"] and not info["VR"]:
            parts.append("private tag: give its VR")
        self.attribute_info.value = " · ".join(parts)
        self.vr.disabled = bool(info["VR"]) and not info["private"]

    def _set_columns(self) -> None:
        self.attribute.options = self.state.editable_columns()
        columns = self.state.columns()
        for row in self.filter_rows:
            row.set_columns(columns)

    def _on_edit(self) -> None:
        self._set_columns()
        self.refresh()

    def refresh(self) -> None:
        """Recompute the selection, the review (ChangeSet, plan) and the buttons' states."""
        self._set_columns()
        self.refresh_selection()
        self.refresh_review()

    def refresh_selection(self) -> None:
        """Update the count and the preview of the matching rows."""
        mask = self.mask()
        index = self.state.edited.index[mask.to_numpy()]
        count = len(index)
        image_sets = index.get_level_values(0).nunique() if count else 0
        series = len(set(zip(index.get_level_values(0), index.get_level_values(1), strict=True))) if count else 0
        ignored = sum(not f.complete for f in self.filters)
        note = f"; {ignored} filter(s) without a value ignored" if ignored else ""
        self.count_label.value = (
            f"<b>{count}</b> of {len(self.state.edited)} instances match "
            f"({image_sets} image set(s), {series} series{note})"
        )
        if not count:
            self.preview.value = "<i>no rows</i>"
            return
        shown, changed = self.state.preview(self.filters, self.preview_rows)
        more = f" (first {len(shown)} of {count})" if count > len(shown) else ""
        self.preview.value = frame_html(
            shown, index=False, highlight=changed, caption=f"matching instances{more}; edited cells highlighted"
        )

    def refresh_review(self) -> None:
        """Recompute the ChangeSet and the plan and show them; enable apply when there is a valid plan."""
        state = self.state
        self.changes_html.value, self.plan_html.value, ready = review_html(state)
        self._controls(ready=ready)

    def _controls(self, ready: bool | None = None) -> None:
        """Enable the buttons that make sense now (all but Cancel are off while a run is in the background)."""
        state, running = self.state, self.running
        if ready is None:
            ready = state.last_plan is not None and bool(len(state.last_plan)) and state.last_changes is not None
        can_run = state.client is not None and not running
        self.apply_button.description = "resume apply" if state.pending else "apply"
        self.apply_button.disabled = not (can_run and (ready or state.pending is not None))
        self.undo_button.disabled = not (can_run and state.journals)
        self.cancel_button.disabled = not running
        for button in (self.set_button, self.null_button, self.remove_button, self.reset_button):
            button.disabled = running
