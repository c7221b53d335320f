"""curation.ui.plots: what each view computes (its ``*_table``) and draws (the Axes it returns), on the reference
documents."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib import pyplot as plt
from matplotlib.axes import Axes

from curation.frames.flattening import NULL
from curation.frames.snapshot import Snapshot
from curation.ui import plots

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
NAMES = ("ct-588-instances", "us-doppler-9-instances", "ct-2025-htj2k-1-instance")


def _documents() -> dict[str, dict]:
    return {name: json.loads((REFERENCE / f"{name}.json").read_text()) for name in NAMES}


@pytest.fixture(scope="module")
def documents() -> dict[str, dict]:
    return _documents()


@pytest.fixture(scope="module")
def snapshot(documents: dict[str, dict]) -> Snapshot:
    docs = list(_documents().values())
    return Snapshot.from_documents(docs, datastore_id="0" * 32, version_ids={d["ImageSetID"]: "1" for d in docs})


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _ids(documents: dict[str, dict], name: str) -> tuple[str, str]:
    document = documents[name]
    return document["ImageSetID"], next(iter(document["Study"]["Series"]))


def test_completeness_counts_present_non_null_fraction_per_series(snapshot, documents):
    ct_set, ct_series = _ids(documents, "ct-588-instances")
    wide = snapshot.wide
    in_ct = wide.index.get_level_values(0) == ct_set
    assert in_ct.sum() == 588
    instances = documents["ct-588-instances"]["Study"]["Series"][ct_series]["Instances"].values()
    having = sum(i["DICOM"].get("WindowWidth") is not None for i in instances)
    assert having == 587  # one instance of the real document has no WindowWidth
    rows = np.flatnonzero(in_ct & wide["WindowWidth"].notna().to_numpy())
    column = wide["WindowWidth"].to_numpy(dtype=object).copy()
    column[rows[:147]] = None  # absent
    column[rows[147:294]] = NULL  # present, null
    wide["WindowWidth"] = pd.Series(column, index=wide.index, dtype=object)

    ax = plots.completeness(wide, ["WindowWidth", "PatientName", "PixelData", "NoSuchAttribute"])
    assert isinstance(ax, Axes)
    matrix = plots.completeness_table(wide, ["WindowWidth", "PatientName", "PixelData", "NoSuchAttribute"])
    assert list(matrix.index) == ["WindowWidth", "PatientName", "PixelData", "NoSuchAttribute"]
    assert matrix.shape == (4, 3)
    us_set, us_series = _ids(documents, "us-doppler-9-instances")
    assert matrix.loc["WindowWidth", (ct_set, ct_series)] == pytest.approx((587 - 294) / 588)
    assert matrix.loc["WindowWidth", (us_set, us_series)] == 0.0  # the US instances have no WindowWidth
    assert (matrix.loc["PatientName"] == 1.0).all()
    assert (matrix.loc["PixelData"] == 0.0).all()  # present everywhere, but always null
    assert (matrix.loc["NoSuchAttribute"] == 0.0).all()
    # the snapshot itself is untouched: its own wide view is complete for WindowWidth in the CT series
    original = plots.completeness_table(snapshot, ["WindowWidth"])
    assert original.loc["WindowWidth", (ct_set, ct_series)] == pytest.approx(587 / 588)


def test_completeness_defaults_to_the_dicom_columns(snapshot):
    matrix = plots.completeness_table(snapshot)
    assert not any(c.startswith("@") for c in matrix.index)
    assert "7FDF1001" in matrix.index and "StudyInstanceUID" in matrix.index
    assert ((matrix >= 0) & (matrix <= 1)).all().all()
    assert (matrix.loc["SOPClassUID"] == 1.0).all()
    assert "SOPInstanceUID" not in matrix.index  # the index holds it


def test_value_counts_by_modality_and_by_series(snapshot, documents):
    counts = plots.value_counts_table(snapshot.wide, "Modality")
    assert counts.loc["CT", "CT"] == 589 and counts.loc["US", "US"] == 9
    assert counts.loc["CT", "US"] == 0

    counts = plots.value_counts_table(snapshot, "PatientSex", by="Modality")
    assert counts.loc["F", "CT"] == 588  # the 588-slice CT; the 2025 CT has its own value
    assert counts.loc[plots.NULL_LABEL, "US"] == 9  # present with a null value in the US document

    counts = plots.value_counts_table(snapshot.wide, "ImageType", by="series")
    assert counts.to_numpy().sum() == 598
    assert counts.loc["ORIGINAL\\PRIMARY\\AXIAL"].sum() == 588
    assert counts.index[0] == "ORIGINAL\\PRIMARY\\AXIAL"  # most frequent first

    counts = plots.value_counts_table(snapshot.wide, "BodyPartExamined", by=None)
    assert counts.to_numpy().sum() == 598
    with pytest.raises(KeyError):
        plots.value_counts(snapshot.wide, "Modality", by="NoSuchColumn")
    with pytest.raises(KeyError):
        plots.value_counts(snapshot.wide, "NoSuchColumn")


def test_study_timeline_types_date_and_time(snapshot, documents):
    table = plots.study_timeline_table(snapshot)
    assert list(table.index) == [
        documents["ct-2025-htj2k-1-instance"]["ImageSetID"],
        documents["us-doppler-9-instances"]["ImageSetID"],
        documents["ct-588-instances"]["ImageSetID"],
    ]  # oldest first
    ct = table.loc[documents["ct-588-instances"]["ImageSetID"]]
    assert ct["StudyDateTime"] == pd.Timestamp("2023-04-17 21:55:00")
    assert ct["StudyTime"] == pd.Timedelta(hours=21, minutes=55)
    assert ct["PatientID"] == "PID3608579624968"
    us = table.loc[documents["us-doppler-9-instances"]["ImageSetID"]]
    assert us["StudyDateTime"] == pd.Timestamp("2012-04-18 15:26:43")
    assert us["PatientID"] is None  # NULL in the document

    studies = snapshot.studies
    studies["StudyDate"] = studies["StudyDate"].astype(object)
    studies.loc[documents["us-doppler-9-instances"]["ImageSetID"], "StudyDate"] = "not a date"
    table = plots.study_timeline_table(studies)
    assert table["StudyDateTime"].isna().sum() == 1
    assert table.index[-1] == documents["us-doppler-9-instances"]["ImageSetID"]  # undated last


@pytest.fixture(scope="module")
def ct_instances(snapshot, documents) -> tuple[pd.DataFrame, str]:
    _, series = _ids(documents, "ct-588-instances")
    return snapshot.instances, series


def _z(frame: pd.DataFrame, sop: str) -> float:
    return float(frame.xs(sop, level="SOPInstanceUID")["ImagePositionPatient"].iloc[0].split("\\")[2])


def _by_number(frame: pd.DataFrame, series: str) -> dict[int, tuple]:
    rows = frame[frame.index.get_level_values("SeriesInstanceUID") == series]
    return {int(n): key for key, n in zip(rows.index, rows["InstanceNumber"], strict=True)}


def test_slice_geometry_of_the_588_slice_ct_is_regular(ct_instances):
    instances, series = ct_instances
    table = plots.geometry_table(instances, series)
    assert len(table) == 588
    assert table.attrs["median_spacing"] == pytest.approx(1.0)
    assert table.attrs["normal"] == pytest.approx([0.0, 0.0, 1.0])
    assert (table["flag"] == "").all()
    assert table["spacing"].iloc[1:].to_numpy() == pytest.approx(np.ones(587))
    assert table["position"].is_monotonic_increasing
    assert table["InstanceNumber"].tolist() == list(range(1, 589))  # position order is InstanceNumber order
    assert table["position"].iloc[0] == pytest.approx(-14.5)


def test_slice_geometry_flags_a_removed_slice_as_a_gap(ct_instances):
    instances, series = ct_instances
    numbers = _by_number(instances, series)
    edited = instances.drop(index=[numbers[300]])
    table = plots.geometry_table(edited, series)
    assert len(table) == 587
    assert table["gap"].sum() == 1
    gap = table[table["gap"]]
    assert int(gap["InstanceNumber"].iloc[0]) == 301
    assert gap["spacing"].iloc[0] == pytest.approx(2.0)
    assert gap["flag"].iloc[0] == "gap"
    assert not table["duplicate"].any() and not table["overlap"].any()


def test_slice_geometry_flags_a_duplicated_slice(ct_instances):
    instances, series = ct_instances
    numbers = _by_number(instances, series)
    image_set, _, sop = numbers[200]
    copy = instances.loc[[numbers[200]]].copy()
    copy.index = pd.MultiIndex.from_tuples([(image_set, series, sop + ".9")], names=instances.index.names)
    copy["InstanceNumber"] = pd.Series(["589"], index=copy.index, dtype=object)
    edited = pd.concat([instances, copy])
    table = plots.geometry_table(edited, series)
    assert len(table) == 589
    duplicates = table[table["duplicate"]]
    assert set(duplicates.index) == {sop, sop + ".9"}
    assert set(duplicates["InstanceNumber"]) == {200, 589}
    assert table.attrs["median_spacing"] == pytest.approx(1.0)  # duplicates do not drag the median down
    assert not table["gap"].any() and not table["overlap"].any()


def test_slice_geometry_flags_an_overlap_and_the_gap_after_it(ct_instances):
    instances, series = ct_instances
    numbers = _by_number(instances, series)
    edited = instances.copy()
    key = numbers[100]
    z_before = _z(instances, numbers[99][2])
    position = edited.loc[key, "ImagePositionPatient"].split("\\")
    position[2] = str(z_before + 0.25)
    edited.loc[key, "ImagePositionPatient"] = "\\".join(position)
    assert _z(instances, key[2]) == z_before + 1  # the snapshot's frame is untouched
    table = plots.geometry_table(edited, series)
    overlap = table[table["overlap"]]
    assert list(overlap["InstanceNumber"]) == [100]
    assert overlap["spacing"].iloc[0] == pytest.approx(0.25)
    gap = table[table["gap"]]
    assert list(gap["InstanceNumber"]) == [101]
    assert gap["spacing"].iloc[0] == pytest.approx(1.75)


def test_slice_geometry_uses_the_orientation_normal():
    index = pd.MultiIndex.from_tuples(
        [("s", "1.2", f"1.2.{n}") for n in range(1, 5)], names=["ImageSetID", "SeriesInstanceUID", "SOPInstanceUID"]
    )
    sagittal = ["0", "1", "0", "0", "0", "-1"]  # normal = (0,1,0) x (0,0,-1) = (-1, 0, 0)
    frame = pd.DataFrame(
        {
            "InstanceNumber": pd.Series(["1", "2", "3", "4"], index=index, dtype=object),
            "ImagePositionPatient": pd.Series([[str(x), "5", "7"] for x in (10, 7, 4, 4)], index=index, dtype=object),
            "ImageOrientationPatient": pd.Series([sagittal] * 4, index=index, dtype=object),
        }
    )
    table = plots.geometry_table(frame, "1.2")
    assert table.attrs["normal"] == pytest.approx([-1.0, 0.0, 0.0])
    assert list(table["position"]) == pytest.approx([-10.0, -7.0, -4.0, -4.0])
    assert list(table["InstanceNumber"]) == [1, 2, 3, 4]
    assert table["duplicate"].tolist() == [False, False, True, True]
    assert table.attrs["median_spacing"] == pytest.approx(3.0)
    with pytest.raises(KeyError):
        plots.geometry_table(frame, "9.9")


def test_version_timeline_from_list_image_set_versions(local_client, documents):
    store = local_client.meta.local_service.store
    report = store.import_documents([documents["us-doppler-9-instances"]])
    datastore_id, (image_set_id,) = report.datastore_id, report.created
    for value in ("A^B", "C^D"):
        latest = local_client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)["versionId"]
        local_client.update_image_set_metadata(
            datastoreId=datastore_id,
            imageSetId=image_set_id,
            latestVersionId=latest,
            updateImageSetMetadataUpdates={
                "DICOMUpdates": {
                    "updatableAttributes": json.dumps(
                        {"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": value}}}
                    )
                }
            },
        )
    listed = local_client.list_image_set_versions(datastoreId=datastore_id, imageSetId=image_set_id)
    history = pd.DataFrame(listed["imageSetPropertiesList"])
    versions = plots.version_table(history)
    assert versions["version"].tolist() == [1, 2, 3]  # oldest first, whatever the listing order
    assert versions["status"].tolist()[1:] == ["UPDATED", "UPDATED"]
    assert versions["time"].is_monotonic_increasing
    assert not versions["forced"].any()
    with pytest.raises(KeyError):
        plots.version_table(pd.DataFrame({"x": [1]}))


def _updated_then_reverted(local_client, documents) -> tuple[str, str]:
    """(datastore, image set) of one imported document, updated (version 2) then reverted (version 3)."""
    store = local_client.meta.local_service.store
    report = store.import_documents([documents["ct-2025-htj2k-1-instance"]])
    datastore_id, (image_set_id,) = report.datastore_id, report.created
    local_client.update_image_set_metadata(
        datastoreId=datastore_id,
        imageSetId=image_set_id,
        latestVersionId="1",
        updateImageSetMetadataUpdates={
            "DICOMUpdates": {
                "updatableAttributes": json.dumps({"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "X"}}})
            }
        },
    )
    local_client.update_image_set_metadata(
        datastoreId=datastore_id,
        imageSetId=image_set_id,
        latestVersionId="2",
        updateImageSetMetadataUpdates={"revertToVersionId": "1"},
    )
    return datastore_id, image_set_id


def test_version_timeline_of_curation_history(local_client, documents):
    history_module = importlib.import_module("curation.run.history")
    datastore_id, image_set_id = _updated_then_reverted(local_client, documents)
    frame = history_module.history(local_client, datastore_id, image_set_id)
    versions = plots.version_table(frame)
    assert versions["version"].tolist() == [1, 2, 3]
    assert versions["status"].tolist() == list(frame["workflowStatus"])
    assert versions["status"].iloc[1] == "UPDATED"


# --- what a person sees ----------------------------------------------------------------------------------------


def test_each_view_returns_its_axes_and_makes_one_figure(snapshot, documents):
    _, ct_series = _ids(documents, "ct-588-instances")
    for draw in (
        lambda: plots.completeness(snapshot, ["PatientName"]),
        lambda: plots.value_counts(snapshot, "Modality"),
        lambda: plots.study_timeline(snapshot),
        lambda: plots.slice_geometry(snapshot, ct_series),
    ):
        plt.close("all")
        ax = draw()
        assert isinstance(ax, Axes)
        # one figure, managed by pyplot (the inline backend shows it once); the Axes itself has no rich
        # display of its own, so a cell ending with the call does not show the figure a second time
        assert plt.get_fignums() == [ax.figure.number]
        assert not hasattr(ax, "_repr_png_") and not hasattr(ax, "_repr_html_")
    _, own = plt.subplots()
    assert plots.value_counts(snapshot, "Modality", ax=own) is own  # draws into the caller's Axes


def test_series_are_labelled_by_modality_number_and_description(snapshot, documents):
    labels = plots.series_labels(snapshot)
    ct_set, ct_series = _ids(documents, "ct-588-instances")
    us_set, us_series = _ids(documents, "us-doppler-9-instances")
    series = snapshot.series
    ct = series.loc[(ct_set, ct_series)]
    assert labels[(ct_set, ct_series)].startswith(f"CT #{ct['SeriesNumber']}")
    assert labels[(us_set, us_series)].startswith("US")
    ax = plots.completeness(snapshot, ["PatientName"])
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[(ct_set, ct_series)] in ticks and not any(t.startswith("…") for t in ticks)
    groups = plots.value_counts_table(snapshot, "Modality", by="series")
    assert set(groups.columns) == set(labels.values())


def test_two_series_with_the_same_label_are_told_apart_by_their_uid():
    index = pd.MultiIndex.from_tuples(
        [("a", "1.2.3.10", "1.2.3.10.1"), ("a", "1.2.3.11", "1.2.3.11.1")],
        names=["ImageSetID", "SeriesInstanceUID", "SOPInstanceUID"],
    )
    frame = pd.DataFrame({"Modality": ["CT", "CT"], "SeriesNumber": ["2", "2"]}, index=index)
    labels = plots.series_labels(frame)
    assert labels == {("a", "1.2.3.10"): "CT #2 …10", ("a", "1.2.3.11"): "CT #2 …11"}


def test_version_timeline_marks_reverts_and_shows_dates(local_client, documents):
    import curation

    datastore_id, image_set_id = _updated_then_reverted(local_client, documents)
    history = curation.history(local_client, datastore_id, image_set_id)
    assert not plots.version_table(history)["revert"].any()  # AHI's list does not say which is a revert
    table = plots.version_table(history, reverts=["3"])
    assert table["revert"].tolist() == [False, False, True]
    result = pd.DataFrame({"ImageSetID": [image_set_id], "status": ["applied"], "version_after": ["3"]})
    assert plots.version_table(history, reverts=result)["revert"].tolist() == [False, False, True]

    ax = plots.version_timeline(history, reverts=result)
    assert "revert" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(a.get_text() == "revert" for a in ax.texts)
    assert type(ax.xaxis.get_major_formatter()).__name__ == "ConciseDateFormatter"  # dates, not times of day
    plt.gcf().canvas.draw()
    shown = " ".join(t.get_text() for t in ax.get_xticklabels()) + ax.xaxis.get_offset_text().get_text()
    assert str(pd.Timestamp.now(tz="UTC").year) in shown
