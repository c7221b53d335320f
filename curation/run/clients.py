"""The boto3 clients this package makes: HealthImaging for a profile and region (or an endpoint such as
``ahi-curation serve``'s), and the account's applied quotas from Service Quotas.

Every client gets ``curation.run.retries.client_config()``: botocore's standard retry mode (throttling, 5xx
and connection errors retried inside each call) and a bounded connect timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ProfileNotFound

from curation.model.quotas import Quota
from curation.run.limits import account_quotas
from curation.run.options import ClientOptions
from curation.run.retries import client_config

if TYPE_CHECKING:
    from mypy_boto3_medical_imaging import HealthImagingClient

__all__ = ["ClientSetupError", "make_client", "read_account_quotas"]

LOCAL_REGION = "us-east-1"


class ClientSetupError(ValueError):
    """A client that cannot be made from the options given (no region, unknown profile, bad endpoint)."""


def _session(options: ClientOptions) -> Any:
    import boto3

    try:
        return boto3.session.Session(profile_name=options.profile, region_name=options.region)
    except ProfileNotFound:
        raise ClientSetupError(f"there is no AWS profile named {options.profile!r}") from None


def make_client(options: ClientOptions, *, config: Config | None = None) -> HealthImagingClient:
    """A boto3 ``medical-imaging`` client for ``options``: a profile/region, or an endpoint URL (then host
    prefix injection is off, and dummy credentials and region stand in for missing ones)."""
    session = _session(options)
    endpoint = options.endpoint_url
    if not endpoint and session.region_name is None:
        raise ClientSetupError(
            "no AWS region: give --region (or set AWS_REGION, or use a profile with a region), "
            "or --endpoint-url for a local service"
        )
    if not endpoint and session.get_credentials() is None:
        raise ClientSetupError(
            "no AWS credentials: configure a profile (aws configure, --profile), or give --endpoint-url for a "
            "local service"
        )
    kwargs: dict[str, Any] = {"endpoint_url": endpoint, "config": client_config(config, endpoint_url=endpoint)}
    if endpoint and session.get_credentials() is None:
        kwargs.update(aws_access_key_id="local", aws_secret_access_key="local")
    if endpoint and session.region_name is None:
        kwargs["region_name"] = LOCAL_REGION
    try:
        return session.client("medical-imaging", **kwargs)
    except ValueError as exc:  # botocore: "Invalid endpoint: ..."
        raise ClientSetupError(f"cannot use endpoint {endpoint!r}: {exc}") from None


def read_account_quotas(options: ClientOptions) -> dict[str, Quota]:
    """The account's applied HealthImaging quotas (Service Quotas), when talking to AWS and allowed to read
    them; otherwise empty (the documented quotas apply)."""
    if options.endpoint_url or not options.account_quotas:
        return {}
    session = _session(options)
    if session.region_name is None:
        return {}
    try:
        client = session.client("service-quotas", config=client_config())
    except (BotoCoreError, ValueError):
        return {}
    return account_quotas(client)
