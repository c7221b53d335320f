"""The dispatcher between the wire and the store, with the knobs that make it behave like a busy AHI.

``Service.handle(operation_name, params)`` answers one operation with ``store.call``. Before the store is
touched it may add latency, answer ``ThrottlingException`` past AHI's per-action quotas (``quotas="ahi"``),
or inject a fault (``fault_rate``: half ``InternalServerException``, half ``ThrottlingException``,
reproducible with ``seed``). Every knob is a plain attribute that tests may change while the service runs.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from curation.model.errors import AHIError

Quotas = Literal["none", "ahi"]

#: AHI's default per-action quotas (requests per second, burst), from the HealthImaging "Throttling limits"
#: page (AHI.md §4). The service model does not carry them, so this one table is written by hand.
AHI_QUOTAS: dict[str, tuple[float, int]] = {
    "UpdateImageSetMetadata": (0.25, 1),
    "CopyImageSet": (0.25, 1),
    "DeleteImageSet": (0.25, 1),
    "GetImageSetMetadata": (50.0, 100),
    "SearchImageSets": (25.0, 50),
    "ListImageSetVersions": (25.0, 50),
    "GetImageSet": (25.0, 50),
    "GetImageFrame": (1000.0, 2000),
}


class Backend(Protocol):
    """What the service dispatches to: :class:`curation.local.store.Store` or a test fake."""

    def call(self, operation_name: str, params: dict[str, Any]) -> dict[str, Any]: ...


@dataclass
class TokenBucket:
    """A thread-safe token bucket: ``rate`` tokens per second up to ``burst``, starting full."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._tokens = float(self.burst)
        self._stamp = self.clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Take one token if there is one (True), else leave the bucket as it is (False)."""
        with self._lock:
            now = self.clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class Service:
    """Answers operations from a store, with simulated latency, AHI quotas and injected faults.

    Knobs (attributes, changeable at run time): ``latency`` (seconds slept per call), ``quotas``
    (``"none"`` or ``"ahi"``; setting it refills every bucket), ``fault_rate`` (fraction of calls answered
    with an injected fault). Throttling and faults are decided before the store is touched, so a refused
    call never changes it. ``calls`` counts the calls handled, by operation name (refused ones included).
    """

    def __init__(
        self,
        store: Backend,
        *,
        latency: float = 0.0,
        quotas: Quotas = "none",
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
        self.calls: dict[str, int] = {}
        self.quotas = quotas

    @property
    def quotas(self) -> Quotas:
        """``"ahi"`` when AHI's per-action quotas are enforced, else ``"none"``."""
        return self._quotas

    @quotas.setter
    def quotas(self, value: Quotas) -> None:
        if value not in ("none", "ahi"):
            raise ValueError(f"quotas must be 'none' or 'ahi', not {value!r}")
        with self._lock:
            self._quotas = value
            self._buckets = {name: TokenBucket(rate, burst, self._clock) for name, (rate, burst) in AHI_QUOTAS.items()}

    def handle(self, operation_name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Answer one operation (botocore member names in and out); raise AHIError as AHI would."""
        with self._lock:
            self.calls[operation_name] = self.calls.get(operation_name, 0) + 1
            draw, coin = self._random.random(), self._random.random()
            bucket = self._buckets.get(operation_name) if self._quotas == "ahi" else None
        if self.latency > 0:
            time.sleep(self.latency)
        if draw < self.fault_rate:
            if coin < 0.5:
                raise AHIError("InternalServerException", "Internal server error (simulated fault)")
            raise AHIError("ThrottlingException", "Rate exceeded (simulated fault)")
        if bucket is not None and not bucket.take():
            rate, burst = AHI_QUOTAS[operation_name]
            raise AHIError(
                "ThrottlingException",
                f"Rate exceeded: {operation_name} is limited to {rate:g} requests per second (burst {burst})",
            )
        return self.store.call(operation_name, params)
