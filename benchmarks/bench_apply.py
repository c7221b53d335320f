"""Apply at the service's real limits: a ceiling it keeps, and a quota it does not know that it finds.

Both parts apply real plans (fetch, a pandas edit of the Snapshot, ``curation.plan``) with ``curation.apply``,
journaled, against the embedded service in this process; every UpdateImageSetMetadata goes through botocore's
standard retry mode, as against AWS.

1. Ceiling: ``1000 * scale`` copies of the one-instance reference CT, three changes per image set (two Study
   level, one instance level: one request each), applied with ``rate=50`` (no quota on the service). The
   achieved rate is updates over the wall time of the whole apply (journal fsyncs and polling included),
   against the ceiling; and requests sent against the fewest possible (one per image set).
2. Unknown quota: the service answers ThrottlingException past a per-action quota the client is not told
   (a quota knob: a ``curation.model.quotas.TokenBucket`` in front of the store), one above and one below the
   documented 10 per second the client starts from. The client runs with ``rate="auto"``: it starts at the
   documented quota and adapts. Reported per quota: the accepted update rate over the second half of the run
   against the quota (goal >= 0.9, and never above it: the service enforces it), the seconds until a 5-second
   window first reached 90% of the quota (goal <= 60), and the share of attempts the service throttled.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks import Measurement
from benchmarks.bench_fetch import REFERENCE, renumbered_copies

FULL_SIZE = 1000
RATE = 50.0
#: the quotas the service enforces and the client does not know (requests per second, burst)
UNKNOWN_QUOTAS = ((25.0, 25.0), (6.0, 6.0))
FULL_SECONDS = 60.0
WINDOW = 5.0


class QuotaKnob:
    """A backend that enforces ``rate``/``burst`` on UpdateImageSetMetadata in front of ``store`` and records
    when each update was accepted or throttled (what a service with that account quota does)."""

    def __init__(self, store: Any, rate: float, burst: float) -> None:
        from curation.model.quotas import TokenBucket

        self.store = store
        self.bucket = TokenBucket(rate, burst)
        self.accepted: list[float] = []
        self.throttled: list[float] = []
        self._lock = threading.Lock()

    def call(self, operation_name: str, params: dict[str, Any]) -> dict[str, Any]:
        from curation.model.errors import AHIError

        if operation_name == "UpdateImageSetMetadata":
            now = time.perf_counter()
            if not self.bucket.try_acquire():
                with self._lock:
                    self.throttled.append(now)
                raise AHIError("ThrottlingException", "Rate exceeded")
            with self._lock:
                self.accepted.append(now)
        return self.store.call(operation_name, params)


def _plan_for(store: Any, client: Any, datastore_id: str, *, instance_level: bool) -> tuple[Any, int]:
    from curation.curate.differ import diff
    from curation.curate.planner import plan
    from curation.run.fetching import fetch

    snapshot = fetch(client, datastore_id, rate=None, max_workers=8, progress=False)
    studies = snapshot.studies.copy()
    studies["StudyDescription"] = "CT CHEST"
    studies["AccessionNumber"] = [f"ACC{n:06d}" for n in range(len(studies))]
    frames = [studies]
    if instance_level:
        instances = snapshot.instances.copy()
        instances["ImageComments"] = "reviewed"
        frames.append(instances)
    changes = diff(snapshot, frames)
    assert changes.problems.empty, changes.problems.head()
    return plan(changes), len(changes)


def _store(directory: str, count: int) -> tuple[Any, str]:
    from curation.local.store import Store
    from curation.model.document import read_document

    store = Store(Path(directory) / "store")
    report = store.import_documents(renumbered_copies(read_document(str(REFERENCE)), count))
    assert not report.failures, report.failures[:3]
    return store, report.datastore_id


def _ceiling(scale: float) -> Iterable[Measurement]:
    import curation.local
    from curation.run.applying import apply
    from curation.run.options import PollPolicy
    from curation.run.retries import client_config

    count = max(20, round(FULL_SIZE * scale))
    with tempfile.TemporaryDirectory(prefix="bench-apply-") as directory:
        store, datastore_id = _store(directory, count)
        client = curation.local.client(store, config=client_config())
        update_plan, changes = _plan_for(store, client, datastore_id, instance_level=True)
        start = time.perf_counter()
        result = apply(
            update_plan,
            client,
            Path(directory) / "journal.jsonl",
            rate=RATE,
            burst=1,
            max_workers=4,
            progress=False,
            control_rate=None,
            poll=PollPolicy(initial=0.01),
        )
        elapsed = time.perf_counter() - start
        assert (result["status"] == "applied").all(), result[result["status"] != "applied"].head()
        sent = client.meta.local_service.calls["UpdateImageSetMetadata"]
        yield Measurement(
            name=f"apply {count} image sets ({changes} changes) under a {RATE:g}/s ceiling",
            ours=sent / elapsed,
            baseline=RATE,
            unit="updates/s",
            ratio_is="ours/baseline",
            note="baseline: the ceiling itself; wall time of apply incl. journal fsyncs and polling; goal >= 0.9",
        )
        yield Measurement(
            name=f"UpdateImageSetMetadata calls for {count} image sets ({changes} changes)",
            ours=float(sent),
            baseline=float(count),
            unit="requests",
            ratio_is="ours/baseline",
            note="baseline: the fewest possible, one per image set; goal 1.0",
        )


def _first_window(times: list[float], start: float, target: float) -> float | None:
    """Seconds from ``start`` to the end of the first ``WINDOW`` holding ``target`` per second."""
    needed = target * WINDOW
    for end_index in range(len(times)):
        first = end_index - int(needed) + 1
        if first >= 0 and times[end_index] - times[first] <= WINDOW:
            return times[end_index] - start
    return None


def _unknown_quota(scale: float, quota: tuple[float, float]) -> Iterable[Measurement]:
    import curation.local
    from curation.local.service import Service
    from curation.run.applying import apply
    from curation.run.options import PollPolicy
    from curation.run.retries import client_config

    rate, burst = quota
    seconds = max(15.0, FULL_SECONDS * scale)
    count = int(rate * seconds * 1.3) + 20  # more image sets than the run can apply: it is stopped at ``seconds``
    with tempfile.TemporaryDirectory(prefix="bench-apply-quota-") as directory:
        store, datastore_id = _store(directory, count)
        plain = curation.local.client(store, config=client_config())
        update_plan, _ = _plan_for(store, plain, datastore_id, instance_level=False)
        knob = QuotaKnob(store, rate, burst)
        client = curation.local.client(Service(knob), config=client_config())
        cancel = threading.Event()
        timer = threading.Timer(seconds, cancel.set)
        start = time.perf_counter()
        timer.start()
        try:
            apply(
                update_plan,
                client,
                Path(directory) / "journal.jsonl",
                max_workers=8,
                progress=False,
                poll=PollPolicy(initial=0.01),
                cancel=cancel,
            )
        finally:
            timer.cancel()
        end = min(time.perf_counter(), start + seconds)
    half = start + (end - start) / 2
    late = [t for t in knob.accepted if half <= t <= end]
    achieved = len(late) / (end - half)
    reached = _first_window(knob.accepted, start, 0.9 * rate)
    attempts = len(knob.accepted) + len(knob.throttled)
    label = f"a {rate:g}/s quota the client does not know (it starts at the documented 10/s)"
    yield Measurement(
        name=f"apply against {label}: accepted rate, second half of {end - start:.0f} s",
        ours=achieved,
        baseline=rate,
        unit="updates/s",
        ratio_is="ours/baseline",
        note="baseline: the service's quota; goal >= 0.9 (above 1 only by the service's burst: it throttles past it)",
    )
    yield Measurement(
        name=f"apply against {label}: seconds until a {WINDOW:g}-s window first reached 90% of it",
        ours=reached if reached is not None else float("inf"),
        baseline=60.0,
        unit="s",
        ratio_is="ours/baseline",
        note=f"baseline: a minute; goal <= 1; throttled attempts {len(knob.throttled)} of {attempts} "
        f"({100 * len(knob.throttled) / max(1, attempts):.1f}%)",
    )


def run(scale: float) -> Iterable[Measurement]:
    """The ceiling kept, then each unknown quota found."""
    yield from _ceiling(scale)
    for quota in UNKNOWN_QUOTAS:
        yield from _unknown_quota(scale, quota)
