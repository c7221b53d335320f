"""Issues 4 and 17: the notebook path (Snapshot + .instances) against the parse floor and json_normalize; memory.

Inputs: ``tests/data/reference/ct-588-instances.json`` and generated datastores of 20,000 and 100,000 instances
(image sets of 500; ``scale`` shrinks them) made by varying the CT reference: new UIDs and values, and a
realistic mix (series with BodyPartExamined, private tags with DICOMVRs, null values, sequences on some
instances, multi-frame instances, and each frame's own pixel checksums: the 588 of the reference repeated would
let equal cells be shared, which AHI's data never allows).

- Ours is what a notebook user does first: ``Snapshot.from_blobs(blobs).instances`` (parse, flatten every level,
  hand out the instances frame), the blobs being plain JSON bytes. The floor is ``orjson.loads`` of the same
  bytes with the cyclic GC off (a live GC rescans the growing graph and hides a factor of 4 at 10k+ instances).
- The baselines ``json.loads`` + ``pandas.json_normalize``: "DICOM dicts only" (``naive``: json_normalize of each
  series' pre-extracted instance ``DICOM`` dicts, then one ``concat``; pandas' fast path, lossy: no DICOMVRs,
  frames, series or study) and "literal" (``naive_literal``: the nodes as they are, ``DICOM.X`` columns, series
  and Patient/Study ``DICOM`` merged on; still lossy).
- One line shows what ``gc_paused`` buys (the same path with the pause replaced by a no-op).
- Memory, in a fresh child process (``python -m benchmarks.bench_flatten memory N``): the RSS growth of
  ``Snapshot.from_blobs`` over gzip blobs (as fetched) with its studies, series, instances and frames built,
  after ``malloc_trim``, plus the blobs it keeps, against the JSON bytes; and the VmHWM growth (the peak).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
import pandas as pd

from benchmarks import Measurement, interleaved_medians
from curation.frames.flattening import flatten_many, wide_view
from curation.frames.snapshot import Snapshot

REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "reference"
INSTANCES_PER_SET = 500
#: the issue's range: 20,000 to 100,000 instances at scale 1
SIZES = (20_000, 100_000)


def _uid(rng: random.Random) -> str:
    return "2.25." + str(rng.getrandbits(120))


def generate_datastore(image_sets: int, per_set: int = INSTANCES_PER_SET, seed: int = 4) -> list[bytes]:
    """JSON blobs of ``image_sets`` documents made by varying the CT reference (see the module docstring)."""
    rng = random.Random(seed)
    template = orjson.loads((REFERENCE / "ct-588-instances.json").read_bytes())
    extra = orjson.loads((REFERENCE / "ct-2025-htj2k-1-instance.json").read_bytes())
    extra_instance = next(iter(next(iter(extra["Study"]["Series"].values()))["Instances"].values()))
    sequence = extra_instance["DICOM"]["SourceImageSequence"]
    series_node = next(iter(template["Study"]["Series"].values()))
    instances = list(series_node["Instances"].values())
    blobs = []
    for number in range(image_sets):
        study_uid, series_uid = _uid(rng), _uid(rng)
        patient = copy.deepcopy(template["Patient"])
        patient["DICOM"]["PatientID"] = f"PID{number:06d}"
        patient["DICOM"]["PatientName"] = f"PATIENT^{number}"
        if number % 7 == 0:
            patient["DICOM"]["PatientSex"] = None
        study = {
            "DICOM": dict(
                template["Study"]["DICOM"],
                StudyInstanceUID=study_uid,
                AccessionNumber=f"ACC{number:06d}",
                StudyDate=f"2023{1 + number % 12:02d}17",
            )
        }
        series_dicom = dict(series_node["DICOM"], SeriesInstanceUID=series_uid, SeriesNumber=str(number % 9))
        if number % 3 == 0:
            series_dicom["BodyPartExamined"] = rng.choice(["CHEST", "ABDOMEN", None])
        nodes = {}
        for i in range(per_set):
            node = copy.deepcopy(instances[i % len(instances)])
            sop_uid = _uid(rng)
            dicom = node["DICOM"]
            dicom["SOPInstanceUID"] = dicom["MediaStorageSOPInstanceUID"] = sop_uid
            dicom["InstanceNumber"] = str(i + 1)
            dicom["ImagePositionPatient"][2] = f"{-i * 1.25:.2f}"
            dicom["WindowCenter"] = [str(rng.randint(30, 400))]
            if i % 10 == 0:
                dicom["00091001"] = "GE_GENESIS_DD "
                dicom["00090010"] = "GEMS_IDEN_01"
                node["DICOMVRs"] = {"00091001": "LO", "00090010": "LO"}
            if i % 4 == 0:
                dicom["SourceImageSequence"] = copy.deepcopy(sequence)
                dicom["ImageComments"] = None
            if i % 50 == 0:
                node["ImageFrames"] = node["ImageFrames"] + copy.deepcopy(node["ImageFrames"])
                dicom["NumberOfFrames"] = "2"
            for frame in node["ImageFrames"]:  # as in AHI, every frame's pixels have their own checksums
                for level in frame["PixelDataChecksumFromBaseToFullResolution"]:
                    level["Checksum"] = rng.getrandbits(32)
            nodes[sop_uid] = node
        study["Series"] = {series_uid: {"DICOM": series_dicom, "Instances": nodes}}
        document = {
            "SchemaVersion": "1.1",
            "DatastoreID": template["DatastoreID"],
            "ImageSetID": f"{number:032x}",
            "Patient": patient,
            "Study": study,
        }
        blobs.append(orjson.dumps(document))
    return blobs


def naive(blobs: Iterable[bytes]) -> pd.DataFrame:
    """The notebook path: json.loads + json_normalize of each series' instance DICOM dicts, then concat."""
    frames = []
    for blob in blobs:
        document = json.loads(blob)
        for series in document["Study"]["Series"].values():
            frames.append(pd.json_normalize([node["DICOM"] for node in series["Instances"].values()]))
    return pd.concat(frames, ignore_index=True)


def naive_literal(blobs: Iterable[bytes]) -> pd.DataFrame:
    """The literal notebook path: json_normalize of the nodes as they are, the levels joined with ``merge``."""
    studies, series, instances = [], [], []
    for blob in blobs:
        document = json.loads(blob)
        image_set_id = document["ImageSetID"]
        studies.append(
            {"ImageSetID": image_set_id, "Patient": document["Patient"]["DICOM"], "Study": document["Study"]["DICOM"]}
        )
        for series_uid, node in document["Study"]["Series"].items():
            series.append({"ImageSetID": image_set_id, "SeriesInstanceUID": series_uid, "DICOM": node["DICOM"]})
            frame = pd.json_normalize(list(node["Instances"].values()))
            frame.insert(0, "SOPInstanceUID", list(node["Instances"]))
            frame.insert(0, "SeriesInstanceUID", series_uid)
            frame.insert(0, "ImageSetID", image_set_id)
            instances.append(frame)
    joined = pd.concat(instances, ignore_index=True)
    joined = joined.merge(pd.json_normalize(series), on=["ImageSetID", "SeriesInstanceUID"], how="left")
    return joined.merge(pd.json_normalize(studies), on="ImageSetID", how="left")


def ours(blobs: list[bytes], copy: bool = True) -> pd.DataFrame:
    return flatten_many([orjson.loads(blob) for blob in blobs], copy=copy).instances


def ours_wide(blobs: list[bytes]) -> pd.DataFrame:
    flat = flatten_many([orjson.loads(blob) for blob in blobs])
    return wide_view(flat.studies, flat.series, flat.instances)


def snapshot_instances(blobs: dict[str, bytes]) -> pd.DataFrame:
    """What a notebook user does first: a Snapshot of the fetched blobs, then its instances."""
    return Snapshot.from_blobs(blobs, datastore_id="0" * 32).instances


def parse_only(blobs: list[bytes]) -> list:
    """The parse floor: ``orjson.loads`` of every blob with the cyclic GC off (as a fetch of them must)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return [orjson.loads(blob) for blob in blobs]
    finally:
        if enabled:
            gc.enable()


def _keyed(blobs: list[bytes]) -> dict[str, bytes]:
    return {f"{n:032x}": blob for n, blob in enumerate(blobs)}


def _measure(label: str, blobs: list[bytes], repeat: int) -> Iterator[Measurement]:
    count = len(ours(blobs))
    size = sum(map(len, blobs))
    keyed = _keyed(blobs)
    note = f"{count} instances, {size / 1e6:.1f} MB JSON; median of {repeat}, all sides run round-robin"

    def unpaused() -> None:
        with _no_gc_pause():
            snapshot_instances(keyed)

    t = interleaved_medians(
        {
            "parse": lambda: parse_only(blobs),
            "snapshot": lambda: snapshot_instances(keyed),
            "naive": lambda: naive(blobs),
            "unpaused": unpaused,
            "ours": lambda: ours(blobs),
            "literal": lambda: naive_literal(blobs),
            "wide": lambda: ours_wide(blobs),
        },
        repeat,
    )
    yield Measurement(
        f"Snapshot.from_blobs + .instances {label} vs orjson.loads (GC off)",
        t["snapshot"],
        t["parse"],
        "s",
        note=f"goal <= 3; {note}",
    )
    yield Measurement(
        f"Snapshot.from_blobs + .instances {label} vs json.loads+json_normalize (DICOM dicts only)",
        t["snapshot"],
        t["naive"],
        "s",
        "baseline/ours",
        f"goal >= 2; baseline: instance DICOM dicts only, no VRs/frames/series/study; {note}",
    )
    yield Measurement(
        f"what gc_paused buys: Snapshot.from_blobs + .instances {label}, GC paused vs not",
        t["snapshot"],
        t["unpaused"],
        "s",
        "baseline/ours",
        "ratio = the speed-up of pausing the cyclic GC",
    )
    yield Measurement(
        f"orjson.loads (GC on) + flatten_many {label} vs orjson.loads (GC off)",
        t["ours"],
        t["parse"],
        "s",
        note=f"the caller's own parse, GC on; {note}",
    )
    yield Measurement(
        f"flatten {label} vs json.loads+json_normalize (literal: nodes as they are, levels joined)",
        t["ours"],
        t["literal"],
        "s",
        "baseline/ours",
        f"baseline: instance nodes (DICOM.X, DICOMVRs.X, ImageFrames as list) + series "
        f"+ Patient/Study DICOM merged on; ours: 4 level frames, no join; {note}",
    )
    yield Measurement(
        f"flatten + wide_view {label} vs json.loads+json_normalize (literal, levels joined)",
        t["wide"],
        t["literal"],
        "s",
        "baseline/ours",
        f"both sides build the joined instance-level frame; {note}",
    )


class _no_gc_pause:
    """Flatten and from_blobs without ``gc_paused`` (for the line that shows what the pause buys)."""

    def __enter__(self) -> None:
        import curation.frames.flattening as flattening
        import curation.frames.snapshot as snapshot

        self._saved = flattening.gc_paused, snapshot.gc_paused
        flattening.gc_paused = snapshot.gc_paused = contextlib.nullcontext

    def __exit__(self, *exc: object) -> None:
        import curation.frames.flattening as flattening
        import curation.frames.snapshot as snapshot

        flattening.gc_paused, snapshot.gc_paused = self._saved


# --- memory, in a fresh process ------------------------------------------------------------------------------


def _status(field: str) -> int:
    """A ``/proc/self/status`` figure in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _trim() -> None:
    """Give freed heap back to the OS (glibc ``malloc_trim``) so RSS shows what is retained."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _memory_child(path: str) -> dict[str, float]:
    """In this fresh process: the Snapshot of the gzip blobs (as fetched) in ``path`` with its level frames."""
    with open(path, "rb") as handle:
        stored = orjson.loads(handle.read())
    fetched = {key: bytes.fromhex(value) for key, value in stored["blobs"].items()}
    del stored
    first = next(iter(fetched))
    Snapshot.from_blobs({first: fetched[first]}, datastore_id="0" * 32).instances  # noqa: B018 - warm-up
    _trim()
    rss, peak_before = _status("VmRSS"), _status("VmHWM")
    snapshot = Snapshot.from_blobs(fetched, datastore_id="0" * 32)
    flat = snapshot.cached_flattened()
    rows = len(flat.instances)
    _trim()
    kept = sum(map(len, fetched.values()))
    return {
        "retained": _status("VmRSS") - rss + kept,
        "peak": max(0, _status("VmHWM") - peak_before) + kept,
        "peak_before": peak_before - rss,
        "gzip": kept,
        "rows": rows,
    }


def _memory(blobs: list[bytes]) -> dict[str, float]:
    """The memory figures of a fresh child process over ``blobs`` (written gzip-compressed to a file)."""
    fetched = {key: gzip.compress(blob, compresslevel=6, mtime=0).hex() for key, blob in _keyed(blobs).items()}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        handle.write(orjson.dumps({"blobs": fetched}))
    try:
        command = [sys.executable, "-m", "benchmarks.bench_flatten", "memory", handle.name]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(handle.name)
    figures = json.loads(output.strip().splitlines()[-1])
    return {**figures, "json": sum(map(len, blobs))}


def run(scale: float) -> Iterable[Measurement]:
    """Time and memory at 20,000 and 100,000 instances (``scale`` shrinks both), and on the CT reference."""
    reference = [(REFERENCE / "ct-588-instances.json").read_bytes()]
    yield from _measure("ct-588", reference, 5)
    for instances in SIZES:
        image_sets = max(2, round(instances * scale / INSTANCES_PER_SET))
        label = f"datastore {image_sets}x{INSTANCES_PER_SET}"
        blobs = generate_datastore(image_sets)
        yield from _measure(label, blobs, 3)
        memory = _memory(blobs)
        del blobs
        note = (
            f"fresh process (warmed up on one image set), RSS growth after malloc_trim + the gzip blobs it keeps "
            f"({memory['gzip'] / 1e6:.1f} MB); studies, series, instances, frames built"
        )
        yield Measurement(
            f"Snapshot retained memory {label} vs JSON bytes",
            memory["retained"],
            memory["json"],
            "bytes",
            note=f"goal <= 1.5; {note}",
        )
        yield Measurement(
            f"Snapshot peak memory (VmHWM growth) {label} vs JSON bytes",
            memory["peak"],
            memory["json"],
            "bytes",
            note="fresh process; one batch of parsed dicts exists at a time while flattening",
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["memory"]:
        print(json.dumps(_memory_child(sys.argv[2])))
