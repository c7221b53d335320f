"""curation.ui.panel.CurationPanel driven through its widgets (values set, buttons clicked), no browser.

The review/apply tests run the real diff, plan and apply against the embedded service with the reference
documents imported (fixtures in tests/ui/conftest.py).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from curation.frames.cells import is_remove
from curation.ui.panel import OPERATORS, CurationPanel, filter_mask, parse_value


def _metadata(client, datastore_id: str, image_set_id: str) -> dict:
    from curation.model.document import parse_document

    blob = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)["imageSetMetadataBlob"]
    return parse_document(blob.read())


def _filter(panel: CurationPanel, attribute: str, op: str, value: str = ""):
    """Add a filter the way a person does: click "add filter", then set the row's widgets."""
    panel.add_filter_button.click()
    row = panel.filter_rows[-1]
    row.attribute.value = attribute
    row.op.value = op
    row.value.value = value
    return row


def _same(left: pd.DataFrame, right: pd.DataFrame, columns: list[str]) -> None:
    for column in columns:
        assert left[column].tolist() == right[column].tolist(), column


def _edit(panel: CurationPanel, attribute: str, value: str = "", vr: str = "", button: str = "set_button"):
    panel.attribute.value = attribute
    panel.vr.value = vr
    panel.value.value = value
    getattr(panel, button).click()


# --- selection -----------------------------------------------------------------------------------------


def test_filters_set_through_widgets_drive_count_and_preview(snapshot):
    panel = CurationPanel(snapshot, preview_rows=5)
    assert panel.count == 598
    assert "<b>598</b> of 598" in panel.count_label.value

    row = _filter(panel, "Modality", "==", "US")
    assert panel.count == 9
    assert "<b>9</b> of 598" in panel.count_label.value and "1 image set(s), 1 series" in panel.count_label.value
    assert panel.preview.value.count("<tr>") == 1 + 5  # header + preview_rows
    assert "Modality" in panel.preview.value

    _filter(panel, "InstanceNumber", "<", "5")
    us = snapshot.wide[snapshot.wide["Modality"] == "US"]
    expected = sum(int(n) < 5 for n in us["InstanceNumber"])
    assert panel.count == expected < 9
    assert panel.filters[1].attribute == "InstanceNumber"

    panel.filter_rows[1].remove.click()
    assert len(panel.filter_rows) == 1 and panel.count == 9
    row.op.value = "!="
    assert panel.count == 598 - 9
    row.op.value = "is missing"
    assert row.value.disabled
    assert panel.count == 0
    panel.clear_filters()
    assert panel.count == 598


def test_filter_operators_on_cells(snapshot):
    wide = snapshot.wide
    assert filter_mask(wide, "Modality", "==", "CT").sum() == 589
    assert filter_mask(wide, "Modality", "!=", "CT").sum() == 9
    assert filter_mask(wide, "StudyDescription", "contains", "Liver").sum() == 588
    assert filter_mask(wide, "StudyDescription", "contains", "liver").sum() == 0  # case-sensitive
    assert filter_mask(wide, "StudyDescription", "startswith", "US").sum() == 9
    assert filter_mask(wide, "Rows", "==", "480").sum() == 8  # an integer cell matches its text
    assert filter_mask(wide, "Rows", "==", "480.0").sum() == 8  # and numerically
    assert filter_mask(wide, "WindowWidth", "==", "0").sum() == 1  # ["0 "]: padding stripped
    assert filter_mask(wide, "Rows", ">", "500").sum() == 588 + 1
    assert filter_mask(wide, "ImageType", "==", "ORIGINAL\\PRIMARY\\AXIAL").sum() == 588  # arrays as DICOM text
    assert filter_mask(wide, "StudyDate", "<", "20200101").sum() == 9 + 1  # DA dates compare as text
    # NULL (present, null) and missing (absent) are different things
    assert filter_mask(wide, "PatientID", "is NULL").sum() == 9
    assert filter_mask(wide, "PatientID", "is missing").sum() == 0
    assert filter_mask(wide, "WindowWidth", "is missing").sum() == 1 + 9  # one real CT slice has none
    assert filter_mask(wide, "PatientID", "==", "").sum() == 0  # NULL equals nothing
    assert filter_mask(wide, "NoSuchColumn", "is missing").all()
    assert not filter_mask(wide, "NoSuchColumn", "==", "x").any()
    with pytest.raises(ValueError):
        filter_mask(wide, "Modality", "~", "CT")
    assert set(OPERATORS) == {"==", "!=", "contains", "startswith", "is missing", "is NULL", "<", ">"}


def test_programmatic_filters_check_their_arguments(snapshot):
    panel = CurationPanel(snapshot)
    with pytest.raises(KeyError):
        panel.add_filter("NoSuchColumn", "==", "x")
    with pytest.raises(ValueError):
        panel.add_filter("Modality", "like", "x")
    panel.add_filter("Modality", "==", "CT")
    panel.add_filter("SliceThickness", "==", "1")
    assert panel.count == 588
    assert panel.mask().sum() == 588
    panel.remove_filter(0)
    assert panel.count == 588


# --- editing -------------------------------------------------------------------------------------------


def test_set_null_and_remove_edit_only_the_panels_copy(snapshot):
    before = snapshot.wide
    panel = CurationPanel(snapshot)
    _filter(panel, "Modality", "==", "US")
    _edit(panel, "StudyDescription", "Echo study")
    assert "edited on 9 row(s)" in panel.message.value
    edited = panel.edited
    assert (edited["StudyDescription"] == "Echo study").sum() == 9
    pd.testing.assert_series_equal(
        edited.loc[edited["Modality"] != "US", "StudyDescription"],
        before.loc[before["Modality"] != "US", "StudyDescription"],
    )
    _same(snapshot.wide, before, ["StudyDescription"])  # the snapshot is untouched
    assert "StudyDescription" in panel.preview.value and "Echo study" in panel.preview.value

    _edit(panel, "PatientSize", button="null_button")
    assert all(v == "" for v in panel.edited.loc[edited["Modality"] == "US", "PatientSize"])  # DS: a str column
    _edit(panel, "HeartRate", button="remove_button")
    assert all(is_remove(v) for v in panel.edited.loc[edited["Modality"] == "US", "HeartRate"])
    assert snapshot.wide["HeartRate"].notna().sum() == 9

    # a new attribute: a column created for the matching rows only
    _edit(panel, "ImageComments", "checked")
    assert panel.edited["ImageComments"].notna().sum() == 9
    assert "ImageComments" in panel.filter_rows[0].attribute.options  # new columns become filterable
    assert "ImageComments" in panel.attribute.options
    assert "@ChecksumType" in panel.filter_rows[0].attribute.options  # filter on anything, edit DICOM only
    assert "@ChecksumType" not in panel.attribute.options
    assert panel.filter_rows[0].attribute.value == "Modality"  # and the filter is kept

    panel.reset_button.click()
    _same(panel.edited, before, ["StudyDescription", "PatientSize", "HeartRate"])
    assert list(panel.edited.columns) == list(before.columns)


def test_values_are_converted_by_vr_and_invalid_ones_refused(snapshot):
    panel = CurationPanel(snapshot)
    _filter(panel, "Modality", "==", "US")
    _edit(panel, "Rows", "512")
    assert set(panel.edited.loc[panel.mask(), "Rows"]) == {512}  # US: an integer, not the text
    _edit(panel, "ImageType", "DERIVED\\SECONDARY")
    assert panel.edited.loc[panel.mask(), "ImageType"].iloc[0] == "DERIVED\\SECONDARY"  # joined, as the column

    edited = panel.edited
    for attribute, value, reason in [
        ("Rows", "abc", "integers"),
        ("Rows", "70000", "US"),  # out of range for an unsigned short
        ("StudyDate", "2020-13-45", "DA"),
        ("NotAKeyword", "x", "neither a DICOM keyword"),
        ("00100010", "x", "use the keyword"),
        ("00091001", "x", "give its VR"),
        ("@ChecksumType", "x", "not a DICOM attribute"),
    ]:
        _edit(panel, attribute, value)
        assert "color:#b00020" in panel.message.value, attribute
        assert reason in panel.message.value, (attribute, panel.message.value)
    _same(panel.edited, edited, ["Rows", "StudyDate"])  # nothing was changed by refused edits
    assert list(panel.edited.columns) == list(edited.columns)
    with pytest.raises(ValueError, match="integers"):
        panel.set_value("Rows", "abc")

    _filter(panel, "Modality", "==", "MR")
    _edit(panel, "StudyDescription", "x")
    assert "no rows match" in panel.message.value


def test_vr_and_level_shown_and_private_tags_take_a_vr(snapshot):
    panel = CurationPanel(snapshot)
    panel.attribute.value = "BodyPartExamined"
    assert "CS" in panel.attribute_info.value and "Series" in panel.attribute_info.value
    assert panel.vr.disabled
    panel.attribute.value = "7FDF1001"  # private, VR from the documents' DICOMVRs
    assert "UN" in panel.attribute_info.value and "Instance" in panel.attribute_info.value
    panel.attribute.value = "00191001"
    assert "give its VR" in panel.attribute_info.value and "new attribute" in panel.attribute_info.value
    assert not panel.vr.disabled

    _filter(panel, "Modality", "==", "US")
    _edit(panel, "00191001", "97", vr="DS")
    assert "edited on 9 row(s)" in panel.message.value
    assert panel.vrs == {"00191001": "DS"}
    assert set(panel.edited.loc[panel.mask(), "00191001"]) == {"97"}
    _edit(panel, "00191002", "x", vr="ZZ")
    assert "is not a VR" in panel.message.value
    _edit(panel, "StudyDescription", "x", vr="DS")
    assert "has VR LO" in panel.message.value


def test_parse_value():
    assert parse_value("512", "US", "1") == 512
    assert parse_value("1\\2", "US", "1-n") == [1, 2]
    assert parse_value("0.5", "FD", "1") == 0.5
    assert parse_value("1\\2\\3", "DS", "3") == ["1", "2", "3"]
    assert parse_value("CHEST", "CS", "1") == "CHEST"
    assert parse_value('[{"CodeValue": "1"}]', "SQ", "1") == [{"CodeValue": "1"}]
    assert parse_value(7, "US", "1") == 7
    with pytest.raises(ValueError):
        parse_value("[1", "SQ", "1")
    with pytest.raises(ValueError):
        parse_value("x", "US or SS", "1")


def test_without_a_client_the_panel_reviews_but_cannot_apply(snapshot):
    panel = CurationPanel(snapshot)
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # displays as its widget
    assert panel.widget.model_id == bundle["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert panel.apply_button.disabled and panel.undo_button.disabled
    with pytest.raises(RuntimeError):
        panel.apply()
    with pytest.raises(ValueError):
        panel.undo()
    panel.undo_button.disabled = False
    panel.undo_button.click()
    assert "nothing to undo" in panel.message.value


# --- review, apply, undo (need curation.curate.differ, plan and apply) ---------------------------------------------


def test_changes_and_plan_follow_the_edits(live):
    pytest.importorskip("curation.curate.differ")
    client, snapshot, names = live
    ct = names["ct-588-instances"]
    panel = CurationPanel(snapshot, client)
    assert "no edits" in panel.changes_html.value
    _filter(panel, "StudyDescription", "==", "CT Liver")
    _edit(panel, "StudyDescription", "CT Liver (curated)")
    changes = panel.last_changes
    rows = changes.changes
    assert len(rows) == 1
    row = rows.iloc[0]
    assert (row["ImageSetID"], row["attribute"], row["op"], row["new"], row["level"]) == (
        ct,
        "StudyDescription",
        "update",
        "CT Liver (curated)",
        "Study",
    )
    assert row["old"] == "CT Liver"
    assert "CT Liver (curated)" in panel.changes_html.value

    plan = panel.last_plan
    assert len(plan) == 1
    request = plan.requests[0]
    assert request.image_set_id == ct
    payload = json.loads(request.params["updateImageSetMetadataUpdates"]["DICOMUpdates"]["updatableAttributes"])
    assert payload["Study"]["DICOM"] == {"StudyDescription": "CT Liver (curated)"}
    assert ct in panel.plan_html.value
    assert not panel.apply_button.disabled

    # a new instance-level attribute on some instances: one change per instance, still one request
    _filter(panel, "InstanceNumber", "<", "4")
    _edit(panel, "ImageComments", "checked")
    rows = panel.last_changes.changes
    added = rows[rows["attribute"] == "ImageComments"]
    assert len(added) == 3 and set(added["level"]) == {"Instance"} and set(added["op"]) == {"add"}
    assert set(added["new"]) == {"checked"}
    assert len(panel.last_plan) == 1
    payload = json.loads(
        panel.last_plan.requests[0].params["updateImageSetMetadataUpdates"]["DICOMUpdates"]["updatableAttributes"]
    )
    (series,) = payload["Study"]["Series"].values()
    assert len(series["Instances"]) == 3

    # a multi-valued attribute needs force, which a primary image set refuses: shown, not planned
    _edit(panel, "WindowCenter", "40")
    assert not panel.last_changes.ok or panel.last_plan is None
    review = panel.changes_html.value + panel.plan_html.value
    assert "color:#b00020" in review and "force" in review
    assert panel.apply_button.disabled

    # writing back the original value is no change
    panel.reset_button.click()
    assert "no edits" in panel.changes_html.value and panel.apply_button.disabled


def test_a_partial_series_edit_or_a_refused_plan_is_shown_not_applied(live):
    pytest.importorskip("curation.curate.differ")
    client, snapshot, _ = live
    panel = CurationPanel(snapshot, client)
    _filter(panel, "Modality", "==", "CT")
    _filter(panel, "InstanceNumber", "<", "3")
    _edit(panel, "BodyPartExamined", "LIVER")  # Series level, only some instances of the series
    assert not panel.last_changes.ok
    assert "BodyPartExamined" in panel.changes_html.value
    assert "fix the problems" in panel.plan_html.value
    assert panel.last_plan is None and panel.apply_button.disabled


def test_apply_then_undo_against_the_embedded_service(live, tmp_path):
    pytest.importorskip("curation.curate.differ")
    client, snapshot, names = live
    ct = names["ct-588-instances"]
    journals = tmp_path / "journals"
    panel = CurationPanel(snapshot, client, journals, apply_options={"rate": None, "poll": 0.01})
    _filter(panel, "StudyDescription", "==", "CT Liver")
    _edit(panel, "StudyDescription", "CT Liver (curated)")
    assert not panel.apply_button.disabled

    panel.apply_button.click()  # runs in the background
    assert panel.wait()
    assert "color:#b00020" not in panel.message.value, panel.message.value
    result = panel.last_result
    assert list(result["ImageSetID"]) == [ct]
    assert result["status"].tolist() == ["applied"]
    assert str(result["version_before"].iloc[0]) == "1" and str(result["version_after"].iloc[0]) == "2"
    assert "applied" in panel.result_html.value
    assert "1 applied" in panel.message.value
    assert panel.progress.max == 1 and panel.progress.value == 1
    assert len(panel.journals) == 1 and panel.journals[0].parent == journals and panel.journals[0].exists()
    document = _metadata(client, snapshot.datastore_id, ct)
    assert document["Study"]["DICOM"]["StudyDescription"] == "CT Liver (curated)"
    # the panel starts over from the datastore's new state
    assert panel.snapshot.version_ids[ct] == "2"
    assert snapshot.version_ids[ct] == "1"  # the caller's snapshot is not touched
    assert "no edits" in panel.changes_html.value
    assert panel.count == 0  # the filters stay: the old description is gone
    assert not panel.undo_button.disabled

    panel.undo_button.click()
    assert panel.wait()
    assert "color:#b00020" not in panel.message.value, panel.message.value
    assert panel.last_undo["status"].tolist() == ["applied"]
    assert "1 reverted" in panel.message.value and "applied" not in panel.message.value
    document = _metadata(client, snapshot.datastore_id, ct)
    assert document["Study"]["DICOM"]["StudyDescription"] == "CT Liver"
    assert panel.snapshot.version_ids[ct] == "3"
    assert panel.count == 588
    assert panel.journals == [] and panel.undo_button.disabled
    history = client.list_image_set_versions(datastoreId=snapshot.datastore_id, imageSetId=ct)
    assert len(history["imageSetPropertiesList"]) == 3


def test_an_apply_that_meets_a_newer_version_reports_the_conflict(live, tmp_path):
    pytest.importorskip("curation.curate.differ")
    client, snapshot, names = live
    us = names["us-doppler-9-instances"]
    panel = CurationPanel(snapshot, client, tmp_path, apply_options={"rate": None, "poll": 0.01})
    _filter(panel, "Modality", "==", "US")
    _edit(panel, "StudyDescription", "US Doppler")
    client.update_image_set_metadata(  # someone else changes the image set after the snapshot
        datastoreId=snapshot.datastore_id,
        imageSetId=us,
        latestVersionId="1",
        updateImageSetMetadataUpdates={
            "DICOMUpdates": {
                "updatableAttributes": json.dumps(
                    {"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "theirs"}}}
                )
            }
        },
    )
    panel.apply_button.click()
    assert panel.wait()
    assert panel.last_result["status"].tolist() == ["conflict"]
    assert "color:#b00020" in panel.message.value and "1 conflict" in panel.message.value
    document = _metadata(client, snapshot.datastore_id, us)
    assert document["Study"]["DICOM"]["StudyDescription"] == "theirs"  # nothing overwritten
    assert panel.snapshot.version_ids[us] == "2"  # the panel now shows their version
    assert set(panel.edited.loc[panel.mask(), "StudyDescription"]) == {"theirs"}
