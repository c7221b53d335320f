"""The wire layer and both transports (in-process hook and HTTP server) under real boto3 clients.

Part one drives every operation of the service model through a recording fake backend (params in, outputs
out, generated from the model's shapes); part two runs the real store end to end.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gzip
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.response import StreamingBody

import curation.local
from curation.local import wire
from curation.local.auth import Credentials, sign_headers
from curation.local.server import serving
from curation.local.service import Service
from curation.model.errors import AHIError
from curation.model.quotas import DOCUMENTED_QUOTAS, Quota, TokenBucket

MODEL = botocore.session.get_session().get_service_model("medical-imaging")
NO_RETRIES = Config(retries={"total_max_attempts": 1})
_SESSION = boto3.session.Session()
DATASTORE = "0123456789abcdef0123456789abcdef"
IMAGE_SET = "fedcba9876543210fedcba9876543210"

# --------------------------------------------------------------------------------- model-driven samples

_STRING_CANDIDATES = (
    "a" * 32,
    "7",
    "arn:aws:medical-imaging:us-east-1:123456789012:datastore/" + "a" * 32,
    "arn:aws:iam::123456789012:role/ahi-import",
    "s3://bucket-name/prefix/",
    "arn:aws:kms:us-east-1:123456789012:key/12345678-1234-1234-1234-123456789012",
    "arn:aws:lambda:us-east-1:123456789012:function:authorizer",
    "1.2.840.10008.5",
    "123456789012",
    "Name_1",
)
WHEN = dt.datetime(2024, 5, 6, 7, 8, 9, 250000, tzinfo=dt.UTC)


def sample(shape: Any, depth: int = 0) -> Any:
    """A valid value of ``shape`` (every member set; a union's first member) built from the model alone."""
    kind = shape.type_name
    meta = shape.metadata
    if kind == "structure":
        members = list(shape.members.items())
        if shape.is_tagged_union:
            members = members[:1]
        return {name: sample(member, depth + 1) for name, member in members if depth < 8}
    if kind == "list":
        return [sample(shape.member, depth + 1)]
    if kind == "map":
        return {"k": sample(shape.value, depth + 1)}
    if kind == "string":
        if shape.enum:
            return shape.enum[0]
        low, high = meta.get("min", 0), meta.get("max", 10**6)
        pattern = meta.get("pattern")
        if pattern:
            compiled = re.compile(pattern.replace(r"\p{ASCII}", r"[\x00-\x7f]"))
            for candidate in _STRING_CANDIDATES:
                if compiled.fullmatch(candidate) and low <= len(candidate) <= high:
                    return candidate
            raise AssertionError(f"no sample string for pattern {pattern}")
        return "v" * max(low, 1)
    if kind in ("integer", "long"):
        return max(meta.get("min", 3), min(3, meta.get("max", 3)))
    if kind == "boolean":
        return True
    if kind == "timestamp":
        return WHEN
    if kind == "blob":
        return b"\x00\x01 blob \xff"
    raise AssertionError(f"no sample for {kind}")


class Recorder:
    """A fake backend: records every call and answers a sample output (or an AHIError when told to)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.raise_error: AHIError | None = None

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((operation, params))
        if self.raise_error is not None:
            raise self.raise_error
        shape = MODEL.operation_model(operation).output_shape
        return sample(shape) if shape is not None else {}


@pytest.fixture(params=["inprocess", "http"])
def transport(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """``connect(backend, **knobs) -> boto3 client`` over one transport (the Service is ``client._service``)."""
    stack = contextlib.ExitStack()

    def connect(backend: Any, config: Config = NO_RETRIES, **knobs: Any) -> Any:
        if request.param == "inprocess":
            client = curation.local.client(backend, config=config, **knobs)
            client._service = client.meta.local_service
            return client
        endpoint = stack.enter_context(serving(backend, **knobs))
        client = _SESSION.client(
            "medical-imaging",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
            config=config.merge(Config(inject_host_prefix=False)),
        )
        client._service = endpoint.service
        return client

    connect.kind = request.param  # type: ignore[attr-defined]
    with stack:
        yield connect


def _snake(name: str) -> str:
    return botocore.xform_name(name)


# ------------------------------------------------------------------------------- generic wire behaviour


def test_every_operation_has_a_route() -> None:
    assert {route.operation.name for route in wire.routes()} == set(MODEL.operation_names)


@pytest.mark.parametrize("operation", MODEL.operation_names)
def test_every_operation_round_trips(transport: Callable[..., Any], operation: str) -> None:
    model = MODEL.operation_model(operation)
    recorder = Recorder()
    client = transport(recorder)
    params = sample(model.input_shape) if model.input_shape is not None else {}
    response = getattr(client, _snake(operation))(**params)

    assert recorder.calls == [(operation, params)]
    expected = sample(model.output_shape) if model.output_shape is not None else {}
    response.pop("ResponseMetadata")
    for name, value in list(response.items()):
        if isinstance(value, StreamingBody):
            response[name] = value.read()
    assert response == expected


def test_metadata_blob_arrives_gzip_and_untouched(transport: Callable[..., Any]) -> None:
    document = {"SchemaVersion": "1.1", "Patient": {"DICOM": {"PatientName": "MX^MX"}}}
    blob = gzip.compress(json.dumps(document).encode())

    class Backend:
        def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
            return {"imageSetMetadataBlob": blob, "contentType": "application/json", "contentEncoding": "gzip"}

    client = transport(Backend())
    response = client.get_image_set_metadata(datastoreId=DATASTORE, imageSetId=IMAGE_SET)
    assert response["contentEncoding"] == "gzip"
    assert response["ResponseMetadata"]["HTTPHeaders"]["content-encoding"] == "gzip"
    raw = response["imageSetMetadataBlob"].read()
    assert raw == blob
    assert json.loads(gzip.decompress(raw)) == document


def test_request_values_are_typed_as_the_model_says(transport: Callable[..., Any]) -> None:
    recorder = Recorder()
    client = transport(recorder)
    client.update_image_set_metadata(
        datastoreId=DATASTORE,
        imageSetId=IMAGE_SET,
        latestVersionId="3",
        force=False,
        includeStudyImageSets=True,
        updateImageSetMetadataUpdates={"DICOMUpdates": {"updatableAttributes": '{"SchemaVersion": 1.1}'}},
    )
    client.search_image_sets(
        datastoreId=DATASTORE,
        maxResults=7,
        searchCriteria={
            "filters": [
                {"values": [{"createdAt": WHEN}, {"updatedAt": WHEN + dt.timedelta(days=1)}], "operator": "BETWEEN"},
                {"values": [{"isPrimary": False}], "operator": "EQUAL"},
            ]
        },
    )
    client.search_image_sets(datastoreId=DATASTORE)
    update, search, bare = (params for _, params in recorder.calls)
    assert update["force"] is False and update["includeStudyImageSets"] is True
    assert update["updateImageSetMetadataUpdates"] == {
        "DICOMUpdates": {"updatableAttributes": b'{"SchemaVersion": 1.1}'}
    }
    assert search["maxResults"] == 7
    created = search["searchCriteria"]["filters"][0]["values"][0]["createdAt"]
    assert created == WHEN and created.tzinfo is not None
    assert search["searchCriteria"]["filters"][1]["values"] == [{"isPrimary": False}]
    assert bare == {"datastoreId": DATASTORE}


def test_errors_carry_ahi_code_status_and_message(transport: Callable[..., Any]) -> None:
    recorder = Recorder()
    client = transport(recorder)
    for code, status in [
        ("ResourceNotFoundException", 404),
        ("ConflictException", 409),
        ("ValidationException", 400),
        ("ThrottlingException", 429),
        ("InternalServerException", 500),
    ]:
        recorder.raise_error = AHIError(code, f"{code} for the test: `x` 'y'")
        with pytest.raises(ClientError) as caught:
            client.get_image_set(datastoreId=DATASTORE, imageSetId=IMAGE_SET)
        assert caught.value.response["Error"]["Code"] == code
        assert caught.value.response["Error"]["Message"] == f"{code} for the test: `x` 'y'"
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
        assert type(caught.value).__name__ == code  # the modeled exception class


def test_server_side_validation_catches_what_botocore_lets_through(transport: Callable[..., Any]) -> None:
    recorder = Recorder()
    client = transport(recorder)
    with pytest.raises(client.exceptions.ValidationException) as caught:
        client.get_image_set(datastoreId="not-an-id", imageSetId=IMAGE_SET)
    assert "at 'datastoreId' failed to satisfy constraint" in caught.value.response["Error"]["Message"]
    with pytest.raises(client.exceptions.ValidationException) as caught:
        client.update_image_set_metadata(
            datastoreId=DATASTORE,
            imageSetId=IMAGE_SET,
            latestVersionId="1",
            updateImageSetMetadataUpdates={"DICOMUpdates": {"updatableAttributes": b"x" * 30001}},
        )
    assert "less than or equal to 30000" in caught.value.response["Error"]["Message"]
    assert recorder.calls == []


def test_output_members_outside_the_model_are_not_sent(transport: Callable[..., Any]) -> None:
    class Chatty:
        def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
            return {"datastoreSummaries": [{**sample(MODEL.shape_for("DatastoreSummary")), "extra": 1}], "bogus": 2}

    client = transport(Chatty())
    (summary,) = client.list_datastores()["datastoreSummaries"]
    assert "extra" not in summary
    status, _headers, body = wire.serialize_response("ListDatastores", Chatty().call("ListDatastores", {}))
    assert status == 200 and b"extra" not in body and b"bogus" not in body


def test_outputs_of_the_wrong_kind_are_a_server_error(transport: Callable[..., Any]) -> None:
    class Broken:
        def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
            return {"datastoreSummaries": ["not a structure"]}

    client = transport(Broken())
    with pytest.raises(client.exceptions.InternalServerException):
        client.list_datastores()


# ------------------------------------------------------------------------------------- raw HTTP


def _raw(url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP request, signed as an SDK signs it (the server authenticates every request)."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(
        url + path, data=body, method=method, headers=sign_headers(method, url + path, body or b"", headers)
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        (
            "POST",
            f"/datastore/{DATASTORE}/imageSet/{IMAGE_SET}/updateImageSetMetadata?latestVersion=1",
            b"{oops",
            400,
            "ValidationException",
        ),
        (
            "POST",
            f"/datastore/{DATASTORE}/imageSet/{IMAGE_SET}/updateImageSetMetadata",
            b'{"revertToVersionId": "1"}',
            400,
            "ValidationException",
        ),
        (
            "POST",
            f"/datastore/{DATASTORE}/imageSet/{IMAGE_SET}/updateImageSetMetadata?latestVersion=1",
            b'{"revertToVersionId": "1", "DICOMUpdates": {"updatableAttributes": "e30="}}',
            400,
            "ValidationException",
        ),
        (
            "POST",
            f"/datastore/{DATASTORE}/imageSet/{IMAGE_SET}/updateImageSetMetadata?latestVersion=1&force=yes",
            b'{"revertToVersionId": "1"}',
            400,
            "ValidationException",
        ),
        (
            "POST",
            f"/datastore/{DATASTORE}/imageSet/{IMAGE_SET}/updateImageSetMetadata?latestVersion=1",
            b'{"DICOMUpdates": {"updatableAttributes": "not base64!"}}',
            400,
            "ValidationException",
        ),
        ("POST", f"/datastore/{DATASTORE}/searchImageSets?maxResults=51", b"{}", 400, "ValidationException"),
        ("POST", f"/datastore/{DATASTORE}/searchImageSets?maxResults=ten", b"{}", 400, "ValidationException"),
        (
            "POST",
            f"/datastore/{DATASTORE}/searchImageSets",
            b'{"filters": [{"values": [{"createdAt": "soon"}], "operator": "EQUAL"}]}',
            400,
            "ValidationException",
        ),
        (
            "POST",
            f"/datastore/{DATASTORE}/searchImageSets",
            b'{"filters": [{"values": [{"DICOMPatientId": "1"}], "operator": "LIKE"}]}',
            400,
            "ValidationException",
        ),
        ("POST", "/no/such/route", b"{}", 404, "UnknownOperationException"),
        ("PUT", f"/datastore/{DATASTORE}", b"{}", 405, "UnknownOperationException"),
    ],
)
def test_malformed_http_requests_are_refused(method: str, path: str, body: bytes, status: int, code: str) -> None:
    recorder = Recorder()
    with serving(recorder) as url:
        got_status, headers, payload = _raw(url, method, path, body)
    assert got_status == status
    assert headers["x-amzn-ErrorType"] == code
    assert json.loads(payload)["message"]
    assert recorder.calls == []


def test_raw_http_request_reaches_the_backend_typed() -> None:
    recorder = Recorder()
    path = f"/datastore/{DATASTORE}/imageSet/{IMAGE_SET}/updateImageSetMetadata?latestVersion=4&force=true"
    with serving(recorder) as url:
        status, headers, payload = _raw(url, "POST", path, b'{"DICOMUpdates": {"removableAttributes": "e30="}}')
    assert status == 200, payload
    assert headers["Content-Type"] == "application/json"
    assert recorder.calls == [
        (
            "UpdateImageSetMetadata",
            {
                "datastoreId": DATASTORE,
                "imageSetId": IMAGE_SET,
                "latestVersionId": "4",
                "force": True,
                "updateImageSetMetadataUpdates": {"DICOMUpdates": {"removableAttributes": b"{}"}},
            },
        )
    ]


def test_host_prefixed_requests_are_answered() -> None:
    """botocore's ``runtime-`` host prefix on a name of the server is answered (a resolver may map it here)."""
    recorder = Recorder()
    with serving(recorder) as url:
        port = url.rsplit(":", 1)[1]
        path = f"/datastore/{DATASTORE}/imageSet/{IMAGE_SET}/getImageSet"
        headers = sign_headers("POST", f"http://runtime-localhost:{port}{path}")
        headers["Host"] = f"runtime-localhost:{port}"
        request = urllib.request.Request(url + path, data=b"", method="POST", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    assert recorder.calls[0][0] == "GetImageSet"


def test_uri_labels_are_percent_decoded() -> None:
    arn = f"arn:aws:medical-imaging:us-east-1:123456789012:datastore/{DATASTORE}"
    operation, params = wire.parse_request("GET", "/tags/" + arn.replace(":", "%3A").replace("/", "%2F"), "", {}, b"")
    assert (operation, params) == ("ListTagsForResource", {"resourceArn": arn})


# -------------------------------------------------------------------------------------------- knobs


def test_latency_delays_every_call(transport: Callable[..., Any]) -> None:
    client = transport(Recorder(), latency=0.2)
    started = time.perf_counter()
    client.list_datastores()
    assert time.perf_counter() - started >= 0.2
    client._service.latency = 0.0
    assert client._service.latency == 0.0


def test_ahi_quotas_throttle_a_burst_of_updates(transport: Callable[..., Any]) -> None:
    recorder = Recorder()  # the previous documented update quota (0.25/s, burst 1) as an account's own figure
    client = transport(recorder, quotas={"UpdateImageSetMetadata": Quota(0.25, 1)})
    update = {
        "datastoreId": DATASTORE,
        "imageSetId": IMAGE_SET,
        "latestVersionId": "1",
        "updateImageSetMetadataUpdates": {"revertToVersionId": "1"},
    }
    client.update_image_set_metadata(**update)
    with pytest.raises(client.exceptions.ThrottlingException) as caught:
        client.update_image_set_metadata(**update)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert len(recorder.calls) == 1  # the throttled call never reached the store
    client.get_image_set(datastoreId=DATASTORE, imageSetId=IMAGE_SET)  # other actions have their own bucket
    client._service.quotas = "none"
    client.update_image_set_metadata(**update)
    assert len(recorder.calls) == 3


def test_service_buckets_refill_at_the_quota_they_enforce() -> None:
    now = [0.0]
    service = Service(Recorder(), quotas={"UpdateImageSetMetadata": Quota(0.25, 1)}, clock=lambda: now[0])
    bucket = TokenBucket(0.25, 1, clock=lambda: now[0])
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    now[0] = 3.9
    assert not bucket.try_acquire()
    now[0] = 4.0
    assert bucket.try_acquire()
    assert service.quota("UpdateImageSetMetadata") == Quota(0.25, 1, service.quota("UpdateImageSetMetadata").source)
    assert service.quota("GetImageSet").rate == DOCUMENTED_QUOTAS["GetImageSet"].rate  # the rest documented
    service.quota_scale = 40
    assert service.quota("UpdateImageSetMetadata").rate == 10 and service.quota("GetImageSet").burst == 2000
    with pytest.raises(KeyError, match="NotAnAction"):
        Service(Recorder(), quotas={"NotAnAction": (1, 1)})
    assert Service(Recorder(), quotas="none").quota("GetImageSet") is None


def test_a_quota_knob_throttles_past_the_account_quota(transport: Callable[..., Any]) -> None:
    recorder = Recorder()
    client = transport(recorder, quotas={"GetImageSet": Quota(1, 3)})
    results = []
    for _ in range(5):
        try:
            client.get_image_set(datastoreId=DATASTORE, imageSetId=IMAGE_SET)
            results.append("ok")
        except client.exceptions.ThrottlingException:
            results.append("throttled")
    assert results[:3] == ["ok", "ok", "ok"] and "throttled" in results[3:]
    assert len(recorder.calls) == results.count("ok")


def test_faults_are_injected_before_the_store_and_can_be_turned_off(transport: Callable[..., Any]) -> None:
    recorder = Recorder()
    client = transport(recorder, fault_rate=1.0, seed=7)
    codes = []
    for _ in range(12):
        with pytest.raises(ClientError) as caught:
            client.get_image_set(datastoreId=DATASTORE, imageSetId=IMAGE_SET)
        codes.append(
            (caught.value.response["Error"]["Code"], caught.value.response["ResponseMetadata"]["HTTPStatusCode"])
        )
    assert set(codes) == {("InternalServerException", 500), ("ThrottlingException", 429)}
    assert recorder.calls == []
    client._service.fault_rate = 0.0
    client.get_image_set(datastoreId=DATASTORE, imageSetId=IMAGE_SET)
    assert len(recorder.calls) == 1


def test_fault_injection_is_reproducible_with_a_seed() -> None:
    def outcomes(seed: int) -> list[str]:
        service = Service(Recorder(), fault_rate=0.5, seed=seed)
        result = []
        for _ in range(40):
            try:
                service.handle("ListDatastores", {})
                result.append("ok")
            except AHIError as error:
                result.append(error.code)
        return result

    first = outcomes(3)
    assert first == outcomes(3)
    assert {"ok", "InternalServerException", "ThrottlingException"} == set(first)


def test_botocore_retries_absorb_faults_unless_turned_off(transport: Callable[..., Any]) -> None:
    recorder = Recorder()
    client = transport(recorder, config=Config(retries={"total_max_attempts": 2, "mode": "standard"}))
    client._service.fault_rate = 1.0
    with pytest.raises(ClientError) as caught:
        client.list_datastores()
    assert caught.value.response["ResponseMetadata"]["RetryAttempts"] == 1
    assert client._service.calls["ListDatastores"] == 2


# ------------------------------------------------------------------------------ the real store, end to end

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
REFERENCE_NAMES = ("ct-2025-htj2k-1-instance", "us-doppler-9-instances", "ct-588-instances")


@pytest.fixture
def ahi(transport: Callable[..., Any], local_store: Any) -> SimpleNamespace:
    """A client over a fresh store holding one datastore with the three reference documents."""
    client = transport(local_store)
    datastore_id = client.create_datastore(datastoreName="curation")["datastoreId"]
    documents = {name: json.loads((REFERENCE / f"{name}.json").read_text()) for name in REFERENCE_NAMES}
    report = local_store.import_documents(list(documents.values()), datastore_id)
    assert not report.failures
    return SimpleNamespace(
        client=client,
        store=local_store,
        datastore_id=datastore_id,
        documents=documents,
        ids=dict(zip(REFERENCE_NAMES, report.created, strict=True)),
    )


def _metadata(ahi: SimpleNamespace, image_set_id: str, version: str | None = None) -> dict[str, Any]:
    extra = {"versionId": version} if version else {}
    response = ahi.client.get_image_set_metadata(datastoreId=ahi.datastore_id, imageSetId=image_set_id, **extra)
    assert response["contentEncoding"] == "gzip"
    return json.loads(gzip.decompress(response["imageSetMetadataBlob"].read()))


def test_datastores_and_metadata_round_trip(ahi: SimpleNamespace) -> None:
    client = ahi.client
    listed = client.list_datastores()["datastoreSummaries"]
    assert [item["datastoreId"] for item in listed] == [ahi.datastore_id]
    properties = client.get_datastore(datastoreId=ahi.datastore_id)["datastoreProperties"]
    assert (properties["datastoreName"], properties["datastoreStatus"]) == ("curation", "ACTIVE")
    for name, document in ahi.documents.items():
        image_set_id = ahi.ids[name]
        expected = dict(document, DatastoreID=ahi.datastore_id, ImageSetID=image_set_id)
        assert _metadata(ahi, image_set_id) == expected
        image_set = client.get_image_set(datastoreId=ahi.datastore_id, imageSetId=image_set_id)
        assert (image_set["versionId"], image_set["imageSetState"], image_set["isPrimary"]) == ("1", "ACTIVE", True)
        assert isinstance(image_set["createdAt"], dt.datetime)


def test_search_with_filters_and_paginator(ahi: SimpleNamespace) -> None:
    client = ahi.client
    paginator = client.get_paginator("search_image_sets")
    pages = list(paginator.paginate(datastoreId=ahi.datastore_id, PaginationConfig={"PageSize": 1}))
    assert len(pages) == 3
    found = [summary["imageSetId"] for page in pages for summary in page["imageSetsMetadataSummaries"]]
    assert sorted(found) == sorted(ahi.ids.values())
    study = ahi.documents["ct-588-instances"]["Study"]["DICOM"]["StudyInstanceUID"]
    by_study = client.search_image_sets(
        datastoreId=ahi.datastore_id,
        searchCriteria={"filters": [{"values": [{"DICOMStudyInstanceUID": study}], "operator": "EQUAL"}]},
    )["imageSetsMetadataSummaries"]
    assert [summary["imageSetId"] for summary in by_study] == [ahi.ids["ct-588-instances"]]
    assert by_study[0]["DICOMTags"]["DICOMStudyInstanceUID"] == study
    assert by_study[0]["version"] == 1
    created = [summary["createdAt"] for page in pages for summary in page["imageSetsMetadataSummaries"]]
    first, last = min(created) - dt.timedelta(seconds=1), max(created) + dt.timedelta(seconds=1)
    window = client.search_image_sets(
        datastoreId=ahi.datastore_id,
        searchCriteria={
            "filters": [
                {"values": [{"createdAt": first}, {"createdAt": last}], "operator": "BETWEEN"},
                {"values": [{"isPrimary": True}], "operator": "EQUAL"},
            ],
            "sort": {"sortField": "createdAt", "sortOrder": "ASC"},
        },
        maxResults=2,
    )
    assert len(window["imageSetsMetadataSummaries"]) == 2
    assert window["sort"] == {"sortField": "createdAt", "sortOrder": "ASC"}
    rest = client.search_image_sets(
        datastoreId=ahi.datastore_id,
        searchCriteria={
            "filters": [
                {"values": [{"createdAt": first}, {"createdAt": last}], "operator": "BETWEEN"},
                {"values": [{"isPrimary": True}], "operator": "EQUAL"},
            ],
            "sort": {"sortField": "createdAt", "sortOrder": "ASC"},
        },
        maxResults=2,
        nextToken=window["nextToken"],
    )
    assert "nextToken" not in rest
    ordered = [s["imageSetId"] for s in window["imageSetsMetadataSummaries"] + rest["imageSetsMetadataSummaries"]]
    assert sorted(ordered) == sorted(ahi.ids.values())


def _update(ahi: SimpleNamespace, image_set_id: str, latest: str, updates: dict[str, Any], **extra: Any) -> str:
    response = ahi.client.update_image_set_metadata(
        datastoreId=ahi.datastore_id,
        imageSetId=image_set_id,
        latestVersionId=latest,
        updateImageSetMetadataUpdates=updates,
        **extra,
    )
    assert response["imageSetState"] == "LOCKED" and response["imageSetWorkflowStatus"] == "UPDATING"
    assert int(response["latestVersionId"]) == int(latest) + 1
    state = ahi.client.get_image_set(datastoreId=ahi.datastore_id, imageSetId=image_set_id)
    assert (state["imageSetState"], state["imageSetWorkflowStatus"]) == ("ACTIVE", "UPDATED")
    return response["latestVersionId"]


def _blob(payload: dict[str, Any]) -> bytes:
    return json.dumps({"SchemaVersion": 1.1, **payload}).encode()


def _copy(ahi: SimpleNamespace, name: str) -> str:
    copied = ahi.client.copy_image_set(
        datastoreId=ahi.datastore_id,
        sourceImageSetId=ahi.ids[name],
        copyImageSetInformation={"sourceImageSet": {"latestVersionId": "1"}},
    )
    assert copied["sourceImageSetProperties"]["imageSetId"] == ahi.ids[name]
    return copied["destinationImageSetProperties"]["imageSetId"]


def test_the_seven_update_use_cases(ahi: SimpleNamespace) -> None:
    """AHI.md §2's official payloads, on non-primary copies (primary sets refuse Patient-level updates)."""
    copy_id = _copy(ahi, "ct-2025-htj2k-1-instance")
    assert ahi.client.get_image_set(datastoreId=ahi.datastore_id, imageSetId=copy_id)["isPrimary"] is False
    series, sop = next(
        (series, sop)
        for series, node in _metadata(ahi, copy_id)["Study"]["Series"].items()
        for sop in node["Instances"]
    )

    def instance(payload: dict[str, Any]) -> dict[str, Any]:
        return {"Study": {"Series": {series: {"Instances": {sop: payload}}}}}

    def dicom_of(document: dict[str, Any]) -> dict[str, Any]:
        return document["Study"]["Series"][series]["Instances"][sop]["DICOM"]

    # 1. insert or update
    name = {"Patient": {"DICOM": {"PatientName": "MX^MX"}}}
    version = _update(ahi, copy_id, "1", {"DICOMUpdates": {"updatableAttributes": _blob(name)}})
    assert _metadata(ahi, copy_id)["Patient"]["DICOM"]["PatientName"] == "MX^MX"
    # 2. remove an attribute (key and current value)
    version = _update(ahi, copy_id, version, {"DICOMUpdates": {"removableAttributes": _blob(name)}})
    assert "PatientName" not in _metadata(ahi, copy_id)["Patient"]["DICOM"]
    # 4. revert: a new version with version 1's content
    version = _update(ahi, copy_id, version, {"revertToVersionId": "1"})
    assert version == "4"
    assert _metadata(ahi, copy_id) == _metadata(ahi, copy_id, "1")
    # 5. add a private element at instance level, with force
    private = instance({"DICOM": {"001910F9": "97"}, "DICOMVRs": {"001910F9": "DS"}})
    version = _update(ahi, copy_id, version, {"DICOMUpdates": {"updatableAttributes": _blob(private)}}, force=True)
    assert dicom_of(_metadata(ahi, copy_id))["001910F9"] == "97"
    # 6. update a private element (the one just added), with force
    changed = instance({"DICOM": {"001910F9": "98"}})
    version = _update(ahi, copy_id, version, {"DICOMUpdates": {"updatableAttributes": _blob(changed)}}, force=True)
    assert dicom_of(_metadata(ahi, copy_id))["001910F9"] == "98"
    forced = ahi.client.get_image_set(datastoreId=ahi.datastore_id, imageSetId=copy_id)
    assert forced["overrides"] == {"forced": True}
    # 7. change SOPInstanceUID, with force
    new_uid = sop + ".9"
    renamed = instance({"DICOM": {"SOPInstanceUID": new_uid}})
    version = _update(ahi, copy_id, version, {"DICOMUpdates": {"updatableAttributes": _blob(renamed)}}, force=True)
    assert list(_metadata(ahi, copy_id)["Study"]["Series"][series]["Instances"]) == [new_uid]
    # 3. remove an instance (from a copy of the 9-instance series)
    doppler = _copy(ahi, "us-doppler-9-instances")
    ((doppler_series, node),) = _metadata(ahi, doppler)["Study"]["Series"].items()
    victim = sorted(node["Instances"])[0]
    removal = {"Study": {"Series": {doppler_series: {"Instances": {victim: {}}}}}}
    _update(ahi, doppler, "1", {"DICOMUpdates": {"removableAttributes": _blob(removal)}})
    remaining = _metadata(ahi, doppler)["Study"]["Series"][doppler_series]["Instances"]
    assert len(remaining) == 8 and victim not in remaining

    paginator = ahi.client.get_paginator("list_image_set_versions")
    pages = list(paginator.paginate(datastoreId=ahi.datastore_id, imageSetId=copy_id, PaginationConfig={"PageSize": 2}))
    assert len(pages) == 4
    versions = [item for page in pages for item in page["imageSetPropertiesList"]]
    assert [item["versionId"] for item in versions] == ["7", "6", "5", "4", "3", "2", "1"]
    assert {item["ImageSetWorkflowStatus"] for item in versions[:-1]} == {"UPDATED"}


def test_copy_and_delete(ahi: SimpleNamespace) -> None:
    copy_id = _copy(ahi, "us-doppler-9-instances")
    source = ahi.documents["us-doppler-9-instances"]
    assert _metadata(ahi, copy_id)["Study"] == source["Study"]
    deleted = ahi.client.delete_image_set(datastoreId=ahi.datastore_id, imageSetId=copy_id)
    assert deleted["imageSetId"] == copy_id
    assert deleted["imageSetState"] in ("LOCKED", "DELETED")
    with pytest.raises(ahi.client.exceptions.ResourceNotFoundException):
        ahi.client.get_image_set_metadata(datastoreId=ahi.datastore_id, imageSetId=copy_id)


def test_get_image_frame(transport: Callable[..., Any], local_store: Any) -> None:
    pydicom_data = pytest.importorskip("pydicom.data")
    report = local_store.import_paths([pydicom_data.get_testdata_file("CT_small.dcm")])
    assert report.created and not report.failures
    client = transport(local_store)
    image_set_id = report.created[0]
    response = client.get_image_set_metadata(datastoreId=report.datastore_id, imageSetId=image_set_id)
    document = json.loads(gzip.decompress(response["imageSetMetadataBlob"].read()))
    (series,) = document["Study"]["Series"].values()
    (node,) = series["Instances"].values()
    frame_id = node["ImageFrames"][0]["ID"]
    frame = client.get_image_frame(
        datastoreId=report.datastore_id, imageSetId=image_set_id, imageFrameInformation={"imageFrameId": frame_id}
    )
    expected = local_store.call(
        "GetImageFrame",
        {
            "datastoreId": report.datastore_id,
            "imageSetId": image_set_id,
            "imageFrameInformation": {"imageFrameId": frame_id},
        },
    )
    assert frame["contentType"] == expected["contentType"]
    assert frame["imageFrameBlob"].read() == expected["imageFrameBlob"]


def _store_error(store: Any, operation: str, params: dict[str, Any]) -> AHIError:
    with pytest.raises(AHIError) as caught:
        store.call(operation, params)
    return caught.value


@pytest.mark.parametrize(
    "case", ["missing image set", "stale version", "primary patient update", "missing datastore", "bad union"]
)
def test_store_errors_cross_the_wire_unchanged(ahi: SimpleNamespace, case: str) -> None:
    image_set_id = ahi.ids["ct-588-instances"]
    name = {"DICOMUpdates": {"updatableAttributes": _blob({"Patient": {"DICOM": {"PatientName": "MX^MX"}}})}}
    operation, params = {
        "missing image set": ("GetImageSet", {"datastoreId": ahi.datastore_id, "imageSetId": "9" * 32}),
        "missing datastore": ("SearchImageSets", {"datastoreId": "9" * 32}),
        "stale version": (
            "UpdateImageSetMetadata",
            {
                "datastoreId": ahi.datastore_id,
                "imageSetId": image_set_id,
                "latestVersionId": "7",
                "updateImageSetMetadataUpdates": name,
            },
        ),
        "primary patient update": (
            "UpdateImageSetMetadata",
            {
                "datastoreId": ahi.datastore_id,
                "imageSetId": image_set_id,
                "latestVersionId": "1",
                "updateImageSetMetadataUpdates": name,
            },
        ),
        "bad union": (
            "UpdateImageSetMetadata",
            {
                "datastoreId": ahi.datastore_id,
                "imageSetId": image_set_id,
                "latestVersionId": "1",
                "updateImageSetMetadataUpdates": {"DICOMUpdates": {}},
            },
        ),
    }[case]
    with pytest.raises(ClientError) as caught:
        getattr(ahi.client, _snake(operation))(**params)
    expected = _store_error(ahi.store, operation, params)
    assert caught.value.response["Error"]["Code"] == expected.code
    assert caught.value.response["Error"]["Message"] == expected.message
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == expected.http_status
    if case == "stale version":
        assert (expected.code, expected.message) == (
            "ResourceNotFoundException",
            "Requested version(s) of ImageSet(s) is not the latest.",
        )
    state = ahi.client.get_image_set(datastoreId=ahi.datastore_id, imageSetId=image_set_id)
    assert state["versionId"] == "1"


def test_malformed_http_requests_leave_the_store_unchanged(local_store: Any) -> None:
    datastore_id = local_store.call("CreateDatastore", {"datastoreName": "d", "clientToken": "t"})["datastoreId"]
    document = json.loads((REFERENCE / "ct-2025-htj2k-1-instance.json").read_text())
    (image_set_id,) = local_store.import_documents([document], datastore_id).created
    base = f"/datastore/{datastore_id}/imageSet/{image_set_id}/updateImageSetMetadata"
    name = base64.b64encode(_blob({"Patient": {"DICOM": {"PatientName": "X^Y"}}})).decode()
    with serving(local_store) as url:
        for path, body in [
            (base + "?latestVersion=1", b'{"DICOMUpdates": {"updatableAttributes": '),  # truncated JSON
            (base, json.dumps({"DICOMUpdates": {"updatableAttributes": name}}).encode()),  # no latestVersion
            (base + "?latestVersion=1&force=maybe", json.dumps({"revertToVersionId": "1"}).encode()),
            (base + "x?latestVersion=1", json.dumps({"revertToVersionId": "1"}).encode()),  # no such route
        ]:
            status, headers, payload = _raw(url, "POST", path, body)
            assert status in (400, 404), payload
            assert headers["x-amzn-ErrorType"] in ("ValidationException", "UnknownOperationException")
    state = local_store.call("GetImageSet", {"datastoreId": datastore_id, "imageSetId": image_set_id})
    assert (state["versionId"], state["imageSetWorkflowStatus"]) == ("1", "CREATED")
    versions = local_store.call("ListImageSetVersions", {"datastoreId": datastore_id, "imageSetId": image_set_id})
    assert len(versions["imageSetPropertiesList"]) == 1


def test_tags_round_trip(ahi: SimpleNamespace) -> None:
    arn = ahi.client.get_datastore(datastoreId=ahi.datastore_id)["datastoreProperties"]["datastoreArn"]
    ahi.client.tag_resource(resourceArn=arn, tags={"project": "curation", "stage": "test"})
    ahi.client.untag_resource(resourceArn=arn, tagKeys=["stage"])
    assert ahi.client.list_tags_for_resource(resourceArn=arn)["tags"] == {"project": "curation"}


def test_chunked_request_bodies_are_read() -> None:
    import http.client

    recorder = Recorder()
    with serving(recorder) as url:
        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        body = [b'{"DICOMUpdates": {"removableAttributes":', b' "e30="}}']
        path = f"/datastore/{DATASTORE}/imageSet/{IMAGE_SET}/updateImageSetMetadata?latestVersion=2"
        headers = sign_headers("POST", url + path, b"".join(body))
        connection.request("POST", path, body=iter(body), headers=headers, encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 200, response.read()
        connection.close()
    assert recorder.calls[0][1]["updateImageSetMetadataUpdates"] == {"DICOMUpdates": {"removableAttributes": b"{}"}}


def test_serve_command_prints_the_endpoint_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-m", "curation.cli", "serve", "--store", str(tmp_path / "s"), "--create", "--port", "0"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env["AWS_SHARED_CREDENTIALS_FILE"] = env["AWS_CONFIG_FILE"] = os.devnull
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [process.stdout.readline() for _ in range(4)]  # endpoint, what to sign with, the key pair
        url = re.search(r"http://127\.0\.0\.1:\d+", lines[0]).group(0)
        found = dict(re.findall(r"export (AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY)=(\S+)", "".join(lines)))
        generated = Credentials(found["AWS_ACCESS_KEY_ID"], found["AWS_SECRET_ACCESS_KEY"])
        headers = sign_headers("GET", url + "/datastore", credentials=generated)
        request = urllib.request.Request(url + "/datastore", method="GET", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200 and json.loads(response.read()) == {"datastoreSummaries": []}
        assert _raw(url, "GET", "/datastore")[0] == 403  # signed with another key: refused
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_shared_fixtures_reach_the_same_store(local_client: Any, http_client: Any, http_endpoint: str) -> None:
    created = local_client.create_datastore(datastoreName="shared")["datastoreId"]
    assert [item["datastoreId"] for item in http_client.list_datastores()["datastoreSummaries"]] == [created]
    assert local_client.meta.local_service.store is http_endpoint.service.store
    http_endpoint.service.fault_rate = 1.0
    with pytest.raises(ClientError):
        http_client.list_datastores()
    local_client.list_datastores()  # its own Service: no faults


def test_in_process_client_opens_no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    client = curation.local.client(Recorder(), config=NO_RETRIES)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the in-process client tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    response = client.get_image_set(datastoreId=DATASTORE, imageSetId=IMAGE_SET)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
