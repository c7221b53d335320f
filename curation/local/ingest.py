"""DICOM P10 files -> the pieces of an AHI metadata document, as HealthImaging's import writes them.

One instance is read with pydicom into an :class:`InstanceRecord`: its Patient, Study and Series level
attributes (placed by :func:`curation.model.levels.level_of`), its instance node (``DICOM``, ``DICOMVRs``,
``StoredTransferSyntaxUID``, ``ChecksumType``, ``ImageFrames``) and its stored frame bytes. Records become a
document with :func:`build_document` or join an existing one with :func:`merge_records`.

Values follow the reference documents: keywords as keys (8-hex uppercase tags for private and keyword-less
attributes, with their VR in ``DICOMVRs``); text as strings (PN one string with ``^``); IS and DS as the raw
strings of the file, padding kept; binary numbers as JSON numbers; attributes whose dictionary VM allows more
than one value as arrays; empty elements as ``null``; binary VRs as base64 (an empty one as ``""``); pixel
data as ``null``; sequences as arrays of objects under the same rules; file meta (group 0002) at instance level.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VM, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import iter_pixels
from pydicom.pixels.utils import get_expected_length
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, MediaStorageDirectoryStorage

from curation.local.encoding import StorageFormat, encodable, encode_frame, kept_syntax, target_syntax
from curation.model.document import SCHEMA_VERSION, read_document
from curation.model.levels import level_of

BINARY_VRS = frozenset({"OB", "OW", "OB or OW", "OW or OB", "UN", "OF", "OD", "OL", "OV"})
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "US or SS", "US or OW", "US or SS or OW"})
RAW_STRING_VRS = frozenset({"IS", "DS"})
PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
#: AHI's value for a checksum over decoded (decompressed) pixels, as in the 2025 reference document.
DECOMPRESSED = "DECOMPRESSED"
#: Local marker (never seen from AHI): the checksum is over the stored, still compressed, frame bytes.
ENCODED = "ENCODED"


class IngestError(Exception):
    """A file that cannot become an AHI instance; ``path`` names it and ``reason`` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class InstanceRecord:
    """One ingested instance: its level attributes, its instance node and its stored frame bytes."""

    path: str
    study_uid: str
    series_uid: str
    sop_uid: str
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    frames: dict[str, bytes] = field(default_factory=dict, repr=False)


def read_instance(path: str, storage_format: StorageFormat | None = "HTJ2K") -> InstanceRecord:
    """Read one DICOM P10 file into an :class:`InstanceRecord`, its frames encoded as a datastore of
    ``storage_format`` stores them (None: as in the file); raise :class:`IngestError` when it can't be."""
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, force=False)
            return _record(path, dataset, storage_format)
    except IngestError:
        raise
    except InvalidDicomError as exc:
        raise IngestError(path, "not a DICOM P10 file (no 'DICM' marker after the 128-byte preamble)") from exc
    except OSError as exc:
        raise IngestError(path, f"unreadable: {exc.strerror or exc}") from exc
    except Exception as exc:  # pydicom raises many kinds on damaged files
        raise IngestError(path, f"damaged DICOM ({type(exc).__name__}: {_our_words(exc)})") from exc


def _our_words(exc: Exception) -> str:
    """pydicom's message without its advice to the programmer ("Use force=True ..."), which a user cannot follow."""
    sentences = [part for part in str(exc).replace("\n", " ").split(". ") if "force=True" not in part]
    return ". ".join(sentences).strip() or type(exc).__name__


def _record(path: str, dataset: Dataset, storage_format: StorageFormat | None) -> InstanceRecord:
    meta = dataset.file_meta
    if meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
        raise IngestError(path, "a DICOMDIR (media storage directory), not an image or other instance")
    uids = {keyword: _uid(dataset, keyword) for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    missing = [keyword for keyword, uid in uids.items() if not uid]
    if missing:
        raise IngestError(path, f"no {', '.join(missing)}: not an instance AHI can import")
    vrs: dict[str, str] = {}
    levels: dict[str, dict[str, Any]] = {"Patient": {}, "Study": {}, "Series": {}, "Instance": {}}
    for key, value in _attributes(meta, vrs).items():
        levels["Instance"][key] = value
    for key, value in _attributes(dataset, vrs).items():
        levels[level_of(key)][key] = value
    transfer_syntax = UID(str(meta.get("TransferSyntaxUID") or ExplicitVRLittleEndian))
    image_frames, frames, checksum_type, stored = _frames(
        path, dataset, uids["SOPInstanceUID"], transfer_syntax, storage_format
    )
    instance = {
        "DICOM": levels["Instance"],
        "DICOMVRs": vrs,
        "StoredTransferSyntaxUID": stored,
        "ChecksumType": checksum_type,
        "ImageFrames": image_frames,
    }
    return InstanceRecord(
        path=path,
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_uid=uids["SOPInstanceUID"],
        patient=levels["Patient"],
        study=levels["Study"],
        series=levels["Series"],
        instance=instance,
        frames=frames,
    )


def _uid(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    return str(value).strip() if value else ""


@lru_cache(maxsize=4096)
def _multi_valued(tag: int) -> bool:
    """True when the data dictionary lets the attribute hold more than one value (VM other than "1")."""
    try:
        return dictionary_VM(tag) != "1"
    except KeyError:
        return False


@lru_cache(maxsize=4096)
def _keyword(tag: int) -> str:
    return "" if BaseTag(tag).is_private else keyword_for_tag(tag)


def _attributes(dataset: Dataset, vrs: dict[str, str]) -> dict[str, Any]:
    """The attributes of one dataset (or sequence item) as an AHI ``DICOM`` object, recording hex keys' VRs."""
    out: dict[str, Any] = {}
    for tag in sorted(dataset.keys()):
        raw = dataset.get_item(tag)
        element = dataset[tag]
        key = _keyword(tag)
        if not key or key in out:  # private, unknown, or a second repeating group (60xx) of the same keyword
            key = f"{int(tag):08X}"
            vrs[key] = element.VR
        out[key] = _value(element, raw, vrs)
    return out


def _value(element: DataElement, raw: RawDataElement | DataElement | None, vrs: dict[str, str]) -> Any:
    vr = element.VR
    if element.tag in PIXEL_DATA_TAGS:
        return None
    if vr in BINARY_VRS or isinstance(element.value, bytes | bytearray):
        return base64.b64encode(bytes(element.value or b"")).decode("ascii")
    if element.is_empty:
        return None
    if vr == "SQ":
        return [_attributes(item, vrs) for item in element.value]
    if vr in RAW_STRING_VRS:
        values = _raw_strings(element, raw)
    else:
        items = list(element.value) if isinstance(element.value, MultiValue | list) else [element.value]
        values = [_scalar(vr, item) for item in items]
    if len(values) > 1 or _multi_valued(int(element.tag)):
        return values
    return values[0]


def _raw_strings(element: DataElement, raw: RawDataElement | DataElement | None) -> list[str]:
    """IS/DS values exactly as written in the file (padding kept), split on the backslash."""
    if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
        text = raw.value.decode("latin-1")
    else:
        items = element.value if isinstance(element.value, MultiValue | list) else [element.value]
        text = "\\".join(getattr(item, "original_string", None) or str(item) for item in items)
    return text.split("\\")


def _scalar(vr: str, value: Any) -> Any:
    if vr in NUMBER_VRS:
        return float(value) if isinstance(value, float) else int(value)
    if vr == "AT":
        return f"{int(value):08X}"
    return "" if value is None else str(value)


def _frames(
    path: str, dataset: Dataset, sop_uid: str, transfer_syntax: UID, storage_format: StorageFormat | None
) -> tuple[list[dict[str, Any]], dict[str, bytes], str, str]:
    """The instance's ``ImageFrames``, its stored frame bytes by frame ID, its ``ChecksumType`` and its
    ``StoredTransferSyntaxUID``.

    Each checksum is ``zlib.crc32`` of the frame as pydicom decodes it (``raw=True``: no colour-space
    conversion; pixels as little-endian bytes in C order), with Min/MaxPixelValue from those pixels. Frames are
    stored encoded as AHI stores them (:mod:`curation.local.encoding`): transcoded to the datastore's
    ``storage_format`` unless AHI keeps their encoding. When pydicom cannot decode the pixel data (a codec it
    lacks here, such as JPEG-LS), the frames keep their bytes and transfer syntax, the checksum is over those
    bytes, Min/MaxPixelValue are left out, and ``ChecksumType`` is ``DECOMPRESSED`` for native data and the
    local marker ``ENCODED`` for compressed data. ``FrameSizeInBytes`` is the stored size, as in AHI's documents.
    """
    pixel_tags = sorted((tag for tag in PIXEL_DATA_TAGS if tag in dataset), reverse=True)  # PixelData first
    if not pixel_tags:
        return [], {}, DECOMPRESSED, str(kept_syntax(transfer_syntax))
    source = _stored_frames(path, dataset, dataset[pixel_tags[0]].value, transfer_syntax)
    width, height = int(dataset.Columns), int(dataset.Rows)
    target = target_syntax(transfer_syntax, storage_format, int(dataset.get("BitsAllocated") or 0))
    decoded = _decoded_frames(dataset, len(source), target)
    encoded_all = decoded is not None and all(encoded is not None for _, _, encoded in decoded)
    stored_syntax = target if target is not None and encoded_all else kept_syntax(transfer_syntax)
    image_frames: list[dict[str, Any]] = []
    frames: dict[str, bytes] = {}
    for index, frame in enumerate(source):
        frame_id = _frame_id(sop_uid, index, transfer_syntax, frame)
        if decoded is not None:
            checksum, extremes, encoded = decoded[index]
            stored = encoded if encoded is not None else frame
        else:
            checksum, extremes, stored = zlib.crc32(frame), {}, frame
        image_frames.append(
            {
                "ID": frame_id,
                "PixelDataChecksumFromBaseToFullResolution": [{"Width": width, "Height": height, "Checksum": checksum}],
                **extremes,
                "FrameSizeInBytes": len(stored),
            }
        )
        frames[frame_id] = stored
    checksum_type = DECOMPRESSED if decoded is not None or not transfer_syntax.is_compressed else ENCODED
    return image_frames, frames, checksum_type, str(stored_syntax)


def _decoded_frames(
    dataset: Dataset, count: int, target: UID | None
) -> list[tuple[int, dict[str, Any], bytes | None]] | None:
    """CRC32, Min/MaxPixelValue and (when ``target``) the frame encoded in ``target``, for each decoded frame
    (one frame in memory at a time); None if pydicom cannot decode the frames. When one frame cannot be
    encoded (32-bit or float pixels), no frame of the instance is: it keeps its stored bytes."""
    summaries: list[tuple[int, dict[str, Any], bytes | None]] = []
    try:
        for pixels in iter_pixels(dataset, raw=True):
            little = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<"))
            extremes = {"MinPixelValue": pixels.min().item(), "MaxPixelValue": pixels.max().item()}
            if target is not None and not encodable(pixels):
                target = None
                summaries = [(checksum, known, None) for checksum, known, _ in summaries]
            encoded = encode_frame(pixels, target) if target is not None else None
            summaries.append((zlib.crc32(little.tobytes()), extremes, encoded))
    except Exception:  # any codec failure: fall back to the stored bytes for the whole instance
        return None
    return summaries if len(summaries) == count else None


def _frame_id(sop_uid: str, index: int, transfer_syntax: str, frame: bytes) -> str:
    """32 lowercase hex: md5 of the SOPInstanceUID, the frame index, the transfer syntax and the stored bytes.

    Deterministic (a re-sent identical file gets the same IDs) yet distinct when a file with the same
    SOPInstanceUID carries other pixels, so frames of a conflicting copy never overwrite the original's.
    """
    digest = hashlib.md5(f"{sop_uid}/{index}/{transfer_syntax}/".encode())
    digest.update(frame)
    return digest.hexdigest()


def _frame_count(path: str, dataset: Dataset) -> int:
    value = dataset.get("NumberOfFrames")
    if value in (None, ""):
        return 1
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise IngestError(path, f"NumberOfFrames {str(value)!r} is not an integer") from None
    if count < 1:
        raise IngestError(path, f"NumberOfFrames {count} is not a positive frame count")
    return count


def _stored_frames(path: str, dataset: Dataset, pixel_data: bytes, transfer_syntax: UID) -> list[bytes]:
    """Split the pixel data element into its frames, as stored in the file's transfer syntax."""
    count = _frame_count(path, dataset)
    if transfer_syntax.is_encapsulated:
        frames = list(generate_frames(pixel_data, number_of_frames=count))
        if len(frames) != count:
            raise IngestError(path, f"encapsulated PixelData holds {len(frames)} frames, NumberOfFrames is {count}")
        return frames
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if not isinstance(dataset.get(keyword), int):
            raise IngestError(path, f"pixel data without a usable {keyword}")
    if dataset.BitsAllocated == 1:
        return _bit_frames(path, dataset, pixel_data, count)
    expected = get_expected_length(dataset, "bytes")
    if len(pixel_data) < expected:
        raise IngestError(path, f"PixelData holds {len(pixel_data)} bytes, {count} frame(s) need {expected}")
    size = expected // count
    return [bytes(pixel_data[index * size : (index + 1) * size]) for index in range(count)]


def _bit_frames(path: str, dataset: Dataset, pixel_data: bytes, count: int) -> list[bytes]:
    """1-bit frames are packed back to back; each stored frame is repacked to start on a byte."""
    bits = int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1))
    if len(pixel_data) * 8 < bits * count:
        raise IngestError(path, f"PixelData holds {len(pixel_data)} bytes, {count} 1-bit frame(s) need more")
    unpacked = np.unpackbits(np.frombuffer(pixel_data, dtype=np.uint8), bitorder="little")
    return [np.packbits(unpacked[i * bits : (i + 1) * bits], bitorder="little").tobytes() for i in range(count)]


def build_document(records: Iterable[InstanceRecord], datastore_id: str, image_set_id: str) -> dict[str, Any]:
    """A complete AHI document holding ``records``; ValueError when they cannot share one image set."""
    records = list(records)
    if not records:
        raise ValueError("build_document needs at least one instance record")
    first = records[0]
    document: dict[str, Any] = {
        "SchemaVersion": SCHEMA_VERSION,
        "DatastoreID": datastore_id,
        "ImageSetID": image_set_id,
        "Patient": {"DICOM": copy.deepcopy(first.patient)},
        "Study": {"DICOM": copy.deepcopy(first.study), "Series": {}},
    }
    merged = merge_records(document, records)
    if merged is None:
        raise ValueError("records conflict (different Patient/Study/Series values or instance content)")
    return merged


def merge_records(document: dict[str, Any], records: Iterable[InstanceRecord]) -> dict[str, Any] | None:
    """A new document with ``records`` added, or None when one conflicts with it (so it needs another image set).

    A record fits when its Patient and Study attributes equal the document's and, for a series already
    present, its Series attributes equal that series'; a new series of the same study is added. An
    instance already present with identical content is a no-op; with different content it is a conflict.
    The input document is never modified.
    """
    merged = copy.deepcopy(document)
    study = merged.setdefault("Study", {})
    all_series = study.setdefault("Series", {})
    for record in records:
        if merged.get("Patient", {}).get("DICOM") != record.patient or study.get("DICOM") != record.study:
            return None
        series = all_series.get(record.series_uid)
        if series is None:
            series = all_series[record.series_uid] = {"DICOM": copy.deepcopy(record.series), "Instances": {}}
        elif series.get("DICOM") != record.series:
            return None
        instances = series.setdefault("Instances", {})
        existing = instances.get(record.sop_uid)
        if existing is None:
            instances[record.sop_uid] = copy.deepcopy(record.instance)
        elif existing != record.instance:
            return None
    return merged


def group_records(records: Iterable[InstanceRecord]) -> list[list[InstanceRecord]]:
    """Split records into groups that can each share one image set (first fit, input order kept).

    Records that :func:`merge_records` would refuse together (other Patient/Study/Series values, or the same
    SOPInstanceUID with other content) land in different groups; each group is safe for :func:`build_document`.
    """
    groups: list[list[InstanceRecord]] = []
    seen: list[tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]] = []  # series, instances by UID
    for record in records:
        index = next(
            (i for i, (series, instances) in enumerate(seen) if _fits(groups[i][0], series, instances, record)), -1
        )
        if index < 0:
            groups.append([])
            seen.append(({}, {}))
        series, instances = seen[index]
        series.setdefault(record.series_uid, record.series)
        instances.setdefault(record.sop_uid, record.instance)
        groups[index].append(record)
    return groups


def _fits(
    first: InstanceRecord,
    series: dict[str, dict[str, Any]],
    instances: dict[str, dict[str, Any]],
    record: InstanceRecord,
) -> bool:
    return (
        first.patient == record.patient
        and first.study == record.study
        and series.get(record.series_uid, record.series) == record.series
        and instances.get(record.sop_uid, record.instance) == record.instance
    )


def iter_dicom_paths(paths: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Expand files and directories (recursively, sorted) into candidate files, and ``(path, reason)`` failures.

    Files are not opened here: a file that is not DICOM fails later in :func:`read_instance`.
    """
    files: list[str] = []
    failures: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        if path not in seen:
            seen.add(path)
            files.append(path)

    for path in map(os.fspath, paths):
        if os.path.isfile(path):
            add(path)
        elif os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    full = os.path.join(root, name)
                    if os.path.isfile(full):
                        add(full)
                    else:
                        failures.append((full, "not a regular file"))
        elif os.path.exists(path):
            failures.append((path, "not a regular file or directory"))
        else:
            failures.append((path, "no such file or directory"))
    return files, failures


def read_any(path: str) -> dict[str, Any] | InstanceRecord:
    """An AHI document from a ``.json``/``.json.gz`` file, else an :class:`InstanceRecord` from a DICOM file."""
    path = os.fspath(path)
    if path.lower().endswith((".json", ".json.gz")):
        return read_document(path)
    return read_instance(path)
