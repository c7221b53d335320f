"""Plans that cannot be tampered with: every edit of a saved (or in-memory) plan is refused before anything is
sent, with one line saying what differs; a re-hashed plan on an edited base version still cannot send onto
another writer's version; bad plan files are one clear error, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.config import Config

import curation.local
from curation.curate.differ import diff
from curation.curate.planner import plan
from curation.curate.updateplan import PlanEditedError, PlanFormatError, UpdatePlan
from curation.model.document import read_document
from curation.run.applying import apply
from curation.run.fetching import fetch
from curation.run.options import PollPolicy
from curation.run.verifying import verify

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
NO_RETRIES = Config(retries={"total_max_attempts": 1})
FAST = {"rate": None, "control_rate": None, "progress": False, "poll": PollPolicy(initial=0.005, timeout=10)}


@pytest.fixture
def planned(local_store: Any, tmp_path: Path) -> tuple[Any, Any, UpdatePlan, Path]:
    """Two image sets, a plan of two study-level edits saved to plan.json, and a client."""
    import copy

    from pydicom.uid import generate_uid

    base = read_document(str(REFERENCE / "ct-2025-htj2k-1-instance.json"))
    documents = []
    for number in range(2):
        document = copy.deepcopy(base)
        document.pop("ImageSetID", None)
        document["Patient"]["DICOM"]["PatientID"] = f"P{number}"
        document["Study"]["DICOM"]["StudyInstanceUID"] = str(generate_uid())
        documents.append(document)
    report = local_store.import_documents(documents)
    client = curation.local.client(local_store, config=NO_RETRIES)
    snapshot = fetch(client, report.datastore_id, progress=False)
    studies = snapshot.studies.copy()
    studies["StudyDescription"] = "CT HEAD"
    studies["StudyDate"] = "20240102"
    result = plan(diff(snapshot, studies))
    assert len(result.requests) == 2 and all(r.planned_on for r in result.requests)
    path = tmp_path / "plan.json"
    result.save(path)
    return local_store, client, result, path


def _edited(path: Path, change: Any) -> Path:
    data = json.loads(path.read_text())
    change(data)
    out = path.with_name("edited.json")
    out.write_text(json.dumps(data))
    return out


def _blob(data: dict[str, Any], number: int) -> dict[str, Any]:
    return data["requests"][number]["params"]["updateImageSetMetadataUpdates"]["DICOMUpdates"]


def _set_blob(data: dict[str, Any], number: int, study: dict[str, Any]) -> None:
    _blob(data, number)["updatableAttributes"] = orjson.dumps({"SchemaVersion": 1.1, "Study": study}).decode()


def _swap_blobs(data: dict[str, Any]) -> None:
    first, second = _blob(data, 0), _blob(data, 1)
    first["updatableAttributes"], second["updatableAttributes"] = (
        second["updatableAttributes"],
        first["updatableAttributes"],
    )
    first["updatableAttributes"] += " "  # the two blobs are equal here: make the swap an edit of the text too


def _base_of_first(data: dict[str, Any]) -> str:
    return data["requests"][0]["image_set_id"]


TAMPERINGS = {
    "an edited blob": (lambda d: _set_blob(d, 0, {"DICOM": {"StudyDescription": "CT FEET"}}), "request 0"),
    "an invalid StudyDate": (lambda d: _set_blob(d, 1, {"DICOM": {"StudyDate": "2024-13-45"}}), "request 1"),
    "swapped blobs": (_swap_blobs, "request 0"),
    "a base version 1 -> 2": (lambda d: d["base_versions"].update({_base_of_first(d): "2"}), "base_versions differ"),
    "force turned on": (lambda d: d["requests"][0]["params"].update(force=True), "request 0"),
    "a request dropped": (lambda d: d["requests"].pop(), "it has 1 request(s), 2 were planned"),
    "a problem added": (lambda d: d["problems"].append({"reason": "x"}), "its problems differ"),
    "the plan_id": (lambda d: d.update(plan_id="0" * 32), "its content does not hash to it"),
    "content and digests, not plan_id": (
        lambda d: (d["base_versions"].update({_base_of_first(d): "2"}), d["digests"].update(base_versions="x")),
        "its content does not hash to it",
    ),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_each_tampering_of_a_saved_plan_is_refused_before_anything_is_sent(
    planned: tuple[Any, Any, UpdatePlan, Path], tmp_path: Path, name: str
) -> None:
    _, client, _, path = planned
    change, what = TAMPERINGS[name]
    edited = _edited(path, change)
    with pytest.raises(PlanEditedError) as info:
        UpdatePlan.load(edited)
    message = str(info.value)
    assert "\n" not in message and str(edited) in message and what in message
    assert "was changed after it was made" in message
    assert "UpdateImageSetMetadata" not in client.meta.local_service.calls


def test_a_datastore_that_differs_from_the_requests_is_refused(planned: tuple[Any, Any, UpdatePlan, Path]) -> None:
    _, client, _, path = planned
    edited = _edited(path, lambda d: d.update(datastore_id="f" * 32))
    with pytest.raises(PlanFormatError, match=r"request 0 is for datastore '[0-9a-f]{32}', the plan for 'f{32}'"):
        UpdatePlan.load(edited)
    loaded = UpdatePlan.load(path)
    loaded.requests[1].params["datastoreId"] = "f" * 32  # in memory, hash and all: still refused
    with pytest.raises(PlanFormatError):
        apply(loaded, client, path.with_name("j.jsonl"), **FAST)
    assert "UpdateImageSetMetadata" not in client.meta.local_service.calls


def test_an_in_memory_edit_is_refused_by_apply_and_verify(planned: tuple[Any, Any, UpdatePlan, Path]) -> None:
    _, client, result, path = planned
    first = result.requests[0].image_set_id
    result.base_versions[first] = "2"
    with pytest.raises(PlanEditedError, match="base_versions differ"):
        apply(result, client, path.with_name("j.jsonl"), **FAST)
    with pytest.raises(PlanEditedError):
        verify(result, client, progress=False)
    result.base_versions[first] = "1"
    result.requests[0].params["force"] = True
    with pytest.raises(PlanEditedError, match=f"request 0 \\(image set {first}, #0\\) differs"):
        apply(result, client, path.with_name("j.jsonl"), dry_run=True)
    assert "UpdateImageSetMetadata" not in client.meta.local_service.calls
    assert not path.with_name("j.jsonl").exists()


def test_a_rehashed_plan_on_another_writers_version_sends_nothing(planned: Any, tmp_path: Path) -> None:
    store, client, result, _ = planned
    victim = result.requests[0].image_set_id
    blob = orjson.dumps({"SchemaVersion": 1.1, "Study": {"DICOM": {"AccessionNumber": "X9"}}}).decode()
    theirs = {"DICOMUpdates": {"updatableAttributes": blob}}
    store.call(
        "UpdateImageSetMetadata",
        {
            "datastoreId": result.datastore_id,
            "imageSetId": victim,
            "latestVersionId": "1",
            "updateImageSetMetadataUpdates": theirs,
        },
    )
    # the base version edited to the other writer's 2, and the plan hashed again as a new plan
    rebuilt = UpdatePlan.build(result.datastore_id, {**result.base_versions, victim: "2"}, result.requests)
    frame = apply(rebuilt, client, tmp_path / "j.jsonl", **FAST).set_index("ImageSetID")
    assert frame.loc[victim, "status"] == "conflict" and frame.loc[victim, "requests_done"] == 0
    assert "not the document this plan was made on" in frame.loc[victim, "error"]
    other = next(i for i in frame.index if i != victim)
    assert frame.loc[other, "status"] == "applied"
    assert client.meta.local_service.calls["UpdateImageSetMetadata"] == 1  # the other image set's only
    versions = store.call("ListImageSetVersions", {"datastoreId": result.datastore_id, "imageSetId": victim})
    assert len(versions["imageSetPropertiesList"]) == 2  # theirs kept, nothing of ours on top


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b'{"format": "ahi-curation-plan", "format_version": 2, "plan_id": "ab', "not valid JSON"),
        (b"[1, 2, 3]", "holds an array, not a plan object"),
        (b'"plan"', "holds a string, not a plan object"),
        (b'{"format": "ahi-curation-plan", "format_version": 1}', "plan format version 1; this ahi-curation reads"),
        (b'{"format": "something-else"}', "not an ahi-curation plan"),
        (b'{"format": "ahi-curation-plan", "format_version": 2}', "has no 'datastore_id'"),
    ],
)
def test_bad_plan_files_are_one_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(PlanFormatError) as info:
        UpdatePlan.load(path)
    assert message in str(info.value) and "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_fields_and_a_journal_given_as_a_plan(planned: Any, tmp_path: Path) -> None:
    _, client, result, path = planned
    for field, message in (("requests", "has no 'requests'"), ("digests", "has no 'digests'")):
        with pytest.raises(PlanFormatError, match=message):
            UpdatePlan.load(_edited(path, lambda d, f=field: d.pop(f)))
    no_id = _edited(path, lambda d: d["requests"][0].pop("image_set_id"))
    with pytest.raises(PlanFormatError, match="request 0 has no 'image_set_id'"):
        UpdatePlan.load(no_id)
    apply(result, client, tmp_path / "j.jsonl", **FAST)
    with pytest.raises(PlanFormatError, match="this is an apply journal"):
        UpdatePlan.load(tmp_path / "j.jsonl")
