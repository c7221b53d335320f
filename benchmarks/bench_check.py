"""``curation.check`` over a large datastore against building the frames it reads (flatten), in the same run.

Full size (scale 1.0): about 100,000 instances: copies of the reference 588-slice CT (``tests/data/reference``),
one image set each, under fresh UIDs, one patient per 4 image sets. Planted in every tenth image set: a slice
removed (a gap), SliceThickness dropped from one slice, a StudyDate written ``YYYY-MM-DD``, and every fifth
patient's last image set gets another PatientName (a patient conflict); each must be found. The baseline is
``Snapshot.from_documents`` plus ``cached_flattened()`` of the same documents (what a fetch costs after the
download), so the ratio says what the checks add to having the frames. Documents are built outside the timings.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks import Measurement, best_of

FULL_INSTANCES = 100_000
REFERENCE = Path(__file__).parents[1] / "tests" / "data" / "reference" / "ct-588-instances.json"


def documents(instances: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The generated documents and the number of each planted defect."""
    source = json.loads(REFERENCE.read_text())
    ((_, series),) = source["Study"]["Series"].items()
    nodes = list(series["Instances"].values())
    count = max(1, instances // len(nodes))
    planted = {"gap": 0, "missing": 0, "date": 0, "patient": 0}
    docs = []
    for number in range(count):
        study, series_uid = f"2.25.77.{number + 1}", f"2.25.77.{number + 1}.1"
        patient = number // 4
        name = "OTHER^NAME" if number % 4 == 3 and patient % 5 == 0 else f"PATIENT^{patient}"
        planted["patient"] += name == "OTHER^NAME"
        instances_of = {}
        for position, node in enumerate(nodes):
            copied = copy.deepcopy(node)
            sop = f"{series_uid}.{position + 1}"
            copied["DICOM"]["SOPInstanceUID"] = copied["DICOM"]["MediaStorageSOPInstanceUID"] = sop
            instances_of[sop] = copied
        plant = number % 10 == 0
        if plant:
            del instances_of[f"{series_uid}.300"]
            instances_of[f"{series_uid}.100"]["DICOM"].pop("SliceThickness")
            planted["gap"] += 1
            planted["missing"] += 1
            planted["date"] += 1
        docs.append(
            {
                "SchemaVersion": "1.1",
                "DatastoreID": "0" * 32,
                "ImageSetID": f"{number:032x}",
                "Patient": {"DICOM": {**source["Patient"]["DICOM"], "PatientID": f"P{patient}", "PatientName": name}},
                "Study": {
                    "DICOM": {
                        **source["Study"]["DICOM"],
                        "StudyInstanceUID": study,
                        "StudyDate": "2023-04-17" if plant else "20230417",
                    },
                    "Series": {
                        series_uid: {
                            "DICOM": {**series["DICOM"], "SeriesInstanceUID": series_uid},
                            "Instances": instances_of,
                        }
                    },
                },
            }
        )
    return docs, planted


def run(scale: float) -> Iterable[Measurement]:
    import curation
    from curation.frames.snapshot import Snapshot

    docs, planted = documents(max(588, int(FULL_INSTANCES * scale)))
    versions = {d["ImageSetID"]: "1" for d in docs}

    def snapshot() -> Snapshot:
        made = Snapshot.from_documents(docs, datastore_id="0" * 32, version_ids=versions)
        made.cached_flattened()
        return made

    baseline = best_of(snapshot, repeat=2)
    checked = snapshot()
    findings = curation.check(checked)
    counts = findings.groupby(["check", "attribute"]).size()
    assert counts.get(("slice_geometry", "ImagePositionPatient"), 0) == planted["gap"], counts
    assert counts.get(("missing_in_series", "SliceThickness"), 0) == planted["missing"], counts
    assert counts.get(("invalid_value", "StudyDate"), 0) == min(planted["date"], 1), counts  # one distinct value
    assert counts.get(("patient_conflict", "PatientName"), 0) == planted["patient"], counts
    ours = best_of(lambda: curation.check(checked), repeat=2)
    note = (
        f"{len(checked.instances):,} instances in {len(docs):,} image sets, {len(findings):,} findings "
        f"(every planted defect found)"
    )
    yield Measurement("check vs building the frames it reads", ours, baseline, "s", note=note)
