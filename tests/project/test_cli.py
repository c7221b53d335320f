"""The ``ahi-curation`` command as a user types it: import, then apply and revert a saved plan over HTTP."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from curation.cli import main
from curation.curate.differ import diff
from curation.curate.planner import plan
from curation.local.server import serving
from curation.local.store import Store
from curation.run.fetching import fetch

REFERENCE = Path(__file__).parents[1] / "data" / "reference"


def _latest_document(store: Store, datastore_id: str, image_set_id: str, version: str | None = None) -> dict:
    params = {"datastoreId": datastore_id, "imageSetId": image_set_id}
    if version:
        params["versionId"] = version
    return json.loads(gzip.decompress(store.call("GetImageSetMetadata", params)["imageSetMetadataBlob"]))


def test_import_prints_the_datastore_and_every_image_set(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["import", "--store", str(tmp_path / "s"), *map(str, sorted(REFERENCE.glob("*.json")))]) == 0
    lines = capsys.readouterr().out.splitlines()
    datastore_id = lines[0].removeprefix("datastore ")
    created = {line.removeprefix("created ") for line in lines[1:]}
    assert len(created) == 3
    summaries = Store(tmp_path / "s").call("SearchImageSets", {"datastoreId": datastore_id})
    assert {s["imageSetId"] for s in summaries["imageSetsMetadataSummaries"]} == created


def test_apply_then_revert_a_saved_plan_over_http(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = Store(tmp_path / "s")
    report = store.import_paths([str(REFERENCE / "ct-2025-htj2k-1-instance.json")])
    (image_set_id,) = report.created
    with serving(store) as url:
        import curation.local

        snapshot = fetch(curation.local.client(store), report.datastore_id, progress=False)
        studies = snapshot.studies.copy()
        studies.loc[image_set_id, "StudyDescription"] = "CT HEAD"
        plan_path = tmp_path / "plan.json"
        plan(diff(snapshot, studies)).save(plan_path)
        journal = tmp_path / "journal.jsonl"
        common = ["--endpoint-url", url, "--rate", "100", "--no-progress"]

        assert main(["apply", str(plan_path), "--journal", str(journal), "--dry-run", *common]) == 0
        assert not journal.exists()
        assert _latest_document(store, report.datastore_id, image_set_id)["Study"]["DICOM"].get(
            "StudyDescription"
        ) is None

        assert main(["apply", str(plan_path), "--journal", str(journal), *common]) == 0
        assert "1 applied" in capsys.readouterr().out
        assert _latest_document(store, report.datastore_id, image_set_id)["Study"]["DICOM"]["StudyDescription"] == (
            "CT HEAD"
        )
        assert main(["apply", str(plan_path), "--journal", str(journal), *common]) == 0  # resume: nothing resent
        versions = store.call("ListImageSetVersions", {"datastoreId": report.datastore_id, "imageSetId": image_set_id})
        assert len(versions["imageSetPropertiesList"]) == 2

        assert main(["revert", str(journal), *common]) == 0
        assert _latest_document(store, report.datastore_id, image_set_id) == _latest_document(
            store, report.datastore_id, image_set_id, "1"
        )
