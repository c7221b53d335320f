"""curation.run.retries: botocore's standard mode on our clients, botocore's own classification of errors, and
our waiting for AHI's ConflictException only (fake sleep and randomness: no wall time)."""

from __future__ import annotations

import random

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from curation.run.retries import (
    RetryPolicy,
    backoff_delay,
    client_config,
    error_code,
    is_conflict,
    is_not_consistent_yet,
    is_stale,
    is_throttling,
    is_transient,
    never_sent,
    retry_call,
)

NOT_CONSISTENT = "Requested ImageSet metadata is not consistent yet. Please retry after a few seconds."


class FakeClock:
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def client_error(code: str, status: int, message: str = "boom", op: str = "GetImageSetMetadata") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, op
    )


def test_our_clients_use_botocores_standard_mode_and_a_callers_config_wins() -> None:
    config = client_config()
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert config.connect_timeout == 10 and config.inject_host_prefix is not False
    local = client_config(endpoint_url="http://127.0.0.1:8080")
    assert local.inject_host_prefix is False
    mine = client_config(Config(retries={"mode": "standard", "total_max_attempts": 8}, max_pool_connections=32))
    assert mine.retries["total_max_attempts"] == 8 and mine.max_pool_connections == 32


@pytest.mark.parametrize(
    ("error", "throttling", "transient", "unsent"),
    [
        (client_error("ThrottlingException", 429), True, True, False),
        (client_error("TooManyRequestsException", 429), True, True, False),
        (client_error("SlowDown", 503), True, True, False),  # botocore's list, not ours
        (client_error("SomethingNew", 429), True, True, False),  # a 429 the model does not know
        (client_error("InternalServerException", 500), False, True, False),
        (client_error("WhateverGateway", 502), False, True, False),
        (client_error("ValidationException", 400), False, False, False),
        (client_error("AccessDeniedException", 403), False, False, False),
        (client_error("ConflictException", 409, NOT_CONSISTENT), False, False, False),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), False, True, True),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), False, True, False),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), False, True, False),
        (ValueError("no"), False, False, False),
    ],
)
def test_classification_is_botocores(error: Exception, throttling: bool, transient: bool, unsent: bool) -> None:
    assert is_throttling(error) is throttling
    assert is_transient(error) is transient
    assert never_sent(error) is unsent


def test_ahis_own_answers() -> None:
    assert is_not_consistent_yet(client_error("ConflictException", 409, NOT_CONSISTENT))
    assert not is_not_consistent_yet(client_error("ConflictException", 409, "Image set is locked"))
    assert is_conflict(client_error("ConflictException", 409, "Image set is locked"))
    assert not is_not_consistent_yet(client_error("ValidationException", 400, NOT_CONSISTENT))
    assert not is_not_consistent_yet(RuntimeError(NOT_CONSISTENT))
    stale = client_error("ResourceNotFoundException", 404, "Requested version(s) of ImageSet(s) is not the latest.")
    assert is_stale(stale) and not is_stale(client_error("ResourceNotFoundException", 404, "no such image set"))
    assert error_code(client_error("ThrottlingException", 429)) == "ThrottlingException"
    assert error_code(KeyError("x")) == "KeyError"


class Flaky:
    """Raises the given errors in turn, then returns "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_only_what_the_predicate_accepts_is_waited_out_with_full_jitter() -> None:
    clock = FakeClock()
    fn = Flaky(*[client_error("ConflictException", 409, NOT_CONSISTENT)] * 4)
    result = retry_call(
        fn,
        retryable=is_not_consistent_yet,
        max_attempts=5,
        base_delay=1.0,
        max_delay=5.0,
        sleep=clock.sleep,
        rng=lambda: 0.5,
    )
    assert result == "ok" and fn.calls == 5
    assert clock.sleeps == [0.5, 1.0, 2.0, 2.5]  # 0.5 * min(5, 1 * 2**n)
    for error in (client_error("ThrottlingException", 429), client_error("InternalServerException", 500)):
        fn = Flaky(error)  # botocore's to retry: never a second time here
        with pytest.raises(ClientError):
            retry_call(fn, retryable=is_not_consistent_yet, sleep=clock.sleep)
        assert fn.calls == 1


def test_jitter_stays_within_the_exponential_cap() -> None:
    rng = random.Random(7).random
    for retry in range(12):
        cap = min(8.0, 0.25 * 2**retry)
        delays = [backoff_delay(retry, base_delay=0.25, max_delay=8.0, rng=rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap / 2


def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    clock = FakeClock()
    fn = Flaky(*[client_error("ConflictException", 409, f"try {i}") for i in range(10)])
    with pytest.raises(ClientError, match="try 2"):
        retry_call(fn, retryable=is_conflict, max_attempts=3, base_delay=0.1, sleep=clock.sleep, rng=lambda: 1.0)
    assert fn.calls == 3 and clock.sleeps == pytest.approx([0.1, 0.2])
    with pytest.raises(ValueError, match="max_attempts"):
        retry_call(fn, retryable=is_conflict, max_attempts=0)


def test_retry_policy_coerce_and_call() -> None:
    assert RetryPolicy.coerce(None) == RetryPolicy()
    assert RetryPolicy.coerce(4).max_attempts == 4
    policy = RetryPolicy(max_attempts=2)
    assert RetryPolicy.coerce(policy) is policy
    with pytest.raises(TypeError):
        RetryPolicy.coerce(True)  # type: ignore[arg-type]
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=2, base_delay=3.0, sleep=clock.sleep, rng=lambda: 1.0)
    fn = Flaky(client_error("ConflictException", 409), client_error("ConflictException", 409))
    seen: list[int] = []
    with pytest.raises(ClientError):
        policy.call(fn, retryable=is_conflict, on_retry=lambda n, e, d: seen.append(n))
    assert fn.calls == 2 and clock.sleeps == [3.0] and seen == [1]
