"""Frames to files and back: CSV for people and spreadsheets, Parquet for tools, both read back as the frames.

``to_csv(frame, path)`` writes the index levels as leading columns, then every column: ``str`` cells as their
text, numbers as numbers, object cells (sequences, arrays of numbers, binary values, ``NULL``) as JSON text.
A second header row names each column's kind (``index``, ``str``, ``Int64``, ``Float64``, ``json``, ``pyramid``:
the frames' pyramids, as JSON text) so that
``read_csv(path)`` gives back the same frame: same index, dtypes and cells. One thing CSV cannot carry: a
present-empty ``""`` and an absent cell are both an empty field, read back as missing; ``diff`` treats a
missing cell over a present-empty attribute as "unchanged", so an edited CSV plans only what was edited.

``to_parquet``/``read_parquet`` do the same in Parquet with native Arrow types (``str`` -> string, ``Int64`` ->
int64, ``Float64`` -> double, the frames' pyramids as list<struct>; JSON text only for object columns), exact,
``""`` included; the kinds are kept in the file's key-value metadata. ``write_frame``/``read_frame`` are the same
encoding for ``Snapshot.save`` and ``curation.scale`` (the description is returned / given instead of stored).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from curation.frames.cells import PYRAMID, PYRAMID_DTYPE, PYRAMID_TYPE, STR_DTYPE, freeze, thaw
from curation.model.missing import NULL, is_absent

__all__ = [
    "decode_cell",
    "encode_cell",
    "read_csv",
    "read_frame",
    "read_parquet",
    "to_csv",
    "to_parquet",
    "write_frame",
]

INDEX_PREFIX = "@index:"
_METADATA_KEY = b"ahi-curation"
_KINDS = ("index", "str", "Int64", "Float64", "json", PYRAMID)


def encode_cell(value: Any) -> str | None:
    """An object cell as JSON text (NULL -> ``null``, tuples -> arrays); absent stays None."""
    if is_absent(value):
        return None
    if isinstance(value, np.ndarray):  # a pyramid cell read with to_numpy(dtype=object)
        value = thaw(value)
    return orjson.dumps(None if value is NULL else value).decode()


def decode_cell(text: Any) -> Any:
    """The cell that ``encode_cell`` wrote (``null`` -> NULL, arrays -> tuples, objects -> read-only mappings)."""
    if is_absent(text):
        return None
    return freeze(orjson.loads(text))


def _kind(values: pd.Series) -> str:
    dtype = values.dtype
    if isinstance(dtype, pd.StringDtype):
        return "str"
    if str(dtype) in ("Int64", "Float64"):
        return str(dtype)
    if dtype == PYRAMID_DTYPE:
        return PYRAMID
    return "json"


def _encoded(values: pd.Series) -> Any:
    array = values.to_numpy(dtype=object)
    return pd.array([encode_cell(v) for v in array], dtype=STR_DTYPE)


def _index_names(frame: pd.DataFrame) -> list[str]:
    return [str(n) if n is not None else f"level_{i}" for i, n in enumerate(frame.index.names)]


def _index(columns: list[pd.Series], names: list[str], rows: int) -> pd.Index:
    from curation.frames.flattening import build_index

    if names == ["level_0"]:
        return pd.RangeIndex(rows)
    if len(names) == 1:
        return pd.Index(columns[0].to_numpy(dtype=object), dtype="str", name=names[0])
    arrays = [c.tolist() for c in columns]
    if "frame" in names:
        position = names.index("frame")
        arrays[position] = [int(v) for v in arrays[position]]
    return build_index(arrays, tuple(names))


# --- Parquet -------------------------------------------------------------------------------------------------


def write_frame(frame: pd.DataFrame, path: str | os.PathLike) -> dict[str, Any]:
    """Write ``frame`` to Parquet (native Arrow types, object columns as JSON text); returns how to read it."""
    table, info = _table(frame)
    pq.write_table(table, path)
    return info


def _table(frame: pd.DataFrame) -> tuple[pa.Table, dict[str, Any]]:
    names = _index_names(frame)
    data: dict[str, Any] = {INDEX_PREFIX + name: frame.index.get_level_values(i) for i, name in enumerate(names)}
    json_columns = []
    arrow_columns = {}
    for column in frame.columns:
        values = frame[column]
        kind = _kind(values)
        if kind == "json":
            json_columns.append(column)
            data[column] = _encoded(values)
        elif kind == PYRAMID:  # added as Arrow: pandas' metadata would name a dtype it cannot read back
            arrow_columns[str(column)] = values.array.__arrow_array__()
        else:
            data[column] = values.array
    table = pa.Table.from_pandas(pd.DataFrame(data, index=range(len(frame))), preserve_index=False)
    for column, arrow in arrow_columns.items():
        table = table.append_column(column, arrow)
    return table, {"index": names, "columns": [str(c) for c in frame.columns], "json_columns": json_columns}


def read_frame(path: str | os.PathLike, info: Mapping[str, Any]) -> pd.DataFrame:
    """Read a frame that ``write_frame`` wrote, with ``info`` the description it returned."""
    return _from_table(pq.read_table(path), info)


def _from_table(table: pa.Table, info: Mapping[str, Any]) -> pd.DataFrame:
    for position, field in enumerate(table.schema):
        if pa.types.is_list(field.type) and field.type.value_type == PYRAMID_TYPE.value_type:
            # Parquet names a list's items "element": the same pyramids as Arrow names them
            table = table.set_column(position, field.name, table.column(position).cast(PYRAMID_TYPE))
    frame = table.to_pandas(
        types_mapper={pa.large_string(): STR_DTYPE, pa.string(): STR_DTYPE, PYRAMID_TYPE: PYRAMID_DTYPE}.get
    )
    index_names = list(info["index"])
    json_columns = set(info["json_columns"])
    data: dict[str, Any] = {}
    for column in info["columns"]:
        values = frame[column]
        if column in json_columns:
            array = np.empty(len(frame), dtype=object)
            array[:] = [decode_cell(v) for v in values.to_numpy(dtype=object)]
            data[column] = pd.Series(array, dtype=object, copy=False)
        else:
            data[column] = values.reset_index(drop=True)
    out = pd.DataFrame(data, columns=list(info["columns"])) if data else pd.DataFrame(index=range(len(frame)))
    out.index = _index([frame[INDEX_PREFIX + n] for n in index_names], index_names, len(frame))
    return out


def to_parquet(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``frame`` to one Parquet file that ``read_parquet`` reads back exactly (see the module docstring)."""
    table, info = _table(frame)
    metadata = dict(table.schema.metadata or {})
    metadata[_METADATA_KEY] = orjson.dumps(info)
    pq.write_table(table.replace_schema_metadata(metadata), path)


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    """The frame ``to_parquet`` wrote."""
    table = pq.read_table(path)
    info = (table.schema.metadata or {}).get(_METADATA_KEY)
    if info is None:
        raise ValueError(f"{path} was not written by curation.to_parquet (no {_METADATA_KEY.decode()} metadata)")
    return _from_table(table, orjson.loads(info))


# --- CSV -------------------------------------------------------------------------------------------------------


def to_csv(frame: pd.DataFrame, path: str | os.PathLike | None = None) -> str | None:
    """Write ``frame`` as CSV (see the module docstring); returns the text when ``path`` is None."""
    names = _index_names(frame)
    columns = [*names, *(str(c) for c in frame.columns)]
    kinds = ["index"] * len(names) + [_kind(frame[c]) for c in frame.columns]
    data: dict[str, Any] = {}
    for i in range(len(names)):
        data[f"{i}"] = frame.index.get_level_values(i)
    for j, column in enumerate(frame.columns):
        values = frame[column]
        data[f"c{j}"] = _encoded(values) if kinds[len(names) + j] in ("json", PYRAMID) else values.array
    body = pd.DataFrame(data, index=range(len(frame)))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerow(kinds)
    body.to_csv(buffer, header=False, index=False, lineterminator="\n")
    text = buffer.getvalue()
    if path is None:
        return text
    with open(path, "w", newline="", encoding="utf-8") as handle:
        handle.write(text)
    return None


def read_csv(path: str | os.PathLike | io.StringIO) -> pd.DataFrame:
    """The frame ``to_csv`` wrote (index, dtypes and cells; ``""`` comes back missing, see the module docstring)."""
    if isinstance(path, io.StringIO):
        text = path.getvalue()
    else:
        with open(path, newline="", encoding="utf-8") as handle:
            text = handle.read()
    reader = csv.reader(io.StringIO(text))
    columns = next(reader, None)
    kinds = next(reader, None)
    if not columns or kinds is None or len(kinds) != len(columns) or not set(kinds) <= set(_KINDS):
        raise ValueError(
            f"{path}: not a CSV written by curation.to_csv (its second row names each column's kind: "
            f"{', '.join(_KINDS)})"
        )
    body = pd.read_csv(
        io.StringIO(text),
        skiprows=2,
        header=None,
        names=list(range(len(columns))),
        dtype=str,
        keep_default_na=False,
        na_values=[],
        quoting=csv.QUOTE_MINIMAL,
    )
    index_names = [c for c, k in zip(columns, kinds, strict=True) if k == "index"]
    data: dict[str, Any] = {}
    for position, (column, kind) in enumerate(zip(columns, kinds, strict=True)):
        if kind != "index":
            data[column] = _csv_column(body[position].tolist(), kind)
    index = _index([body[i] for i in range(len(index_names))], index_names, len(body))
    out = pd.DataFrame(data, columns=[c for c, k in zip(columns, kinds, strict=True) if k != "index"])
    if not data:
        out = pd.DataFrame(index=range(len(body)))
    out.index = index
    return out


def _csv_column(texts: list[str], kind: str) -> Any:
    if kind == "str":
        return pd.array([t if t else None for t in texts], dtype=STR_DTYPE)
    if kind == "Int64":
        return pd.array([int(t) if t else None for t in texts], dtype="Int64")
    if kind == "Float64":
        return pd.array([float(t) if t else None for t in texts], dtype="Float64")
    if kind == PYRAMID:
        arrow = pa.array([orjson.loads(t) if t else None for t in texts], type=PYRAMID_TYPE)
        return pd.arrays.ArrowExtensionArray(arrow)
    array = np.empty(len(texts), dtype=object)
    array[:] = [decode_cell(t) if t else None for t in texts]
    return pd.Series(array, dtype=object, copy=False)
