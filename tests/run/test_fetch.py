"""curation.run.fetching: search translation, paging, versions, retries and failures.

The unit tests drive a real boto3 ``medical-imaging`` client through botocore's Stubber (no network); the
integration tests at the end run against the embedded service (``curation.local``).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import importlib
import io
import threading
import uuid
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.exceptions import ClientError, ParamValidationError
from botocore.response import StreamingBody
from botocore.stub import Stubber
from botocore.validate import ParamValidator

from curation.model.document import encode_document, read_document
from curation.run.fetching import (
    FAILURE_COLUMNS,
    SearchError,
    fetch,
    fetch_documents,
    search_criteria,
)
from curation.run.limits import Limiters
from curation.run.retries import RetryPolicy

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
DATASTORE = "5bb1dcedf7c14ece969d7fe73c5b87a1"
NOT_CONSISTENT = "Requested ImageSet metadata is not consistent yet. Please retry after a few seconds."


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


@pytest.fixture(scope="module")
def small_document() -> dict[str, Any]:
    return read_document(str(REFERENCE / "ct-2025-htj2k-1-instance.json"))


def copy_of(document: dict[str, Any]) -> dict[str, Any]:
    """The document under a new image set ID."""
    clone = copy.deepcopy(document)
    clone["ImageSetID"] = uuid.uuid4().hex
    clone["DatastoreID"] = DATASTORE
    return clone


@pytest.fixture
def client():
    return new_client()


def metadata_response(blob: bytes) -> dict[str, Any]:
    return {
        "imageSetMetadataBlob": StreamingBody(io.BytesIO(blob), len(blob)),
        "contentType": "application/json",
        "contentEncoding": "gzip",
    }


class SplitClient:
    """Searches with one stubbed client and reads metadata with another: fetch downloads while it is still
    paging, so one Stubber (a single ordered queue) would see the two kinds of call interleaved at random."""

    def __init__(self, searcher: Any, reader: Any) -> None:
        self.get_paginator = searcher.get_paginator
        self.get_image_set_metadata = reader.get_image_set_metadata


def new_client() -> Any:
    return boto3.client(
        "medical-imaging", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def summary(image_set_id: str, version: int) -> dict[str, Any]:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return {"imageSetId": image_set_id, "version": version, "createdAt": now, "updatedAt": now, "isPrimary": True}


def quiet(**kwargs: Any) -> dict[str, Any]:
    """Fetch options for Stubber tests: one worker (Stubber answers in order), no limit, no bar, no sleeping."""
    options: dict[str, Any] = {"max_workers": 1, "rate": None, "progress": False}
    options["retries"] = RetryPolicy(max_attempts=4, sleep=lambda s: None)
    options.update(kwargs)
    return options


# --- search criteria ------------------------------------------------------------------------------------


@functools.cache
def service_model() -> Any:
    return botocore.session.get_session().get_service_model("medical-imaging")


def valid_for_botocore(criteria: dict[str, Any]) -> None:
    shape = service_model().operation_model("SearchImageSets").input_shape
    report = ParamValidator().validate({"datastoreId": DATASTORE, "searchCriteria": criteria}, shape)
    if report.has_errors():
        raise ParamValidationError(report=report.generate_report())


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ({"PatientId": "X"}, [{"values": [{"DICOMPatientId": "X"}], "operator": "EQUAL"}]),
        ({"PatientID": "X"}, [{"values": [{"DICOMPatientId": "X"}], "operator": "EQUAL"}]),
        ({"DICOMAccessionNumber": "A1"}, [{"values": [{"DICOMAccessionNumber": "A1"}], "operator": "EQUAL"}]),
        ({"StudyID": "7"}, [{"values": [{"DICOMStudyId": "7"}], "operator": "EQUAL"}]),
        ({"StudyInstanceUID": "1.2.3"}, [{"values": [{"DICOMStudyInstanceUID": "1.2.3"}], "operator": "EQUAL"}]),
        ({"SeriesInstanceUID": "1.2"}, [{"values": [{"DICOMSeriesInstanceUID": "1.2"}], "operator": "EQUAL"}]),
        ({"isPrimary": True}, [{"values": [{"isPrimary": True}], "operator": "EQUAL"}]),
        (
            {"StudyDate": ("20200101", dt.date(2020, 12, 31))},
            [
                {
                    "values": [
                        {"DICOMStudyDateAndTime": {"DICOMStudyDate": "20200101"}},
                        {"DICOMStudyDateAndTime": {"DICOMStudyDate": "20201231"}},
                    ],
                    "operator": "BETWEEN",
                }
            ],
        ),
        (
            {"StudyDateAndTime": dt.datetime(2020, 5, 6, 7, 8, 9)},
            [
                {
                    "values": [{"DICOMStudyDateAndTime": {"DICOMStudyDate": "20200506", "DICOMStudyTime": "070809"}}],
                    "operator": "EQUAL",
                }
            ],
        ),
        (
            {"updatedAt": (dt.datetime(2025, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 1, tzinfo=dt.UTC))},
            [
                {
                    "values": [
                        {"updatedAt": dt.datetime(2025, 1, 1, tzinfo=dt.UTC)},
                        {"updatedAt": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
                    ],
                    "operator": "BETWEEN",
                }
            ],
        ),
    ],
)
def test_search_criteria_translation(search, expected):
    criteria = search_criteria(search)
    assert criteria == {"filters": expected}
    valid_for_botocore(criteria)


def test_every_search_value_of_the_model_is_reachable():
    members = set(service_model().shape_for("SearchByAttributeValue").members)
    samples = {
        "createdAt": dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
        "updatedAt": dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
        "isPrimary": False,
        "DICOMStudyDateAndTime": {"DICOMStudyDate": "20200101", "DICOMStudyTime": "101010"},
    }
    for member in members:
        key = member.removeprefix("DICOM")
        criteria = search_criteria({key: samples.get(member, "1.2")})
        assert set(criteria["filters"][0]["values"][0]) == {member}
        valid_for_botocore(criteria)


def test_two_filters_and_sort():
    criteria = search_criteria({"PatientId": "P", "isPrimary": True}, sort=("createdAt", "ASC"))
    assert [f["values"][0] for f in criteria["filters"]] == [{"DICOMPatientId": "P"}, {"isPrimary": True}]
    assert criteria["sort"] == {"sortField": "createdAt", "sortOrder": "ASC"}
    assert search_criteria(None, sort="updatedAt") == {"sort": {"sortField": "updatedAt", "sortOrder": "DESC"}}
    valid_for_botocore(criteria)


def test_no_search_is_no_criteria_and_raw_criteria_pass_through():
    assert search_criteria(None) is None
    assert search_criteria({}) is None
    raw = {"filters": [{"values": [{"DICOMPatientId": "X"}], "operator": "EQUAL"}]}
    assert search_criteria(raw) == raw


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"PatientId": "a", "isPrimary": True, "StudyDate": "20200101"}, "at most 2 filters"),
        ({"Modality": "CT"}, "cannot search on 'Modality'"),
        ({"PatientId": ("a", "b")}, "only takes ranges"),
        ({"StudyDate": ("20200101",)}, r"\(lower, upper\) pair"),
        ({"isPrimary": "yes"}, "True or False"),
        ({"PatientId": 12}, "takes a string"),
        ({"createdAt": 2020}, "takes a datetime"),
    ],
)
def test_bad_searches_are_clear_errors(search, message):
    with pytest.raises(SearchError, match=message):
        search_criteria(search)


def test_bad_sort_is_refused():
    with pytest.raises(SearchError, match="sort"):
        search_criteria(None, sort="PatientName")


# --- fetch against the Stubber --------------------------------------------------------------------------


def test_search_pages_then_fetches_each_at_its_version(client, small_document):
    docs = [copy_of(small_document) for _ in range(3)]
    ids = [d["ImageSetID"] for d in docs]
    reader = new_client()
    stub, reading = Stubber(client), Stubber(reader)
    criteria = {"filters": [{"values": [{"DICOMPatientId": "X"}], "operator": "EQUAL"}]}
    stub.add_response(
        "search_image_sets",
        {"imageSetsMetadataSummaries": [summary(ids[0], 1), summary(ids[1], 3)], "nextToken": "page-2"},
        {"datastoreId": DATASTORE, "searchCriteria": criteria, "maxResults": 50},
    )
    stub.add_response(
        "search_image_sets",
        {"imageSetsMetadataSummaries": [summary(ids[2], 2), summary(ids[0], 1)]},
        {"datastoreId": DATASTORE, "searchCriteria": criteria, "maxResults": 50, "nextToken": "page-2"},
    )
    for doc, version in zip(docs, ["1", "3", "2"], strict=True):
        reading.add_response(
            "get_image_set_metadata",
            metadata_response(encode_document(doc, compress=True)),
            {"datastoreId": DATASTORE, "imageSetId": doc["ImageSetID"], "versionId": version},
        )
    with stub, reading:
        result = fetch_documents(SplitClient(client, reader), DATASTORE, search={"PatientId": "X"}, **quiet())
        stub.assert_no_pending_responses()
        reading.assert_no_pending_responses()
    assert result.documents == docs
    assert result.version_ids == {ids[0]: "1", ids[1]: "3", ids[2]: "2"}
    assert list(result.failures.columns) == list(FAILURE_COLUMNS)
    assert result.failures.empty
    assert set(result.summaries) == set(ids)


def test_given_ids_take_their_latest_version_from_get_image_set(client, small_document):
    doc = copy_of(small_document)
    stub = Stubber(client)
    stub.add_response(
        "get_image_set",
        {
            "datastoreId": DATASTORE,
            "imageSetId": doc["ImageSetID"],
            "versionId": "7",
            "imageSetState": "ACTIVE",
        },
        {"datastoreId": DATASTORE, "imageSetId": doc["ImageSetID"]},
    )
    stub.add_response(
        "get_image_set_metadata",
        metadata_response(encode_document(doc)),  # a plain JSON blob is accepted too
        {"datastoreId": DATASTORE, "imageSetId": doc["ImageSetID"], "versionId": "7"},
    )
    with stub:
        result = fetch_documents(client, DATASTORE, [doc["ImageSetID"], doc["ImageSetID"]], **quiet())
        stub.assert_no_pending_responses()
    assert result.documents == [doc]
    assert result.version_ids == {doc["ImageSetID"]: "7"}


def test_version_ids_pin_the_version_without_get_image_set(client, small_document):
    docs = [copy_of(small_document) for _ in range(2)]
    stub = Stubber(client)
    for doc, version in zip(docs, ["1", "2"], strict=True):
        stub.add_response(
            "get_image_set_metadata",
            metadata_response(encode_document(doc, compress=True)),
            {"datastoreId": DATASTORE, "imageSetId": doc["ImageSetID"], "versionId": version},
        )
    versions = {docs[0]["ImageSetID"]: 1, docs[1]["ImageSetID"]: "2"}
    with stub:
        result = fetch_documents(client, DATASTORE, version_ids=versions, **quiet())
        stub.assert_no_pending_responses()
    assert result.documents == docs
    assert result.version_ids == {docs[0]["ImageSetID"]: "1", docs[1]["ImageSetID"]: "2"}


def test_not_consistent_yet_is_waited_out_and_throttling_is_left_to_botocore(client, small_document):
    """Our waits cover AHI's ConflictException only: a Stubber client has no botocore retries, so a throttle
    or a 500 that reaches fetch is a failure, never retried a second time on top of botocore's attempts."""
    doc = copy_of(small_document)
    image_set_id = doc["ImageSetID"]
    clock = FakeClock()
    stub = Stubber(client)
    stub.add_client_error("get_image_set_metadata", "ConflictException", NOT_CONSISTENT, 409)
    stub.add_client_error("get_image_set_metadata", "ConflictException", NOT_CONSISTENT, 409)
    stub.add_response("get_image_set_metadata", metadata_response(encode_document(doc, compress=True)))
    policy = RetryPolicy(max_attempts=4, base_delay=1.0, sleep=clock.sleep, rng=lambda: 1.0)
    with stub:
        result = fetch_documents(client, DATASTORE, version_ids={image_set_id: "1"}, **quiet(retries=policy))
    assert result.documents == [doc]
    assert clock.sleeps == [1.0, 2.0]
    for code, status in (("ThrottlingException", 429), ("InternalServerException", 500)):
        stub = Stubber(client)
        stub.add_client_error("get_image_set_metadata", code, "no", status)
        with stub:
            result = fetch_documents(client, DATASTORE, version_ids={image_set_id: "1"}, **quiet(retries=policy))
            stub.assert_no_pending_responses()
        assert list(result.failures["code"]) == [code]
    assert clock.sleeps == [1.0, 2.0]


def test_other_conflicts_and_exhausted_retries_become_failures(client, small_document):
    docs = [copy_of(small_document) for _ in range(3)]
    ids = [d["ImageSetID"] for d in docs]
    stub = Stubber(client)
    stub.add_client_error("get_image_set_metadata", "ConflictException", "Image set is locked", 409)
    for _ in range(2):
        stub.add_client_error("get_image_set_metadata", "ConflictException", NOT_CONSISTENT, 409)
    stub.add_response("get_image_set_metadata", metadata_response(encode_document(docs[2], compress=True)))
    with stub:
        result = fetch_documents(
            client,
            DATASTORE,
            version_ids=dict.fromkeys(ids, "1"),
            **quiet(retries=RetryPolicy(2, sleep=lambda s: None)),
        )
        stub.assert_no_pending_responses()
    assert result.documents == [docs[2]]
    rows = result.failures.to_dict("records")
    assert rows == [
        {
            "ImageSetID": ids[0],
            "stage": "GetImageSetMetadata",
            "error": "ConflictException: Image set is locked",
            "code": "ConflictException",
            "message": "Image set is locked",
        },
        {
            "ImageSetID": ids[1],
            "stage": "GetImageSetMetadata",
            "error": f"ConflictException: {NOT_CONSISTENT}",
            "code": "ConflictException",
            "message": NOT_CONSISTENT,
        },
    ]


def test_bad_blobs_are_listed_and_the_rest_returned(client, small_document):
    good, not_gzip, not_json, wrong_id, no_study = (copy_of(small_document) for _ in range(5))
    other = copy_of(small_document)
    broken = copy.deepcopy(no_study)
    del broken["Study"]
    blobs = {
        good["ImageSetID"]: encode_document(good, compress=True),
        not_gzip["ImageSetID"]: b"\x1f\x8b\x08\x00 truncated gzip",
        not_json["ImageSetID"]: b"{not json",
        wrong_id["ImageSetID"]: encode_document(other, compress=True),
        no_study["ImageSetID"]: encode_document(broken, compress=True),
    }
    stub = Stubber(client)
    for blob in blobs.values():
        stub.add_response("get_image_set_metadata", metadata_response(blob))
    with stub:
        result = fetch_documents(client, DATASTORE, version_ids=dict.fromkeys(blobs, "1"), **quiet())
    assert result.documents == [good]
    assert result.version_ids == {good["ImageSetID"]: "1"}
    failures = result.failures.set_index("ImageSetID")
    assert list(failures.index) == list(blobs)[1:]
    assert set(failures["stage"]) == {"parse"}
    assert set(failures["code"]) == {"DocumentError"}
    assert "gzip" in failures.loc[not_gzip["ImageSetID"], "message"]
    assert "JSON" in failures.loc[not_json["ImageSetID"], "message"]
    assert other["ImageSetID"] in failures.loc[wrong_id["ImageSetID"], "message"]
    assert "Study" in failures.loc[no_study["ImageSetID"], "message"]
    for image_set_id, row in failures.iterrows():
        assert image_set_id in row["message"]


def test_get_image_set_failure_is_listed_with_its_stage(client):
    missing = uuid.uuid4().hex
    stub = Stubber(client)
    stub.add_client_error("get_image_set", "ResourceNotFoundException", "Image set not found", 404)
    with stub:
        result = fetch_documents(client, DATASTORE, [missing], **quiet())
    assert result.documents == []
    assert result.failures.to_dict("records") == [
        {
            "ImageSetID": missing,
            "stage": "GetImageSet",
            "error": "ResourceNotFoundException: Image set not found",
            "code": "ResourceNotFoundException",
            "message": "Image set not found",
        }
    ]


def test_a_failed_search_is_raised(client):
    stub = Stubber(client)
    stub.add_client_error("search_image_sets", "AccessDeniedException", "no", 403)
    with stub, pytest.raises(ClientError, match="AccessDenied"):
        fetch_documents(client, DATASTORE, **quiet())


def test_a_search_page_not_consistent_yet_resumes_from_its_token(client, small_document):
    doc_a, doc_b = copy_of(small_document), copy_of(small_document)
    reader = new_client()
    stub, reading = Stubber(client), Stubber(reader)
    stub.add_response(
        "search_image_sets",
        {"imageSetsMetadataSummaries": [summary(doc_a["ImageSetID"], 1)], "nextToken": "t/2=="},
        {"datastoreId": DATASTORE, "maxResults": 50},
    )
    stub.add_client_error("search_image_sets", "ConflictException", NOT_CONSISTENT, 409)
    stub.add_response(
        "search_image_sets",
        {"imageSetsMetadataSummaries": [summary(doc_b["ImageSetID"], 4)]},
        {"datastoreId": DATASTORE, "maxResults": 50, "nextToken": "t/2=="},
    )
    for doc in (doc_a, doc_b):
        reading.add_response("get_image_set_metadata", metadata_response(encode_document(doc, compress=True)))
    with stub, reading:
        result = fetch_documents(SplitClient(client, reader), DATASTORE, **quiet())
        stub.assert_no_pending_responses()
        reading.assert_no_pending_responses()
    assert result.documents == [doc_a, doc_b]
    assert result.version_ids == {doc_a["ImageSetID"]: "1", doc_b["ImageSetID"]: "4"}


def test_ids_and_search_together_are_refused(client):
    with pytest.raises(ValueError, match="not both"):
        fetch_documents(client, DATASTORE, ["a" * 32], search={"isPrimary": True}, progress=False)


# --- concurrency and rate limit (a duck-typed client: Stubber answers in order only) ---------------------


class CountingClient:
    """Answers GetImageSetMetadata from documents, recording how many calls run at once."""

    def __init__(self, documents: list[dict[str, Any]], rendezvous: int = 0) -> None:
        self.blobs = {d["ImageSetID"]: encode_document(d, compress=True) for d in documents}
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls: list[dict[str, Any]] = []
        self.barrier = threading.Barrier(rendezvous) if rendezvous else None

    def get_image_set_metadata(self, **params: Any) -> dict[str, Any]:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.calls.append(params)
        try:
            if self.barrier is not None and not self.barrier.broken:
                self.barrier.wait(timeout=10)
            return metadata_response(self.blobs[params["imageSetId"]])
        finally:
            with self.lock:
                self.in_flight -= 1


def test_documents_are_fetched_concurrently_but_within_max_workers(small_document):
    docs = [copy_of(small_document) for _ in range(12)]
    fake = CountingClient(docs, rendezvous=4)
    versions = {d["ImageSetID"]: "1" for d in docs}
    result = fetch_documents(fake, DATASTORE, version_ids=versions, max_workers=4, rate=None, progress=False)
    assert fake.max_in_flight == 4  # the first four met at the barrier: they ran at the same time
    assert result.documents == docs  # in the order asked, whatever the completion order
    assert result.failures.empty


def test_every_metadata_call_goes_through_the_rate_limiter(small_document):
    docs = [copy_of(small_document) for _ in range(6)]
    fake = CountingClient(docs)
    clock = FakeClock()
    limiters = Limiters(
        rates={"GetImageSetMetadata": 10},
        bursts={"GetImageSetMetadata": 2},
        adaptive=False,
        clock=clock,
        sleep=clock.sleep,
    )
    versions = {d["ImageSetID"]: "1" for d in docs}
    result = fetch_documents(fake, DATASTORE, version_ids=versions, max_workers=3, limiters=limiters, progress=False)
    assert len(result.documents) == 6
    assert len(fake.calls) == 6
    assert sum(clock.sleeps) == pytest.approx(0.4)  # 2 free, then 4 tokens at 10/s


def test_progress_bar_can_be_on(small_document, capsys):
    docs = [copy_of(small_document) for _ in range(3)]
    fake = CountingClient(docs)
    result = fetch_documents(fake, DATASTORE, version_ids={d["ImageSetID"]: 1 for d in docs}, rate=None)
    assert len(result.documents) == 3
    assert "GetImageSetMetadata" in capsys.readouterr().err


# --- integration: the embedded service -------------------------------------------------------------------

local = importlib.import_module("curation.local")
store_module = importlib.import_module("curation.local.store")


def renumbered(document: dict[str, Any], number: int) -> dict[str, Any]:
    """A copy of ``document`` as another patient's study: new image set, study, series and SOP UIDs."""
    from pydicom.uid import generate_uid

    clone = copy.deepcopy(document)
    clone["ImageSetID"] = uuid.uuid4().hex
    clone["Patient"]["DICOM"]["PatientID"] = f"GEN-{number:04d}"
    clone["Study"]["DICOM"]["StudyInstanceUID"] = str(generate_uid())
    clone["Study"]["DICOM"]["StudyDate"] = f"{2000 + number % 20}0615"
    series = {}
    for series_node in clone["Study"]["Series"].values():
        series_uid = str(generate_uid())
        series_node["DICOM"]["SeriesInstanceUID"] = series_uid
        instances = {}
        for instance in series_node["Instances"].values():
            sop_uid = str(generate_uid())
            instance["DICOM"]["SOPInstanceUID"] = sop_uid
            if "MediaStorageSOPInstanceUID" in instance["DICOM"]:
                instance["DICOM"]["MediaStorageSOPInstanceUID"] = sop_uid
            instances[sop_uid] = instance
        series_node["Instances"] = instances
        series[series_uid] = series_node
    clone["Study"]["Series"] = series
    return clone


def reference_documents() -> list[dict[str, Any]]:
    return [read_document(str(path)) for path in sorted(REFERENCE.glob("*.json"))]


def as_stored(document: dict[str, Any], datastore_id: str, image_set_id: str) -> dict[str, Any]:
    return dict(document, DatastoreID=datastore_id, ImageSetID=image_set_id)


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    """A store with the three reference documents and 12 generated copies; what was imported, by ID."""
    store = store_module.Store(tmp_path_factory.mktemp("fetch-store"))
    small = read_document(str(REFERENCE / "ct-2025-htj2k-1-instance.json"))
    imported = reference_documents() + [renumbered(small, n) for n in range(12)]
    report = store.import_documents(imported)
    assert not report.failures and len(report.created) == len(imported)
    expected = {
        image_set_id: as_stored(doc, report.datastore_id, image_set_id)
        for doc, image_set_id in zip(imported, report.created, strict=True)
    }
    return store, report.datastore_id, expected


@pytest.fixture(scope="module")
def local_client(populated):
    return local.client(populated[0])


def test_fetch_everything_from_the_embedded_service(populated, local_client):
    _store, datastore_id, expected = populated
    result = fetch_documents(local_client, datastore_id, max_workers=4, progress=False)
    assert result.failures.empty
    assert {d["ImageSetID"]: d for d in result.documents} == expected
    assert result.version_ids == dict.fromkeys(expected, "1")
    assert list(result.summaries) == [d["ImageSetID"] for d in result.documents]


@pytest.mark.parametrize(
    ("search", "matches"),
    [
        ({"PatientId": "GEN-0003"}, lambda d: d["Patient"]["DICOM"].get("PatientID") == "GEN-0003"),
        (
            {"StudyDate": ("20050101", "20081231")},
            lambda d: "20050101" <= d["Study"]["DICOM"]["StudyDate"] <= "20081231",
        ),
        ({"isPrimary": True}, lambda d: True),
        ({"isPrimary": True, "StudyDate": "20230417"}, lambda d: d["Study"]["DICOM"]["StudyDate"] == "20230417"),
    ],
)
def test_search_filters_select_the_matching_image_sets(populated, local_client, search, matches):
    _store, datastore_id, expected = populated
    result = fetch_documents(local_client, datastore_id, search=search, max_workers=4, progress=False)
    wanted = {i for i, d in expected.items() if matches(d)}
    assert wanted  # the case really selects something
    assert {d["ImageSetID"] for d in result.documents} == wanted


def test_search_by_study_and_series_uid(populated, local_client):
    _store, datastore_id, expected = populated
    image_set_id, document = next(iter(expected.items()))
    series_uid = next(iter(document["Study"]["Series"]))
    client = local_client
    for search in (
        {"StudyInstanceUID": document["Study"]["DICOM"]["StudyInstanceUID"]},
        {"SeriesInstanceUID": series_uid},
    ):
        result = fetch_documents(client, datastore_id, search=search, progress=False)
        assert [d["ImageSetID"] for d in result.documents] == [image_set_id]


def test_search_sorted_ascending_by_creation(populated, local_client):
    _store, datastore_id, expected = populated
    result = fetch_documents(local_client, datastore_id, sort=("createdAt", "ASC"), progress=False)
    # imported in this order; AHI's millisecond timestamps can tie within one import, ties keep import order
    assert [d["ImageSetID"] for d in result.documents] == list(expected)


def test_version_ids_fetch_an_older_version(tmp_path):
    store = store_module.Store(tmp_path)
    document = read_document(str(REFERENCE / "ct-2025-htj2k-1-instance.json"))
    report = store.import_documents([document])
    datastore_id, image_set_id = report.datastore_id, report.created[0]
    client = local.client(store)
    updates = {"updatableAttributes": b'{"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "CHANGED"}}}'}
    answer = client.update_image_set_metadata(
        datastoreId=datastore_id,
        imageSetId=image_set_id,
        latestVersionId="1",
        updateImageSetMetadataUpdates={"DICOMUpdates": updates},
    )
    assert answer["latestVersionId"] == "2"
    latest = fetch_documents(client, datastore_id, [image_set_id], progress=False)
    assert latest.version_ids == {image_set_id: "2"}
    assert latest.documents[0]["Study"]["DICOM"]["StudyDescription"] == "CHANGED"
    older = fetch_documents(client, datastore_id, version_ids={image_set_id: 1}, progress=False)
    assert older.version_ids == {image_set_id: "1"}
    assert older.documents == [as_stored(document, datastore_id, image_set_id)]


def test_injected_faults_are_retried_by_botocore_until_every_image_set_is_fetched(populated, fast_botocore_backoff):
    from botocore.config import Config

    store, datastore_id, expected = populated
    client = local.client(
        store, fault_rate=0.2, seed=7, config=Config(retries={"mode": "standard", "total_max_attempts": 10})
    )
    result = fetch_documents(client, datastore_id, max_workers=4, progress=False)
    calls = client.meta.local_service.calls
    assert calls["GetImageSetMetadata"] > len(expected)  # faults were injected, and retried by botocore
    fetched = {d["ImageSetID"] for d in result.documents}
    assert fetched | set(result.failures["ImageSetID"]) == set(expected)
    assert fetched == set(expected)  # 10 attempts at a 20% fault rate: seed 7 loses none


def test_a_corrupt_blob_is_a_failure_and_the_rest_is_returned(populated):
    store, datastore_id, expected = populated
    victim = list(expected)[4]

    class Corrupting:
        def call(self, operation_name: str, params: dict[str, Any]) -> dict[str, Any]:
            out = store.call(operation_name, params)
            if operation_name == "GetImageSetMetadata" and params["imageSetId"] == victim:
                out = dict(out, imageSetMetadataBlob=out["imageSetMetadataBlob"][:-40])
            return out

    result = fetch_documents(local.client(Corrupting()), datastore_id, max_workers=4, progress=False)
    assert {d["ImageSetID"] for d in result.documents} == set(expected) - {victim}
    rows = result.failures.to_dict("records")
    assert len(rows) == 1
    assert rows[0]["ImageSetID"] == victim
    assert (rows[0]["stage"], rows[0]["code"]) == ("parse", "DocumentError")
    assert victim in rows[0]["message"]


def test_not_consistent_yet_after_import_is_waited_out(tmp_path):
    store = store_module.Store(tmp_path, consistency_seconds=0.2)
    report = store.import_documents([read_document(str(REFERENCE / "ct-2025-htj2k-1-instance.json"))])
    policy = RetryPolicy(max_attempts=8, base_delay=0.05, max_delay=0.2, rng=lambda: 1.0)  # >= 0.35 s in all
    result = fetch_documents(local.client(store), report.datastore_id, progress=False, retries=policy)
    assert [d["ImageSetID"] for d in result.documents] == report.created
    assert result.failures.empty


def test_fetch_over_http(populated):
    from botocore.config import Config

    from curation.local.server import serving

    store, datastore_id, expected = populated
    with serving(store) as endpoint:
        client = boto3.client(
            "medical-imaging",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
            config=Config(inject_host_prefix=False),  # else botocore sends runtime-127.0.0.1
        )
        result = fetch_documents(client, datastore_id, max_workers=4, progress=False)
    assert {d["ImageSetID"]: d for d in result.documents} == expected


def test_fetch_returns_a_snapshot_with_versions_and_failures(populated):
    from curation.run.fetching import fetch

    store, datastore_id, expected = populated
    victim = next(i for i, d in expected.items() if d["Patient"]["DICOM"].get("PatientID") == "GEN-0002")

    class Corrupting:
        def call(self, operation_name: str, params: dict[str, Any]) -> dict[str, Any]:
            out = store.call(operation_name, params)
            if operation_name == "GetImageSetMetadata" and params["imageSetId"] == victim:
                out = dict(out, imageSetMetadataBlob=b"not a document")
            return out

    snapshot = fetch(local.client(Corrupting()), datastore_id, search={"isPrimary": True}, progress=False)
    assert snapshot.datastore_id == datastore_id
    assert set(snapshot.image_set_ids) == set(expected) - {victim}
    assert snapshot.version_ids == {i: "1" for i in expected if i != victim}
    assert dict(snapshot.documents) == {i: d for i, d in expected.items() if i != victim}
    assert set(snapshot.studies.index) == set(expected) - {victim}
    failures = snapshot.failures
    assert failures[["ImageSetID", "stage", "code"]].values.tolist() == [[victim, "parse", "DocumentError"]]
    assert failures["error"].iloc[0].startswith("DocumentError: image set " + victim)


def test_the_rate_limiter_keeps_fetch_within_ahi_quotas(tmp_path):
    """Against a service enforcing AHI's quotas on the same (fake) clock, paced calls are never throttled."""
    from botocore.config import Config

    from curation.local.service import Service
    from curation.run.fetching import GET_METADATA_QUOTA

    assert GET_METADATA_QUOTA == (50, 100)
    store = store_module.Store(tmp_path)
    small = read_document(str(REFERENCE / "ct-2025-htj2k-1-instance.json"))
    report = store.import_documents(renumbered(small, n) for n in range(130))
    versions = dict.fromkeys(report.created, "1")
    clock = FakeClock()
    service = Service(store, quotas="ahi", clock=clock)
    client = local.client(service, config=Config(retries={"total_max_attempts": 1}))

    def sleep(seconds: float) -> None:
        clock.sleep(seconds + 1e-6)  # a real sleep never returns early

    rate, burst = GET_METADATA_QUOTA
    limiters = Limiters(
        rates={"GetImageSetMetadata": rate}, bursts={"GetImageSetMetadata": burst}, clock=clock, sleep=sleep
    )
    paced = fetch_documents(
        client, report.datastore_id, version_ids=versions, limiters=limiters, max_workers=1, progress=False
    )
    assert len(paced.documents) == 130 and paced.failures.empty
    assert service.calls["GetImageSetMetadata"] == 130
    assert clock.now == pytest.approx(30 / 50, abs=1e-3)  # 100 at once, then 30 at 50 per second

    service.quotas = "ahi"  # full buckets again
    unpaced = fetch_documents(
        client, report.datastore_id, version_ids=versions, rate=None, max_workers=1, progress=False
    )
    assert len(unpaced.documents) == 100
    assert list(unpaced.failures["code"]) == ["ThrottlingException"] * 30


def test_snapshot_knows_which_image_sets_are_primary(tmp_path):
    store = store_module.Store(tmp_path)
    document = read_document(str(REFERENCE / "ct-2025-htj2k-1-instance.json"))
    primary_id = store.import_documents([document]).created[0]
    report = store.import_documents([{**document, "ImageSetID": "c" * 32}])  # the same series: a non-primary set
    duplicate_id = report.created[0]
    client = local.client(store)
    searched = fetch(client, report.datastore_id, progress=False)  # flags from the search summaries
    assert searched.primary == {primary_id: True, duplicate_id: False}
    by_id = fetch(client, report.datastore_id, [duplicate_id, primary_id], progress=False)  # from GetImageSet
    assert by_id.primary == {primary_id: True, duplicate_id: False}
    pinned = fetch(client, report.datastore_id, version_ids={duplicate_id: "1"}, progress=False)
    assert pinned.primary == {}  # no search summary and no GetImageSet call: unknown, plan assumes primary


def test_blobs_can_be_handed_over_unparsed_and_parsed_later(client, small_document):
    good, bad = copy_of(small_document), copy_of(small_document)
    stub = Stubber(client)
    stub.add_response("get_image_set_metadata", metadata_response(encode_document(good, compress=True)))
    stub.add_response("get_image_set_metadata", metadata_response(b"not gzip, not json"))
    versions = {good["ImageSetID"]: "1", bad["ImageSetID"]: "2"}
    with stub:
        raw = fetch_documents(client, DATASTORE, version_ids=versions, **quiet(parse=False))
    assert raw.documents == [] and set(raw.blobs) == set(versions) and raw.failures.empty
    assert raw.version_ids == versions
    parsed = raw.parsed()
    assert parsed.documents == [good] and parsed.version_ids == {good["ImageSetID"]: "1"}
    assert list(parsed.failures["ImageSetID"]) == [bad["ImageSetID"]]
    assert list(parsed.failures["stage"]) == ["parse"] and set(parsed.blobs) == {good["ImageSetID"]}
    assert parsed.parsed() is parsed
