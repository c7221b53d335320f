"""Notebook 06 in JupyterLab, in headless Chromium, as a person uses it: run every cell, then click the fresh
panel of section 5 through select, set, review, apply and undo, and read what the page shows; then apply an
edit of two image sets while the first request is held, run a cell meanwhile (the kernel answers), cancel,
release it, and resume. Screenshots of each step are kept (fixture ``artifacts``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

NOTEBOOK = "06-interactive-curation-panel.ipynb"
#: Typed into a new cell: hold every UpdateImageSetMetadata of the notebook's client until released, one
#: image set at a time (so a cancel has something left to stop).
GATE = """\
import threading
held, release = threading.Event(), threading.Semaphore(0)
def hold(**_):
    held.set()
    release.acquire()
client.meta.events.register("before-call.medical-imaging.UpdateImageSetMetadata", hold)
yours.apply_options = {"max_workers": 1}
print("gate ready")"""
#: Typed into a new cell at the end: what the datastore holds now, nothing pending, and the resumed apply's
#: journal recording the cancel.
CHECK = """\
from curation.run.journal import read_journal
stops = [r["reason"] for r in read_journal(yours.journals[-1]) if r.get("kind") == "stop"]
print(sorted(yours.snapshot.studies["StudyDescription"]), yours.state.pending, stops)"""


class _Shots:
    """Numbered screenshots of one element, kept as test artifacts."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(self, target: Any, name: str) -> None:
        target.screenshot(path=str(self.directory / f"06-{name}.png"))


def _column(table: Any, name: str) -> list[str]:
    """The texts of one column of the HTML table in ``table``, as the page lays it out."""
    script = """(root, name) => {
        const head = [...root.querySelectorAll('thead tr:last-child > *')].map(c => c.innerText.trim());
        const at = head.indexOf(name);
        return [...root.querySelectorAll('tbody tr')].map(r => r.children[at].innerText.trim());
    }"""
    return list(table.evaluate(script, name))


def _run_all(page: Any) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Run All Cells$")).click()


def _dismiss_news(page: Any) -> None:
    """JupyterLab asks once whether to fetch its news: answer No (the toast would cover the panel)."""
    no = page.locator(".jp-toast-button", has_text=re.compile("^No$"))
    if no.count():
        no.first.click()


def _run_cell(page: Any, code: str) -> Any:
    """Add a code cell at the end of the notebook, type ``code``, run it; return the cell."""
    cells = page.locator(".jp-Notebook .jp-Cell")
    before = cells.count()
    cells.last.locator(".jp-InputPrompt").click()  # select the last cell (command mode)
    page.keyboard.press("Escape")
    page.keyboard.press("b")  # insert a cell below
    cells.nth(before).wait_for()
    page.keyboard.press("Enter")  # edit it
    page.keyboard.insert_text(code)  # as pasted: no auto-indent, no auto-closed brackets
    page.keyboard.press("Shift+Enter")
    return cells.nth(before)


class PanelSteps:
    """Section 5's panel of notebook 06 in the page, and the steps a person takes with it."""

    def __init__(self, page: Any, expect: Any, shots: _Shots) -> None:
        self.page, self.expect, self.shot = page, expect, shots
        panels = page.locator(".jupyter-widgets.ahi-curation-panel")
        self.panels = panels
        self.yours = panels.last
        self.count = self.yours.locator(".jupyter-widgets.ahi-count-label")
        self.preview = self.yours.locator(".jupyter-widgets.ahi-preview")
        self.message = self.yours.locator(".jupyter-widgets.ahi-message")
        self.row = self.yours.locator(".jupyter-widgets.ahi-filter-row")
        self.apply_button = self.yours.locator(".jupyter-widgets.ahi-apply-button")

    def open(self, url: str) -> None:
        """Open the notebook, run all its cells, wait for the fresh panel; no cell may fail."""
        self.page.goto(url)
        self.page.locator(".jp-Notebook .jp-Cell").first.wait_for()
        idle = self.page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle")).first
        idle.wait_for(timeout=120_000)  # the kernel is up: Run All would otherwise be lost
        _dismiss_news(self.page)
        _run_all(self.page)
        self.expect(self.panels).to_have_count(2, timeout=180_000)  # section 1's panel and section 5's fresh one
        self.expect(self.count).to_contain_text("10 of 10 instances match")
        self.page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for()
        failed = self.page.locator("[data-mime-type='application/vnd.jupyter.error']")
        self.expect(failed).to_have_count(0)  # no cell raised
        stderr = self.page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        self.expect(stderr).to_have_count(0)
        _dismiss_news(self.page)
        self.yours.scroll_into_view_if_needed()
        self.shot(self.yours, "0-fresh-panel")

    def select(self) -> None:
        """Add a filter (ignored while it has no value), then Modality == US: nine rows."""
        # 1. Select: an added filter without a value is ignored; Modality == US matches the nine US instances.
        self.yours.locator(".jupyter-widgets.ahi-add-filter-button").click()
        self.expect(self.row).to_have_count(1)
        self.expect(self.count).to_contain_text("10 of 10")
        self.expect(self.count).to_contain_text("ignored")
        self.row.locator(".jupyter-widgets.ahi-filter-attribute select").select_option("Modality")
        self.row.locator(".jupyter-widgets.ahi-filter-value input").fill("US")
        self.expect(self.count).to_contain_text("9 of 10 instances match")
        headers = self.preview.locator("th").all_inner_texts()
        assert {"Modality", "StudyDescription", "InstanceNumber"} <= set(headers), headers
        assert not any(re.fullmatch(r"[0-9a-f]{32}|[0-9.]{20,}", h) for h in headers)  # attributes, not the UID index
        self.expect(self.preview.locator("tbody tr")).to_have_count(9)
        assert set(_column(self.preview, "Modality")) == {"US"}
        rows = self.preview.locator("tbody tr")
        stripes = {rows.nth(n).evaluate("r => getComputedStyle(r).backgroundColor") for n in (0, 1)}
        assert len(stripes) == 2, stripes  # JupyterLab's table styling (striped rows) applies inside the widget
        self.shot(self.yours, "1-selected")

    def set_and_review(self) -> None:
        """Set StudyDescription on the nine rows; the review shows one change and a plan."""
        # 2. Set: the attribute's VR and level appear; set writes the value on the nine rows, highlighted.
        self.yours.locator(".jupyter-widgets.ahi-attribute input").fill("StudyDescription")
        info = self.yours.locator(".jupyter-widgets.ahi-attribute-info")
        self.expect(info).to_contain_text("LO")
        self.expect(info).to_contain_text("Study")
        self.yours.locator(".jupyter-widgets.ahi-value input").fill("US Doppler (curated)")
        self.yours.locator(".jupyter-widgets.ahi-set-button").click()
        self.expect(self.message).to_contain_text("StudyDescription: edited on 9 row(s)")
        assert _column(self.preview, "StudyDescription") == ["US Doppler (curated)"] * 9
        edited = self.preview.locator("td", has_text="US Doppler (curated)").first
        assert edited.evaluate("c => getComputedStyle(c).backgroundColor") == "rgb(255, 243, 191)"  # highlighted
        self.shot(self.yours, "2-set")

        # 3. Review: one Study-level change, old and new value, and a plan apply can send.
        changes = self.yours.locator(".jupyter-widgets.ahi-changes-html")
        self.expect(changes).to_contain_text("US Doppler (curated)")
        self.expect(changes).to_contain_text("US Dopler")  # the old value
        self.expect(self.yours.locator(".jupyter-widgets.ahi-plan-html")).to_contain_text("request")
        self.expect(self.apply_button).to_be_enabled()
        self.shot(self.yours, "3-review")

    def apply_and_undo(self) -> None:
        """Apply in the background, then undo: reported as applied, then as reverted."""
        # 4. Apply, in the background; the panel reloads from the datastore (edits cleared, filter kept).
        self.apply_button.click()
        self.expect(self.message).to_contain_text("1 applied", timeout=120_000)
        self.expect(self.yours.locator(".jupyter-widgets.ahi-result-html")).to_contain_text("applied")
        self.expect(self.yours.locator(".jupyter-widgets.ahi-status")).to_contain_text("done")
        self.expect(self.count).to_contain_text("9 of 10 instances match")
        assert _column(self.preview, "StudyDescription") == ["US Doppler (curated)"] * 9  # now from the datastore
        self.shot(self.yours, "4-applied")

        # 5. Undo: reported as reverted; the old description is back.
        undo_button = self.yours.locator(".jupyter-widgets.ahi-undo-button")
        self.expect(undo_button).to_be_enabled()
        undo_button.click()
        self.expect(self.message).to_contain_text("1 reverted", timeout=120_000)
        self.expect(self.preview.locator("td", has_text="curated")).to_have_count(0)
        assert _column(self.preview, "StudyDescription") == ["US Dopler"] * 9
        self.shot(self.yours, "5-undone")

    def cancel_and_resume(self) -> None:
        """Hold the first of two requests, run a cell meanwhile, cancel, release, resume."""
        # The kernel answers during an apply, and cancel stops it cleanly: two image sets, the first request held.
        self.row.locator(".jupyter-widgets.ahi-filter-remove").click()
        self.expect(self.count).to_contain_text("10 of 10 instances match")
        self.yours.locator(".jupyter-widgets.ahi-attribute input").fill("StudyDescription")
        self.yours.locator(".jupyter-widgets.ahi-value input").fill("both studies")
        self.yours.locator(".jupyter-widgets.ahi-set-button").click()
        self.expect(self.message).to_contain_text("edited on 10 row(s)")
        gate = _run_cell(self.page, GATE)
        self.expect(gate.locator(".jp-OutputArea-output")).to_contain_text("gate ready")
        self.apply_button.click()
        answer = _run_cell(self.page, 'print("kernel answers:", held.wait(60), yours.running, yours.count)')
        self.expect(answer.locator(".jp-OutputArea-output")).to_contain_text("kernel answers: True True 10")
        cancel_button = self.yours.locator(".jupyter-widgets.ahi-cancel-button")
        self.expect(cancel_button).to_be_enabled()
        self.expect(self.apply_button).to_be_disabled()
        cancel_button.click()
        self.expect(self.yours.locator(".jupyter-widgets.ahi-status")).to_contain_text("cancelling")
        self.shot(self.yours, "6-cancelling")
        _run_cell(self.page, "release.release()")  # the request in flight finishes; nothing more is sent
        self.expect(self.message).to_contain_text("cancelled: 1 applied, 1 cancelled", timeout=120_000)
        self.expect(self.message).to_contain_text("journaled")
        self.expect(self.apply_button).to_have_text("resume apply")
        self.shot(self.yours, "7-cancelled")

        done = _run_cell(self.page, "release.release()\nprint('released')")  # a permit for the resumed request
        self.expect(done.locator(".jp-OutputArea-output")).to_contain_text("released")
        self.apply_button.click()
        self.expect(self.message).to_contain_text("applied", timeout=120_000)
        self.expect(self.message).not_to_contain_text("cancelled")
        self.expect(self.preview.locator("td", has_text="both studies")).to_have_count(10)
        assert _column(self.preview, "StudyDescription") == ["both studies"] * 10
        check = _run_cell(self.page, CHECK)
        self.expect(check.locator(".jp-OutputArea-output")).to_contain_text(
            "['both studies', 'both studies'] None ['cancelled']"
        )
        self.shot(self.yours, "8-resumed")


def test_the_panel_of_notebook_06_clicked_through_in_jupyterlab(
    page: Any, lab: Any, playwright_api: Any, artifacts: Path
) -> None:
    steps = PanelSteps(page, playwright_api.expect, _Shots(artifacts))
    steps.open(lab.notebook_url(NOTEBOOK))
    steps.select()
    steps.set_and_review()
    steps.apply_and_undo()
    steps.cancel_and_resume()
