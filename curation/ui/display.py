"""Rich (HTML) displays for notebooks: a Snapshot, a ChangeSet, any frame the panel shows.

The objects keep a thin ``_repr_html_`` that calls a function here, so the display code lives with the rest
of the notebook UI and the data classes stay plain data:

- ``snapshot_html(snapshot)``: one summary line (image sets, primary or not, series, instances, failures),
  then a table with a row per image set (patient, study, modalities, series and instance counts, version,
  primary) and the failures table when there are any.
- ``changeset_html(changes)``: the problems first, then one row per change, with the part of each UID that
  tells the rows apart (``short_uids``) instead of a tail that every row of a study shares.
- ``frame_html(frame)``: a DataFrame as text cells (NULL, REMOVE, arrays and sequences spelled out), index
  hidden when asked, through pandas' ``Styler``, so JupyterLab's table styling applies.

This module reads its inputs by duck typing (``cached_flattened()``, ``changes``, ``problems`` ...) and imports
neither the Snapshot nor the ChangeSet module: they call it, so it must not call them back.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import orjson
import pandas as pd

from curation.frames.cells import is_remove
from curation.model.missing import NULL, is_absent

__all__ = ["changeset_html", "frame_html", "message_html", "short_uids", "snapshot_html", "text_of"]

#: Background of a ChangeSet row by operation.
OP_COLORS = {
    "add": "#dfd",
    "update": "#def",
    "remove": "#fed",
    "remove_instance": "#fcc",
    "remove_series": "#f99",
}
ERROR_COLOR = "#b00020"
OK_COLOR = "#1b5e20"
#: Columns of the Snapshot table taken from ``studies`` when present.
STUDY_COLUMNS = ("PatientName", "PatientID", "StudyDescription", "StudyDate")
#: Characters of a UID shown when nothing else tells it apart from its neighbours.
UID_TAIL = 12


class _Flattened(Protocol):
    studies: pd.DataFrame
    series: pd.DataFrame
    instances: pd.DataFrame


class _SnapshotLike(Protocol):
    datastore_id: str

    @property
    def primary(self) -> Mapping[str, bool]: ...

    def __len__(self) -> int: ...

    @property
    def version_ids(self) -> dict[str, str]: ...

    @property
    def failures(self) -> pd.DataFrame: ...

    def cached_flattened(self) -> _Flattened: ...


class _ChangeSetLike(Protocol):
    changes: pd.DataFrame
    problems: pd.DataFrame

    def force_reasons(self) -> pd.Series: ...


# --- cells ---------------------------------------------------------------------------------------------------


def text_of(value: Any, limit: int = 80) -> str:
    """A cell as a person reads it: ``NULL``, ``REMOVE``, ``""`` for absent, arrays joined by backslashes,
    sequences as JSON, cut to ``limit`` characters."""
    if value is NULL:
        return "NULL"
    if is_remove(value):
        return "REMOVE"
    if is_absent(value):
        return ""
    if isinstance(value, list | tuple) and all(not isinstance(v, list | tuple | Mapping) for v in value):
        text = "\\".join("" if v is None else str(v) for v in value)
    elif isinstance(value, list | tuple | Mapping):
        try:
            text = orjson.dumps(value, default=_jsonable).decode()
        except TypeError:
            text = repr(value)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _jsonable(value: Any) -> Any:
    if value is NULL:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(type(value).__name__)


def short_uids(values: Iterable[Any]) -> dict[str, str]:
    """For each distinct UID, the part that tells it apart from the others: what follows the prefix they all
    share (cut at a dot), ``…``-prefixed; a UID alone keeps its last ``UID_TAIL`` characters."""
    uids = [str(v) for v in dict.fromkeys(values) if not is_absent(v)]
    if not uids:
        return {}
    if len(uids) == 1:
        (uid,) = uids
        return {uid: uid if len(uid) <= UID_TAIL + 1 else "…" + uid[-UID_TAIL:]}
    first, last = min(uids), max(uids)
    common = 0
    while common < min(len(first), len(last)) and first[common] == last[common]:
        common += 1
    cut = first.rfind(".", 0, common + 1) + 1  # keep whole components
    return {uid: uid if cut == 0 else "…" + uid[cut:] for uid in uids}


# --- frames --------------------------------------------------------------------------------------------------


def frame_html(
    frame: pd.DataFrame,
    rows: int | None = None,
    *,
    index: bool = True,
    caption: str | None = None,
    highlight: pd.DataFrame | None = None,
    color: str = "#fff3bf",
) -> str:
    """``frame`` (its first ``rows``) as an HTML table of text cells (``text_of``), through ``Styler``.

    ``index=False`` hides the index; ``highlight`` is a boolean frame of the same shape marking cells to
    colour (``color``), e.g. the cells a person edited.
    """
    shown = frame if rows is None else frame.head(rows)
    text = shown.astype(object).map(text_of) if len(shown.columns) else shown.astype(object)
    styler = _escaped(text)
    if not index:
        styler = styler.hide(axis="index")
    if caption:
        styler = styler.set_caption(html.escape(caption))
    if highlight is not None:
        marks = highlight.reindex(index=text.index, columns=text.columns, fill_value=False).astype(bool)
        styler = styler.apply(lambda _f: marks.map(lambda on: f"background-color:{color}" if on else ""), axis=None)
    more = len(frame) - len(shown)
    tail = f"<div><i>… {more} more row(s)</i></div>" if more > 0 else ""
    return styler.to_html() + tail


def _escaped(frame: pd.DataFrame) -> Any:
    """A Styler of ``frame`` that HTML-escapes every cell, index label and column label (Styler does not)."""
    styler = frame.style.format(escape="html")
    styler = styler.format_index(escape="html", axis=0).format_index(escape="html", axis=1)
    return styler


def message_html(kind: str, text: str) -> str:
    """A one-line status: ``kind`` "error" (red), "ok" (green) or anything else (plain)."""
    color = ERROR_COLOR if kind == "error" else OK_COLOR if kind == "ok" else ""
    style = f' style="color:{color}"' if color else ""
    return f'<div class="ahi-message ahi-{html.escape(kind)}"{style}>{html.escape(text)}</div>'


# --- Snapshot ------------------------------------------------------------------------------------------------


def _counts(frame: pd.DataFrame) -> pd.Series:
    return pd.Series(frame.index.get_level_values(0)).value_counts(sort=False)


def _modalities(series: pd.DataFrame) -> pd.Series:
    if "Modality" not in series.columns:
        return pd.Series(dtype=object)
    frame = pd.DataFrame(
        {
            "ImageSetID": series.index.get_level_values(0),
            "Modality": [text_of(v) for v in series["Modality"].to_numpy(dtype=object)],
        }
    )
    return frame.groupby("ImageSetID", sort=False)["Modality"].agg(lambda v: ", ".join(sorted(set(v) - {""})))


def snapshot_table(snapshot: _SnapshotLike) -> pd.DataFrame:
    """One row per image set: ImageSetID, primary, version, the study columns, Modality, series, instances."""
    flat = snapshot.cached_flattened()
    studies = flat.studies
    table = pd.DataFrame(index=studies.index)
    primary = dict(snapshot.primary)
    table["primary"] = [("yes" if primary[i] else "no") if i in primary else "?" for i in studies.index]
    versions = snapshot.version_ids
    table["version"] = [versions.get(i, "") for i in studies.index]
    for column in STUDY_COLUMNS:
        if column in studies.columns:
            table[column] = [text_of(v, 40) for v in studies[column].to_numpy(dtype=object)]
    table["Modality"] = _modalities(flat.series).reindex(studies.index).fillna("")
    table["series"] = _counts(flat.series).reindex(studies.index, fill_value=0).astype("int64")
    table["instances"] = _counts(flat.instances).reindex(studies.index, fill_value=0).astype("int64")
    return table


def snapshot_html(snapshot: _SnapshotLike, max_rows: int = 20) -> str:
    """The HTML display of a Snapshot (see the module docstring)."""
    table = snapshot_table(snapshot)
    failures = snapshot.failures
    primary = int((table["primary"] == "yes").sum())
    non_primary = int((table["primary"] == "no").sum())
    unknown = len(table) - primary - non_primary
    parts = [
        f"{len(table)} image set(s) ({primary} primary, {non_primary} non-primary"
        + (f", {unknown} unknown" if unknown else "")
        + ")",
        f"{int(table['series'].sum())} series",
        f"{int(table['instances'].sum())} instances",
        f"{len(failures)} failure(s)",
    ]
    out = [
        f"<div class='ahi-snapshot'><p><b>Snapshot</b> of datastore <code>{html.escape(snapshot.datastore_id)}"
        f"</code>: {html.escape(', '.join(parts))}</p>"
    ]
    out.append(frame_html(table, max_rows))
    if len(failures):
        out.append(message_html("error", f"{len(failures)} image set(s) could not be fetched or read:"))
        out.append(frame_html(failures, max_rows, index=False))
    out.append("</div>")
    return "".join(out)


# --- ChangeSet -----------------------------------------------------------------------------------------------


def _where(changes: pd.DataFrame) -> list[str]:
    """Per change, the series / instance it addresses by the distinguishing part of their UIDs."""
    series = short_uids(changes["SeriesInstanceUID"])
    sops = short_uids(changes["SOPInstanceUID"])
    out = []
    for s, i in zip(changes["SeriesInstanceUID"], changes["SOPInstanceUID"], strict=True):
        parts = [series[str(s)] if not is_absent(s) else "", sops[str(i)] if not is_absent(i) else ""]
        out.append(" / ".join(p for p in parts if p))
    return out


def change_table(changes: _ChangeSetLike, max_rows: int = 200) -> pd.DataFrame:
    """The changes as a person reads them: image set, op, level, series / instance, attribute, VR, old, new,
    force (UIDs shortened to the part that tells them apart)."""
    rows = changes.changes.head(max_rows)
    sets = short_uids(changes.changes["ImageSetID"])
    forced = changes.force_reasons().head(max_rows) if len(rows) else pd.Series([], dtype=object)
    adding = rows["op"] == "add"
    removing = rows["op"].astype(str).str.startswith("remove")
    table = pd.DataFrame(
        {
            "image set": [sets.get(str(i), str(i)) for i in rows["ImageSetID"]],
            "op": rows["op"].astype(str).to_numpy(),
            "level": rows["level"].to_numpy(dtype=object),
            "series / instance": _where(rows),
            "attribute": [text_of(a) for a in rows["attribute"]],
            "VR": [text_of(v) for v in rows["VR"]],
            "old": ["(absent)" if a else text_of(v) for v, a in zip(rows["old"], adding, strict=True)],
            "new": ["(removed)" if r else text_of(v) for v, r in zip(rows["new"], removing, strict=True)],
            "force": ["; ".join(r) for r in forced] if len(forced) else [],
        },
        index=pd.RangeIndex(len(rows)),
    )
    return table


def changeset_html(changes: _ChangeSetLike, title: str, max_rows: int = 200) -> str:
    """The HTML display of a ChangeSet: ``title`` (its repr), problems in red, then the change table."""
    out = [f"<div class='ahi-changeset'><p><b>{html.escape(title)}</b></p>"]
    problems = changes.problems
    if len(problems):
        out.append(message_html("error", f"{len(problems)} problem(s): fix them before planning"))
        shown = problems.head(max_rows).astype(object).map(lambda v: text_of(v, 300))
        out.append(_escaped(shown).hide(axis="index").set_properties(**{"background-color": "#fee"}).to_html())
    if len(changes.changes):
        table = change_table(changes, max_rows)
        styler = (
            _escaped(table)
            .hide(axis="index")
            .apply(lambda column: [f"background-color:{OP_COLORS.get(op, '#eee')}" for op in column], subset=["op"])
        )
        out.append(styler.to_html())
        if len(changes.changes) > max_rows:
            out.append(f"<div><i>… {len(changes.changes) - max_rows} more change(s)</i></div>")
    out.append("</div>")
    return "".join(out)
