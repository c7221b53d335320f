"""Values the documents already hold that break their VR (PS3.5 6.2), found over the whole datastore and
reported, never raised: ``curation.model.validation.validate`` is the one judge, asked once per distinct value.

Speed: most values of the busy VRs (UIDs, decimal and integer strings, dates, times, code strings, short and
long strings) match a conservative pattern of :data:`CERTAINLY_VALID`, whose every match the validator accepts
(``tests/curate/test_checks_validity.py`` proves it with generated values). Those are matched at once with
pyarrow's regular expressions and only the rest go through the validator one by one.

Fixes are deterministic per VR and only offered when the validator accepts the result: dates and times
without separators (``1997.04.24`` -> ``19970424``, ``14:04:38`` -> ``140438``), a SpecificCharacterSet term
spelled with a hyphen or in lower case (``ISO-IR 100`` -> ``ISO_IR 100``, checked against pydicom's table of
terms), code strings in upper case, a decimal string re-formatted within 16 bytes by pydicom's
``format_number_as_ds``, an integer string without its ``.0``, stray spaces trimmed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import orjson
import pandas as pd
from pydicom.charset import python_encoding
from pydicom.valuerep import format_number_as_ds

from curation.curate.checks.context import CheckContext, plain
from curation.curate.checks.findings import Finding
from curation.curate.checks.sequences import doubtful_sequences
from curation.frames.cells import JOINED, STR, STR_BLANK, decode
from curation.model import dictionary
from curation.model.validation import validate, value_problem, vm_bounds
from curation.model.vr import BINARY_VRS, candidates

#: Item patterns whose every full match is a valid value of the VR (given the length noted): RE2 syntax.
CERTAINLY_VALID: dict[str, str] = {
    "UI": r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*",  # and at most 64 bytes
    "DS": r"[+-]?[0-9]{1,8}(?:\.[0-9]{1,6})?",
    "IS": r"[+-]?[0-9]{1,9}",
    "DA": r"(?:19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|1[0-9]|2[0-8])",
    "TM": r"(?:[01][0-9]|2[0-3])(?:[0-5][0-9](?:[0-5][0-9](?:\.[0-9]{1,6})?)?)?",
    "CS": r"[A-Z0-9_ ]{0,16}",
    "SH": r"[^\\\x00-\x1f\x7f-\x9f]{0,16}",
    "LO": r"[^\\\x00-\x1f\x7f-\x9f]{0,64}",
}
_UI_MAX = 64
_SKIPPED = BINARY_VRS | {"UN"}
_DATE = re.compile(r"(\d{4})[.\-/](\d{2})[.\-/](\d{2})")
_TIME = re.compile(r"(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?")
_DATETIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?([+-]\d{4})?")
_CHARACTER_SETS = frozenset(python_encoding)


def _pattern(vr: str, vm: str | None, multi: bool) -> str | None:
    """The full-text pattern of values surely valid for VR/VM (joined items for ``multi``), or None."""
    item = CERTAINLY_VALID.get(vr)
    if item is None or (vr == "UI" and multi):
        return None
    if not multi:
        return item if vm in (None, "1") or vm_bounds(vm)[0] <= 1 else None
    return f"(?:{item})(?:\\\\(?:{item}))*"


def _surely_valid(uniques: pd.Series, vr: str, vm: str | None, multi: bool) -> np.ndarray:
    """Per unique text value, whether a conservative pattern (and the VM bounds) proves it valid."""
    pattern = _pattern(vr, vm, multi)
    if pattern is None or uniques.empty:
        return np.zeros(len(uniques), dtype=bool)
    ok = np.array(uniques.str.fullmatch(pattern).fillna(False).astype(bool), dtype=bool)
    if vr == "UI":
        ok = ok & np.array((uniques.str.len() <= _UI_MAX).fillna(False).astype(bool), dtype=bool)
    if multi:
        low, high = vm_bounds(vm)
        count = np.array(uniques.str.count(r"\\"), dtype=float) + 1
        ok = ok & (count >= low) & (count <= (high if high is not None else math.inf))
    return ok


def _problems(column: pd.Series, codec: str, vr: str, vm: str | None) -> Iterator[tuple[np.ndarray, Any, str]]:
    """(row positions, JSON value, problem) for each distinct value of ``column`` the validator refuses."""
    try:
        codes, uniques = pd.factorize(column)
    except TypeError:  # unhashable cells (a user's frame): each row on its own
        codes, uniques = np.arange(len(column)), pd.Index(column.to_numpy(dtype=object), dtype=object)
    if not len(uniques):
        return
    cells = np.asarray(uniques, dtype=object)
    text = codec in (STR, STR_BLANK, JOINED) and isinstance(column.dtype, pd.StringDtype)
    if text:
        checked = ~_surely_valid(pd.Series(cells, dtype=column.dtype), vr, vm, codec == JOINED)
    elif vr == "SQ":
        checked = doubtful_sequences(list(cells), _surely_valid)
    else:
        checked = np.ones(len(cells), dtype=bool)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(cells) + 1))
    for number in np.flatnonzero(checked):
        value = decode(cells[number], codec)
        problem = validate(value, vr, vm)
        if problem:
            yield np.sort(order[starts[number] : starts[number + 1]]), value, problem


def _date(item: str) -> str | None:
    match = _DATE.fullmatch(item.strip())
    return "".join(match.groups()) if match else None


def _time(item: str) -> str | None:
    match = _TIME.fullmatch(item.strip())
    return "".join(g for g in match.groups() if g) if match else None


def _datetime(item: str) -> str | None:
    match = _DATETIME.fullmatch(item.strip())
    return "".join(g for g in match.groups() if g) if match else None


def _code(item: str, keyword: str) -> str | None:
    upper = item.strip().upper()
    if keyword == "SpecificCharacterSet":
        term = upper.replace("-", "_", 1) if upper.startswith("ISO-IR") else upper
        return term if term in _CHARACTER_SETS else None
    return upper


def _decimal(item: str) -> str | None:
    try:
        number = float(item)
    except ValueError:
        return None
    return format_number_as_ds(number) if math.isfinite(number) else None


def _integer(item: str) -> str | None:
    try:
        number = float(item)
    except ValueError:
        return None
    return str(int(number)) if math.isfinite(number) and number.is_integer() else None


_FIXERS: dict[str, Callable[[str], str | None]] = {
    "DA": _date,
    "TM": _time,
    "DT": _datetime,
    "DS": _decimal,
    "IS": _integer,
}


def reformat(keyword: str, vr: str, vm: str | None, value: Any) -> Any:
    """The value reformatted so that the validator accepts it (see the module docstring), or None."""
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in items):
        return None
    fixer: Callable[[str], str | None]
    if vr == "CS":

        def fixer(item: str) -> str | None:
            return _code(item, keyword)
    else:
        fixer = _FIXERS.get(vr, lambda item: item.strip())
    fixed = []
    for item in items:
        if value_problem(vr, "1", item) is None:
            fixed.append(item)
            continue
        new = fixer(item)
        if new is None:
            return None
        fixed.append(new)
    result: Any = fixed if isinstance(value, list) else fixed[0]
    return result if result != value and value_problem(vr, vm, result) is None else None


def _key(value: Any) -> str:
    text = (
        "\\".join(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value)
        else (value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())
    )
    return text if len(text) <= 80 else text[:77] + "..."


def _cell(value: Any, codec: str) -> Any:
    """A JSON value as a cell of a column of ``codec`` (joined text for ``joined``)."""
    if codec == JOINED and isinstance(value, list):
        return "\\".join(value)
    return value


def _row_vrs(context: CheckContext) -> tuple[np.ndarray, list[Any]]:
    """Per instance row, the code of its DICOMVRs map, and the maps (by identity: rows share them)."""
    if "row_vrs" not in context.memo:
        frame = context.frame("instances")
        maps = (
            frame["@DICOMVRs"].to_numpy(dtype=object)
            if "@DICOMVRs" in frame.columns
            else np.full(len(frame), None, dtype=object)
        )
        codes, _ = pd.factorize(np.fromiter(map(id, maps), dtype=np.int64, count=len(maps)))
        first = {int(code): maps[row] for row, code in reversed(list(enumerate(codes)))}
        context.memo["row_vrs"] = (codes, [first[code] for code in range(len(first))])
    cached: tuple[np.ndarray, list[Any]] = context.memo["row_vrs"]
    return cached


def _vr_groups(context: CheckContext, name: str, column: str) -> Iterator[tuple[str, str | None, np.ndarray | None]]:
    """(VR, VM, rows or None for all) to judge ``column`` by: a tag without a keyword takes each instance's own
    DICOMVRs entry (private creators reuse element numbers with other VRs), a keyword its dictionary VR/VM."""
    if name != "instances" or not dictionary.is_tag_key(column) or dictionary.keyword_of(column):
        vr, vm = dictionary.vr_vm_of(column, context.dicom_vrs)
        if vr is not None:
            yield vr, vm, None
        return
    codes, maps = _row_vrs(context)
    per_map = np.array([m.get(column) if isinstance(m, Mapping) else None for m in maps], dtype=object)
    row_vrs = per_map[codes] if len(codes) else per_map
    for vr in sorted({v for v in per_map if isinstance(v, str)}):
        yield vr, None, np.flatnonzero(row_vrs == vr)


def invalid_value(context: CheckContext) -> list[Finding]:
    """**invalid_value** (warning). Every distinct value of every attribute column of ``studies``, ``series`` and
    ``instances`` (sequence items included, each by its own keyword) that ``curation.model.validation.validate``
    refuses for the attribute's VR and VM (a private tag: each instance's own DICOMVRs entry; binary VRs and UN,
    and attributes without a known VR, are not judged). One finding per attribute, VR and value; ``rows`` hold it.

    Fix: ``reformat`` where a deterministic per-VR rewrite passes the validator (module docstring), else None.
    A Patient-level or multi-valued attribute on a primary image set needs ``primary="promote"`` to apply.
    """
    findings = []
    for name in ("studies", "series", "instances"):
        frame = context.frame(name)
        image_sets = context.image_set_of(name)
        for column in context.dicom_columns(name):
            codec = context.codec(name, column)
            for vr, vm, subset in _vr_groups(context, name, column):
                if all(part in _SKIPPED for part in candidates(vr)):
                    continue
                cells = frame[column] if subset is None else frame[column].iloc[subset]
                for positions, value, problem in _problems(cells, codec, vr, vm):
                    rows = positions if subset is None else subset[positions]
                    findings.append(_invalid(context, name, column, vr, vm, codec, rows, image_sets, value, problem))
    return findings


def _invalid(
    context: CheckContext,
    name: str,
    column: str,
    vr: str,
    vm: str | None,
    codec: str,
    rows: np.ndarray,
    image_sets: np.ndarray,
    value: Any,
    problem: str,
) -> Finding:
    frame = context.frame(name)
    fixed = reformat(column, vr, vm, value) if codec in (STR, JOINED) else None
    suggested = None if fixed is None else _cell(fixed, codec)
    return Finding(
        check="invalid_value",
        severity="warning",
        level=context.level(name, column),
        key=_key(value),
        attribute=column,
        image_sets=tuple(sorted(set(image_sets[rows]))),
        found=((plain(frame[column].iloc[int(rows[0])]), len(rows)),),
        rows=context.labels(name, rows),
        fix=None if fixed is None else "reformat",
        suggested=suggested,
        detail=f"{column} ({vr}) {_key(value)!r}: {problem}" + (f"; reformatted: {suggested!r}" if fixed else ""),
        discriminator=vr + ":" + orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode(),
    )
