"""Outgoing values: coerce what a curator typed into AHI's JSON encoding, then validate it by VR and VM.

AHI stores DICOM values as JSON (see AHI.md section 1): text VRs (DA, TM, DT, IS, DS, CS, PN, UI, ...) are
strings, US/SS/UL/SL/SV/UV integers, FL/FD numbers, binary VRs base64 strings, AT 8-hex strings, SQ arrays of
objects, and attributes whose dictionary VM allows several values are arrays even with one value.

``coerce(value, vr, vm)`` turns ordinary Python/pandas values into that encoding:

- DA: ``date``/``datetime``/``pd.Timestamp``/``np.datetime64`` -> ``"YYYYMMDD"``;
- TM: ``time``/``datetime``/``Timestamp`` -> ``"HHMMSS"``, plus ``".ffffff"`` only when microseconds are set;
- DT: ``datetime``/``Timestamp`` -> ``"YYYYMMDDHHMMSS[.ffffff][+HHMM]"`` (offset only when tz-aware);
  a ``date`` -> ``"YYYYMMDD"``;
- IS: an integer (or an integral float/Decimal) -> its decimal string; DS: a number -> a string of at most
  16 characters (``pydicom.valuerep.format_number_as_ds``; integral values written without ``.0``);
- US/SS/UL/SL/SV/UV: integral numbers -> ``int``; FL/FD: numbers -> ``int``/``float``; NumPy scalars -> Python;
- PN: a ``pydicom`` ``PersonName`` -> its ``str``; AT: an int tag -> 8 uppercase hex digits;
- binary VRs (OB, OW, UN, ...): ``bytes`` -> base64 text; a ``str`` is taken as base64 already;
- SQ: a dict -> a one-item list; each item's values are coerced by their own keyword's VR/VM (recursively);
- multi-valued attributes (VM other than 1): a list/tuple/array -> list of coerced items; a scalar -> a
  one-item list; a ``str`` containing a backslash is split on it (DICOM's value delimiter), so
  ``"ORIGINAL\\PRIMARY"`` and ``["ORIGINAL", "PRIMARY"]`` mean the same;
- a ``str`` is never changed (padding is kept: a curator may mean ``"120 "``), ``NULL`` stays ``NULL``.

Anything else is kept as given and left to ``validate``. ``coerce`` raises ``CoercionError`` (a
``ValueError``) when a value cannot be encoded (``1.5`` for IS, an infinite DS, a ``set``); ``validate``
returns the reason a JSON value does not fit its VR/VM (``curation.model.validation``: PS3.5 6.2 characters,
length, format and range by VR, with pydicom's validators where they are right, and the multiplicity), or None.
``check`` does both and never raises.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
from pydicom.valuerep import format_number_as_ds

from curation.model import validation
from curation.model.dictionary import vm_of, vr_vm_of
from curation.model.missing import NULL, is_absent
from curation.model.updates import value_problem

__all__ = ["CoercionError", "check", "coerce", "is_absent", "same_value", "validate", "vm_of", "vr_vm_of"]

_INT_VRS = frozenset({"US", "SS", "UL", "SL", "SV", "UV"})
_FLOAT_VRS = frozenset({"FL", "FD"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_DS_MAX = 16
_IS_MAX = 12


class CoercionError(ValueError):
    """A value that cannot be put in AHI's encoding for its VR (the message says why)."""


def _multi(vm: str | None) -> bool:
    return bool(vm) and vm != "1"


def _plain(value: Any) -> Any:
    """NumPy scalars -> Python; str/int/float subclasses (pydicom UID, IS, DSfloat) -> the plain type."""
    if isinstance(value, np.generic):
        return value.item()
    t = type(value)
    if t is str or t is int or t is float or t is bool:
        return value
    if isinstance(value, str):
        return str(value)
    return value


def _datetime(value: Any) -> Any:
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).to_pydatetime()
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime(warn=False)
    return value


def _fraction(microsecond: int) -> str:
    return f".{microsecond:06d}" if microsecond else ""


def _offset(value: dt.datetime) -> str:
    offset = value.utcoffset()
    if offset is None:
        return ""
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}{minutes % 60:02d}"


def _number(value: Any, vr: str) -> float | int | Decimal:
    if isinstance(value, bool):
        raise CoercionError(f"VR {vr} takes a number, not a boolean")
    if isinstance(value, int | float | Decimal):
        if isinstance(value, float | Decimal) and not math.isfinite(value):
            raise CoercionError(f"VR {vr} cannot hold {value} (not a finite number)")
        return value
    raise CoercionError(f"VR {vr} takes a number, not {type(value).__name__}")


def _integral(value: Any, vr: str) -> int:
    number = _number(value, vr)
    if isinstance(number, int):
        return number
    if number != int(number):
        raise CoercionError(f"VR {vr} takes an integer, not {value}")
    return int(number)


def _ds(value: Any) -> str:
    number = _number(value, "DS")
    if isinstance(number, int) or number == int(number):
        text = str(int(number))
        if len(text) <= _DS_MAX:
            return text
    try:
        return format_number_as_ds(float(number) if isinstance(number, int) else number)
    except (ValueError, OverflowError) as exc:
        raise CoercionError(f"VR DS cannot hold {value}: {exc}") from None


def _ambiguous(value: Any, vr: str) -> Any:
    """A value for a dictionary VR such as ``"US or SS"``: the first candidate that encodes and validates it."""
    errors = []
    for candidate in (part.strip() for part in vr.split(" or ")):
        try:
            coerced = _element(value, candidate)
        except CoercionError as exc:
            errors.append(str(exc))
            continue
        if value_problem(candidate, None, coerced) is None:
            return coerced
    if errors:
        raise CoercionError(errors[0])
    return value


def _da(value: Any, vr: str) -> Any:
    value = _datetime(value)
    return value.strftime("%Y%m%d") if isinstance(value, dt.date) else value


def _tm(value: Any, vr: str) -> Any:
    value = _datetime(value)
    if isinstance(value, dt.datetime):
        value = value.time()
    if isinstance(value, dt.time):
        return value.strftime("%H%M%S") + _fraction(value.microsecond)
    return value


def _dt(value: Any, vr: str) -> Any:
    value = _datetime(value)
    if isinstance(value, dt.datetime):
        return value.strftime("%Y%m%d%H%M%S") + _fraction(value.microsecond) + _offset(value)
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    return value


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float | Decimal)


def _is(value: Any, vr: str) -> Any:
    if not _numeric(value):
        return value
    text = str(_integral(value, "IS"))
    if len(text) > _IS_MAX:
        raise CoercionError(f"VR IS holds at most {_IS_MAX} characters; {text} is longer")
    return text


def _float(value: Any, vr: str) -> Any:
    if not _numeric(value):
        return value
    number = _number(value, vr)
    return float(number) if isinstance(number, Decimal) else number


def _pn(value: Any, vr: str) -> Any:
    return str(value) if type(value).__name__ == "PersonName" else value


def _at(value: Any, vr: str) -> Any:
    return f"{value:08X}" if isinstance(value, int) and not isinstance(value, bool) else value


def _binary(value: Any, vr: str) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


#: How one value (not a list) is put in AHI's encoding, by VR (VRs not listed: kept as given).
_ENCODERS: dict[str, Any] = {
    "DA": _da,
    "TM": _tm,
    "DT": _dt,
    "DS": lambda value, vr: _ds(value) if _numeric(value) else value,
    "IS": _is,
    **{vr: (lambda value, vr: _integral(value, vr) if _numeric(value) else value) for vr in _INT_VRS},
    **{vr: _float for vr in _FLOAT_VRS},
    "PN": _pn,
    "AT": _at,
    **{vr: _binary for vr in _BINARY_VRS},
    "SQ": lambda value, vr: _item(value) if isinstance(value, dict) else value,
}


def _element(value: Any, vr: str | None) -> Any:
    """One value (not a list) in AHI's encoding for ``vr``."""
    value = _plain(value)
    if value is NULL or value is None or isinstance(value, str) or vr is None:
        return None if value is NULL else value
    if " or " in vr:
        return _ambiguous(value, vr)
    encoder = _ENCODERS.get(vr)
    return value if encoder is None else encoder(value, vr)


def _item(item: dict) -> dict:
    """A sequence item: every value coerced by its own keyword's VR/VM (NULL/None -> JSON null)."""
    out: dict[str, Any] = {}
    for key, value in item.items():
        if not isinstance(key, str):
            raise CoercionError(f"sequence item keys must be strings, not {type(key).__name__}")
        if is_absent(value) or value is NULL:
            out[key] = None
            continue
        vr, vm = vr_vm_of(key)
        out[key] = coerce(value, vr, vm)
    return out


def _sequence(value: Any) -> list:
    items = [value] if isinstance(value, dict) else list(value)
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise CoercionError(f"VR SQ takes a list of objects (dicts); an item is {type(item).__name__}")
        out.append(_item(item))
    return out


def _listish(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray | pd.Series | pd.Index)


def _jsonable(value: Any) -> bool:
    t = type(value)
    if t is str or t is int or t is float or t is bool or value is None:
        return t is not float or math.isfinite(value)
    if t is list:
        return all(_jsonable(v) for v in value)
    if t is dict:
        return all(type(k) is str and _jsonable(v) for k, v in value.items())
    return False


def coerce(value: Any, vr: str | None, vm: str | None = None) -> Any:
    """``value`` in AHI's JSON encoding for ``vr``/``vm`` (see the module docstring); NULL stays NULL.

    Absent values (None, NaN, NA) return None. Raises ``CoercionError`` when the value cannot be encoded.
    """
    if value is NULL:
        return NULL
    if is_absent(value):
        return None
    if vr == "SQ":
        result: Any = _sequence(value) if (isinstance(value, dict) or _listish(value)) else _plain(value)
    elif _listish(value):
        result = [None if is_absent(v) else _element(v, vr) for v in value]
    elif _multi(vm):
        if isinstance(value, str) and "\\" in value:
            result = [_element(part, vr) for part in value.split("\\")]
        else:
            result = [_element(value, vr)]
    else:
        result = _element(value, vr)
    if not _jsonable(result):
        raise CoercionError(f"{type(value).__name__} value {_short(value)} cannot be written as JSON")
    return result


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(value: Any, vr: str | None, vm: str | None = None) -> str | None:
    """Why the JSON value ``value`` does not fit VR ``vr`` and VM ``vm``; None when it does (or VR unknown).

    The rules are ``curation.model.validation`` (PS3.5 6.2 by VR, VM, sequence items by their keywords).
    """
    return validation.validate(value, vr, vm)


def check(value: Any, vr: str | None, vm: str | None = None) -> tuple[Any, str | None]:
    """``(coerced value, problem or None)``; never raises. On a coercion failure the value is returned as given."""
    try:
        coerced = coerce(value, vr, vm)
    except CoercionError as exc:
        return value, str(exc)
    except Exception as exc:  # a value must give a problem, never an exception
        return value, f"cannot encode {_short(value)}: {type(exc).__name__}: {exc}"
    try:
        return coerced, validate(coerced, vr, vm)
    except Exception as exc:
        return coerced, f"cannot validate {_short(coerced)}: {type(exc).__name__}: {exc}"


def same_value(left: Any, right: Any) -> bool:
    """JSON equality of two cell values (NULL only equals NULL; booleans never equal numbers)."""
    if left is right:
        return True
    if left is NULL or right is NULL or left is None or right is None:
        return False
    tl, tr = type(left), type(right)
    if tl is list or tr is list:
        return (
            tl is list
            and tr is list
            and len(left) == len(right)
            and all(same_value(a, b) for a, b in zip(left, right, strict=True))
        )
    if tl is dict or tr is dict:
        return (
            tl is dict
            and tr is dict
            and left.keys() == right.keys()
            and all(same_value(v, right[k]) for k, v in left.items())
        )
    if (tl is bool) != (tr is bool):
        return False
    try:
        return bool(left == right)
    except (TypeError, ValueError):
        return False
