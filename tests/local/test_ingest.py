"""DICOM P10 ingest (curation.local.ingest) against pydicom's own reading and the reference documents."""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import json
import os
import re
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import openjpeg
import orjson
import pydicom
import pytest
from pydicom.datadict import dictionary_VM, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import VR

from curation.local.encoding import HTJ2K_LOSSLESS_RPCL
from curation.local.ingest import (
    DECOMPRESSED,
    ENCODED,
    IngestError,
    InstanceRecord,
    build_document,
    group_records,
    iter_dicom_paths,
    merge_records,
    read_any,
    read_instance,
)
from curation.model.document import check_document, iter_instances
from curation.model.levels import level_of

TEST_FILES = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
REFERENCE = Path(__file__).parents[1] / "data" / "reference"
HEX_KEY = re.compile(r"^[0-9A-F]{8}$")
FRAME_ID = re.compile(r"^[0-9a-f]{32}$")
BINARY = {"OB", "OW", "OB or OW", "UN", "OF", "OD", "OL", "OV"}
NUMBERS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "US or SS"}
PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}

#: Bundled files pydicom reads (force=False) that still are not instances AHI could import, with why.
EXPECTED_FAILURES = {
    "JPEGLSNearLossless_08.dcm": "no StudyInstanceUID, SeriesInstanceUID:",
    "JPEGLSNearLossless_16.dcm": "no StudyInstanceUID, SeriesInstanceUID:",
    "SC_rgb_jls_lossy_line.dcm": "no StudyInstanceUID, SeriesInstanceUID:",
    "SC_rgb_jls_lossy_sample.dcm": "no StudyInstanceUID, SeriesInstanceUID:",
    "UN_sequence.dcm": "no StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID",
    "empty_charset_LEI.dcm": "no StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID",
    "meta_missing_tsyntax.dcm": "no StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID",
    "nested_priv_SQ.dcm": "no StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID",
    "no_meta_group_length.dcm": "no StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID",
    "priv_SQ.dcm": "no StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID",
    "MR_truncated.dcm": "PixelData holds 8130 bytes, 1 frame(s) need 8192",
    "badVR.dcm": "NumberOfFrames '1A' is not an integer",
    "dicomdirtests/DICOMDIR": "a DICOMDIR",
    "dicomdirtests/DICOMDIR-bigEnd": "a DICOMDIR",
    "dicomdirtests/DICOMDIR-empty.dcm": "a DICOMDIR",
    "dicomdirtests/DICOMDIR-implicit": "a DICOMDIR",
    "dicomdirtests/DICOMDIR-nooffset": "a DICOMDIR",
    "dicomdirtests/DICOMDIR-nopatient": "a DICOMDIR",
    "dicomdirtests/DICOMDIR-reordered": "a DICOMDIR",
    "dicomdirtests/TINY_ALPHA/DICOMDIR": "a DICOMDIR",
}


def bundled(name: str) -> str:
    return os.path.join(TEST_FILES, name)


def dcmread(path: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def reference(name: str) -> dict[str, Any]:
    return json.loads((REFERENCE / name).read_text())


def first_instance(document: dict[str, Any]) -> dict[str, Any]:
    return next(iter_instances(document))[2]


def all_bundled_files() -> list[str]:
    files = []
    for root, _dirs, names in os.walk(TEST_FILES):
        files.extend(os.path.relpath(os.path.join(root, name), TEST_FILES) for name in names)
    return sorted(files)


def assert_conventions(dataset: Dataset, node: dict[str, Any], vrs: dict[str, str]) -> None:
    """Check every attribute of ``dataset`` against its AHI form in ``node``, from pydicom's raw elements."""
    seen: set[str] = set()
    for tag in sorted(dataset.keys()):
        raw = dataset.get_item(tag)
        element = dataset[tag]
        keyword = "" if element.tag.is_private else keyword_for_tag(tag)
        key = keyword if keyword and keyword not in seen else f"{int(tag):08X}"
        seen.add(key)
        if HEX_KEY.match(key):
            assert vrs[key] == element.VR, key
        value = node[key]
        if tag in PIXEL_TAGS:
            assert value is None
        elif element.VR in BINARY:
            assert base64.b64decode(value) == bytes(element.value or b""), key
        elif element.VR == "SQ":
            if not element.value:
                assert value is None, key
            else:
                assert len(value) == len(element.value), key
                for item, item_node in zip(element.value, value, strict=True):
                    assert_conventions(item, item_node, vrs)
        elif element.is_empty:
            assert value is None, key
        else:
            values = value if isinstance(value, list) else [value]
            multiple = bool(keyword) and dictionary_VM(tag) != "1"
            assert isinstance(value, list) == (multiple or len(values) > 1), key
            if element.VR in ("IS", "DS"):
                assert "\\".join(values) == raw.value.decode("latin-1"), key
            elif element.VR in NUMBERS:
                assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in values), key
                expected = list(element.value) if element.VM > 1 else [element.value]
                assert values == expected, key
            else:
                assert all(isinstance(v, str) for v in values), key
    assert len(node) == len(seen)


@pytest.fixture(scope="module")
def ct() -> InstanceRecord:
    return read_instance(bundled("CT_small.dcm"))


# -- attribute conventions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "rtplan.dcm", "MR_small_implicit.dcm", "ExplVR_BigEnd.dcm", "waveform_ecg.dcm", "test-SR.dcm"],
)
def test_every_attribute_follows_the_reference_conventions(name: str) -> None:
    record = read_instance(bundled(name))
    dataset = dcmread(bundled(name))
    merged = {**record.patient, **record.study, **record.series, **record.instance["DICOM"]}
    meta_keys = [keyword_for_tag(tag) for tag in sorted(dataset.file_meta.keys())]
    assert list(record.instance["DICOM"])[: len(meta_keys)] == meta_keys
    assert_conventions(dataset.file_meta, {k: merged[k] for k in meta_keys}, record.instance["DICOMVRs"])
    assert_conventions(dataset, {k: v for k, v in merged.items() if k not in meta_keys}, record.instance["DICOMVRs"])


def test_ct_values_match_the_reference_forms(ct: InstanceRecord) -> None:
    dicom = ct.instance["DICOM"]
    assert dicom["KVP"] == "120 "  # DS padding kept, as "KVP": "120 " in the 2025 reference
    assert dicom["XRayTubeCurrent"] == "170 "
    assert ct.series["SeriesNumber"] == "1 "
    assert dicom["ImageOrientationPatient"][-1] == "0.000000 "
    assert dicom["ImageOrientationPatient"][:5] == ["1.000000", "0.000000", "0.000000", "0.000000", "1.000000"]
    assert dicom["PixelSpacing"] == ["0.661468", "0.661468 "]
    assert dicom["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert dicom["ScanOptions"] == ["HELICAL MODE"]  # VM 1-n: an array even with one value
    assert ct.series["SoftwareVersions"] == ["05"]
    assert dicom["Rows"] == 128 and dicom["BitsAllocated"] == 16
    assert ct.series["PixelPaddingValue"] == -2000
    assert ct.patient["PatientName"] == "CompressedSamples^CT1"
    assert ct.patient["PatientBirthDate"] is None
    assert ct.study["AccessionNumber"] is None
    assert "PixelData" in dicom and dicom["PixelData"] is None
    assert dicom["00091001"] == "GE_GENESIS_FF"
    assert dicom["00431012"] == [14, 2, 3]
    assert ct.patient["OtherPatientIDsSequence"] == [
        {"PatientID": "ABCD1234", "TypeOfPatientID": "TEXT"},
        {"PatientID": "1234ABCD", "TypeOfPatientID": "TEXT"},
    ]


def test_file_meta_stays_at_instance_level_like_the_2025_reference(ct: InstanceRecord) -> None:
    ref = first_instance(reference("ct-2025-htj2k-1-instance.json"))["DICOM"]
    dicom = ct.instance["DICOM"]
    for key in (
        "FileMetaInformationGroupLength",
        "FileMetaInformationVersion",
        "MediaStorageSOPClassUID",
        "MediaStorageSOPInstanceUID",
        "TransferSyntaxUID",
        "ImplementationClassUID",
    ):
        assert key in ref and key in dicom
        assert type(dicom[key]) is type(ref[key])
    assert dicom["FileMetaInformationVersion"] == ref["FileMetaInformationVersion"] == "AAE="
    assert dicom["FileMetaInformationGroupLength"] == 192
    assert dicom["TransferSyntaxUID"] == ExplicitVRLittleEndian


def test_private_tags_and_dicomvrs_like_the_us_doppler_reference(ct: InstanceRecord) -> None:
    ref = first_instance(reference("us-doppler-9-instances.json"))
    ref_hex = {key for key in ref["DICOM"] if HEX_KEY.match(key)}
    assert ref_hex == set(ref["DICOMVRs"])  # the reference's convention: every hex key has its VR, no more
    assert ref["DICOMVRs"]["7FDF0010"] == "LO" and ref["DICOM"]["7FDD1090"] == ""
    hex_keys = {key for key in ct.instance["DICOM"] if HEX_KEY.match(key)}
    assert hex_keys == set(ct.instance["DICOMVRs"])
    assert ct.instance["DICOMVRs"]["00090010"] == "LO"  # private creator
    assert ct.instance["DICOMVRs"]["00091027"] == "SL"
    assert ct.instance["DICOMVRs"]["00431028"] == "OB"
    assert all(vr in VR.__members__ for vr in ct.instance["DICOMVRs"].values())
    assert all(isinstance(key, str) and HEX_KEY.match(key) for key in ct.instance["DICOMVRs"])


def test_nested_private_tags_and_empty_values(tmp_path: Path) -> None:
    dataset = dcmread(bundled("CT_small.dcm"))
    item = Dataset()
    item.CodeValue = "113100"
    block = item.private_block(0x0011, "ACME 1.0", create=True)
    block.add_new(0x01, "UN", b"\x01\x00")
    block.add_new(0x02, "DS", "1.5 ")
    dataset.DerivationCodeSequence = Sequence([item])
    dataset.add_new(0x00081140, "SQ", Sequence())  # ReferencedImageSequence, empty
    dataset.add_new(0x00282000, "OB", b"")  # ICCProfile, empty binary
    path = tmp_path / "nested.dcm"
    dataset.save_as(path, enforce_file_format=True)
    record = read_instance(str(path))
    dicom = record.instance["DICOM"]
    assert dicom["DerivationCodeSequence"] == [
        {"CodeValue": "113100", "00110010": "ACME 1.0", "00111001": "AQA=", "00111002": "1.5 "}
    ]
    assert record.instance["DICOMVRs"]["00110010"] == "LO"
    assert record.instance["DICOMVRs"]["00111001"] == "UN"
    assert record.instance["DICOMVRs"]["00111002"] == "DS"
    assert dicom["ReferencedImageSequence"] is None
    assert dicom["ICCProfile"] == ""


# -- levels ------------------------------------------------------------------------------------------------


def test_attributes_land_at_their_normalization_level(ct: InstanceRecord) -> None:
    for level, attributes in (("Patient", ct.patient), ("Study", ct.study), ("Series", ct.series)):
        assert attributes and all(level_of(key) == level for key in attributes)
    assert all(level_of(key) == "Instance" for key in ct.instance["DICOM"])
    assert ct.study["PatientWeight"] == "0.000000"  # Patient Study module: study level
    assert ct.study["StudyInstanceUID"] == ct.study_uid
    assert ct.series["Manufacturer"] == "GE MEDICAL SYSTEMS" and ct.series["PatientPosition"] == "FFS"
    assert ct.series["SeriesInstanceUID"] == ct.series_uid
    assert ct.instance["DICOM"]["SOPInstanceUID"] == ct.sop_uid
    dataset = dcmread(bundled("CT_small.dcm"))
    assert len(ct.patient) + len(ct.study) + len(ct.series) + len(ct.instance["DICOM"]) == len(dataset) + len(
        dataset.file_meta
    )


# -- frames ------------------------------------------------------------------------------------------------


def frame_checksums(record: InstanceRecord) -> list[int]:
    return [
        frame["PixelDataChecksumFromBaseToFullResolution"][0]["Checksum"] for frame in record.instance["ImageFrames"]
    ]


def test_ct_frame_checksum_is_crc32_of_the_decoded_pixels(ct: InstanceRecord) -> None:
    dataset = dcmread(bundled("CT_small.dcm"))
    pixels = dataset.pixel_array
    (frame,) = ct.instance["ImageFrames"]
    assert FRAME_ID.match(frame["ID"])
    expected_id = hashlib.md5(f"{ct.sop_uid}/0/{ExplicitVRLittleEndian}/".encode() + dataset.PixelData).hexdigest()
    assert frame["ID"] == expected_id
    assert frame["PixelDataChecksumFromBaseToFullResolution"] == [
        {"Width": 128, "Height": 128, "Checksum": zlib.crc32(pixels.astype("<i2").tobytes())}
    ]
    assert (frame["MinPixelValue"], frame["MaxPixelValue"]) == (int(pixels.min()), int(pixels.max()))
    # stored as a HTJ2K datastore stores it (AHI's default): an HTJ2K codestream of exactly these pixels
    assert ct.instance["StoredTransferSyntaxUID"] == HTJ2K_LOSSLESS_RPCL
    assert ct.instance["ChecksumType"] == DECOMPRESSED
    stored = ct.frames[frame["ID"]]
    assert frame["FrameSizeInBytes"] == len(stored) < 128 * 128 * 2
    assert np.array_equal(openjpeg.decode(stored), pixels)
    # storage_format=None keeps the file's bytes (the behaviour before frames were encoded)
    native = read_instance(bundled("CT_small.dcm"), None)
    assert native.frames == {frame["ID"]: dataset.PixelData}
    assert native.instance["StoredTransferSyntaxUID"] == ExplicitVRLittleEndian
    assert native.instance["ImageFrames"][0]["FrameSizeInBytes"] == 128 * 128 * 2


def test_instance_node_and_frames_have_the_reference_keys(ct: InstanceRecord) -> None:
    ref = first_instance(reference("ct-2025-htj2k-1-instance.json"))
    assert list(ct.instance) == list(ref)
    assert ct.instance["ChecksumType"] == ref["ChecksumType"]
    assert list(ct.instance["ImageFrames"][0]) == list(ref["ImageFrames"][0])
    assert orjson.loads(orjson.dumps(ct.instance)) == ct.instance


def test_checksums_do_not_depend_on_the_transfer_syntax() -> None:
    names = [
        "MR_small.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_padded.dcm",
    ]
    encoded = [read_instance(bundled(name)) for name in names]
    assert {record.instance["StoredTransferSyntaxUID"] for record in encoded} == {HTJ2K_LOSSLESS_RPCL}
    assert len({frame for record in encoded for frame in record.frames.values()}) == 1  # the same pixels
    records = [read_instance(bundled(name), None) for name in names]
    assert len({tuple(frame_checksums(record)) for record in records + encoded}) == 1
    assert {record.instance["StoredTransferSyntaxUID"] for record in records} == {
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.90",
    }
    sizes = {
        record.instance["StoredTransferSyntaxUID"]: record.instance["ImageFrames"][0]["FrameSizeInBytes"]
        for record in records
    }
    assert sizes["1.2.840.10008.1.2.1"] == 64 * 64 * 2
    assert sizes["1.2.840.10008.1.2.5"] < 64 * 64 * 2  # compressed frames keep their stored size


def test_multiframe_compressed_frames_are_stored_and_checksummed_per_frame() -> None:
    record = read_instance(bundled("rtdose_rle.dcm"), None)
    kept = read_instance(bundled("rtdose_rle.dcm"))  # 32-bit pixels: no lossless codestream for them, kept
    assert kept.instance == record.instance and kept.frames == record.frames
    dataset = dcmread(bundled("rtdose_rle.dcm"))
    frames = record.instance["ImageFrames"]
    assert len(frames) == dataset.NumberOfFrames == 15
    assert len({frame["ID"] for frame in frames}) == 15
    stored = list(generate_frames(dataset.PixelData, number_of_frames=15))
    for index, frame in enumerate(frames):
        pixels = pixel_array(dataset, index=index, raw=True)
        assert frame["PixelDataChecksumFromBaseToFullResolution"][0]["Checksum"] == zlib.crc32(
            pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        )
        assert frame["MinPixelValue"] == pixels.min() and frame["MaxPixelValue"] == pixels.max()
        assert record.frames[frame["ID"]] == stored[index]
        assert frame["FrameSizeInBytes"] == len(stored[index])
    assert frame_checksums(record) == frame_checksums(read_instance(bundled("rtdose.dcm")))
    encoded = read_instance(bundled("SC_rgb_rle_16bit_2frame.dcm"))  # 16-bit RGB, 2 frames: each encoded
    source = dcmread(bundled("SC_rgb_rle_16bit_2frame.dcm"))
    assert encoded.instance["StoredTransferSyntaxUID"] == HTJ2K_LOSSLESS_RPCL
    for index, frame in enumerate(encoded.instance["ImageFrames"]):
        decoded = openjpeg.decode(encoded.frames[frame["ID"]])
        assert np.array_equal(decoded, pixel_array(source, index=index, raw=True))


def test_undecodable_frames_are_checksummed_as_stored() -> None:
    record = read_instance(bundled("MR_small_jpeg_ls_lossless.dcm"))  # no JPEG-LS decoder installed
    (frame,) = record.instance["ImageFrames"]
    stored = record.frames[frame["ID"]]
    assert record.instance["ChecksumType"] == ENCODED
    assert record.instance["StoredTransferSyntaxUID"] == "1.2.840.10008.1.2.4.80"
    assert frame["PixelDataChecksumFromBaseToFullResolution"][0]["Checksum"] == zlib.crc32(stored)
    assert "MinPixelValue" not in frame and frame["FrameSizeInBytes"] == len(stored)


def test_deflated_file_frames_are_stored_inflated() -> None:
    record = read_instance(bundled("image_dfl.dcm"), None)
    assert record.instance["DICOM"]["TransferSyntaxUID"] == DeflatedExplicitVRLittleEndian
    assert record.instance["StoredTransferSyntaxUID"] == ExplicitVRLittleEndian
    (frame,) = record.instance["ImageFrames"]
    assert record.frames[frame["ID"]] == dcmread(bundled("image_dfl.dcm")).PixelData


def test_instance_without_pixel_data_has_no_frames() -> None:
    record = read_instance(bundled("rtplan.dcm"))
    assert record.instance["ImageFrames"] == [] and record.frames == {}
    assert "PixelData" not in record.instance["DICOM"]


def test_ingest_is_deterministic(ct: InstanceRecord) -> None:
    again = read_instance(bundled("CT_small.dcm"))
    assert again.instance == ct.instance and again.frames == ct.frames


# -- bundled test data -------------------------------------------------------------------------------------


def test_every_readable_bundled_file_ingests_or_fails_for_its_known_reason() -> None:
    ingested, failed, unreadable = [], {}, []
    for name in all_bundled_files():
        path = bundled(name)
        try:
            dcmread(path)
        except Exception:
            unreadable.append(name)
            with pytest.raises(IngestError, match="not a DICOM P10 file") as info:
                read_instance(path)
            assert info.value.path == path
            continue
        try:
            record = read_instance(path)
        except IngestError as exc:
            assert exc.path == path
            failed[name] = exc.reason
            continue
        ingested.append(name)
        orjson.dumps(record.instance)
        dicom = record.instance["DICOM"]
        assert {key for key in dicom if HEX_KEY.match(key)} <= set(record.instance["DICOMVRs"]), name
        assert all(FRAME_ID.match(frame_id) for frame_id in record.frames), name
        assert [frame["ID"] for frame in record.instance["ImageFrames"]] == list(record.frames), name
    assert set(failed) == set(EXPECTED_FAILURES)
    for name, reason in failed.items():
        assert EXPECTED_FAILURES[name] in reason, (name, reason)
    assert len(ingested) == 143
    assert {"CT_small.dcm", "rtdose_rle.dcm", "examples_ybr_color.dcm", "waveform_ecg.dcm"} <= set(ingested)
    assert "no_meta.dcm" in unreadable and "README.txt" in unreadable


# -- bad input ---------------------------------------------------------------------------------------------


def test_not_dicom_raises_ingest_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(IngestError) as info:
        read_instance(str(path))
    assert info.value.path == str(path) and "not a DICOM P10 file" in info.value.reason
    assert str(path) in str(info.value)


def test_missing_file_raises_ingest_error(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="unreadable") as info:
        read_instance(str(tmp_path / "gone.dcm"))
    assert info.value.path == str(tmp_path / "gone.dcm")


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_uid_raises_ingest_error(tmp_path: Path, keyword: str) -> None:
    dataset = dcmread(bundled("CT_small.dcm"))
    delattr(dataset, keyword)
    path = tmp_path / "no-uid.dcm"
    dataset.save_as(path)
    with pytest.raises(IngestError) as info:
        read_instance(str(path))
    assert info.value.reason.startswith(f"no {keyword}") and info.value.path == str(path)


# -- documents: build and merge ----------------------------------------------------------------------------


def variant(tmp_path: Path, name: str, **changes: Any) -> InstanceRecord:
    """CT_small with some attributes changed, written to a file and ingested."""
    dataset = dcmread(bundled("CT_small.dcm"))
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    if "SOPInstanceUID" in changes:
        dataset.file_meta.MediaStorageSOPInstanceUID = changes["SOPInstanceUID"]
    path = tmp_path / name
    dataset.save_as(path)
    return read_instance(str(path))


def test_build_document_has_the_ahi_shape(ct: InstanceRecord) -> None:
    document = build_document([ct], "a" * 32, "b" * 32)
    check_document(document)
    ref = reference("ct-2025-htj2k-1-instance.json")
    assert list(document) == list(ref)
    assert list(document["Study"]) == list(ref["Study"])
    assert (document["SchemaVersion"], document["DatastoreID"], document["ImageSetID"]) == ("1.1", "a" * 32, "b" * 32)
    assert document["Patient"] == {"DICOM": ct.patient}
    assert document["Study"]["DICOM"] == ct.study
    assert document["Study"]["Series"] == {ct.series_uid: {"DICOM": ct.series, "Instances": {ct.sop_uid: ct.instance}}}
    assert orjson.loads(orjson.dumps(document)) == document


def test_merge_adds_an_instance_without_touching_the_input(ct: InstanceRecord, tmp_path: Path) -> None:
    document = build_document([ct], "a" * 32, "b" * 32)
    before = copy.deepcopy(document)
    other = variant(tmp_path, "second.dcm", SOPInstanceUID=generate_uid(), InstanceNumber="2 ")
    merged = merge_records(document, [other])
    assert merged is not None and document == before
    instances = merged["Study"]["Series"][ct.series_uid]["Instances"]
    assert set(instances) == {ct.sop_uid, other.sop_uid}
    assert instances[other.sop_uid]["DICOM"]["InstanceNumber"] == "2 "


def test_merge_adds_a_new_series_of_the_same_study(ct: InstanceRecord, tmp_path: Path) -> None:
    document = build_document([ct], "a" * 32, "b" * 32)
    other = variant(tmp_path, "series.dcm", SOPInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid())
    merged = merge_records(document, [other])
    assert merged is not None and set(merged["Study"]["Series"]) == {ct.series_uid, other.series_uid}


def test_resending_an_identical_instance_is_a_no_op(ct: InstanceRecord) -> None:
    document = build_document([ct], "a" * 32, "b" * 32)
    again = read_instance(bundled("CT_small.dcm"))
    merged = merge_records(document, [again])
    assert merged == document and merged is not document


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"PatientName": "Other^Name"}, "Patient level differs"),
        ({"StudyDescription": "another"}, "Study level differs"),
        ({"Manufacturer": "ACME"}, "Series level differs"),
        ({"ImageComments": "changed"}, "same SOPInstanceUID, different content"),
    ],
)
def test_conflicting_records_do_not_merge(ct: InstanceRecord, tmp_path: Path, changes: dict, why: str) -> None:
    document = build_document([ct], "a" * 32, "b" * 32)
    other = variant(tmp_path, "conflict.dcm", **changes)
    assert merge_records(document, [other]) is None, why
    with pytest.raises(ValueError, match="conflict"):
        build_document([ct, other], "a" * 32, "b" * 32)


def test_same_instance_in_another_transfer_syntax_conflicts() -> None:
    little = read_instance(bundled("MR_small.dcm"))
    big = read_instance(bundled("MR_small_bigendian.dcm"))
    assert little.sop_uid == big.sop_uid and little.patient == big.patient
    assert merge_records(build_document([little], "a" * 32, "b" * 32), [big]) is None


def test_build_document_needs_records() -> None:
    with pytest.raises(ValueError):
        build_document([], "a" * 32, "b" * 32)


# -- paths and read_any ------------------------------------------------------------------------------------


def test_iter_dicom_paths_expands_directories_and_reports_non_files(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "2.dcm").write_bytes(b"x")
    (tmp_path / "a" / "1.dcm").write_bytes(b"x")
    os.mkfifo(tmp_path / "a" / "pipe")
    single = tmp_path / "single.dcm"
    single.write_bytes(b"x")
    files, failures = iter_dicom_paths([str(tmp_path / "a"), str(single), str(single), str(tmp_path / "missing")])
    assert files == [str(tmp_path / "a" / "1.dcm"), str(tmp_path / "a" / "b" / "2.dcm"), str(single)]
    assert failures == [
        (str(tmp_path / "a" / "pipe"), "not a regular file"),
        (str(tmp_path / "missing"), "no such file or directory"),
    ]


def test_iter_dicom_paths_finds_every_bundled_file() -> None:
    files, failures = iter_dicom_paths([TEST_FILES])
    assert failures == [] and len(files) == len(all_bundled_files())


def test_read_any_reads_documents_and_dicom(tmp_path: Path, ct: InstanceRecord) -> None:
    document = reference("us-doppler-9-instances.json")
    plain, packed = tmp_path / "doc.json", tmp_path / "doc.json.gz"
    plain.write_bytes(orjson.dumps(document))
    packed.write_bytes(gzip.compress(orjson.dumps(document)))
    assert read_any(str(plain)) == document == read_any(str(packed))
    record = read_any(bundled("CT_small.dcm"))
    assert isinstance(record, InstanceRecord) and record.instance == ct.instance
    assert np.array_equal(
        openjpeg.decode(next(iter(record.frames.values()))), dcmread(bundled("CT_small.dcm")).pixel_array
    )


def test_group_records_splits_conflicting_records(ct: InstanceRecord, tmp_path: Path) -> None:
    second = variant(tmp_path, "second.dcm", SOPInstanceUID=generate_uid())
    renamed = variant(tmp_path, "renamed.dcm", PatientName="Other^Name")
    changed = variant(tmp_path, "changed.dcm", ImageComments="changed")
    again = read_instance(bundled("CT_small.dcm"))
    groups = group_records([ct, renamed, second, changed, again])
    assert [[record.path for record in group] for group in groups] == [
        [ct.path, second.path, again.path],
        [renamed.path],
        [changed.path],
    ]
    for group in groups:
        build_document(group, "a" * 32, "b" * 32)
    little, big = read_instance(bundled("MR_small.dcm")), read_instance(bundled("MR_small_bigendian.dcm"))
    assert little.sop_uid == big.sop_uid and not set(little.frames) & set(big.frames)  # no frame ID collision
    assert len(group_records([little, big])) == 2
    assert group_records([]) == []
