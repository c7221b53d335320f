"""AHI's rules for one attribute change, in one place: what needs ``force``, what a primary image set refuses,
which level an attribute is written at, which UIDs cannot be removed or reused, which keys AHI generates.

``curation.model.updates`` (what the service does to a document), ``curation.curate.differ`` (problems found in
edited frames), ``ChangeSet.force_reasons`` and the embedded service all ask these functions, so the preview,
the validation and the service can never disagree. Each rule is a small pure function of plain values: the
callers walk their documents or frames and pass what they found (the levels holding an attribute, the UIDs
already used); the rules never walk anything. The normalization lists themselves are ``curation.model.levels``.

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

from collections.abc import Collection, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from curation.model import dictionary
from curation.model.document import AHI_GENERATED_KEYS, INSTANCE_SYSTEM_KEYS, LEVELS, PrimaryFacts
from curation.model.levels import level_of


class EditOp(StrEnum):
    """What one edit of an UpdateImageSetMetadata call does to the document (a ``str``: compares equal to it)."""

    SET = "set"  #: add or update an attribute (``updatableAttributes``)
    REMOVE = "remove"  #: remove an attribute (``removableAttributes``, carrying its current value)
    REMOVE_INSTANCE = "remove_instance"  #: ``removableAttributes`` with an empty instance node
    REMOVE_SERIES = "remove_series"  #: ``removableAttributes`` with an empty series node


#: Attributes the guide lets change only with ``force``.
FORCE_KEYWORDS = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyID"})
#: UIDs that key the document: changing them re-keys (Series, Instance) and removing them is refused.
UID_KEYWORDS = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"})

#: UIDs whose change re-keys a node of the document, and the level of that node.
REKEYING_UIDS: dict[str, str] = {"SeriesInstanceUID": "Series", "SOPInstanceUID": "Instance"}
#: Keys AHI maintains itself and no update may send: the document's generated keys and the instance node's
#: keys beside ``DICOM`` (``DICOMVRs`` excepted: an update carries the VR of a private tag there).
GENERATED_KEYS: frozenset[str] = AHI_GENERATED_KEYS | (frozenset(INSTANCE_SYSTEM_KEYS) - {"DICOMVRs"})

#: What AHI answers for a Patient- or Series-level change on a primary image set.
PRIMARY_LEVEL_REFUSAL = "Patient and Series level metadata elements cannot be updated for primary image sets"
#: What AHI answers for removing a series of a primary image set.
PRIMARY_SERIES_REMOVAL_REFUSAL = "a series of a primary image set cannot be removed"
#: What ``plan(primary="refuse")`` adds to every refusal of a primary image set it reports (D5).
PRIMARY_OPTION = (
    'plan(changes, primary="promote") runs AHI\'s documented copy-and-promote procedure for it (the image set ID '
    "changes)"
)
#: The documented way around every refusal of a primary image set, and the option that runs it (Developer
#: Guide, "Updating image set metadata": copy the primary to a new non-primary image set, update the copy with
#: force where needed, delete the primary, copy the copy back with promoteToPrimary, delete the copy; "the
#: action of promoting an image set to primary changes the image set ID", translated copy of the same page).
PRIMARY_WORKAROUND = (
    "AHI refuses this on a primary image set; documented workaround: CopyImageSet to a new non-primary image "
    "set, update the copy, DeleteImageSet the primary, CopyImageSet the copy back with promoteToPrimary (the "
    "image set ID changes), then delete the copy; " + PRIMARY_OPTION
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


# --- where an attribute is written, UIDs, generated keys ------------------------------------------------------


def generated_key_refusal(key: str) -> str | None:
    """AHI's refusal of an update that sends ``key`` when AHI generates it (:data:`GENERATED_KEYS`), else None."""
    if key in GENERATED_KEYS:
        return f"Cannot update the AWS HealthImaging generated attribute {key}"
    return None


def level_problem(key: str, level: str, holding: Collection[str], *, image_set: str | None = None) -> str | None:
    """Why attribute ``key`` cannot be written at ``level``; None when it can.

    An attribute lives where the document puts it: ``holding`` are the levels at which the image set's document
    holds ``key`` today (any series or instance counts). A new attribute (``holding`` empty) goes where AHI's
    metadata normalization puts it (:func:`curation.model.levels.level_of`). ``image_set`` only names the image
    set in the reason.
    """
    where = f" in image set {image_set}" if image_set is not None else ""
    if holding:
        if level in holding:
            return None
        stored = " and ".join(name for name in LEVELS if name in holding)
        return f"{key} is stored at {stored} level{where}, not at {level} level"
    expected = level_of(key)
    if expected != level:
        return f"{key} belongs to the {expected} level (AHI metadata normalization), not to the {level} level"
    return None


def rekeys(key: str, level: str) -> bool:
    """True when setting ``key`` at ``level`` changes the UID that keys a node (the node is re-keyed in place)."""
    return REKEYING_UIDS.get(key) == level


def uid_removal_refusal(key: str, level: str) -> str | None:
    """Why removing ``key`` at ``level`` is refused (the three UIDs key the document); None for other keys."""
    if key in UID_KEYWORDS:
        return f"{key} cannot be removed, it identifies the {level.lower()}"
    return None


def new_uid_problem(key: str, new: Any, taken: Container[str], *, image_set: str) -> str | None:
    """Why ``new`` cannot become the ``key`` (a :data:`REKEYING_UIDS` UID) of a node; None when it can.

    ``taken``: the UIDs of that kind already used in the image set, the UIDs given by earlier edits of the same
    change included (the caller adds each accepted ``new``).
    """
    if not isinstance(new, str) or not new:
        return f"the new {key} must be a non-empty string, it keys the document"
    if new in taken:
        return f"{key} {new} is already used in image set {image_set}: UIDs must stay unique"
    return None


# --- primary image sets: which image set may be (made) primary ----------------------------------------------

#: What the promotion rule compares across the primary image sets of a study.
CONSISTENT_LEVELS = ("Patient", "Study")


@dataclass(frozen=True)
class Refusal:
    """Why an image set cannot be (made) primary: the ``rule`` (``series``, ``instance`` or ``consistency``),
    the ``level`` and ``attribute`` at fault, both values, and the primary image set it conflicts with."""

    rule: str
    level: str
    attribute: str
    value: Any
    other_value: Any
    other: str
    study_uid: str | None

    @property
    def message(self) -> str:
        """One sentence naming the attribute, both values and the conflicting image set."""
        if self.rule == "series":
            return (
                f"SeriesInstanceUID {self.value} is already held by primary image set {self.other}: a series "
                "belongs to one primary image set (delete it first)"
            )
        if self.rule == "instance":
            return (
                f"SOPInstanceUID {self.value} is already held by primary image set {self.other}: a SOP "
                "instance belongs to one primary image set (delete it first)"
            )
        return (
            f"{self.level}-level {self.attribute} {_shown(self.value)} differs from primary image set "
            f"{self.other} of study {self.study_uid} ({_shown(self.other_value)}): AHI keeps Patient- and "
            "Study-level metadata consistent across the primary image sets of a study"
        )


_ABSENT = object()


def _shown(value: Any) -> str:
    return "absent" if value is _ABSENT else repr(value)


def consistency_key(facts: PrimaryFacts) -> str | None:
    """The scope within which primary image sets must agree on Patient- and Study-level metadata: the study
    (the StudyInstanceUID). One function, so that a patient scope would be a one-line change."""
    return facts.study_uid


def level_conflict(level: str, ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first attribute (sorted) whose value differs between two levels' ``DICOM`` maps, JSON-exact over the
    union of their keys (absent differs from present, ``"1"`` from ``1``): (attribute, ours, theirs)."""
    for key in sorted(set(ours) | set(theirs)):
        mine, other = ours.get(key, _ABSENT), theirs.get(key, _ABSENT)
        if mine is _ABSENT or other is _ABSENT or not _same_json(mine, other):
            return key, mine, other
    return None


def _same_json(left: Any, right: Any) -> bool:
    return type(left) is type(right) and orjson.dumps(left, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        right, option=orjson.OPT_SORT_KEYS
    )


def promotion_refusal(candidate: PrimaryFacts, primaries: Iterable[PrimaryFacts]) -> Refusal | None:
    """Why ``candidate`` cannot become primary beside the (non-deleted) ``primaries``; None when it can.

    AHI documents the principle, not the rule: primary image sets "provide a mechanism for durably storing and
    reconciling duplicate and inconsistent data. Imported P10 data that conflicts with primary image sets
    already in the store will be persisted as non-primary. After resolving metadata conflicts that data can be
    made primary" (Developer Guide, "Understanding image sets"), and promoteToPrimary "will configure the
    CopyImageSet operation to promote the given image set to the primary DICOM hierarchy" (API reference,
    CopyImageSet). AWS does not document which conflicts refuse a promotion; the strict reading is taken (see
    /work/team/primary-design.md D2): refused when another primary holds one of its SeriesInstanceUIDs or
    SOPInstanceUIDs (any study), or belongs to the same study (:func:`consistency_key`) with any Patient- or
    Study-level attribute that differs, JSON-exact over the union of keys. An image set is never compared with
    itself.
    """
    scope = consistency_key(candidate)
    for other in primaries:
        if other.image_set_id == candidate.image_set_id:
            continue
        shared = candidate.series & other.series
        if shared:
            return Refusal(
                "series", "Series", "SeriesInstanceUID", min(shared), min(shared), other.image_set_id, other.study_uid
            )
        shared = candidate.sops & other.sops
        if shared:
            return Refusal(
                "instance", "Instance", "SOPInstanceUID", min(shared), min(shared), other.image_set_id, other.study_uid
            )
        if scope is None or consistency_key(other) != scope:
            continue
        for level, mine, theirs in (
            ("Patient", candidate.patient, other.patient),
            ("Study", candidate.study, other.study),
        ):
            found = level_conflict(level, mine, theirs)
            if found is not None:
                return Refusal("consistency", level, found[0], found[1], found[2], other.image_set_id, scope)
    return None
