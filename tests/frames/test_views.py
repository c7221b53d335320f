"""typed() and explode(): concrete values from the reference documents; raw frames untouched."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from curation.frames.flattening import NULL
from curation.frames.snapshot import Snapshot
from curation.frames.views import explode, parse_dt, parse_tm, typed
from curation.model.document import read_document

REFERENCE = Path(__file__).parents[1] / "data" / "reference"


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    names = ("ct-2025-htj2k-1-instance.json", "us-doppler-9-instances.json")
    documents = [read_document(str(REFERENCE / name)) for name in names]
    return Snapshot.from_documents(documents, datastore_id="0" * 32)


def test_typed_dates_times_numbers(snapshot: Snapshot) -> None:
    instances = snapshot.instances
    before = instances.copy()
    view = typed(instances, snapshot)
    ct = view.iloc[0]
    assert ct["AcquisitionDate"] == pd.Timestamp("2000-01-01")
    assert ct["AcquisitionTime"] == pd.Timedelta(hours=13, minutes=13, seconds=44)
    assert ct["KVP"] == 120.0 and ct["SliceLocation"] == -2.625
    assert ct["InstanceNumber"] == 11 and ct["NumberOfFrames"] == 1
    assert ct["ImagePositionPatient"] == [0.0, 0.0, -2.625]  # multi-valued DS -> list of floats
    assert ct["WindowCenter"] == [0.0]
    assert pd.isna(ct["AcquisitionNumber"])  # present-empty ("") -> missing
    assert str(view["AcquisitionDate"].dtype) == "datetime64[ns]"
    assert str(view["AcquisitionTime"].dtype) == "timedelta64[ns]"
    assert str(view["KVP"].dtype) == "Float64" and str(view["InstanceNumber"].dtype) == "Int64"
    us = view.iloc[1]
    assert us["ContentTime"] == pd.Timedelta(hours=15, minutes=34, seconds=51)
    assert pd.isna(us["AcquisitionTime"])  # null in the document
    assert us["HeartRate"] == 124
    assert us["Rows"] == 480  # US stays as is
    pd.testing.assert_frame_equal(instances, before)  # the raw frame is untouched
    assert instances.iloc[0]["KVP"] == "120 "


def test_typed_person_names(snapshot: Snapshot) -> None:
    view = typed(snapshot.studies, snapshot)
    ct = view.iloc[0]
    assert ct["PatientName"] == "NAME^NONE"
    assert (ct["PatientName.family"], ct["PatientName.given"]) == ("NAME", "NONE")
    assert ct["PatientName.middle"] is None and ct["PatientName.suffix"] is None
    assert ct["StudyDate"] == pd.Timestamp("2000-01-01")
    assert view.iloc[1]["PatientName.family"] == "US Echo"
    assert list(view.columns).index("PatientName.family") == list(view.columns).index("PatientName") + 1
    assert pd.isna(ct["ReferringPhysicianName.family"])  # NULL name -> missing components


def test_typed_with_mapping_and_without_vrs() -> None:
    frame = pd.DataFrame(
        {"When": ["20180803160125.605+0100", NULL, None], "StudyTime": ["0930", "10", "bad"]}, dtype=object
    )
    view = typed(frame, {"When": "DT"})
    assert view["When"].tolist()[0] == pd.Timestamp("2018-08-03 16:01:25.605")
    assert view["When"].isna().tolist() == [False, True, True]
    assert view["StudyTime"].tolist()[:2] == [pd.Timedelta(hours=9, minutes=30), pd.Timedelta(hours=10)]
    assert pd.isna(view["StudyTime"].iloc[2])
    assert parse_dt("2023") == pd.Timestamp("2023-01-01") and parse_tm("13:13:44") == pd.Timedelta("13:13:44")


def test_explode_ultrasound_regions(snapshot: Snapshot) -> None:
    instances = snapshot.instances
    regions = explode(instances, "SequenceOfUltrasoundRegions")
    assert regions.index.names == ["ImageSetID", "SeriesInstanceUID", "SOPInstanceUID", "item"]
    us = instances.xs(snapshot.image_set_ids[1], level="ImageSetID")
    expected = sum(len(v) for v in us["SequenceOfUltrasoundRegions"] if isinstance(v, tuple))
    assert len(regions) == expected and expected > 9
    first_sop = us.index.get_level_values("SOPInstanceUID")[0]
    first = regions.xs(first_sop, level="SOPInstanceUID")
    assert list(first.index.get_level_values("item")) == [0, 1, 2, 3]
    assert first["RegionLocationMaxY1"].tolist() == [463, 175, 447, 447]
    assert first["PhysicalDeltaX"].tolist()[1] == -0.07937499999068676
    assert pd.isna(first["ReferencePixelX0"].iloc[0]) and first["ReferencePixelX0"].iloc[1] == 170  # absent
    assert first["RegionSpatialFormat"].tolist() == [0, 1, 3, 3]


def test_explode_nested_sequence_keeps_inner_lists(snapshot: Snapshot) -> None:
    equipment = explode(snapshot.instances, "ContributingEquipmentSequence")
    assert len(equipment) == 1
    row = equipment.iloc[0]
    assert row["Manufacturer"] == "PixelMed" and row["SoftwareVersions"] == ("Thu Apr 19 11:14:42 EDT 2018",)
    assert row["PurposeOfReferenceCodeSequence"][0]["CodeValue"] == "109104"
    inner = explode(equipment, "PurposeOfReferenceCodeSequence")
    assert inner.index.names[-2:] == ["item", "item2"]
    assert inner.iloc[0]["CodeMeaning"] == "De-identifying Equipment"
    assert typed(equipment)["ContributionDateTime"].iloc[0] == pd.Timestamp("2018-08-03 16:01:25.605")
    with pytest.raises(KeyError):
        explode(snapshot.instances, "NoSuchSequence")
