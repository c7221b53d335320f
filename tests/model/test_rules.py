"""curation.model.rules: each AHI rule once, as a pure function, and diff and the service agreeing on it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from curation.curate.differ import diff
from curation.frames.snapshot import Snapshot
from curation.model import rules
from curation.model.errors import AHIError
from curation.model.rules import EditOp
from curation.model.updates import apply_to_document

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
_US = json.loads((REFERENCE / "us-doppler-9-instances.json").read_text())
US = _US["ImageSetID"]
US_SERIES = next(iter(_US["Study"]["Series"]))
US_SOPS = list(_US["Study"]["Series"][US_SERIES]["Instances"])


def test_edit_ops_are_strings() -> None:
    assert EditOp.SET == "set" and EditOp("remove_series") is EditOp.REMOVE_SERIES
    assert [op.value for op in EditOp] == ["set", "remove", "remove_instance", "remove_series"]


@pytest.mark.parametrize(
    ("key", "level", "holding", "expected"),
    [
        ("PatientName", "Patient", set(), None),
        ("PatientName", "Study", set(), "PatientName belongs to the Patient level"),
        ("BodyPartExamined", "Study", set(), "belongs to the Series level"),
        ("ImageComments", "Instance", set(), None),
        ("00091001", "Instance", set(), None),
        ("00091001", "Series", set(), "belongs to the Instance level"),
        # the document is the authority: where it holds the attribute wins over the normalization lists
        ("Manufacturer", "Instance", {"Instance"}, None),
        ("Manufacturer", "Series", {"Instance"}, "Manufacturer is stored at Instance level, not at Series level"),
        ("X", "Study", {"Series", "Patient"}, "stored at Patient and Series level"),
    ],
)
def test_level_problem(key: str, level: str, holding: set[str], expected: str | None) -> None:
    got = rules.level_problem(key, level, holding)
    assert got is None if expected is None else (got is not None and expected in got)


def test_level_problem_names_the_image_set() -> None:
    assert "in image set abc" in str(rules.level_problem("X", "Study", {"Series"}, image_set="abc"))


def test_uid_rules() -> None:
    assert rules.rekeys("SOPInstanceUID", "Instance") and rules.rekeys("SeriesInstanceUID", "Series")
    assert not rules.rekeys("SeriesInstanceUID", "Instance") and not rules.rekeys("StudyInstanceUID", "Study")
    assert rules.uid_removal_refusal("ImageComments", "Instance") is None
    assert rules.uid_removal_refusal("SOPInstanceUID", "Instance") == (
        "SOPInstanceUID cannot be removed, it identifies the instance"
    )
    assert rules.new_uid_problem("SOPInstanceUID", "1.2.3", {"1.2.4"}, image_set="s") is None
    assert "already used in image set s" in str(
        rules.new_uid_problem("SOPInstanceUID", "1.2.4", {"1.2.4"}, image_set="s")
    )
    for bad in ("", None, 5):
        assert "non-empty string" in str(rules.new_uid_problem("SeriesInstanceUID", bad, set(), image_set="s"))


def test_generated_keys() -> None:
    for key in (
        "SchemaVersion",
        "DatastoreID",
        "ImageSetID",
        "PixelData",
        "Checksum",
        "ImageFrames",
        "StoredTransferSyntaxUID",
        "ChecksumType",
    ):
        assert "generated attribute " + key in str(rules.generated_key_refusal(key))
    assert rules.generated_key_refusal("DICOMVRs") is None
    assert rules.generated_key_refusal("PatientName") is None


# --- diff and the service say the same -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def snap() -> Snapshot:
    snapshot = Snapshot.from_documents(
        [copy.deepcopy(_US)], datastore_id="8a23b5b729c44f0d8b15cfd06253c5cd", version_ids={US: "1"}
    )
    snapshot.primary = {US: False}
    return snapshot


def _refusal(payload: dict[str, Any], *, removable: bool = False) -> str:
    blob = json.dumps({"SchemaVersion": 1.1, **payload})
    member = "removableAttributes" if removable else "updatableAttributes"
    request = {"updateImageSetMetadataUpdates": {"DICOMUpdates": {member: blob}}, "force": True}
    with pytest.raises(AHIError) as info:
        apply_to_document(copy.deepcopy(_US), request)
    return info.value.message


def test_diff_and_update_share_the_level_rule(snap: Snapshot) -> None:
    studies = snap.studies
    studies.loc[US, "BodyPartExamined"] = "CHEST"
    [reason] = diff(snap, studies).problems["reason"].tolist()
    rule = rules.level_problem("BodyPartExamined", "Study", {"Series"}, image_set=US)
    assert rule is not None and rule in reason
    assert rule in _refusal({"Study": {"DICOM": {"BodyPartExamined": "CHEST"}}})


def test_diff_and_update_share_the_uid_rules(snap: Snapshot) -> None:
    instances = snap.instances
    first, second = (US, US_SERIES, US_SOPS[0]), (US, US_SERIES, US_SOPS[1])
    instances.at[first, "SOPInstanceUID"] = second[2]
    [reason] = diff(snap, instances).problems["reason"].tolist()
    rule = rules.new_uid_problem("SOPInstanceUID", second[2], {second[2]}, image_set=US)
    assert rule == reason
    payload = {"Study": {"Series": {US_SERIES: {"Instances": {first[2]: {"DICOM": {"SOPInstanceUID": second[2]}}}}}}}
    assert str(rule) in _refusal(payload)


def test_diff_and_update_share_the_generated_key_rule(snap: Snapshot) -> None:
    instances = snap.instances
    label = (US, US_SERIES, US_SOPS[0])
    instances.at[label, "PixelData"] = "AAAA"
    [reason] = diff(snap, instances).problems["reason"].tolist()
    rule = str(rules.generated_key_refusal("PixelData"))
    assert reason.startswith(rule)
    payload = {"Study": {"Series": {US_SERIES: {"Instances": {label[2]: {"DICOM": {"PixelData": "AAAA"}}}}}}}
    assert rule in _refusal(payload)
