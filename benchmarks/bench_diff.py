"""diff (and diff + plan) of an edited instances frame against ``pandas.DataFrame.compare`` on the same frames.

Full size (scale 1.0): 100,000 instances (1,000 image sets of 100) x 60 instance-level attributes of every
kind AHI encodes (text, numbers, multi-valued arrays), 1% of the attribute cells edited with valid new values.
The baseline ``DataFrame.compare`` only finds the differing cells; ``diff`` also coerces, validates and
addresses each change, ``plan`` builds the request payloads. The snapshot is marked non-primary so that the
edits are valid. Frames are built once (outside the timings) from generated documents.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from benchmarks import Measurement, best_of

FULL_INSTANCES = 100_000
PER_IMAGE_SET = 100
EDIT_FRACTION = 0.01

KEYWORDS = tuple("""InstanceNumber ImageType SOPClassUID AcquisitionDate ContentDate AcquisitionTime ContentTime
AcquisitionNumber ImagePositionPatient ImageOrientationPatient SliceLocation SliceThickness PixelSpacing Rows Columns
BitsAllocated BitsStored HighBit PixelRepresentation SamplesPerPixel PhotometricInterpretation WindowCenter
WindowWidth RescaleIntercept RescaleSlope RescaleType KVP XRayTubeCurrent ExposureTime Exposure ConvolutionKernel
FilterType GeneratorPower FocalSpots DataCollectionDiameter ReconstructionDiameter DistanceSourceToDetector
DistanceSourceToPatient GantryDetectorTilt TableHeight RotationDirection PatientOrientation ImageComments
LossyImageCompression BurnedInAnnotation SpecificCharacterSet InstanceCreationDate InstanceCreationTime
AcquisitionDateTime ScanOptions SpiralPitchFactor CTDIvol RevolutionTime SingleCollimationWidth
TotalCollimationWidth TableSpeed TableFeedPerRotation WindowCenterWidthExplanation ContentQualification
LargestImagePixelValue""".split())  # noqa: SIM905


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
            nodes[sop] = {"DICOM": dicom, "ImageFrames": [{"ID": f"{number:032x}"}]}
            number += 1
        docs.append({
            "SchemaVersion": "1.1", "DatastoreID": "0" * 32, "ImageSetID": image_set,
            "Patient": {"DICOM": {"PatientID": f"P{s}", "PatientName": f"NAME^{s}"}},
            "Study": {"DICOM": {"StudyInstanceUID": f"1.2.3.{s}", "StudyDescription": "bench"},
                      "Series": {series_uid: {"DICOM": {"SeriesInstanceUID": series_uid, "Modality": "CT"},
                                              "Instances": nodes}}},
        })
    return docs


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
        values = edited[column].to_numpy(dtype=object).copy()
        for r in rows[cols == c]:
            values[r] = _value(vr, vm, int(r) + int(c), 1 + int(r) % 5)
        edited[column] = values
    return edited


def run(scale: float) -> Iterable[Measurement]:
    from curation.curate.differ import diff
    from curation.frames.snapshot import Snapshot

    try:
        from curation.curate.planner import plan
    except ImportError:  # pragma: no cover - plan.py is another helper's module
        plan = None
    instances = max(PER_IMAGE_SET, int(FULL_INSTANCES * scale))
    docs = documents(instances)
    snapshot = Snapshot.from_documents(docs, datastore_id="0" * 32, version_ids={d["ImageSetID"]: "1" for d in docs})
    with contextlib.suppress(AttributeError):  # a read-only property in a later Snapshot
        snapshot.primary = {d["ImageSetID"]: False for d in docs}
    original = snapshot.instances
    edited = edit(original, EDIT_FRACTION)
    attributes = len([c for c in original.columns if not c.startswith("@")])
    baseline = best_of(lambda: original.compare(edited), repeat=2)
    cells = original.compare(edited).notna().sum().sum() // 2
    changes = diff(snapshot, edited)
    assert changes.problems.empty, changes.problems.head()
    ours = best_of(lambda: diff(snapshot, edited), repeat=2)
    size = f"{len(original):,} instances x {attributes} attributes, {len(changes):,} changes ({cells:,} cells)"
    yield Measurement("diff vs DataFrame.compare", ours, baseline, "s", note=size)
    if plan is not None:
        both = best_of(lambda: plan(diff(snapshot, edited)), repeat=2)
        yield Measurement("diff + plan vs DataFrame.compare", both, baseline, "s", note=size)
