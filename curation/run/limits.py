"""Client-side limits per HealthImaging action: start at the account's quota, adapt to what the service answers.

Each action gets an ``AdaptiveLimiter``: a ``curation.model.quotas.TokenBucket`` whose rate starts at the
account's applied quota (``account_quotas``, read through the Service Quotas API when the caller may) or the
documented default (``curation.model.quotas.DOCUMENTED_QUOTAS``), then follows the service in the spirit of
botocore's adaptive retry mode (``botocore.retries.adaptive``): while no ThrottlingException comes back the rate
rises along a cubic curve (botocore's ``CubicCalculator``: flat near the last rate that was throttled, then
probing above it), and each ThrottlingException sets the rate to ``beta`` times the rate the service was
accepting. Throttles of requests sent before the last decrease are ignored, so one burst of refusals is one
decrease. A rate the caller gives (``rate=10``) is a ceiling: the limiter never exceeds it, and still backs
off below it when throttled.

``Limiters`` holds one limiter per action for a run and makes the calls: ``call(client, action, fn)``
takes the first attempt's token itself (waiting on a cancel signal, so a cancelled run sends nothing more) and
registers two hooks on the client, ``before-send`` (every retry botocore makes takes a token too) and
``needs-retry`` (every answer feeds the limiter: botocore's own throttling detector decides what is a
throttle). The hooks act only inside ``call`` on the calling thread; the client is otherwise untouched.
``Attempts`` tells the caller how each attempt of its call went (sent, throttled, never connected, or with an
outcome that may have changed something).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from curation.model.quotas import DOCUMENTED_QUOTAS, Quota, QuotaSource, TokenBucket, documented_quota
from curation.run.retries import throttling_detector

T = TypeVar("T")
logger = logging.getLogger(__name__)

#: A limit as a caller gives it: requests per second, None for no limit, "auto" for the quota's (adapting).
Rate = float | Literal["auto"] | None
AUTO: Literal["auto"] = "auto"
SERVICE_CODE = "medical-imaging"
#: Multiplicative decrease on a throttle (botocore's adaptive mode uses 0.7; we keep closer to the limit).
BETA = 0.8
#: Cubic growth, relative to the last throttled rate, per second cubed.
GROWTH = 0.02
MIN_RATE = 0.05
_HOOK_SEND = "curation-limits-before-send"
_HOOK_ANSWER = "curation-limits-needs-retry"
_EVENT_SUFFIX = "medical-imaging"


class CancelSignal(Protocol):
    """What stops a run between requests: a ``threading.Event`` or anything with ``is_set`` and ``wait``."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class Cancelled(Exception):
    """The run was cancelled before this call was sent: nothing went out."""


@dataclass
class Attempts:
    """How the attempts of one call went (botocore's retries included), counted by the client hooks."""

    sent: int = 0  #: attempts handed to the transport
    throttled: int = 0  #: answered ThrottlingException (nothing changed)
    unreachable: int = 0  #: no connection was made (nothing reached the service)
    maybe_applied: int = 0  #: answered with success or 5xx, or lost in transit: may have changed something

    @property
    def nothing_reached(self) -> bool:
        """True when no attempt could have changed anything (all throttled, refused or unreachable)."""
        return self.maybe_applied == 0


class _Cubic:
    """Rate along a cubic after a throttle at ``w_max`` (botocore's ``CubicCalculator``, growth relative)."""

    def __init__(self, w_max: float, now: float, *, beta: float = BETA, growth: float = GROWTH) -> None:
        self.beta, self.growth = beta, growth
        self.reset(w_max, now, started=True)

    def reset(self, w_max: float, now: float, *, started: bool = False) -> float:
        self.w_max = w_max
        self.k = ((1 - self.beta) / self.growth) ** (1 / 3)
        # at the start the rate is w_max itself (no throttle seen yet): the curve is at its plateau
        self.last_fail = now - self.k if started else now
        return self.rate(now)

    def rate(self, now: float) -> float:
        return self.w_max * (1 + self.growth * (now - self.last_fail - self.k) ** 3)


class AdaptiveLimiter:
    """One action's client-side limit: a token bucket whose rate adapts to the service (see the module doc).

    ``quota`` is where it starts; ``ceiling`` the most it may reach (None: no ceiling); ``adaptive=False``
    keeps the quota's rate fixed. A quota rate of ``inf`` never limits and never adapts.
    """

    def __init__(
        self,
        quota: Quota | None,
        *,
        adaptive: bool = True,
        ceiling: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.quota = quota
        self.clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        start = math.inf if quota is None else quota.rate
        self.ceiling = math.inf if ceiling is None else float(ceiling)
        self.adaptive = adaptive and not math.isinf(start)
        self.throttles = 0
        self.decreases = 0
        #: (time, rate) after each decrease: how the limiter found the service's limit
        self.history: list[tuple[float, float]] = []
        self._bucket = TokenBucket(None if math.isinf(start) else start, self._burst(start), clock=clock, sleep=sleep)
        self._cubic = _Cubic(start, clock())
        self._start = start
        self._born = clock()
        self._last_decrease = -math.inf
        self._sends: deque[float] = deque()
        self._successes: deque[float] = deque()

    def __repr__(self) -> str:
        return f"AdaptiveLimiter(rate={self.rate:.4g}, throttles={self.throttles}, adaptive={self.adaptive})"

    def _burst(self, rate: float) -> float:
        """The quota's burst, scaled with the rate as it adapts; one second's worth once the service has
        throttled (its real burst is unknown then)."""
        if self.quota is None or math.isinf(rate):
            return 1.0
        if self.decreases:
            return max(1.0, min(rate, self.quota.burst * rate / self.quota.rate))
        return max(1.0, self.quota.burst * rate / self.quota.rate)

    @property
    def rate(self) -> float:
        """The current limit in requests per second (``inf``: no limit)."""
        return self._bucket.rate

    def _window(self) -> float:
        return max(3.0, 10.0 / max(self.rate, MIN_RATE)) if not math.isinf(self.rate) else 3.0

    def _observed(self, times: deque[float], now: float, window: float) -> float | None:
        """Events per second over the last ``window`` seconds (or since the limiter began, if sooner)."""
        while times and times[0] < now - window:
            times.popleft()
        span = min(window, now - self._born)
        return len(times) / span if len(times) >= 3 and span > 0.1 else None

    def acquire(self, cancel: CancelSignal | None = None) -> bool:
        """Wait for a token (False, and nothing sent, when ``cancel`` is set first)."""
        if cancel is not None and cancel.is_set():
            return False
        wait = self._bucket.reserve()
        if wait > 0:
            if cancel is not None:
                if cancel.wait(wait):
                    return False
            else:
                self._sleep(wait)
        with self._lock:
            self._sends.append(self.clock())
        return True

    def _set(self, rate: float) -> None:
        rate = max(MIN_RATE, min(rate, self.ceiling))
        if abs(rate - self._bucket.rate) > 1e-9:
            self._bucket.set_rate(rate, self._burst(rate))

    def record_success(self, asked_at: float) -> None:
        """An answer that was not a throttle: the rate may rise (capped at twice the rate we really send)."""
        if not self.adaptive:
            return
        with self._lock:
            now = self.clock()
            self._successes.append(now)
            sending = self._observed(self._sends, now, self._window())
            cap = max(self._start, 2.0 * sending) if sending is not None else self._start
            self._set(min(self._cubic.rate(now), max(cap, self.rate)))

    def record_throttle(self, asked_at: float) -> None:
        """A ThrottlingException for a request whose token was asked for at ``asked_at``: back off to ``beta``
        times the rate the service was accepting, unless it was paced before the last decrease (the same
        congestion, already answered)."""
        with self._lock:
            self.throttles += 1
            if not self.adaptive or asked_at < self._last_decrease:
                return
            now = self.clock()
            accepted = self._observed(self._successes, now, self._window())
            current = min(self.rate, accepted) if accepted is not None else self.rate
            self.decreases += 1
            self._set(self._cubic.reset(current, now))
            self._bucket.empty()  # no burst after a throttle: the next request waits for a token at the new rate
            self._last_decrease = now
            self.history.append((now, self.rate))


# --- the limiters of a run, and the client hooks ------------------------------------------------------------


@dataclass
class _Call:
    limiter: AdaptiveLimiter
    attempts: Attempts
    #: when the token of the attempt under way was asked for (its place in the limiter's pace)
    asked_at: float = field(default=-math.inf)
    prepaid: bool = True


_CURRENT = threading.local()


def _before_send(**_: Any) -> None:
    call: _Call | None = getattr(_CURRENT, "call", None)
    if call is None:
        return
    if call.prepaid:
        call.prepaid = False
    else:  # a retry botocore makes: it takes a token like any other request
        call.asked_at = call.limiter.clock()
        call.limiter.acquire()
    call.attempts.sent += 1


def _needs_retry(**kwargs: Any) -> None:
    call: _Call | None = getattr(_CURRENT, "call", None)
    if call is None:
        return
    caught = kwargs.get("caught_exception")
    if caught is not None:
        if isinstance(caught, BotocoreConnectionError):
            call.attempts.unreachable += 1
        else:
            call.attempts.maybe_applied += 1
        return
    status = kwargs["response"][0].status_code
    if status < 400:  # an answer, not a refusal: no throttle to look for
        call.attempts.maybe_applied += 1
        call.limiter.record_success(call.asked_at)
        return
    if throttling_detector().is_throttling_error(**kwargs):
        call.attempts.throttled += 1
        call.limiter.record_throttle(call.asked_at)
        return
    if status >= 500:
        call.attempts.maybe_applied += 1


_ATTACHED: weakref.WeakSet[Any] = weakref.WeakSet()
_ATTACH_LOCK = threading.Lock()


def attach(client: Any) -> None:
    """Register the limiter hooks on ``client`` (once; they act only inside ``Limiters.call``)."""
    events = getattr(getattr(client, "meta", None), "events", None)
    if events is None:  # not a botocore client (a test double): the first attempt's token is all we take
        return
    if events in _ATTACHED:
        return
    with _ATTACH_LOCK:
        events.register_first(f"before-send.{_EVENT_SUFFIX}", _before_send, unique_id=_HOOK_SEND)
        events.register(f"needs-retry.{_EVENT_SUFFIX}", _needs_retry, unique_id=_HOOK_ANSWER)
        _ATTACHED.add(events)


class Limiters:
    """The per-action limiters of one run (shared by all its workers), and the one way calls are made.

    ``quotas`` are the starting quotas by action (the account's, from ``account_quotas``; the documented
    table fills the rest); ``rates`` fixes a ceiling (a number), no limit (None) or the quota's (``"auto"``)
    per action; ``adaptive=False`` keeps every rate fixed.
    """

    def __init__(
        self,
        quotas: Mapping[str, Quota | tuple[float, float]] | None = None,
        *,
        rates: Mapping[str, Rate] | None = None,
        bursts: Mapping[str, float] | None = None,
        adaptive: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        given = {
            str(k): v if isinstance(v, Quota) else Quota(*v, source=QuotaSource.GIVEN)
            for k, v in (quotas or {}).items()
        }  # (rate, burst) pairs too: apply(..., quotas={"CopyImageSet": (1, 2)})
        self.quotas = {**DOCUMENTED_QUOTAS, **given}
        self.rates = dict(rates or {})
        self.bursts = dict(bursts or {})
        self.adaptive = adaptive
        self.clock, self.sleep = clock, sleep
        self._limiters: dict[str, AdaptiveLimiter] = {}
        self._lock = threading.Lock()

    def _make(self, action: str) -> AdaptiveLimiter:
        quota = self.quotas.get(action) or documented_quota(action)
        rate = self.rates.get(action, AUTO)
        if rate is None:
            return AdaptiveLimiter(None, clock=self.clock, sleep=self.sleep)
        ceiling = None
        if rate != AUTO:
            ceiling = float(rate)
            quota = Quota(ceiling, self.bursts.get(action, max(1.0, min(quota.burst, ceiling))), QuotaSource.GIVEN)
        return AdaptiveLimiter(quota, adaptive=self.adaptive, ceiling=ceiling, clock=self.clock, sleep=self.sleep)

    def __getitem__(self, action: str) -> AdaptiveLimiter:
        with self._lock:
            if action not in self._limiters:
                self._limiters[action] = self._make(str(action))
            return self._limiters[action]

    def items(self) -> Iterable[tuple[str, AdaptiveLimiter]]:
        with self._lock:
            return list(self._limiters.items())

    def call(
        self,
        client: Any,
        action: str,
        fn: Callable[[], T],
        *,
        cancel: CancelSignal | None = None,
        attempts: Attempts | None = None,
    ) -> T:
        """``fn()`` (one client call of ``action``, or one paginator page) under the action's limiter.

        Raises ``Cancelled`` (nothing sent) when ``cancel`` is set before the token came. ``attempts`` (if
        given) counts how the attempts went; botocore's own retries each take a token too.
        """
        limiter = self[action]
        asked_at = limiter.clock()
        if not limiter.acquire(cancel):
            raise Cancelled(f"cancelled before {action} was sent")
        attach(client)
        previous = getattr(_CURRENT, "call", None)
        _CURRENT.call = _Call(limiter, attempts if attempts is not None else Attempts(), asked_at)
        try:
            return fn()
        finally:
            _CURRENT.call = previous


# --- the account's applied quotas -------------------------------------------------------------------------


_PER_SECOND = {"MICROSECOND": 1e-6, "MILLISECOND": 1e-3, "SECOND": 1.0, "MINUTE": 60.0, "HOUR": 3600.0}


def _action_of(name: str) -> str | None:
    # the longest action name that the quota's name holds as a word ("GetImageSet" is not "GetImageSetMetadata")
    for action in sorted(DOCUMENTED_QUOTAS, key=len, reverse=True):
        if re.search(rf"(?<![A-Za-z]){re.escape(action)}(?![A-Za-z])", name):
            return action
    return None


def _per_second(quota: Mapping[str, Any]) -> float | None:
    value = quota.get("Value")
    if not isinstance(value, int | float) or value <= 0:
        return None
    period = quota.get("Period") or {}
    seconds = _PER_SECOND.get(str(period.get("PeriodUnit", "SECOND")), 1.0) * float(period.get("PeriodValue", 1))
    return float(value) / seconds


def account_quotas(service_quotas: Any, *, service_code: str = SERVICE_CODE) -> dict[str, Quota]:
    """The account's applied HealthImaging quotas by action, from a boto3 ``service-quotas`` client.

    ListServiceQuotas (paginated) for ``service_code``; a quota whose name holds an action's name is that
    action's rate, or its burst when the name says "burst". Actions it does not list keep the documented
    default. When the caller may not read Service Quotas (no credentials, AccessDenied, no endpoint), the
    answer is empty and the documented defaults apply: this never fails an apply.
    """
    rates: dict[str, float] = {}
    bursts: dict[str, float] = {}
    try:
        for page in service_quotas.get_paginator("list_service_quotas").paginate(ServiceCode=service_code):
            for quota in page.get("Quotas", []):
                action, value = _action_of(str(quota.get("QuotaName", ""))), _per_second(quota)
                if action is None or value is None:
                    continue
                target = bursts if "burst" in str(quota.get("QuotaName", "")).lower() else rates
                target[action] = float(quota["Value"]) if target is bursts else value
    except (ClientError, BotoCoreError) as exc:
        logger.info("Service Quotas not readable (%s): using the documented quotas", exc)
        return {}
    found: dict[str, Quota] = {}
    for action in set(rates) | set(bursts):
        documented = documented_quota(action)
        rate = rates.get(action, documented.rate)
        burst = bursts.get(action, max(documented.burst, min(rate, documented.burst * rate / documented.rate)))
        found[action] = Quota(rate, max(1.0, burst), QuotaSource.ACCOUNT)
    return found
