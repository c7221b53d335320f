"""diff (and diff + plan) of an edited instances frame against ``pandas.DataFrame.compare`` on the same frames.

Full size (scale 1.0): 100,000 instances (1,000 image sets of 100) x 60 instance-level attributes of every
kind AHI encodes (text, numbers, multi-valued arrays) plus a two-item sequence, 10% and 1% of the attribute
cells edited with valid new values (written as the column holds them: text in ``str`` columns, backslash-joined
text for multi-valued ones, numbers in ``Int64``/``Float64``). The baseline ``DataFrame.compare`` only finds
the differing cells; ``diff`` also coerces, validates and addresses each change, ``plan`` builds the request
payloads. The snapshot is marked non-primary so that the edits are valid. Frames are built once (outside the
timings) from generated documents.

A plan records each planned document's digest (``planned_on``); ``snapshot_digest`` remembers them per
snapshot, so the round-robin "diff + plan" line is a repeated plan on one snapshot and the "first plan" line
forgets the digests before each run (what the first plan of a snapshot pays). Every timed call starts after a
full ``gc.collect()`` (not timed): a full collection of the snapshot's documents (about 1 s at 100,000
instances held as dicts) would otherwise fall on whichever call crosses the GC's threshold, baseline included,
and decide the medians.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import Measurement

FULL_INSTANCES = 100_000
PER_IMAGE_SET = 100
EDIT_FRACTIONS = (0.10, 0.01)

KEYWORDS = tuple(
    [
        "InstanceNumber",
        "ImageType",
        "SOPClassUID",
        "AcquisitionDate",
        "ContentDate",
        "AcquisitionTime",
        "ContentTime",
        "AcquisitionNumber",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "SliceLocation",
        "SliceThickness",
        "PixelSpacing",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "WindowCenter",
        "WindowWidth",
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
        "KVP",
        "XRayTubeCurrent",
        "ExposureTime",
        "Exposure",
        "ConvolutionKernel",
        "FilterType",
        "GeneratorPower",
        "FocalSpots",
        "DataCollectionDiameter",
        "ReconstructionDiameter",
        "DistanceSourceToDetector",
        "DistanceSourceToPatient",
        "GantryDetectorTilt",
        "TableHeight",
        "RotationDirection",
        "PatientOrientation",
        "ImageComments",
        "LossyImageCompression",
        "BurnedInAnnotation",
        "SpecificCharacterSet",
        "InstanceCreationDate",
        "InstanceCreationTime",
        "AcquisitionDateTime",
        "ScanOptions",
        "SpiralPitchFactor",
        "CTDIvol",
        "RevolutionTime",
        "SingleCollimationWidth",
        "TotalCollimationWidth",
        "TableSpeed",
        "TableFeedPerRotation",
        "WindowCenterWidthExplanation",
        "ContentQualification",
        "LargestImagePixelValue",
    ]
)


def _value(vr: str, vm: str, number: int, variant: int) -> Any:
    """A valid AHI-encoded value for VR/VM (``variant`` changes it, for edits)."""
    n = number + variant * 7
    if vr == "DS":
        one: Any = f"{(n % 500) / 4:g}"
    elif vr == "IS":
        one = str(n % 1000)
    elif vr in ("US", "SS", "UL", "SL"):
        one = n % 4096
    elif vr in ("FD", "FL"):
        one = (n % 1000) / 8
    elif vr == "DA":
        one = f"2020{1 + n % 12:02d}{1 + n % 28:02d}"
    elif vr == "TM":
        one = f"{n % 24:02d}{n % 60:02d}00"
    elif vr == "DT":
        one = f"2020{1 + n % 12:02d}{1 + n % 28:02d}120000"
    elif vr == "UI":
        one = f"1.2.840.10008.5.1.4.1.1.{n % 9 + 1}"
    elif vr == "CS":
        one = f"V{n % 50}"
    else:
        one = f"text {n % 97}"
    if vm == "1":
        return one
    count = int(vm.split("-")[0]) if vm[0].isdigit() else 1
    return [one] * max(count, 1)


def _spec() -> list[tuple[str, str, str]]:
    from curation.model.values import vr_vm_of

    out = []
    for keyword in KEYWORDS[:60]:
        vr, vm = vr_vm_of(keyword)
        out.append((keyword, vr.split(" or ")[0], vm))
    return out


def documents(instances: int) -> list[dict[str, Any]]:
    """Generated documents: ``instances`` instances in image sets of ``PER_IMAGE_SET``."""
    spec = _spec()
    docs = []
    count = max(1, instances // PER_IMAGE_SET)
    number = 0
    for s in range(count):
        image_set = f"{s:032x}"
        series_uid = f"1.2.3.{s}.1"
        nodes = {}
        for i in range(min(PER_IMAGE_SET, instances - s * PER_IMAGE_SET) or 1):
            sop = f"1.2.3.{s}.1.{i}"
            dicom = {kw: _value(vr, vm, number + j, 0) for j, (kw, vr, vm) in enumerate(spec)}
            dicom["SOPInstanceUID"] = sop
            dicom["ReferencedImageSequence"] = [
                {"ReferencedSOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "ReferencedSOPInstanceUID": f"{sop}.{k}"}
                for k in range(2)
            ]
            nodes[sop] = {"DICOM": dicom, "ImageFrames": [{"ID": f"{number:032x}"}]}
            number += 1
        docs.append(
            {
                "SchemaVersion": "1.1",
                "DatastoreID": "0" * 32,
                "ImageSetID": image_set,
                "Patient": {"DICOM": {"PatientID": f"P{s}", "PatientName": f"NAME^{s}"}},
                "Study": {
                    "DICOM": {"StudyInstanceUID": f"1.2.3.{s}", "StudyDescription": "bench"},
                    "Series": {
                        series_uid: {"DICOM": {"SeriesInstanceUID": series_uid, "Modality": "CT"}, "Instances": nodes}
                    },
                },
            }
        )
    return docs


def _as_held(value: Any, dtype: Any) -> Any:
    """A JSON value as a cell of a column of ``dtype`` (text joined by backslashes in a ``str`` column)."""
    if isinstance(dtype, pd.StringDtype):
        return "\\".join(value) if isinstance(value, list) else str(value)
    return tuple(value) if isinstance(value, list) else value


def edit(frame: Any, fraction: float, seed: int = 5) -> Any:
    """A copy of ``frame`` with ``fraction`` of the attribute cells given other valid values."""
    spec = {kw: (vr, vm) for kw, vr, vm in _spec()}
    edited = frame.copy()
    rng = np.random.default_rng(seed)
    columns = [c for c in frame.columns if c in spec and c != "SOPInstanceUID"]
    cells = int(len(frame) * len(columns) * fraction)
    rows = rng.integers(0, len(frame), cells)
    cols = rng.integers(0, len(columns), cells)
    for c in np.unique(cols):
        column = columns[c]
        vr, vm = spec[column]
        dtype = frame[column].dtype
        values = edited[column].to_numpy(dtype=object).copy()
        for r in rows[cols == c]:
            values[r] = _as_held(_value(vr, vm, int(r) + int(c), 1 + int(r) % 5), dtype)
        typed = not (isinstance(dtype, np.dtype) and dtype.kind == "O")
        edited[column] = pd.Series(pd.array(values, dtype=dtype) if typed else values, index=frame.index)
    return edited


class _Unchecked:
    """A stand-in for ``updates.PlainSets`` that checks nothing (every group is then walked)."""

    def __init__(self, *rows: Any) -> None:
        pass

    def reasons(self, document: Any, start: int, stop: int, is_primary: bool) -> None:
        return None


@contextlib.contextmanager
def walked_groups() -> Iterator[None]:
    """plan as before ``updates.PlainSets``: no rows checked at once, every payload group walked by
    ``check_updates``; restored on exit."""
    from curation.curate import payloads

    checks = payloads.PlainSets
    payloads.PlainSets = _Unchecked  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        payloads.PlainSets = checks  # type: ignore[misc]


def _walked_plan(changes: Any) -> Any:
    from curation.curate.planner import plan

    with walked_groups():
        return plan(changes)


def collected_medians(functions: dict[str, Callable[[], object]], repeat: int = 3) -> dict[str, float]:
    """``benchmarks.interleaved_medians`` (round-robin medians, in seconds), each call after a full collection."""
    timings: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            gc.collect()
            start = time.perf_counter()
            function()
            timings[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in timings.items()}


def run(scale: float) -> Iterable[Measurement]:
    from curation.curate.differ import diff
    from curation.curate.planner import plan
    from curation.curate.updateplan import document_digest, forget_snapshot_digests
    from curation.frames.snapshot import Snapshot

    instances = max(PER_IMAGE_SET, int(FULL_INSTANCES * scale))
    docs = documents(instances)
    snapshot = Snapshot.from_documents(docs, datastore_id="0" * 32, version_ids={d["ImageSetID"]: "1" for d in docs})
    snapshot.primary = {d["ImageSetID"]: False for d in docs}
    original = snapshot.instances
    attributes = len([c for c in original.columns if not c.startswith("@")])
    for fraction in EDIT_FRACTIONS:
        edited = edit(original, fraction)
        cells = original.compare(edited).notna().sum().sum() // 2
        changes = diff(snapshot, edited)
        assert changes.problems.empty, changes.problems.head()
        planned = sorted(set(changes.changes["ImageSetID"]))
        medians = collected_medians(
            {
                "compare": lambda edited=edited: original.compare(edited),
                "diff": lambda edited=edited: diff(snapshot, edited),
                "both": lambda edited=edited: plan(diff(snapshot, edited)),
                "cold": lambda edited=edited: (forget_snapshot_digests(), plan(diff(snapshot, edited))),
                "digests": lambda planned=planned: [document_digest(snapshot.documents[i]) for i in planned],
                "plan": lambda changes=changes: plan(changes),
                "walked": lambda changes=changes: _walked_plan(changes),
            }
        )
        assert _walked_plan(changes).plan_id == plan(changes).plan_id
        baseline = medians["compare"]
        size = (
            f"{fraction:.0%} edited: {len(original):,} instances x {attributes} attributes, {len(changes):,} "
            f"changes ({cells:,} cells); median of 3, run round-robin, each after a full gc.collect()"
        )
        goal = "goal <= 1" if fraction >= 0.1 else "goal <= 0.5"
        yield Measurement(
            f"diff vs DataFrame.compare, {fraction:.0%} edited", medians["diff"], baseline, "s", note=size
        )
        yield Measurement(
            f"diff + plan vs DataFrame.compare, {fraction:.0%} edited",
            medians["both"],
            baseline,
            "s",
            note=f"{goal}; {size}",
        )
        yield Measurement(
            f"diff + plan, first plan of the snapshot (digests not yet remembered) vs DataFrame.compare, "
            f"{fraction:.0%} edited",
            medians["cold"],
            baseline,
            "s",
            note=f"{goal}; the documents' digests (planned_on) computed in the run, as a first plan does",
        )
        yield Measurement(
            f"what PlainSets buys: plan, the payload groups' sets checked at once vs each group walked by "
            f"check_updates, {fraction:.0%} edited",
            medians["plan"],
            medians["walked"],
            "s",
            ratio_is="baseline/ours",
            note=f"ratio = the speed-up of updates.PlainSets; the same plan (plan_id) both ways; {size}",
        )
        yield Measurement(
            f"part of plan's floor: document_digest of the {len(planned):,} planned documents vs "
            f"DataFrame.compare, {fraction:.0%} edited",
            medians["digests"],
            baseline,
            "s",
            note="the plan records each document's digest (planned_on): computed once per snapshot "
            "(snapshot_digest), so only a first plan pays it",
        )
