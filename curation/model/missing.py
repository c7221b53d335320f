"""Absent and empty: the two ways an attribute has no value, kept apart everywhere.

An attribute that is not in the document is *absent*: a missing cell (None, NaN, ``pd.NA``, ``pd.NaT``), which
``is_absent`` (the one definition) and pandas' ``isna`` report. An attribute present with JSON ``null`` (DICOM's
zero-length value) is *empty*: the sentinel ``NULL``. Setting a cell to a missing value removes the attribute;
setting it to ``NULL`` empties it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


class _Null:
    """The value of an attribute that is present with a JSON ``null`` value (distinct from absent)."""

    __slots__ = ()
    _instance: _Null | None = None

    def __new__(cls) -> _Null:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NULL"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "NULL"

    def __copy__(self) -> _Null:
        return self

    def __deepcopy__(self, memo: dict) -> _Null:
        return self


#: Cell value of a present attribute whose value is ``null``. Set ``df.loc[m, "X"] = NULL`` to empty an
#: attribute; set ``None`` (or ``pd.NA``) to remove it.
NULL = _Null()


def is_absent(value: Any) -> bool:
    """True for a cell meaning "attribute absent": None, NaN, ``pd.NA``, ``pd.NaT`` (never ``NULL``)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating):
        return value != value
    if isinstance(value, np.datetime64):
        return bool(np.isnat(value))
    return False
