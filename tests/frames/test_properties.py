"""End-to-end properties: random pandas edits -> diff -> plan -> preview (apply_to_document) -> flatten == the edits.

The edits: set a cell to a new valid value (text, numbers, arrays, a sequence, an existing and a new private
tag with its VR given to diff), remove an attribute (``curation.REMOVE``), empty it (NULL), drop instance
rows, drop every instance of a series (``diff(..., rows="all")``), change a SOPInstanceUID or a
SeriesInstanceUID. The document is small (four instances
of the ultrasound reference in two series, trimmed to a few attributes) so that 1,000 examples stay
affordable (about a minute of CPU); blob limits of 450 and 300 bytes force split plans. The same pipeline is
checked against the embedded service for a few examples.
"""

from __future__ import annotations

import copy
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.curate.coercer import MISSING_TEXTS
from curation.curate.differ import diff
from curation.curate.planner import plan
from curation.curate.updateplan import PlanError, UpdatePlan
from curation.frames.cells import decode, infer_codec, is_remove
from curation.frames.flattening import NULL, REMOVE, flatten_many, is_absent
from curation.frames.snapshot import Snapshot
from curation.model import dictionary
from curation.model.document import parse_document, read_document

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
DATASTORE = "169224ef14db49839f628fb887d50291"
PRIVATE = "00191010"
KEEP = (
    "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "ImageType", "EventTimerNames", "StageName",
    "PatientOrientation", "Rows", "PixelData", "SequenceOfUltrasoundRegions", "7FDD0010", "7FDF1001",
)  # fmt: skip

_TEXT = (
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ", min_size=1, max_size=12)
    .map(str.strip)
    .filter(lambda s: bool(s) and s not in MISSING_TEXTS)
)  # diff refuses the text pandas makes of missing values
_CODE = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=10).filter(lambda s: s not in MISSING_TEXTS)
_NUMBER = st.integers(0, 9999).map(str)
_NAME = st.tuples(_CODE, _CODE).map("^".join)
_REGION = st.fixed_dictionaries({"RegionSpatialFormat": st.integers(0, 5), "RegionDataType": st.integers(0, 9)})

#: column -> value strategy, per frame (new columns included); every value is valid for its VR and level
VALUES: dict[str, dict[str, Any]] = {
    "studies": {
        "PatientName": _NAME,
        "PatientID": _CODE,
        "StudyDescription": _TEXT,
        "StudyID": _NUMBER,
        "AccessionNumber": _CODE,
        "AdditionalPatientHistory": _TEXT,
    },
    "series": {
        "SeriesDescription": _TEXT,
        "BodyPartExamined": _CODE,
        "SeriesNumber": _NUMBER,
        "Manufacturer": _TEXT,
        "SoftwareVersions": st.lists(_CODE, min_size=1, max_size=3),
    },
    "instances": {
        "InstanceNumber": _NUMBER,
        "StageName": _TEXT,
        "ImageType": st.lists(_CODE, min_size=2, max_size=4),
        "ImageComments": _TEXT,
        "WindowCenter": st.lists(_NUMBER, min_size=1, max_size=2),
        "SequenceOfUltrasoundRegions": st.lists(_REGION, min_size=1, max_size=2),
        "7FDD0010": _CODE,
        PRIVATE: _TEXT,
    },
}
#: attributes that may be removed or nulled where present (never the UIDs)
REMOVABLE = {
    "studies": ("PatientName", "PatientID", "StudyDescription", "StudyID", "AccessionNumber", "StudyDate"),
    "series": ("SeriesDescription", "BodyPartExamined", "Manufacturer", "SoftwareVersions", "Modality"),
    "instances": (
        "InstanceNumber", "StageName", "ImageType", "EventTimerNames", "PatientOrientation",
        "SequenceOfUltrasoundRegions", "7FDD0010", "7FDF1001",
    ),
}  # fmt: skip


def small_document() -> dict[str, Any]:
    """Four instances of the ultrasound reference in two series, each instance trimmed to KEEP."""
    source = read_document(str(REFERENCE / "us-doppler-9-instances.json"))
    ((series_uid, series),) = source["Study"]["Series"].items()
    instances = list(series["Instances"].items())[:4]
    document = copy.deepcopy(source)
    document["Study"]["Series"] = {}
    for number, part in enumerate((instances[:2], instances[2:])):
        uid = series_uid if number == 0 else f"{series_uid}.7"
        node = {"DICOM": {**copy.deepcopy(series["DICOM"]), "SeriesInstanceUID": uid}, "Instances": {}}
        for sop, instance in part:
            instance = copy.deepcopy(instance)
            instance["DICOM"] = {k: v for k, v in instance["DICOM"].items() if k in KEEP}
            instance["DICOM"]["SequenceOfUltrasoundRegions"] = [
                {"RegionSpatialFormat": 1, "RegionDataType": 2, "RegionFlags": 0}
            ]
            instance["DICOMVRs"] = {k: v for k, v in instance["DICOMVRs"].items() if k in KEEP}
            node["Instances"][sop] = instance
        document["Study"]["Series"][uid] = node
    return document


SMALL = small_document()


def snapshot_of(document: dict[str, Any]) -> Snapshot:
    snap = Snapshot.from_documents([document], datastore_id=DATASTORE, version_ids={document["ImageSetID"]: "1"})
    snap.primary = {document["ImageSetID"]: False}
    return snap


KINDS = st.sampled_from(("set", "set", "set", "remove", "null", "drop", "sop", "drop_series", "series_uid"))


class Editor:
    """A frame being edited as column arrays (cheap cell writes), turned back into a DataFrame at the end."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.columns: dict[str, np.ndarray] = {}

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            if name in self.frame.columns:
                self.columns[name] = self.frame[name].to_numpy(dtype=object).copy()
            else:
                self.columns[name] = np.full(len(self.frame), None, dtype=object)
        return self.columns[name]

    def get(self, position: int, name: str) -> Any:
        if name in self.columns:
            return self.columns[name][position]
        return self.frame[name].iat[position] if name in self.frame.columns else None

    def set(self, position: int, name: str, value: Any) -> None:
        self.column(name)[position] = value

    def result(self) -> pd.DataFrame:
        data = {name: self.frame[name] for name in self.frame.columns}
        for name, values in self.columns.items():
            data[name] = pd.Series(values, index=self.frame.index, dtype=object)
        return pd.DataFrame(data, index=self.frame.index)


def random_edits(data: st.DataObject, snap: Snapshot) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Apply 1-6 random edits to the snapshot's frames; returns the edited frames and the vrs= for diff."""
    base = BASE if snap is SNAP else {name: getattr(snap, name) for name in BASE}
    editors: dict[str, Editor] = {}

    def editor(name: str) -> Editor:
        if name not in editors:
            editors[name] = Editor(base[name])
        return editors[name]

    sizes = {name: len(frame) for name, frame in base.items()}
    vrs: dict[str, str] = {}
    drops: list[int] = []
    drop_series: int | None = None
    for _ in range(data.draw(st.integers(1, 6), label="edits")):
        kind = data.draw(KINDS, label="kind")
        if kind == "drop":
            drops.append(data.draw(st.integers(0, sizes["instances"] - 1), label="drop"))
            continue
        if kind == "drop_series":
            drop_series = data.draw(st.integers(0, sizes["series"] - 1), label="series")
            continue
        if kind == "series_uid":
            position = data.draw(st.integers(0, sizes["series"] - 1), label="row")
            uid = f"1.2.826.0.1.3680043.8.498.{data.draw(st.integers(1, 10**9), label='uid')}.9{position}"
            editor("series").set(position, "SeriesInstanceUID", uid)
            continue
        if kind == "sop":
            position = data.draw(st.integers(0, sizes["instances"] - 1), label="row")
            uid = f"1.2.826.0.1.3680043.8.498.{data.draw(st.integers(1, 10**9), label='uid')}.{position}"
            editor("instances").set(position, "SOPInstanceUID", uid)
            continue
        name = data.draw(st.sampled_from(("studies", "series", "instances")), label="frame")
        position = data.draw(st.integers(0, sizes[name] - 1), label="row")
        if kind == "set":
            column = data.draw(st.sampled_from(sorted(VALUES[name])), label="column")
            editor(name).set(position, column, data.draw(VALUES[name][column], label="value"))
            if column == PRIVATE:
                vrs[PRIVATE] = "LO"
        else:
            present = [c for c in REMOVABLE[name] if not is_absent(editor(name).get(position, c))]
            if present:
                column = data.draw(st.sampled_from(present), label="column")
                editor(name).set(position, column, REMOVE if kind == "remove" else NULL)
    frames = {name: edited.result() for name, edited in editors.items()}
    if drops or drop_series is not None:
        instances = frames.get("instances", base["instances"])
        keep = np.ones(len(instances), dtype=bool)
        keep[drops] = False
        if drop_series is not None:
            keep &= instances.index.get_level_values(1) != base["series"].index[drop_series][1]
        if keep.any():  # an image set keeps at least one instance (removing everything is DeleteImageSet)
            frames["instances"] = instances[keep]
            gone = set(instances.index.droplevel(2)) - set(frames["instances"].index.droplevel(2))
            if gone and "series" in frames:  # edits of a removed series are not expressible: give them up
                series, original = frames["series"], base["series"]
                frames["series"] = pd.concat([series[~series.index.isin(list(gone))], original.loc[list(gone)]])
    return frames, vrs


def cell(value: Any, codec: str) -> bytes:
    """A cell as canonical JSON of the value it holds (``""`` of a text column and NULL both as ``null``)."""
    value = decode(value, codec)
    return orjson.dumps(None if value == "" else value, option=orjson.OPT_SORT_KEYS)


def _codec(frame: pd.DataFrame, column: str, codecs: dict[str, str]) -> str:
    codec = codecs.get(column)
    if codec is not None and codec != "index":
        return codec
    return infer_codec(column, dictionary.vr_of(column), frame[column].dtype)


def comparable(frame: pd.DataFrame, codecs: dict[str, str]) -> dict[tuple, dict[str, bytes]]:
    """DICOM cells of a frame by index tuple and column (absent cells and @ columns left out)."""
    positions = [i for i, c in enumerate(frame.columns) if not c.startswith("@")]
    columns = [frame.columns[i] for i in positions]
    kinds = [_codec(frame, c, codecs) for c in columns]
    array = frame.to_numpy(dtype=object)[:, positions] if positions else [[] for _ in range(len(frame))]
    out = {}
    for label, values in zip(frame.index, array, strict=True):
        key = label if isinstance(label, tuple) else (label,)
        out[key] = {
            c: cell(v, k)
            for c, k, v in zip(columns, kinds, values, strict=True)
            if not is_absent(v) and not is_remove(v)
        }
    return out


SNAP = snapshot_of(SMALL)
BASE = {name: getattr(SNAP, name) for name in ("studies", "series", "instances")}
ORIGINAL = {name: comparable(frame, SNAP.codecs(name)) for name, frame in BASE.items()}


def expected_frames(snap: Snapshot, frames: dict[str, pd.DataFrame]) -> dict[str, dict[tuple, dict[str, bytes]]]:
    """What the documents must flatten to: the edited frames (the snapshot's where not edited), with instances
    re-keyed by their new UIDs and the series whose instances were all dropped gone."""
    found = {
        name: comparable(frames[name], snap.codecs(name))
        if name in frames
        else (ORIGINAL[name] if snap is SNAP else comparable(getattr(snap, name), snap.codecs(name)))
        for name in ("studies", "series", "instances")
    }
    kept_series = {key[:2] for key in found["instances"]}
    renamed = {
        key: orjson.loads(cells.pop("SeriesInstanceUID")) if "SeriesInstanceUID" in cells else key[1]
        for key, cells in found["series"].items()
    }
    series = {(key[0], renamed[key]): cells for key, cells in found["series"].items() if key in kept_series}
    instances = {}
    for key, cells in found["instances"].items():
        sop = orjson.loads(cells.pop("SOPInstanceUID")) if "SOPInstanceUID" in cells else key[2]
        instances[(key[0], renamed[key[:2]], sop)] = cells
    return {"studies": found["studies"], "series": series, "instances": instances}


def check_round_trip(snap: Snapshot, frames: dict[str, pd.DataFrame], vrs: dict[str, str], limit: int) -> UpdatePlan:
    changes = diff(snap, list(frames.values()), vrs=vrs, rows="all") if frames else diff(snap, [])
    assert changes.problems.empty, changes.problems.to_dict("records")
    try:
        result = plan(changes, max_blob_bytes=limit)
    except PlanError as error:  # only a change whose own blob exceeds a tight limit may stop the plan
        for reason in error.problems["reason"]:
            size = re.search(r"alone needs a (\d+)-byte blob", reason)
            assert size is not None and int(size.group(1)) > limit, reason
        limit = 30_000
        result = plan(changes, max_blob_bytes=limit)
    for request in result.requests:
        assert all(len(blob.encode()) <= limit for blob in request.blobs.values())
    documents = result.preview(snap.documents, max_blob_bytes=limit)
    flat = flatten_many(documents.values(), copy=False)
    assert flat.failures.empty
    expected = expected_frames(snap, frames)
    for name in ("studies", "series", "instances"):
        assert comparable(getattr(flat, name), flat.codecs[name]) == expected[name], name
    if PRIVATE in frames.get("instances", ()):
        column = frames["instances"][PRIVATE]
        for label in column[~column.map(is_absent)].index:
            edited = frames["instances"]
            sop = edited.at[label, "SOPInstanceUID"] if "SOPInstanceUID" in edited.columns else None
            sop = label[2] if is_absent(sop) else sop
            rows = flat.instances.xs(sop, level="SOPInstanceUID")
            assert rows["@DICOMVRs"].iloc[0][PRIVATE] == "LO"
    if len(changes) == 0:
        assert len(result) == 0
    return result


@settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_edits_round_trip_through_diff_plan_and_preview(data: st.DataObject) -> None:
    frames, vrs = random_edits(data, SNAP)
    limit = data.draw(st.sampled_from((30_000, 450, 300)), label="max_blob_bytes")
    result = check_round_trip(SNAP, frames, vrs, limit)
    assert len({r.image_set_id for r in result.requests}) <= 1
    if limit == 30_000:
        assert len(result) <= 1  # a small image set always goes in one request


# --- the same through the embedded service ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service() -> Any:
    import curation.local
    from curation.local.store import Store

    with tempfile.TemporaryDirectory() as directory:
        store = Store(directory)
        yield store, curation.local.client(store)
        store.close()


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_edits_round_trip_through_the_embedded_service(service: Any, data: st.DataObject) -> None:
    store, client = service
    other = {**copy.deepcopy(SMALL), "ImageSetID": uuid.uuid4().hex}  # an identical document would be skipped
    report = store.import_documents([copy.deepcopy(SMALL), other])
    datastore, image_set = report.datastore_id, report.created[-1]
    assert not client.get_image_set(datastoreId=datastore, imageSetId=image_set)["isPrimary"]

    def fetch() -> dict[str, Any]:
        blob = client.get_image_set_metadata(datastoreId=datastore, imageSetId=image_set)["imageSetMetadataBlob"]
        return parse_document(blob.read())

    snap = Snapshot.from_documents([fetch()], datastore_id=datastore, version_ids={image_set: "1"})
    snap.primary = {image_set: False}
    frames, vrs = random_edits(data, snap)
    result = check_round_trip(snap, frames, vrs, data.draw(st.sampled_from((30_000, 450, 300)), label="limit"))
    expected = result.preview(snap.documents)[image_set]
    version = "1"
    for request in result.requests:
        version = client.update_image_set_metadata(**request.params, latestVersionId=version)["latestVersionId"]
        state = client.get_image_set(datastoreId=datastore, imageSetId=image_set)
        assert state["imageSetWorkflowStatus"] == "UPDATED", state.get("message")
    assert fetch() == expected
