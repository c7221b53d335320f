"""curation.scale on a LocalCluster against the embedded HTTP service, checked against the in-memory path."""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import dask.dataframe as dd
import pandas as pd
import pytest
from botocore.config import Config
from distributed import Client, LocalCluster

from curation import scale
from curation.curate.differ import diff as memory_diff
from curation.curate.planner import plan as memory_plan
from curation.curate.updateplan import PlanError
from curation.frames.flattening import REMOVE
from curation.local.server import serving
from curation.local.store import Store
from curation.model.document import read_document
from curation.run.fetching import fetch

REFERENCE = Path(__file__).parents[1] / "data" / "reference" / "ct-2025-htj2k-1-instance.json"
COUNT = 30
SHARED = (5, 6, 7)  # one study, three image sets (one per series): never split across partitions
PARTITION_SIZE = 7


def _uid(*parts: int) -> str:
    return "2.25." + "".join(f"{p:04d}" for p in parts) + "1"


def documents() -> list[dict[str, Any]]:
    """COUNT copies of the reference CT under new UIDs; odd ones hold a second instance; some extra columns."""
    base = read_document(str(REFERENCE))
    out = []
    for number in range(COUNT):
        doc = copy.deepcopy(base)
        doc.pop("ImageSetID", None)
        study = SHARED[0] if number in SHARED else number
        doc["Patient"]["DICOM"]["PatientID"] = f"SCALE-{study:03d}"
        doc["Study"]["DICOM"]["StudyInstanceUID"] = _uid(1, study)
        if number >= 20:
            doc["Study"]["DICOM"]["StudyDescription"] = f"study {number}"
        if number < 10:  # a key another partition holds at Patient level (renamed columns across partitions)
            doc["Study"]["DICOM"]["PatientIdentityRemoved"] = doc["Patient"]["DICOM"].pop("PatientIdentityRemoved")
        (series,) = doc["Study"]["Series"].values()
        series["DICOM"]["SeriesInstanceUID"] = _uid(2, number)
        (instance,) = series["Instances"].values()
        instances = {}
        for k in range(2 if number % 2 else 1):
            node = copy.deepcopy(instance)
            node["DICOM"]["SOPInstanceUID"] = _uid(3, number, k)
            node["DICOM"]["InstanceNumber"] = k + 1
            if number % 3 == 0:
                node["DICOM"]["ImageComments"] = f"comment {number}"
            instances[node["DICOM"]["SOPInstanceUID"]] = node
        series["Instances"] = instances
        doc["Study"]["Series"] = {_uid(2, number): series}
        out.append(doc)
    return out


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Client]:
    cluster = LocalCluster(n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None)
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    directory = tmp_path_factory.mktemp("scale-store")
    store = Store(directory)
    report = store.import_documents(documents())
    assert not report.failures and len(report.created) == COUNT
    store.close()
    with serving(directory) as endpoint:
        yield endpoint, report.datastore_id


@pytest.fixture(scope="module")
def memory(service: tuple[str, str]) -> Any:
    endpoint, datastore_id = service
    client = boto3.client(
        "medical-imaging",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(inject_host_prefix=False),
    )
    snapshot = fetch(client, datastore_id, progress=False)
    client.close()
    return snapshot


@pytest.fixture(scope="module")
def scaled(service: tuple[str, str], dask_client: Client, tmp_path_factory: pytest.TempPathFactory) -> Any:
    endpoint, datastore_id = service
    path = tmp_path_factory.mktemp("scale-snapshot")
    return scale.fetch_to_parquet(
        endpoint, datastore_id, path, client=dask_client, partition_size=PARTITION_SIZE, rate=200.0, progress=False
    )


def test_fetch_to_parquet_writes_partitions_whole_studies_and_manifest(scaled: Any, memory: Any) -> None:
    assert len(scaled) == COUNT and scaled.failures.empty
    assert scaled.image_set_ids == memory.image_set_ids
    assert scaled.version_ids == memory.version_ids
    assert scaled.primary == memory.primary
    assert len(scaled.partitions) >= 4
    shared = {i for i, d in memory.documents.items() if d["Patient"]["DICOM"]["PatientID"] == "SCALE-005"}
    assert len(shared) == 3
    assert len({scaled.partition_of(i) for i in shared}) == 1
    for part in scaled.partitions:
        for level in ("studies", "series", "instances", "frames"):
            assert os.path.exists(os.path.join(scaled.path, level, f"{part['name']}.parquet"))
        assert [d["ImageSetID"] for d in scaled.documents(scaled.partitions.index(part))] == part["image_set_ids"]


def test_open_snapshot_gives_the_in_memory_frames(scaled: Any, memory: Any) -> None:
    frames = scale.open_snapshot(scaled.path)
    for level in ("studies", "series", "instances", "frames"):
        ddf = frames[level]
        assert isinstance(ddf, dd.DataFrame) and ddf.npartitions == len(scaled.partitions)
        ours = scale.to_pandas(ddf.compute(), level)
        pd.testing.assert_frame_equal(ours, getattr(memory, level))
    # the partitions hold whole image sets, in order
    parts = frames["studies"].to_delayed()
    assert list(parts[1].compute().index) == scaled.partitions[1]["image_set_ids"]
    # absent is missing, present-and-null is "", multi-valued text is joined, sequences stay tuples
    studies = scale.to_pandas(frames["studies"].compute(), "studies")
    first = studies.index[studies["PatientID"] == "SCALE-000"][0]
    assert studies.loc[first, "AccessionNumber"] == ""
    assert pd.isna(studies.loc[first, "StudyDescription"])
    assert isinstance(studies.loc[first, "DeidentificationMethod"], str)
    assert str(studies["PatientID"].dtype) == "str"


def test_sql_filters_return_toolkit_frames(scaled: Any, memory: Any) -> None:
    found = scale.sql(scaled.path, "SELECT ImageSetID, PatientID FROM studies WHERE PatientID = 'SCALE-005'")
    expected = [i for i in memory.image_set_ids if memory.studies.loc[i, "PatientID"] == "SCALE-005"]
    assert sorted(found.index) == sorted(expected)
    assert list(found["PatientID"]) == ["SCALE-005"] * 3
    wanted = memory.image_set_ids[3:9]
    listed = ", ".join(f"'{i}'" for i in wanted)
    rows = scale.sql(scaled.path, f"SELECT * FROM instances WHERE ImageSetID IN ({listed})")
    expected_rows = memory.instances.loc[wanted]
    pd.testing.assert_frame_equal(rows.loc[expected_rows.index], expected_rows)
    assert len(rows) == len(expected_rows)
    commented = scale.sql(scaled.path, "SELECT count(*) AS n FROM instances WHERE ImageComments IS NOT NULL")
    assert int(commented["n"].iloc[0]) == int(memory.instances["ImageComments"].notna().sum())
    series = scale.sql(scaled.path, "SELECT * FROM series")
    pd.testing.assert_frame_equal(series.loc[memory.series.index], memory.series)


def _edit_studies(frame: pd.DataFrame, ids: set[str], names: set[str]) -> pd.DataFrame:
    frame = frame.copy()
    mask = frame["PatientID"].isin(["SCALE-005", "SCALE-010", "SCALE-025"])
    frame["StudyDescription"] = frame["StudyDescription"].where(~mask, "SCALED")
    frame["AccessionNumber"] = frame["AccessionNumber"].where(~frame.index.isin(list(ids)), REMOVE)
    frame["PatientName"] = frame["PatientName"].where(~frame.index.isin(list(names)), "REFUSED^ON^PRIMARY")
    moved = "@Study:PatientIdentityRemoved"  # named so in the partitions that hold it at Patient level too
    frame[moved] = frame[moved].where(~(frame.index.isin(list(ids)) & frame[moved].notna()), "NO")
    return frame


def _edit_instances(frame: pd.DataFrame, ids: set[str], dropped: set[str], sop_column: str) -> pd.DataFrame:
    frame = frame.copy()
    image_sets = frame.index.get_level_values(0)
    frame["ImageComments"] = frame["ImageComments"].where(~image_sets.isin(list(ids)), "edited at scale")
    return (
        frame[~frame[sop_column].isin(list(dropped))]
        if sop_column in frame
        else frame[~frame.index.get_level_values(2).isin(list(dropped))]
    )


def test_scale_diff_and_plan_equal_the_in_memory_ones(
    scaled: Any, memory: Any, dask_client: Client, tmp_path: Path
) -> None:
    ids = memory.image_set_ids
    touched = {ids[0], ids[12], ids[29]}
    names = {ids[20]}
    odd = [
        i
        for i in ids
        if len(memory.documents[i]["Study"]["Series"][next(iter(memory.documents[i]["Study"]["Series"]))]["Instances"])
        == 2
    ]
    dropped = {memory.instances.loc[odd[0]].index[1][1], memory.instances.loc[odd[-1]].index[1][1]}

    frames = scale.open_snapshot(scaled.path)
    studies = frames["studies"].map_partitions(_edit_studies, touched, names, meta=frames["studies"]._meta)
    instances = frames["instances"].map_partitions(
        _edit_instances, touched, dropped, "SOPInstanceUID", meta=frames["instances"]._meta
    )
    ours = scale.diff(frames, {"studies": studies, "instances": instances}, rows="all", client=dask_client)
    theirs = memory_diff(
        memory,
        {
            "studies": _edit_studies(memory.studies, touched, names),
            "instances": _edit_instances(memory.instances, touched, dropped, "-"),
        },
        rows="all",
    )
    assert len(theirs.changes) > 10 and set(theirs.changes["op"]) >= {"update", "remove", "remove_instance"}
    pd.testing.assert_frame_equal(ours.changes, theirs.changes)
    pd.testing.assert_frame_equal(ours.problems, theirs.problems)
    assert len(theirs.problems) == 1  # the Patient-level edit of a primary image set
    assert "@Study:PatientIdentityRemoved" in set(theirs.changes["column"])

    # edits saved to Parquet (lossless) and diffed from there give the same ChangeSet
    edited = scale.open_snapshot(scaled.path)
    edited["studies"], edited["instances"] = studies, instances
    del edited["series"], edited["frames"]
    saved = scale.save_frames(edited, tmp_path / "edits", client=dask_client)
    reopened = scale.open_snapshot(saved)
    assert set(reopened) == {"studies", "instances"} and reopened.snapshot.path == scaled.path
    pd.testing.assert_frame_equal(
        scale.to_pandas(reopened["studies"].compute(), "studies"), _edit_studies(memory.studies, touched, names)
    )
    again = scale.diff(scaled, saved, rows="all", client=dask_client)
    pd.testing.assert_frame_equal(again.changes, theirs.changes)

    with pytest.raises(PlanError):
        scale.plan(ours, client=dask_client)
    for fold in (False, True):
        our_plan = scale.plan(ours, allow_problems=True, include_study_image_sets=fold, client=dask_client)
        their_plan = memory_plan(theirs, allow_problems=True, include_study_image_sets=fold)
        assert our_plan.to_json() == their_plan.to_json()
        assert len(our_plan.requests) >= 5
    assert any(r.affects for r in our_plan.requests)  # the shared study's edit was folded


def test_a_pandas_edit_and_the_default_scheduler_work_too(scaled: Any, memory: Any, dask_client: Client) -> None:
    edited = scale.sql(scaled.path, "SELECT * FROM studies WHERE PatientID = 'SCALE-010'")
    edited["StudyDescription"] = "FROM SQL"
    ours = scale.diff(scaled.path, edited)  # dask_client is the default scheduler here
    theirs = memory_diff(memory, edited)
    pd.testing.assert_frame_equal(ours.changes, theirs.changes)
    assert list(ours.changes["new"]) == ["FROM SQL"]


def test_a_repartitioned_edit_is_refused(scaled: Any) -> None:
    frames = scale.open_snapshot(scaled.path)
    with pytest.raises(ValueError, match="partitioning"):
        scale.diff(scaled, {"studies": frames["studies"].repartition(npartitions=1)})


def test_client_factory_is_picklable_and_builds_local_clients() -> None:
    factory = pickle.loads(pickle.dumps(scale.ClientFactory.local("http://127.0.0.1:9")))
    client = factory()
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.config.inject_host_prefix is False
    client.close()


def test_partitions_keep_studies_whole_in_listing_order() -> None:
    listing = [(f"is{n}", "1", True, study) for n, study in enumerate("AABCDBEEEF")]
    parts = scale._cut(listing, 3)
    assert [[e[0] for e in part] for part in parts] == [
        ["is0", "is1"],
        ["is2", "is5", "is3"],  # study B's second image set joins its first
        ["is4"],
        ["is6", "is7", "is8"],
        ["is9"],
    ]


def test_each_partition_fetches_under_its_share_of_the_rate(
    service: tuple[str, str], dask_client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[float, float]] = []
    original = scale.fetch_documents

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append((kwargs["rate"], kwargs["burst"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(scale, "fetch_documents", recording)  # the LocalCluster's workers are threads here
    endpoint, datastore_id = service
    snapshot = scale.fetch_to_parquet(
        endpoint,
        datastore_id,
        tmp_path / "s",
        client=dask_client,
        partition_size=10,
        rate=40.0,
        burst=80.0,
        progress=False,
    )
    threads = sum(dask_client.nthreads().values())
    share = min(threads, len(snapshot.partitions))
    assert len(seen) == len(snapshot.partitions) >= 3
    assert set(seen) == {(40.0 / share, 80.0 / share)}
