"""Fixtures of the run tests: botocore's standard-mode backoff made short, so that injected throttles are
retried by botocore (as against AWS) without the test sleeping for seconds; a fake clock."""

from __future__ import annotations

import pytest
from botocore.retries import standard


@pytest.fixture
def fast_botocore_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's standard retry mode with a 10 ms throttling backoff scale (1 s by default)."""
    scales = dict(standard.ExponentialBackoff._DEFAULT_BACKOFF_CONFIG)
    scales.update(throttling_base_scale=0.01, non_throttling_base_scale=0.005)
    monkeypatch.setattr(standard.ExponentialBackoff, "_DEFAULT_BACKOFF_CONFIG", scales)


class FakeClock:
    """A clock that only moves when someone sleeps on it (or a test moves ``now``)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock (``clock()`` the time, ``clock.sleep`` moves it)."""
    return FakeClock()
