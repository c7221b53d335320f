"""De-identification end to end on the embedded service: the reference documents and every pydicom test file the
service imports, copied to non-primary image sets (CopyImageSet), de-identified, diffed, planned, applied,
fetched again and checked twice: by ``verify`` (our table loader) and by an oracle built on KitwareMedical's own
extraction of the Basic Profile column, never on our code. Then a second run plans nothing and revert restores.

Primary image sets take ``curation.plan(changes, primary="promote")``: ``test_in_place_on_primaries_with_promote``
de-identifies imported primaries in place through AHI's copy-and-promote procedure."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pydicom.data
import pytest
from deid_oracle import dicom_nodes, oracle, walk

import curation
import curation.local
from curation.curate.deidentification import deidentify
from curation.local.store import Store

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
SECRET = "the coordinator's secret, kept in a vault, 32+ bytes"
CT_STUDY = json.loads((REFERENCE / "ct-588-instances.json").read_text())["Study"]["DICOM"]["StudyInstanceUID"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Import, copy every image set to a non-primary one (a study twice), de-identify the copies, apply."""
    tmp = tmp_path_factory.mktemp("deid")
    store = Store(tmp / "store")
    report = store.import_paths([*map(str, sorted(REFERENCE.glob("*.json"))), *pydicom.data.get_testdata_files()])
    client = curation.local.client(store)
    datastore = report.datastore_id
    sources = sorted(report.created)

    def copy(source: str) -> str:
        out = client.copy_image_set(
            datastoreId=datastore,
            sourceImageSetId=source,
            copyImageSetInformation={"sourceImageSet": {"latestVersionId": "1"}},
        )
        return out["destinationImageSetProperties"]["imageSetId"]

    # the reference CT's study in two image sets; chosen by its content, since the store's IDs are random and the
    # first of them could be the ECG, whose request AHI cannot take
    ct = client.search_image_sets(
        datastoreId=datastore,
        searchCriteria={"filters": [{"values": [{"DICOMStudyInstanceUID": CT_STUDY}], "operator": "EQUAL"}]},
    )["imageSetsMetadataSummaries"]
    assert len(ct) == 1
    twin = ct[0]["imageSetId"]
    sources = [twin, *(s for s in sources if s != twin)]
    copies = [copy(s) for s in sources] + [copy(twin)]
    snapshot = curation.fetch(client, datastore, copies, progress=False)
    result = deidentify(snapshot, secret=SECRET)
    changes = curation.diff(snapshot, result.frames)
    plan = curation.plan(changes, allow_problems=True)
    journal = tmp / "deid.jsonl"
    applied = curation.apply(plan, client, journal, progress=False)
    after = curation.fetch(client, datastore, copies, progress=False)
    return SimpleNamespace(
        client=client,
        datastore=datastore,
        copies=copies,
        snapshot=snapshot,
        result=result,
        changes=changes,
        plan=plan,
        applied=applied,
        after=after,
        journal=journal,
        sources=sources,
    )


def refused(run: SimpleNamespace) -> set[str]:
    """Image sets the plan left out (the service cannot take their request)."""
    return set(run.copies) - set(run.applied.loc[run.applied["status"] == "applied", "ImageSetID"])


def test_every_copy_is_planned_as_forced_updates_of_non_primaries(run: SimpleNamespace) -> None:
    assert len(run.copies) >= 55 and not any(run.snapshot.primary.values())
    # the two problems the data carry (read in the fixtures), nothing else: an RT plan's IsocenterPosition with
    # 2 values (VM 3) inside the BeamSequence we rebuild, and an ECG WaveformSequence whose rebuilt value
    # (one MultiplexGroupLabel removed) needs a 371 kB blob, over AHI's limit for one request
    problems = run.changes.problems
    assert list(problems["attribute"]) == ["BeamSequence"] and "VM 3" in problems["reason"].iloc[0]
    planned = run.plan.problems.set_index("attribute")["reason"]
    assert sorted(planned.index) == ["BeamSequence", "WaveformSequence"]
    assert "blob" in planned["WaveformSequence"]
    assert all(r.force for r in run.plan.requests)
    assert len(refused(run)) == 1  # the ECG image set; the BeamSequence one is sent (force takes a VM breach)


def test_verify_and_the_independent_oracle_find_nothing_left(run: SimpleNamespace) -> None:
    findings = run.result.verify(run.after)
    assert set(findings["ImageSetID"]) == refused(run)  # only the image set the service could not update
    done = [i for i in run.copies if i not in refused(run)]
    before = [run.snapshot.documents[i] for i in done]
    after = [run.after.documents[i] for i in done]
    assert oracle(before, after) == []
    assert len(oracle(before, before)) > 2000  # the oracle can fail: the originals are full of findings


def test_uids_stay_consistent_across_image_sets(run: SimpleNamespace) -> None:
    first, twin = run.copies[0], run.copies[-1]
    studies = run.after.studies
    assert studies.loc[first, "StudyInstanceUID"] == studies.loc[twin, "StudyInstanceUID"]
    mapping = run.result.mapping
    uids = dict(
        zip(mapping.loc[mapping["kind"] == "UID", "old"], mapping.loc[mapping["kind"] == "UID", "new"], strict=True)
    )
    assert studies.loc[first, "StudyInstanceUID"] == uids[run.snapshot.studies.loc[first, "StudyInstanceUID"]]
    old_sops = set(run.snapshot.instances.index.get_level_values("SOPInstanceUID"))
    new_sops = set(run.after.instances.index.get_level_values("SOPInstanceUID"))
    assert not old_sops & new_sops or refused(run)
    for image_set in set(run.copies) - refused(run):
        for node in dicom_nodes(run.after.documents[image_set]):
            for _, key, value in walk(node):
                if key == "ReferencedSOPInstanceUID" and isinstance(value, str):
                    assert value not in old_sops  # every reference remapped, with the same map
    inverse = {v: k for k, v in uids.items()}
    referenced = [
        inverse[v]
        for d in run.after.documents.values()
        for n in dicom_nodes(d)
        for _, k, v in walk(n)
        if k == "ReferencedSOPInstanceUID" and v in inverse
    ]
    assert all(uids[old] in new_sops for old in referenced if old in old_sops)


def test_a_second_run_plans_nothing_and_revert_restores(run: SimpleNamespace) -> None:
    again = deidentify(run.after, secret=SECRET)
    assert set(again.skipped["ImageSetID"]) == set(run.copies) - refused(run)
    changes = curation.diff(run.after, again.frames)
    assert set(changes.changes["ImageSetID"]) <= refused(run)
    reverted = curation.revert(run.journal, run.client, progress=False)
    assert set(reverted["status"]) == {"applied"}
    back = curation.fetch(run.client, run.datastore, run.copies, progress=False)
    for image_set in run.copies:
        assert json.dumps(back.documents[image_set], sort_keys=True) == json.dumps(
            run.snapshot.documents[image_set], sort_keys=True
        ), image_set


def test_in_place_on_primaries_with_promote(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    report = store.import_paths([str(p) for p in sorted(REFERENCE.glob("*.json"))])
    client = curation.local.client(store)
    snapshot = curation.fetch(client, report.datastore_id, progress=False)
    assert all(snapshot.primary.values())
    result = deidentify(snapshot, secret=SECRET)
    changes = curation.diff(snapshot, result.frames)
    plan = curation.plan(changes, primary="promote")
    unlimited = {action: (10_000, 10_000) for action in ("CopyImageSet", "DeleteImageSet", "UpdateImageSetMetadata")}
    curation.apply(plan, client, tmp_path / "journal.jsonl", progress=False, rate=None, quotas=unlimited)
    after = curation.fetch(client, report.datastore_id, progress=False)
    primaries = [i for i, flag in after.primary.items() if flag]
    assert len(primaries) == 3
    assert result.verify(after).query("ImageSetID in @primaries").empty
