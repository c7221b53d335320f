"""The walk's remembered sets (``updates._PLAIN_SETS``): a second walk of the same keys gives the same force
reasons, primary refusals, edits and refusals as a first walk with nothing remembered."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

import curation.model.updates as updates
from curation.model.document import iter_instances, read_document
from curation.model.errors import AHIError

REFERENCE = Path(__file__).parents[1] / "data" / "reference"


def _document() -> dict[str, Any]:
    return read_document(str(REFERENCE / "us-doppler-9-instances.json"))


def _payload(document: dict[str, Any], values: dict[str, Any]) -> dict[str, str]:
    series_uid, instance_uid, _ = next(iter(iter_instances(document)))
    instance = {"DICOM": dict(values)}
    study = {"DICOM": {"StudyDescription": "A STUDY"}, "Series": {series_uid: {"Instances": {instance_uid: instance}}}}
    return {"updatableAttributes": orjson.dumps({"SchemaVersion": 1.1, "Study": study}).decode()}


def _walk(document: dict[str, Any], blobs: dict[str, str], primary: bool, keep_edits: bool = True) -> Any:
    try:
        reasons, edits = updates.check_updates(document, blobs, is_primary=primary, keep_edits=keep_edits)
    except AHIError as exc:
        return exc.message
    return reasons, [edit.__dict__ for edit in edits]


@pytest.mark.parametrize("primary", [False, True])
@pytest.mark.parametrize(
    "values",
    [
        {"InstanceNumber": "7", "ImageType": ["DERIVED", "PRIMARY"]},
        {"InstanceNumber": "not a number", "ImageComments": "x" * 20000},
        {"InstanceNumber": "8", "SOPInstanceUID": "1.2.3.4"},
        {"InstanceNumber": 9},
    ],
)
def test_a_remembered_walk_equals_a_fresh_one(
    values: dict[str, Any], primary: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = _document()
    blobs = _payload(document, values)
    monkeypatch.setattr(updates, "_PLAIN_SETS", {})
    fresh = _walk(document, blobs, primary)
    assert updates._PLAIN_SETS  # the first walk remembered its keys
    again = _walk(document, blobs, primary)
    assert again == fresh
    other = _walk(copy.deepcopy(document), blobs, primary)
    assert other == fresh
    checks_only = _walk(document, blobs, primary, keep_edits=False)
    assert checks_only == (fresh if isinstance(fresh, str) else (fresh[0], []))


def test_checks_only_still_refuse_a_uid_already_used(monkeypatch: pytest.MonkeyPatch) -> None:
    document = _document()
    uids = [instance_uid for _, instance_uid, _ in iter_instances(document)]
    blobs = _payload(document, {"InstanceNumber": "3", "SOPInstanceUID": uids[1]})
    monkeypatch.setattr(updates, "_PLAIN_SETS", {})
    for keep_edits in (True, False, False):
        refusal = _walk(document, blobs, False, keep_edits)
        assert isinstance(refusal, str) and uids[1] in refusal
