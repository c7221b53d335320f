"""Fixtures of the run tests: botocore's standard-mode backoff made short, so that injected throttles are
retried by botocore (as against AWS) without the test sleeping for seconds; a fake clock."""

from __future__ import annotations

from typing import Any

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


# --- primary image sets (copy-and-promote procedures) -----------------------------------------------------------


def ct_series(directory: Any, count: int, *, study_uid: str | None = None, seed: str = "ct") -> list[Any]:
    """pydicom's CT_small.dcm written ``count`` times, each a series of its own (new Series and SOP UIDs made
    with ``generate_uid(entropy_srcs=...)``, so runs are reproducible), all in ``study_uid`` or each in its own."""
    from pathlib import Path

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    paths = []
    for number in range(count):
        dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        dataset.StudyInstanceUID = study_uid or generate_uid(entropy_srcs=[seed, "study", str(number)])
        dataset.SeriesInstanceUID = generate_uid(entropy_srcs=[seed, "series", str(number)])
        dataset.SOPInstanceUID = generate_uid(entropy_srcs=[seed, "sop", str(number)])
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        path = Path(directory) / f"{seed}-{number}.dcm"
        dataset.save_as(path)
        paths.append(path)
    return paths


@pytest.fixture
def served(local_store: Any) -> Any:
    """The fresh store served over HTTP and a boto3 client for it (botocore's standard retries, no host
    prefix): ``(store, endpoint, client)``."""
    from botocore.config import Config

    from curation.local.server import serving
    from tests.conftest import endpoint_client

    with serving(local_store) as endpoint:
        client = endpoint_client(endpoint, Config(retries={"mode": "standard", "total_max_attempts": 3}))
        yield local_store, endpoint, client
