"""CurationPanel: the selection and preview a person sees, and apply / cancel / resume / undo run in the
background against the embedded service (a real boto3 client; the Gate holds requests, nothing sleeps)."""

from __future__ import annotations

import re

import pytest
from gating import Gate

from curation.run.journal import read_journal
from curation.ui.panel import CurationPanel


def test_an_added_filter_without_a_value_is_ignored(snapshot):
    panel = CurationPanel(snapshot)
    panel.add_filter_button.click()
    row = panel.filter_rows[-1]
    assert row.attribute.value is None
    assert panel.count == 598 and "1 filter(s) without a value ignored" in panel.count_label.value
    row.attribute.value = "Modality"  # still no value: "==" needs one
    assert panel.count == 598
    row.value.value = "US"
    assert panel.count == 9 and "ignored" not in panel.count_label.value
    row.value.value = "  "
    assert panel.count == 598
    row.op.value = "is missing"  # an operator without a value filters at once
    assert panel.count == 0


def test_the_preview_shows_attributes_not_the_uid_index(snapshot):
    panel = CurationPanel(snapshot, preview_rows=3)
    panel.add_filter("Modality", "==", "US")
    page = panel.preview.value
    for column in ("Modality", "StudyDescription", "SeriesNumber", "InstanceNumber"):
        assert f">{column}</th>" in page, column
    ids = snapshot.wide.index[snapshot.wide["Modality"] == "US"][0]
    assert all(uid not in page for uid in ids)  # ImageSetID, SeriesInstanceUID, SOPInstanceUID: not shown
    assert "first 3 of 9" in page
    assert "jp-RenderedHTMLCommon" in panel.preview._dom_classes  # JupyterLab's table styles apply
    panel.set_value("StudyDescription", "Echo")
    page = panel.preview.value
    assert page.index(">StudyDescription</th>") < page.index(">SeriesNumber</th>")  # edited columns first
    styled = re.search(r"([^{}]*)\{\s*background-color: #fff3bf", page)  # the edited cells are highlighted
    assert styled is not None and styled.group(1).count("_col") == 3


def test_apply_runs_in_the_background_cancel_stops_it_and_resume_finishes_it(live, tmp_path):
    client, snapshot, _ = live
    gate = Gate(client)
    panel = CurationPanel(snapshot, client, tmp_path, apply_options={"rate": None, "poll": 0.01, "max_workers": 1})
    panel.set_value("StudyDescription", "Curated")  # every row: three image sets, three requests
    assert len(panel.last_plan) == 3

    panel.apply_button.click()
    gate.arrived()  # the first request is held: the apply is running, and this thread is free
    assert panel.running and panel.apply_button.disabled and panel.set_button.disabled
    assert not panel.cancel_button.disabled
    assert panel.count == 598  # the kernel answers meanwhile
    with pytest.raises(RuntimeError, match="running"):
        panel.set_value("StudyDescription", "other")
    panel.cancel_button.click()
    assert "cancelling" in panel.status.value
    gate.open()  # the request in flight finishes; nothing more is sent
    assert panel.wait()
    result = panel.last_result
    assert sorted(result["status"]) == ["applied", "cancelled", "cancelled"]
    journal = panel.journals[-1]
    stops = [r for r in read_journal(journal) if r.get("kind") == "stop"]
    assert [r["reason"] for r in stops] == ["cancelled"]
    assert "cancelled: 1 applied, 2 cancelled" in panel.message.value and "resume apply" in panel.message.value
    assert panel.apply_button.description == "resume apply" and not panel.apply_button.disabled
    assert panel.progress.value == 3 and panel.progress.max == 3  # every request accounted for
    assert gate.held == 1

    gate.open(2)
    panel.apply_button.click()  # resume: the same plan and journal
    assert panel.wait()
    assert panel.last_result["status"].tolist() == ["applied"] * 3
    assert panel.journals == [journal] and panel.state.pending is None
    assert gate.held == 1 and set(panel.snapshot.version_ids.values()) == {"2"}  # each request sent once
    assert set(panel.snapshot.studies["StudyDescription"]) == {"Curated"}
    assert panel.apply_button.description == "apply" and panel.apply_button.disabled  # nothing left to apply

    gate.open(3)
    panel.undo_button.click()
    assert panel.wait()
    assert "3 reverted" in panel.message.value
    assert set(panel.snapshot.version_ids.values()) == {"3"}
    assert "Curated" not in set(panel.snapshot.studies["StudyDescription"])


def test_an_undo_of_a_cancelled_apply_reverts_what_it_did(live, tmp_path):
    client, snapshot, _ = live
    gate = Gate(client)
    panel = CurationPanel(snapshot, client, tmp_path, apply_options={"rate": None, "poll": 0.01, "max_workers": 1})
    panel.set_value("StudyDescription", "Curated")
    panel.start_apply()
    gate.arrived()
    panel.cancel()
    gate.open(10)
    assert panel.wait() and panel.state.pending is not None
    panel.start_undo()
    assert panel.wait()
    assert panel.last_undo["status"].tolist() == ["applied"]  # the one image set the apply changed
    assert "1 reverted" in panel.message.value
    assert panel.state.pending is None and panel.apply_button.description == "apply"
    assert set(panel.snapshot.studies["StudyDescription"]) == set(snapshot.studies["StudyDescription"])
