"""Fetch throughput from the embedded HTTP service against a sequential loop, at 50 ms and at 0 ms latency.

The baseline is what a notebook user writes today: a loop of ``get_image_set_metadata`` over known IDs,
reading and parsing each blob. Ours is ``curation.run.fetching.fetch_documents`` (fetch without flattening,
which the flatten benchmark measures), including its SearchImageSets paging. The service runs as
``ahi-curation serve`` in a child process, as AWS is not in the client's process either: sharing one GIL
with the server would halve the CPU both get.

1. 50 ms latency, ``500 * scale`` copies of the one-instance reference CT: once with the defaults (8 workers
   under AHI's 50/s GetImageSetMetadata quota, which caps it whatever the latency) and once unthrottled with
   32 workers, as with a raised quota.
2. 0 ms latency, ``300 * scale`` image sets of 100 instances (the 588-instance reference CT cut to 100),
   unthrottled, 4 workers: here the client's CPU is the limit (botocore about 1 ms per call, parsing a
   100-instance document about 1 ms with the GC off, 2-3 ms with it on). Fetch downloads in its workers and
   hands the blobs over (``parse=False``: the Snapshot parses them, measured by the flatten benchmark); the
   same fetch with ``parse=True`` (all at once, GC paused) is shown too.
"""

from __future__ import annotations

import contextlib
import copy
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import Measurement, best_of

REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "reference" / "ct-2025-htj2k-1-instance.json"
LATENCY = 0.05
FULL_SIZE = 500
FULL_SIZE_LARGE = 300
LARGE_INSTANCES = 100
CT_588 = REFERENCE.parent / "ct-588-instances.json"


def renumbered_copies(document: dict[str, Any], count: int) -> Iterator[dict[str, Any]]:
    """``count`` copies of ``document``, each another patient's study with new image set and DICOM UIDs."""
    from pydicom.uid import generate_uid

    for number in range(count):
        clone = copy.deepcopy(document)
        clone.pop("ImageSetID", None)
        clone["Patient"]["DICOM"]["PatientID"] = f"BENCH-{number:05d}"
        clone["Study"]["DICOM"]["StudyInstanceUID"] = str(generate_uid())
        series = {}
        for node in clone["Study"]["Series"].values():
            series_uid = str(generate_uid())
            node["DICOM"]["SeriesInstanceUID"] = series_uid
            instances = {}
            for instance in node["Instances"].values():
                sop_uid = str(generate_uid())
                instance["DICOM"]["SOPInstanceUID"] = sop_uid
                instances[sop_uid] = instance
            node["Instances"] = instances
            series[series_uid] = node
        clone["Study"]["Series"] = series
        yield clone


@contextlib.contextmanager
def served(store_path: str, latency: float) -> Iterator[str]:
    """Run ``ahi-curation serve`` on a free port in a child process; yield its endpoint URL."""
    command = [sys.executable, "-m", "curation.cli", "serve", "--store", store_path, "--port", "0"]
    command += ["--access-key-id", "local", "--secret-access-key", "local"]  # the pair _client signs with
    process = subprocess.Popen([*command, "--latency", str(latency)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"https?://\S+", line)
        if match is None:
            raise RuntimeError(f"the server did not start: {line!r}")
        yield match.group(0)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _client(endpoint: str, pool: int) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "medical-imaging",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(inject_host_prefix=False, max_pool_connections=pool),
    )


def _sequential(client: Any, datastore_id: str, image_set_ids: list[str]) -> float:
    from curation.model.document import parse_document

    start = time.perf_counter()
    for image_set_id in image_set_ids:
        response = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)
        parse_document(response["imageSetMetadataBlob"].read())
    return time.perf_counter() - start


def _large_document() -> dict[str, Any]:
    from curation.model.document import read_document

    document = read_document(str(CT_588))
    (series,) = document["Study"]["Series"].values()
    series["Instances"] = dict(list(series["Instances"].items())[:LARGE_INSTANCES])
    return document


def _unthrottled_large(scale: float) -> Iterable[Measurement]:
    from curation.local.store import Store
    from curation.run.fetching import fetch_documents

    count = max(20, round(FULL_SIZE_LARGE * scale))
    with tempfile.TemporaryDirectory(prefix="bench-fetch-large-") as directory:
        store = Store(directory)
        report = store.import_documents(renumbered_copies(_large_document(), count))
        assert not report.failures, report.failures[:3]
        datastore_id, image_set_ids = report.datastore_id, report.created
        store.close()
        with served(directory, 0.0) as endpoint:
            client = _client(endpoint, pool=32)
            client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_ids[0])  # warm up
            baseline = count / min(_sequential(client, datastore_id, image_set_ids) for _ in range(2))
            for label, parse in (("blobs handed over (parse=False)", False), ("parsed (parse=True)", True)):

                def once(parse: bool = parse) -> None:
                    result = fetch_documents(
                        client, datastore_id, progress=False, rate=None, max_workers=4, parse=parse
                    )
                    assert len(result.blobs) == count and result.failures.empty, result.failures.head()

                yield Measurement(
                    name=f"fetch {count} image sets of {LARGE_INSTANCES} instances, 0 ms latency, unthrottled, "
                    f"4 workers, {label}, best of 3",
                    ours=count / best_of(once, 3),
                    baseline=baseline,
                    unit="image sets/s",
                    ratio_is="ours/baseline",
                    note="baseline: sequential get_image_set_metadata + parse over known IDs (best of 2); "
                    "ours includes the search; goal 2x",
                )
            client.close()


def run(scale: float) -> Iterable[Measurement]:
    """Throughput (image sets per second) of fetch against the sequential loop, same store, same run."""
    yield from _latency(scale)
    yield from _unthrottled_large(scale)


def _latency(scale: float) -> Iterable[Measurement]:
    from curation.local.store import Store
    from curation.model.document import read_document
    from curation.run.fetching import fetch_documents

    count = max(20, round(FULL_SIZE * scale))
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as directory:
        store = Store(directory)
        report = store.import_documents(renumbered_copies(read_document(str(REFERENCE)), count))
        assert not report.failures, report.failures[:3]
        datastore_id, image_set_ids = report.datastore_id, report.created
        store.close()
        with served(directory, LATENCY) as endpoint:
            client = _client(endpoint, pool=32)
            client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_ids[0])  # warm up
            baseline = count / _sequential(client, datastore_id, image_set_ids)
            runs = [
                ("defaults: 8 workers, rate auto (AHI's 50/s to start, rising: this service never throttles)", {}, 1),
                ("unthrottled: 32 workers, no rate limit, best of 2", {"max_workers": 32, "rate": None}, 2),
            ]
            for label, options, repeat in runs:

                def once(options: dict[str, Any] = options) -> None:
                    result = fetch_documents(client, datastore_id, progress=False, **options)
                    assert len(result.documents) == count and result.failures.empty, result.failures.head()

                yield Measurement(
                    name=f"fetch {count} image sets, {LATENCY * 1000:.0f} ms latency, {label}",
                    ours=count / best_of(once, repeat),
                    baseline=baseline,
                    unit="image sets/s",
                    ratio_is="ours/baseline",
                    note="baseline: sequential get_image_set_metadata + parse over known IDs; "
                    "ours includes the search; goal 10x",
                )
            client.close()  # before the server stops, so that it sees its keep-alive connections end cleanly
