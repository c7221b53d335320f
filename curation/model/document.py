"""The AHI metadata document: its levels, its fixed keys, and reading/writing it (the one place for that).

A document is the JSON that GetImageSetMetadata returns (gzip-compressed on the wire). Everything in the
toolkit passes documents around as plain ``dict`` objects in exactly that shape.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
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
