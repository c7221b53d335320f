"""curation.run.limits: the adaptive per-action limiter (fake clock), the client hooks that count botocore's
attempts (a real boto3 client against the embedded service), and the account's quotas read through Service
Quotas (botocore's Stubber on a real service-quotas client: no network)."""

from __future__ import annotations

import socket
import threading
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber

import curation.local
from curation.model.errors import AHIError
from curation.model.quotas import Quota, QuotaSource
from curation.run.limits import BETA, AdaptiveLimiter, Attempts, Limiters, account_quotas

STANDARD = Config(retries={"mode": "standard", "total_max_attempts": 3})


def _serve(limiter: AdaptiveLimiter, clock: Any, seconds: float, rate: float) -> None:
    """Send (and succeed) at ``rate`` for ``seconds`` of fake time, or as fast as the limiter allows."""
    end = clock.now + seconds
    while clock.now < end:
        sent = clock.now
        limiter.acquire()
        limiter.record_success(sent)
        clock.now = max(clock.now, sent + 1 / rate)


def test_a_fixed_limiter_never_moves(clock: Any) -> None:
    limiter = AdaptiveLimiter(Quota(10, 40), adaptive=False, clock=clock, sleep=clock.sleep)
    _serve(limiter, clock, 30, 1000)
    limiter.record_throttle(clock.now)
    assert limiter.rate == 10 and limiter.throttles == 1 and limiter.decreases == 0


def test_the_rate_rises_while_nothing_is_throttled_but_only_as_far_as_it_is_used(clock: Any) -> None:
    limiter = AdaptiveLimiter(Quota(10, 40), clock=clock, sleep=clock.sleep)
    assert limiter.rate == 10
    _serve(limiter, clock, 20, 1000)  # demand above the limit: the limit probes upward
    risen = limiter.rate
    assert risen > 15
    idle = AdaptiveLimiter(Quota(10, 40), clock=clock, sleep=clock.sleep)
    _serve(idle, clock, 20, 3)  # demand of 3 per second: the limit stays at the quota (2 x 3 < 10)
    assert idle.rate == 10


def test_a_throttle_backs_off_to_beta_times_what_was_accepted_once_per_congestion(clock: Any) -> None:
    limiter = AdaptiveLimiter(Quota(10, 40), clock=clock, sleep=clock.sleep)
    _serve(limiter, clock, 5, 8)  # the service accepts 8 per second
    in_flight = clock.now - 0.01
    limiter.record_throttle(clock.now)
    assert limiter.rate == pytest.approx(BETA * 8, rel=0.15)
    after = limiter.rate
    limiter.record_throttle(in_flight)  # sent before the decrease: the same congestion
    assert limiter.rate == after and limiter.throttles == 2 and limiter.decreases == 1
    clock.now += 0.5
    limiter.record_throttle(clock.now)  # sent after it: the service still refuses, back off again
    assert limiter.rate < after and limiter.decreases == 2


def test_a_ceiling_is_never_exceeded_and_unlimited_never_waits(clock: Any) -> None:
    limiter = AdaptiveLimiter(Quota(5, 5, QuotaSource.GIVEN), ceiling=5, clock=clock, sleep=clock.sleep)
    _serve(limiter, clock, 60, 1000)
    assert limiter.rate == 5
    free = AdaptiveLimiter(None, clock=clock, sleep=clock.sleep)
    before = list(clock.sleeps)
    assert all(free.acquire() for _ in range(1000)) and clock.sleeps == before and not free.adaptive


def test_a_cancel_signal_stops_the_wait_and_sends_nothing(clock: Any) -> None:
    limiter = AdaptiveLimiter(Quota(1, 1), adaptive=False, clock=clock, sleep=clock.sleep)
    cancel = threading.Event()
    assert limiter.acquire(cancel)  # the burst token
    waited: list[float | None] = []

    class Signal:
        def is_set(self) -> bool:
            return False

        def wait(self, timeout: float | None = None) -> bool:
            waited.append(timeout)
            return True  # set while we waited

    assert not limiter.acquire(Signal()) and waited == [pytest.approx(1.0)]
    cancel.set()
    assert not limiter.acquire(cancel)


class ThrottlesFirst:
    """A backend that answers ThrottlingException to the first ``count`` calls of ``operation``."""

    def __init__(self, store: Any, operation: str, count: int) -> None:
        self.store, self.operation, self.count = store, operation, count

    def call(self, operation_name: str, params: dict[str, Any]) -> dict[str, Any]:
        if operation_name == self.operation and self.count > 0:
            self.count -= 1
            raise AHIError("ThrottlingException", "Rate exceeded")
        return self.store.call(operation_name, params)


@pytest.fixture
def image_set(local_store: Any) -> tuple[str, str]:
    from pathlib import Path

    from curation.model.document import read_document

    reference = Path(__file__).parents[1] / "data" / "reference" / "ct-2025-htj2k-1-instance.json"
    report = local_store.import_documents([read_document(str(reference))])
    return report.datastore_id, report.created[0]


def test_every_attempt_botocore_makes_takes_a_token_and_feeds_the_limiter(
    local_store: Any, image_set: tuple[str, str], fast_botocore_backoff: None, clock: Any
) -> None:
    from curation.local.service import Service

    datastore_id, image_set_id = image_set
    client = curation.local.client(Service(ThrottlesFirst(local_store, "GetImageSet", 2)), config=STANDARD)
    limiters = Limiters(rates={"GetImageSet": 1}, bursts={"GetImageSet": 1}, clock=clock, sleep=clock.sleep)
    attempts = Attempts()
    info = limiters.call(
        client,
        "GetImageSet",
        lambda: client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id),
        attempts=attempts,
    )
    assert info["imageSetId"] == image_set_id
    assert (attempts.sent, attempts.throttled, attempts.maybe_applied, attempts.unreachable) == (3, 2, 1, 0)
    assert len(clock.sleeps) == 2  # the first attempt's token was free (burst 1); botocore's two retries waited
    limiter = limiters["GetImageSet"]
    assert limiter.throttles == 2 and limiter.rate < 1
    calls = dict(client.meta.local_service.calls)
    client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)  # outside ``call``: hooks stay out
    assert limiter.throttles == 2 and client.meta.local_service.calls["GetImageSet"] == calls["GetImageSet"] + 1


def test_a_refused_connection_is_counted_as_never_reaching_the_service(fast_botocore_backoff: None) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: nothing listens there
    client = boto3.client(
        "medical-imaging",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=STANDARD.merge(Config(inject_host_prefix=False)),
    )
    attempts = Attempts()
    with pytest.raises(EndpointConnectionError):
        Limiters(rates={"GetImageSet": None}).call(
            client,
            "GetImageSet",
            lambda: client.get_image_set(datastoreId="d" * 32, imageSetId="a" * 32),
            attempts=attempts,
        )
    assert attempts.sent == attempts.unreachable == 3 and attempts.nothing_reached


def _quota(name: str, value: float, unit: str = "SECOND") -> dict[str, Any]:
    return {
        "ServiceCode": "medical-imaging",
        "QuotaName": name,
        "QuotaCode": f"L-{abs(hash(name)) % 10**8:08d}",
        "Value": value,
        "Period": {"PeriodValue": 1, "PeriodUnit": unit},
    }


def test_account_quotas_are_read_from_service_quotas() -> None:
    client = boto3.client("service-quotas", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    stub.add_response(
        "list_service_quotas",
        {
            "Quotas": [
                _quota("Rate of UpdateImageSetMetadata requests", 25),
                _quota("Burst rate of UpdateImageSetMetadata requests", 60),
                _quota("Rate of GetImageSet requests", 30),
            ],
            "NextToken": "page-2",
        },
        {"ServiceCode": "medical-imaging"},
    )
    stub.add_response(
        "list_service_quotas",
        {"Quotas": [_quota("Rate of GetImageSetMetadata requests", 6000, "MINUTE"), _quota("Datastores", 10)]},
        {"ServiceCode": "medical-imaging", "NextToken": "page-2"},
    )
    with stub:
        found = account_quotas(client)
        stub.assert_no_pending_responses()
    assert found["UpdateImageSetMetadata"] == Quota(25, 60, QuotaSource.ACCOUNT)
    assert found["GetImageSet"].rate == 30 and found["GetImageSet"].source is QuotaSource.ACCOUNT
    assert found["GetImageSetMetadata"].rate == 100  # 6000 per minute
    assert set(found) == {"UpdateImageSetMetadata", "GetImageSet", "GetImageSetMetadata"}
    limiters = Limiters(found)
    assert limiters["UpdateImageSetMetadata"].rate == 25 and limiters["CopyImageSet"].rate == 0.25


def test_a_caller_who_may_not_read_service_quotas_gets_the_documented_ones() -> None:
    client = boto3.client("service-quotas", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    stub.add_client_error("list_service_quotas", "AccessDeniedException", "not allowed", 400)
    with stub:
        assert account_quotas(client) == {}
    assert Limiters({})["UpdateImageSetMetadata"].rate == 10
