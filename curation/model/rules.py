"""AHI's rules for one attribute change, in one place: what needs ``force``, what a primary image set refuses.

``curation.model.updates`` (what the service does to a document), ``curation.curate.differ`` (problems found in
edited frames), ``ChangeSet.force_reasons`` and the embedded service all ask these functions, so the preview,
the validation and the service can never disagree. Where an attribute lives is ``curation.model.levels``.

Sources: the HealthImaging Developer Guide, "Updating image set metadata": the ``force`` parameter lets you
"update elements of non-primary image sets" overriding the DICOM metadata constraints, and it is needed for
StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID and StudyID, for private tags of an individual SOP
instance, for attributes that are not in the DICOM standard, for attributes with VR SQ, for multi-valued
attributes and for values not compatible with the attribute's VR. On primary image sets, "Patient and Series
level metadata elements cannot be updated" and the API "does not support --force for updating
StudyInstanceUID, SeriesInstanceUID and SOPInstanceUID". Read strictly, force lifts nothing on a primary image
set: a change that needs force is refused there too, and so is removing a whole series.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from curation.model import dictionary

#: Attributes the guide lets change only with ``force``.
FORCE_KEYWORDS = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyID"})
#: UIDs that key the document: changing them re-keys (Series, Instance) and removing them is refused.
UID_KEYWORDS = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"})

#: What AHI answers for a Patient- or Series-level change on a primary image set.
PRIMARY_LEVEL_REFUSAL = "Patient and Series level metadata elements cannot be updated for primary image sets"
#: What AHI answers for removing a series of a primary image set.
PRIMARY_SERIES_REMOVAL_REFUSAL = "a series of a primary image set cannot be removed"
#: The documented way around every refusal of a primary image set.
PRIMARY_WORKAROUND = (
    "AHI refuses this on a primary image set; documented workaround: CopyImageSet to a new non-primary image "
    "set, update the copy, DeleteImageSet the primary, CopyImageSet the copy back with promoteToPrimary (the "
    "image set ID changes), then delete the copy"
)


def uid_force_refusal(key: str) -> str:
    """AHI's refusal of a UID change on a primary image set."""
    return f"force is not supported for updating {key} of a primary image set"


def force_reasons(
    key: str,
    *,
    vr: str | None,
    vm: str | None,
    private: bool,
    standard: bool,
    value_problem: str | None = None,
) -> list[str]:
    """Why changing attribute ``key`` needs ``force``; empty when it does not.

    ``private``: an odd-group tag; ``standard``: a keyword of the DICOM dictionary (or its repeaters);
    ``value_problem``: why the new value does not fit the VR (None for a removal or a fitting value).
    """
    reasons = []
    if key in FORCE_KEYWORDS:
        reasons.append(f"{key} cannot be updated unless the force flag is set")
    if private:
        reasons.append("private tags of an individual SOP Instance need the force flag")
    elif not standard:
        reasons.append(f"{key} is not a valid attribute according to the DICOM standard")
    if vr == "SQ":
        reasons.append(f"{key} has VR SQ (nested attributes)")
    if vm and vm != "1":
        reasons.append(f"{key} is a multivalued attribute (VM {vm})")
    if value_problem:
        reasons.append(f"the value is not compatible with the VR of {key}: {value_problem}")
    return reasons


def primary_refusals(level: str, key: str | None, op: str, reasons: Sequence[str] = ()) -> list[str]:
    """Why AHI refuses a change on a primary image set; empty when it accepts it.

    ``op`` is ``set`` (add or update), ``remove``, ``remove_instance`` or ``remove_series``; ``reasons`` are the
    change's :func:`force_reasons` (force lifts nothing on a primary image set).
    """
    if op == "remove_series":
        return [PRIMARY_SERIES_REMOVAL_REFUSAL]
    if op == "remove_instance":
        return []
    refusals = []
    if level in ("Patient", "Series"):
        refusals.append(PRIMARY_LEVEL_REFUSAL)
    if key in UID_KEYWORDS and op == "set":
        refusals.append(uid_force_refusal(key))
    elif reasons:
        refusals.append("force lifts nothing on primary image sets, and this change needs force: " + "; ".join(reasons))
    return refusals


def change_force_reasons(attribute: Any, vr: Any, op: str, problem: str | None = None) -> list[str]:
    """:func:`force_reasons` of one ChangeSet row (``op`` add, update, remove, remove_instance, remove_series)."""
    if op in ("remove_instance", "remove_series") or not isinstance(attribute, str):
        return []
    return force_reasons(
        attribute,
        vr=vr,
        vm=dictionary.vm_of(attribute) if not dictionary.is_tag_key(attribute) else None,
        private=dictionary.is_private(attribute),
        standard=dictionary.is_standard(attribute),
        value_problem=problem if op != "remove" else None,
    )
