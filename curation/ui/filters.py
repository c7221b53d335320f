"""The panel's selection and value rules, without widgets: filters on a frame, and typed values by VR.

``filter_mask(frame, attribute, op, value)`` is one filter row of the panel; ``Filter.complete`` tells
whether a row says enough to filter (an operator that compares needs a value: an empty one is ignored, not
read as "equals the empty text"). ``parse_value`` turns what a person typed into the AHI JSON value by VR;
``cell_for`` into the cell the panel writes into a frame (``curation.frames.cells``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd

from curation.frames.cells import REMOVE, is_empty, is_remove
from curation.frames.flattening import NULL, copy_value, is_absent
from curation.model.vr import FLOAT_VRS, INT_VRS

__all__ = ["OPERATORS", "UNARY_OPERATORS", "Filter", "cell_for", "filter_mask", "parse_value"]

OPERATORS = ("==", "!=", "contains", "startswith", "is missing", "is NULL", "<", ">")
#: Operators that take no value.
UNARY_OPERATORS = frozenset({"is missing", "is NULL"})


@dataclass(frozen=True)
class Filter:
    """One condition on a column: ``attribute op value`` (value ignored by "is missing" / "is NULL")."""

    attribute: str | None
    op: str
    value: str = ""

    @property
    def complete(self) -> bool:
        """True when the row filters: an attribute is chosen, and an operator that compares has a value."""
        if not self.attribute:
            return False
        return self.op in UNARY_OPERATORS or bool(str(self.value).strip())


def _text(value: Any) -> str | None:
    """A cell as text for comparisons: strings stripped, arrays joined by backslashes; None when absent/empty."""
    if is_absent(value) or is_empty(value) or is_remove(value):
        return None
    if isinstance(value, str):
        return "\\".join(part.strip() for part in value.split("\\")) if "\\" in value else value.strip()
    if isinstance(value, list | tuple):
        parts = [_text(v) for v in value]
        return "\\".join("" if p is None else p for p in parts)
    if isinstance(value, dict):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, list | tuple) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def filter_mask(frame: pd.DataFrame, attribute: str, op: str, value: str = "") -> pd.Series:
    """Boolean mask of the rows of ``frame`` where ``attribute op value`` holds.

    Cells compare as text (strings stripped, arrays joined with backslashes, numbers as written); "=="
    also matches numerically ("1" == 1.0). "!=" is the negation of "==" (absent cells match it).
    "contains"/"startswith" are case-sensitive on the text. "<"/">" compare numbers when the value is a
    number (cells that are not numbers never match), else text (DA dates compare correctly as text).
    "is missing": the attribute is absent; "is NULL": present-empty (``""`` in a text column, ``NULL`` in an
    object one). An unknown column matches nothing (and everything is "missing").
    """
    if op not in OPERATORS:
        raise ValueError(f"unknown operator {op!r}; use one of {', '.join(OPERATORS)}")
    if attribute not in frame.columns:
        return pd.Series(op in ("is missing", "!="), index=frame.index, dtype=bool)
    cells = frame[attribute].to_numpy(dtype=object)
    if op == "is missing":
        result = [is_absent(v) for v in cells]
    elif op == "is NULL":
        result = [not is_absent(v) and is_empty(v) for v in cells]
    else:
        target = value.strip() if isinstance(value, str) else _text(value) or ""
        number = _number(target)
        if op in ("==", "!="):
            equal = [
                (text := _text(v)) is not None and (text == target or (number is not None and _number(v) == number))
                for v in cells
            ]
            result = equal if op == "==" else [not e for e in equal]
        elif op == "contains":
            result = [(text := _text(v)) is not None and target in text for v in cells]
        elif op == "startswith":
            result = [(text := _text(v)) is not None and text.startswith(target) for v in cells]
        elif number is not None:
            numbers = [_number(v) for v in cells]
            result = [n is not None and (n < number if op == "<" else n > number) for n in numbers]
        else:
            texts = [_text(v) for v in cells]
            result = [t is not None and (t < target if op == "<" else t > target) for t in texts]
    return pd.Series(np.asarray(result, dtype=bool), index=frame.index)


def _vm(key: str) -> str | None:
    from curation.model.dictionary import vm_of

    return vm_of(key)


def parse_value(text: Any, vr: str | None, vm: str | None = None) -> Any:
    """The AHI JSON value of what a person typed, by VR: integers for US/SS/UL/SL/SV/UV, numbers for FL/FD,
    strings otherwise; multi-valued attributes (VM other than 1) split on backslashes into an array; SQ (or
    text starting with ``[``/``{``) parsed as JSON. Values that are not strings are returned as they are.
    Raises ValueError with a readable reason.
    """
    if not isinstance(text, str):
        return copy_value(text)
    stripped = text.strip()
    if vr == "SQ" or stripped[:1] in ("[", "{"):
        try:
            return orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            if vr == "SQ":
                raise ValueError(f"a sequence (SQ) value must be JSON (an array of objects): {exc}") from None
    multi = vm is not None and vm != "1"
    parts = text.split("\\") if multi else [text]
    candidates = [c.strip() for c in (vr or "").split(" or ") if c.strip()]
    out: list[Any] = []
    for part in parts:
        if candidates and all(c in INT_VRS for c in candidates):
            try:
                out.append(int(part.strip()))
            except ValueError:
                raise ValueError(f"VR {vr} takes integers, and {part!r} is not one") from None
        elif candidates and all(c in FLOAT_VRS for c in candidates):
            try:
                out.append(float(part.strip()))
            except ValueError:
                raise ValueError(f"VR {vr} takes numbers, and {part!r} is not one") from None
        else:
            out.append(part)
    return out if multi else out[0]


def cell_for(value: Any, text: bool) -> Any:
    """The cell the panel writes for a JSON ``value`` (None: remove): in a text column ``""`` for empty and
    arrays of text joined by backslashes; elsewhere ``NULL`` for empty; ``REMOVE`` for a removal."""
    if value is None:
        return REMOVE
    if text:
        if value is NULL:
            return ""
        if isinstance(value, list) and all(isinstance(v, str) and "\\" not in v for v in value) and value != [""]:
            return "\\".join(value)
    return copy_value(value)
