"""Frames as AHI stores them, end to end: import every pydicom test file that has pixels, read each frame back
with GetImageFrame through a real boto3 client, decode it with a codec the service does not use for encoding
(pylibjpeg-openjpeg, pydicom's JPEG 2000 plugin), and compare with the source pixels as pydicom decodes them.

A frame the service encodes (HTJ2K by default, JPEG 2000 lossless when the datastore asks for it) must decode
to exactly the source pixels; a frame AHI keeps in its original encoding (JPEG baseline, JPEG 2000 lossy,
1-bit, or pixels no lossless codestream holds here) must be the file's frame bytes exactly. Its
``StoredTransferSyntaxUID`` and GetImageFrame's content type say which.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import openjpeg
import pydicom
import pytest
from botocore.config import Config
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import pixel_array

import curation.local
from curation.local.encoding import HTJ2K_LOSSLESS_RPCL, KEPT_ENCODED, content_type
from curation.local.ingest import IngestError, read_instance
from curation.local.store import Store
from curation.model.document import iter_instances, parse_document

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
NO_RETRIES = {"config": Config(retries={"total_max_attempts": 1})}


def files_with_pixels() -> list[str]:
    """Every bundled file pydicom reads that has pixel data and AHI could import (skipping no file silently:
    the count is asserted)."""
    found = []
    for root, _dirs, names in os.walk(TEST_FILES):
        for name in sorted(names):
            path = os.path.join(root, name)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    dataset = pydicom.dcmread(path)
                read_instance(path, None)
            except (IngestError, Exception):
                continue
            if any(tag in dataset for tag in (0x7FE00008, 0x7FE00009, 0x7FE00010)):
                found.append(os.path.relpath(path, TEST_FILES))
    return sorted(found)


FILES = files_with_pixels()


def source_frames(path: Path) -> tuple[list[np.ndarray] | None, list[bytes]]:
    """The source's frames as pydicom decodes them (None when it cannot here) and as the file stores them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path)
        count = int(dataset.get("NumberOfFrames") or 1)
        if dataset.file_meta.TransferSyntaxUID.is_encapsulated:
            stored = list(generate_frames(dataset.PixelData, number_of_frames=count))
        else:
            stored = []
        try:
            decoded = [pixel_array(dataset, index=index, raw=True) for index in range(count)]
        except Exception:
            decoded = None
    return decoded, stored


@pytest.fixture(scope="module", params=["HTJ2K", "JPEG_2000_LOSSLESS"])
def imported(request: Any, tmp_path_factory: Any) -> tuple[str, Any, dict[str, Any]]:
    """Every file with pixels imported into a datastore of one storage format; a boto3 client over it."""
    store = Store(tmp_path_factory.mktemp("frames"))
    client = curation.local.client(store, **NO_RETRIES)
    datastore_id = client.create_datastore(datastoreName="frames", losslessStorageFormat=request.param)["datastoreId"]
    report = store.import_paths([TEST_FILES / name for name in FILES], datastore_id=datastore_id)
    instances: dict[str, Any] = {}
    for image_set_id in report.created + report.updated:
        blob = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)
        for _, _, instance in iter_instances(parse_document(blob["imageSetMetadataBlob"].read())):
            for frame in instance["ImageFrames"]:
                instances[frame["ID"]] = (image_set_id, instance)
    return request.param, client, {"datastore_id": datastore_id, "report": report, "frames": instances}


def test_there_are_files_to_check() -> None:
    assert len(FILES) >= 85, FILES  # pydicom 3.0 bundles 87 importable files with pixels


@pytest.mark.parametrize("name", FILES)
def test_every_frame_decodes_to_the_source_pixels(imported: tuple[str, Any, dict[str, Any]], name: str) -> None:
    storage_format, client, state = imported
    path = TEST_FILES / name
    record = read_instance(str(path), storage_format)  # its frame IDs (the import is deterministic)
    decoded, encapsulated = source_frames(path)
    wanted_syntax = HTJ2K_LOSSLESS_RPCL if storage_format == "HTJ2K" else "1.2.840.10008.1.2.4.90"
    for index, frame in enumerate(record.instance["ImageFrames"]):
        image_set_id, instance = state["frames"][frame["ID"]]
        answer = client.get_image_frame(
            datastoreId=state["datastore_id"],
            imageSetId=image_set_id,
            imageFrameInformation={"imageFrameId": frame["ID"]},
        )
        data = answer["imageFrameBlob"].read()
        stored_syntax = instance["StoredTransferSyntaxUID"]
        assert answer["contentType"] == content_type(stored_syntax)
        matching = [f for f in instance["ImageFrames"] if f["ID"] == frame["ID"]]
        assert matching and matching[0]["FrameSizeInBytes"] == len(data)
        if stored_syntax == wanted_syntax:  # encoded by the service: decodes to exactly the source pixels
            assert decoded is not None, name
            assert answer["contentType"] == ("image/jph" if storage_format == "HTJ2K" else "image/j2c")
            pixels = openjpeg.decode(data)
            assert np.array_equal(pixels, decoded[index].reshape(pixels.shape)), (name, index)
            assert pixels.dtype.kind == decoded[index].dtype.kind, name
        elif encapsulated:  # kept in its original encoding: the file's bytes exactly
            assert data == encapsulated[index], (name, index)
        else:  # native pixels no lossless codestream holds here (32-bit, float, 1-bit): the file's bytes
            assert data == record.frames[frame["ID"]], (name, index)


#: Transfer syntaxes pydicom cannot decode here without a GPL plugin (pylibjpeg-libjpeg) or pyjpegls: their
#: frames keep the file's bytes (AHI would transcode them).
NO_DECODER_HERE = {
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
}


def test_frames_keep_their_encoding_only_for_known_reasons(imported: tuple[str, Any, dict[str, Any]]) -> None:
    storage_format, _client, state = imported
    wanted = HTJ2K_LOSSLESS_RPCL if storage_format == "HTJ2K" else "1.2.840.10008.1.2.4.90"
    encoded = kept = 0
    for _, instance in state["frames"].values():
        syntax = instance["StoredTransferSyntaxUID"]
        if syntax == wanted:
            encoded += 1
            continue
        kept += 1
        bits = instance["DICOM"].get("BitsAllocated")
        reason_known = syntax in KEPT_ENCODED or syntax in NO_DECODER_HERE or bits in (1, 32)
        assert reason_known, (syntax, bits)
    assert encoded >= 50 and kept > 0
    assert not state["report"].failures


def test_pydicom_decodes_a_served_frame_as_a_dicom_client_would(imported: tuple[str, Any, dict[str, Any]]) -> None:
    """pydicom itself (with its pylibjpeg plugin) reads a served frame put back into the source's dataset."""
    storage_format, client, state = imported
    path = TEST_FILES / "CT_small.dcm"
    record = read_instance(str(path), storage_format)
    (frame,) = record.instance["ImageFrames"]
    image_set_id, instance = state["frames"][frame["ID"]]
    data = client.get_image_frame(
        datastoreId=state["datastore_id"], imageSetId=image_set_id, imageFrameInformation={"imageFrameId": frame["ID"]}
    )["imageFrameBlob"].read()
    dataset = pydicom.dcmread(path)
    expected = dataset.pixel_array.copy()
    dataset.file_meta.TransferSyntaxUID = instance["StoredTransferSyntaxUID"]
    dataset.PixelData = encapsulate([data])
    dataset["PixelData"].VR = "OB"
    assert np.array_equal(dataset.pixel_array, expected)
