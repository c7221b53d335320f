"""Apply throughput under a client-side rate limit, and requests sent against the fewest possible.

The datastore holds ``1000 * scale`` copies of the one-instance reference CT (each its own study). The
ChangeSet comes from a pandas edit of the fetched Snapshot: two Study-level attributes of every image set
and an instance-level one (three changes per image set), planned with ``curation.curate.planner.plan`` and applied
with ``curation.run.applying`` at 50 UpdateImageSetMetadata per second (burst 1), journaled, against the embedded
service in this process (no quotas, no latency; GetImageSet polling limited to 100 per second, as an
account whose update quota was raised to 50/s would have). The achieved rate is the number of updates over
the wall time of the whole apply call (journal fsyncs and LOCKED polling included), against the limit.
The fewest possible requests for that ChangeSet is one per image set (every change of an image set fits one
UpdateImageSetMetadata call).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from benchmarks import Measurement
from benchmarks.bench_fetch import REFERENCE, renumbered_copies

FULL_SIZE = 1000
RATE = 50.0


def run(scale: float) -> Iterable[Measurement]:
    """Achieved update rate against the limit, and requests sent against the fewest possible."""
    import curation.local
    from curation.curate.differ import diff
    from curation.curate.planner import plan
    from curation.local.store import Store
    from curation.model.document import read_document
    from curation.run.applying import PollPolicy, apply
    from curation.run.fetching import fetch

    count = max(20, round(FULL_SIZE * scale))
    with tempfile.TemporaryDirectory(prefix="bench-apply-") as directory:
        store = Store(Path(directory) / "store")
        report = store.import_documents(renumbered_copies(read_document(str(REFERENCE)), count))
        assert not report.failures, report.failures[:3]
        client = curation.local.client(store)
        snapshot = fetch(client, report.datastore_id, rate=None, max_workers=8, progress=False)
        studies = snapshot.studies.copy()
        studies["StudyDescription"] = "CT CHEST"
        studies["AccessionNumber"] = [f"ACC{n:06d}" for n in range(len(studies))]
        instances = snapshot.instances.copy()
        instances["ImageComments"] = "reviewed"
        changes = diff(snapshot, [studies, instances])
        assert changes.problems.empty, changes.problems.head()
        update_plan = plan(changes)
        fewest = len(set(changes.changes["ImageSetID"]))
        start = time.perf_counter()
        result = apply(
            update_plan,
            client,
            Path(directory) / "journal.jsonl",
            rate=RATE,
            burst=1,
            max_workers=4,
            progress=False,
            control_rate=100.0,
            poll=PollPolicy(initial=0.01),
        )
        elapsed = time.perf_counter() - start
        assert (result["status"] == "applied").all(), result[result["status"] != "applied"].head()
        sent = client.meta.local_service.calls["UpdateImageSetMetadata"]
        yield Measurement(
            name=f"apply {count} image sets ({len(changes)} changes) under a {RATE:g}/s update limit",
            ours=sent / elapsed,
            baseline=RATE,
            unit="updates/s",
            ratio_is="ours/baseline",
            note="baseline: the rate limit itself; wall time of apply incl. journal fsyncs and polling; goal >= 0.9",
        )
        yield Measurement(
            name=f"UpdateImageSetMetadata calls for {count} image sets ({len(changes)} changes)",
            ours=float(sent),
            baseline=float(fewest),
            unit="requests",
            ratio_is="ours/baseline",
            note="baseline: the fewest possible, one per image set; goal 1.0",
        )
