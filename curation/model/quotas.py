"""AHI's per-action throttling quotas, and the token bucket that keeps to them (clients) or enforces them (service).

HealthImaging throttles every API action of an account separately (a rate in transactions per second and a
burst) and answers ``ThrottlingException`` past it. The limits are adjustable per account: the table below is
the documented default, a starting point that ``curation.run.limits`` replaces with the account's applied
quotas (Service Quotas) when it can read them, and adapts to the ThrottlingExceptions it meets.

Source of every figure: the HealthImaging Developer Guide, "AWS HealthImaging throttling limits"
(:data:`THROTTLING_LIMITS_URL`), in its current Markdown copy (``throttling-limits.md``), which raised
UpdateImageSetMetadata from 0.25 tps (burst 1) to 10 tps (burst 40) and StartDICOMImportJob from 1 tps
(burst 2) to 40 tps (burst 80). The stored copy of that page we could read ends after
UpdateImageSetMetadata: CopyImageSet, DeleteImageSet and the tagging actions keep the figures of the
previous copy of the same page (marked ``revised=False``). Check an account's real quotas with Service
Quotas, or let the adaptive limiter find them.

``TokenBucket`` is the one token bucket of the project: ``acquire`` blocks until a token is available
(clients), ``try_acquire`` takes one only if it is there now (the embedded service answering
ThrottlingException), ``set_rate`` lets an adaptive limiter move the rate. Clock and sleep are injectable, so
tests never depend on wall time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "DOCUMENTED_QUOTAS",
    "THROTTLING_LIMITS_URL",
    "Action",
    "Quota",
    "QuotaSource",
    "TokenBucket",
    "documented_quota",
]

THROTTLING_LIMITS_URL = "https://docs.aws.amazon.com/healthimaging/latest/devguide/throttling-limits.html"


class Action(StrEnum):
    """The HealthImaging API actions (botocore's operation names for ``medical-imaging``)."""

    CREATE_DATASTORE = "CreateDatastore"
    GET_DATASTORE = "GetDatastore"
    LIST_DATASTORES = "ListDatastores"
    DELETE_DATASTORE = "DeleteDatastore"
    START_DICOM_IMPORT_JOB = "StartDICOMImportJob"
    GET_DICOM_IMPORT_JOB = "GetDICOMImportJob"
    LIST_DICOM_IMPORT_JOBS = "ListDICOMImportJobs"
    SEARCH_IMAGE_SETS = "SearchImageSets"
    GET_IMAGE_SET = "GetImageSet"
    GET_IMAGE_SET_METADATA = "GetImageSetMetadata"
    GET_IMAGE_FRAME = "GetImageFrame"
    LIST_IMAGE_SET_VERSIONS = "ListImageSetVersions"
    UPDATE_IMAGE_SET_METADATA = "UpdateImageSetMetadata"
    COPY_IMAGE_SET = "CopyImageSet"
    DELETE_IMAGE_SET = "DeleteImageSet"
    TAG_RESOURCE = "TagResource"
    LIST_TAGS_FOR_RESOURCE = "ListTagsForResource"
    UNTAG_RESOURCE = "UntagResource"


class QuotaSource(StrEnum):
    """Where a quota figure comes from."""

    DOCUMENTED = "documented"  # the Developer Guide's default (this module's table)
    ACCOUNT = "account"  # the account's applied quota, read through Service Quotas
    GIVEN = "given"  # set by the caller (``rate=``, a quota knob)


@dataclass(frozen=True)
class Quota:
    """One action's limit: ``rate`` requests per second, ``burst`` requests at once.

    ``revised`` is False for a documented figure that the current copy of the throttling page we could read
    does not show (the previous copy's figure is kept).
    """

    rate: float
    burst: float
    source: QuotaSource = QuotaSource.DOCUMENTED
    revised: bool = True

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"a quota's rate must be positive, not {self.rate!r}")
        if not self.burst >= 1:
            raise ValueError(f"a quota's burst must be at least 1, not {self.burst!r}")

    def bucket(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> TokenBucket:
        """A full token bucket at this quota."""
        return TokenBucket(self.rate, self.burst, clock=clock, sleep=sleep)


def _documented(rate: float, burst: float, *, revised: bool = True) -> Quota:
    return Quota(rate, burst, QuotaSource.DOCUMENTED, revised)


#: The documented default quota of every action (see the module docstring for the source of each figure).
DOCUMENTED_QUOTAS: Mapping[str, Quota] = MappingProxyType(
    {
        # current page (throttling-limits.md), unchanged from the previous copy
        Action.CREATE_DATASTORE: _documented(0.085, 1),
        Action.GET_DATASTORE: _documented(10, 20),
        Action.LIST_DATASTORES: _documented(5, 10),
        Action.DELETE_DATASTORE: _documented(0.085, 1),
        # current page: 40 tps, burst 80 (the previous copy said 1 tps, burst 2)
        Action.START_DICOM_IMPORT_JOB: _documented(40, 80),
        Action.GET_DICOM_IMPORT_JOB: _documented(25, 50),
        Action.LIST_DICOM_IMPORT_JOBS: _documented(10, 20),
        Action.SEARCH_IMAGE_SETS: _documented(25, 50),
        Action.GET_IMAGE_SET: _documented(25, 50),
        Action.GET_IMAGE_SET_METADATA: _documented(50, 100),
        Action.GET_IMAGE_FRAME: _documented(1000, 2000),
        Action.LIST_IMAGE_SET_VERSIONS: _documented(25, 50),
        # current page: 10 tps, burst 40 (the previous copy said 0.25 tps, burst 1)
        Action.UPDATE_IMAGE_SET_METADATA: _documented(10, 40),
        # not in the part of the current page we could read: the previous copy's figures
        Action.COPY_IMAGE_SET: _documented(0.25, 1, revised=False),
        Action.DELETE_IMAGE_SET: _documented(0.25, 1, revised=False),
        Action.TAG_RESOURCE: _documented(10, 20, revised=False),
        Action.LIST_TAGS_FOR_RESOURCE: _documented(10, 20, revised=False),
        Action.UNTAG_RESOURCE: _documented(10, 20, revised=False),
    }
)


def documented_quota(action: str) -> Quota:
    """The documented default quota of ``action`` (a botocore operation name); KeyError names the action."""
    try:
        return DOCUMENTED_QUOTAS[Action(action)]
    except ValueError:
        raise KeyError(f"{action!r} is not a HealthImaging action") from None


class TokenBucket:
    """A thread-safe token bucket: ``rate`` tokens per second refill continuously, up to ``burst``; starts full.

    ``acquire()`` blocks until the tokens are available. A caller reserves its tokens under the lock (the
    bucket may go negative) and sleeps outside it, so waiting threads are served in arrival order at exactly
    ``rate`` and never hold the lock while sleeping. ``try_acquire()`` never waits and never overdraws. A rate
    of ``None`` (or ``inf``) never limits.
    """

    def __init__(
        self,
        rate: float | None,
        burst: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self._rate, self._burst = _checked(rate, burst)
        self._tokens = self._burst
        self._updated = clock()

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self._rate:g}, burst={self._burst:g})"

    @property
    def rate(self) -> float:
        """Tokens per second (``inf`` when unlimited)."""
        return self._rate

    @property
    def burst(self) -> float:
        """The most tokens the bucket holds."""
        return self._burst

    @property
    def unlimited(self) -> bool:
        return math.isinf(self._rate)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._updated = now

    def available(self) -> float:
        """The tokens in the bucket now (negative while callers wait for reserved ones)."""
        if self.unlimited:
            return math.inf
        with self._lock:
            self._refill(self._clock())
            return self._tokens

    def set_rate(self, rate: float | None, burst: float | None = None) -> None:
        """Change the rate (and burst): tokens earned so far are kept, at most the new burst; callers already
        waiting keep their turn (a debt of reserved tokens is rescaled, so it clears when it would have)."""
        with self._lock:
            old = self._rate
            if not self.unlimited:
                self._refill(self._clock())
            self._rate, self._burst = _checked(rate, self._burst if burst is None else burst)
            if self.unlimited or math.isinf(old):
                self._tokens = self._burst
            elif self._tokens < 0:
                self._tokens *= self._rate / old
            else:
                self._tokens = min(self._tokens, self._burst)
            self._updated = self._clock()

    def empty(self) -> None:
        """Take every token there is now (an adaptive limiter, told to slow down, sends no more burst)."""
        if self.unlimited:
            return
        with self._lock:
            self._refill(self._clock())
            self._tokens = min(self._tokens, 0.0)

    def reserve(self, tokens: float = 1.0) -> float:
        """Take ``tokens`` now and return how many seconds the caller must wait before using them."""
        if self.unlimited:
            return 0.0
        if tokens > self._burst:
            raise ValueError(f"cannot take {tokens:g} tokens from a bucket of {self._burst:g}")
        with self._lock:
            self._refill(self._clock())
            self._tokens -= tokens
            return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    def acquire(self, tokens: float = 1.0) -> float:
        """Block until ``tokens`` are available; return the seconds waited."""
        wait = self.reserve(tokens)
        if wait > 0:
            self._sleep(wait)
        return wait

    def try_acquire(self, tokens: float = 1.0) -> bool:
        """Take ``tokens`` if they are available right now (True), else leave the bucket as it is (False)."""
        if self.unlimited:
            return True
        with self._lock:
            self._refill(self._clock())
            if self._tokens >= tokens:
                self._tokens -= tokens
                return True
            return False


def _checked(rate: float | None, burst: float) -> tuple[float, float]:
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be positive (or None for no limit), not {rate!r}")
    if not burst >= 1:
        raise ValueError(f"burst must be at least 1, not {burst!r}")
    return (math.inf if rate is None else float(rate)), float(burst)
