"""Which sequence values need the validator: the distinct attribute values inside sequence items, judged once
each (the busy VRs by the patterns of ``CERTAINLY_VALID``, at once), so that a datastore where every instance
holds its own ReferencedImageSequence costs one look per distinct referenced UID, not one recursive validation
per instance. A sequence any of whose item values is not proven valid (or whose shape is unusual: an item that
is not an object, a key that is not a keyword) goes to ``curation.model.validation.validate``, the one judge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from curation.frames.cells import STR_DTYPE
from curation.model import dictionary
from curation.model.missing import NULL
from curation.model.validation import value_problem

#: (per unique text value: whether a pattern proves it valid), given the texts, VR, VM and whether multi-valued
SurelyValid = Callable[[pd.Series, str, str | None, bool], np.ndarray]
_Leaves = dict[tuple[str, str, str | None], tuple[list[Any], list[int]]]


def _entry(key: str, known: dict[str, tuple[bool, str | None, str | None]]) -> tuple[bool, str | None, str | None]:
    """(skipped: a private tag, VR, VM) of an item key, looked up once per key."""
    entry = known.get(key)
    if entry is None:
        entry = known[key] = (True, None, None) if dictionary.is_tag_key(key) else (False, *dictionary.vr_vm_of(key))
    return entry


def _collect(value: Any, cell: int, leaves: _Leaves, known: dict[str, tuple[bool, str | None, str | None]]) -> bool:
    """Add the item values of the sequence ``value`` (a frame cell: a tuple of read-only dicts, or JSON) to
    ``leaves`` by (keyword, VR, VM); False when its shape needs the validator."""
    if not isinstance(value, tuple | list):
        return False
    for item in value:
        if not isinstance(item, dict):
            return False
        for key, nested in item.items():
            skipped, vr, vm = _entry(key, known)
            if skipped or nested is None or nested is NULL:
                continue
            if vr is None:
                return False
            if vr == "SQ":
                if not _collect(nested, cell, leaves, known):
                    return False
                continue
            values, cells = leaves.setdefault((key, vr, vm), ([], []))
            values.append(list(nested) if type(nested) is tuple else nested)
            cells.append(cell)
    return True


def _text(value: Any) -> str | None:
    """A leaf as the text a pattern judges (items joined by backslashes), None when it is not text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and "\\" not in v for v in value):
        return "\\".join(value)
    return None


def _doubtful_leaves(values: list[Any], vr: str, vm: str | None, surely_valid: SurelyValid) -> np.ndarray:
    """Per leaf value, True when it is not proven valid (each distinct value judged once)."""
    texts = [_text(v) for v in values]
    multi = np.array([isinstance(v, list) for v in values], dtype=bool)
    doubtful = np.ones(len(values), dtype=bool)
    for kind in (False, True):
        picked = np.flatnonzero((multi == kind) & np.array([t is not None for t in texts], dtype=bool))
        if not len(picked):
            continue
        codes, uniques = pd.factorize(np.array([texts[i] for i in picked], dtype=object))
        proven = surely_valid(pd.Series(np.asarray(uniques, dtype=object), dtype=STR_DTYPE), vr, vm, kind)
        doubtful[picked] = ~proven[codes]
    for position in np.flatnonzero(doubtful):
        doubtful[position] = value_problem(vr, vm, values[position]) is not None
    return doubtful


def doubtful_sequences(cells: Sequence[Any], surely_valid: SurelyValid) -> np.ndarray:
    """Per sequence (distinct cells of one SQ column, as frames hold them), True when the validator must look at
    it."""
    leaves: _Leaves = {}
    known: dict[str, tuple[bool, str | None, str | None]] = {}
    doubtful = np.zeros(len(cells), dtype=bool)
    for number, cell in enumerate(cells):
        if cell is not None and cell is not NULL and not _collect(cell, number, leaves, known):
            doubtful[number] = True
    for (_, vr, vm), (values, owners) in leaves.items():
        bad = _doubtful_leaves(values, vr, vm, surely_valid)
        doubtful[np.asarray(owners, dtype=np.int64)[bad]] = True
    return doubtful
