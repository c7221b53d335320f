"""What CopyImageSet does to documents, as pure functions: the embedded service runs them and the planner
previews copies and promotions with them, so the two cannot disagree.

Sources: the HealthImaging Developer Guide, "Copying an image set": "You can copy into a *new* image set to split
an image set, as well as to create a separate copy. You can also copy into an *existing* image set to merge two
image sets together"; a subset of SOP instances is named by ``copiableAttributes`` ("The JSON string used to
specify a subset of SOP Instances to copy from source to destination image set", botocore's model); the copy
"requires SOP Instance UIDs to be unique in an image set" and, "unless the optional force parameter is provided,
requires the sourceImageSet and destinationImageSet to have consistent metadata" (the guide's translated copies,
the English one being cut there); with ``force`` "the Patient, Study and Series metadata are not changed in the
destinationImageSet" (the destination's values win).

Choices where the guide is silent (strict reading, /work/team/primary-design.md D3): a copy keeps the source's
``ImageFrames`` (IDs and checksums) unchanged; an instance the destination already holds (the same SOPInstanceUID
anywhere in it) is refused with ValidationException rather than overwritten.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from curation.model.document import iter_instances
from curation.model.errors import AHIError

__all__ = ["copiable_attributes", "merge", "select"]


def _invalid(message: str) -> AHIError:
    return AHIError("ValidationException", message)


def copiable_attributes(instances: dict[str, list[str] | None]) -> str:
    """The ``copiableAttributes`` JSON naming ``{series UID: [SOP UIDs] (None: the whole series)}``."""
    series: dict[str, dict[str, Any]] = {
        uid: ({} if sops is None else {"Instances": {sop: {} for sop in sops}}) for uid, sops in instances.items()
    }
    return orjson.dumps({"SchemaVersion": 1.1, "Study": {"Series": series}}).decode()


def select(document: dict[str, Any], copiable: str | None) -> dict[str, Any]:
    """The part of ``document`` named by ``copiableAttributes`` (all of it when None), as a new document."""
    selected = copy.deepcopy(document)
    if copiable is None:
        return selected
    try:
        wanted = orjson.loads(copiable)
    except orjson.JSONDecodeError as exc:
        raise _invalid(f"copiableAttributes is not valid JSON: {exc}") from exc
    study = wanted.get("Study") if isinstance(wanted, dict) else None
    series_wanted = study.get("Series") if isinstance(study, dict) else None
    if not isinstance(series_wanted, dict) or not series_wanted:
        raise _invalid('copiableAttributes must name series as {"Study": {"Series": {"<uid>": {...}}}}')
    source_series = selected["Study"].get("Series", {})
    kept: dict[str, Any] = {}
    for series_uid, spec in series_wanted.items():
        if series_uid not in source_series:
            raise _invalid(f"Series {series_uid} does not exist in the source image set")
        node = source_series[series_uid]
        instances = spec.get("Instances") if isinstance(spec, dict) else None
        if instances is not None and not isinstance(instances, dict):
            raise _invalid(f"Instances of series {series_uid} must be an object keyed by SOPInstanceUID")
        if instances:
            missing = [uid for uid in instances if uid not in node.get("Instances", {})]
            if missing:
                raise _invalid(f"Instance {missing[0]} does not exist in series {series_uid} of the source")
            node = {**node, "Instances": {uid: node["Instances"][uid] for uid in instances}}
        kept[series_uid] = node
    selected["Study"]["Series"] = kept
    return selected


def merge(destination: dict[str, Any], selected: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``selected`` merged into ``destination`` (the destination's values win) and the disagreements
    (``"Patient PatientName"``, ``"Series <uid> Modality"`` ...) that make the copy fail unless ``force``.

    Raises ValidationException naming the UID when an instance of ``selected`` is already in ``destination``.
    """
    held = {sop for _, sop, _ in iter_instances(destination)}
    for _, sop, _ in iter_instances(selected):
        if sop in held:
            raise _invalid(
                f"SOPInstanceUID {sop} is already in the destination image set: SOP Instance UIDs must "
                "be unique in an image set"
            )
    merged = copy.deepcopy(destination)
    problems: list[str] = []

    def compare(label: str, ours: dict[str, Any], theirs: dict[str, Any]) -> None:
        problems.extend(f"{label} {key}" for key in sorted(set(ours) & set(theirs)) if ours[key] != theirs[key])

    compare("Patient", merged["Patient"].get("DICOM", {}), selected["Patient"].get("DICOM", {}))
    compare("Study", merged["Study"].get("DICOM", {}), selected["Study"].get("DICOM", {}))
    series = merged["Study"].setdefault("Series", {})
    for series_uid, node in selected["Study"].get("Series", {}).items():
        if series_uid not in series:
            series[series_uid] = copy.deepcopy(node)
            continue
        compare(f"Series {series_uid}", series[series_uid].get("DICOM", {}), node.get("DICOM", {}))
        series[series_uid].setdefault("Instances", {}).update(copy.deepcopy(node.get("Instances", {})))
    return merged, problems
