"""Snapshot: construction contract, copies handed out, VR/level lookups, save/load, CSV/Parquet export."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import orjson
import pandas as pd
import pytest

import curation
from curation.frames.flattening import NULL, unflatten
from curation.frames.snapshot import Snapshot
from curation.model.document import read_document

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
NAMES = ("ct-2025-htj2k-1-instance.json", "us-doppler-9-instances.json", "ct-588-instances.json")
DATASTORE = "0" * 32


def canonical(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@pytest.fixture
def documents() -> list[dict]:
    return [read_document(str(REFERENCE / name)) for name in NAMES]


@pytest.fixture
def snapshot(documents: list[dict]) -> Snapshot:
    versions = {d["ImageSetID"]: str(i + 1) for i, d in enumerate(documents)}
    return Snapshot.from_documents(documents, datastore_id=DATASTORE, version_ids=versions)


def test_contents_and_level_frames(snapshot: Snapshot, documents: list[dict]) -> None:
    ids = [d["ImageSetID"] for d in documents]
    assert snapshot.image_set_ids == ids and len(snapshot) == 3
    assert snapshot.datastore_id == DATASTORE
    assert snapshot.version_ids == {ids[0]: "1", ids[1]: "2", ids[2]: "3"}
    assert list(snapshot.studies.index) == ids
    assert len(snapshot.series) == 3 and len(snapshot.instances) == 1 + 9 + 588
    assert len(snapshot.frames) == 1 + 22 + 588
    assert snapshot.failures.empty and list(snapshot.failures.columns) == ["ImageSetID", "stage", "error"]
    assert snapshot.documents[ids[1]] is documents[1]
    assert [canonical(d) for d in unflatten(snapshot.flattened)] == [canonical(d) for d in documents]


def test_wide_joins_every_level(snapshot: Snapshot, documents: list[dict]) -> None:
    wide = snapshot.wide
    assert wide.index.equals(snapshot.instances.index)
    us = wide.xs(documents[1]["ImageSetID"], level="ImageSetID")
    assert set(us["PatientName"]) == {"US Echo"} and set(us["Modality"]) == {"US"}
    assert set(us["StageName"]) >= {"Im Post 400"}
    ct = wide.loc[(wide["Modality"] == "CT") & (wide["PatientSex"] == "F")]
    assert len(ct) == 588
    # StudyComments sits at instance level in the CT document: no collision, plain name
    assert snapshot.level("StudyComments") == "Instance"


def test_frames_handed_out_are_copies(snapshot: Snapshot, documents: list[dict]) -> None:
    before = canonical(documents)
    series = snapshot.series
    series.loc[:, "BodyPartExamined"] = "CHEST"
    instances = snapshot.instances
    instances.loc[instances.index[0], "ImageType"] = "EDITED"
    instances.loc[instances.index[0], "KVP"] = ""
    wide = snapshot.wide
    wide["New"] = 1
    assert "CHEST" not in set(snapshot.series["BodyPartExamined"])
    assert snapshot.instances.iloc[0]["ImageType"] == "DERIVED\\PRIMARY\\AXIAL"
    assert snapshot.instances.iloc[0]["KVP"] == "120 "
    assert "New" not in snapshot.wide.columns
    assert canonical(documents) == before


def test_vr_and_level_of_columns(snapshot: Snapshot) -> None:
    assert snapshot.vr("PatientName") == "PN" and snapshot.level("PatientName") == "Patient"
    assert snapshot.vr("StudyDate") == "DA" and snapshot.level("StudyDate") == "Study"
    assert snapshot.vr("BodyPartExamined") == "CS" and snapshot.level("BodyPartExamined") == "Series"
    assert snapshot.vr("KVP") == "DS" and snapshot.level("KVP") == "Instance"
    assert snapshot.vr("7FDF1001") == "UN" and snapshot.vr("7FDD0010") == "LO"
    assert snapshot.level("7FDF1001") == "Instance"
    assert snapshot.vr("@StoredTransferSyntaxUID") is None
    assert snapshot.level("@SchemaVersion") is None
    assert snapshot.vr("FrameSizeInBytes") is None and snapshot.level("FrameSizeInBytes") == "Instance"
    with pytest.raises(KeyError):
        snapshot.level("NoSuchColumn")


def test_bad_documents_become_failures(documents: list[dict]) -> None:
    broken = copy.deepcopy(documents[1])
    broken["ImageSetID"] = "b" * 32
    del broken["Patient"]
    earlier = pd.DataFrame([{"ImageSetID": "c" * 32, "stage": "fetch", "error": "ThrottlingException"}])
    snapshot = Snapshot.from_documents([documents[0], broken, documents[0]], datastore_id=DATASTORE, failures=earlier)
    assert snapshot.image_set_ids == [documents[0]["ImageSetID"]]
    failures = snapshot.failures
    assert list(failures["ImageSetID"]) == ["c" * 32, "b" * 32, documents[0]["ImageSetID"]]
    assert list(failures["stage"]) == ["fetch", "flatten", "flatten"]
    assert "no Patient level" in failures["error"][1] or "Patient level" in failures["error"][1]
    assert "duplicate ImageSetID" in failures["error"][2]
    listed = Snapshot.from_documents([], datastore_id=DATASTORE, failures=[("d" * 32, "fetch", "boom")])
    assert listed.failures.iloc[0].tolist() == ["d" * 32, "fetch", "boom"] and len(listed) == 0


def test_save_and_load_round_trip(snapshot: Snapshot, tmp_path: Path) -> None:
    snapshot.primary = {snapshot.image_set_ids[0]: True, snapshot.image_set_ids[1]: False}
    snapshot.save(tmp_path / "snap")
    manifest = json.loads((tmp_path / "snap" / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["datastore_id"] == DATASTORE
    assert (tmp_path / "snap" / "documents.jsonl.gz").exists()
    assert (tmp_path / "snap" / "instances.parquet").exists()
    loaded = Snapshot.load(tmp_path / "snap")
    assert loaded.datastore_id == DATASTORE and loaded.version_ids == snapshot.version_ids
    assert loaded.primary == snapshot.primary
    assert loaded.image_set_ids == snapshot.image_set_ids
    assert [canonical(d) for d in loaded.documents.values()] == [canonical(d) for d in snapshot.documents.values()]
    for name in ("studies", "series", "instances", "frames", "wide"):
        pd.testing.assert_frame_equal(getattr(loaded, name), getattr(snapshot, name))
    pd.testing.assert_frame_equal(loaded.failures, snapshot.failures)
    studies = loaded.studies
    assert studies.iloc[0]["PatientSex"] == "" and studies["PatientSex"].isna().sum() == 0  # "" survives Parquet
    assert loaded.instances["PixelData"].iloc[1] is NULL  # so does NULL in an object column
    instance = loaded.instances.iloc[0]
    assert instance["KVP"] == "120 " and instance["ImageType"] == "DERIVED\\PRIMARY\\AXIAL"
    assert loaded.level("PatientName") == "Patient"
    assert [canonical(d) for d in unflatten(loaded.flattened)] == [canonical(d) for d in snapshot.documents.values()]


def test_csv_and_parquet_export(snapshot: Snapshot, tmp_path: Path) -> None:
    paths = snapshot.to_csv(tmp_path / "csv")
    assert sorted(Path(p).name for p in paths) == ["frames.csv", "instances.csv", "series.csv", "studies.csv"]
    instances = pd.read_csv(tmp_path / "csv" / "instances.csv", dtype=str, keep_default_na=False, skiprows=[1])
    first = instances.iloc[0]
    assert first["ImageSetID"] == snapshot.image_set_ids[0]
    assert first["ImageType"] == "DERIVED\\PRIMARY\\AXIAL"
    assert first["KVP"] == "120 "
    assert first["AcquisitionNumber"] == ""  # present-empty and absent are both an empty field in CSV
    assert first["StageName"] == ""
    assert json.loads(first["SourceImageSequence"])[0]["ReferencedSOPClassUID"] == "1.2.840.10008.5.1.4.1.1.2"
    assert "SOPInstanceUID" in instances.columns and "@Instance:SOPInstanceUID" not in instances.columns
    for name in ("studies", "series", "instances", "frames"):
        back = curation.read_csv(tmp_path / "csv" / f"{name}.csv")
        original = getattr(snapshot, name)
        for column in original.columns:  # CSV cannot tell "" from absent: a str column's "" reads back missing
            if isinstance(original[column].dtype, pd.StringDtype):
                original[column] = original[column].replace("", None)
        pd.testing.assert_frame_equal(back, original)
    snapshot.to_parquet(tmp_path / "pq")
    series = pd.read_parquet(tmp_path / "pq" / "series.parquet")
    assert list(series.columns[:2]) == ["@index:ImageSetID", "@index:SeriesInstanceUID"]
    frames = pd.read_parquet(tmp_path / "pq" / "frames.parquet")
    assert str(frames["FrameSizeInBytes"].dtype) == "Int64"
    pyramid = list(frames["PixelDataChecksumFromBaseToFullResolution"].iloc[0])  # native list<struct>, not JSON
    assert pyramid == [{"Width": 640, "Height": 640, "Checksum": 989529591}]
    instances_pq = pd.read_parquet(tmp_path / "pq" / "instances.parquet")
    assert str(instances_pq["Rows"].dtype) == "Int64" and instances_pq["Rows"].iloc[0] == 640
    assert str(instances_pq["KVP"].dtype) == "str"
    for name in ("studies", "series", "instances", "frames"):
        pd.testing.assert_frame_equal(
            curation.read_parquet(tmp_path / "pq" / f"{name}.parquet"), getattr(snapshot, name)
        )


def test_from_blobs_holds_the_blobs_and_parses_on_demand(documents: list[dict]) -> None:
    from curation.model.document import encode_document

    blobs = {d["ImageSetID"]: encode_document(d, compress=n % 2 == 0) for n, d in enumerate(documents)}
    blobs["b" * 32] = b"not json"
    blobs["c" * 32] = encode_document({**documents[0], "ImageSetID": "d" * 32})
    snapshot = Snapshot.from_blobs(blobs, datastore_id=DATASTORE)
    assert snapshot.image_set_ids == [d["ImageSetID"] for d in documents]
    assert list(snapshot.failures["stage"]) == ["parse", "parse"]
    assert snapshot.documents.compact and snapshot.documents.blob(documents[0]["ImageSetID"]) is not None
    assert [canonical(snapshot.documents[d["ImageSetID"]]) for d in documents] == [canonical(d) for d in documents]
    reference = Snapshot.from_documents(documents, datastore_id=DATASTORE)
    for name in ("studies", "series", "instances", "frames"):
        pd.testing.assert_frame_equal(getattr(snapshot, name), getattr(reference, name))
    assert snapshot.vr("7FDF1001") == "UN"


def test_fetch_keeps_the_blobs_as_fetched(local_client: object) -> None:
    import curation

    store = local_client.meta.local_service.store
    report = store.import_documents([read_document(str(REFERENCE / NAMES[1]))])
    snapshot = curation.fetch(local_client, report.datastore_id, progress=False)
    (image_set_id,) = snapshot.image_set_ids
    assert snapshot.documents.compact and snapshot.documents.blob(image_set_id)[:2] == b"\x1f\x8b"
    assert snapshot.documents[image_set_id]["ImageSetID"] == image_set_id


def test_from_blobs_in_batches_equals_one_flatten(documents: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    import curation.frames.snapshot as snapshot_module
    from curation.model.document import encode_document

    more = copy.deepcopy(documents[1])
    more["ImageSetID"] = "e" * 32
    more["Study"]["DICOM"]["PatientName"] = "AT^STUDY"  # a Patient key at Study level, met in a later batch
    del more["Patient"]["DICOM"]["PatientName"]
    more["Study"]["DICOM"].pop("AccessionNumber", None)  # a column the other batches have
    docs = [*documents, more]
    blobs = {d["ImageSetID"]: encode_document(d) for d in docs}
    monkeypatch.setattr(snapshot_module, "BATCH_INSTANCES", 1)  # one document per batch
    batched = Snapshot.from_blobs(blobs, datastore_id=DATASTORE)
    whole = Snapshot.from_documents(docs, datastore_id=DATASTORE)
    for name in ("studies", "series", "instances", "frames"):
        pd.testing.assert_frame_equal(getattr(batched, name), getattr(whole, name))
    assert batched.codecs("instances") == whole.codecs("instances")
    assert [canonical(d) for d in unflatten(batched.flattened)] == [canonical(d) for d in docs]


def _variants(documents: list[dict]) -> list[dict]:
    """Copies of the first reference document under new IDs, each missing or respelling some columns."""
    base = documents[0]
    out = []
    for number, change in enumerate(("drop-int", "drop-object", "blank", "null", "keep")):
        doc = copy.deepcopy(base)
        doc["ImageSetID"] = f"{number + 1:032x}"
        series = next(iter(doc["Study"]["Series"].values()))
        for instance in series["Instances"].values():
            dicom = instance["DICOM"]
            if change == "drop-int":
                dicom.pop("Rows", None)
            elif change == "drop-object":
                dicom.pop("SourceImageSequence", None)
                instance.pop("DICOMVRs", None)
            elif change == "blank":
                dicom["ImageComments"] = ""
            elif change == "null":
                dicom["ImageComments"] = None
        out.append(doc)
    return out


@pytest.mark.parametrize("batch", [1, 2, 10_000])
def test_batches_missing_or_respelling_columns_equal_one_flatten(
    documents: list[dict], monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """Columns absent from some batches (Int64, object, str) come back absent; batches that spell an empty value
    differently ("" in one, null in another) make the column what one flatten makes it (object)."""
    import curation.frames.snapshot as snapshot_module
    from curation.model.document import encode_document

    docs = _variants(documents)
    monkeypatch.setattr(snapshot_module, "BATCH_INSTANCES", batch)
    batched = Snapshot.from_blobs({d["ImageSetID"]: encode_document(d) for d in docs}, datastore_id=DATASTORE)
    whole = Snapshot.from_documents(docs, datastore_id=DATASTORE)
    for name in ("studies", "series", "instances", "frames"):
        pd.testing.assert_frame_equal(getattr(batched, name), getattr(whole, name))
        assert batched.codecs(name) == whole.codecs(name)
    assert whole.codecs("instances")["ImageComments"] == "object"
    assert batched.instances["Rows"].isna().sum() == len(batched.instances.loc[docs[0]["ImageSetID"]])
    assert [canonical(d) for d in unflatten(batched.flattened)] == [canonical(d) for d in docs]
