"""Which cells of an edited column differ from the snapshot's: vectorised per dtype, Python only for the few.

``changed(orig, new)`` returns the positions where ``new`` may differ from ``orig`` (the caller decides with
the VR whether a candidate is a change: ``"CHEST"`` vs ``"CHEST"`` never is; ``"1"`` vs ``1`` may not be):

- both ``str``, both ``Int64`` or both ``Float64``: one Arrow/NumPy comparison plus the missing masks;
- otherwise (object columns, or a column whose dtype the edit changed): ``==`` on the cells as objects.
  (An earlier version compared object pointers first through ctypes; with immutable cells and typed
  columns it bought nothing: ``benchmarks/bench_diff.py`` measured 19.0 ms with it against 16.1 ms without
  on an unedited 10,000-row frame with a sequence column, so it was removed.)

Two missing cells (None, NaN, NA, NaT) are equal; a missing and a present one are not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["changed"]


def _missing(values: Any) -> np.ndarray:
    return np.asarray(pd.isna(values), dtype=bool)


def _typed(orig: pd.api.extensions.ExtensionArray, new: pd.api.extensions.ExtensionArray) -> np.ndarray:
    equal = orig == new
    if isinstance(equal, pd.api.extensions.ExtensionArray):
        equal = equal.to_numpy(dtype=bool, na_value=False)
    both = _missing(orig) & _missing(new)
    return np.flatnonzero(~(np.asarray(equal, dtype=bool) | both))


def _elementwise(orig: np.ndarray, new: np.ndarray) -> np.ndarray:
    """``orig == new`` elementwise (a Python fallback when a cell cannot be compared so)."""
    try:
        equal = orig == new
        if not isinstance(equal, np.ndarray) or equal.dtype != bool or equal.shape != orig.shape:
            raise TypeError("not an elementwise comparison")
        return equal
    except (TypeError, ValueError):
        return np.fromiter((_safe_equal(a, b) for a, b in zip(orig, new, strict=True)), bool, len(orig))


def _safe_equal(left: Any, right: Any) -> bool:
    try:
        return bool(left == right) if type(left) is type(right) else False
    except (TypeError, ValueError):
        return False


def objects(values: Any) -> np.ndarray:
    """A column's cells as a 1-D object array (no copy when it already is one)."""
    if isinstance(values, np.ndarray) and values.dtype == object:
        return values
    if isinstance(getattr(values, "dtype", None), pd.ArrowDtype):  # nested Arrow cells as lists, not arrays
        return np.fromiter(values.tolist(), dtype=object, count=len(values))
    return np.asarray(values.to_numpy(dtype=object) if hasattr(values, "to_numpy") else values, dtype=object)


def changed(orig: Any, new: Any) -> np.ndarray:
    """Positions where ``new`` differs from ``orig`` (arrays or Series of one length; see the module docstring)."""
    if isinstance(orig, pd.Series):
        orig = orig.array
    if isinstance(new, pd.Series):
        new = new.array
    if (
        isinstance(orig, pd.api.extensions.ExtensionArray)
        and isinstance(new, pd.api.extensions.ExtensionArray)
        and orig.dtype == new.dtype
        and not isinstance(orig.dtype, pd.ArrowDtype)  # Arrow compares no lists: compared as cells below
    ):
        return _typed(orig, new)
    left, right = objects(orig), objects(new)
    if not len(left):
        return np.zeros(0, dtype=np.int64)
    unequal = np.flatnonzero(~_elementwise(left, right))
    if not len(unequal):
        return unequal
    both = _missing(left[unequal]) & _missing(right[unequal])
    return unequal[~both]
