"""Consistency across image sets: one patient, one study, told the same way in every image set that holds them.

AHI keeps the Patient and Study levels per image set (``studies`` has one row per image set), and forces
consistency only among the primary image sets of one study; copies, imports that landed non-primary and
different studies of one patient can disagree. Values are compared as PS3.5 compares them
(``curation.curate.checks.context``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from curation.curate.checks.context import CheckContext, plain, plurality, value_counts
from curation.curate.checks.findings import Finding, counted
from curation.model.missing import NULL

PATIENT_KEY = ("PatientID", "IssuerOfPatientID")


def _empty_like(value: object) -> bool:
    return value is None or value is NULL or value == ""


def patient_keys(context: CheckContext) -> pd.Series:
    """Per ``studies`` row, its patient's key as text: the PatientID, with `` (issuer X)`` when an
    IssuerOfPatientID is present; None where the PatientID is absent or empty (no patient to group by)."""
    studies = context.frame("studies")
    if "PatientID" not in studies.columns:
        return pd.Series([None] * len(studies), index=studies.index, dtype=object)
    ids = context.text_values("studies", "PatientID")
    keys = ids.astype(object).where(ids.notna() & (ids.astype(object) != ""), None)
    if "IssuerOfPatientID" in studies.columns:
        issuers = context.text_values("studies", "IssuerOfPatientID").astype(object)
        known = keys.notna() & issuers.notna() & (issuers != "")
        keys = keys.where(~known, keys.astype(str) + " (issuer " + issuers.astype(str) + ")")
    return keys.astype(object).where(keys.notna(), None)


def _conflicted(groups: np.ndarray, values: pd.Series) -> np.ndarray:
    """The group codes (>= 0) in which ``values`` take more than one value (absent counts as one)."""
    codes, _ = pd.factorize(values.astype(object), use_na_sentinel=False)
    pairs = pd.DataFrame({"group": groups, "value": codes})[groups >= 0].drop_duplicates()
    sizes = pairs.groupby("group").size()
    return sizes.index[sizes.to_numpy() > 1].to_numpy()


def _grouped(context: CheckContext, keys: pd.Series, columns: list[str]) -> Iterator[tuple[str, str, pd.Series]]:
    """(key, column, the rows' compared values) for each group of ``keys`` whose ``column`` disagrees."""
    groups, labels = pd.factorize(keys.astype(object), use_na_sentinel=True)
    if not (groups >= 0).any():
        return
    for column in columns:
        values = context.text_values("studies", column)
        for group in _conflicted(groups, values):
            yield str(labels[group]), column, values[groups == group]


def _conflict(check: str, level: str, noun: str, key: str, column: str, values: pd.Series) -> Finding:
    counts = value_counts(values)
    present = [v for v, _ in counts if v is not None]
    only_empty = all(_empty_like(v) for v in present)
    found, best = plurality(counts, skip=(None, NULL, ""))
    if not found and only_empty:
        found, best = plurality(counts, skip=(None,))
    image_sets = tuple(sorted(str(i) for i in values.index))
    detail = f"{column} differs across the {len(image_sets)} image sets of {noun} {key}: {counted(counts)}" + (
        f"; the majority value is {best!r}" if found else "; no value has a majority: give one (lookup)"
    )
    return Finding(
        check=check,
        severity="info" if only_empty else "error",
        level=level,
        key=key,
        attribute=column,
        image_sets=image_sets,
        found=counts,
        rows=image_sets,
        fix="majority" if found else "lookup",
        suggested=plain(best) if found else None,
        detail=detail,
    )


def patient_conflict(context: CheckContext) -> list[Finding]:
    """**patient_conflict** (error). The ``studies`` rows (image sets) grouped by patient, (PatientID,
    IssuerOfPatientID) with a PatientID present and not empty; for every Patient-level column other than the
    key, a finding where the group holds two or more distinct values (absent counts as one: a value in one
    image set and absent in another is a conflict). Absent against present-empty only is ``info``.

    Fix: ``majority`` (the value with strictly the most image sets, absent and empty left out) written to every
    image set of the patient, else ``lookup`` (a person decides). AHI refuses Patient-level updates on primary
    image sets: applying these fixes there uses ``plan(..., primary="promote")``.
    """
    columns = [
        c for c in context.dicom_columns("studies") if context.level("studies", c) == "Patient" and c not in PATIENT_KEY
    ]
    keys = patient_keys(context)
    return [
        _conflict("patient_conflict", "Patient", "patient", key, column, values)
        for key, column, values in _grouped(context, keys, columns)
    ]


def study_conflict(context: CheckContext) -> list[Finding]:
    """**study_conflict** (error). The ``studies`` rows grouped by StudyInstanceUID (present, not empty); for
    every Study-level column other than the UID (StudyDate, AccessionNumber, StudyDescription, PatientAge ...),
    a finding where the study's image sets hold two or more distinct values, exactly as ``patient_conflict``.

    Fix: ``majority``, else ``lookup``, written to every image set of the study (Study-level updates are
    accepted on primary image sets).
    """
    studies = context.frame("studies")
    if "StudyInstanceUID" not in studies.columns:
        return []
    uids = context.text_values("studies", "StudyInstanceUID").astype(object)
    keys = uids.where(uids.notna() & (uids != ""), None)
    columns = [
        c
        for c in context.dicom_columns("studies")
        if context.level("studies", c) == "Study" and c != "StudyInstanceUID"
    ]
    return [
        _conflict("study_conflict", "Study", "study", key, column, values)
        for key, column, values in _grouped(context, keys, columns)
    ]


def study_under_several_patients(context: CheckContext) -> list[Finding]:
    """**study_under_several_patients** (error). A StudyInstanceUID whose image sets name more than one patient:
    their (PatientID, IssuerOfPatientID) differ, an absent or empty PatientID counting as a patient of its own.
    ``attribute`` is PatientID, ``values`` the patients with their image-set counts.

    Fix: ``lookup`` only (which patient the study belongs to is a clinical fact): the PatientID given for the
    StudyInstanceUID is written to every image set of the study (Patient level: ``primary="promote"`` on
    primary image sets); a ``patient_conflict`` may then show what else to align.
    """
    studies = context.frame("studies")
    if "StudyInstanceUID" not in studies.columns:
        return []
    uids = context.text_values("studies", "StudyInstanceUID").astype(object)
    keys = uids.where(uids.notna() & (uids != ""), None)
    patients = patient_keys(context)
    ids = context.text_values("studies", "PatientID").astype(object) if "PatientID" in studies.columns else patients
    patients = patients.where(patients.notna(), ids.where(ids.notna(), None))
    groups, labels = pd.factorize(keys, use_na_sentinel=True)
    findings = []
    for group in _conflicted(groups, patients):
        rows = patients[groups == group]
        counts = value_counts(rows)
        image_sets = tuple(sorted(str(i) for i in rows.index))
        findings.append(
            Finding(
                check="study_under_several_patients",
                severity="error",
                level="Patient",
                key=str(labels[group]),
                attribute="PatientID",
                image_sets=image_sets,
                found=counts,
                rows=image_sets,
                fix="lookup",
                detail=f"study {labels[group]} is held under {len(counts)} patients: {counted(counts)}; "
                "give the right PatientID (lookup)",
            )
        )
    return findings
