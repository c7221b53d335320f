"""The embedded HealthImaging store: every operation and refusal, versions, locks, search, copy, import, and
durability (several writer processes, a writer killed mid-stream)."""

from __future__ import annotations

import copy
import gzip
import json
import multiprocessing
import os
import re
import signal
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest

from curation.local.store import NOT_CONSISTENT, STALE_VERSION, Store
from curation.model.document import iter_instances, read_document
from curation.model.errors import AHIError

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
ID = re.compile(r"[0-9a-z]{32}")


# ------------------------------------------------------------------ helpers


def _conforms(shape: Any, value: Any, path: str) -> None:
    """Assert an output value has exactly the model's shape (members, required, types, enums)."""
    kind = shape.type_name
    if kind == "structure":
        assert isinstance(value, dict), path
        assert set(value) <= set(shape.members), f"{path}: {set(value) - set(shape.members)} not in the model"
        for name in shape.required_members:
            assert name in value, f"{path}.{name} is required"
        for name, item in value.items():
            _conforms(shape.members[name], item, f"{path}.{name}")
    elif kind == "list":
        assert isinstance(value, list), path
        for item in value:
            _conforms(shape.member, item, path + "[]")
    elif kind == "map":
        assert isinstance(value, dict) and all(isinstance(v, str) for v in value.values()), path
    elif kind == "string":
        assert isinstance(value, str), path
        assert not shape.enum or value in shape.enum, f"{path}: {value!r} not in {shape.enum}"
    elif kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), path
    elif kind == "boolean":
        assert isinstance(value, bool), path
    elif kind == "timestamp":
        assert isinstance(value, datetime) and value.tzinfo is not None, path
    elif kind == "blob":
        assert isinstance(value, bytes), path


@pytest.fixture(autouse=True)
def outputs_follow_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every answer of every Store in these tests is checked against the operation's output shape."""
    from curation.local.validate import operation_model

    original = Store.call

    def call(self: Store, operation_name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        out = original(self, operation_name, params)
        _conforms(operation_model(operation_name).output_shape, out, operation_name)
        return out

    monkeypatch.setattr(Store, "call", call)


def reference(name: str = "ct-2025-htj2k-1-instance.json") -> dict[str, Any]:
    return read_document(str(REFERENCE / name))


def with_series(document: dict[str, Any], suffix: str) -> dict[str, Any]:
    """The document with its (single) series and its instances renamed: another series of the same study (a SOP
    instance belongs to one primary image set, so the instances are new too)."""
    document = copy.deepcopy(document)
    (old_uid, node), *_ = document["Study"]["Series"].items()
    new_uid = f"{old_uid}.{suffix}"
    node["DICOM"]["SeriesInstanceUID"] = new_uid
    renamed = {}
    for sop_uid, instance in node.get("Instances", {}).items():
        if "SOPInstanceUID" in instance.get("DICOM", {}):
            instance["DICOM"]["SOPInstanceUID"] = f"{sop_uid}.{suffix}"
        renamed[f"{sop_uid}.{suffix}"] = instance
    node["Instances"] = renamed
    document["Study"]["Series"] = {new_uid: node}
    document["ImageSetID"] = "0" * 32
    return document


def another_copy(document: dict[str, Any], number: int = 1) -> dict[str, Any]:
    """The same content under another ImageSetID: a different document, so an import does not skip it."""
    document = copy.deepcopy(document)
    document["ImageSetID"] = f"{number:x}".rjust(32, "c")
    return document


def blob(payload: dict[str, Any]) -> bytes:
    return json.dumps({"SchemaVersion": 1.1, **payload}).encode()


def study_update(datastore_id: str, image_set_id: str, version: str, description: str, **extra: Any) -> dict:
    return {
        "datastoreId": datastore_id,
        "imageSetId": image_set_id,
        "latestVersionId": version,
        "updateImageSetMetadataUpdates": {
            "DICOMUpdates": {"updatableAttributes": blob({"Study": {"DICOM": {"StudyDescription": description}}})}
        },
        **extra,
    }


def metadata(store: Store, datastore_id: str, image_set_id: str, version: str | None = None) -> dict[str, Any]:
    params = {"datastoreId": datastore_id, "imageSetId": image_set_id}
    if version is not None:
        params["versionId"] = version
    out = store.call("GetImageSetMetadata", params)
    assert out["contentEncoding"] == "gzip" and out["contentType"] == "application/json"
    return json.loads(gzip.decompress(out["imageSetMetadataBlob"]))


def get(store: Store, datastore_id: str, image_set_id: str, **extra: Any) -> dict[str, Any]:
    return store.call("GetImageSet", {"datastoreId": datastore_id, "imageSetId": image_set_id, **extra})


def wait_active(store: Store, datastore_id: str, image_set_id: str) -> dict[str, Any]:
    for _ in range(2000):
        out = get(store, datastore_id, image_set_id)
        if out["imageSetState"] == "ACTIVE":
            return out
        time.sleep(0.01)
    raise AssertionError("image set stayed LOCKED")


def snapshot(store_path: Path) -> list[Any]:
    """Everything the store holds, for before/after comparisons."""
    with sqlite3.connect(store_path / "store.sqlite3") as conn:
        tables = ["datastores", "image_sets", "versions", "image_set_series", "frame_refs", "frames", "tags"]
        return [sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr) for table in tables]


def raises(code: str, call: Any, *args: Any, match: str | None = None) -> AHIError:
    with pytest.raises(AHIError) as info:
        call(*args)
    assert info.value.code == code, info.value
    if match is not None:
        assert match in info.value.message
    return info.value


def check_consistent(store_path: Path) -> int:
    """Assert the store is intact: every latest document parses and versions are 1..latest. Returns #versions."""
    conn = sqlite3.connect(store_path / "store.sqlite3")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        total = 0
        for image_set_id, latest in conn.execute("SELECT image_set_id, latest_version FROM image_sets").fetchall():
            numbers = [
                row[0]
                for row in conn.execute(
                    "SELECT version FROM versions WHERE image_set_id = ? ORDER BY version", (image_set_id,)
                )
            ]
            assert numbers == list(range(1, latest + 1))
            (document,) = conn.execute(
                "SELECT document FROM versions WHERE image_set_id = ? AND version = ?", (image_set_id, latest)
            ).fetchone()
            assert json.loads(gzip.decompress(document))["ImageSetID"] == image_set_id
            total += len(numbers)
        return total
    finally:
        conn.close()


class Clock:
    """A clock tests move by hand (epoch seconds); every reading advances it by ``tick``, so no two events
    share a millisecond and orderings by time never tie, however loaded the machine is."""

    def __init__(self, start: float = 1_767_225_600.0, tick: float = 0.001) -> None:
        self.now, self.tick = start, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store(store_path: Path) -> Store:
    """A fresh store on an injected clock (so search orders by time are deterministic)."""
    return Store(store_path, clock=Clock())


@pytest.fixture
def loaded(store: Store) -> tuple[Store, str, dict[str, str]]:
    """A store with the three reference documents imported: (store, datastore id, {file stem: image set id})."""
    names = sorted(p.name for p in REFERENCE.glob("*.json"))
    report = store.import_documents([reference(name) for name in names])
    assert not report.failures
    return (
        store,
        report.datastore_id,
        {name.removesuffix(".json"): i for name, i in zip(names, report.created, strict=True)},
    )


# ------------------------------------------------------------------ datastores


def test_datastore_lifecycle_and_paging(store: Store) -> None:
    created = store.call("CreateDatastore", {"datastoreName": "alpha", "clientToken": "t-1", "tags": {"k": "v"}})
    assert created["datastoreStatus"] == "CREATING" and ID.fullmatch(created["datastoreId"])
    again = store.call("CreateDatastore", {"datastoreName": "alpha", "clientToken": "t-1"})
    assert again["datastoreId"] == created["datastoreId"]  # idempotent on clientToken
    props = store.call("GetDatastore", {"datastoreId": created["datastoreId"]})["datastoreProperties"]
    assert props["datastoreStatus"] == "ACTIVE" and props["datastoreName"] == "alpha"
    assert props["datastoreArn"].endswith(f":datastore/{created['datastoreId']}")
    assert props["createdAt"].tzinfo is not None
    arn = props["datastoreArn"]
    assert store.call("ListTagsForResource", {"resourceArn": arn}) == {"tags": {"k": "v"}}

    ids = [created["datastoreId"]] + [
        store.call("CreateDatastore", {"datastoreName": f"ds{i}", "clientToken": f"c{i}"})["datastoreId"]
        for i in range(4)
    ]
    seen, token = [], None
    while True:
        params: dict[str, Any] = {"maxResults": 2}
        if token:
            params["nextToken"] = token
        page = store.call("ListDatastores", params)
        assert len(page["datastoreSummaries"]) <= 2
        seen += [d["datastoreId"] for d in page["datastoreSummaries"]]
        token = page.get("nextToken")
        if not token:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5

    assert store.call("DeleteDatastore", {"datastoreId": ids[1]})["datastoreStatus"] == "DELETING"
    gone = store.call("GetDatastore", {"datastoreId": ids[1]})["datastoreProperties"]
    assert gone["datastoreStatus"] == "DELETED"
    active = store.call("ListDatastores", {"datastoreStatus": "ACTIVE"})["datastoreSummaries"]
    assert ids[1] not in {d["datastoreId"] for d in active} and len(active) == 4
    raises("ResourceNotFoundException", store.call, "SearchImageSets", {"datastoreId": ids[1]})
    raises("ResourceNotFoundException", store.call, "GetDatastore", {"datastoreId": "f" * 32})
    raises("ValidationException", store.call, "ListDatastores", {"maxResults": 51})
    raises("ValidationException", store.call, "ListDatastores", {"nextToken": "garbage"})


def test_delete_datastore_refused_while_it_holds_image_sets(loaded: tuple) -> None:
    store, datastore_id, ids = loaded
    error = raises("ConflictException", store.call, "DeleteDatastore", {"datastoreId": datastore_id})
    assert "3 image set" in error.message
    for image_set_id in ids.values():
        store.call("DeleteImageSet", {"datastoreId": datastore_id, "imageSetId": image_set_id})
    assert store.call("DeleteDatastore", {"datastoreId": datastore_id})["datastoreStatus"] == "DELETING"


# ------------------------------------------------------------------ import and reading


def test_import_reference_documents_keeps_content_and_ids(loaded: tuple) -> None:
    store, datastore_id, ids = loaded
    for stem, image_set_id in ids.items():
        original = reference(stem + ".json")
        assert image_set_id == original["ImageSetID"]  # free in the store: kept
        served = metadata(store, datastore_id, image_set_id)
        assert served == {**original, "DatastoreID": datastore_id}
        props = get(store, datastore_id, image_set_id)
        assert props["imageSetState"] == "ACTIVE" and props["imageSetWorkflowStatus"] == "CREATED"
        assert props["isPrimary"] is True and props["versionId"] == "1"
        assert props["imageSetArn"] == f"{store.datastore_arn(datastore_id)}/imageset/{image_set_id}"
    # the same document again: already imported, skipped and reported as such
    again = store.import_documents([reference("us-doppler-9-instances.json")])
    assert not again.created and again.skipped == [(original_id := ids["us-doppler-9-instances"], original_id)]
    # the same content under another ImageSetID: a new, non-primary image set (its series has a primary one)
    report = store.import_documents([another_copy(reference("us-doppler-9-instances.json"))])
    (copy_id,) = report.created
    assert report.datastore_id == datastore_id and copy_id != ids["us-doppler-9-instances"]
    assert get(store, datastore_id, copy_id)["isPrimary"] is False
    bad = store.import_documents([b"not json", {"SchemaVersion": "1.1"}])
    assert not bad.created and len(bad.failures) == 2


def test_import_into_named_or_new_datastore(store_path: Path) -> None:
    store = Store(store_path)
    report = store.import_documents([reference()])
    assert store.call("GetDatastore", {"datastoreId": report.datastore_id})["datastoreProperties"]["datastoreName"] == (
        "local"
    )
    other = store.call("CreateDatastore", {"datastoreName": "other", "clientToken": "x"})["datastoreId"]
    with pytest.raises(AHIError):  # two datastores: the caller must choose
        store.import_documents([reference()])
    assert store.import_documents([reference()], datastore_id=other).datastore_id == other
    raises("ResourceNotFoundException", store.import_documents, [reference()], "e" * 32)


def test_metadata_versions_and_refusals(loaded: tuple) -> None:
    store, datastore_id, ids = loaded
    image_set_id = ids["ct-2025-htj2k-1-instance"]
    store.call("UpdateImageSetMetadata", study_update(datastore_id, image_set_id, "1", "changed"))
    assert metadata(store, datastore_id, image_set_id)["Study"]["DICOM"]["StudyDescription"] == "changed"
    assert metadata(store, datastore_id, image_set_id, "1") == {**reference(), "DatastoreID": datastore_id}
    raises("ResourceNotFoundException", metadata, store, datastore_id, image_set_id, "3")
    raises("ResourceNotFoundException", metadata, store, datastore_id, "a" * 32)
    raises("ResourceNotFoundException", metadata, store, "b" * 32, image_set_id)
    raises("ValidationException", metadata, store, datastore_id, "NOT-AN-ID")
    raises("ValidationException", store.call, "GetImageSetMetadata", {"datastoreId": datastore_id})
    raises("ValidationException", store.call, "GetImageSet", {**_ids(datastore_id, image_set_id), "bogus": 1})
    raises("ValidationException", store.call, "NoSuchOperation", {})


def _ids(datastore_id: str, image_set_id: str) -> dict[str, str]:
    return {"datastoreId": datastore_id, "imageSetId": image_set_id}


def test_metadata_not_consistent_right_after_import(store_path: Path) -> None:
    clock = Clock()
    store = Store(store_path, consistency_seconds=0.3, clock=clock)
    report = store.import_documents([reference()])
    (image_set_id,) = report.created
    raises("ConflictException", metadata, store, report.datastore_id, image_set_id, match=NOT_CONSISTENT)
    assert get(store, report.datastore_id, image_set_id)["imageSetState"] == "ACTIVE"  # properties are readable
    clock.advance(0.3)
    assert metadata(store, report.datastore_id, image_set_id)["ImageSetID"] == image_set_id


def test_import_dicom_files_frames_and_series_grouping(store: Store, tmp_path: Path) -> None:
    source = PYDICOM_FILES / "CT_small.dcm"
    report = store.import_paths([source])
    assert report.failures == [] and len(report.created) == 1
    datastore_id, (image_set_id,) = report.datastore_id, report.created
    document = metadata(store, datastore_id, image_set_id)
    assert get(store, datastore_id, image_set_id)["isPrimary"] is True
    ((_, sop_uid, instance),) = iter_instances(document)
    frame_id = instance["ImageFrames"][0]["ID"]
    frame = store.call(
        "GetImageFrame", {**_ids(datastore_id, image_set_id), "imageFrameInformation": {"imageFrameId": frame_id}}
    )
    from curation.local.ingest import read_instance

    assert frame["imageFrameBlob"] == read_instance(str(source)).frames[frame_id]
    assert frame["contentType"]
    raises(
        "ResourceNotFoundException",
        store.call,
        "GetImageFrame",
        {**_ids(datastore_id, image_set_id), "imageFrameInformation": {"imageFrameId": "c" * 32}},
    )

    # the same file again: nothing changes
    again = store.import_paths([source])
    assert again.created == [] and again.updated == [] and again.failures == []
    # another instance of the same series joins the primary image set as version 2
    dataset = pydicom.dcmread(source)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = sop_uid + ".2"
    dataset.InstanceNumber = 2
    dataset.save_as(tmp_path / "second.dcm")
    # the same instance with other content cannot join: a new non-primary image set
    dataset = pydicom.dcmread(source)
    dataset.ImageComments = "a different acquisition of the same SOP instance"
    dataset.save_as(tmp_path / "conflict.dcm")
    (tmp_path / "notes.txt").write_text("not DICOM")
    report = store.import_paths([tmp_path / "second.dcm"])
    assert report.updated == [image_set_id] and report.created == []
    assert get(store, datastore_id, image_set_id)["versionId"] == "2"
    assert len(list(iter_instances(metadata(store, datastore_id, image_set_id)))) == 2
    report = store.import_paths([tmp_path / "conflict.dcm", tmp_path / "notes.txt"])
    (duplicate,) = report.created
    assert get(store, datastore_id, duplicate)["isPrimary"] is False
    assert [Path(p).name for p, _ in report.failures] == ["notes.txt"]
    # frames are per image set: the duplicate's frame is served from it, not from an unrelated image set
    other = store.import_paths([PYDICOM_FILES / "MR_small.dcm"]).created[0]
    raises(
        "ResourceNotFoundException",
        store.call,
        "GetImageFrame",
        {**_ids(datastore_id, other), "imageFrameInformation": {"imageFrameId": frame_id}},
    )


# ------------------------------------------------------------------ updates, versions, locks


def test_update_lock_then_updated(store_path: Path) -> None:
    clock = Clock()
    store = Store(store_path, lock_seconds=0.2, clock=clock)
    report = store.import_documents([reference()])
    datastore_id, (image_set_id,) = report.datastore_id, report.created
    out = store.call("UpdateImageSetMetadata", study_update(datastore_id, image_set_id, "1", "first"))
    assert (out["imageSetState"], out["imageSetWorkflowStatus"], out["latestVersionId"]) == ("LOCKED", "UPDATING", "2")
    assert out["updatedAt"].tzinfo is not None
    assert get(store, datastore_id, image_set_id)["imageSetState"] == "LOCKED"
    clock.advance(0.2)
    props = get(store, datastore_id, image_set_id)
    assert props["imageSetState"] == "ACTIVE"
    assert props["imageSetWorkflowStatus"] == "UPDATED" and props["versionId"] == "2"
    assert "message" not in props and "overrides" not in props


def test_writes_while_locked_are_conflicts(store_path: Path) -> None:
    store = Store(store_path, lock_seconds=600)
    report = store.import_documents([reference(), with_series(reference(), "9")])
    datastore_id, (image_set_id, other_id) = report.datastore_id, report.created
    store.call("UpdateImageSetMetadata", study_update(datastore_id, image_set_id, "1", "first"))
    props = get(store, datastore_id, image_set_id)
    assert (props["imageSetState"], props["imageSetWorkflowStatus"]) == ("LOCKED", "UPDATING")
    before = snapshot(store_path)
    raises(
        "ConflictException",
        store.call,
        "UpdateImageSetMetadata",
        study_update(datastore_id, image_set_id, "2", "second"),
    )
    raises("ConflictException", store.call, "DeleteImageSet", _ids(datastore_id, image_set_id))
    copy_params = {
        "datastoreId": datastore_id,
        "sourceImageSetId": image_set_id,
        "copyImageSetInformation": {"sourceImageSet": {"latestVersionId": "2"}},
    }
    raises("ConflictException", store.call, "CopyImageSet", copy_params)
    assert snapshot(store_path) == before
    # a second Store object (another process, say) sees the same lock: it is stored, not in memory
    raises(
        "ConflictException",
        Store(store_path).call,
        "UpdateImageSetMetadata",
        study_update(datastore_id, image_set_id, "2", "second"),
    )
    assert metadata(store, datastore_id, image_set_id)["Study"]["DICOM"]["StudyDescription"] == "first"
    assert get(store, datastore_id, other_id)["imageSetState"] == "ACTIVE"


def test_stale_version_is_not_found_and_changes_nothing(loaded: tuple, store_path: Path) -> None:
    store, datastore_id, ids = loaded
    image_set_id = ids["ct-2025-htj2k-1-instance"]
    store.call("UpdateImageSetMetadata", study_update(datastore_id, image_set_id, "1", "first"))
    before = snapshot(store_path)
    raises(
        "ResourceNotFoundException",
        store.call,
        "UpdateImageSetMetadata",
        study_update(datastore_id, image_set_id, "1", "stale"),
        match=STALE_VERSION,
    )
    raises(
        "ResourceNotFoundException",
        store.call,
        "UpdateImageSetMetadata",
        study_update(datastore_id, image_set_id, "7", "future"),
        match=STALE_VERSION,
    )
    assert snapshot(store_path) == before


def test_bad_requests_leave_the_store_unchanged(loaded: tuple, store_path: Path) -> None:
    store, datastore_id, ids = loaded
    image_set_id = ids["us-doppler-9-instances"]
    series_uid = next(iter(reference("us-doppler-9-instances.json")["Study"]["Series"]))
    before = snapshot(store_path)

    def update(updates: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            **_ids(datastore_id, image_set_id),
            "latestVersionId": "1",
            "updateImageSetMetadataUpdates": updates,
            **extra,
        }

    bad_calls = [
        ("ValidationException", update({"DICOMUpdates": {"updatableAttributes": b"{not json"}})),
        (
            "ValidationException",
            update(
                {
                    "DICOMUpdates": {
                        "updatableAttributes": blob({"Patient": {"DICOM": {"StudyDescription": "wrong level"}}})
                    }
                }
            ),
        ),
        (
            "ValidationException",
            update(
                {
                    "DICOMUpdates": {
                        "updatableAttributes": blob(
                            {"Study": {"Series": {"1.2.3.999": {"DICOM": {"SeriesDescription": "no such series"}}}}}
                        )
                    }
                }
            ),
        ),
        (
            "ValidationException",
            update(
                {
                    "DICOMUpdates": {
                        "updatableAttributes": blob({"Study": {"Series": {series_uid: {"DICOM": {"Modality": "CT"}}}}})
                    }
                }
            ),
        ),  # series level of a primary
        (
            "ValidationException",
            update(
                {
                    "DICOMUpdates": {"updatableAttributes": blob({"Study": {"DICOM": {"StudyDescription": "x"}}})},
                    "revertToVersionId": "1",
                }
            ),
        ),
        ("ValidationException", update({"DICOMUpdates": {}})),
        ("ValidationException", update({"DICOMUpdates": {"updatableAttributes": b"x" * 30001}})),
        ("ValidationException", update({"revertToVersionId": "1"}, includeStudyImageSets=True)),
        ("ValidationException", {**update({"revertToVersionId": "1"}), "latestVersionId": "one"}),
        ("ValidationException", {**update({"revertToVersionId": "1"}), "imageSetId": "X" * 32}),
        ("ValidationException", {k: v for k, v in update({"revertToVersionId": "1"}).items() if k != "datastoreId"}),
        ("ResourceNotFoundException", {**update({"revertToVersionId": "1"}), "imageSetId": "0" * 32}),
        ("ResourceNotFoundException", {**update({"revertToVersionId": "1"}), "datastoreId": "0" * 32}),
    ]
    for code, params in bad_calls:
        raises(code, store.call, "UpdateImageSetMetadata", params)
    raises(
        "ValidationException",
        store.call,
        "CopyImageSet",
        {
            "datastoreId": datastore_id,
            "sourceImageSetId": image_set_id,
            "copyImageSetInformation": {
                "sourceImageSet": {"latestVersionId": "1", "DICOMCopies": {"copiableAttributes": "{nope"}}
            },
        },
    )
    raises("ValidationException", store.call, "SearchImageSets", {"datastoreId": datastore_id, "maxResults": 0})
    raises("ResourceNotFoundException", store.call, "DeleteImageSet", _ids(datastore_id, "0" * 32))
    assert snapshot(store_path) == before


def test_revert_creates_a_new_version(loaded: tuple) -> None:
    store, datastore_id, ids = loaded
    image_set_id = ids["ct-2025-htj2k-1-instance"]
    original = metadata(store, datastore_id, image_set_id)
    store.call("UpdateImageSetMetadata", study_update(datastore_id, image_set_id, "1", "one"))
    store.call("UpdateImageSetMetadata", study_update(datastore_id, image_set_id, "2", "two"))
    out = store.call(
        "UpdateImageSetMetadata",
        {
            **_ids(datastore_id, image_set_id),
            "latestVersionId": "3",
            "updateImageSetMetadataUpdates": {"revertToVersionId": "1"},
        },
    )
    assert out["latestVersionId"] == "4"
    assert metadata(store, datastore_id, image_set_id) == original
    assert metadata(store, datastore_id, image_set_id, "3")["Study"]["DICOM"]["StudyDescription"] == "two"
    raises(
        "ResourceNotFoundException",
        store.call,
        "UpdateImageSetMetadata",
        {
            **_ids(datastore_id, image_set_id),
            "latestVersionId": "4",
            "updateImageSetMetadataUpdates": {"revertToVersionId": "9"},
        },
    )
    versions = store.call("ListImageSetVersions", _ids(datastore_id, image_set_id))["imageSetPropertiesList"]
    assert [v["versionId"] for v in versions] == ["4", "3", "2", "1"]
    assert [v["ImageSetWorkflowStatus"] for v in versions] == ["UPDATED", "UPDATED", "UPDATED", "CREATED"]
    pages, token = [], None
    while True:
        params = {**_ids(datastore_id, image_set_id), "maxResults": 3}
        if token:
            params["nextToken"] = token
        page = store.call("ListImageSetVersions", params)
        pages.append([v["versionId"] for v in page["imageSetPropertiesList"]])
        token = page.get("nextToken")
        if not token:
            break
    assert pages == [["4", "3", "2"], ["1"]]
    assert get(store, datastore_id, image_set_id, versionId="2")["imageSetState"] == "ACTIVE"


def test_failed_updates_consume_a_version_and_keep_the_document(loaded: tuple) -> None:
    store, datastore_id, ids = loaded
    image_set_id = ids["ct-2025-htj2k-1-instance"]
    original = metadata(store, datastore_id, image_set_id)
    store.fail_next_updates(1, "INTERNAL_ERROR: disk on fire")
    out = store.call("UpdateImageSetMetadata", study_update(datastore_id, image_set_id, "1", "lost"))
    assert out["latestVersionId"] == "2"
    props = wait_active(store, datastore_id, image_set_id)
    assert props["imageSetWorkflowStatus"] == "UPDATE_FAILED" and props["message"] == "INTERNAL_ERROR: disk on fire"
    assert metadata(store, datastore_id, image_set_id) == original
    store.call("UpdateImageSetMetadata", study_update(datastore_id, image_set_id, "2", "kept"))
    assert get(store, datastore_id, image_set_id)["imageSetWorkflowStatus"] == "UPDATED"
    assert metadata(store, datastore_id, image_set_id)["Study"]["DICOM"]["StudyDescription"] == "kept"


def test_forced_update_records_overrides(loaded: tuple) -> None:
    store, datastore_id, _ = loaded
    duplicate = store.import_documents([another_copy(reference())]).created[0]  # non-primary: force may apply
    ((series_uid, sop_uid, _),) = iter_instances(reference())
    payload = {
        "Study": {
            "Series": {
                series_uid: {"Instances": {sop_uid: {"DICOM": {"001910F9": "97"}, "DICOMVRs": {"001910F9": "DS"}}}}
            }
        }
    }
    params = {
        **_ids(datastore_id, duplicate),
        "latestVersionId": "1",
        "updateImageSetMetadataUpdates": {"DICOMUpdates": {"updatableAttributes": blob(payload)}},
    }
    raises("ValidationException", store.call, "UpdateImageSetMetadata", params)  # needs force
    store.call("UpdateImageSetMetadata", {**params, "force": True})
    props = get(store, datastore_id, duplicate)
    assert props["overrides"] == {"forced": True}
    instance = metadata(store, datastore_id, duplicate)["Study"]["Series"][series_uid]["Instances"][sop_uid]
    assert instance["DICOM"]["001910F9"] == "97"
    assert "overrides" not in get(store, datastore_id, duplicate, versionId="1")


def test_include_study_image_sets_is_atomic(store_path: Path) -> None:
    now = [1_000_000.0]
    store = Store(store_path, lock_seconds=600, clock=lambda: now[0])
    base = reference()
    description = base["Study"]["DICOM"]["StudyDescription"] = "CT of a phantom"
    odd = with_series(base, "3")
    report = store.import_documents([base, with_series(base, "1"), with_series(base, "2"), another_copy(base), odd])
    datastore_id, (target, sibling, sibling2, non_primary, odd_sibling) = report.datastore_id, report.created
    assert [get(store, datastore_id, i)["isPrimary"] for i in report.created] == [True, True, True, False, True]
    # a primary made inconsistent with its study by a plain Study-level update (imports of inconsistent data
    # land non-primary): the study-wide removal below cannot apply to it
    store.call("UpdateImageSetMetadata", study_update(datastore_id, odd_sibling, "1", "another description"))
    now[0] += 601

    # a sibling where the update cannot apply refuses the whole call (removal must match its value)
    before = snapshot(store_path)
    remove = {
        **_ids(datastore_id, target),
        "latestVersionId": "1",
        "includeStudyImageSets": True,
        "updateImageSetMetadataUpdates": {
            "DICOMUpdates": {"removableAttributes": blob({"Study": {"DICOM": {"StudyDescription": description}}})}
        },
    }
    raises("ValidationException", store.call, "UpdateImageSetMetadata", remove)
    assert snapshot(store_path) == before

    out = store.call(
        "UpdateImageSetMetadata", study_update(datastore_id, target, "1", "study-wide", includeStudyImageSets=True)
    )
    assert out["latestVersionId"] == "2" and out["imageSetWorkflowStatus"] == "UPDATING"
    for image_set_id, version in ((sibling, "2"), (sibling2, "2"), (odd_sibling, "3")):
        props = get(store, datastore_id, image_set_id)
        assert props["versionId"] == version
        assert (props["imageSetState"], props["imageSetWorkflowStatus"]) == ("LOCKED", "UPDATING_FOR_STUDY_CONSISTENCY")
        assert metadata(store, datastore_id, image_set_id)["Study"]["DICOM"]["StudyDescription"] == "study-wide"
    assert get(store, datastore_id, non_primary)["versionId"] == "1"
    assert metadata(store, datastore_id, non_primary)["Study"]["DICOM"]["StudyDescription"] == description

    # a locked sibling refuses the next study-wide update: nothing is written anywhere
    other = Store(store_path.parent / "other", lock_seconds=600)
    report = other.import_documents([base, with_series(base, "1")])
    datastore_id, (first, second) = report.datastore_id, report.created
    other.call("UpdateImageSetMetadata", study_update(datastore_id, second, "1", "busy"))
    before = snapshot(store_path.parent / "other")
    raises(
        "ConflictException",
        other.call,
        "UpdateImageSetMetadata",
        study_update(datastore_id, first, "1", "study-wide", includeStudyImageSets=True),
    )
    assert snapshot(store_path.parent / "other") == before


# ------------------------------------------------------------------ search


def variant(
    number: int, *, patient: str, accession: str, study: str, date: str, time_of_day: str, study_id: str = ""
) -> dict:
    document = with_series(reference(), str(number))
    document["Patient"]["DICOM"]["PatientID"] = patient
    document["Study"]["DICOM"].update(
        {
            "AccessionNumber": accession,
            "StudyInstanceUID": study,
            "StudyID": study_id or f"S{number}",
            "StudyDate": date,
            "StudyTime": time_of_day,
        }
    )
    return document


@pytest.fixture
def searchable(store: Store) -> tuple[Store, str, list[str]]:
    documents = [
        variant(0, patient="P1", accession="A0", study="1.2.3.1", date="20200101", time_of_day="080000"),
        # the same study as set 0, so the same Study-level values (else it would be imported non-primary)
        variant(1, patient="P1", accession="A0", study="1.2.3.1", date="20200101", time_of_day="080000", study_id="S0"),
        variant(2, patient="P2", accession="A2", study="1.2.3.2", date="20210615", time_of_day="120000.5"),
        variant(3, patient="P3", accession="A3", study="1.2.3.3", date="20221231", time_of_day="2359"),
        variant(4, patient="P3", accession="A4", study="1.2.3.4", date="19991122", time_of_day=""),
    ]
    report = store.import_documents(documents)
    duplicate = store.import_documents([another_copy(documents[0])]).created[0]  # a non-primary copy of set 0
    return store, report.datastore_id, [*report.created, duplicate]


def search(store: Store, datastore_id: str, *filters: dict, sort: dict | None = None, **extra: Any) -> list[str]:
    criteria: dict[str, Any] = {}
    if filters:
        criteria["filters"] = list(filters)
    if sort:
        criteria["sort"] = sort
    params: dict[str, Any] = {"datastoreId": datastore_id, **extra}
    if criteria:
        params["searchCriteria"] = criteria
    out = store.call("SearchImageSets", params)
    return [summary["imageSetId"] for summary in out["imageSetsMetadataSummaries"]]


def equal(**value: Any) -> dict:
    return {"operator": "EQUAL", "values": [value]}


def between(key: str, low: Any, high: Any) -> dict:
    return {"operator": "BETWEEN", "values": [{key: low}, {key: high}]}


def test_search_filters(searchable: tuple) -> None:
    store, datastore_id, ids = searchable
    assert set(search(store, datastore_id)) == set(ids)
    assert set(search(store, datastore_id, equal(DICOMPatientId="P1"))) == {ids[0], ids[1], ids[5]}
    assert search(store, datastore_id, equal(DICOMAccessionNumber="A2")) == [ids[2]]
    assert search(store, datastore_id, equal(DICOMStudyId="S3")) == [ids[3]]
    assert set(search(store, datastore_id, equal(DICOMStudyInstanceUID="1.2.3.1"))) == {ids[0], ids[1], ids[5]}
    series_uid = next(iter(metadata(store, datastore_id, ids[4])["Study"]["Series"]))
    assert search(store, datastore_id, equal(DICOMSeriesInstanceUID=series_uid)) == [ids[4]]
    assert search(store, datastore_id, equal(isPrimary=False)) == [ids[5]]
    assert set(search(store, datastore_id, equal(DICOMPatientId="P1"), equal(isPrimary=True))) == {ids[0], ids[1]}
    dates = between(
        "DICOMStudyDateAndTime",
        {"DICOMStudyDate": "20200101", "DICOMStudyTime": "090000"},
        {"DICOMStudyDate": "20221231"},
    )
    assert search(store, datastore_id, dates) == [ids[2]]  # the end is midnight: 23:59 on the 31st is after it
    assert search(store, datastore_id, equal(DICOMStudyDateAndTime={"DICOMStudyDate": "19991122"})) == [ids[4]]
    summary = store.call(
        "SearchImageSets",
        {"datastoreId": datastore_id, "searchCriteria": {"filters": [equal(DICOMAccessionNumber="A3")]}},
    )["imageSetsMetadataSummaries"][0]
    assert summary["version"] == 1 and summary["isPrimary"] is True
    assert summary["DICOMTags"]["DICOMPatientId"] == "P3" and summary["DICOMTags"]["DICOMStudyTime"] == "2359"
    assert summary["DICOMTags"]["DICOMNumberOfStudyRelatedInstances"] == 1
    now = datetime.fromtimestamp(store.db.clock(), UTC)  # the store's (injected) clock
    assert set(search(store, datastore_id, between("createdAt", now - timedelta(hours=1), now))) == set(ids)
    assert search(store, datastore_id, between("updatedAt", now, now + timedelta(hours=1))) == []
    store.call("UpdateImageSetMetadata", study_update(datastore_id, ids[3], "1", "new"))
    assert search(store, datastore_id, between("updatedAt", now, now + timedelta(hours=1))) == [ids[3]]
    created = get(store, datastore_id, ids[0])["createdAt"]  # a BETWEEN on a returned timestamp finds it
    assert ids[0] in search(store, datastore_id, between("createdAt", created, created))
    for bad in (
        [equal(DICOMPatientId="P1"), equal(isPrimary=True), equal(DICOMStudyId="S1")],  # at most two filters
        [{"operator": "EQUAL", "values": [{"DICOMPatientId": "P1"}, {"DICOMPatientId": "P2"}]}],
        [between("DICOMPatientId", "P1", "P3")],
        [{"operator": "BETWEEN", "values": [{"createdAt": now}]}],
        [{"operator": "EQUAL", "values": [{"DICOMPatientId": "P1", "DICOMStudyId": "S1"}]}],  # a union
        [{"operator": "LIKE", "values": [{"DICOMPatientId": "P1"}]}],
    ):
        raises(
            "ValidationException",
            store.call,
            "SearchImageSets",
            {"datastoreId": datastore_id, "searchCriteria": {"filters": bad}},
        )


def test_search_sort_and_stable_paging(searchable: tuple) -> None:
    store, datastore_id, ids = searchable
    store.call("UpdateImageSetMetadata", study_update(datastore_id, ids[2], "1", "touched"))
    assert search(store, datastore_id)[0] == ids[2]  # default: updatedAt DESC
    by_date = search(store, datastore_id, sort={"sortField": "DICOMStudyDateAndTime", "sortOrder": "ASC"})
    assert by_date[0] == ids[4] and by_date[-2:] == [ids[2], ids[3]]
    created = search(store, datastore_id, sort={"sortField": "createdAt", "sortOrder": "ASC"})
    assert created == ids  # imported in this order
    out = store.call(
        "SearchImageSets",
        {"datastoreId": datastore_id, "searchCriteria": {"sort": {"sortField": "createdAt", "sortOrder": "DESC"}}},
    )
    assert out["sort"] == {"sortField": "createdAt", "sortOrder": "DESC"}

    # page one by one while image sets are added and updated: no duplicates, nothing that was there is lost
    criteria = {"sort": {"sortField": "createdAt", "sortOrder": "ASC"}}
    seen: list[str] = []
    token = None
    while True:
        params: dict[str, Any] = {"datastoreId": datastore_id, "searchCriteria": criteria, "maxResults": 2}
        if token:
            params["nextToken"] = token
        page = store.call("SearchImageSets", params)
        assert len(page["imageSetsMetadataSummaries"]) <= 2
        seen += [s["imageSetId"] for s in page["imageSetsMetadataSummaries"]]
        token = page.get("nextToken")
        if not token:
            break
        store.import_documents([with_series(reference(), f"late{len(seen)}")])
    assert len(seen) == len(set(seen)) and seen[: len(ids)] == ids
    # a token only works for the request it was issued for
    page = store.call("SearchImageSets", {"datastoreId": datastore_id, "maxResults": 1})
    raises(
        "ValidationException",
        store.call,
        "SearchImageSets",
        {
            "datastoreId": datastore_id,
            "maxResults": 1,
            "nextToken": page["nextToken"],
            "searchCriteria": {"filters": [equal(isPrimary=True)]},
        },
    )
    raises(
        "ValidationException", store.call, "SearchImageSets", {"datastoreId": datastore_id, "nextToken": "not-a-token"}
    )
    raises("ValidationException", store.call, "SearchImageSets", {"datastoreId": datastore_id, "maxResults": 51})


# ------------------------------------------------------------------ copy and delete


def copy_params(
    datastore_id: str,
    source: str,
    version: str = "1",
    *,
    copiable: dict | None = None,
    destination: tuple[str, str] | None = None,
    **extra: Any,
) -> dict:
    source_info: dict[str, Any] = {"latestVersionId": version}
    if copiable is not None:
        source_info["DICOMCopies"] = {"copiableAttributes": json.dumps({"SchemaVersion": "1.1", **copiable})}
    information: dict[str, Any] = {"sourceImageSet": source_info}
    if destination:
        information["destinationImageSet"] = {"imageSetId": destination[0], "latestVersionId": destination[1]}
    return {"datastoreId": datastore_id, "sourceImageSetId": source, "copyImageSetInformation": information, **extra}


def test_copy_to_new_image_set_and_subsets(store_path: Path) -> None:
    store = Store(store_path, lock_seconds=0.2)
    doppler = reference("us-doppler-9-instances.json")
    report = store.import_documents([doppler])
    datastore_id, (source,) = report.datastore_id, report.created
    series_uid = next(iter(doppler["Study"]["Series"]))
    sops = list(doppler["Study"]["Series"][series_uid]["Instances"])

    out = store.call("CopyImageSet", copy_params(datastore_id, source))
    destination = out["destinationImageSetProperties"]
    assert (destination["imageSetState"], destination["imageSetWorkflowStatus"]) == ("LOCKED", "COPYING")
    assert out["sourceImageSetProperties"]["imageSetWorkflowStatus"] == "COPYING_WITH_READ_ONLY_ACCESS"
    assert out["sourceImageSetProperties"]["latestVersionId"] == "1"
    full = destination["imageSetId"]
    assert get(store, datastore_id, source)["imageSetState"] == "LOCKED"
    assert wait_active(store, datastore_id, full)["imageSetWorkflowStatus"] == "COPIED"
    assert wait_active(store, datastore_id, source)["versionId"] == "1"
    assert get(store, datastore_id, full)["isPrimary"] is False
    assert metadata(store, datastore_id, full) == {**doppler, "DatastoreID": datastore_id, "ImageSetID": full}

    # a subset into a new image set, then another subset merged into it
    first = store.call(
        "CopyImageSet",
        copy_params(datastore_id, source, copiable={"Study": {"Series": {series_uid: {"Instances": {sops[0]: {}}}}}}),
    )
    part = first["destinationImageSetProperties"]["imageSetId"]
    wait_active(store, datastore_id, source)
    assert [sop for _, sop, _ in iter_instances(metadata(store, datastore_id, part))] == [sops[0]]
    wait_active(store, datastore_id, part)
    second = store.call(
        "CopyImageSet",
        copy_params(
            datastore_id,
            source,
            copiable={"Study": {"Series": {series_uid: {"Instances": {sops[1]: {}, sops[2]: {}}}}}},
            destination=(part, "1"),
        ),
    )
    assert second["destinationImageSetProperties"]["latestVersionId"] == "2"
    assert wait_active(store, datastore_id, part)["imageSetWorkflowStatus"] == "COPIED"
    assert {sop for _, sop, _ in iter_instances(metadata(store, datastore_id, part))} == set(sops[:3])

    wait_active(store, datastore_id, source)
    for bad in (
        {"Study": {"Series": {"9.9.9": {}}}},
        {"Study": {"Series": {series_uid: {"Instances": {"9.9.9": {}}}}}},
        {"Patient": {}},
    ):
        raises("ValidationException", store.call, "CopyImageSet", copy_params(datastore_id, source, copiable=bad))
    raises(
        "ResourceNotFoundException",
        store.call,
        "CopyImageSet",
        copy_params(datastore_id, source, "2"),
        match=STALE_VERSION,
    )
    raises(
        "ResourceNotFoundException",
        store.call,
        "CopyImageSet",
        copy_params(datastore_id, source, destination=(part, "1")),
        match=STALE_VERSION,
    )
    raises(
        "ResourceNotFoundException",
        store.call,
        "CopyImageSet",
        copy_params(datastore_id, source, destination=("d" * 32, "1")),
    )


def test_copy_into_inconsistent_destination_fails_unless_forced(loaded: tuple) -> None:
    store, datastore_id, ids = loaded
    source, destination = ids["us-doppler-9-instances"], ids["ct-2025-htj2k-1-instance"]
    before = metadata(store, datastore_id, destination)
    out = store.call("CopyImageSet", copy_params(datastore_id, source, destination=(destination, "1")))
    assert out["destinationImageSetProperties"]["latestVersionId"] == "2"
    props = get(store, datastore_id, destination)
    assert props["imageSetWorkflowStatus"] == "COPY_FAILED" and props["message"].startswith("INVALID_REQUEST")
    assert metadata(store, datastore_id, destination) == before  # a failed copy still consumed version 2

    store.call("CopyImageSet", copy_params(datastore_id, source, destination=(destination, "2"), force=True))
    props = get(store, datastore_id, destination)
    assert props["imageSetWorkflowStatus"] == "COPIED" and props["overrides"] == {"forced": True}
    merged = metadata(store, datastore_id, destination)
    assert merged["Patient"] == before["Patient"] and merged["Study"]["DICOM"] == before["Study"]["DICOM"]
    assert len(merged["Study"]["Series"]) == 2
    assert len(list(iter_instances(merged))) == 1 + 9


def test_promote_to_primary_needs_the_primary_gone(loaded: tuple) -> None:
    store, datastore_id, ids = loaded
    primary = ids["ct-2025-htj2k-1-instance"]
    copy_id = store.call("CopyImageSet", copy_params(datastore_id, primary))["destinationImageSetProperties"][
        "imageSetId"
    ]
    raises("ConflictException", store.call, "CopyImageSet", copy_params(datastore_id, copy_id, promoteToPrimary=True))
    raises(
        "ValidationException",
        store.call,
        "CopyImageSet",
        copy_params(datastore_id, copy_id, destination=(primary, "1"), promoteToPrimary=True),
    )
    out = store.call("DeleteImageSet", _ids(datastore_id, primary))
    assert (out["imageSetState"], out["imageSetWorkflowStatus"]) == ("LOCKED", "DELETING")
    promoted = store.call("CopyImageSet", copy_params(datastore_id, copy_id, promoteToPrimary=True))
    new_primary = promoted["destinationImageSetProperties"]["imageSetId"]
    assert new_primary not in (primary, copy_id)
    assert get(store, datastore_id, new_primary)["isPrimary"] is True


def test_delete_image_set(loaded: tuple) -> None:
    store, datastore_id, ids = loaded
    image_set_id = ids["ct-588-instances"]
    store.call("DeleteImageSet", _ids(datastore_id, image_set_id))
    props = get(store, datastore_id, image_set_id)
    assert (props["imageSetState"], props["imageSetWorkflowStatus"]) == ("DELETED", "DELETED")
    assert props["deletedAt"].tzinfo is not None
    assert image_set_id not in search(store, datastore_id)
    raises("ResourceNotFoundException", metadata, store, datastore_id, image_set_id)
    raises(
        "ResourceNotFoundException",
        store.call,
        "UpdateImageSetMetadata",
        study_update(datastore_id, image_set_id, "1", "x"),
    )
    raises("ResourceNotFoundException", store.call, "DeleteImageSet", _ids(datastore_id, image_set_id))
    # its series is free again: the same document imports as a primary image set (with a new id)
    (again,) = store.import_documents([reference("ct-588-instances.json")]).created
    assert again != image_set_id and get(store, datastore_id, again)["isPrimary"] is True


def test_unsupported_and_tag_operations(loaded: tuple) -> None:
    store, datastore_id, ids = loaded
    arn = store.datastore_arn(datastore_id, ids["ct-588-instances"])
    store.call("TagResource", {"resourceArn": arn, "tags": {"a": "1", "b": "2"}})
    store.call("UntagResource", {"resourceArn": arn, "tagKeys": ["a"]})
    assert store.call("ListTagsForResource", {"resourceArn": arn}) == {"tags": {"b": "2"}}
    raises(
        "ResourceNotFoundException",
        store.call,
        "ListTagsForResource",
        {"resourceArn": store.datastore_arn(datastore_id, "0" * 32)},
    )
    assert store.call("ListDICOMImportJobs", {"datastoreId": datastore_id}) == {"jobSummaries": []}
    raises(
        "ValidationException",
        store.call,
        "StartDICOMImportJob",
        {
            "datastoreId": datastore_id,
            "clientToken": "x",
            "dataAccessRoleArn": "arn:aws:iam::123456789012:role/r",
            "inputS3Uri": "s3://bucket/in",
            "outputS3Uri": "s3://bucket/out",
        },
    )


# ------------------------------------------------------------------ durability


def _concurrent_writer(store_path: str, datastore_id: str, image_set_id: str, worker: int, updates: int) -> int:
    """Chain ``updates`` updates onto one shared image set (retrying on races) and import one image set."""
    store = Store(store_path)
    store.import_documents([with_series(reference(), f"w{worker}")], datastore_id=datastore_id)
    retries = 0
    for number in range(updates):
        while True:
            latest = get(store, datastore_id, image_set_id)["versionId"]
            try:
                store.call(
                    "UpdateImageSetMetadata", study_update(datastore_id, image_set_id, latest, f"w{worker}-{number}")
                )
                break
            except AHIError as error:
                assert error.code in ("ResourceNotFoundException", "ConflictException"), error
                retries += 1
    return retries


def test_concurrent_writer_processes(store_path: Path) -> None:
    store = Store(store_path)
    report = store.import_documents([reference()])
    datastore_id, (image_set_id,) = report.datastore_id, report.created
    workers, updates = 4, 5
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        results = [
            pool.apply_async(_concurrent_writer, (str(store_path), datastore_id, image_set_id, worker, updates))
            for worker in range(workers)
        ]
        for result in results:
            result.get(timeout=120)
    props = get(store, datastore_id, image_set_id)
    assert props["versionId"] == str(1 + workers * updates)
    descriptions = {
        metadata(store, datastore_id, image_set_id, str(v))["Study"]["DICOM"].get("StudyDescription")
        for v in range(2, 2 + workers * updates)
    }
    assert descriptions == {f"w{w}-{n}" for w in range(workers) for n in range(updates)}  # no update was lost
    assert len(search(store, datastore_id)) == 1 + workers
    assert check_consistent(store_path) == 1 + workers * updates + workers


_WRITER = """
import os
import sys
from curation.model.document import read_document
from curation.local.store import Store
from tests.local.test_store import study_update, with_series, REFERENCE
store = Store(sys.argv[1])
big = read_document(str(REFERENCE / "ct-588-instances.json"))
number = 0
while True:
    number += 1
    report = store.import_documents([with_series(big, f"crash{os.getpid()}.{number}")])
    (image_set_id,) = report.created
    for version in range(1, 4):
        params = study_update(report.datastore_id, image_set_id, str(version), f"v{version}")
        store.call("UpdateImageSetMetadata", params)
"""


def test_killed_writer_leaves_the_store_consistent(store_path: Path) -> None:
    import subprocess
    import sys

    Store(store_path)  # schema and datastore exist before the writer starts
    Store(store_path).import_documents([reference()])
    root = Path(__file__).parents[2]
    for round_number in range(3):
        with sqlite3.connect(store_path / "store.sqlite3") as conn:
            target = conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0] + 4
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(store_path)], cwd=root)
        try:
            for _ in range(6000):
                with sqlite3.connect(store_path / "store.sqlite3", timeout=30) as conn:
                    if conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0] >= target:
                        break
                assert writer.poll() is None, "the writer died on its own"
                time.sleep(0.01)
            time.sleep(0.05 * round_number)  # vary where in a transaction the kill lands
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
        assert writer.returncode == -signal.SIGKILL
        check_consistent(store_path)
    # the store is fully usable afterwards
    store = Store(store_path)
    datastore_id = store.call("ListDatastores", {})["datastoreSummaries"][0]["datastoreId"]
    for summary in store.call("SearchImageSets", {"datastoreId": datastore_id})["imageSetsMetadataSummaries"]:
        version = str(summary["version"])
        out = store.call("UpdateImageSetMetadata", study_update(datastore_id, summary["imageSetId"], version, "after"))
        assert out["latestVersionId"] == str(summary["version"] + 1)
    check_consistent(store_path)


def test_one_import_of_conflicting_instances_of_a_series(store: Store, tmp_path: Path) -> None:
    source = PYDICOM_FILES / "CT_small.dcm"
    folder = tmp_path / "dicom"
    folder.mkdir()
    dataset = pydicom.dcmread(source)
    dataset.save_as(folder / "a.dcm")
    dataset.ImageComments = "same SOP instance, other content"
    dataset.save_as(folder / "b.dcm")
    dataset = pydicom.dcmread(source)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID + ".3"
    dataset.save_as(folder / "c.dcm")
    report = store.import_paths(folder)
    assert report.failures == [] and report.updated == [] and len(report.created) == 2
    primary, duplicate = (get(store, report.datastore_id, i) for i in report.created)
    assert (primary["isPrimary"], duplicate["isPrimary"]) == (True, False)
    counts = [len(list(iter_instances(metadata(store, report.datastore_id, i)))) for i in report.created]
    assert counts == [2, 1]  # a and c share the primary image set; b could not join it
    again = store.import_paths(folder)
    assert (again.created, again.updated, again.failures) == ([], [], [])
