"""research_copies: non-primary copies made with CopyImageSet over HTTP, waited for, the sources untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import curation
from curation.run.waiters import WaitSettings
from tests.run.conftest import FakeClock, ct_series

FAST = {"rate": None, "progress": False}


def _imported(store: Any, tmp_path: Path, count: int) -> tuple[str, list[str]]:
    report = store.import_paths(ct_series(tmp_path, count, seed="research"))
    return report.datastore_id, list(report.created)


def test_each_image_set_gets_a_non_primary_copy_with_the_same_content(served: Any, tmp_path: Path) -> None:
    store, _, client = served
    datastore, sources = _imported(store, tmp_path, 2)
    before = curation.fetch(client, datastore, sources, progress=False)
    table = curation.research_copies(client, datastore, sources, **FAST)
    assert table["status"].tolist() == ["copied", "copied"] and table["error"].isna().all()
    assert table["ImageSetID"].tolist() == sources and set(table["copy_image_set_id"]).isdisjoint(sources)
    copies = curation.fetch(client, datastore, table["copy_image_set_id"].tolist(), progress=False)
    assert not any(copies.primary.values())
    for source, copy in zip(sources, table["copy_image_set_id"], strict=True):
        ours, theirs = dict(before.documents[source]), dict(copies.documents[copy])
        assert {k: v for k, v in ours.items() if k != "ImageSetID"} == {
            k: v for k, v in theirs.items() if k != "ImageSetID"
        }
    after = curation.fetch(client, datastore, sources, progress=False)
    assert after.documents == before.documents and all(after.primary.values())
    assert after.version_ids == before.version_ids


def test_a_dry_run_shows_the_calls_and_sends_none(served: Any, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store, _, client = served
    datastore, sources = _imported(store, tmp_path, 1)
    table = curation.research_copies(client, datastore, sources, dry_run=True, **FAST)
    assert table["status"].tolist() == ["dry-run"] and table["copy_image_set_id"].isna().all()
    (request,) = table.attrs["requests"]
    assert request["sourceImageSetId"] == sources[0] and "CopyImageSet" in capsys.readouterr().out
    summaries = client.search_image_sets(datastoreId=datastore)["imageSetsMetadataSummaries"]
    assert len(summaries) == 1


def test_a_copy_that_ends_copy_failed_is_reported_and_the_source_kept(served: Any, tmp_path: Path) -> None:
    store, _, client = served
    datastore, sources = _imported(store, tmp_path, 2)
    before = curation.fetch(client, datastore, sources, progress=False)
    store.fail_next_copies(1, "INTERNAL_ERROR: the copy broke", promote=False)
    clock = FakeClock()
    table = curation.research_copies(client, datastore, sources, wait=WaitSettings(0.01, 5, clock.sleep, clock), **FAST)
    assert table["status"].tolist() == ["failed", "copied"]
    assert "COPY_FAILED" in table.loc[0, "error"] and "the copy broke" in table.loc[0, "error"]
    after = curation.fetch(client, datastore, sources, progress=False)
    assert after.documents == before.documents and all(after.primary.values())


def test_an_unknown_image_set_is_a_failed_row_naming_it(served: Any, tmp_path: Path) -> None:
    store, _, client = served
    datastore, sources = _imported(store, tmp_path, 1)
    table = curation.research_copies(client, datastore, ["0" * 32, *sources], **FAST)
    assert table["status"].tolist() == ["failed", "copied"]
    assert table.loc[0, "error"].startswith("ResourceNotFoundException")
