"""Issue 4 flatten performance: throughput vs the bare parse and vs json_normalize; frame memory vs JSON bytes.

Inputs: ``tests/data/reference/ct-588-instances.json`` and a generated datastore of 100 image sets of 500
instances (50,000 instances at scale 1; ``scale`` shrinks the number of image sets) made by varying the CT
reference: new UIDs and values, and a realistic mix (series with BodyPartExamined, private tags with
DICOMVRs, null values, sequences on some instances, multi-frame instances).

Every throughput includes parsing the bytes (``orjson.loads``), as a fetch must: ours is
``flatten_many([orjson.loads(b) for b in blobs])`` (studies, series, instances and frames level frames,
lossless); the floor is ``orjson.loads`` alone. Two naive baselines, ``json.loads`` + ``pandas.json_normalize``:

- "DICOM dicts only" (``naive``): json_normalize of each series' pre-extracted instance ``DICOM`` dicts, then one
  ``concat``. Flat dicts, pandas' fast path; it drops DICOMVRs, frames and the series/study levels (lossy).
- "literal" (``naive_literal``): what a user writes without knowing the structure: json_normalize of the
  instance nodes as they are (nested ``DICOM`` -> ``DICOM.X`` columns, ``DICOMVRs.X``, ``ImageFrames`` left a
  list column: json_normalize does not expand lists), of the series nodes' ``DICOM`` and of the Patient/Study
  ``DICOM``, then both joined onto the instances (``merge``), the way a user gets the levels we give. Still
  lossy (null vs absent, no frames table).

Ours is also measured with the wide view (``wide_view``: every level joined at instance level), the
counterpart of the literal path's joined frame.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
import pandas as pd

from benchmarks import Measurement, best_of
from curation.frames.flattening import flatten_many, wide_view

REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "reference"
INSTANCES_PER_SET = 500
IMAGE_SETS = 100


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
        study = {"DICOM": dict(template["Study"]["DICOM"], StudyInstanceUID=study_uid,
                               AccessionNumber=f"ACC{number:06d}", StudyDate=f"2023{1 + number % 12:02d}17")}
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
                node["ImageFrames"] = node["ImageFrames"] * 2
                dicom["NumberOfFrames"] = "2"
            nodes[sop_uid] = node
        study["Series"] = {series_uid: {"DICOM": series_dicom, "Instances": nodes}}
        document = {"SchemaVersion": "1.1", "DatastoreID": template["DatastoreID"], "ImageSetID": f"{number:032x}",
                    "Patient": patient, "Study": study}
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
        studies.append({"ImageSetID": image_set_id, "Patient": document["Patient"]["DICOM"],
                        "Study": document["Study"]["DICOM"]})
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


def parse_only(blobs: list[bytes]) -> list:
    return [orjson.loads(blob) for blob in blobs]


def _measure(label: str, blobs: list[bytes], repeat: int) -> Iterator[Measurement]:
    count = len(ours(blobs))
    size = sum(map(len, blobs))
    t_ours = best_of(lambda: ours(blobs), repeat)
    t_parse = best_of(lambda: parse_only(blobs), repeat)
    t_naive = best_of(lambda: naive(blobs), max(1, repeat - 1))
    note = f"{count} instances, {size / 1e6:.1f} MB JSON"
    yield Measurement(f"flatten {label} vs orjson.loads", count / t_ours, count / t_parse, "instances/s",
                      "baseline/ours", f"goal <= 3; {note}")
    yield Measurement(f"flatten {label} vs json.loads+json_normalize (naive, DICOM dicts only)", count / t_ours,
                      count / t_naive, "instances/s", "ours/baseline",
                      f"goal >= 5; baseline: instance DICOM dicts only, no VRs/frames/series/study; {note}")
    t_literal = best_of(lambda: naive_literal(blobs), max(1, repeat - 1))
    yield Measurement(f"flatten {label} vs json.loads+json_normalize (literal: nodes as they are, levels joined)",
                      count / t_ours, count / t_literal, "instances/s", "ours/baseline",
                      f"goal >= 5; baseline: instance nodes (DICOM.X, DICOMVRs.X, ImageFrames as list) + series "
                      f"+ Patient/Study DICOM merged on; ours: 4 level frames, no join; {note}")
    t_wide = best_of(lambda: ours_wide(blobs), repeat)
    yield Measurement(f"flatten + wide_view {label} vs json.loads+json_normalize (literal, levels joined)",
                      count / t_wide, count / t_literal, "instances/s", "ours/baseline",
                      f"both sides build the joined instance-level frame; {note}")
    t_shared = best_of(lambda: ours(blobs, copy=False), repeat)
    yield Measurement(f"flatten copy=False (Snapshot path) {label} vs orjson.loads", count / t_shared,
                      count / t_parse, "instances/s", "baseline/ours", "cells share lists with the documents")
    memory = ours(blobs).memory_usage(deep=True).sum()
    yield Measurement(f"instances frame memory {label}", memory, size, "bytes", "ours/baseline",
                      "memory_usage(deep=True) / JSON bytes; goal <= 2")


def run(scale: float) -> Iterable[Measurement]:
    """Measurements on the CT reference and on the generated datastore (``scale`` shrinks the latter)."""
    reference = [(REFERENCE / "ct-588-instances.json").read_bytes()]
    yield from _measure("ct-588", reference, 5)
    image_sets = max(2, round(IMAGE_SETS * scale))
    yield from _measure(f"datastore {image_sets}x{INSTANCES_PER_SET}", generate_datastore(image_sets), 3)
