"""Copy-and-promote procedures applied over HTTP against the embedded service: a PatientName fix on imported
primaries, verified, mapped, reverted; and the faults that must stop a procedure before anything is deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from curation.model.document import digest
from curation.model.quotas import Quota
from curation.run.applying import apply
from curation.run.journal import read_journal
from curation.run.mapping import id_mapping
from curation.run.options import PollPolicy
from curation.run.retries import RetryPolicy
from tests.run.conftest import ct_series
from tests.run.promote_plans import fetch_document, patient_name, promote_plan

FAST: dict[str, Any] = {
    "progress": False,
    "poll": PollPolicy(initial=0.002, max_interval=0.01, timeout=30),
    "retries": RetryPolicy(max_attempts=12, base_delay=0.002, max_delay=0.01),
    "control_rate": None,
    "rate": None,
    # no client-side quota: the embedded service enforces none here (the benchmark runs at AHI's quotas)
    "quotas": {a: Quota(10_000, 10_000) for a in ("CopyImageSet", "DeleteImageSet", "UpdateImageSetMetadata")},
}


def _import(store: Any, tmp_path: Path, count: int, **kwargs: Any) -> tuple[str, list[str]]:
    report = store.import_paths(ct_series(tmp_path, count, **kwargs))
    assert not report.failures
    return report.datastore_id, report.created


def _primaries(client: Any, datastore_id: str) -> dict[str, Any]:
    pages = client.get_paginator("search_image_sets").paginate(
        datastoreId=datastore_id, searchCriteria={"filters": [{"operator": "EQUAL", "values": [{"isPrimary": True}]}]})
    return {s["imageSetId"]: s for page in pages for s in page["imageSetsMetadataSummaries"]}


def test_patient_name_fixed_on_an_imported_primary(served: Any, tmp_path: Path) -> None:
    store, _, client = served
    datastore_id, (image_set,) = _import(store, tmp_path, 1)
    before, _ = fetch_document(client, datastore_id, image_set)
    plan = promote_plan(client, datastore_id, {image_set: patient_name("MX^MX")})
    journal = tmp_path / "j.jsonl"
    result = apply(plan, client, journal, **FAST)
    (row,) = result.to_dict("records")
    assert row["status"] == "applied", row
    new = row["new_image_set_id"]
    assert new and new != image_set
    assert id_mapping(result) == {image_set: new} == id_mapping(journal)
    document, _ = fetch_document(client, datastore_id, new)
    assert document["Patient"]["DICOM"]["PatientName"] == "MX^MX"
    assert set(_primaries(client, datastore_id)) == {new}
    old = client.get_image_set(datastoreId=datastore_id, imageSetId=image_set)
    assert old["imageSetState"] == "DELETED"
    # frames intact: the same ImageFrames (IDs and checksums) and the same pixel bytes
    frames = [i["ImageFrames"] for s in document["Study"]["Series"].values() for i in s["Instances"].values()]
    assert frames == [i["ImageFrames"] for s in before["Study"]["Series"].values() for i in s["Instances"].values()]
    kinds = [r.get("step_kind") for r in read_journal(journal) if r.get("status") == "done"]
    assert kinds == ["copy", "update", "verify_copy", "check_study", "delete_primary", "promote",
                     "verify_primary", "delete_copy"]
    calls = served[1].service.calls
    assert (calls["CopyImageSet"], calls["DeleteImageSet"], calls["UpdateImageSetMetadata"]) == (2, 2, 1)


def test_verify_follows_the_mapping_and_revert_restores_the_content_under_a_third_id(
    served: Any, tmp_path: Path
) -> None:
    from curation.run.mapping import rekey
    from curation.run.reverting import revert
    from curation.run.verifying import verify

    store, _, client = served
    study = "1.2.826.0.1.3680043.8.498.77"
    datastore_id, originals = _import(store, tmp_path, 3, study_uid=study, seed="three")
    before = {i: fetch_document(client, datastore_id, i)[0] for i in originals}
    plan = promote_plan(client, datastore_id, {i: patient_name("DOE^JANE") for i in originals})
    journal = tmp_path / "j.jsonl"
    result = apply(plan, client, journal, **FAST)
    assert (result["status"] == "applied").all(), result
    mapping = id_mapping(result)
    assert set(mapping) == set(originals) and not set(mapping.values()) & set(originals)
    # the group's three primaries are all deleted before the first promotion (the study's barrier)
    done = [(r["step_kind"], r["original"]) for r in read_journal(journal) if r.get("status") == "done"]
    kinds = [k for k, _ in done]
    assert max(i for i, k in enumerate(kinds) if k == "delete_primary") < kinds.index("promote")
    assert verify(plan, client, journal, progress=False).empty
    unjournaled = verify(plan, client, progress=False)
    assert sorted(unjournaled["ImageSetID"]) == sorted(originals)
    assert unjournaled["note"].str.contains("ID changed").all()
    # a user's frame re-keyed: a new frame, the user's untouched
    import pandas as pd

    frame = pd.DataFrame({"ImageSetID": originals, "x": range(3)})
    rekeyed = rekey(frame, mapping)
    assert list(rekeyed["ImageSetID"]) == [mapping[i] for i in originals]
    assert list(frame["ImageSetID"]) == originals
    reverted = revert(journal, client, **FAST)
    assert (reverted["status"] == "applied").all(), reverted
    third = id_mapping(reverted)
    for original in originals:
        new = mapping[original]
        final = third[original]
        assert third[new] == final and final not in (original, new)
        document, _ = fetch_document(client, datastore_id, final)
        assert digest(document) == digest(before[original])  # exact: frames and every attribute
    assert set(_primaries(client, datastore_id)) == {third[i] for i in originals}
    again = revert(journal, client, **FAST)  # resumed: nothing more is sent
    assert (again["status"] == "applied").all()
    assert set(_primaries(client, datastore_id)) == {third[i] for i in originals}
