"""curation.model.quotas: the documented quota table and the one token bucket, on a fake clock."""

from __future__ import annotations

import threading
from typing import Any

import botocore.session
import pytest

from curation.model.quotas import DOCUMENTED_QUOTAS, Action, Quota, QuotaSource, TokenBucket, documented_quota


def test_every_action_of_the_service_model_has_a_documented_quota() -> None:
    model = botocore.session.get_session().get_service_model("medical-imaging")
    assert set(model.operation_names) == {str(a) for a in Action} == set(DOCUMENTED_QUOTAS)


def test_the_current_page_figures() -> None:
    assert documented_quota("UpdateImageSetMetadata") == Quota(10, 40)
    assert documented_quota("StartDICOMImportJob") == Quota(40, 80)
    assert documented_quota("GetImageSetMetadata") == Quota(50, 100)
    assert documented_quota("GetImageSet") == Quota(25, 50)
    assert not documented_quota("CopyImageSet").revised
    assert all(q.source is QuotaSource.DOCUMENTED for q in DOCUMENTED_QUOTAS.values())
    with pytest.raises(KeyError, match="NotAnAction"):
        documented_quota("NotAnAction")
    with pytest.raises(TypeError):
        DOCUMENTED_QUOTAS["GetImageSet"] = Quota(1, 1)  # type: ignore[index]


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0.5)])
def test_invalid_quotas_and_buckets_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        Quota(rate, burst)
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_burst_is_free_then_tokens_arrive_at_the_rate(clock: Any) -> None:
    bucket = TokenBucket(10, burst=3, clock=clock, sleep=clock.sleep)
    assert [bucket.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert clock.sleeps == []
    assert bucket.acquire() == pytest.approx(0.1)
    assert bucket.acquire() == pytest.approx(0.1)
    assert clock.sleeps == pytest.approx([0.1, 0.1])


def test_idle_time_refills_up_to_burst_only(clock: Any) -> None:
    bucket = Quota(2, 4).bucket(clock=clock, sleep=clock.sleep)
    for _ in range(4):
        bucket.acquire()
    clock.now += 3600
    waits = [bucket.acquire() for _ in range(6)]
    assert waits[:4] == [0.0] * 4
    assert waits[4:] == pytest.approx([0.5, 0.5])


def test_partial_refill_shortens_the_wait(clock: Any) -> None:
    bucket = TokenBucket(4, burst=1, clock=clock, sleep=clock.sleep)
    bucket.acquire()
    clock.now += 0.125  # half a token
    assert bucket.acquire() == pytest.approx(0.125)


def test_concurrent_callers_are_spaced_exactly_by_the_rate(clock: Any) -> None:
    recorded: list[float] = []
    lock = threading.Lock()

    def sleep(seconds: float) -> None:  # the clock does not move: every caller reserves up front
        with lock:
            recorded.append(seconds)

    bucket = TokenBucket(50, burst=5, clock=clock, sleep=sleep)
    waits: list[float] = []

    def worker() -> None:
        for _ in range(10):
            w = bucket.acquire()
            with lock:
                waits.append(w)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == pytest.approx([0.0] * 5 + [k / 50 for k in range(1, 76)])
    assert sorted(recorded) == pytest.approx([k / 50 for k in range(1, 76)])


def test_unlimited_never_waits(clock: Any) -> None:
    bucket = TokenBucket(None, clock=clock, sleep=clock.sleep)
    assert all(bucket.acquire() == 0 for _ in range(1000))
    assert bucket.try_acquire() and bucket.unlimited
    assert clock.sleeps == []


def test_try_acquire_does_not_wait_or_overdraw(clock: Any) -> None:
    bucket = TokenBucket(1, burst=2, clock=clock, sleep=clock.sleep)
    assert bucket.try_acquire() and bucket.try_acquire()
    assert not bucket.try_acquire()
    assert bucket.available() == pytest.approx(0.0)
    clock.now += 1.0
    assert bucket.try_acquire()
    assert clock.sleeps == []


def test_cannot_take_more_than_the_bucket_holds() -> None:
    with pytest.raises(ValueError, match="bucket"):
        TokenBucket(1, burst=2).acquire(3)


def test_set_rate_keeps_earned_tokens_and_changes_the_pace(clock: Any) -> None:
    bucket = TokenBucket(1, burst=10, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        bucket.acquire()
    clock.now += 2.0  # two tokens earned at the old rate
    bucket.set_rate(4)
    assert bucket.available() == pytest.approx(2.0)
    bucket.acquire(), bucket.acquire()
    assert bucket.acquire() == pytest.approx(0.25)
    bucket.set_rate(4, burst=1)
    assert bucket.burst == 1 and bucket.available() <= 1
    bucket.set_rate(None)
    assert bucket.unlimited and bucket.acquire() == 0.0


def test_a_rate_change_keeps_waiting_callers_turns_and_empty_takes_the_burst(clock: Any) -> None:
    bucket = TokenBucket(10, burst=1, clock=clock, sleep=lambda s: None)
    bucket.reserve()
    assert bucket.reserve() == pytest.approx(0.1)  # one caller waits 0.1 s at 10/s: a debt of one token
    bucket.set_rate(1)
    assert bucket.available() == pytest.approx(-0.1)  # the debt clears at the same time, 0.1 s at 1/s
    clock.now += 0.1
    assert bucket.available() == pytest.approx(0.0)
    full = TokenBucket(5, burst=5, clock=clock)
    full.empty()
    assert full.available() == pytest.approx(0.0) and not full.try_acquire()
