"""SigV4 authentication of the embedded service's HTTP endpoint, as AWS authenticates requests.

:class:`SigV4Verifier` recomputes a request's signature with botocore's own SigV4 implementation
(``botocore.auth.SigV4Auth``: the canonical request, the string to sign and the HMAC chain are botocore's,
not written here) over exactly the headers the client says it signed, and compares it in constant time. It
refuses what AWS refuses, with AWS's codes (AWS General Reference, "Signing AWS API requests" and the common
errors of every service): no ``Authorization`` header (403 ``MissingAuthenticationTokenException``), a
malformed one (400 ``IncompleteSignatureException``), an unknown access key or session token (403
``UnrecognizedClientException``), a signature that does not match, a credential scope for another region or
service, or a request signed more than 5 minutes before or after the server's clock (403
``InvalidSignatureException``; so a captured request cannot be replayed later). As on AWS, an identical
request replayed *within* those 5 minutes verifies: the operations' own guards (``latestVersionId``,
``clientToken``) make such a replay change nothing.

Credentials come from :func:`resolve_credentials` (flags, else the standard AWS environment variables and
shared config/credentials files, never a network provider), or :func:`generate_credentials`.
:data:`TEST_CREDENTIALS` is the fixed key pair ``serving()`` accepts by default, so tests and notebooks that
serve a store in-process sign with the same ``local``/``local`` pair the in-process client uses.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials as BotocoreCredentials

from curation.local.validate import to_datetime
from curation.local.wire import WireError
from curation.model.service import service_model

#: AWS's tolerance between the signer's clock and the service's.
MAX_SKEW_SECONDS = 300
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<signature>[0-9a-f]{64})\s*"
)
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)


@dataclass(frozen=True)
class Credentials:
    """An access key pair (and session token) that signed requests must use."""

    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:  # never print a secret by accident
        return f"Credentials(access_key={self.access_key!r}, secret_key='***')"


TEST_CREDENTIALS = Credentials("local", "local")


def generate_credentials() -> Credentials:
    """A fresh random key pair in AWS's shapes (a 20-character access key ID, a 40-character secret)."""
    alphabet = string.ascii_uppercase + string.digits
    access_key = "ASIA" + "".join(secrets.choice(alphabet) for _ in range(16))
    secret_alphabet = string.ascii_letters + string.digits + "+/"
    return Credentials(access_key, "".join(secrets.choice(secret_alphabet) for _ in range(40)))


#: botocore's credential providers that read local files or the environment (no instance metadata, no SSO,
#: no role assumption: the server must not reach the network to learn its own key).
_LOCAL_PROVIDERS = frozenset({"env", "shared-credentials-file", "config-file"})


def resolve_credentials(
    access_key: str | None = None, secret_key: str | None = None, profile: str | None = None
) -> Credentials | None:
    """The key pair given as flags, else the one the AWS environment variables or the (named or default)
    profile hold, as botocore resolves them; None when there is none."""
    if access_key or secret_key:
        if not (access_key and secret_key):
            raise ValueError("give both an access key ID and a secret access key")
        return Credentials(access_key, secret_key)
    import botocore.credentials
    import botocore.session

    session = botocore.session.Session(profile=profile)
    resolver = botocore.credentials.create_credential_resolver(session)
    resolver.providers = [p for p in resolver.providers if p.METHOD in _LOCAL_PROVIDERS]
    found = resolver.load_credentials()
    if found is None:
        return None
    frozen = found.get_frozen_credentials()
    if frozen.access_key is None or frozen.secret_key is None:
        return None
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token)


def sign_headers(
    method: str,
    url: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    *,
    credentials: Credentials = TEST_CREDENTIALS,
    region: str = "us-east-1",
) -> dict[str, str]:
    """The headers of a request to ``url`` with botocore's SigV4 ``Authorization`` and ``X-Amz-Date`` added:
    for raw HTTP clients (curl, tests) that do not sign by themselves."""
    request = AWSRequest(method=method.upper(), url=url, data=body, headers=dict(headers or {}))
    key = BotocoreCredentials(credentials.access_key, credentials.secret_key, credentials.token)
    SigV4Auth(key, str(service_model().metadata.get("signingName", "medical-imaging")), region).add_auth(request)
    return dict(request.headers.items())


class _Recomputer(SigV4Auth):
    """botocore's SigV4 signer, restricted to the headers the client signed and to the client's timestamp."""

    def __init__(self, credentials: Credentials, region: str, service: str, signed: list[str]) -> None:
        super().__init__(BotocoreCredentials(credentials.access_key, credentials.secret_key), service, region)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        chosen = HTTPHeaders()
        for name in self._signed:
            for value in request.headers.get_all(name) or []:
                chosen[name] = value
        return chosen

    def expected(self, request: AWSRequest, timestamp: str) -> str:
        request.context["timestamp"] = timestamp
        canonical = self.canonical_request(request)
        return str(self.signature(self.string_to_sign(request, canonical), request))


def _refuse(status: int, code: str, message: str) -> WireError:
    return WireError(status, message, code)


def _amz_date(headers: Mapping[str, str]) -> tuple[str, datetime]:
    if "x-amz-date" in headers:
        text = headers["x-amz-date"].strip()
        try:
            return text, datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise _refuse(
                400, "IncompleteSignatureException", f"X-Amz-Date {text!r} is not an ISO 8601 basic date"
            ) from None
    if "date" in headers:
        try:
            when = to_datetime(headers["date"])
        except (ValueError, TypeError):
            raise _refuse(400, "IncompleteSignatureException", "The Date header is not a valid HTTP date") from None
        return when.strftime("%Y%m%dT%H%M%SZ"), when
    raise _refuse(
        400,
        "IncompleteSignatureException",
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
    )


class SigV4Verifier:
    """Verifies the SigV4 signature of each request against one key pair, for one region and service."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        region: str = "us-east-1",
        service: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credentials = credentials
        self.region = region
        self.service = service or str(service_model().metadata.get("signingName", "medical-imaging"))
        self.clock = clock

    def _check_scope(self, credential: str, amz_date: str) -> list[str]:
        parts = credential.split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            raise _refuse(400, "IncompleteSignatureException", f"Credential {credential!r} is not well formed")
        access_key, day, region, service, _ = parts
        if access_key != self.credentials.access_key:
            raise _refuse(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
        if day != amz_date[:8]:
            raise _refuse(
                403,
                "InvalidSignatureException",
                f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
                f"'{day}' != '{amz_date[:8]}', from '{amz_date}'.",
            )
        if region != self.region:
            raise _refuse(
                403,
                "InvalidSignatureException",
                f"Credential should be scoped to a valid region, not '{region}'. "
                f"This endpoint answers for '{self.region}'.",
            )
        if service != self.service:
            raise _refuse(
                403, "InvalidSignatureException", f"Credential should be scoped to correct service: '{self.service}'."
            )
        return parts

    def _check_time(self, amz_date: str, when: datetime) -> None:
        now = self.clock()
        stamp = when.timestamp()

        def fmt(t: float) -> str:
            return datetime.fromtimestamp(t, UTC).strftime("%Y%m%dT%H%M%SZ")

        if stamp < now - MAX_SKEW_SECONDS:
            raise _refuse(
                403,
                "InvalidSignatureException",
                f"Signature expired: {amz_date} is now earlier than {fmt(now - MAX_SKEW_SECONDS)} "
                f"({fmt(now)} - 5 min.)",
            )
        if stamp > now + MAX_SKEW_SECONDS:
            raise _refuse(
                403,
                "InvalidSignatureException",
                f"Signature not yet current: {amz_date} is still later than {fmt(now + MAX_SKEW_SECONDS)} "
                f"({fmt(now)} + 5 min.)",
            )

    def verify(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> None:
        """Raise :class:`~curation.local.wire.WireError` (AWS's code and status) unless the request is signed
        with this verifier's key, for its region and service, within 5 minutes of its clock.

        ``target`` is the request target as sent (raw path and query), ``headers`` lowercased names.
        """
        authorization = headers.get("authorization")
        if not authorization:
            raise _refuse(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        match = _AUTHORIZATION.fullmatch(authorization.strip())
        if match is None:
            raise _refuse(
                400,
                "IncompleteSignatureException",
                "Authorization header must be 'AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...'",
            )
        amz_date, when = _amz_date(headers)
        self._check_scope(match["credential"], amz_date)
        self._check_time(amz_date, when)
        signed = match["signed"].split(";")
        if "host" not in signed:
            raise _refuse(
                403,
                "InvalidSignatureException",
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
            )
        if self.credentials.token is not None and headers.get("x-amz-security-token") != self.credentials.token:
            raise _refuse(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
        claimed = headers.get("x-amz-content-sha256")
        if claimed is not None and claimed != hashlib.sha256(body).hexdigest():
            raise _refuse(
                400,
                "InvalidSignatureException",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )
        missing = [name for name in signed if name not in headers]
        if missing:
            raise _refuse(
                403, "InvalidSignatureException", f"Signed header(s) {', '.join(missing)} are not in the request"
            )
        request = AWSRequest(
            method=method.upper(),
            url=f"http://{headers['host']}{target}",
            headers={name: headers[name] for name in signed},
            data=body,
        )
        expected = _Recomputer(self.credentials, self.region, self.service, signed).expected(request, amz_date)
        if not hmac.compare_digest(expected, match["signature"]):
            raise _refuse(403, "InvalidSignatureException", _MISMATCH)
