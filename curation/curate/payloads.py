"""plan's fast path: an image set's plain changes straight from the ChangeSet's columns to its one payload.

Most image sets of a ChangeSet only add or update keyword attributes (no removal, no private tag, no row twice,
everything in one blob). For those, ``plan`` needs no per-change object: ``simple_groups`` finds them with
column operations, ``build`` sorts all their rows at once in the packing order (``planner._units``: Patient,
Study, then each series by UID: its attributes, its instances by SOPInstanceUID, its SeriesInstanceUID change
last; attributes by name, a UID change last) and puts each value straight into the nested payload, which is
then the dict ``planner._whole`` would build, so the blob text, and the plan's hash, are the same. The rows
of all the groups are checked at once (``updates.PlainSets``: each distinct value of an attribute once), and a
group whose rows alone do not tell is walked by ``check_updates``. Every other image set (and one whose payload
is over the limit or refused) takes the general path; ``tests/curate/test_plan_payloads.py`` checks both paths
give the same plan.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd

from curation.model.document import LEVELS
from curation.model.updates import PlainSets

__all__ = ["Group", "build", "simple_groups"]

_SIMPLE_OPS = ("add", "update")
_UIDS = ("SOPInstanceUID", "SeriesInstanceUID")
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass
class Group:
    """One image set's plain changes, in the packing order: their payload, how many, and a description."""

    payload: dict[str, Any]
    count: int
    description: str
    #: the group's row positions in the ChangeSet table (the general path reads them when it must)
    rows: np.ndarray
    #: the checks of every group's sets, and this group's rows in them (``reasons``)
    checks: PlainSets
    span: tuple[int, int]

    def reasons(self, document: dict[str, Any], is_primary: bool) -> list[str] | None:
        """``check_updates`` of the payload on ``document`` (its force reasons) where the rows alone tell,
        else None (``PlainSets.reasons``)."""
        return self.checks.reasons(document, *self.span, is_primary)


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    return table[name].to_numpy(dtype=object)


def _is_hex_key(key: str) -> bool:
    return len(key) == 8 and set(key) <= _HEX


def _texts(values: np.ndarray) -> np.ndarray:
    """True where a cell is a ``str`` (a column of text and missing cells is told apart in one pass)."""
    missing = np.asarray(pd.isna(values), dtype=bool)
    if pd.api.types.infer_dtype(values[~missing], skipna=False) in ("string", "empty"):
        return ~missing
    return np.fromiter((type(v) is str for v in values.tolist()), dtype=bool, count=len(values))


_TEXT = {str}


def _json_ready(value: Any, convert: Callable[[Any], Any]) -> Any:
    """``convert(value)`` (the planner's JSON conversion), skipped for text and arrays of text (sent as they
    are: the payload is only serialised)."""
    kind = type(value)
    if kind is str or (kind is list and set(map(type, value)) <= _TEXT):
        return value
    return convert(value)


def simple_groups(table: pd.DataFrame, documents: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Image set -> its row positions, for the image sets whose every row is a plain change: an add or update
    of a keyword attribute at a known level, addressed by exactly the UIDs its level needs, no spot twice."""
    needed = ("ImageSetID", "level", "SeriesInstanceUID", "SOPInstanceUID", "attribute", "op", "new")
    if not len(table) or any(name not in table.columns for name in needed):
        return {}
    level = _column(table, "level")
    attribute = _column(table, "attribute")
    series, sop = _column(table, "SeriesInstanceUID"), _column(table, "SOPInstanceUID")
    instance = np.asarray(level == "Instance", dtype=bool)
    deep = np.asarray(level == "Series", dtype=bool) | instance
    has_series, has_sop = _texts(series), _texts(sop)
    ok = np.asarray(table["op"].isin(_SIMPLE_OPS), dtype=bool) & np.asarray(table["level"].isin(LEVELS), dtype=bool)
    ok &= _texts(attribute) & (deep == has_series) & (instance == has_sop)
    ok &= np.asarray(pd.isna(series) | deep, dtype=bool) & np.asarray(pd.isna(sop) | instance, dtype=bool)
    names, distinct = pd.factorize(attribute[ok])
    keyword = np.fromiter((bool(a) and not _is_hex_key(a) for a in distinct.tolist()), dtype=bool, count=len(distinct))
    ok[ok] = keyword[names]
    image_sets = _column(table, "ImageSetID")
    ok &= _texts(image_sets)
    spots = table[["ImageSetID", "level", "SeriesInstanceUID", "SOPInstanceUID", "attribute"]]
    ok &= ~np.asarray(spots.duplicated(keep=False), dtype=bool)
    codes, uniques = pd.factorize(image_sets)
    bad = np.zeros(len(uniques), dtype=bool)
    bad[codes[~ok & (codes >= 0)]] = True  # (a missing ImageSetID has code -1 and no image set)
    known = np.fromiter((u in documents for u in uniques.tolist()), dtype=bool, count=len(uniques))
    good = np.flatnonzero(~bad & known)
    if not len(good):
        return {}
    rows = np.flatnonzero(np.isin(codes, good))
    order = rows[np.argsort(codes[rows], kind="stable")]
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return {str(image_sets[part[0]]): part for part in np.split(order, bounds)}


def _ranks(values: np.ndarray) -> np.ndarray:
    """Each text's rank in sorted order (``sorted`` of Python strings)."""
    codes, _ = pd.factorize(values, sort=True)
    return codes


def _packing_order(table: pd.DataFrame, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rows`` (of one or more image sets, grouped) in ``planner._units`` order within each image set, and
    for each of them whether it starts an image set and whether it starts a run of rows of one node."""
    level = _column(table, "level")[rows]
    attribute = _column(table, "attribute")[rows]
    series = np.where((level == "Series") | (level == "Instance"), _column(table, "SeriesInstanceUID")[rows], "")
    sop = np.where(level == "Instance", _column(table, "SOPInstanceUID")[rows], "")
    group, _ = pd.factorize(_column(table, "ImageSetID")[rows])
    rank = np.select([level == "Patient", level == "Study"], [0, 1], 2)
    uid = (attribute == _UIDS[0]) | (attribute == _UIDS[1])
    section = np.where(level == "Instance", 1, np.where((level == "Series") & (attribute == "SeriesInstanceUID"), 2, 0))
    series_rank, sop_rank = _ranks(series.astype(object)), _ranks(sop.astype(object))
    keys = (group, rank, series_rank, section, sop_rank, uid, _ranks(attribute))
    order = np.lexsort(keys[::-1])
    node = np.stack([group[order], rank[order], series_rank[order], (section == 1)[order], sop_rank[order]])
    starts_group = np.ones(len(order), dtype=bool)
    starts_run = np.ones(len(order), dtype=bool)
    starts_group[1:] = node[0, 1:] != node[0, :-1]
    starts_run[1:] = (node[:, 1:] != node[:, :-1]).any(axis=0)
    return rows[order], starts_group, starts_run


def _node(root: dict[str, Any], level: str, series: str | None, sop: str | None) -> dict[str, Any]:
    """The DICOM object of a node of the payload, made (with the objects on the way) when new."""
    if level == "Patient":
        holder: dict[str, Any] = root.setdefault("Patient", {})
    else:
        holder = root.setdefault("Study", {})
        if level != "Study":
            holder = holder.setdefault("Series", {}).setdefault(series, {})
            if level == "Instance":
                holder = holder.setdefault("Instances", {}).setdefault(sop, {})
    dicom: dict[str, Any] = holder.setdefault("DICOM", {})
    return dicom


def _where(level: str, series: str | None, sop: str | None) -> str:
    return {"Series": f"series {series}", "Instance": f"instance {sop}"}.get(level, level)


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def _description(
    ops: list[str], attributes: list[str], news: list[Any], spots: list[tuple], count: int, nodes: int
) -> str:
    """What ``planner._description`` says of these changes (in packing order)."""
    if count <= 3:
        return "; ".join(
            f"{op} {attribute} = {_short(new)} ({_where(*spot)})"
            for op, attribute, new, spot in zip(ops, attributes, news, spots, strict=True)
        )
    names = {"add": "addition", "update": "update"}
    counts = {op: ops.count(op) for op in dict.fromkeys(ops)}
    parts = ", ".join(f"{n} {names[op]}{'s' if n > 1 else ''}" for op, n in counts.items())
    return f"{count} changes ({parts}) on {nodes} node(s)"


def build(
    table: pd.DataFrame,
    groups: Mapping[str, np.ndarray],
    value: Callable[[Any], Any],
    schema_version: float,
) -> dict[str, Group]:
    """The payload of each of ``groups`` (``simple_groups``), values turned to JSON by ``value``: each run of
    rows of one node put into it at once."""
    if not groups:
        return {}
    rows, starts_group, starts_run = _packing_order(table, np.concatenate(list(groups.values())))
    image_sets = _column(table, "ImageSetID")[rows].tolist()
    level = _column(table, "level")[rows]
    levels = level.tolist()
    deep = (level == "Series") | (level == "Instance")
    series_list = np.asarray(np.where(deep, _column(table, "SeriesInstanceUID")[rows], None), dtype=object).tolist()
    instance = level == "Instance"
    sops = np.asarray(np.where(instance, _column(table, "SOPInstanceUID")[rows], None), dtype=object).tolist()
    attributes = _column(table, "attribute")[rows].tolist()
    ops = _column(table, "op")[rows].tolist()
    news = [_json_ready(v, value) for v in _column(table, "new")[rows].tolist()]
    out: dict[str, Group] = {}
    runs = [*np.flatnonzero(starts_run).tolist(), len(rows)]
    checks = PlainSets(levels, series_list, sops, attributes, news, runs)
    group_starts = set(np.flatnonzero(starts_group).tolist())
    root: dict[str, Any] = {}
    nodes: dict[tuple[str, str | None, str | None], dict[str, Any]] = {}
    first = 0
    for a, b in itertools.pairwise(runs):
        if a in group_starts:
            root, nodes, first = {"SchemaVersion": schema_version}, {}, a
        spot = (levels[a], series_list[a], sops[a])
        dicom = nodes.get(spot)
        if dicom is None:
            dicom = nodes[spot] = _node(root, *spot)
        dicom.update(zip(attributes[a:b], news[a:b], strict=True))
        if b == len(rows) or b in group_starts:
            few = b - first <= 3
            spots = list(zip(levels[first:b], series_list[first:b], sops[first:b], strict=True)) if few else []
            text = _description(ops[first:b], attributes[first:b], news[first:b], spots, b - first, len(nodes))
            rows_of = groups[image_sets[first]]
            out[image_sets[first]] = Group(root, b - first, text, rows_of, checks, (first, b))
    return out
