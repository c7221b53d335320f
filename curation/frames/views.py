"""Analysis views of level frames that never touch the raw values: typed columns and exploded sequences.

``typed(frame, vrs)`` returns a new frame in which, by VR:

- DA -> ``datetime64`` (``"20000101"`` -> 2000-01-01); DT -> ``datetime64`` in the value's own local clock
  time (a ``+hhmm`` offset is dropped: mixed offsets cannot share a column); TM -> ``timedelta64`` since
  midnight (``"131344.000"`` -> 13:13:44).
- IS -> ``Int64``, DS -> ``Float64`` (padding stripped).
- Multi-valued cells (backslash-joined text in a ``str`` column, or tuples) become lists of parsed values
  (``None`` for an empty element) in an ``object`` column; a column mixing scalars and lists is treated the
  same way, scalars parsed alone.
- PN -> the column is kept and five component columns are added right after it: ``<col>.family``,
  ``.given``, ``.middle``, ``.prefix``, ``.suffix`` (the alphabetic group; lists give lists).

Present-empty (``""``, ``NULL``), absent and unparseable cells become missing (NaT / NA). Other columns are
copied unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from pydicom.valuerep import PersonName

from curation.frames.cells import freeze, is_empty
from curation.frames.flattening import NULL, is_absent, split_column
from curation.model import dictionary as dicom

PN_COMPONENTS = ("family", "given", "middle", "prefix", "suffix")
_PN_ATTRIBUTES = ("family_name", "given_name", "middle_name", "name_prefix", "name_suffix")

_DA = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_TM = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?$")
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$")


@lru_cache(maxsize=65536)
def parse_da(text: str) -> pd.Timestamp | None:
    """A DA string as a Timestamp (None if not a date)."""
    match = _DA.match(text.strip())
    if not match:
        return None
    try:
        year, month, day = (int(g) for g in match.groups())
        return pd.Timestamp(datetime(year, month, day))
    except ValueError:
        return None


@lru_cache(maxsize=65536)
def parse_tm(text: str) -> pd.Timedelta | None:
    """A TM string as the Timedelta since midnight (None if not a time)."""
    match = _TM.match(text.strip())
    if not match:
        return None
    hours, minutes, seconds, fraction = match.groups()
    if int(hours) > 23 or int(minutes or 0) > 59 or int(seconds or 0) > 60:
        return None
    micro = int((fraction or "0").ljust(6, "0"))
    return pd.Timedelta(hours=int(hours), minutes=int(minutes or 0), seconds=int(seconds or 0), microseconds=micro)


@lru_cache(maxsize=65536)
def parse_dt(text: str) -> pd.Timestamp | None:
    """A DT string as a naive Timestamp of its local clock time (offset dropped; None if not a datetime)."""
    match = _DT.match(text.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, _offset = match.groups()
    try:
        return pd.Timestamp(
            datetime(
                int(year),
                int(month or 1),
                int(day or 1),
                int(hour or 0),
                int(minute or 0),
                int(second or 0),
                int((fraction or "0").ljust(6, "0")),
            )
        )
    except ValueError:
        return None


@lru_cache(maxsize=65536)
def parse_is(text: str) -> int | None:
    """An IS string as an int (None if not an integer string)."""
    try:
        return int(text.strip())
    except ValueError:
        return None


@lru_cache(maxsize=65536)
def parse_ds(text: str) -> float | None:
    """A DS string as a float (None if not a decimal string)."""
    try:
        return float(text.strip())
    except ValueError:
        return None


@lru_cache(maxsize=65536)
def parse_pn(text: str) -> tuple[str | None, ...]:
    """The five components (family, given, middle, prefix, suffix) of a PN's alphabetic group."""
    name = PersonName(text)
    return tuple((getattr(name, a) or None) for a in _PN_ATTRIBUTES)


_PARSERS: dict[str, tuple[Callable[[str], Any], str]] = {
    "DA": (parse_da, "datetime64[ns]"),
    "DT": (parse_dt, "datetime64[ns]"),
    "TM": (parse_tm, "timedelta64[ns]"),
    "IS": (parse_is, "Int64"),
    "DS": (parse_ds, "Float64"),
}


def _parse(value: Any, parser: Callable[[str], Any], multi: bool = False) -> Any:
    if is_absent(value) or is_empty(value):
        return None
    if isinstance(value, str) and multi:
        value = value.split("\\")
    if type(value) is list or type(value) is tuple:
        return [parser(v) if isinstance(v, str) else v if isinstance(v, int | float) else None for v in value]
    if isinstance(value, str):
        return parser(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return None


def _vr_lookup(vrs: Any) -> Callable[[str], str | None]:
    if vrs is None:
        return lambda column: dicom.vr_of(split_column(column)[1])
    if isinstance(vrs, Mapping):
        return lambda column: vrs.get(column) or dicom.vr_of(split_column(column)[1])
    if hasattr(vrs, "vr"):
        return lambda column: _safe_vr(vrs, column)
    raise TypeError("vrs must be a Snapshot, a {column: VR} mapping or None")


def _safe_vr(snapshot: Any, column: str) -> str | None:
    try:
        return snapshot.vr(column)
    except KeyError:
        return dicom.vr_of(split_column(column)[1])


def typed(frame: pd.DataFrame, vrs: Any = None) -> pd.DataFrame:
    """A new frame with DA/DT/TM, IS/DS and PN columns parsed (see the module docstring).

    ``vrs`` is a Snapshot (its ``vr``), a ``{column: VR}`` mapping, or None (pydicom's dictionary).
    """
    vr_of = _vr_lookup(vrs)
    columns: dict[str, Any] = {}
    for column in frame.columns:
        values = frame[column]
        vr = vr_of(column) if isinstance(column, str) and not split_column(column)[2] else None
        if vr in _PARSERS:
            parser, dtype = _PARSERS[vr]
            multi = _multi_valued(column)
            parsed = [_parse(v, parser, multi) for v in values.to_numpy(dtype=object)]
            if any(type(v) is list for v in parsed):
                array = np.empty(len(parsed), dtype=object)
                array[:] = parsed
                columns[column] = pd.Series(array, index=frame.index, dtype=object)
            else:
                columns[column] = _typed_series(parsed, dtype, frame.index)
        elif vr == "PN":
            columns[column] = values.copy()
            for i, part in enumerate(PN_COMPONENTS):
                columns[f"{column}.{part}"] = pd.Series(
                    [_pn_part(v, i, _multi_valued(column)) for v in values.to_numpy(dtype=object)],
                    index=frame.index,
                    dtype=object,
                )
        else:
            columns[column] = values.copy()
    return pd.concat(columns, axis=1) if columns else frame.copy()


def _multi_valued(column: Any) -> bool:
    """True when the dictionary says the column's attribute is multi-valued (its text cells are joined)."""
    if not isinstance(column, str):
        return False
    key = split_column(column)[1]
    if dicom.is_tag_key(key):
        return False
    vm = dicom.vm_of(key)
    return bool(vm) and vm != "1"


def _typed_series(parsed: list, dtype: str, index: pd.Index) -> pd.Series:
    if dtype in ("Int64", "Float64"):
        clean = [v if isinstance(v, int | float) and not isinstance(v, bool) else None for v in parsed]
        if dtype == "Int64" and any(isinstance(v, float) for v in clean):
            dtype = "Float64"
        return pd.Series(pd.array(clean, dtype=dtype), index=index)  # type: ignore[call-overload]
    return pd.Series([pd.NaT if v is None else v for v in parsed], index=index, dtype=dtype)


def _pn_part(value: Any, i: int, multi: bool = False) -> Any:
    if isinstance(value, str) and multi and value:
        value = value.split("\\")
    if isinstance(value, str):
        return parse_pn(value)[i] if value else None
    if type(value) is list or type(value) is tuple:
        return [parse_pn(v)[i] if isinstance(v, str) else None for v in value]
    return None


def explode(frame: pd.DataFrame, attribute: str) -> pd.DataFrame:
    """One row per item of the sequence ``attribute``: the parent's index plus ``item`` (0-based position).

    Exploding an exploded frame adds ``item2`` (then ``item3``...), so every index level keeps its own name.

    The items' attributes become columns of immutable cells (first-seen order; ``NULL`` for a null value, None
    for absent; nested sequences stay tuples of read-only mappings). Rows whose value is absent, NULL or empty
    give no row.
    """
    if attribute not in frame.columns:
        raise KeyError(f"no column {attribute!r}")
    parents: list[Any] = []
    items: list[int] = []
    rows: list[dict] = []
    for key, value in zip(frame.index, frame[attribute].to_numpy(dtype=object), strict=True):
        if type(value) is not tuple and type(value) is not list:
            continue
        for number, item in enumerate(value):
            if isinstance(item, dict):
                parents.append(key if isinstance(key, tuple) else (key,))
                items.append(number)
                rows.append(item)
    names = [n or f"level_{i}" for i, n in enumerate(frame.index.names)]
    item_name = "item"
    while item_name in names:
        item_name = f"item{len([n for n in names if str(n).startswith('item')]) + 1}"
    names.append(item_name)
    tuples = [(*parent, number) for parent, number in zip(parents, items, strict=True)]
    index = (
        pd.MultiIndex.from_tuples(tuples, names=names)
        if tuples
        else pd.MultiIndex.from_arrays([[] for _ in names], names=names)
    )
    keys = dict.fromkeys(k for row in rows for k in row)
    data = {}
    for key in keys:
        array = np.empty(len(rows), dtype=object)
        array[:] = [_cell(row, key) for row in rows]
        data[key] = pd.Series(array, dtype=object, copy=False)
    result = pd.DataFrame(data, columns=list(keys)) if data else pd.DataFrame(index=range(len(rows)))
    result.index = index
    return result


_ABSENT = object()


def _cell(row: dict, key: str) -> Any:
    value = row.get(key, _ABSENT)
    if value is _ABSENT:
        return None
    if value is None:
        return NULL
    return freeze(value)


def adopt_study(studies: pd.DataFrame, image_set_ids: Any, like: str) -> pd.DataFrame:
    """A copy of ``studies`` in which the rows of ``image_set_ids`` take every Patient- and Study-level value
    of the row ``like`` (an image set of the target study), ``StudyInstanceUID`` included.

    Moving a series into another study is an edit of its image set's ``StudyInstanceUID`` and of its Patient-
    and Study-level attributes to match the target study: AHI keeps those consistent across the primary image
    sets of a study (Developer Guide, "Understanding image sets": data "that conflicts with primary image sets
    already in the store will be persisted as non-primary"), so ``plan(changes, primary="promote")`` refuses a
    move that leaves one different. An attribute ``like`` lacks becomes ``curation.REMOVE`` on those rows;
    AHI-generated ``@`` columns are left alone. ``studies`` itself is never modified.
    """
    from curation.frames.cells import REMOVE

    rows = [image_set_ids] if isinstance(image_set_ids, str) else list(image_set_ids)
    if like not in studies.index:
        raise KeyError(f"adopt_study: image set {like!r} (like=) is not a row of the studies frame")
    missing = [row for row in rows if row not in studies.index]
    if missing:
        raise KeyError(f"adopt_study: image set {missing[0]!r} is not a row of the studies frame")
    out = studies.copy()
    source = studies.loc[like]
    for column in studies.columns:
        if str(column).startswith("@"):
            continue
        value = source[column]
        if is_absent(value):
            present = [row for row in rows if not is_absent(studies.at[row, column])]
            if present:
                if out[column].dtype != object and not isinstance(out[column].dtype, pd.StringDtype):
                    out[column] = out[column].astype(object)
                out.loc[present, column] = REMOVE
            continue
        out.loc[rows, column] = pd.Series([value] * len(rows), index=rows, dtype=object).astype(out[column].dtype)
    return out
