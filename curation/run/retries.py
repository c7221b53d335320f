"""The one retry policy: botocore's standard retry mode, plus our own waiting for what botocore cannot know.

Throttling, 5xx and connection errors are botocore's to retry, inside each call: the clients this package makes
use ``client_config()`` (botocore's ``"standard"`` retry mode, 3 attempts, with botocore's own list of
throttling codes and its backoff). A client you make yourself retries the same way when created with
``botocore.config.Config(retries={"mode": "standard"})`` (botocore's default since 1.36; ``"adaptive"`` adds
botocore's client-side rate limiter, which ``curation.run.limits`` already does per action, so keep
``"standard"``). Nothing here retries those errors again.

What botocore cannot know is AHI's own ``ConflictException``: an image set that is ``LOCKED`` by an update in
progress, and "Requested ImageSet metadata is not consistent yet. Please retry after a few seconds." right after
an import. ``RetryPolicy`` waits those out with full-jitter exponential backoff (delay drawn uniformly in
``[0, min(max_delay, base_delay * 2**retry)]``), only when the caller's predicate says so. Sleep and
randomness are injectable, so tests never depend on wall time.

The classification helpers reuse botocore's checkers, so the codes stay botocore's: ``is_throttling`` (the
detector of botocore's standard and adaptive modes), ``is_transient`` (throttling, 5xx, connection errors),
``never_sent`` (the connection was never made: nothing reached the service).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import TypeVar

from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from botocore.retries import standard

from curation.model.quotas import TokenBucket
from curation.model.service import operation_model

T = TypeVar("T")

#: Attempts per call in botocore's standard retry mode (its default; the first try included).
STANDARD_ATTEMPTS = 3
#: Seconds to wait for a TCP connection before botocore's retry (a refused one fails at once anyway).
CONNECT_TIMEOUT = 10
NOT_CONSISTENT_YET = "not consistent yet"
STALE_TEXT = "not the latest"


def client_config(config: Config | None = None, *, endpoint_url: str | None = None) -> Config:
    """The botocore Config of the clients this package makes: standard retry mode, a bounded connect
    timeout, and no host prefix for an ``endpoint_url`` (``ahi-curation serve``); ``config`` overrides."""
    ours = Config(
        retries={"mode": "standard", "total_max_attempts": STANDARD_ATTEMPTS},
        connect_timeout=CONNECT_TIMEOUT,
    )
    if endpoint_url:
        ours = ours.merge(Config(inject_host_prefix=False))
    return ours.merge(config) if config is not None else ours


# --- classification -----------------------------------------------------------------------------------------


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` (else the exception's class name)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or type(exc).__name__
    return type(exc).__name__


def error_message(exc: BaseException) -> str:
    """The service's message of a ``ClientError`` (else ``str(exc)``)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
    return str(exc)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a botocore ``ClientError``, when known."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


class _Status:
    """The part of an HTTP response botocore's checkers read."""

    def __init__(self, status_code: int | None, headers: Mapping[str, str]) -> None:
        self.status_code = status_code
        self.headers = dict(headers)


def _context(exc: ClientError) -> standard.RetryContext:
    try:
        model = operation_model(exc.operation_name)
    except Exception:  # another service's error, or no operation name: no model to consult
        model = None
    metadata = exc.response.get("ResponseMetadata", {})
    return standard.RetryContext(
        attempt_number=1,
        operation_model=model,
        parsed_response=exc.response,
        http_response=_Status(metadata.get("HTTPStatusCode"), metadata.get("HTTPHeaders") or {}),
    )


@cache
def _throttling_detector() -> standard.ThrottlingErrorDetector:
    return standard.ThrottlingErrorDetector(retry_event_adapter=standard.RetryEventAdapter())


def throttling_detector() -> standard.ThrottlingErrorDetector:
    """botocore's throttling detector (the one its standard and adaptive retry modes use)."""
    return _throttling_detector()


def is_throttling(exc: BaseException) -> bool:
    """True for a throttling answer, by botocore's own codes, status 429 and the service model."""
    return isinstance(exc, ClientError) and _throttling_detector().is_throttling_error_from_context(_context(exc))


def is_transient(exc: BaseException) -> bool:
    """True for what botocore's standard mode retries: throttling, 5xx, connection and HTTP client errors."""
    if isinstance(exc, BotocoreConnectionError | HTTPClientError):
        return True
    if not isinstance(exc, ClientError):
        return False
    return is_throttling(exc) or standard.TransientRetryableChecker().is_retryable(_context(exc))


def never_sent(exc: BaseException) -> bool:
    """True when no connection was ever made (refused, unresolvable, connect timeout): nothing was sent."""
    return isinstance(exc, BotocoreConnectionError)


def is_conflict(exc: BaseException) -> bool:
    """AHI's ConflictException (the image set is LOCKED, or its metadata not consistent yet)."""
    return isinstance(exc, ClientError) and error_code(exc) == "ConflictException"


def is_not_consistent_yet(exc: BaseException) -> bool:
    """True for AHI's ConflictException "Requested ImageSet metadata is not consistent yet. Please retry"."""
    return is_conflict(exc) and NOT_CONSISTENT_YET in error_message(exc).lower()


def is_stale(exc: BaseException) -> bool:
    """True for AHI's answer to a stale ``latestVersionId`` (ResourceNotFoundException "... not the latest.")."""
    return (
        isinstance(exc, ClientError)
        and error_code(exc) == "ResourceNotFoundException"
        and STALE_TEXT in error_message(exc).lower()
    )


def describe(exc: BaseException) -> str:
    """``Code: message`` of a ClientError, else ``Class: message``."""
    if isinstance(exc, ClientError):
        return f"{error_code(exc)}: {error_message(exc)}"
    return f"{type(exc).__name__}: {exc}"


# --- our own waiting -------------------------------------------------------------------------------------------


def backoff_delay(retry: int, *, base_delay: float, max_delay: float, rng: Callable[[], float]) -> float:
    """Full-jitter delay before retry number ``retry`` (0 for the first retry)."""
    cap = min(max_delay, base_delay * 2.0**retry)
    return rng() * cap


def retry_call(
    fn: Callable[[], T],
    *,
    retryable: Callable[[BaseException], bool],
    max_attempts: int = 6,
    base_delay: float = 0.5,
    max_delay: float = 20.0,
    sleep: Callable[[float], object] = time.sleep,
    rng: Callable[[], float] = random.random,
    on_retry: Callable[[int, BaseException, float], object] | None = None,
) -> T:
    """Call ``fn()`` until it succeeds, waiting out the errors ``retryable`` accepts (and only those).

    Full-jitter exponential backoff between attempts; after ``max_attempts`` calls the last exception is raised
    unchanged. ``on_retry(attempt, exc, delay)`` is called before each sleep (for logging or counting).
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as exc:
            if not retryable(exc) or attempt >= max_attempts:
                raise
            delay = backoff_delay(attempt - 1, base_delay=base_delay, max_delay=max_delay, rng=rng)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            sleep(delay)
            attempt += 1


@dataclass(frozen=True)
class RetryPolicy:
    """How long we wait out AHI's ConflictException (LOCKED, "not consistent yet"): attempts, backoff bounds,
    and the (injectable) sleep and randomness. Throttling and 5xx are botocore's (``client_config``)."""

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 20.0
    sleep: Callable[[float], object] = field(default=time.sleep, repr=False)
    rng: Callable[[], float] = field(default=random.random, repr=False)

    @classmethod
    def coerce(cls, value: RetryPolicy | int | None) -> RetryPolicy:
        """A policy from a policy, a number of attempts (1 = no wait), or None (the defaults)."""
        if isinstance(value, RetryPolicy):
            return value
        if value is None:
            return cls()
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(max_attempts=value)
        raise TypeError(f"retries must be a RetryPolicy, an int or None, not {type(value).__name__}")

    def call(
        self,
        fn: Callable[[], T],
        *,
        retryable: Callable[[BaseException], bool],
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


DEFAULT_RETRIES = RetryPolicy()

#: The project's one token bucket under its earlier name (``curation.scale`` still imports it from here).
RateLimiter = TokenBucket
