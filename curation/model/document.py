"""The AHI metadata document: its levels, its fixed keys, and reading/writing it (the one place for that).

A document is the JSON that GetImageSetMetadata returns (gzip-compressed on the wire). Everything in the
toolkit passes documents around as plain ``dict`` objects in exactly that shape.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

SCHEMA_VERSION = "1.1"
LEVELS = ("Patient", "Study", "Series", "Instance")
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.202"

#: Keys that AHI generates and that no update may touch.
AHI_GENERATED_KEYS = frozenset(
    {
        "SchemaVersion",
        "DatastoreID",
        "ImageSetID",
        "PixelData",
        "Checksum",
        "Width",
        "Height",
        "MinPixelValue",
        "MaxPixelValue",
        "FrameSizeInBytes",
    }
)

#: Instance-node keys that sit beside ``DICOM`` and are not DICOM attributes.
INSTANCE_SYSTEM_KEYS = ("DICOMVRs", "StoredTransferSyntaxUID", "ChecksumType", "ImageFrames")

GZIP_MAGIC = b"\x1f\x8b"


class DocumentError(ValueError):
    """A document (or blob) that is not a well-formed AHI metadata document."""


def parse_document(data: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """Parse a metadata blob, gzip-compressed or plain JSON, into a document dict."""
    if isinstance(data, str):
        data = data.encode()
    data = bytes(data)
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DocumentError(f"blob is not valid gzip: {exc}") from exc
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DocumentError(f"blob is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise DocumentError(f"document must be a JSON object, not {type(document).__name__}")
    return document


def encode_document(document: dict[str, Any], *, compress: bool = False) -> bytes:
    """Serialize a document to compact JSON bytes (gzip-compressed when ``compress``)."""
    data = orjson.dumps(document)
    return gzip.compress(data, compresslevel=6, mtime=0) if compress else data


def read_document(path: str) -> dict[str, Any]:
    """Read a document from a ``.json`` or ``.json.gz`` file."""
    with open(path, "rb") as handle:
        return parse_document(handle.read())


def check_document(document: dict[str, Any]) -> None:
    """Raise DocumentError naming what is missing when ``document`` lacks a level AHI always has."""
    image_set = document.get("ImageSetID", "<no ImageSetID>")
    for key in ("Patient", "Study"):
        if not isinstance(document.get(key), dict):
            raise DocumentError(f"image set {image_set}: document has no {key} level")
    study = document["Study"]
    if not isinstance(study.get("Series", {}), dict):
        raise DocumentError(f"image set {image_set}: Study.Series is not an object")
    for series_uid, series in study.get("Series", {}).items():
        if not isinstance(series, dict) or not isinstance(series.get("Instances", {}), dict):
            raise DocumentError(f"image set {image_set}: series {series_uid} is not an object with Instances")


def iter_series(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(SeriesInstanceUID, series node)`` for every series of the document."""
    yield from document.get("Study", {}).get("Series", {}).items()


def iter_instances(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Yield ``(SeriesInstanceUID, SOPInstanceUID, instance node)`` for every instance of the document."""
    for series_uid, series in iter_series(document):
        for sop_uid, instance in series.get("Instances", {}).items():
            yield series_uid, sop_uid, instance


# --- what promotion and study consistency compare ------------------------------------------------------------

#: Keys a document digest leaves out: they name where a document is stored, not what it holds.
LOCATION_KEYS = frozenset({"DatastoreID", "ImageSetID"})


def digest(document: dict[str, Any]) -> str:
    """The sha256 of a document's content (keys sorted, ``DatastoreID``/``ImageSetID`` left out).

    Two image sets hold the same metadata, frames included (``ImageFrames`` is part of the document), exactly
    when their digests are equal: what verification compares a copy or a promoted image set with.
    """
    content = {key: value for key, value in document.items() if key not in LOCATION_KEYS}
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class PrimaryFacts:
    """What AHI's primary-image-set rules look at in one document: its study, series and SOP instance UIDs
    and its Patient- and Study-level attributes (``curation.model.rules.promotion_refusal``)."""

    image_set_id: str
    study_uid: str | None
    series: frozenset[str]
    sops: frozenset[str]
    patient: dict[str, Any] = field(compare=False)
    study: dict[str, Any] = field(compare=False)


def primary_facts(document: dict[str, Any], image_set_id: str | None = None) -> PrimaryFacts:
    """The :class:`PrimaryFacts` of ``document`` (``image_set_id`` defaults to its ``ImageSetID``)."""
    study = document.get("Study") or {}
    study_dicom = dict(study.get("DICOM") or {})
    uid = study_dicom.get("StudyInstanceUID")
    return PrimaryFacts(
        image_set_id=str(image_set_id if image_set_id is not None else document.get("ImageSetID", "")),
        study_uid=uid if isinstance(uid, str) else None,
        series=frozenset(uid for uid, _ in iter_series(document)),
        sops=frozenset(sop for _, sop, _ in iter_instances(document)),
        patient=dict((document.get("Patient") or {}).get("DICOM") or {}),
        study=study_dicom,
    )
