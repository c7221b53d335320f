"""Client-side rate limiting and retries for AHI calls: a token bucket and jittered exponential backoff.

AHI enforces per-action quotas (GetImageSetMetadata 50/s burst 100, SearchImageSets and GetImageSet 25/s
burst 50, updates 0.25/s burst 1). Staying under them client-side is cheaper than being throttled, and what
still fails transiently is retried here with "full jitter" backoff (delay drawn uniformly in
``[0, min(max_delay, base_delay * 2**retry)]``), so that many workers do not retry in lockstep.

These retries sit on top of botocore's own: every boto3 client already retries throttling (429,
``ThrottlingException``), 5xx and connection errors inside one call (botocore 1.44 defaults to the
"standard" retry mode, 3 attempts; "legacy" makes 5). ``retry_call`` therefore only sees what survived
those, plus errors botocore never retries, such as AHI's ConflictException "metadata is not consistent yet".
Clock and sleep are injectable so that tests never depend on wall time.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

T = TypeVar("T")

#: Error codes that mean "slow down" (botocore's standard retry mode uses the same family).
THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
    }
)
#: Error codes of a transient server-side failure.
SERVER_ERROR_CODES = frozenset({"InternalServerException", "InternalFailure", "ServiceUnavailable"})
NOT_CONSISTENT_YET = "not consistent yet"


class RateLimiter:
    """A thread-safe token bucket: ``rate_per_second`` tokens refill continuously, up to ``burst``.

    ``acquire()`` blocks until a token is available. Callers reserve their token under the lock (the bucket
    may go negative) and sleep outside it, so waiting threads are served in arrival order at exactly
    ``rate_per_second`` and never hold the lock while sleeping. A rate of ``None`` or ``inf`` never waits.
    """

    def __init__(
        self,
        rate_per_second: float | None,
        burst: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if rate_per_second is not None and not rate_per_second > 0:
            raise ValueError(f"rate_per_second must be positive, not {rate_per_second!r}")
        if not burst >= 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        self.rate = math.inf if rate_per_second is None else float(rate_per_second)
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._updated = clock()

    def __repr__(self) -> str:
        return f"RateLimiter(rate_per_second={self.rate:g}, burst={self.burst:g})"

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._updated = now

    def reserve(self, tokens: float = 1.0) -> float:
        """Take ``tokens`` now and return how many seconds the caller must wait before using them."""
        if math.isinf(self.rate):
            return 0.0
        if tokens > self.burst:
            raise ValueError(f"cannot take {tokens} tokens from a bucket of {self.burst}")
        with self._lock:
            self._refill(self._clock())
            self._tokens -= tokens
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def acquire(self, tokens: float = 1.0) -> float:
        """Block until ``tokens`` are available; return the seconds waited."""
        wait = self.reserve(tokens)
        if wait > 0:
            self._sleep(wait)
        return wait

    def try_acquire(self, tokens: float = 1.0) -> bool:
        """Take ``tokens`` if they are available right now, without waiting."""
        if math.isinf(self.rate):
            return True
        with self._lock:
            self._refill(self._clock())
            if self._tokens >= tokens:
                self._tokens -= tokens
                return True
            return False


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` (else the exception's class name)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or type(exc).__name__
    return type(exc).__name__


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a botocore ``ClientError``, when known."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying on any AHI call: throttling, 5xx, botocore connection errors."""
    if isinstance(exc, BotocoreConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        status = http_status(exc)
        code = error_code(exc)
        return (
            code in THROTTLING_CODES
            or code in SERVER_ERROR_CODES
            or status == 429
            or (status is not None and status >= 500)
        )
    return False


def is_not_consistent_yet(exc: BaseException) -> bool:
    """True for AHI's ConflictException "Requested ImageSet metadata is not consistent yet. Please retry"."""
    if not isinstance(exc, ClientError) or error_code(exc) != "ConflictException":
        return False
    return NOT_CONSISTENT_YET in str(exc.response.get("Error", {}).get("Message", "")).lower()


def backoff_delay(retry: int, *, base_delay: float, max_delay: float, rng: Callable[[], float]) -> float:
    """Full-jitter delay before retry number ``retry`` (0 for the first retry)."""
    cap = min(max_delay, base_delay * 2.0**retry)
    return rng() * cap


def retry_call(
    fn: Callable[[], T],
    *,
    retryable: Callable[[BaseException], bool] | None = None,
    max_attempts: int = 6,
    base_delay: float = 0.5,
    max_delay: float = 20.0,
    sleep: Callable[[float], object] = time.sleep,
    rng: Callable[[], float] = random.random,
    on_retry: Callable[[int, BaseException, float], object] | None = None,
) -> T:
    """Call ``fn()`` until it succeeds, retrying transient errors with full-jitter exponential backoff.

    An exception is retried when ``is_transient`` says so or the caller's ``retryable`` predicate
    returns True, and fewer than ``max_attempts`` calls were made; otherwise the last exception is raised
    unchanged. ``on_retry(attempt, exc, delay)`` is called before each sleep (for logging or counting).
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as exc:
            worth_it = is_transient(exc) or (retryable is not None and retryable(exc))
            if not worth_it or attempt >= max_attempts:
                raise
            delay = backoff_delay(attempt - 1, base_delay=base_delay, max_delay=max_delay, rng=rng)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            sleep(delay)
            attempt += 1


@dataclass(frozen=True)
class RetryPolicy:
    """How ``retry_call`` retries: attempts, backoff bounds, and the (injectable) sleep and randomness."""

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 20.0
    sleep: Callable[[float], object] = field(default=time.sleep, repr=False)
    rng: Callable[[], float] = field(default=random.random, repr=False)

    @classmethod
    def coerce(cls, value: RetryPolicy | int | None) -> RetryPolicy:
        """A policy from a policy, a number of attempts (1 = no retry), or None (no retry)."""
        if isinstance(value, RetryPolicy):
            return value
        if value is None:
            return cls(max_attempts=1)
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(max_attempts=value)
        raise TypeError(f"retries must be a RetryPolicy, an int or None, not {type(value).__name__}")

    def call(
        self,
        fn: Callable[[], T],
        *,
        retryable: Callable[[BaseException], bool] | None = None,
        on_retry: Callable[[int, BaseException, float], object] | None = None,
    ) -> T:
        """``retry_call(fn)`` with this policy."""
        return retry_call(
            fn,
            retryable=retryable,
            max_attempts=self.max_attempts,
            base_delay=self.base_delay,
            max_delay=self.max_delay,
            sleep=self.sleep,
            rng=self.rng,
            on_retry=on_retry,
        )
