"""The document I/O every other module relies on: gzip or plain JSON in, the exact same document out."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from curation.model.document import (
    DocumentError,
    check_document,
    encode_document,
    iter_instances,
    parse_document,
    read_document,
)

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
REFERENCE_FILES = sorted(REFERENCE.glob("*.json"))


@pytest.mark.parametrize("path", REFERENCE_FILES, ids=lambda p: p.name)
def test_reference_documents_round_trip_through_gzip(path: Path) -> None:
    expected = json.loads(path.read_bytes())
    assert parse_document(path.read_bytes()) == expected
    blob = encode_document(expected, compress=True)
    assert blob[:2] == b"\x1f\x8b"
    assert parse_document(blob) == expected
    assert json.loads(gzip.decompress(blob)) == expected
    assert read_document(str(path)) == expected


def test_iter_instances_visits_every_instance_once() -> None:
    document = read_document(str(REFERENCE / "ct-588-instances.json"))
    keys = [(series, sop) for series, sop, _ in iter_instances(document)]
    assert len(keys) == len(set(keys)) == 588


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x1f\x8b\x08\x00garbage", "not valid gzip"),
        (b"\x1f\x8b\x08\x00 truncated gzip", "not valid gzip"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_blobs_are_refused_with_the_reason(blob: bytes, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        parse_document(blob)


def test_check_document_names_the_image_set_and_the_missing_level() -> None:
    with pytest.raises(DocumentError, match="image set abc: document has no Study level"):
        check_document({"ImageSetID": "abc", "Patient": {"DICOM": {}}})
