"""Whole-datastore fetch on Dask (``curation.scale.fetch_to_parquet``) against the in-memory path (``fetch``).

The embedded service (``ahi-curation serve`` in a child process) holds two datastores: ``10,000 * scale``
image sets of 100 instances each (1,000,000 instances at scale 1, synthetic, from the CT reference) and a
tenth as many. Each path runs in its own fresh child process (``python -m benchmarks.bench_scale ...``), and
its peak is that process's own ``VmHWM`` (``/proc/self/status``; ``ru_maxrss`` of a child of a big parent
carries the parent's figure across fork and exec). The Dask path runs a ``LocalCluster`` of two worker
processes (outside the measured driver) that fetch, flatten and write Parquet partitions of ``200`` image
sets; the in-memory path (``fetch``: every document and every level frame in one process) runs at the small
size only (at the large one it is the machine's memory, not a figure). Both are unthrottled (``rate=None``),
so the time is the work, not the quota. Wall time counts from the first SearchImageSets call (the cluster is
started and its workers have imported the toolkit before). The point: the driver's peak stays flat when the
datastore grows 10x. First line: the CPU of one partition's flatten-and-write (``store_partition``) against
the previous writer's steps on the same blobs. ``python -m benchmarks scale --scale 0.05`` is a quick run;
``--scale 1`` the full one.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import Measurement

REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "reference" / "ct-2025-htj2k-1-instance.json"
FULL_IMAGE_SETS = 10_000
INSTANCES_PER_SET = 100
PARTITION = 200
GROWTH = 10


def generated(count: int, offset: int) -> Iterator[dict[str, Any]]:
    """``count`` image sets of ``INSTANCES_PER_SET`` instances each, from the reference CT, with new UIDs."""
    from curation.model.document import read_document

    base = read_document(str(REFERENCE))
    base.pop("ImageSetID", None)
    (series,) = base["Study"]["Series"].values()
    (instance,) = series["Instances"].values()
    for number in range(offset, offset + count):
        doc = copy.deepcopy({**base, "Study": {**base["Study"], "Series": {}}})
        doc["Patient"]["DICOM"]["PatientID"] = f"BENCH-{number:06d}"
        doc["Study"]["DICOM"]["StudyInstanceUID"] = f"2.25.1{number:08d}"
        series_uid = f"2.25.2{number:08d}"
        node = {**copy.deepcopy({k: v for k, v in series.items() if k != "Instances"}), "Instances": {}}
        node["DICOM"]["SeriesInstanceUID"] = series_uid
        for k in range(INSTANCES_PER_SET):
            item = copy.deepcopy(instance)
            sop = f"2.25.3{number:08d}{k:04d}"
            item["DICOM"]["SOPInstanceUID"] = sop
            item["DICOM"]["InstanceNumber"] = k + 1
            node["Instances"][sop] = item
        doc["Study"]["Series"] = {series_uid: node}
        yield doc


def _child(kind: str, endpoint: str, datastore_id: str, directory: str, partition_size: int) -> dict[str, float]:
    """Run one path in this (fresh) process; return its wall time and its own peak resident memory (VmHWM)."""
    import importlib
    import time

    if kind == "scale":
        from distributed import Client, LocalCluster

        from curation import scale

        with (
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            client.run(importlib.import_module, "curation.scale")  # worker imports are cluster start-up
            start = time.perf_counter()
            snapshot = scale.fetch_to_parquet(
                endpoint,
                datastore_id,
                directory,
                client=client,
                rate=None,
                partition_size=partition_size,
                progress=False,
            )
            seconds = time.perf_counter() - start
            image_sets = len(snapshot)
    else:
        from curation.run.fetching import fetch
        from curation.scale import ClientFactory

        client = ClientFactory.local(endpoint)()
        start = time.perf_counter()
        snapshot = fetch(client, datastore_id, rate=None, progress=False)
        rows = len(snapshot.instances) + len(snapshot.frames) + len(snapshot.series) + len(snapshot.studies)
        seconds = time.perf_counter() - start
        image_sets = len(snapshot)
        assert rows > 0
    return {"seconds": seconds, "peak_mb": _vm_hwm() / 2**20, "image_sets": image_sets}


def _vm_hwm() -> int:
    """This process's peak resident set size in bytes (``VmHWM`` of ``/proc/self/status``)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _measure(kind: str, endpoint: str, datastore_id: str, directory: str, partition_size: int) -> dict[str, float]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_scale",
        kind,
        endpoint,
        datastore_id,
        directory,
        str(partition_size),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _previous_partition(path: str, name: str, blobs: dict[str, bytes]) -> None:
    """The partition writer as it was before issue 17, for the CPU baseline: documents kept as dicts, re-dumped
    and re-gzipped into ``documents.jsonl.gz``, and every cell of every frame written as JSON text."""
    import gzip
    import os

    import orjson
    import pandas as pd

    from curation.frames.exchange import encode_cell
    from curation.frames.flattening import flatten_many
    from curation.model.document import parse_document

    documents = [parse_document(blob) for blob in blobs.values()]
    flat = flatten_many(documents)
    os.makedirs(os.path.join(path, "documents"), exist_ok=True)
    with gzip.open(os.path.join(path, "documents", f"{name}.jsonl.gz"), "wb", compresslevel=6) as handle:
        for document in documents:
            handle.write(orjson.dumps(document) + b"\n")
    for level in ("studies", "series", "instances", "frames"):
        frame = getattr(flat, level)
        data = {f"@index:{n}": frame.index.get_level_values(i) for i, n in enumerate(frame.index.names)}
        for column in frame.columns:
            data[column] = pd.array([encode_cell(v) for v in frame[column].to_numpy(dtype=object)], dtype="str")
        os.makedirs(os.path.join(path, level), exist_ok=True)
        pd.DataFrame(data, index=range(len(frame))).to_parquet(os.path.join(path, level, f"{name}.parquet"))


def _partition_cpu(image_sets: int) -> tuple[float, float]:
    """CPU seconds (``time.process_time``) to flatten and write one partition of fetched blobs: ours, before."""
    import time

    from curation.model.document import encode_document
    from curation.scale import store_partition

    blobs = {
        f"{n:032x}": encode_document({**doc, "ImageSetID": f"{n:032x}"}, compress=True)
        for n, doc in enumerate(generated(image_sets, 0))
    }
    timings = []
    for write in (store_partition, _previous_partition):
        best = float("inf")
        for _ in range(3):
            with tempfile.TemporaryDirectory(prefix="bench-partition-") as directory:
                start = time.process_time()
                write(directory, "part-00000", blobs)
                best = min(best, time.process_time() - start)
        timings.append(best)
    return timings[0], timings[1]


def run(scale: float) -> Iterable[Measurement]:
    """Wall time and driver peak memory at two datastore sizes, the large one ``GROWTH`` times the small."""
    from benchmarks.bench_fetch import served
    from curation.local.store import Store

    ours, before = _partition_cpu(PARTITION)
    yield Measurement(
        f"scale partition CPU (flatten + write {PARTITION} image sets of {INSTANCES_PER_SET})",
        ours,
        before,
        "s",
        note="goal <= 0.5; baseline: the previous writer (documents re-dumped and "
        "re-gzipped, every cell JSON text); both from the same fetched gzip blobs",
    )

    big = max(GROWTH * 2, round(FULL_IMAGE_SETS * scale))
    sizes = [big // GROWTH, big]
    partition_size = PARTITION if big >= 20 * PARTITION else max(5, big // 20)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as directory:
        store = Store(Path(directory) / "store")
        datastores = {}
        for n, count in enumerate(sizes):
            name = f"bench-scale-{count}"
            created = store.call("CreateDatastore", {"datastoreName": name, "clientToken": name})["datastoreId"]
            report = store.import_documents(generated(count, n * FULL_IMAGE_SETS), datastore_id=created)
            assert not report.failures and len(report.created) == count, report.failures[:3]
            datastores[count] = report.datastore_id
        store.close()
        results: dict[int, dict[str, dict[str, float]]] = {}
        with served(str(Path(directory) / "store"), 0.0) as endpoint:
            for count in sizes:
                target = str(Path(directory) / f"snapshot-{count}")
                kinds = ("scale", "memory") if count == sizes[0] else ("scale",)
                results[count] = {
                    kind: _measure(kind, endpoint, datastores[count], target, partition_size) for kind in kinds
                }
                for kind in kinds:
                    assert results[count][kind]["image_sets"] == count, results[count]
    small, large = (results[c] for c in sizes)
    label = f"{sizes[0]} image sets / {sizes[0] * INSTANCES_PER_SET} instances"
    yield Measurement(
        f"scale fetch_to_parquet wall time, {label}",
        small["scale"]["seconds"],
        small["memory"]["seconds"],
        "s",
        note=f"2 worker processes, partitions of {partition_size}; baseline: curation.fetch + every "
        "level frame, in one process",
    )
    yield Measurement(
        f"scale driver peak (VmHWM), {label}",
        small["scale"]["peak_mb"],
        small["memory"]["peak_mb"],
        "MB",
        note="the driver process's own VmHWM (workers excluded) vs the in-memory process's",
    )
    big_label = f"{sizes[1]} image sets / {sizes[1] * INSTANCES_PER_SET} instances"
    yield Measurement(
        f"scale fetch_to_parquet wall time, {big_label}",
        large["scale"]["seconds"],
        small["scale"]["seconds"],
        "s",
        note=f"baseline: the same at {sizes[0]} image sets",
    )
    yield Measurement(
        f"scale driver peak (VmHWM) growth from {sizes[0]} to {sizes[1]} image sets ({GROWTH}x)",
        large["scale"]["peak_mb"],
        small["scale"]["peak_mb"],
        "MB",
        note="ours: the Dask driver at the large size; baseline: at the small size; 1.0 = flat",
    )


if __name__ == "__main__":
    kind, endpoint, datastore_id, directory, partition_size = sys.argv[1:6]
    print(json.dumps(_child(kind, endpoint, datastore_id, directory, int(partition_size))))
