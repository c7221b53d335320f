"""The dispatcher between the wire and the store, with the knobs that make it behave like a busy AHI.

``Service.handle(operation_name, params)`` answers one operation with ``store.call``. Before the store is
touched it may add latency, answer ``ThrottlingException`` past AHI's per-action quotas (``quotas="ahi"``: the
one table in :mod:`curation.model.quotas`, optionally with an account's own figures and a ``quota_scale``),
or inject a fault (``fault_rate``: half ``InternalServerException``, half ``ThrottlingException``,
reproducible with ``seed``). Every knob is a plain attribute that tests may change while the service runs.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from curation.model.errors import AHIError
from curation.model.quotas import DOCUMENTED_QUOTAS, Quota, QuotaSource, TokenBucket, documented_quota

#: ``"none"``, ``"ahi"`` (AHI's documented per-action quotas, curation.model.quotas), or a mapping of actions
#: to the quotas this service enforces on top of the documented ones (an account with raised or lowered limits).
Quotas = Literal["none", "ahi"] | Mapping[str, Quota | tuple[float, float]]


class Backend(Protocol):
    """What the service dispatches to: :class:`curation.local.store.Store` or a test fake."""

    def call(self, operation_name: str, params: dict[str, Any]) -> dict[str, Any]: ...


class Service:
    """Answers operations from a store, with simulated latency, AHI quotas and injected faults.

    Knobs (attributes, changeable at run time): ``latency`` (seconds slept per call), ``quotas``
    (``"none"``, ``"ahi"``, or ``{action: Quota(rate, burst)}`` over the documented table; setting it refills
    every bucket), ``quota_scale`` (every enforced rate and burst multiplied by it, so a benchmark can run
    AHI's proportions in less time), ``fault_rate`` (fraction of calls answered
    with an injected fault). Throttling and faults are decided before the store is touched, so a refused
    call never changes it. ``calls`` counts the calls handled, by operation name (refused ones included).
    """

    def __init__(
        self,
        store: Backend,
        *,
        latency: float = 0.0,
        quotas: Quotas = "none",
        quota_scale: float = 1.0,
        fault_rate: float = 0.0,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.latency = float(latency)
        self.fault_rate = float(fault_rate)
        self._clock = clock
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._buckets: dict[str, TokenBucket] = {}
        self._enforced: dict[str, Quota] = {}
        self.calls: dict[str, int] = {}
        self._quota_scale = float(quota_scale)
        self.quotas = quotas

    @property
    def quotas(self) -> Quotas:
        """What is enforced: ``"none"``, ``"ahi"`` or the mapping given."""
        return self._quotas

    @quotas.setter
    def quotas(self, value: Quotas) -> None:
        enforced = _enforced(value)
        with self._lock:
            self._quotas = value
            scale = self._quota_scale
            self._enforced = {
                name: Quota(quota.rate * scale, max(1.0, quota.burst * scale), QuotaSource.GIVEN)
                for name, quota in enforced.items()
            }
            self._buckets = {name: quota.bucket(clock=self._clock) for name, quota in self._enforced.items()}

    @property
    def quota_scale(self) -> float:
        """The factor every enforced rate and burst is multiplied by (1: AHI's own figures)."""
        return self._quota_scale

    @quota_scale.setter
    def quota_scale(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"quota_scale must be positive, not {value!r}")
        self._quota_scale = float(value)
        self.quotas = self._quotas

    def quota(self, operation_name: str) -> Quota | None:
        """The quota enforced on ``operation_name`` (scaled), or None when it is not limited."""
        return self._enforced.get(operation_name)

    def handle(self, operation_name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Answer one operation (botocore member names in and out); raise AHIError as AHI would."""
        with self._lock:
            self.calls[operation_name] = self.calls.get(operation_name, 0) + 1
            draw, coin = self._random.random(), self._random.random()
            bucket = self._buckets.get(operation_name)
        if self.latency > 0:
            time.sleep(self.latency)
        if draw < self.fault_rate:
            if coin < 0.5:
                raise AHIError("InternalServerException", "Internal server error (simulated fault)")
            raise AHIError("ThrottlingException", "Rate exceeded (simulated fault)")
        if bucket is not None and not bucket.try_acquire():
            raise AHIError(
                "ThrottlingException",
                f"Rate exceeded: {operation_name} is limited to {bucket.rate:g} requests per second "
                f"(burst {bucket.burst:g})",
            )
        return self.store.call(operation_name, params)


def _enforced(value: Quotas) -> dict[str, Quota]:
    """The per-action quotas ``value`` asks for (the documented table, with a mapping's overrides)."""
    if isinstance(value, str):
        if value not in ("none", "ahi"):
            raise ValueError(f"quotas must be 'none', 'ahi' or a mapping of actions to quotas, not {value!r}")
        return {} if value == "none" else {str(name): quota for name, quota in DOCUMENTED_QUOTAS.items()}
    enforced = {str(name): quota for name, quota in DOCUMENTED_QUOTAS.items()}
    for name, quota in value.items():
        documented_quota(name)  # a KeyError naming an unknown action
        enforced[name] = quota if isinstance(quota, Quota) else Quota(*quota, source=QuotaSource.GIVEN)
    return enforced
