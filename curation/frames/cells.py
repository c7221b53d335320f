"""How a cell is held in a frame: one codec per column, chosen from the attribute's VR and the documents' values.

The team's decision (issue 13 with issue 17), implemented here and nowhere else:

1. ``str``: text-VR single-valued attributes (AE AS CS DA DS DT IS LO LT PN SH ST TM UC UI UR UT; private tags
   whose VR is one of these; node keys such as ``@StoredTransferSyntaxUID``) in a pandas ``str`` column
   (``StringDtype(na_value=nan)``, Arrow-backed). Absent = missing (NaN); present-empty = ``""``. The documents
   spell an empty value JSON ``null`` (the usual) or ``""``; the codec remembers which (``str`` or ``str:""``) so
   the JSON comes back exact. A column whose documents use both spellings is ``object`` instead.
2. ``joined``: text-VR multi-valued attributes (dictionary VM other than 1): the DICOM value text, items joined by
   a backslash (PS3.5 6.4: the value delimiter, not allowed inside those VRs' values), in a ``str`` column;
   ``""`` is present-empty. Columns whose documents hold what this cannot spell (an item with a backslash, a
   ``null`` item, an empty array, ``[""]``, a scalar) are ``object``.
3. ``Int64`` / ``Float64``: single-valued US SS UL SL SV UV / FL FD whose present values are all JSON integers /
   all JSON floats (a ``null``, a mix of both, or an integer beyond 64 bits -> ``object``). Absent = ``pd.NA``.
4. ``pyramid``: the ``frames`` column ``PixelDataChecksumFromBaseToFullResolution`` (AHI-generated: each frame's
   checksum per resolution level) as a pandas ``ArrowDtype`` ``list<struct<Width, Height, Checksum: int64>>``
   column when every pyramid is exactly that: a cell reads as a list of dicts (a new one each time, so editing it
   never changes the frame). As frozen cells they took half as much memory as the whole JSON did (a tuple of
   three dicts per frame, none equal to another); as Arrow, a twentieth.
   pandas' own ``read_parquet`` cannot read such a column back with its default
   backend (pandas-dev/pandas#53011): pass ``dtype_backend="pyarrow"``, or use ``curation.read_parquet``.
5. ``object``: everything else (SQ, binary VRs, AT, multi-valued numbers, the fall-backs, keys without a VR):
   immutable cells, tuples for arrays and ``FrozenDict`` for sequence items (so a frame is handed out without a
   deep copy), ``NULL`` for present-empty, None for absent.

A cell set to ``REMOVE`` removes the attribute (``diff``); a missing cell over a present-empty attribute is
"unchanged" (CSV cannot tell ``""`` from absent), over any other present value it removes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain, islice, repeat
from operator import is_
from typing import Any, NoReturn

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from curation.model import dictionary
from curation.model.missing import NULL, is_absent
from curation.model.vr import FLOAT_VRS, INT_VRS, TEXT_VRS, candidates

__all__ = [
    "REMOVE",
    "FrozenDict",
    "codec_for",
    "column_array",
    "decode",
    "frame_array",
    "freeze",
    "full_resolution",
    "is_empty",
    "is_remove",
    "thaw",
]

STR, STR_BLANK, JOINED, INT64, FLOAT64, OBJECT = "str", 'str:""', "joined", "Int64", "Float64", "object"
#: Codec of a UID column that is the frame's index level (no column; the DICOM value equals the key).
INDEX = "index"
TEXT_CODECS = frozenset({STR, STR_BLANK, JOINED})
PYRAMID = "pyramid"
PYRAMID_TYPE = pa.list_(pa.struct([("Width", pa.int64()), ("Height", pa.int64()), ("Checksum", pa.int64())]))
PYRAMID_DTYPE = pd.ArrowDtype(PYRAMID_TYPE)
_PYRAMID_KEYS = frozenset({"Width", "Height", "Checksum"})
STR_DTYPE = pd.StringDtype("pyarrow", na_value=np.nan)
_INT64 = (-(2**63), 2**63 - 1)
#: Absent in the transposed node values (flattening's marker of "this row has no such key").
MISSING = object()


#: The text ``REMOVE`` is made of: a NUL can be no DICOM text value, so it never collides with one.
REMOVE_TEXT = "\x00curation.REMOVE\x00"


class _Remove(str):
    """The marker of an explicit removal (``df.loc[m, "X"] = curation.REMOVE``).

    A ``str`` (of ``REMOVE_TEXT``) so that pandas' ``str`` columns take it; it keeps its meaning where pandas
    stores only its text (Arrow, CSV, Parquet): ``is_remove`` recognises both.
    """

    __slots__ = ()
    _instance: _Remove | None = None

    def __new__(cls) -> _Remove:
        if cls._instance is None:
            cls._instance = super().__new__(cls, REMOVE_TEXT)
        return cls._instance

    def __repr__(self) -> str:
        return "REMOVE"

    __str__ = __repr__

    def __reduce__(self) -> str:  # pickle, copy and deepcopy give the one REMOVE back
        return "REMOVE"


#: Set a cell to ``REMOVE`` to remove the attribute, whatever it holds (a present-empty one included).
REMOVE = _Remove()


class FrozenDict(dict):
    """A read-only dict (a sequence item in a frame cell): equal to a dict with the same items, never mutated."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("frame cells are immutable: build a new value (curation.frames.cells.thaw gives a dict)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self.items()))

    def __reduce__(self) -> tuple:
        return (FrozenDict, (dict(self),))

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict) -> FrozenDict:
        return self

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"


def freeze(value: Any) -> Any:
    """A JSON value as an immutable cell: lists -> tuples, dicts -> ``FrozenDict`` (recursively), None -> NULL."""
    t = type(value)
    if t is list or t is tuple:
        return tuple(map(_freeze_item, value))
    if t is dict or t is FrozenDict:
        return FrozenDict(zip(value, map(_freeze_item, value.values()), strict=True))
    if value is None:
        return NULL
    return value


def _freeze_item(value: Any) -> Any:
    """Inside an array or item JSON ``null`` stays None (only a whole cell's null is ``NULL``)."""
    t = type(value)
    if t is list or t is tuple or t is dict or t is FrozenDict:
        return freeze(value)
    return value


def freeze_all(values: list) -> list:
    """``freeze`` of many JSON values at once, level by level in C (``map``/``islice``), not cell by cell.

    Inside arrays and objects JSON ``null`` stays None; the caller maps a whole cell's null to ``NULL``.
    """
    kinds = list(map(type, values))
    present = set(kinds)
    if list not in present and dict not in present:
        return values
    out = list(values)
    if list in present:
        positions = [i for i, k in enumerate(kinds) if k is list]
        lists = [values[i] for i in positions]
        items = list(chain.from_iterable(lists))
        frozen_items = freeze_all(items)
        arrays: Iterable[tuple] = (  # arrays of plain values (the usual) are copied in C
            map(tuple, lists)
            if frozen_items is items
            else map(tuple, map(islice, repeat(iter(frozen_items)), map(len, lists)))
        )
        for i, array in zip(positions, arrays, strict=True):
            out[i] = array
    if dict in present:
        positions = [i for i, k in enumerate(kinds) if k is dict]
        dicts = [values[i] for i in positions]
        items = list(chain.from_iterable(map(dict.values, dicts)))
        frozen_items = freeze_all(items)
        frozen: Iterable[FrozenDict] = (
            map(FrozenDict, dicts)
            if frozen_items is items
            else map(
                FrozenDict, map(zip, map(dict.keys, dicts), map(islice, repeat(iter(frozen_items)), map(len, dicts)))
            )
        )
        for i, mapping in zip(positions, frozen, strict=True):
            out[i] = mapping
    return out


def thaw(value: Any) -> Any:
    """A cell back to its JSON value: tuples -> lists, mappings -> dicts, NULL -> None, NumPy scalars -> Python."""
    t = type(value)
    if t is str or t is int or t is float:
        return value
    if t is tuple or t is list:
        return [thaw(v) for v in value]
    if t is np.ndarray:  # a pyramid cell read with to_numpy(dtype=object)
        return [thaw(v) for v in value.tolist()]
    if t is FrozenDict or t is dict:
        return {k: thaw(v) for k, v in value.items()}
    if value is NULL:
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def is_remove(value: Any) -> bool:
    """True for the ``REMOVE`` marker, or its text where pandas kept only the text."""
    return value is REMOVE or (isinstance(value, str) and value == REMOVE_TEXT)


def is_empty(value: Any) -> bool:
    """True for a present-empty cell or JSON value: ``NULL``, JSON ``null`` (None) or ``""``."""
    return value is NULL or value is None or (type(value) is str and not value)


# --- choosing a codec -----------------------------------------------------------------------------------------


def _family(vr: str | None) -> str | None:
    if vr is None:
        return None
    parts = candidates(vr)
    if all(p in TEXT_VRS for p in parts):
        return "text"
    if all(p in INT_VRS for p in parts):
        return "int"
    if all(p in FLOAT_VRS for p in parts):
        return "float"
    return None


def codec_for(key: str, vr: str | None, node: bool = False) -> str:
    """The codec a column of ``key`` gets when its values allow (see ``column_array``): by VR family and VM."""
    if node:
        return STR
    family = _family(vr)
    if family is None:
        return OBJECT
    vm = None if dictionary.is_tag_key(key) else dictionary.vm_of(key)
    multi = bool(vm) and vm != "1"
    if family == "text":
        return JOINED if multi else STR
    if multi:
        return OBJECT
    return INT64 if family == "int" else FLOAT64


# --- building columns -------------------------------------------------------------------------------------------


def _mask(values: Sequence, marker: Any) -> np.ndarray:
    return np.fromiter(map(is_, values, repeat(marker)), dtype=bool, count=len(values))


_LARGE_STRING = pa.large_string()
_BLANK = pa.scalar("", _LARGE_STRING)
_TEXT_TYPES = frozenset({str, type(None), object})
_LIST_TYPES = frozenset({list, type(None), object})
_JUST_LIST = {list}


def _str_array(arrow: pa.Array) -> pd.api.extensions.ExtensionArray:
    """A pandas ``str`` array over an Arrow ``large_string`` array (nulls are missing)."""
    return pd.arrays.ArrowStringArray(arrow, dtype=STR_DTYPE)  # type: ignore[call-arg]  # stubs lack dtype=


def _nulls_blank(arrow: pa.Array, values: Sequence, types: set) -> pa.Array:
    """``arrow`` with the cells whose JSON value is ``null`` set to ``""`` (present-empty); absent ones stay null."""
    if type(None) not in types:
        return arrow
    return pc.if_else(_mask(values, None), _BLANK, arrow)


def _text(values: Sequence, types: set) -> tuple[Any, str] | None:
    """A ``str`` column of single values (str, JSON null, MISSING), or None when the spellings mix.

    Arrow reads the values in one pass (MISSING masked, so absent is missing; a JSON null is ``""``)."""
    if not types <= _TEXT_TYPES:
        return None
    has_null = type(None) in types
    has_blank = "" in values
    if has_null and has_blank:
        return None
    arrow = pa.array(values, type=_LARGE_STRING, mask=_mask(values, MISSING) if object in types else None)
    return _nulls_blank(arrow, values, types), STR if has_null or not has_blank else STR_BLANK


def _joined(values: Sequence, types: set) -> tuple[Any, str] | None:
    """A ``str`` column of backslash-joined arrays, or None when an array cannot be spelled so: an item that is
    no string (``join`` refuses it), an empty array or ``[""]`` (both would join to ``""``), an item holding a
    backslash (more backslashes than separators)."""
    if not types <= _LIST_TYPES:
        return None
    every = types == _JUST_LIST
    lists = values if every else [v for v in values if type(v) is list]
    try:
        texts = list(map("\\".join, lists))
    except TypeError:
        return None
    if lists and ("" in texts or "".join(texts).count("\\") != sum(map(len, lists)) - len(lists)):
        return None
    if every:
        return pa.array(texts, type=_LARGE_STRING), JOINED
    array = np.empty(len(values), dtype=object)
    array[np.fromiter(map(is_, map(type, values), repeat(list)), dtype=bool, count=len(values))] = texts
    return _nulls_blank(pa.array(array, type=_LARGE_STRING), values, types), JOINED


def _int64(values: Sequence, types: set) -> tuple[Any, str] | None:
    if not types <= {int, object} or int not in types:
        return None
    mask = _mask(values, MISSING) if object in types else np.zeros(len(values), dtype=bool)
    filled = [0 if v is MISSING else v for v in values] if object in types else values
    try:
        data = np.fromiter(filled, dtype=np.int64, count=len(values))
    except OverflowError:
        return None
    return pd.arrays.IntegerArray(data, mask), INT64


def _float64(values: Sequence, types: set) -> tuple[Any, str] | None:
    if not types <= {float, object} or float not in types:
        return None
    mask = _mask(values, MISSING) if object in types else np.zeros(len(values), dtype=bool)
    filled = [0.0 if v is MISSING else v for v in values] if object in types else values
    data = np.fromiter(filled, dtype=np.float64, count=len(values))
    return pd.arrays.FloatingArray(data, mask), FLOAT64


def _pyramid(values: Sequence, types: set) -> tuple[Any, str] | None:
    """A ``pyramid`` column (see the module docstring), or None unless every present value is a list of objects
    with exactly the keys Width, Height and Checksum, each a 64-bit integer (a JSON ``null`` pyramid too)."""
    if not types <= _LIST_TYPES - {type(None)}:
        return None
    lists = values if types == _JUST_LIST else [v for v in values if type(v) is list]
    levels = list(chain.from_iterable(lists))
    if levels and (
        set(map(type, levels)) != _JUST_DICT
        or set(map(len, levels)) != {3}
        or set(chain.from_iterable(levels)) != _PYRAMID_KEYS
        or set(map(type, chain.from_iterable(map(dict.values, levels)))) != {int}
    ):
        return None
    try:
        arrow = pa.array(values, type=PYRAMID_TYPE, mask=_mask(values, MISSING) if object in types else None)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None
    return arrow, PYRAMID


def full_resolution(pyramid: pa.Array) -> dict[str, Any] | None:
    """The Width, Height and Checksum of each pyramid's last level (the full resolution) as ``Int64`` arrays,
    read from the Arrow ``pyramid`` column ``_pyramid`` made (missing where a frame has no level); None when no
    frame has one (the columns are then ``object``, as ``column_array`` makes columns of absent cells)."""
    lengths = pc.list_value_length(pyramid).to_numpy(zero_copy_only=False)
    present = np.asarray(pyramid.is_valid(), dtype=bool)
    present[present] = lengths[present] > 0
    if not present.any():
        return None
    offsets = pyramid.offsets.to_numpy()
    last = np.where(present, offsets[1:] - 1, 0)
    out = {}
    for number, field in enumerate(PYRAMID_TYPE.value_type):
        data = pyramid.values.field(number).to_numpy()[last]
        data[~present] = 0
        out[field.name] = pd.arrays.IntegerArray(data, ~present)
    return out


def object_array(values: Sequence) -> np.ndarray:
    """Immutable object cells: MISSING -> None (absent), None -> NULL, lists/dicts frozen."""
    n = len(values)
    types = set(map(type, values))
    array = np.fromiter(values, dtype=object, count=n)
    if list in types or dict in types:
        kinds = list(map(type, values))
        mask = np.fromiter(map(is_, kinds, repeat(list)), dtype=bool, count=n)
        if dict in types:
            mask |= np.fromiter(map(is_, kinds, repeat(dict)), dtype=bool, count=n)
        frozen = _shared(array[mask].tolist())
        array[mask] = np.fromiter(frozen, dtype=object, count=len(frozen))
    if type(None) in types:
        array[_mask(values, None)] = NULL
    if object in types:
        array[_mask(values, MISSING)] = None
    return array


def _shared(containers: list) -> list:
    """``freeze_all`` of arrays/objects, equal ones frozen once and shared (cells are immutable, so sharing is
    safe; DICOMVRs maps and code sequences repeat across the instances of a series)."""
    try:
        texts = list(map(orjson.dumps, containers))
    except (orjson.JSONEncodeError, TypeError):  # an int beyond 64 bits: freeze each
        return freeze_all(containers)
    firsts = dict(zip(texts, containers, strict=True))  # equal texts are equal values: any one stands for all
    if len(firsts) == len(texts):
        return freeze_all(containers)
    lookup = dict(zip(firsts, freeze_all(list(firsts.values())), strict=True))
    return list(map(lookup.__getitem__, texts))


_BUILDERS = {STR: _text, JOINED: _joined, INT64: _int64, FLOAT64: _float64, PYRAMID: _pyramid}
_JUST_DICT = {dict}


def column_array(values: Sequence, codec: str) -> tuple[Any, str]:
    """The column of ``values`` (JSON values, ``MISSING`` for absent) under ``codec``, or ``object`` when they do
    not fit it; returns the array and the codec actually used. A ``str`` or pyramid column is the bare Arrow
    array (``frame_array`` makes it pandas' once the batches are joined: wrapping each batch's costs more than
    reading it)."""
    builder = _BUILDERS.get(STR if codec == STR_BLANK else codec)
    if builder is not None:
        built = builder(values, set(map(type, values)))
        if built is not None:
            return built
    return object_array(values), OBJECT


def frame_array(column: Any) -> Any:
    """A column of ``column_array`` as a frame holds it: an Arrow array as pandas' (``str`` or pyramid)."""
    if not isinstance(column, pa.Array):
        return column
    if column.type == _LARGE_STRING:
        return _str_array(column)
    return pd.arrays.ArrowExtensionArray(column)


def concat_arrays(chunks: Sequence[Any], rows: Sequence[int]) -> Any:
    """One column from the arrays ``column_array`` made for consecutive batches under one codec (None for a
    batch without the column: absent there, ``rows`` long), concatenated once."""
    kind = next(c for c in chunks if c is not None)
    if isinstance(kind, np.ndarray):
        return np.concatenate(
            [np.full(n, None, dtype=object) if c is None else c for c, n in zip(chunks, rows, strict=True)]
        )
    if isinstance(kind, pa.Array):  # str and pyramid columns
        pieces = [pa.nulls(n, kind.type) if c is None else c for c, n in zip(chunks, rows, strict=True)]
        return frame_array(pa.concat_arrays(pieces))
    filled = [
        type(kind)(np.zeros(n, dtype=kind.dtype.numpy_dtype), np.ones(n, dtype=bool)) if c is None else c
        for c, n in zip(chunks, rows, strict=True)
    ]
    return type(kind)._concat_same_type(filled)


def infer_codec(key: str, vr: str | None, dtype: Any, node: bool = False) -> str:
    """The codec of a column the documents never had (a user's new column), from its VR and its dtype."""
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        return OBJECT
    if isinstance(dtype, pd.StringDtype):
        wanted = codec_for(key, vr, node)
        return JOINED if wanted == JOINED else STR
    if dtype == PYRAMID_DTYPE:
        return PYRAMID
    name = str(dtype)
    if name in ("Int64", "Float64"):
        return name
    return OBJECT


# --- reading cells back -----------------------------------------------------------------------------------------


def decode(value: Any, codec: str) -> Any:
    """The JSON value of a present cell under ``codec`` (call only when ``is_absent(value)`` is False)."""
    t = type(value)
    if codec == PYRAMID:
        return thaw(value)
    if t is str:
        if codec in TEXT_CODECS:
            if not value:
                return "" if codec == STR_BLANK else None
            return value.split("\\") if codec == JOINED else value
        return value
    if value is NULL:
        return None
    if t is int or t is float:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return thaw(value)


def decoded(values: Iterable[Any], codec: str) -> list[tuple[int, Any]]:
    """``(position, JSON value)`` of every present cell."""
    return [(i, decode(v, codec)) for i, v in enumerate(values) if not is_absent(v) and not is_remove(v)]
