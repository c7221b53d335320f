"""flatten/unflatten: lossless round trips (references + hypothesis), NULL vs absent, dtypes, bad input."""

from __future__ import annotations

import base64
import copy
import pickle
from pathlib import Path

import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import DicomDictionary, dictionary_VM

from curation.frames.flattening import NULL, FlattenError, flatten, flatten_many, is_null, unflatten, wide_view
from curation.model import dictionary as dicom
from curation.model.document import DocumentError, read_document

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
REFERENCES = sorted(REFERENCE.glob("*.json"))


def canonical(value: object) -> bytes:
    """JSON bytes with sorted keys: unlike ==, tells 1 from 1.0 and True from 1."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def load(name: str) -> dict:
    return read_document(str(REFERENCE / name))


# --- hypothesis strategy for AHI documents -----------------------------------------------------------------

TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
INT_VRS = {"US", "SS", "UL", "SL", "SV", "UV"}
FLOAT_VRS = {"FL", "FD"}
BINARY_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}
KEYWORDS: dict[str, tuple[str, bool]] = {}
for _tag, (_vr, _vm, _name, _retired, _keyword) in DicomDictionary.items():
    if _keyword and _vr in TEXT_VRS | INT_VRS | FLOAT_VRS | BINARY_VRS | {"SQ"}:
        KEYWORDS[_keyword] = (_vr, dictionary_VM(_tag) not in ("1", ""))
KEYWORD_LIST = sorted(KEYWORDS)
TWO_LETTER_VRS = sorted(vr for vr in dicom.VALID_VRS if len(vr) == 2)

text = st.text(st.characters(min_codepoint=32, max_codepoint=0x3FF) | st.sampled_from("^\\=\n\0é中"), max_size=6)
ints = st.integers(-(2**63), 2**63 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)
base64s = st.binary(max_size=6).map(lambda b: base64.b64encode(b).decode())
hex32 = st.text("0123456789abcdef", min_size=32, max_size=32)
uids = st.lists(st.integers(0, 10**6), min_size=2, max_size=4).map(lambda p: "1.2." + ".".join(map(str, p)))
json_scalars = st.none() | st.booleans() | ints | floats | text
json_values = st.recursive(
    json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3), max_leaves=6
)


def scalar_for(vr: str) -> st.SearchStrategy:
    if vr in ("IS", "DS"):
        return st.sampled_from(["1", "120 ", "-2.625000 ", "0.0 ", "27.951", "", " 5"])
    if vr in TEXT_VRS:
        return text | text.map(lambda s: s + " ")
    if vr in INT_VRS:
        return st.integers(0, 2**32) | ints
    if vr in FLOAT_VRS:
        return floats | st.integers(-5, 5)  # AHI may write a float attribute as an integer: keep it so
    return base64s


def value_for(keyword: str, depth: int) -> st.SearchStrategy:
    vr, multi = KEYWORDS[keyword]
    if vr == "SQ":
        if depth >= 2:
            return st.just([]) | st.none()
        return st.lists(dicom_dict(depth + 1), max_size=2) | st.none()
    scalar = scalar_for(vr)
    if multi:
        return st.lists(scalar | st.none(), min_size=1, max_size=4) | st.none()
    return scalar | st.none()


private_tags = st.tuples(st.integers(0x0004, 0x3FFF), st.integers(0x0010, 0xFFFF)).map(
    lambda t: f"{t[0] * 2 + 1:04X}{t[1]:04X}"
)


@st.composite
def dicom_dict(draw: st.DrawFn, depth: int = 0, private: bool = False) -> dict:
    keys = draw(st.lists(st.sampled_from(KEYWORD_LIST), max_size=5 if depth == 0 else 3, unique=True))
    result = {key: draw(value_for(key, depth)) for key in keys}
    if private:
        for tag in draw(st.lists(private_tags, max_size=2, unique=True)):
            result[tag] = draw(base64s | text | st.none())
    return result


frame_dicts = st.fixed_dictionaries(
    {},
    optional={
        "ID": hex32 | st.none(),
        "PixelDataChecksumFromBaseToFullResolution": st.lists(
            st.fixed_dictionaries(
                {
                    "Width": st.integers(1, 4096),
                    "Height": st.integers(1, 4096),
                    "Checksum": st.integers(0, 2**32 - 1) | st.none(),
                }
            ),
            max_size=3,
        ),
        "MinPixelValue": st.integers(-2000, 0) | floats | st.none(),
        "MaxPixelValue": st.integers(0, 65535),
        "FrameSizeInBytes": st.integers(0, 2**40),
        "FutureFrameKey": json_values,
    },
)


@st.composite
def instance_nodes(draw: st.DrawFn) -> dict:
    node: dict = {"DICOM": draw(dicom_dict(private=True))}
    private = [k for k in node["DICOM"] if dicom.is_tag_key(k)]
    if draw(st.booleans()) or private:
        node["DICOMVRs"] = {tag: draw(st.sampled_from(TWO_LETTER_VRS)) for tag in private}
    extra = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "StoredTransferSyntaxUID": st.just("1.2.840.10008.1.2.4.202") | st.none(),
                "ChecksumType": st.just("DECOMPRESSED"),
                "ImageFrames": st.lists(frame_dicts, max_size=3),
                "FutureInstanceKey": json_values,
            },
        )
    )
    node.update(extra)
    return node


@st.composite
def documents(draw: st.DrawFn, image_set_id: str | None = None) -> dict:
    series_uids = draw(st.lists(uids, max_size=2, unique=True))
    sop_uids = iter(draw(st.lists(uids, min_size=6, max_size=6, unique=True)))
    series = {}
    for uid in series_uids:
        count = draw(st.integers(0, 3))
        members = {next(sop_uids): draw(instance_nodes()) for _ in range(count)}
        node = {"DICOM": draw(dicom_dict()), "Instances": members}
        if draw(st.booleans()):
            node["FutureSeriesKey"] = draw(json_values)
        series[uid] = node
    patient = {"DICOM": draw(dicom_dict())}
    study = {"DICOM": draw(dicom_dict()), "Series": series}
    shared = draw(st.sampled_from(KEYWORD_LIST))
    if draw(st.booleans()):  # the same attribute at Patient and Study level (a weird document)
        patient["DICOM"][shared] = draw(value_for(shared, 1))
        study["DICOM"][shared] = draw(value_for(shared, 1))
    if draw(st.booleans()):
        study["FutureStudyKey"] = draw(json_values)
    document = {
        "SchemaVersion": "1.1",
        "DatastoreID": draw(hex32),
        "ImageSetID": image_set_id or draw(hex32),
        "Patient": patient,
        "Study": study,
    }
    if draw(st.booleans()):
        document["FutureRootKey"] = draw(json_values)
    return document


# --- round trips --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", REFERENCES, ids=lambda p: p.name)
def test_reference_round_trip_is_exact(path: Path) -> None:
    document = read_document(str(path))
    before = canonical(document)
    flat = flatten(document)
    assert [canonical(d) for d in unflatten(flat)] == [before]
    assert canonical(document) == before  # input untouched


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_generated_round_trip_is_exact(document: dict) -> None:
    before = canonical(document)
    assert [canonical(d) for d in unflatten(flatten(document))] == [before]
    assert canonical(document) == before


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(hex32, min_size=1, max_size=4, unique=True).flatmap(
        lambda ids: st.tuples(*(documents(image_set_id=i) for i in ids))
    )
)
def test_generated_batch_round_trip(docs: tuple[dict, ...]) -> None:
    flat = flatten_many(docs)
    assert len(flat.failures) == 0
    assert [canonical(d) for d in unflatten(flat)] == [canonical(d) for d in docs]


def test_round_trip_keeps_int_float_and_string_number_apart() -> None:
    document = load("ct-2025-htj2k-1-instance.json")
    instance = next(iter(next(iter(document["Study"]["Series"].values()))["Instances"].values()))
    instance["DICOM"]["RescaleSlope"] = "1"
    instance["DICOM"]["Rows"] = 1
    instance["DICOM"]["PixelSpacing"] = [1.0, 1]
    instance["ImageFrames"][0]["MinPixelValue"] = 1.0
    flat = flatten(document)
    assert flat.frames["MinPixelValue"].dtype == object  # a float among ints: no Int64
    back = unflatten(flat)[0]
    node = next(iter(next(iter(back["Study"]["Series"].values()))["Instances"].values()))
    assert type(node["DICOM"]["RescaleSlope"]) is str and type(node["DICOM"]["Rows"]) is int
    assert [type(v) for v in node["DICOM"]["PixelSpacing"]] == [float, int]
    assert type(node["ImageFrames"][0]["MinPixelValue"]) is float


def test_attribute_at_two_levels_round_trips() -> None:
    a = load("us-doppler-9-instances.json")
    b = copy.deepcopy(a)
    b["ImageSetID"] = "f" * 32
    a["Study"]["DICOM"]["PatientName"] = "STUDY^COPY"  # also at Patient level in the same document
    b["Study"]["DICOM"]["PatientSex"] = b["Patient"]["DICOM"].pop("PatientSex")  # Study level in doc b
    instance = next(iter(next(iter(b["Study"]["Series"].values()))["Instances"].values()))
    instance["DICOM"]["Modality"] = "OT"  # also at series level
    flat = flatten_many([a, b])
    assert flat.levels["PatientName"] == "Patient" and flat.levels["PatientSex"] == "Patient"
    assert flat.studies.loc[a["ImageSetID"], "@Study:PatientName"] == "STUDY^COPY"
    assert flat.studies.loc[b["ImageSetID"], "@Study:PatientSex"] == ""  # present-empty in a str column
    assert pd.isna(flat.studies.loc[b["ImageSetID"], "PatientSex"])
    assert [canonical(d) for d in unflatten(flat)] == [canonical(a), canonical(b)]
    wide = wide_view(flat.studies, flat.series, flat.instances)
    assert "@Instance:Modality" in wide.columns
    assert set(wide["Modality"]) == {"US"}


# --- frame contents ----------------------------------------------------------------------------------------


def test_levels_indexes_and_values_as_ahi_encodes_them() -> None:
    document = load("ct-2025-htj2k-1-instance.json")
    flat = flatten(document)
    image_set = document["ImageSetID"]
    assert list(flat.studies.index) == [image_set] and flat.studies.index.name == "ImageSetID"
    assert flat.series.index.names == ["ImageSetID", "SeriesInstanceUID"]
    assert flat.instances.index.names == ["ImageSetID", "SeriesInstanceUID", "SOPInstanceUID"]
    assert flat.frames.index.names == ["ImageSetID", "SeriesInstanceUID", "SOPInstanceUID", "frame"]
    assert "SeriesInstanceUID" not in flat.series.columns  # the index holds it (it equals every row's key)
    assert "SOPInstanceUID" not in flat.instances.columns
    assert flat.codecs["instances"]["SOPInstanceUID"] == "index"
    row = flat.instances.iloc[0]
    assert row["KVP"] == "120 "  # padding kept
    assert row["ImageType"] == "DERIVED\\PRIMARY\\AXIAL"  # multi-valued text: joined by backslashes
    assert str(flat.instances["ImageType"].dtype) == "str" and str(flat.instances["Rows"].dtype) == "Int64"
    assert row["Rows"] == 640
    assert row["SourceImageSequence"][0]["PurposeOfReferenceCodeSequence"][0]["CodeValue"] == "121320"
    assert row["@StoredTransferSyntaxUID"] == "1.2.840.10008.1.2.4.202"
    assert row["@ChecksumType"] == "DECOMPRESSED" and row["@DICOMVRs"] == {} and row["@ImageFrames"] == 1
    assert flat.studies.loc[image_set, "@SchemaVersion"] == "1.1"
    assert flat.levels["PatientName"] == "Patient" and flat.levels["StudyDate"] == "Study"
    frame = flat.frames.iloc[0]
    assert (frame["Width"], frame["Height"], frame["Checksum"]) == (640, 640, 989529591)
    assert frame["ID"] == "586e9e248987bf6aa761ff5b9d790473"


def test_frames_keep_the_whole_pyramid() -> None:
    flat = flatten(load("ct-588-instances.json"))
    assert len(flat.frames) == 588
    first = flat.frames.iloc[0]
    pyramid = first["PixelDataChecksumFromBaseToFullResolution"]
    assert [(p["Width"], p["Height"]) for p in pyramid] == [(128, 128), (256, 256), (512, 512)]
    assert (first["Width"], first["Checksum"]) == (512, pyramid[-1]["Checksum"])
    assert str(flat.frames["FrameSizeInBytes"].dtype) == "Int64"
    assert (flat.frames.index.get_level_values("frame") == 1).all()


def test_null_and_absent_are_distinct_in_the_frame_and_back() -> None:
    document = load("us-doppler-9-instances.json")
    flat = flatten(document)
    assert flat.studies.iloc[0]["PatientID"] == ""  # present, null: "" in a str column
    assert not pd.isna(flat.studies.iloc[0]["PatientID"])
    assert is_null(flat.studies["PatientID"]).all()
    instances = flat.instances
    assert (instances["PixelData"].map(lambda v: v is NULL)).all()  # binary VR: an object column, NULL
    assert not instances["PixelData"].isna().any()
    # AcquisitionTime is null in some instances and present in others
    acquisition = instances["AcquisitionTime"]
    assert (acquisition == "").any() and not acquisition.isna().any()
    assert "BodyPartExamined" in flat.series.columns and flat.series.iloc[0]["BodyPartExamined"] == ""
    assert flat.studies.sort_values("PatientID").index.equals(flat.studies.index)  # sorts like any str column
    assert repr(NULL) == "NULL" and not NULL
    assert pickle.loads(pickle.dumps(NULL)) is NULL and copy.deepcopy(NULL) is NULL


def test_user_edits_set_null_remove_and_add() -> None:
    document = load("us-doppler-9-instances.json")
    flat = flatten(document)
    series = flat.series
    mask = series["Modality"] == "US"
    series.loc[mask, "BodyPartExamined"] = "CHEST"
    series.loc[mask, "ProtocolName"] = None  # remove
    series.loc[mask, "SeriesDescription"] = "Doppler"
    instances = flat.instances
    instances.loc[:, "StageName"] = ""  # empty it
    instances["ImageComments"] = "checked"  # a new column
    back = unflatten(flat)[0]
    series_node = next(iter(back["Study"]["Series"].values()))
    assert series_node["DICOM"]["BodyPartExamined"] == "CHEST"
    assert "ProtocolName" not in series_node["DICOM"]
    for node in series_node["Instances"].values():
        assert node["DICOM"]["StageName"] is None and "StageName" in node["DICOM"]
        assert node["DICOM"]["ImageComments"] == "checked"


def test_cells_are_immutable_and_share_nothing_with_the_document() -> None:
    document = load("ct-2025-htj2k-1-instance.json")
    before = canonical(document)
    flat = flatten(document)
    sequence = flat.instances.iloc[0]["SourceImageSequence"]
    assert isinstance(sequence, tuple) and sequence[0]["ReferencedSOPClassUID"] == "1.2.840.10008.5.1.4.1.1.2"
    with pytest.raises(TypeError):
        sequence[0]["ReferencedSOPClassUID"] = "1.2"
    pyramid = flat.frames["PixelDataChecksumFromBaseToFullResolution"]
    assert str(pyramid.dtype).startswith("list<item: struct<Width: int64")  # an Arrow column: read as new lists
    pyramid.iloc[0][0]["Width"] = 1
    assert pyramid.iloc[0][0]["Width"] != 1
    assert pickle.loads(pickle.dumps(sequence)) == sequence
    assert canonical(document) == before


def test_column_dtypes_follow_the_vr_and_memory_within_the_json() -> None:
    path = REFERENCE / "ct-588-instances.json"
    flat = flatten(read_document(str(path)))
    dtypes = flat.instances.dtypes.astype(str)
    assert dtypes["SOPClassUID"] == "str" and dtypes["Rows"] == "Int64" and dtypes["PixelData"] == "object"
    assert set(dtypes) == {"str", "Int64", "object"}
    assert flat.instances.memory_usage(deep=True).sum() <= path.stat().st_size


# --- bad input ---------------------------------------------------------------------------------------------


def test_missing_level_names_the_image_set() -> None:
    document = load("ct-2025-htj2k-1-instance.json")
    del document["Study"]
    with pytest.raises(DocumentError, match=f"image set {document['ImageSetID']}: Study level"):
        flatten(document)


def test_unknown_vr_in_dicomvrs() -> None:
    document = load("us-doppler-9-instances.json")
    instance = next(iter(next(iter(document["Study"]["Series"].values()))["Instances"].values()))
    instance["DICOMVRs"]["7FDF1001"] = "XX"
    with pytest.raises(FlattenError, match="unknown VR 'XX' for 7FDF1001") as info:
        flatten(document)
    assert info.value.image_set_id == document["ImageSetID"]


def test_duplicate_sop_instance_uid_across_series() -> None:
    document = load("us-doppler-9-instances.json")
    series_uid, series = next(iter(document["Study"]["Series"].items()))
    sop_uid, instance = next(iter(series["Instances"].items()))
    document["Study"]["Series"]["1.2.3"] = {"DICOM": {}, "Instances": {sop_uid: copy.deepcopy(instance)}}
    with pytest.raises(FlattenError, match=f"duplicate SOPInstanceUID {sop_uid} in series {series_uid} and 1.2.3"):
        flatten(document)


def test_flatten_many_lists_failures_and_returns_the_rest() -> None:
    good = load("ct-2025-htj2k-1-instance.json")
    other = load("us-doppler-9-instances.json")
    broken = copy.deepcopy(other)
    broken["ImageSetID"] = "b" * 32
    broken["Patient"] = None
    reserved = copy.deepcopy(other)
    reserved["ImageSetID"] = "c" * 32
    reserved["Study"]["DICOM"]["@Weird"] = "x"
    flat = flatten_many([good, other, copy.deepcopy(good), broken, reserved])
    assert list(flat.studies.index) == [good["ImageSetID"], other["ImageSetID"]]
    failures = flat.failures.set_index("ImageSetID")["error"]
    assert "duplicate ImageSetID" in failures[good["ImageSetID"]]
    assert "Patient level" in failures["b" * 32]
    assert "starts with '@'" in failures["c" * 32]
    assert set(flat.failures["stage"]) == {"flatten"}
    assert [canonical(d) for d in unflatten(flat)] == [canonical(good), canonical(other)]


def test_node_key_with_colon_is_refused() -> None:
    document = load("ct-2025-htj2k-1-instance.json")
    document["Weird:Key"] = 1
    with pytest.raises(FlattenError, match="containing ':'"):
        flatten(document)


# --- curation.model.dictionary ----------------------------------------------------------------------------------------


def test_dicom_lookups() -> None:
    assert dicom.vr_of("KVP") == "DS"
    assert dicom.vr_of("00180060") == "DS"
    assert dicom.vr_of("7FDF1001", {"7FDF1001": "UN"}) == "UN"
    assert dicom.vr_of("7FDF1001") is None
    assert dicom.vr_of("PixelData") == "OB or OW"
    assert dicom.tag_of("KVP") == 0x00180060 and dicom.tag_key(0x00180060) == "00180060"
    assert dicom.keyword_of("00180060") == "KVP" and dicom.keyword_of("7FDF1001") is None
    assert dicom.ahi_key("00180060") == "KVP" and dicom.ahi_key("7fdf1001") == "7FDF1001"
    assert dicom.is_private("7FDF1001") and not dicom.is_private("00180060")
    assert dicom.is_multi_valued("ImageType") and not dicom.is_multi_valued("KVP")
