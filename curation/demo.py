"""``ahi-curation demo``: the whole curation workflow on the embedded service, offline, in seconds.

It imports a few DICOM files that ship with pydicom into a local datastore, fetches and flattens it, corrects
Study-level metadata with pandas, diffs and plans the correction, applies it (journaled), verifies it, shows
an image set's version history, reverts everything and checks the pre-plan documents are back exactly.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

#: pydicom test files that ingest cleanly: different modalities, one image set each.
DEMO_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "JPEG2000.dcm",
    "rtdose_1frame.dcm",
    "liver_1frame.dcm",
    "examples_overlay.dcm",
)
PRIMARY_RULE = (
    "AHI refuses Patient- and Series-level updates on primary image sets (every DICOM import is primary), so "
    "this demo corrects Study-level attributes; a patient-name or body-part fix needs a non-primary copy first."
)


def _section(title: str) -> None:
    print(f"\n== {title} ==")


def _show(frame: pd.DataFrame, columns: list[str] | None = None, rows: int = 20) -> None:
    shown = frame if columns is None else frame[[c for c in columns if c in frame.columns]]
    with pd.option_context("display.width", 160, "display.max_colwidth", 60, "display.max_columns", 20):
        print(shown.head(rows).to_string())


def demo_files() -> list[str]:
    """The paths of the pydicom test files the demo imports."""
    import pydicom

    directory = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files"
    return [str(directory / name) for name in DEMO_FILES if (directory / name).exists()]


def correct_studies(snapshot: Any) -> pd.DataFrame:
    """The curator's pandas edit: normalized StudyDescription (upper case, one space, from the modality when
    missing) and placeholder accession numbers where they are empty."""
    from curation.frames.flattening import is_null

    studies = snapshot.studies
    modality = snapshot.series.groupby(level="ImageSetID")["Modality"].first().reindex(studies.index)
    edited = studies.copy()
    described = edited["StudyDescription"].map(lambda v: isinstance(v, str) and v.strip() != "")
    edited.loc[described, "StudyDescription"] = edited.loc[described, "StudyDescription"].map(
        lambda v: " ".join(v.replace("^", " ").split()).upper()
    )
    edited.loc[~described, "StudyDescription"] = (modality[~described].astype(str) + " STUDY").astype(object)
    if "AccessionNumber" in edited.columns:
        empty = is_null(edited["AccessionNumber"]) | edited["AccessionNumber"].isna()
        edited.loc[empty, "AccessionNumber"] = [f"DEMO{n:04d}" for n in range(1, int(empty.sum()) + 1)]
    return edited


def _quota_note() -> str:
    """What the demo says of the quota: AHI's documented default (``curation.model.quotas``), the local none."""
    from curation.model.quotas import documented_quota

    default = documented_quota("UpdateImageSetMetadata")
    return (
        f"AHI's documented default quota is {default.rate:g} updates/s, burst {default.burst:g}; the local one has none"
    )


def run_demo(store_path: str | os.PathLike[str] | None = None) -> int:
    """Run the demo on a store at ``store_path`` (default: a fresh temporary one); 0 when every step checks."""
    if store_path is None:
        with tempfile.TemporaryDirectory(prefix="ahi-curation-demo-") as directory:
            return _run(Path(directory))
    return _run(Path(store_path))


def _run(store_dir: Path) -> int:
    import curation.local
    from curation.curate.differ import diff
    from curation.curate.planner import plan
    from curation.local.store import Store
    from curation.run.applying import apply
    from curation.run.fetching import fetch
    from curation.run.history import history, version_diff
    from curation.run.reverting import revert
    from curation.run.verifying import verify

    store = Store(store_dir, lock_seconds=0.05)
    _section("1. Import DICOM files shipped with pydicom into an embedded datastore")
    report = store.import_paths(demo_files())
    for path, reason in report.failures:
        print(f"skipped {Path(path).name}: {reason}")
    datastore_id = report.datastore_id
    if datastore_id is None:
        print("error: none of the demo files could be imported", file=sys.stderr)
        return 1
    print(f"datastore {datastore_id}: {len(report.created)} image sets created, {len(report.updated)} updated")
    client = curation.local.client(store)

    _section("2. Fetch and flatten")
    snapshot = fetch(client, datastore_id, progress=False)
    print(snapshot)
    _show(snapshot.studies, ["PatientName", "StudyDate", "AccessionNumber", "StudyDescription"])

    _section("3. Correct with pandas: normalize StudyDescription, fill empty AccessionNumber")
    print(PRIMARY_RULE)
    edited = correct_studies(snapshot)
    _show(edited, ["StudyDescription", "AccessionNumber"])

    _section("4. ChangeSet")
    changes = diff(snapshot, edited)
    _show(changes.changes, ["ImageSetID", "level", "attribute", "VR", "old", "new", "op"], rows=50)
    if not changes.problems.empty:
        _show(changes.problems)
        return 1

    _section("5. UpdatePlan")
    update_plan = plan(changes)
    print(update_plan)
    _show(update_plan.requests_frame(), ["ImageSetID", "index", "force", "base_version", "description"])

    journal = store_dir / f"journal-{update_plan.plan_id}.jsonl"
    _section(f"6. Apply (journal {journal.name}; {_quota_note()})")
    result = apply(update_plan, client, journal, rate=20.0, burst=1, progress=False, poll=0.05)
    _show(result)
    applied = bool((result["status"] == "applied").all())

    _section("7. Verify: re-fetch and compare with the plan's intended documents")
    mismatches = verify(update_plan, client, journal, progress=False)
    print("verified: every image set is exactly as planned" if mismatches.empty else mismatches.to_string())

    example = update_plan.requests[0].image_set_id
    _section(f"8. History of image set {example}")
    versions = history(client, datastore_id, example)
    _show(versions, ["versionId", "state", "workflowStatus", "forced", "message", "updatedAt"])
    first, last = versions["versionId"].iloc[0], versions["versionId"].iloc[-1]
    print(f"difference between versions {first} and {last}:")
    _show(version_diff(client, datastore_id, example, first, last).changes, ["level", "attribute", "old", "new", "op"])

    _section("9. Revert to the pre-plan versions (revertToVersionId)")
    undone = revert(journal, client, rate=20.0, progress=False, poll=0.05)
    _show(undone)
    restored = _restored(client, datastore_id, update_plan.base_versions)
    print(f"revert restored {restored} of {len(update_plan.base_versions)} image sets exactly")

    _section("Summary")
    print(
        f"{len(snapshot)} image sets fetched, {len(changes)} changes, {len(update_plan)} requests, "
        f"{int((result['status'] == 'applied').sum())} image sets applied, "
        f"{'verified' if mismatches.empty else f'{len(mismatches)} mismatches'}, "
        f"{restored} restored by revert"
    )
    ok = applied and mismatches.empty and restored == len(update_plan.base_versions)
    print("demo OK" if ok else "demo FAILED")
    return 0 if ok else 1


def _restored(client: Any, datastore_id: str, base_versions: dict[str, str]) -> int:
    """How many image sets' latest documents equal their documents at the base version."""
    from curation.run.history import version_document

    count = 0
    for image_set_id, base in base_versions.items():
        latest = client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)["versionId"]
        if version_document(client, datastore_id, image_set_id, latest) == version_document(
            client, datastore_id, image_set_id, base
        ):
            count += 1
    return count
