"""``deidentify``: PS3.15 Annex E Basic Application Level Confidentiality Profile (and options) as edited frames.

``deidentify(snapshot, secret=..., options=...)`` returns a ``Deidentification``: edited ``studies`` /
``series`` / ``instances`` frames (only the rows and columns that change, in the frames representation of
NOTES.md: ``REMOVE`` for X, ``""``/``NULL`` for Z, new UIDs in ``SeriesInstanceUID`` / ``SOPInstanceUID`` columns
for the index UIDs) that ``curation.diff`` turns into a ChangeSet, then ``plan`` and ``apply``; plus the tables
a study coordinator needs (``actions``, ``mapping``, ``review``, ``skipped``) and ``verify(after)``.

Each attribute's action comes from Table E.1-1 (``curation.curate.confidentiality``); values from the secret
(``curation.curate.pseudonyms``). Per action (PS3.15 E.1.1, "Table E.1-1a"):

- X: removed (``REMOVE``). Z: zero length (``""`` / ``NULL``), except PatientID, PatientName, AccessionNumber and
  StudyID, which get a pseudonym ("a non-zero length value that may be a dummy value") so the data stay joinable.
- D: a dummy value of the VR (identifiers: their pseudonym). U: a new UID (``Pseudonyms.uid`` of the old one).
- K: kept; a sequence is kept by "recursively applying the profile rules" to its items (so is a U or C one).
- C: dates shift by the patient's offset (Modified Dates), times are kept (a whole-day shift keeps them valid);
  text is kept unless the cleaner finds an identifier of the patient in it (then emptied); other VRs removed.
- Private tags: removed, or under Retain Safe Private kept when listed in the user's ``safe_private`` table
  (PS3.15 Table E.3.10-1 is not shipped as data by any package).

It sets PatientIdentityRemoved "YES", DeidentificationMethod (the marker: tool, table edition, secret
fingerprint, options) and DeidentificationMethodCodeSequence (CID 7050). An image set that already carries the
marker for the same edition, secret and options is skipped (a second run plans nothing); another of ours is an
error unless ``redo=True``.

Applying: on non-primary image sets (e.g. a research copy) the plan is ordinary forced updates. Primary image
sets refuse Patient/Series-level edits and UID changes: plan those with ``curation.plan(changes,
primary="promote")`` (issue 12's copy-and-promote procedure). The user's frames and snapshot are never modified.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from curation.curate.confidentiality import (
    DUMMY,
    DeidOption,
    Resolution,
    Resolver,
    SafePrivate,
    cid7050,
    creator_key,
    load_table,
)
from curation.curate.deidcheck import normalize_text, verify
from curation.curate.pseudonyms import DateShift, Pseudonyms
from curation.frames.cells import REMOVE, freeze, is_empty, thaw
from curation.frames.snapshot import Snapshot
from curation.model import dictionary as dicom
from curation.model.missing import NULL, is_absent

#: The first value of our DeidentificationMethod marker (LO values are at most 64 characters each).
MARKER_TOOL = "ahi-curation deidentify 1"
#: Identifiers that must stay joinable: Z/D gives them a pseudonym (PatientName gets the PatientID's).
PSEUDONYM_KINDS = frozenset({"PatientID", "PatientName", "AccessionNumber", "StudyID"})
CLEANABLE_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT", "CS"})
_DROP = object()  # an item attribute removed
_SAME = object()  # a cell left as it is
DEFAULT_SHIFT = DateShift()
MODIFIED_FLAG = "LongitudinalTemporalInformationModified"
_MODIFIED = DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES.value
_INDEX_UIDS = {"series": "SeriesInstanceUID", "instances": "SOPInstanceUID"}


@dataclass(frozen=True)
class CleanContext:
    """What a cleaner knows about a value: the attribute and the patient's identifiers (normalized text)."""

    attribute: str
    identifiers: frozenset[str]


Cleaner = Callable[[str, CleanContext], str | None]


def default_cleaner(value: str, context: CleanContext) -> str | None:
    """PS3.15 "C" on text: keep the value unless it contains one of the patient's identifiers (then "")."""
    padded = f" {normalize_text(value)} "
    return "" if any(f" {ident} " in padded for ident in context.identifiers) else value


class PHIFrame(pd.DataFrame):
    """A DataFrame that holds protected health information (old identifiers and UIDs): its displays say so."""

    @property
    def _constructor(self) -> type[PHIFrame]:
        return PHIFrame

    def __repr__(self) -> str:
        return "PHI: old identifiers and UIDs; keep with the source data\n" + super().__repr__()

    def _repr_html_(self) -> str | None:
        html = super()._repr_html_()  # type: ignore[misc]
        return "<p><b>PHI</b>: old identifiers and UIDs; keep with the source data</p>" + (html or "")

    def to_csv(self, *args: Any, **kwargs: Any) -> Any:
        """``DataFrame.to_csv``, with a ``PHIWarning``: write it where the source data live, not with the copy."""
        warnings.warn(
            PHIWarning(
                "this table holds PHI (old identifiers and UIDs): store it with the source data, "
                "never next to the de-identified copy"
            ),
            stacklevel=2,
        )
        return super().to_csv(*args, **kwargs)


class PHIWarning(UserWarning):
    """A table holding protected health information is being written out."""


@dataclass
class _Patient:
    """One image set's patient: its key, day shift, subject pseudonym and identifiers (for the cleaner)."""

    key: str
    days: int
    subject: str
    identifiers: frozenset[str]


@dataclass
class Deidentification:
    """The result of ``deidentify``: edited frames for ``diff`` and the coordinator's tables.

    - ``frames``: ``{"studies" | "series" | "instances": DataFrame}``, only the rows and columns that change;
    - ``actions``: one row per (level, attribute path) found: tag, keyword, name, VR, the table's basic code,
      the option that decided, the code, the one action applied, the rule, image sets, occurrences;
    - ``mapping``: kind, old, new, image sets (identifiers, UIDs, day shift per patient): **PHI**;
    - ``review``: every distinct value "C" looked at (descriptors, unparseable dates) and what became of it;
    - ``skipped``: image sets already de-identified with this secret, edition and options;
    - ``warnings``: image sets whose pixels may show identifiers (BurnedInAnnotation YES).
    """

    frames: dict[str, pd.DataFrame]
    actions: pd.DataFrame
    mapping: pd.DataFrame
    skipped: pd.DataFrame
    review: pd.DataFrame
    warnings: pd.DataFrame
    options: tuple[DeidOption, ...]
    edition: str
    fingerprint: str
    _resolver: Resolver = field(repr=False)
    _safe: SafePrivate | None = field(repr=False)
    _before: Snapshot = field(repr=False)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name} {frame.shape[0]}x{frame.shape[1]}" for name, frame in self.frames.items())
        return (
            f"Deidentification(PS3.15 {self.edition}, options={[o.value for o in self.options]}, "
            f"frames: {sizes or 'none'}, {len(self.mapping)} mapped values (PHI), "
            f"{len(self.skipped)} skipped image set(s))"
        )

    def verify(self, after: Snapshot) -> pd.DataFrame:
        """Findings in ``after`` (a Snapshot fetched after apply) against Table E.1-1; empty = verified.

        See ``curation.curate.deidcheck`` for what is checked.
        """
        return verify(after, before=self._before, mapping=self.mapping, resolver=self._resolver, safe=self._safe)


# --- values ------------------------------------------------------------------------------------------------


def shift_date(text: str, days: int) -> str | None:
    """A DA value moved by ``days`` (None when it is not a strict YYYYMMDD date: the caller empties it)."""
    value = text.strip()
    if not re.fullmatch(r"\d{8}", value):
        return None
    try:
        day = dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None
    moved = day + dt.timedelta(days=days)
    return moved.strftime("%Y%m%d") if moved.year >= 1 else None


def shift_datetime(text: str, days: int) -> str | None:
    """A DT value whose date part is moved by ``days``; time, fraction and UTC offset kept (None: unparseable)."""
    value = text.strip()
    if len(value) < 8:
        return None
    date = shift_date(value[:8], days)
    return None if date is None else date + value[8:]


def _texts(value: Any, joined: bool) -> list[str] | None:
    """The text items of a cell or item value (None when it holds no text)."""
    if isinstance(value, str):
        return value.split("\\") if joined else [value]
    if isinstance(value, tuple | list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _rebuild(value: Any, items: list[str], joined: bool) -> Any:
    if isinstance(value, str):
        return "\\".join(items) if joined else items[0]
    return tuple(items) if isinstance(value, tuple) else items


class _Editor:
    """One de-identification run: resolves, transforms and records (actions, mapping, review)."""

    def __init__(
        self,
        resolver: Resolver,
        keys: Pseudonyms,
        patients: Mapping[str, _Patient],
        safe: SafePrivate | None,
        cleaner: Cleaner,
    ) -> None:
        self.resolver, self.keys, self.patients = resolver, keys, patients
        self.safe, self.cleaner = safe, cleaner
        self.actions: dict[tuple[str, str], dict[str, Any]] = {}
        self.mapping: dict[tuple[str, str], tuple[str, set[str]]] = {}
        self.review: Counter[tuple[str, str, str]] = Counter()
        #: the private creators (``gggg00bb`` -> value) of the row or item being edited (Retain Safe Private)
        self.creators: Mapping[str, str] = {}

    # --- bookkeeping --------------------------------------------------------------------------------------

    def record(self, level: str, path: str, key: str, vr: str | None, res: Resolution, image_set: str) -> None:
        """Count one occurrence of an attribute in the ``actions`` table."""
        entry = self.actions.get((level, path))
        if entry is None:
            tag = dicom.tag_of(key)
            entry = self.actions[(level, path)] = {
                "level": level,
                "path": path,
                "tag": f"{tag:08X}" if tag is not None else "",
                "keyword": dicom.keyword_of(key) or "",
                "name": res.name,
                "vr": vr or "",
                "basic": res.basic,
                "option": res.option or "",
                "code": res.code,
                "applied": res.applied,
                "rule": res.rule,
                "image_sets": set(),
                "occurrences": 0,
            }
        entry["image_sets"].add(image_set)
        entry["occurrences"] += 1

    def mapped(self, kind: str, old: str, new: str, image_set: str) -> str:
        """Record old -> new in the ``mapping`` table (with the image sets where it occurs); returns ``new``."""
        entry = self.mapping.get((kind, old))
        if entry is None:
            entry = self.mapping[(kind, old)] = (new, set())
        entry[1].add(image_set)
        return new

    def uid(self, old: str, image_set: str) -> str:
        if not old:
            return old
        return self.mapped("UID", old, self.keys.uid(old), image_set)

    def pseudonym(self, key: str, old: str, patient: _Patient, image_set: str) -> str:
        if not old:
            return old
        if key in ("PatientID", "PatientName"):
            return self.mapped(key, old, patient.subject, image_set)
        return self.mapped(key, old, self.keys.pseudonym(key, old), image_set)

    # --- one value ----------------------------------------------------------------------------------------

    def value(
        self,
        key: str,
        vr: str | None,
        value: Any,
        res: Resolution,
        image_set: str,
        *,
        joined: bool,
        top: bool,
        level: str,
        path: str,
    ) -> Any:
        """The new value of one attribute (``_DROP`` to remove it, ``_SAME`` to keep it as it is)."""
        action = res.applied
        if dicom.is_private(key):
            action = self._private(key, vr, action, image_set)
        if action == "X":
            return _DROP
        if vr == "SQ" and action in ("K", "U", "C"):
            return self.sequence(value, image_set, level, path)
        if action == "K" or is_empty(value):
            return _SAME
        patient = self.patients[image_set]
        if action == "Z" or (action == "D" and key in PSEUDONYM_KINDS):
            if key in PSEUDONYM_KINDS and isinstance(value, str):
                return self.pseudonym(key, value, patient, image_set)
            return ("" if isinstance(value, str) else NULL) if top else None
        if action == "D" and vr == "UI":
            action = "U"  # a dummy consistent with the VR: for a UID, a new one (PS3.15 E.1.1)
        elif action == "D":
            dummy = DUMMY.get(vr or "")
            if dummy is None:
                return ("" if isinstance(value, str) else NULL) if top else None
            return dummy
        texts = _texts(value, joined)
        if action == "U":
            return _SAME if texts is None else _rebuild(value, [self.uid(t, image_set) for t in texts], joined)
        return self.clean(key, vr, value, texts, patient, joined=joined, top=top, dates=res.option == _MODIFIED)

    def _private(self, key: str, vr: str | None, action: str, image_set: str) -> str:
        if action != "C":
            return "X"
        assert self.safe is not None  # deidentify refuses retain_safe_private without a list
        creator = self.creators.get(creator_key(key) or key)
        return "K" if self.safe.keeps(key, creator, vr) else "X"

    def clean(
        self,
        key: str,
        vr: str | None,
        value: Any,
        texts: list[str] | None,
        patient: _Patient,
        *,
        joined: bool,
        top: bool,
        dates: bool = False,
    ) -> Any:
        """C: dates shifted, times kept, text through the cleaner, anything else removed.

        ``dates``: the C comes from Modified Dates, whose "clean" is a shift: a non-date VR it lists
        (TimezoneOffsetFromUTC SH, OB timestamps) cannot be shifted and is removed (the protective reading).
        """
        if vr in ("DA", "DT") and texts is not None:
            shift = shift_date if vr == "DA" else shift_datetime
            moved = [shift(t, patient.days) if t else t for t in texts]
            if any(m is None for m in moved):  # PS3.15 leaves no unparseable date: emptied, listed in review
                for text in texts:
                    self.review[(key, text, "")] += 1
                return "" if top and isinstance(value, str) else (NULL if top else None)
            return _rebuild(value, [m or "" for m in moved], joined)
        if vr == "TM":
            return _SAME
        if vr in CLEANABLE_VRS and texts is not None and not dates:
            context = CleanContext(key, patient.identifiers)
            cleaned = [self.cleaner(t, context) for t in texts]
            for old, new in zip(texts, cleaned, strict=True):
                self.review[(key, old, "" if new is None else new)] += 1
            if any(c is None for c in cleaned):
                return _DROP
            return _rebuild(value, [c or "" for c in cleaned], joined)
        return _DROP  # "C" on a VR nothing can clean (e.g. TimezoneOffsetFromUTC, OB timestamps): removed

    def sequence(self, value: Any, image_set: str, level: str, path: str) -> Any:
        """A kept sequence with the profile applied to each item, recursively (PS3.15 E.1.1)."""
        if not isinstance(value, tuple | list):
            return _SAME
        items = []
        for item in value:
            if not isinstance(item, Mapping):
                return _SAME
            outer, self.creators = self.creators, _creators_of(item)
            out = {}
            for key, nested in item.items():
                vr = dicom.vr_of(key)
                res = self.resolver.resolve(key, vr)
                self.record(level, f"{path}>{key}", key, vr, res, image_set)
                new = self.value(
                    key, vr, nested, res, image_set, joined=False, top=False, level=level, path=f"{path}>{key}"
                )
                if new is _DROP:
                    continue
                out[key] = nested if new is _SAME else thaw(new) if isinstance(new, tuple) else new
            self.creators = outer
            items.append(out)
        frozen = freeze(items)
        return _SAME if frozen == tuple(value) else frozen


def _creators_of(row: Mapping[str, Any]) -> dict[str, str]:
    """The private creator values (``gggg00bb`` keys, 0x10 <= bb <= 0xFF) of a row or item."""
    return {
        k: v for k, v in row.items() if isinstance(v, str) and dicom.is_private(k) and 0x10 <= int(k[4:], 16) <= 0xFF
    }


# --- frames ------------------------------------------------------------------------------------------------


def _column_values(
    editor: _Editor, snapshot: Snapshot, frame: pd.DataFrame, column: str, ids: list[str], level: str
) -> dict[int, Any]:
    """{row position: new cell} for one column of a frame."""
    key, vr = column, snapshot.vr(column)
    res = editor.resolver.resolve(key, vr)
    joined = isinstance(frame[column].dtype, pd.StringDtype) and dicom.vm_of(key) not in (None, "1")
    changed: dict[int, Any] = {}
    ck = (creator_key(key) or key) if dicom.is_private(key) else None
    creators = frame[ck].tolist() if editor.safe is not None and ck in frame.columns else None
    for n, (image_set, cell) in enumerate(zip(ids, frame[column].tolist(), strict=True)):
        if is_absent(cell):
            continue
        if creators is not None and ck is not None:
            editor.creators = {ck: creators[n]} if isinstance(creators[n], str) else {}
        editor.record(level, key, key, vr, res, image_set)
        new = editor.value(key, vr, cell, res, image_set, joined=joined, top=True, level=level, path=key)
        if new is _SAME:
            continue
        new = REMOVE if new is _DROP else new
        if new is not REMOVE and (new == cell if not isinstance(new, float) else new is cell):
            continue
        changed[n] = new
    return changed


def _index_uids(editor: _Editor, frame: pd.DataFrame, name: str, ids: list[str]) -> dict[int, Any]:
    """New UIDs for the UID that keys a series/instance row (NOTES rule 5: set as a column of that name)."""
    column = _INDEX_UIDS[name]
    res = editor.resolver.resolve(column, "UI")
    level = "Series" if name == "series" else "Instance"
    out: dict[int, Any] = {}
    for n, (image_set, old) in enumerate(zip(ids, frame.index.get_level_values(column), strict=True)):
        editor.record(level, column, column, "UI", res, image_set)
        if res.applied == "U":
            out[n] = editor.uid(old, image_set)
    return out


def _edited_frame(frame: pd.DataFrame, changes: dict[str, dict[int, Any]]) -> pd.DataFrame | None:
    """The rows and columns of ``frame`` that change, unchanged cells of those rows as they were."""
    changes = {c: v for c, v in changes.items() if v}
    if not changes:
        return None
    rows = sorted({n for values in changes.values() for n in values})
    position = {n: i for i, n in enumerate(rows)}
    index = frame.index[rows]
    columns: dict[str, Any] = {}
    for column, values in changes.items():
        if column in frame.columns:
            cells = frame[column].iloc[rows].tolist()
            dtype = frame[column].dtype
        else:
            cells, dtype = [None] * len(rows), None
        for n, new in values.items():
            cells[position[n]] = new
        text = all(isinstance(c, str) or is_absent(c) for c in cells)
        if text and (dtype is None or isinstance(dtype, pd.StringDtype)):
            columns[column] = pd.array(
                [None if is_absent(c) else c for c in cells], dtype=dtype or pd.StringDtype(na_value=float("nan"))
            )
        else:
            array = np.empty(len(cells), dtype=object)
            array[:] = cells  # tuples stay cells, not rows
            columns[column] = array
    out = pd.DataFrame(columns, index=index)
    return out


def _marker(options: tuple[DeidOption, ...], edition: str, fingerprint: str) -> list[str]:
    """Our DeidentificationMethod values (each within LO's 64 characters)."""
    return [
        MARKER_TOOL,
        f"PS3.15 {edition} Table E.1-1",
        f"secret fingerprint {fingerprint}",
        *(cid7050()[o].meaning for o in options),
    ]


def _marker_state(methods: Any, marker: list[str]) -> str | None:
    """None: not ours; "same": ours with this edition, secret and options; else what differs."""
    if isinstance(methods, str):
        values = methods.split("\\")
    else:
        values = list(methods) if isinstance(methods, tuple | list) else []
    if MARKER_TOOL not in values:
        return None
    ours = values[values.index(MARKER_TOOL) :]
    if ours[: len(marker)] == marker and len(ours) == len(marker):
        return "same"
    return "de-identified by ahi-curation with another edition, secret or options: " + "; ".join(ours[1:])


# --- the run -----------------------------------------------------------------------------------------------


def _text_of(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _identifiers(rows: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The normalized identifiers of one patient (D7): name parts, IDs, accession numbers, birth date forms."""
    found: set[str] = set()
    for row in rows:
        for part in re.split(r"[\\^=\s]+", _text_of(row.get("PatientName"))):
            if len(normalize_text(part)) >= 2:
                found.add(normalize_text(part))
        for column in ("PatientID", "AccessionNumber", "OtherPatientIDs", "StudyID"):
            for value in _text_of(row.get(column)).split("\\"):
                if len(normalize_text(value)) >= 2:
                    found.add(normalize_text(value))
        birth = _text_of(row.get("PatientBirthDate")).strip()
        if re.fullmatch(r"\d{8}", birth):
            y, m, d = birth[:4], birth[4:6], birth[6:]
            found.update({birth, f"{y} {m} {d}", f"{d} {m} {y}", f"{m} {d} {y}"})
    return frozenset(found)


def _patients(
    studies: pd.DataFrame, keys: Pseudonyms, shift: DateShift, lookup: Mapping[str, str] | None
) -> dict[str, _Patient]:
    """image set -> its patient (PS3.15 E.3.6: one offset per patient; no PatientID: one per study)."""
    rows: list[dict[str, Any]] = [{str(k): v for k, v in r.items()} for r in studies.reset_index().to_dict("records")]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    key_of: dict[str, str] = {}
    for row in rows:
        pid, issuer = _text_of(row.get("PatientID")), _text_of(row.get("IssuerOfPatientID"))
        key = f"{pid}\x00{issuer}" if pid.strip() else f"study\x00{_text_of(row.get('StudyInstanceUID'))}"
        key_of[row["ImageSetID"]] = key
        groups[key].append(row)
    out = {}
    for image_set, key in key_of.items():
        first = groups[key][0]
        pid, name = _text_of(first.get("PatientID")), _text_of(first.get("PatientName"))
        if lookup and pid in lookup:
            subject = lookup[pid]
        else:
            subject = keys.pseudonym("PatientID", pid) if pid.strip() else keys.pseudonym("PatientName", name)
        out[image_set] = _Patient(
            key=key, days=keys.day_shift(key, shift), subject=subject, identifiers=_identifiers(groups[key])
        )
    return out


def _split_marked(studies: pd.DataFrame, marker: list[str], redo: bool) -> tuple[list[str], pd.DataFrame]:
    """(image sets to edit, skipped table): ours with the same marker are skipped, another of ours refused."""
    targets, skipped = [], []
    methods = studies.get("DeidentificationMethod")
    removed = studies.get("PatientIdentityRemoved")
    for n, image_set in enumerate(studies.index):
        state = None
        if methods is not None and removed is not None and removed.iloc[n] == "YES":
            state = _marker_state(methods.iloc[n], marker)
        if state is None or redo:
            targets.append(image_set)
        elif state == "same":
            skipped.append(
                {"ImageSetID": image_set, "reason": "already de-identified with this secret, table edition and options"}
            )
        else:
            raise ValueError(f"image set {image_set}: {state} (deidentify(..., redo=True) de-identifies again)")
    return targets, pd.DataFrame(skipped, columns=["ImageSetID", "reason"])


def _marker_columns(
    studies: pd.DataFrame, marker: list[str], options: tuple[DeidOption, ...]
) -> dict[str, dict[int, Any]]:
    """PatientIdentityRemoved, DeidentificationMethod and its code sequence for every edited image set."""
    codes = [cid7050()["basic"], *(cid7050()[o] for o in options)]
    ours = [
        {"CodeValue": c.value, "CodingSchemeDesignator": c.scheme_designator, "CodeMeaning": c.meaning} for c in codes
    ]
    removed, methods, sequences = {}, {}, {}
    for n in range(len(studies)):
        row = studies.iloc[n]
        if row.get("PatientIdentityRemoved") != "YES":
            removed[n] = "YES"
        old = row.get("DeidentificationMethod")
        values = old.split("\\") if isinstance(old, str) and old else []
        if MARKER_TOOL in values:  # redo: our earlier marker is replaced, another tool's values are kept
            values = values[: values.index(MARKER_TOOL)]
        methods[n] = "\\".join([*dict.fromkeys(values), *marker])
        cell = row.get("DeidentificationMethodCodeSequence")
        items = [thaw(i) for i in cell if isinstance(i, Mapping)] if isinstance(cell, tuple) else []
        seen = {(i.get("CodeValue"), i.get("CodingSchemeDesignator")) for i in items}
        items += [i for i in ours if (i["CodeValue"], i["CodingSchemeDesignator"]) not in seen]
        sequences[n] = freeze(items)
    return {
        "PatientIdentityRemoved": removed,
        "DeidentificationMethod": methods,
        "DeidentificationMethodCodeSequence": sequences,
    }


def deidentify(
    snapshot: Snapshot,
    *,
    secret: bytes | str,
    options: Iterable[str | DeidOption] = (),
    profile: str = "basic",
    safe_private: pd.DataFrame | None = None,
    cleaner: Cleaner | None = None,
    date_shift: DateShift = DEFAULT_SHIFT,
    compound: str = "keep_references",
    vr_safety_net: bool = True,
    pseudonyms: Mapping[str, str] | None = None,
    redo: bool = False,
    edition: str | None = None,
) -> Deidentification:
    """De-identify ``snapshot`` with PS3.15 Annex E's Basic Application Level Confidentiality Profile.

    ``options``: ``DeidOption`` values (Table E.1-1's columns); ``secret`` (>= 32 bytes) makes every pseudonym,
    UID and day shift reproducible; ``safe_private`` (creator, tag ``ggggxxee``, vr) is required with Retain
    Safe Private; ``cleaner(value, CleanContext) -> str | None`` replaces ``default_cleaner`` for "C" on text;
    ``pseudonyms`` maps PatientID -> a study subject ID (recorded in ``mapping``); ``edition`` (e.g. "2026d")
    refuses to run on another edition of Table E.1-1 (a protocol that names one). See the module docstring.
    """
    if profile != "basic":
        raise ValueError(f"PS3.15 Annex E defines one profile, 'basic', not {profile!r}; choose options instead")
    table = load_table()
    if edition is not None and edition != table.edition:
        raise ValueError(f"Table E.1-1 edition {edition!r} was asked for; the installed table is {table.edition!r}")
    if isinstance(options, str):
        options = [options]
    resolver = Resolver(table, options, compound=compound, vr_safety_net=vr_safety_net)
    if DeidOption.RETAIN_SAFE_PRIVATE in resolver.options and safe_private is None:
        raise ValueError(
            "retain_safe_private needs safe_private=: a table of (creator, tag, vr) rows from "
            "PS3.15 Table E.3.10-1, which no package ships as data"
        )
    keys = Pseudonyms(secret)
    marker = _marker(resolver.options, table.edition, keys.fingerprint)
    all_studies = snapshot.studies
    targets, skipped = _split_marked(all_studies, marker, redo)
    studies = all_studies.loc[targets]
    patients = _patients(studies, keys, date_shift, pseudonyms)
    safe = SafePrivate(safe_private) if safe_private is not None else None
    editor = _Editor(resolver, keys, patients, safe, cleaner or default_cleaner)
    frames = _edit_frames(editor, snapshot, set(targets))
    marks = _edited_frame(studies, _marker_columns(studies, marker, resolver.options))
    if marks is not None:
        frames["studies"] = _merge(frames.get("studies"), marks)
    mapping = _mapping_table(editor, patients)
    _check_collisions(editor)
    return Deidentification(
        frames=frames,
        actions=_actions_table(editor),
        mapping=mapping,
        skipped=skipped,
        review=_review_table(editor),
        warnings=_warnings(snapshot, set(targets)),
        options=resolver.options,
        edition=table.edition,
        fingerprint=keys.fingerprint,
        _resolver=resolver,
        _safe=safe,
        _before=snapshot,
    )


def _edit_frames(editor: _Editor, snapshot: Snapshot, targets: set[str]) -> dict[str, pd.DataFrame]:
    frames: dict[str, pd.DataFrame] = {}
    for name in ("studies", "series", "instances"):
        frame = getattr(snapshot, name)
        frame = frame[frame.index.get_level_values("ImageSetID").isin(targets)]
        ids = frame.index.get_level_values("ImageSetID").tolist()
        changes: dict[str, dict[int, Any]] = {}
        for column in frame.columns:
            if column.startswith("@"):
                continue
            level = snapshot.level(column) or name
            changes[column] = _column_values(editor, snapshot, frame, column, ids, level)
        if name in _INDEX_UIDS:
            changes[_INDEX_UIDS[name]] = _index_uids(editor, frame, name, ids)
        if name == "instances" and editor.resolver.modified_dates:
            changes[MODIFIED_FLAG] = _modified_flag(frame)
        edited = _edited_frame(frame, changes)
        if edited is not None:
            frames[name] = edited
    return frames


def _modified_flag(frame: pd.DataFrame) -> dict[int, Any]:
    """PS3.15 E.3.6: with Modified Dates, Longitudinal Temporal Information Modified (0028,0303) is MODIFIED."""
    current = frame[MODIFIED_FLAG].tolist() if MODIFIED_FLAG in frame.columns else [None] * len(frame)
    return {n: "MODIFIED" for n, value in enumerate(current) if value != "MODIFIED"}


def _merge(edited: pd.DataFrame | None, marks: pd.DataFrame) -> pd.DataFrame:
    if edited is None:
        return marks
    rows = edited.index.union(marks.index, sort=False)
    out = edited.reindex(rows)
    for column in marks.columns:
        series = marks[column].reindex(rows)
        out[column] = series
    return out


def _check_collisions(editor: _Editor) -> None:
    """Every map injective, and no new UID equal to an old one (else: another secret; PS3.15 needs unique UIDs)."""
    by_kind: dict[str, dict[str, str]] = defaultdict(dict)
    for (kind, old), (new, _) in editor.mapping.items():
        seen = by_kind[kind].get(new)
        if seen is not None and seen != old and kind not in ("PatientName",):
            raise ValueError(f"{kind} pseudonyms collide: {seen!r} and {old!r} both map to {new!r}; use another secret")
        by_kind[kind][new] = old
    old_uids = {old for (kind, old) in editor.mapping if kind == "UID"}
    clash = old_uids & set(by_kind["UID"])
    if clash:
        raise ValueError(f"new UID {sorted(clash)[0]!r} equals an old UID of the snapshot; use another secret")


def _mapping_table(editor: _Editor, patients: Mapping[str, _Patient]) -> PHIFrame:
    rows = [
        {"kind": kind, "old": old, "new": new, "image_sets": tuple(sorted(ids))}
        for (kind, old), (new, ids) in editor.mapping.items()
    ]
    shifts: dict[str, tuple[int, set[str]]] = {}
    for image_set, patient in patients.items():
        shifts.setdefault(patient.key, (patient.days, set()))[1].add(image_set)
    rows += [
        {
            "kind": "date shift (days)",
            "old": key.replace("\x00", "/").rstrip("/"),
            "new": str(days),
            "image_sets": tuple(sorted(ids)),
        }
        for key, (days, ids) in shifts.items()
    ]
    return PHIFrame(rows, columns=["kind", "old", "new", "image_sets"])


def _actions_table(editor: _Editor) -> pd.DataFrame:
    columns = [
        "level",
        "path",
        "tag",
        "keyword",
        "name",
        "vr",
        "basic",
        "option",
        "code",
        "applied",
        "rule",
        "image_sets",
        "occurrences",
    ]
    rows = [{**entry, "image_sets": len(entry["image_sets"])} for entry in editor.actions.values()]
    return pd.DataFrame(rows, columns=columns)


def _review_table(editor: _Editor) -> pd.DataFrame:
    rows = [
        {"attribute": a, "value": old, "cleaned": new, "kept": old == new, "count": n}
        for (a, old, new), n in sorted(editor.review.items())
    ]
    return pd.DataFrame(rows, columns=["attribute", "value", "cleaned", "kept", "count"])


def _warnings(snapshot: Snapshot, targets: set[str]) -> pd.DataFrame:
    """Image sets whose pixels may carry identifiers (BurnedInAnnotation YES): metadata edits cannot clean them."""
    rows = []
    instances = snapshot.instances
    if "BurnedInAnnotation" in instances.columns:
        burned = instances[instances["BurnedInAnnotation"] == "YES"]
        for image_set in sorted(set(burned.index.get_level_values("ImageSetID")) & targets):
            rows.append(
                {
                    "ImageSetID": image_set,
                    "warning": "BurnedInAnnotation YES: the pixel data may show "
                    "identifiers (Clean Pixel Data is not possible through metadata updates)",
                }
            )
    return pd.DataFrame(rows, columns=["ImageSetID", "warning"])
