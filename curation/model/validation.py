"""PS3.5 validation of AHI's JSON values, as one table of per-VR rules (repertoire, length, format) plus VM.

The rules are DICOM PS3.5 (2024e) section 6.2, Table 6.2-1 "DICOM Value Representations"
(https://dicom.nema.org/medical/dicom/current/output/chtml/part05/sect_6.2.html), with section 6.1.3 (control
characters), 6.2.1 (PN), 6.4 (value multiplicity and the backslash delimiter) and PS3.4 C.2.2.2.5 (ranges,
which only a query may use). Where ``pydicom.valuerep.VALIDATORS`` is right it is asked too (the ``pydicom``
column of :data:`RULES`); the table adds what it misses:

- the character repertoire of every text VR: no control character but TAB, LF, FF and CR in LT, ST and UT, none
  at all elsewhere; no backslash but in LT, ST and UT (it delimits values, PS3.5 6.4, so it is never inside a
  value: an AHI array item or a single-valued attribute); only the default repertoire (ASCII) in AE, AS, CS, DA,
  DS, DT, IS, TM, UI, UR. ESC is allowed by the standard only inside ISO/IEC 2022 escape sequences (6.1.3);
  AHI's JSON holds decoded text, where no escape sequence is left, so ESC is refused everywhere. A lone UTF-16
  surrogate cannot be encoded at all and is refused too;
- lengths in the unit of Table 6.2-1: characters for SH, LO, ST, LT and PN (per component group); bytes for
  the rest (AE ... UI have an ASCII repertoire, so a character is a byte; UC, UR and UT hold at most 2^32-2
  bytes, counted in UTF-8);
- PN: at most three component groups of at most five components each (6.2.1);
- DA, DT, TM: the stored formats only (no query ranges), months 01-12, days that exist in the month (leap
  years of the Gregorian calendar), hours 00-23, minutes 00-59, seconds 00-60 (leap second), fractions of 1-6
  digits, a DT offset ``&ZZXX`` from -1200 to +1400 (``-0000`` is not allowed); one trailing space as padding
  to an even length (pydicom refuses a padded DT with an offset);
- IS within -2^31..2^31-1; AE not only spaces; FL within the range of an IEEE binary32; FL/FD finite;
- the binary VRs as AHI writes them: base64 whose bytes are a whole number of the VR's words (OW 2, OF/OL 4,
  OD/OV 8).

The JSON typing is AHI's (``curation.model.vr``): text VRs are strings, US/SS/UL/SL/SV/UV integers, FL/FD
numbers, binary VRs and AT (8 uppercase hex digits) strings, SQ arrays of objects, and attributes whose
dictionary VM allows more than one value arrays (``null`` items allowed).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydicom.valuerep import MAX_VALUE_LEN, VALIDATORS

from curation.model import dictionary
from curation.model.missing import NULL
from curation.model.vr import candidates

__all__ = ["RULES", "Rule", "element_problem", "validate", "value_problem", "vm_bounds"]

Kind = Literal["text", "binary", "tag", "integer", "number"]

#: What LT, ST and UT refuse: control characters (ISO 6429 C0, DEL, C1) but TAB, LF, FF, CR (Table 6.2-1), and
#: lone surrogates.
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
#: What the strings with an extensible repertoire refuse (SH, LO, PN, UC): the backslash and control characters.
_STRING = re.compile(r"[\\\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: What the default-repertoire VRs refuse: anything but printable ASCII, and the backslash.
_ASCII = re.compile(r"[^\x20-\x5b\x5d-\x7e]")

_NAMES = {
    "\x00": " (NUL)",
    "\t": " (TAB)",
    "\n": " (LF, line feed)",
    "\x0c": " (FF, form feed)",
    "\r": " (CR, carriage return)",
    "\x1b": " (ESC)",
    "\x7f": " (DEL)",
}
_UNLIMITED = 2**32 - 2
_FLOAT32_MAX = 3.4028234663852886e38


def _is(value: str) -> str | None:
    number = int(value.strip())
    if not -(2**31) <= number <= 2**31 - 1:
        return f"IS holds an integer from -2^31 to 2^31-1, not {number}"
    return None


def _ae(value: str) -> str | None:
    return "an AE value cannot consist solely of spaces" if value and not value.strip(" ") else None


def _pn(value: str) -> str | None:
    for number, group in enumerate(value.split("="), start=1):
        components = group.split("^")
        if len(components) > 5:
            return (
                f"PN component group {number} has {len(components)} components ('^'-separated); "
                "at most five are allowed (family, given, middle, prefix, suffix)"
            )
    return None


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _date_problem(year: int, month: int | None, day: int | None) -> str | None:
    if month is not None and not 1 <= month <= 12:
        return f"month {month:02d} is not 01-12"
    if month is not None and day is not None and not 1 <= day <= _days_in_month(year, month):
        return f"day {day:02d} does not exist in {year:04d}-{month:02d}"
    return None


def _time_problem(hour: int | None, minute: int | None, second: int | None) -> str | None:
    if hour is not None and hour > 23:
        return f"hour {hour:02d} is not 00-23"
    if minute is not None and minute > 59:
        return f"minute {minute:02d} is not 00-59"
    if second is not None and second > 60:
        return f"second {second:02d} is not 00-60"
    return None


def _padding(value: str) -> str | None:
    if value.endswith(" ") and len(value) % 2:
        return "a trailing space only pads a value of odd length to an even length (PS3.5 6.2)"
    return None


def _offset_problem(sign: str, offset: str) -> str | None:
    if sign + offset == "-0000":
        return "the UTC offset -0000 is not used (UTC is +0000)"
    hours, minutes = int(offset[:2]), int(offset[2:])
    if minutes > 59 or hours * 60 + minutes > (12 * 60 if sign == "-" else 14 * 60):
        return f"the UTC offset {sign}{offset} is not from -1200 to +1400"
    return None


#: The stored syntax of DA, TM and DT (PS3.5 Table 6.2-1; the query ranges of PS3.4 C.2.2.2.5 excluded).
_MOMENTS: dict[str, tuple[re.Pattern[str], str]] = {
    "DA": (re.compile(r"(?P<year>\d{4})(?P<month>\d{2})(?P<day>\d{2})"), "YYYYMMDD (8 digits"),
    "TM": (
        re.compile(r"(?P<hour>\d{2})(?:(?P<minute>\d{2})(?:(?P<second>\d{2})(?:\.\d{1,6})?)?)? ?"),
        "HH[MM[SS[.F{1-6}]]] (digits",
    ),
    "DT": (
        re.compile(
            r"(?P<year>\d{4})(?:(?P<month>\d{2})(?:(?P<day>\d{2})(?:(?P<hour>\d{2})(?:(?P<minute>\d{2})"
            r"(?:(?P<second>\d{2})(?:\.\d{1,6})?)?)?)?)?)?(?:(?P<sign>[+-])(?P<offset>\d{4}))? ?"
        ),
        "YYYY[MM[DD[HH[MM[SS[.F{1-6}]]]]]][&ZZXX] (digits",
    ),
}


def _moment(vr: str) -> Callable[[str], str | None]:
    """The format check of DA, TM or DT: the syntax of :data:`_MOMENTS`, then the range of each field."""
    pattern, syntax = _MOMENTS[vr]

    def check(value: str) -> str | None:
        match = pattern.fullmatch(value)
        if match is None:
            return f"{vr} takes {syntax}, no separators; a range is only for queries)"
        found = match.groupdict()
        number = {name: int(text) for name, text in found.items() if text is not None and name != "sign"}
        problem = (
            _padding(value)
            or _date_problem(number.get("year", 0), number.get("month"), number.get("day"))
            or _time_problem(number.get("hour"), number.get("minute"), number.get("second"))
        )
        if problem is None and found.get("sign"):
            problem = _offset_problem(found["sign"], found["offset"])
        return f"{vr} {value!r}: {problem}" if problem else None

    return check


def _at(value: str) -> str | None:
    return None if re.fullmatch(r"[0-9A-F]{8}", value) else "VR AT takes a tag as 8 uppercase hex digits"


def _binary(word: int) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return f"the value {value[:40]!r} is not base64"
        if len(data) % word:
            return f"{len(data)} bytes are not a whole number of {word}-byte words"
        return None

    return check


def _float(maximum: float) -> Callable[[int | float], str | None]:
    def check(value: int | float) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return f"{value} is not a finite number (JSON cannot carry it)"
        if abs(value) > maximum:
            return f"{value} is outside the range of the VR (at most {maximum:.8g} in magnitude)"
        return None

    return check


@dataclass(frozen=True)
class Rule:
    """How PS3.5 Table 6.2-1 constrains the values of one VR, as AHI's JSON holds them.

    ``kind``: how AHI's JSON holds one value (``text``, ``binary`` and ``tag`` are JSON strings: the text,
    base64, 8 uppercase hex digits; ``integer``; ``number``); ``forbidden``: a pattern matching a character the
    VR's repertoire excludes (``repertoire`` says which, for messages); ``max_length`` in ``unit`` (``chars``
    or ``bytes``; PN counts per component group); ``check``: the format or range beyond characters and length
    (run last: it may assume that the characters, the length and pydicom's check passed); ``pydicom``: ask
    ``pydicom.valuerep.VALIDATORS`` too (where it is right).
    """

    kind: Kind
    forbidden: re.Pattern[str] | None = None
    repertoire: str = ""
    max_length: int | None = None
    unit: Literal["chars", "bytes"] = "bytes"
    check: Callable[[Any], str | None] | None = None
    pydicom: bool = False


_ASCII_TEXT = "printable ASCII (the default repertoire) without the backslash"
_STRINGS = "no backslash and no control character"
_TEXTS = "no control character but TAB, LF, FF and CR"

#: The rules of every VR AHI writes as a JSON scalar (SQ is an array of objects; see :func:`value_problem`).
RULES: Mapping[str, Rule] = {
    "AE": Rule("text", _ASCII, _ASCII_TEXT, MAX_VALUE_LEN["AE"], check=_ae, pydicom=True),
    "AS": Rule("text", _ASCII, _ASCII_TEXT, 4, pydicom=True),
    "CS": Rule("text", _ASCII, _ASCII_TEXT, MAX_VALUE_LEN["CS"], pydicom=True),
    "DA": Rule("text", _ASCII, _ASCII_TEXT, 8, check=_moment("DA")),
    "DS": Rule("text", _ASCII, _ASCII_TEXT, MAX_VALUE_LEN["DS"], pydicom=True),
    "DT": Rule("text", _ASCII, _ASCII_TEXT, 26, check=_moment("DT")),
    "IS": Rule("text", _ASCII, _ASCII_TEXT, MAX_VALUE_LEN["IS"], check=_is, pydicom=True),
    "LO": Rule("text", _STRING, _STRINGS, MAX_VALUE_LEN["LO"], "chars", pydicom=True),
    "LT": Rule("text", _TEXT_CONTROL, _TEXTS, MAX_VALUE_LEN["LT"], "chars", pydicom=True),
    "PN": Rule("text", _STRING, _STRINGS, 64, "chars", check=_pn, pydicom=True),
    "SH": Rule("text", _STRING, _STRINGS, MAX_VALUE_LEN["SH"], "chars", pydicom=True),
    "ST": Rule("text", _TEXT_CONTROL, _TEXTS, MAX_VALUE_LEN["ST"], "chars", pydicom=True),
    "TM": Rule("text", _ASCII, _ASCII_TEXT, 14, check=_moment("TM")),
    "UC": Rule("text", _STRING, _STRINGS, _UNLIMITED),
    "UI": Rule("text", _ASCII, _ASCII_TEXT, MAX_VALUE_LEN["UI"], pydicom=True),
    "UR": Rule("text", _ASCII, _ASCII_TEXT, _UNLIMITED, pydicom=True),
    "UT": Rule("text", _TEXT_CONTROL, _TEXTS, _UNLIMITED),
    "AT": Rule("tag", check=_at),
    **{
        vr: Rule("binary", check=_binary(word))
        for vr, word in (("OB", 1), ("OD", 8), ("OF", 4), ("OL", 4), ("OV", 8), ("OW", 2), ("UN", 1))
    },
    **{vr: Rule("integer", pydicom=True) for vr in ("US", "SS", "UL", "SL", "SV", "UV")},
    "FL": Rule("number", check=_float(_FLOAT32_MAX), pydicom=True),
    "FD": Rule("number", check=_float(math.inf), pydicom=True),
}

_JSON_TYPES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
}
_TAKES: dict[Kind, str] = {
    "text": "is text and takes a JSON string",
    "binary": "is binary and takes a base64 JSON string",
    "tag": "takes a tag as a JSON string of 8 uppercase hex digits",
    "integer": "takes a JSON integer",
    "number": "takes a JSON number",
}


def _json_problem(vr: str, rule: Rule, value: Any) -> str | None:
    kind = type(value)
    if rule.kind == "integer":
        fits = isinstance(value, int) and kind is not bool
    elif rule.kind == "number":
        fits = isinstance(value, int | float) and kind is not bool
    else:
        fits = isinstance(value, str)
    if fits:
        return None
    return f"VR {vr} {_TAKES[rule.kind]}, not {_JSON_TYPES.get(kind, 'a ' + kind.__name__)}"


def _character_problem(vr: str, rule: Rule, value: str) -> str | None:
    if rule.forbidden is None:
        return None
    found = rule.forbidden.search(value)
    if found is None:
        return None
    char = found.group()
    where = f"at position {found.start()}"
    if char == "\\":
        return (
            f"a backslash ({where}) is the delimiter between values (PS3.5 6.4) and cannot be inside a value "
            f"of VR {vr} (the values of a multi-valued attribute are the items of its list)"
        )
    code = f"U+{ord(char):04X}"
    if char.isprintable():
        shown = f"the character {char!r} ({code})"
    elif "\ud800" <= char <= "\udfff":
        shown = f"the lone surrogate {code} (not a character: it cannot be encoded)"
    else:
        shown = f"the control character {code}{_NAMES.get(char, '')}"
    return f"{shown} {where} is not allowed in VR {vr}: {rule.repertoire} (PS3.5 6.2)"


def _unpadded(vr: str, value: Any) -> Any:
    """``value`` without the one SPACE that pads a value field to even length (PS3.5 6.2): not part of the
    value, so it counts toward no maximum length (AHI keeps it, e.g. the last item of a padded DS list)."""
    if vr != "UI" and isinstance(value, str) and value.endswith(" "):
        return value[:-1]
    return value


def _length_problem(vr: str, rule: Rule, value: str) -> str | None:
    if rule.max_length is None:
        return None
    value = _unpadded(vr, value)
    parts = value.split("=") if vr == "PN" else [value]
    for part in parts:
        length = len(part)
        if rule.unit == "bytes" and length * 4 > rule.max_length:
            length = len(part.encode("utf-8", "surrogatepass"))
        if length > rule.max_length:
            what = "a PN component group" if vr == "PN" else f"a value of VR {vr}"
            unit = "characters" if rule.unit == "chars" else "bytes"
            return f"{what} holds at most {rule.max_length} {unit}; this one has {length}"
    return None


def _pydicom_problem(vr: str, value: Any) -> str | None:
    valid, message = VALIDATORS[vr](vr, value)
    return None if valid else message.split(" Please see")[0]


def element_problem(vr: str, value: Any) -> str | None:
    """Why one JSON value (not an array) does not fit the plain VR ``vr``; None when it does, is ``null`` or
    the VR has no rule (SQ, unknown)."""
    rule = RULES.get(vr)
    if value is None or rule is None:
        return None
    problem = _json_problem(vr, rule, value)
    if problem is None and rule.kind == "text":
        problem = _character_problem(vr, rule, value) or _length_problem(vr, rule, value)
    if problem is None and rule.pydicom:
        problem = _pydicom_problem(vr, _unpadded(vr, value))
    if problem is None and rule.check is not None and value != "":
        problem = rule.check(value)
    return problem


def vm_bounds(vm: str | None) -> tuple[int, int | None]:
    """(minimum, maximum or None for unbounded) number of values of a dictionary VM such as ``"2-n"``."""
    if not vm:
        return 0, None
    low, _, high = vm.partition("-")
    minimum = int(low) if low.isdigit() else 1
    if not high:
        return minimum, minimum
    return minimum, int(high) if high.isdigit() else None


def _value_problem(vr: str, vm: str | None, value: Any) -> str | None:
    if vr == "SQ":
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            return "VR SQ takes a JSON array of objects"
        return None
    minimum, maximum = vm_bounds(vm)
    if isinstance(value, list):
        if vm == "1":
            return "the attribute is single-valued (VM 1) and takes one value, not a JSON array"
        if len(value) < minimum or (maximum is not None and len(value) > maximum):
            return f"{len(value)} value(s) do not fit VM {vm}"
        items = value
    else:
        if vm and vm != "1":
            return f"the attribute is multi-valued (VM {vm}) and takes a JSON array"
        items = [value]
    plain = candidates(vr)
    for number, item in enumerate(items):
        problems = [element_problem(candidate, item) for candidate in plain]
        if all(problems):
            return problems[0] if len(items) == 1 else f"value {number + 1}: {problems[0]}"
    return None


_SCALAR_TYPES = (str, int, float, bool)
_PROBLEM_CACHE: dict[tuple[Any, ...], str | None] = {}
_PROBLEM_CACHE_SIZE = 65_536


def _frozen(value: Any) -> Any:
    """A hashable key equal only for JSON values of the same types and contents (None for objects)."""
    kind = type(value)
    if kind in _SCALAR_TYPES:
        return kind, value
    if kind is list:
        items = []
        for item in value:
            if type(item) not in _SCALAR_TYPES and item is not None:
                return None
            items.append((type(item), item))
        return list, tuple(items)
    return None


def value_problem(vr: str | None, vm: str | None, value: Any) -> str | None:
    """Why the JSON value of an attribute (an array when the VM allows several values) does not fit VR ``vr``
    (a plain VR or the dictionary's ``"US or SS"`` form) and VM ``vm``; None when it does or cannot be judged."""
    if value is None or vr is None:
        return None
    frozen = _frozen(value)
    if frozen is None:
        return _value_problem(vr, vm, value)
    key = (vr, vm, frozen)
    try:
        return _PROBLEM_CACHE[key]
    except KeyError:
        pass
    problem = _value_problem(vr, vm, value)
    if len(_PROBLEM_CACHE) >= _PROBLEM_CACHE_SIZE:
        _PROBLEM_CACHE.clear()
    _PROBLEM_CACHE[key] = problem
    return problem


def _sequence_problem(value: list[Any]) -> str | None:
    for number, item in enumerate(value):
        for key, nested in item.items():
            if dictionary.is_tag_key(key):
                continue
            vr, vm = dictionary.vr_vm_of(key)
            if vr is None:
                return f"item {number}: {key!r} is not a DICOM keyword"
            problem = validate(nested, vr, vm)
            if problem:
                return f"item {number}: {key}: {problem}"
    return None


def validate(value: Any, vr: str | None, vm: str | None = None) -> str | None:
    """Why the JSON value ``value`` does not fit VR ``vr`` and VM ``vm``, sequence items included (each
    attribute of an item by its own keyword's VR/VM); None when it does, or is ``NULL``/None, or the VR is None."""
    if value is NULL or value is None or vr is None:
        return None
    problem = value_problem(vr, vm, value)
    if problem is None and vr == "SQ" and isinstance(value, list):
        problem = _sequence_problem(value)
    return problem
