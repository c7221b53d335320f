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
from dataclasses import dataclass
from typing import Any

import pandas as pd

from curation.curate.confidentiality import DUMMY, Resolution, Resolver, SafePrivate, creator_key
from curation.frames.snapshot import Snapshot
from curation.model import dictionary as dicom


def normalize_text(text: str) -> str:
    """Case-folded, punctuation-insensitive text: runs of non-alphanumerics become one space."""
    return " ".join(re.split(r"[^0-9a-z]+", text.casefold())).strip()


COLUMNS = ["ImageSetID", "level", "path", "code", "rule", "detail"]
DUMMIES = frozenset(v for v in DUMMY.values() if isinstance(v, str))
#: Code item attributes: terms of controlled vocabularies, not free text (no identifier search in them).
CODED = frozenset(
    {"CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning", "LongCodeValue", "URNCodeValue"}
)
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


@dataclass(frozen=True)
class _Before:
    """What verification knows of the snapshot before: values per tag, old UIDs, identifier words per image set."""

    values: Mapping[int, set[str]]
    old_uids: set[str]
    new_values: set[str]
    words: Mapping[str, set[str]]
    sources: Mapping[str, str]


def _before(before: Snapshot, mapping: pd.DataFrame, after: Snapshot) -> _Before:
    values: dict[int, set[str]] = defaultdict(set)
    for document in before.documents.values():
        for _, node, _ in nodes(document):
            for _, key, value in walk(node):
                tag = dicom.tag_of(key)
                if tag is not None:
                    values[tag].update(t for t in _texts(value) if t.strip())
    uids = mapping[mapping["kind"] == "UID"]
    words: dict[str, set[str]] = defaultdict(set)
    for kind, old, ids in zip(mapping["kind"], mapping["old"], mapping["image_sets"], strict=True):
        if kind in ("PatientID", "PatientName", "AccessionNumber"):
            parts = re.split(r"[\^=\s]+", old) if kind == "PatientName" else [old]
            for image_set in ids:
                words[image_set].update(normalize_text(p) for p in parts if len(normalize_text(p)) >= 3)
    for image_set, document in before.documents.items():
        birth = document["Patient"]["DICOM"].get("PatientBirthDate")
        if isinstance(birth, str) and re.fullmatch(r"\d{8}", birth.strip()):
            words[image_set].add(birth.strip())
    study_of = {d["Study"]["DICOM"].get("StudyInstanceUID"): i for i, d in before.documents.items()}
    new_to_old = dict(zip(uids["new"], uids["old"], strict=True))
    sources = {}
    for image_set, document in after.documents.items():
        old = new_to_old.get(document["Study"]["DICOM"].get("StudyInstanceUID"))
        sources[image_set] = image_set if image_set in before.documents else study_of.get(old, image_set)
    return _Before(values, set(uids["old"]), set(mapping["new"]), words, sources)


def verify(
    after: Snapshot, *, before: Snapshot, mapping: pd.DataFrame, resolver: Resolver, safe: SafePrivate | None
) -> pd.DataFrame:
    """The findings in snapshot ``after`` (see the module docstring); an empty frame means verified.

    ``before`` is the snapshot that was de-identified, ``mapping`` the run's old -> new table; an image set of
    ``after`` that is not in ``before`` (a research copy) is matched to its source by its mapped study UID.
    """
    known = _before(before, mapping, after)
    findings: list[dict[str, Any]] = []
    for image_set, document in after.documents.items():
        words = known.words.get(known.sources[image_set], set())
        for level, node, vrs in nodes(document):
            for path, key, value in walk(node):
                detail, res = _finding(key, value, node, vrs, known, words, resolver, safe)
                if detail:
                    findings.append(
                        {
                            "ImageSetID": image_set,
                            "level": level,
                            "path": path,
                            "code": res.code or res.applied,
                            "rule": res.rule,
                            "detail": detail,
                        }
                    )
        findings.extend(_key_findings(image_set, document, known.old_uids))
        findings.extend(_marker_findings(image_set, document))
    return pd.DataFrame(findings, columns=COLUMNS)


def _finding(
    key: str,
    value: Any,
    node: Mapping[str, Any],
    vrs: Mapping[str, str],
    known: _Before,
    words: set[str],
    resolver: Resolver,
    safe: SafePrivate | None,
) -> tuple[str, Resolution]:
    """What is wrong with one attribute ("" when nothing), and its resolution."""
    vr = vrs.get(key) or dicom.vr_of(key)
    res = resolver.resolve(key, vr)
    applied = res.applied
    if dicom.is_private(key) and applied == "C":
        creator = node.get(creator_key(key) or key)
        kept = safe is not None and safe.keeps(key, creator if isinstance(creator, str) else None, vr)
        applied = "K" if kept else "X"
    if applied == "X":
        return "the profile removes it (X) but it is present", res
    texts = _texts(value)
    if applied == "U" and any(t in known.old_uids for t in texts):
        return "an old UID remains", res
    tag = dicom.tag_of(key)
    if applied in ("Z", "D") and tag is not None:
        old = known.values.get(tag, set())
        if any(t in old and t not in DUMMIES and t not in known.new_values for t in texts):
            return f"action {res.code} but the old value is kept", res
    if vr in _WORD_VRS and words and key not in CODED:
        padded = " ".join(f" {normalize_text(t)} " for t in texts)
        if any(f" {w} " in padded for w in words):
            return "an old identifier of the patient is in the text", res
    return "", res


def _key_findings(image_set: str, document: Mapping[str, Any], old_uids: set[str]) -> list[dict[str, Any]]:
    out = []
    for series_uid, series in document["Study"]["Series"].items():
        keys = [("Series", "SeriesInstanceUID (key)", series_uid)]
        keys += [("Instance", "SOPInstanceUID (key)", sop) for sop in series["Instances"]]
        out += [
            {
                "ImageSetID": image_set,
                "level": level,
                "path": path,
                "code": "U",
                "rule": "table",
                "detail": "an old UID remains",
            }
            for level, path, uid in keys
            if uid in old_uids
        ]
    return out


def _marker_findings(image_set: str, document: Mapping[str, Any]) -> list[dict[str, Any]]:
    patient = document["Patient"]["DICOM"]
    out = []
    if patient.get("PatientIdentityRemoved") != "YES":
        out.append(
            {
                "ImageSetID": image_set,
                "level": "Patient",
                "path": "PatientIdentityRemoved",
                "code": "",
                "rule": "PS3.15 E.1.1",
                "detail": "PatientIdentityRemoved is not YES",
            }
        )
    codes = patient.get("DeidentificationMethodCodeSequence") or []
    if not any(isinstance(i, dict) and i.get("CodeValue") == "113100" for i in codes):
        out.append(
            {
                "ImageSetID": image_set,
                "level": "Patient",
                "path": "DeidentificationMethodCodeSequence",
                "code": "",
                "rule": "PS3.15 E.1.1",
                "detail": "no 113100 (Basic Profile) code item",
            }
        )
    return out
