"""Token bucket and retry policy of curation.run.retries, on a fake clock (no wall-time dependence)."""

from __future__ import annotations

import random
import threading

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from curation.run.retries import (
    RateLimiter,
    RetryPolicy,
    backoff_delay,
    error_code,
    is_not_consistent_yet,
    is_transient,
    retry_call,
)


class FakeClock:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def client_error(code: str, status: int, message: str = "boom", op: str = "GetImageSetMetadata") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, op
    )


NOT_CONSISTENT = "Requested ImageSet metadata is not consistent yet. Please retry after a few seconds."


# --- RateLimiter ----------------------------------------------------------------------------------------


def test_burst_is_free_then_tokens_arrive_at_the_rate():
    clock = FakeClock()
    limiter = RateLimiter(10, burst=3, clock=clock, sleep=clock.sleep)
    assert [limiter.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert clock.sleeps == []
    assert limiter.acquire() == pytest.approx(0.1)
    assert limiter.acquire() == pytest.approx(0.1)
    assert clock.sleeps == pytest.approx([0.1, 0.1])


def test_idle_time_refills_up_to_burst_only():
    clock = FakeClock()
    limiter = RateLimiter(2, burst=4, clock=clock, sleep=clock.sleep)
    for _ in range(4):
        limiter.acquire()
    clock.now += 3600
    waits = [limiter.acquire() for _ in range(6)]
    assert waits[:4] == [0.0] * 4
    assert waits[4:] == pytest.approx([0.5, 0.5])


def test_partial_refill_shortens_the_wait():
    clock = FakeClock()
    limiter = RateLimiter(4, burst=1, clock=clock, sleep=clock.sleep)
    limiter.acquire()
    clock.now += 0.125  # half a token
    assert limiter.acquire() == pytest.approx(0.125)


def test_concurrent_callers_are_spaced_exactly_by_the_rate():
    clock = FakeClock()
    recorded: list[float] = []
    lock = threading.Lock()

    def sleep(seconds: float) -> None:  # the clock does not move: every caller reserves up front
        with lock:
            recorded.append(seconds)

    limiter = RateLimiter(50, burst=5, clock=clock, sleep=sleep)
    waits: list[float] = []

    def worker() -> None:
        for _ in range(10):
            w = limiter.acquire()
            with lock:
                waits.append(w)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(waits) == 80
    assert sorted(waits) == pytest.approx([0.0] * 5 + [k / 50 for k in range(1, 76)])
    assert sorted(recorded) == pytest.approx([k / 50 for k in range(1, 76)])


def test_unlimited_rate_never_waits():
    clock = FakeClock()
    limiter = RateLimiter(None, clock=clock, sleep=clock.sleep)
    assert all(limiter.acquire() == 0 for _ in range(1000))
    assert limiter.try_acquire()
    assert clock.sleeps == []


def test_try_acquire_does_not_wait_or_overdraw():
    clock = FakeClock()
    limiter = RateLimiter(1, burst=2, clock=clock, sleep=clock.sleep)
    assert limiter.try_acquire() and limiter.try_acquire()
    assert not limiter.try_acquire()
    clock.now += 1.0
    assert limiter.try_acquire()
    assert clock.sleeps == []


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0.5)])
def test_invalid_limits_are_refused(rate, burst):
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)


def test_cannot_take_more_than_the_bucket_holds():
    with pytest.raises(ValueError, match="bucket"):
        RateLimiter(1, burst=2).acquire(3)


# --- classification -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (client_error("ThrottlingException", 429), True),
        (client_error("TooManyRequestsException", 429), True),
        (client_error("SomethingNew", 429), True),
        (client_error("InternalServerException", 500), True),
        (client_error("ServiceUnavailable", 503), True),
        (client_error("WhateverGateway", 502), True),
        (client_error("ValidationException", 400), False),
        (client_error("AccessDeniedException", 403), False),
        (client_error("ResourceNotFoundException", 404), False),
        (client_error("ConflictException", 409, NOT_CONSISTENT), False),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (ValueError("no"), False),
    ],
)
def test_is_transient(error, transient):
    assert is_transient(error) is transient


def test_not_consistent_yet_is_recognised_by_code_and_message():
    assert is_not_consistent_yet(client_error("ConflictException", 409, NOT_CONSISTENT))
    assert not is_not_consistent_yet(client_error("ConflictException", 409, "Image set is locked"))
    assert not is_not_consistent_yet(client_error("ValidationException", 400, NOT_CONSISTENT))
    assert not is_not_consistent_yet(RuntimeError(NOT_CONSISTENT))


def test_error_code():
    assert error_code(client_error("ThrottlingException", 429)) == "ThrottlingException"
    assert error_code(KeyError("x")) == "KeyError"


# --- retry_call -----------------------------------------------------------------------------------------


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


def test_throttling_is_retried_with_exponential_full_jitter():
    clock = FakeClock()
    fn = Flaky(*[client_error("ThrottlingException", 429)] * 4)
    result = retry_call(fn, max_attempts=5, base_delay=1.0, max_delay=5.0, sleep=clock.sleep, rng=lambda: 0.5)
    assert result == "ok"
    assert fn.calls == 5
    assert clock.sleeps == [0.5, 1.0, 2.0, 2.5]  # 0.5 * min(5, 1 * 2**n)


def test_jitter_stays_within_the_exponential_cap():
    rng = random.Random(7).random
    for retry in range(12):
        cap = min(8.0, 0.25 * 2**retry)
        delays = [backoff_delay(retry, base_delay=0.25, max_delay=8.0, rng=rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap / 2  # really spread over the interval, not a constant


def test_non_retryable_error_is_raised_at_once():
    clock = FakeClock()
    fn = Flaky(client_error("ValidationException", 400))
    with pytest.raises(ClientError) as info:
        retry_call(fn, sleep=clock.sleep)
    assert error_code(info.value) == "ValidationException"
    assert fn.calls == 1
    assert clock.sleeps == []


def test_gives_up_after_max_attempts_with_the_last_error():
    clock = FakeClock()
    errors = [client_error("InternalServerException", 500, f"try {i}") for i in range(10)]
    fn = Flaky(*errors)
    with pytest.raises(ClientError, match="try 2"):
        retry_call(fn, max_attempts=3, base_delay=0.1, sleep=clock.sleep, rng=lambda: 1.0)
    assert fn.calls == 3
    assert clock.sleeps == pytest.approx([0.1, 0.2])


def test_caller_predicate_adds_retryable_errors():
    clock = FakeClock()
    fn = Flaky(client_error("ConflictException", 409, NOT_CONSISTENT))
    with pytest.raises(ClientError):
        retry_call(fn, sleep=clock.sleep)
    fn = Flaky(client_error("ConflictException", 409, NOT_CONSISTENT), client_error("ThrottlingException", 429))
    assert retry_call(fn, retryable=is_not_consistent_yet, sleep=clock.sleep, rng=lambda: 0.0) == "ok"
    assert fn.calls == 3


def test_connection_errors_are_retried_and_on_retry_sees_each():
    clock = FakeClock()
    seen = []
    fn = Flaky(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    result = retry_call(fn, sleep=clock.sleep, rng=lambda: 1.0, on_retry=lambda n, e, d: seen.append((n, d)))
    assert result == "ok"
    assert seen == [(1, 0.5)]


def test_retry_policy_coerce_and_call():
    assert RetryPolicy.coerce(None).max_attempts == 1
    assert RetryPolicy.coerce(4).max_attempts == 4
    policy = RetryPolicy(max_attempts=2)
    assert RetryPolicy.coerce(policy) is policy
    with pytest.raises(TypeError):
        RetryPolicy.coerce(True)
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=2, base_delay=3.0, sleep=clock.sleep, rng=lambda: 1.0)
    fn = Flaky(client_error("ThrottlingException", 429), client_error("ThrottlingException", 429))
    with pytest.raises(ClientError):
        policy.call(fn)
    assert fn.calls == 2
    assert clock.sleeps == [3.0]
