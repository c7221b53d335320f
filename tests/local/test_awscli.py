"""The AWS CLI v1 (``.venv/bin/aws``) against a served store: the incantations README gives users."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from curation.local.auth import generate_credentials
from curation.local.server import serving

AWS = Path(sys.executable).parent / "aws"
REFERENCE = Path(__file__).parents[1] / "data" / "reference"


@pytest.fixture
def served(local_store: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A store with one datastore, the 1-instance reference document and a non-primary copy, served."""
    datastore_id = local_store.call("CreateDatastore", {"datastoreName": "cli", "clientToken": "cli"})["datastoreId"]
    document = json.loads((REFERENCE / "ct-2025-htj2k-1-instance.json").read_text())
    (primary,) = local_store.import_documents([document], datastore_id).created
    copied = local_store.call(
        "CopyImageSet",
        {
            "datastoreId": datastore_id,
            "sourceImageSetId": primary,
            "copyImageSetInformation": {"sourceImageSet": {"latestVersionId": "1"}},
        },
    )
    config = tmp_path / "aws-config"
    config.write_text("")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AWS_") and key not in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    }
    key = generate_credentials()  # a key pair of its own: the server verifies every signature
    env.update(
        AWS_ACCESS_KEY_ID=key.access_key,
        AWS_SECRET_ACCESS_KEY=key.secret_key,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(config),
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_DISABLE_HOST_PREFIX_INJECTION="true",
        AWS_MAX_ATTEMPTS="1",
        AWS_PAGER="",
        NO_PROXY="127.0.0.1,localhost",
    )
    with serving(local_store, credentials=key) as endpoint:
        yield {
            "endpoint": str(endpoint),
            "env": env,
            "config": config,
            "datastore_id": datastore_id,
            "primary": primary,
            "copy": copied["destinationImageSetProperties"]["imageSetId"],
            "document": document,
            "store": local_store,
        }


def aws(served: dict[str, Any], *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``aws medical-imaging <args> --endpoint-url <served>``."""
    command = [str(AWS), "medical-imaging", *args, "--endpoint-url", served["endpoint"]]
    return subprocess.run(command, env=env or served["env"], capture_output=True, text=True, timeout=120, check=False)


def test_list_datastores_and_search(served: dict[str, Any]) -> None:
    listed = aws(served, "list-datastores")
    assert listed.returncode == 0, listed.stderr
    assert [item["datastoreId"] for item in json.loads(listed.stdout)["datastoreSummaries"]] == [served["datastore_id"]]
    study = served["document"]["Study"]["DICOM"]["StudyInstanceUID"]
    criteria = {"filters": [{"values": [{"DICOMStudyInstanceUID": study}], "operator": "EQUAL"}]}
    found = aws(
        served, "search-image-sets", "--datastore-id", served["datastore_id"], "--search-criteria", json.dumps(criteria)
    )
    assert found.returncode == 0, found.stderr
    summaries = json.loads(found.stdout)["imageSetsMetadataSummaries"]
    assert sorted(item["imageSetId"] for item in summaries) == sorted([served["primary"], served["copy"]])


def test_get_image_set_metadata_to_a_file(served: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "metadata.json.gz"
    got = aws(
        served,
        "get-image-set-metadata",
        "--datastore-id",
        served["datastore_id"],
        "--image-set-id",
        served["primary"],
        str(target),
    )
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == {"contentType": "application/json", "contentEncoding": "gzip"}
    expected = dict(served["document"], DatastoreID=served["datastore_id"], ImageSetID=served["primary"])
    assert json.loads(gzip.decompress(target.read_bytes())) == expected


@pytest.mark.parametrize("how", ["inline", "file", "binary-format-config"])
def test_update_image_set_metadata_use_case_1(served: dict[str, Any], tmp_path: Path, how: str) -> None:
    """The official example 1: the blob is JSON text, which CLI v1 base64-encodes itself.

    CLI v1 has no ``--cli-binary-format`` option (the AWS examples are written for v2, where
    ``--cli-binary-format raw-in-base64-out`` is needed); ``cli_binary_format = raw-in-base64-out`` in the
    config file is accepted by both and changes nothing in v1.
    """
    updates = json.dumps(
        {"DICOMUpdates": {"updatableAttributes": '{"SchemaVersion":1.1,"Patient":{"DICOM":{"PatientName":"MX^MX"}}}'}}
    )
    if how == "file":
        payload = tmp_path / "metadata-updates.json"
        payload.write_text(updates)
        updates = f"file://{payload}"
    if how == "binary-format-config":
        served["config"].write_text("[default]\ncli_binary_format = raw-in-base64-out\n")
    done = aws(
        served,
        "update-image-set-metadata",
        "--datastore-id",
        served["datastore_id"],
        "--image-set-id",
        served["copy"],
        "--latest-version-id",
        "1",
        "--update-image-set-metadata-updates",
        updates,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["latestVersionId"], answer["imageSetState"], answer["imageSetWorkflowStatus"]) == (
        "2",
        "LOCKED",
        "UPDATING",
    )
    assert isinstance(answer["updatedAt"], float | int)
    blob = served["store"].call(
        "GetImageSetMetadata", {"datastoreId": served["datastore_id"], "imageSetId": served["copy"]}
    )["imageSetMetadataBlob"]
    assert json.loads(gzip.decompress(blob))["Patient"]["DICOM"]["PatientName"] == "MX^MX"


def test_revert_with_force_flag(served: dict[str, Any]) -> None:
    done = aws(
        served,
        "update-image-set-metadata",
        "--datastore-id",
        served["datastore_id"],
        "--image-set-id",
        served["copy"],
        "--latest-version-id",
        "1",
        "--force",
        "--update-image-set-metadata-updates",
        '{"revertToVersionId": "1"}',
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["latestVersionId"] == "2"


def test_a_refusal_shows_ahis_error_code(served: dict[str, Any]) -> None:
    stale = aws(
        served,
        "update-image-set-metadata",
        "--datastore-id",
        served["datastore_id"],
        "--image-set-id",
        served["copy"],
        "--latest-version-id",
        "5",
        "--update-image-set-metadata-updates",
        '{"revertToVersionId": "1"}',
    )
    assert stale.returncode != 0
    assert "(ResourceNotFoundException)" in stale.stderr
    assert "is not the latest" in stale.stderr
    missing = aws(served, "get-image-set", "--datastore-id", served["datastore_id"], "--image-set-id", "f" * 32)
    assert missing.returncode != 0
    assert "An error occurred (ResourceNotFoundException) when calling the GetImageSet operation" in missing.stderr


def test_host_prefix_injection_off_through_the_config_file(served: dict[str, Any]) -> None:
    """``disable_host_prefix_injection = true`` in the profile works like AWS_DISABLE_HOST_PREFIX_INJECTION.

    (Without either, the CLI would resolve ``runtime-127.0.0.1``: not tried here, it would query DNS.)
    """
    env = dict(served["env"])
    del env["AWS_DISABLE_HOST_PREFIX_INJECTION"]
    served["config"].write_text("[default]\ndisable_host_prefix_injection = true\n")
    args = ("get-image-set", "--datastore-id", served["datastore_id"], "--image-set-id", served["primary"])
    configured = aws(served, *args, env=env)
    assert configured.returncode == 0, configured.stderr
    assert json.loads(configured.stdout)["imageSetId"] == served["primary"]


def test_a_wrong_key_or_no_signature_is_refused(served: dict[str, Any]) -> None:
    """The AWS CLI signed with another secret, or not at all (``--no-sign-request``): refused as AWS refuses."""
    wrong = {**served["env"], "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    result = aws(served, "list-datastores", env=wrong)
    assert result.returncode != 0 and "(InvalidSignatureException)" in result.stderr, result.stderr
    stranger = {**served["env"], "AWS_ACCESS_KEY_ID": "AKIASTRANGER0000000"}
    result = aws(served, "list-datastores", env=stranger)
    assert result.returncode != 0 and "(UnrecognizedClientException)" in result.stderr, result.stderr
    result = aws(served, "list-datastores", "--no-sign-request")
    assert result.returncode != 0 and "(MissingAuthenticationTokenException)" in result.stderr, result.stderr
    assert aws(served, "list-datastores").returncode == 0  # the right key still works
