"""``check(snapshot)``: what is inconsistent or invalid in a datastore, as one findings table.

It reads only the Snapshot (its frames, documents' DICOMVRs, ``primary`` flags and ``failures``): no client,
no request. Each check is a function of a ``CheckContext`` documented in its own docstring; in short:

============================  ========  ==============================================================  ============
check                         severity  finds                                                           fix
============================  ========  ==============================================================  ============
patient_conflict              error     a Patient-level attribute with different values across the       majority /
                                        image sets of one (PatientID, IssuerOfPatientID)                 lookup
study_conflict                error     a Study-level attribute with different values across the image   majority /
                                        sets of one StudyInstanceUID                                     lookup
study_under_several_patients  error     one StudyInstanceUID under more than one patient                 lookup
duplicate_sop_instance        error     a SOPInstanceUID in more than one image set (non-primary         None
                                        duplicates left out)
non_primary_duplicate         warning   a non-primary image set whose every instance (UID and pixel      delete_image
                                        checksums) is in primary image sets                              _set
invalid_value                 warning   a value that breaks its VR/VM (PS3.5 6.2), sequences included    reformat /
                                                                                                         None
missing_in_series             warning   an attribute most instances of a series (one SOP class, single-  fill / None
                                        or multi-frame) have and a few lack
empty_in_series               warning   an attribute most instances of a series hold with a value and a  fill / None
                                        few empty
slice_geometry                warning/  gaps, overlaps, duplicate slices, slices without a position;     None
                              info      another orientation (info)
instance_number               warning   InstanceNumbers that repeat or do not follow the slice positions renumber
unreadable                    error     an image set the snapshot could not fetch, parse or flatten      None
============================  ========  ==============================================================  ============

The table's columns are ``curation.curate.checks.findings``'. ``curation.fix(snapshot, findings)``
(``curation.curate.checks.fixes``) turns the fixable findings into edited frames for ``diff``, so a fix is
reviewed, planned and applied like any other edit, and ``check`` on a re-fetched snapshot no longer finds it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

import pandas as pd

from curation.curate.checks.completeness import empty_in_series, missing_in_series
from curation.curate.checks.consistency import patient_conflict, study_conflict, study_under_several_patients
from curation.curate.checks.context import CheckContext
from curation.curate.checks.duplicates import duplicate_sop_instance, non_primary_duplicate
from curation.curate.checks.findings import Finding, findings_frame
from curation.curate.checks.slices import instance_number, slice_geometry
from curation.curate.checks.validity import invalid_value
from curation.frames.snapshot import Snapshot
from curation.model.missing import is_absent


def unreadable(context: CheckContext) -> list[Finding]:
    """**unreadable** (error). Every row of ``snapshot.failures``: an image set that could not be fetched,
    parsed or flattened is in no frame, so no other check sees it; this says so. ``values`` holds the stage.
    Fix: None (fetch it again, or read the error)."""
    findings = []
    for row in context.snapshot.failures.to_dict("records"):
        image_set = "" if is_absent(row.get("ImageSetID")) else str(row.get("ImageSetID"))
        stage = str(row.get("stage"))
        findings.append(
            Finding(
                check="unreadable",
                severity="error",
                level="ImageSet",
                key=image_set,
                attribute=None,
                image_sets=(image_set,) if image_set else (),
                found=((stage, 1),),
                rows=(image_set,) if image_set else (),
                detail=f"image set {image_set or '(unknown)'} failed at {stage}: {row.get('error')}",
                discriminator=f"{stage}:{row.get('error')}",
            )
        )
    return findings


#: Every check, in the order the table lists them.
CHECKS: dict[str, Callable[[CheckContext], list[Finding]]] = {
    "patient_conflict": patient_conflict,
    "study_conflict": study_conflict,
    "study_under_several_patients": study_under_several_patients,
    "duplicate_sop_instance": duplicate_sop_instance,
    "non_primary_duplicate": non_primary_duplicate,
    "invalid_value": invalid_value,
    "missing_in_series": missing_in_series,
    "empty_in_series": empty_in_series,
    "slice_geometry": slice_geometry,
    "instance_number": instance_number,
    "unreadable": unreadable,
}


def _ignored(ignore: Any) -> set[str]:
    if ignore is None:
        return set()
    if isinstance(ignore, pd.DataFrame):
        return {str(i) for i in ignore.index}
    if isinstance(ignore, str):
        return {ignore}
    return {str(i) for i in ignore}


def check(
    snapshot: Snapshot,
    checks: Iterable[str] | None = None,
    *,
    ignore: pd.DataFrame | Collection[str] | None = None,
) -> pd.DataFrame:
    """The findings of ``checks`` (default: every check of the module docstring's table) on ``snapshot``.

    Returns a DataFrame indexed by a stable finding id (columns: check, severity, level, key, attribute,
    image_sets, primary, values, rows, fix, suggested, detail; see ``curation.curate.checks.findings``), sorted
    by severity, then check. ``ignore`` drops findings already reviewed: their ids, or a findings table (for
    example a baseline saved from an earlier run). Nothing in the snapshot is changed.
    """
    names = list(CHECKS) if checks is None else list(checks)
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(map(repr, unknown))}; the checks are {', '.join(CHECKS)}")
    context = CheckContext(snapshot)
    findings = [finding for name in names for finding in CHECKS[name](context)]
    skip = _ignored(ignore)
    return findings_frame([f for f in findings if f.id not in skip], context.primary, CHECKS)
