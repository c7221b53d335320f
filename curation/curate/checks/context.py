"""What every check reads: a Snapshot's cached frames, the level, VR and codec of each column, and values compared
the way PS3.5 says they are equal.

Checks read ``snapshot.cached_flattened()`` (the cached frames themselves, not copies, for speed) and never
modify them. Comparing values (PS3.5 6.2): trailing spaces are insignificant for every text VR and leading ones
too for AE, CS, DS, IS, LO and SH; in PN trailing component (``^``) and group (``=``) delimiters may be omitted
(PS3.5 6.2.1.1). Absent (None), present-empty (``""``/``NULL``) and a value stay three states.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import pandas as pd

from curation.frames.cells import INDEX, JOINED, TEXT_CODECS
from curation.frames.flattening import Flattened, split_column
from curation.frames.snapshot import Snapshot
from curation.model import dictionary
from curation.model.missing import is_absent
from curation.model.vr import TEXT_VRS, candidates

FRAME_OF_LEVEL = {
    "Patient": "studies",
    "Study": "studies",
    "ImageSet": "studies",
    "Series": "series",
    "Instance": "instances",
}
_LEADING = frozenset({"AE", "CS", "DS", "IS", "LO", "SH"})
#: Text that PS3.5's padding or PN's delimiter rules may change (RE2 syntax: pandas runs it through pyarrow).
_SPACES = r"^ | $| \\|\\ "
_PN_DELIMITERS = r"[\^=]$|[\^=]\\|\^="


class CheckContext:
    """One snapshot as the checks see it (its cached frames: never modify them)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.flat: Flattened = snapshot.cached_flattened()
        self.primary: Mapping[str, bool] = dict(snapshot.primary)
        #: results several checks share (e.g. the instances held by several image sets), computed once
        self.memo: dict[str, Any] = {}

    def frame(self, name: str) -> pd.DataFrame:
        """The cached frame ``name`` (studies, series, instances, frames)."""
        frame: pd.DataFrame = getattr(self.flat, name)
        return frame

    def level(self, name: str, column: str) -> str:
        """Where ``column`` of frame ``name`` lives: studies columns by the documents, else Series/Instance."""
        if name == "studies":
            return self.flat.levels.get(column, "Study")
        return "Series" if name == "series" else "Instance"

    def codec(self, name: str, column: str) -> str:
        """The codec of ``column`` of frame ``name`` (``object`` when unknown)."""
        return self.flat.codecs.get(name, {}).get(column, "object")

    @cached_property
    def dicom_vrs(self) -> dict[str, str]:
        """The documents' DICOMVRs entries (first seen wins)."""
        return self.snapshot.dicom_vrs()

    def vr(self, column: str) -> str | None:
        """The VR of an attribute column (the documents' DICOMVRs for private tags)."""
        return dictionary.vr_of(column, self.dicom_vrs)

    def dicom_columns(self, name: str) -> list[str]:
        """The attribute columns of frame ``name``: no ``@`` node keys, no UIDs held by the index."""
        codecs = self.flat.codecs.get(name, {})
        return [
            c
            for c in self.frame(name).columns
            if isinstance(c, str) and not split_column(c)[2] and not c.startswith("@") and codecs.get(c) != INDEX
        ]

    def text_values(self, name: str, column: str) -> pd.Series:
        """``frame[column]`` compared as PS3.5 compares values (see the module docstring); other columns as held.
        Computed once per column (do not modify the series)."""
        key = f"text:{name}:{column}"
        if key not in self.memo:
            values = self.frame(name)[column]
            codec = self.codec(name, column)
            vr = self.vr(column)
            if codec in TEXT_CODECS and isinstance(values.dtype, pd.StringDtype) and vr is not None:
                values = normalized(values, vr, multi=codec == JOINED)
            self.memo[key] = values
        cached: pd.Series = self.memo[key]
        return cached

    def image_set_of(self, name: str) -> np.ndarray:
        """The ImageSetID of each row of frame ``name`` (an object array; computed once)."""
        key = f"image_sets:{name}"
        if key not in self.memo:
            self.memo[key] = np.asarray(self.frame(name).index.get_level_values("ImageSetID"), dtype=object)
        cached: np.ndarray = self.memo[key]
        return cached

    def labels(self, name: str, positions: np.ndarray) -> tuple[Any, ...]:
        """The index labels (str, or tuples of str) of the rows at ``positions`` of frame ``name``: only those rows
        are converted (the index levels are taken in Arrow, not turned into Python objects row by row)."""
        key = f"levels:{name}"
        if key not in self.memo:
            index = self.frame(name).index
            self.memo[key] = [index.get_level_values(i) for i in range(index.nlevels)]
        levels: list[pd.Index] = self.memo[key]
        columns = [np.asarray(level.take(np.asarray(positions, dtype=np.int64)), dtype=object) for level in levels]
        if len(columns) == 1:
            return tuple(columns[0])
        return tuple(zip(*columns, strict=True))


def group_codes(parts: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(code of each row, position of each group's first row) for rows grouped by several equal-length arrays,
    codes numbered in order of first appearance. Factorizes each part on its own (a MultiIndex of Arrow strings
    would build a tuple per row)."""
    if not parts or not len(parts[0]):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    codes = [np.asarray(pd.factorize(np.asarray(part, dtype=object), use_na_sentinel=False)[0]) for part in parts]
    combined = np.zeros(len(codes[0]), dtype=np.int64)
    for part in codes:
        combined = combined * (int(part.max()) + 1) + part
    numbered, first = np.unique(combined, return_index=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[np.searchsorted(numbered, combined)], first[order]


def normalized(values: pd.Series, vr: str, multi: bool = False) -> pd.Series:
    """A ``str`` series with each value as PS3.5 compares it (see the module docstring); a new series."""
    parts = candidates(vr)
    if not all(p in TEXT_VRS for p in parts):
        return values
    pattern = _SPACES if "PN" not in parts else f"{_SPACES}|{_PN_DELIMITERS}"
    touched = values.str.contains(pattern, regex=True).fillna(False).astype(bool).to_numpy()
    if not touched.any():
        return values
    out = values.copy()
    leading = any(p in _LEADING for p in parts)
    out[touched] = [_normal_text(text, leading, "PN" in parts, multi) for text in values[touched]]
    return out


@lru_cache(maxsize=65536)
def _normal_text(text: str, leading: bool, person: bool, multi: bool) -> str:
    items = text.split("\\") if multi else [text]
    out = []
    for item in items:
        item = item.lstrip(" ").rstrip(" ") if leading else item.rstrip(" ")
        if person:
            item = "=".join(group.rstrip("^") for group in item.split("=")).rstrip("=")
        out.append(item)
    return "\\".join(out)


def plain(value: Any) -> Any:
    """A cell as a finding's ``values`` hold it: None for absent, NumPy scalars as Python ones."""
    if is_absent(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _order(value: Any) -> tuple[int, str]:
    return (0, "") if value is None else (1, f"{type(value).__name__}:{value!r}")


def value_counts(values: Iterable[Any] | pd.Series) -> tuple[tuple[Any, int], ...]:
    """``((value, count), ...)`` most frequent first (ties in a fixed order); absent cells counted as None. A
    Series is counted by pandas (one Python step per distinct value, not per row)."""
    pairs: Iterable[tuple[Any, int]]
    if isinstance(values, pd.Series):
        try:
            tallied = values.value_counts(dropna=False, sort=False)
            pairs = zip(tallied.index.to_numpy(dtype=object), tallied.to_numpy(dtype=np.int64).tolist(), strict=True)
        except TypeError:  # unhashable cells (a user's frame)
            pairs = ((value, 1) for value in values.to_numpy(dtype=object))
    else:
        pairs = ((value, 1) for value in values)
    return tally(pairs)


def tally(pairs: Iterable[tuple[Any, int]]) -> tuple[tuple[Any, int], ...]:
    """``value_counts`` of (value, count) pairs: values made plain and merged, most frequent first."""
    counts: dict[Any, int] = {}
    for value, count in pairs:
        key = plain(value)
        counts[key] = counts.get(key, 0) + count
    return tuple(sorted(counts.items(), key=lambda item: (-item[1], _order(item[0]))))


def plurality(values: Sequence[tuple[Any, int]], *, skip: Iterable[Any] = ()) -> tuple[bool, Any]:
    """(found, value): the value with strictly the most rows among ``values`` (``skip`` left out)."""
    skipped = list(skip)
    kept = [(v, n) for v, n in values if not any(v is s or (v == s and type(v) is type(s)) for s in skipped)]
    if not kept or (len(kept) > 1 and kept[0][1] == kept[1][1]):
        return False, None
    return True, kept[0][0]
