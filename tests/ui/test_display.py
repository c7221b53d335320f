"""curation.ui.display: the HTML a notebook shows for a Snapshot, a ChangeSet and a frame."""

from __future__ import annotations

import pandas as pd

from curation.curate.differ import diff
from curation.frames.cells import REMOVE
from curation.model.missing import NULL
from curation.ui.display import change_table, frame_html, short_uids, snapshot_html, snapshot_table, text_of


def test_short_uids_keep_the_part_that_tells_them_apart():
    uids = ["1.2.840.113619.2.55.3.1001.7", "1.2.840.113619.2.55.3.1001.12", "1.2.840.113619.2.55.3.1002.1"]
    assert short_uids(uids) == {uids[0]: "…1001.7", uids[1]: "…1001.12", uids[2]: "…1002.1"}
    assert short_uids(["1.2.3.4.5.6.7.8.9.10.11.12"]) == {"1.2.3.4.5.6.7.8.9.10.11.12": "…8.9.10.11.12"}
    assert short_uids(["1.2", "1.3"]) == {"1.2": "…2", "1.3": "…3"}
    assert short_uids([None, float("nan")]) == {}


def test_text_of_spells_out_what_a_cell_holds():
    assert text_of(NULL) == "NULL" and text_of(REMOVE) == "REMOVE" and text_of(None) == ""
    assert text_of(("ORIGINAL", "PRIMARY")) == "ORIGINAL\\PRIMARY"
    assert text_of(({"CodeValue": "1"},)) == '[{"CodeValue":"1"}]'
    assert text_of("x" * 100, 10) == "x" * 9 + "…"


def test_the_snapshot_display_counts_image_sets_series_instances_and_primary(snapshot):
    snapshot.primary = {snapshot.image_set_ids[0]: True, snapshot.image_set_ids[1]: False}
    table = snapshot_table(snapshot)
    assert table["instances"].sum() == 598 and table["series"].sum() == 3
    assert table["primary"].tolist() == ["yes", "no", "?"]
    assert set(table["Modality"]) == {"CT", "US"}
    page = snapshot._repr_html_()
    assert "3 image set(s) (1 primary, 1 non-primary, 1 unknown), 3 series, 598 instances, 0 failure(s)" in page
    assert "<table" in page and "PatientName" in page and "failure(s):" not in page


def test_the_snapshot_display_lists_failures_escaped(snapshot):
    from curation.frames.snapshot import Snapshot

    failures = pd.DataFrame([{"ImageSetID": "x" * 32, "stage": "fetch", "error": "<b>AccessDenied</b>"}])
    documents = [snapshot.document(i) for i in snapshot.image_set_ids]
    failed = Snapshot.from_documents(documents, datastore_id=snapshot.datastore_id, failures=failures)
    page = snapshot_html(failed)
    assert "1 failure(s)" in page and "could not be fetched" in page
    assert "&lt;b&gt;AccessDenied&lt;/b&gt;" in page and "<b>AccessDenied" not in page


def test_changeset_rows_show_the_distinguishing_part_of_their_uids(snapshot):
    instances = snapshot.instances
    ct = instances[
        instances["InstanceNumber"].astype(str).isin(["1", "2", "3"])
        & (instances.index.get_level_values(0) == instances.index[0][0])
    ].copy()
    ct["ImageComments"] = "checked"
    changes = diff(snapshot, ct)
    assert len(changes) == 3
    table = change_table(changes)
    sops = list(changes.changes["SOPInstanceUID"])
    shown = table["series / instance"].tolist()
    assert len(set(shown)) == 3  # the rows look different
    for full, text in zip(sops, shown, strict=True):
        distinguishing = text.split(" / ")[1]
        assert distinguishing.startswith("…") and full.endswith(distinguishing[1:])
        assert len(distinguishing) < len(full)
    assert table["old"].tolist() == ["(absent)"] * 3 and table["new"].tolist() == ["checked"] * 3
    page = changes._repr_html_()
    assert "background-color: #dfd" in page and shown[0] in page


def test_frame_html_hides_the_index_and_highlights_cells():
    frame = pd.DataFrame({"a": ["x", "<y>"], "b": [NULL, None]}, index=["row-one", "row-two"])
    marks = pd.DataFrame({"a": [False, True], "b": [False, False]}, index=frame.index)
    page = frame_html(frame, index=False, highlight=marks)
    assert "row-one" not in page and "&lt;y&gt;" in page and ">NULL<" in page
    assert "background-color: #fff3bf" in page
    assert "1 more row" in frame_html(frame, 1)


def test_a_document_displays_folded_by_level_with_keywords_tags_and_vrs(documents):
    from curation.ui.documentview import DocumentView, attribute_table

    document = documents["us-doppler-9-instances"]
    patient = attribute_table(document["Patient"]).set_index("keyword")
    assert patient.loc["PatientName", "value"] == "US Echo" and patient.loc["PatientName", "tag"] == "(0010,0010)"
    assert patient.loc["PatientID", "value"] is NULL and patient.loc["PatientID", "VR"] == "LO"  # null: present, empty
    view = DocumentView(document, max_instances=2)
    page = view._repr_html_()
    assert page.count("<details") == 2 + 1 + 2  # Patient, Study, one series, two of its nine instances
    assert "9 instance(s)" in page and "7 more instance(s)" in page and ">NULL<" in page
    assert "&quot;" not in page.split("<summary>")[0]  # the head is text, not JSON
    assert repr(view).endswith("1 series, 9 instances)") and '"ImageSetID"' in view.json()
