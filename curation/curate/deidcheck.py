"""``Deidentification.verify(after)``: what the profile removes or replaces, looked for in the fetched result.

Walks every document of ``after`` (top-level attributes, sequence items at any depth, series and instance node
keys) and resolves each attribute with Table E.1-1 under the run's options (``Resolver``: the table, not the
code that made the edits). A finding (image set, level, path, code, rule, detail) is:

- an attribute the table resolves to X that is present (private tags included, unless kept as safe private);
- a U attribute, or a series/instance key, holding one of the snapshot's old UIDs;
- a Z/D attribute (or compound code) still holding one of its old values (dummies and pseudonyms aside);
- an old identifier of the patient (PatientID, name parts of 3+ characters, AccessionNumber, birth date) found
  as a word in any remaining text value (a leak into a kept attribute);
- PatientIdentityRemoved not "YES", or DeidentificationMethodCodeSequence without PS3.15's 113100 code.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from curation.model import dictionary as dicom

if TYPE_CHECKING:
    from curation.curate.deidentification import Deidentification

COLUMNS = ["ImageSetID", "level", "path", "code", "rule", "detail"]
_WORD_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT", "AE", "DA", "DT"})


def walk(dicom_node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) of every attribute of a DICOM node, sequence items included (``Seq[0].Key``)."""
    for key, value in dicom_node.items():
        yield path + key, key, value
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for n, item in enumerate(value):
                yield from walk(item, f"{path}{key}[{n}].")


def nodes(document: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any], Mapping[str, str]]]:
    """(level, DICOM node, DICOMVRs) of a document's Patient, Study, Series and Instance nodes."""
    yield "Patient", document["Patient"]["DICOM"], {}
    yield "Study", document["Study"]["DICOM"], {}
    for series in document["Study"]["Series"].values():
        yield "Series", series.get("DICOM") or {}, {}
        for instance in series["Instances"].values():
            yield "Instance", instance.get("DICOM") or {}, instance.get("DICOMVRs") or {}


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _old_values(result: Deidentification) -> tuple[dict[int, set[str]], set[str], dict[str, set[str]]]:
    """From the snapshot before: values per tag, every old UID, and per patient key its identifier words."""
    from curation.curate.deidentification import normalize_text

    values: dict[int, set[str]] = defaultdict(set)
    for document in result._before.documents.values():
        for _, node, _ in nodes(document):
            for _, key, value in walk(node):
                tag = dicom.tag_of(key)
                if tag is not None:
                    values[tag].update(t for t in _texts(value) if t.strip())
    old_uids = set(result.mapping.loc[result.mapping["kind"] == "UID", "old"])
    words: dict[str, set[str]] = defaultdict(set)
    for kind, old, ids in zip(result.mapping["kind"], result.mapping["old"], result.mapping["image_sets"],
                              strict=True):
        parts = re.split(r"[\^=\s]+", old) if kind == "PatientName" else [old]
        if kind in ("PatientID", "PatientName", "AccessionNumber"):
            for image_set in ids:
                words[image_set].update(normalize_text(p) for p in parts if len(normalize_text(p)) >= 3)
    for image_set, document in result._before.documents.items():
        birth = document["Patient"]["DICOM"].get("PatientBirthDate")
        if isinstance(birth, str) and re.fullmatch(r"\d{8}", birth.strip()):
            words[image_set].add(birth.strip())
    return values, old_uids, words


def verify(result: Deidentification, after: Any) -> pd.DataFrame:
    """The findings in snapshot ``after`` (see the module docstring); an empty frame means verified."""
    from curation.curate.deidentification import DUMMY, normalize_text

    values, old_uids, words_by_set = _old_values(result)
    new_values = set(result.mapping["new"])
    dummies = {v for v in DUMMY.values() if isinstance(v, str)}
    resolver = result._resolver
    findings: list[dict[str, Any]] = []
    sources = _sources(result, after)
    for image_set, document in after.documents.items():
        words = words_by_set.get(sources.get(image_set, image_set), set())

        def find(level: str, path: str, code: str, rule: str, detail: str, image_set: str = image_set) -> None:
            findings.append({"ImageSetID": image_set, "level": level, "path": path, "code": code, "rule": rule,
                             "detail": detail})

        for level, node, vrs in nodes(document):
            for path, key, value in walk(node):
                tag = dicom.tag_of(key)
                vr = vrs.get(key) or dicom.vr_of(key)
                res = resolver.resolve(key, vr)
                applied = res.applied
                if dicom.is_private(key) and applied == "C":
                    applied = "K" if result._safe is not None and _safe_kept(result, key, node, vr) else "X"
                texts = _texts(value)
                if applied == "X":
                    find(level, path, res.code or "X", res.rule, "the profile removes it (X) but it is present")
                    continue
                if any(t in old_uids for t in texts):
                    find(level, path, res.code, res.rule, "an old UID remains")
                if applied in ("Z", "D") and tag is not None:
                    kept = [t for t in texts if t in values[tag] and t not in dummies and t not in new_values]
                    if kept:
                        find(level, path, res.code, res.rule, f"action {res.code} but the old value is kept")
                if vr in _WORD_VRS and words:
                    padded = " ".join(f" {normalize_text(t)} " for t in texts)
                    leaked = sorted(w for w in words if f" {w} " in padded)
                    if leaked:
                        find(level, path, res.code or "K", res.rule, "an old identifier of the patient is in the "
                             "text")
        for series_uid, series in document["Study"]["Series"].items():
            if series_uid in old_uids:
                find("Series", "SeriesInstanceUID (key)", "U", "table", "an old UID remains")
            for sop in series["Instances"]:
                if sop in old_uids:
                    find("Instance", "SOPInstanceUID (key)", "U", "table", "an old UID remains")
        findings.extend(_marker_findings(image_set, document))
    return pd.DataFrame(findings, columns=COLUMNS)


def _sources(result: Deidentification, after: Any) -> dict[str, str]:
    """after image set -> the before image set it comes from (same ID, or the same mapped StudyInstanceUID)."""
    before = result._before
    out = {i: i for i in after.documents if i in before.documents}
    study_of = {}
    for image_set, document in before.documents.items():
        old = document["Study"]["DICOM"].get("StudyInstanceUID")
        study_of[old] = image_set
    uid_map = dict(zip(result.mapping.loc[result.mapping["kind"] == "UID", "new"],
                       result.mapping.loc[result.mapping["kind"] == "UID", "old"], strict=True))
    for image_set, document in after.documents.items():
        if image_set not in out:
            old = uid_map.get(document["Study"]["DICOM"].get("StudyInstanceUID"))
            if old in study_of:
                out[image_set] = study_of[old]
    return out


def _safe_kept(result: Deidentification, key: str, node: Mapping[str, Any], vr: str | None) -> bool:
    from curation.curate.deidentification import creator_key

    assert result._safe is not None
    creator = node.get(creator_key(key) or key)
    return result._safe.keeps(key, creator if isinstance(creator, str) else None, vr)


def _marker_findings(image_set: str, document: Mapping[str, Any]) -> list[dict[str, Any]]:
    patient = document["Patient"]["DICOM"]
    out = []
    if patient.get("PatientIdentityRemoved") != "YES":
        out.append({"ImageSetID": image_set, "level": "Patient", "path": "PatientIdentityRemoved", "code": "",
                    "rule": "PS3.15 E.1.1", "detail": "PatientIdentityRemoved is not YES"})
    codes = patient.get("DeidentificationMethodCodeSequence") or []
    if not any(isinstance(i, dict) and i.get("CodeValue") == "113100" for i in codes):
        out.append({"ImageSetID": image_set, "level": "Patient", "path": "DeidentificationMethodCodeSequence",
                    "code": "", "rule": "PS3.15 E.1.1", "detail": "no 113100 (Basic Profile) code item"})
    return out
