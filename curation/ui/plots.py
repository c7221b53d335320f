"""Matplotlib views for looking at metadata before trusting a table.

Every function returns its ``Figure`` (style it, save it, ``plt.close`` it) and attaches the numbers it drew
as a DataFrame attribute of the figure, so what a plot shows can be checked in code:

- ``completeness(data)``: attributes x series heatmap; ``fig.completeness`` (fraction of instances where the
  attribute is present and not NULL).
- ``value_counts(frame, attribute, by="Modality")``: stacked bars; ``fig.counts`` (values x groups).
- ``study_timeline(snapshot)``: StudyDate/StudyTime per image set; ``fig.timeline``.
- ``slice_geometry(data, series_uid)``: position along the slice normal against InstanceNumber, with gaps,
  overlaps and duplicates flagged; ``fig.geometry``.
- ``version_timeline(history)``: the versions of an image set; ``fig.versions``.

Nothing here changes its input; pyplot is only used to make figures (``plt.close(fig)`` when done).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from curation.frames.cells import is_empty
from curation.frames.flattening import is_absent
from curation.frames.geometry import GAP_FACTOR, OVERLAP_FACTOR, geometry_table
from curation.frames.views import parse_is, typed

__all__ = ["completeness", "slice_geometry", "study_timeline", "value_counts", "version_timeline"]

MISSING_LABEL = "(missing)"
NULL_LABEL = "(NULL)"


def _frame_of(data: Any, name: str = "wide") -> pd.DataFrame:
    """The frame to work on: a Snapshot's ``name`` frame, or the DataFrame itself."""
    if isinstance(data, pd.DataFrame):
        return data
    if hasattr(data, name):
        return getattr(data, name)
    raise TypeError(f"expected a Snapshot or a DataFrame, not {type(data).__name__}")


def _index_level(frame: pd.DataFrame, name: str) -> pd.Index | None:
    if name in (frame.index.names or []):
        return frame.index.get_level_values(name)
    return None


def _label(value: Any) -> str:
    """A display label for a cell: strings stripped, arrays joined with backslashes, empty and absent named."""
    if is_absent(value):
        return MISSING_LABEL
    if is_empty(value):
        return NULL_LABEL
    if isinstance(value, str):
        return "\\".join(part.strip() for part in value.split("\\")) if "\\" in value else value.strip()
    if isinstance(value, list | tuple):
        return "\\".join(_label(v) for v in value)
    if isinstance(value, dict):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return str(value)


def _series_keys(frame: pd.DataFrame) -> pd.Index:
    """Per row, the series it belongs to: (ImageSetID, SeriesInstanceUID) from the index when there."""
    image_sets = _index_level(frame, "ImageSetID")
    series = _index_level(frame, "SeriesInstanceUID")
    if series is None and "SeriesInstanceUID" in frame.columns:
        series = pd.Index([_label(v) for v in frame["SeriesInstanceUID"]])
    if series is None:
        return pd.MultiIndex.from_arrays([["all"] * len(frame), ["all"] * len(frame)],
                                         names=["ImageSetID", "SeriesInstanceUID"])
    if image_sets is None:
        image_sets = pd.Index(["all"] * len(frame))
    return pd.MultiIndex.from_arrays([np.asarray(image_sets, dtype=object), np.asarray(series, dtype=object)],
                                     names=["ImageSetID", "SeriesInstanceUID"])


def _short(text: str, keep: int = 10) -> str:
    return text if len(text) <= keep + 1 else "…" + text[-keep:]


def completeness(data: Any, attributes: list[str] | None = None, *, ax: Any = None) -> Figure:
    """Heatmap of attribute completeness: attributes (rows) x series (columns).

    ``data`` is a Snapshot (its wide view) or an instance-level frame (wide or instances). A cell is the
    fraction of the series' instances where the attribute is present and not NULL (absent and NULL count as
    missing). ``attributes`` defaults to every DICOM column (``@`` columns left out). The matrix is
    ``fig.completeness`` (index: attributes; columns: (ImageSetID, SeriesInstanceUID)).
    """
    frame = _frame_of(data)
    if attributes is None:
        attributes = [c for c in frame.columns if isinstance(c, str) and not c.startswith("@")]
    missing = [a for a in attributes if a not in frame.columns]
    present = pd.DataFrame(
        {a: np.zeros(len(frame), dtype=bool) if a in missing else
         np.fromiter((not is_absent(v) and not is_empty(v) for v in frame[a].to_numpy(dtype=object)), bool,
                     len(frame))
         for a in attributes},
        index=range(len(frame)),
    )
    keys = _series_keys(frame)
    present.index = keys
    matrix = present.groupby(level=[0, 1], sort=False).mean().T.astype(float)
    matrix.index.name = "attribute"

    fig, ax = _figure(ax, (max(4.0, 1.1 * matrix.shape[1] + 3), max(2.5, 0.22 * matrix.shape[0] + 1.5)))
    image = ax.imshow(matrix.to_numpy(), aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis", interpolation="none")
    ax.set_yticks(range(len(matrix.index)), list(matrix.index), fontsize=7)
    ax.set_xticks(range(matrix.shape[1]), [_series_label(frame, key) for key in matrix.columns],
                  rotation=45, ha="right", fontsize=7)
    ax.set_title("Attribute completeness (present and not NULL)")
    fig.colorbar(image, ax=ax, label="fraction of instances")
    fig.completeness = matrix
    return fig


def _series_label(frame: pd.DataFrame, key: tuple) -> str:
    """``Modality #SeriesNumber …uid`` when the frame has those columns, else the shortened UID."""
    image_set, series = key
    parts = []
    try:
        rows = frame.xs((image_set, series), level=["ImageSetID", "SeriesInstanceUID"], drop_level=False)
    except (KeyError, TypeError, ValueError):
        rows = None
    if rows is not None and len(rows):
        for column, fmt in (("Modality", "{}"), ("SeriesNumber", "#{}")):
            if column in rows.columns and not is_absent(rows[column].iloc[0]) and not is_empty(rows[column].iloc[0]):
                parts.append(fmt.format(_label(rows[column].iloc[0])))
    parts.append(_short(str(series)))
    return " ".join(parts)


def _figure(ax: Any, size: tuple[float, float]) -> tuple[Figure, Any]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    return fig, ax


def value_counts(frame: Any, attribute: str, by: str | None = "Modality", *, ax: Any = None) -> Figure:
    """Bar chart of the values of ``attribute``, stacked by ``by`` (a column such as "Modality", or "series").

    ``frame`` is a level frame or a Snapshot (its wide view, one row per instance: counts are instance
    counts). Values are shown as text (arrays joined with backslashes; ``(NULL)`` and ``(missing)`` named).
    ``by=None`` counts all rows together. The table is ``fig.counts`` (index: values, most frequent first;
    columns: groups).
    """
    frame = _frame_of(frame)
    if attribute not in frame.columns:
        raise KeyError(f"no column {attribute!r}")
    values = pd.Series([_label(v) for v in frame[attribute].to_numpy(dtype=object)], dtype=object, name=attribute)
    if by is None:
        groups = pd.Series(["all"] * len(frame), dtype=object)
    elif by == "series":
        groups = pd.Series([_short(str(s)) for s in _series_keys(frame).get_level_values(1)], dtype=object)
    elif by in frame.columns:
        groups = pd.Series([_label(v) for v in frame[by].to_numpy(dtype=object)], dtype=object)
    elif _index_level(frame, by) is not None:
        groups = pd.Series([str(v) for v in _index_level(frame, by)], dtype=object)
    else:
        raise KeyError(f"no column or index level {by!r} to group by")
    groups.name = by or "group"
    counts = pd.crosstab(values, groups)
    counts = counts.loc[counts.sum(axis=1).sort_values(ascending=False, kind="stable").index]
    counts.columns.name = by or "group"

    fig, ax = _figure(ax, (max(4.0, 0.5 * len(counts) + 2), 3.5))
    bottom = np.zeros(len(counts))
    for group in counts.columns:
        heights = counts[group].to_numpy()
        ax.bar(range(len(counts)), heights, bottom=bottom, label=str(group))
        bottom += heights
    ax.set_xticks(range(len(counts)), [_short(str(v), 24) for v in counts.index], rotation=45, ha="right")
    ax.set_ylabel("rows")
    ax.set_title(f"{attribute} by {by}" if by else attribute)
    if len(counts.columns) > 1 or by is not None:
        ax.legend(title=by, fontsize=7)
    fig.counts = counts
    return fig


def study_timeline(snapshot: Any, *, ax: Any = None) -> Figure:
    """StudyDate/StudyTime of each image set on a time axis, one row per study (typed via curation.frames.views).

    ``snapshot`` is a Snapshot or its studies frame. ``fig.timeline`` has, per image set: StudyInstanceUID,
    PatientID, StudyDescription, StudyDate (Timestamp), StudyTime (Timedelta) and StudyDateTime (their sum,
    NaT when the date is missing or not a date; a missing time counts as midnight). Undated studies are
    listed in the table and left off the plot.
    """
    studies = _frame_of(snapshot, "studies")
    vrs = snapshot if not isinstance(snapshot, pd.DataFrame) else None
    wanted = [c for c in ("StudyInstanceUID", "PatientID", "StudyDescription", "StudyDate", "StudyTime")
              if c in studies.columns]
    table = typed(studies[wanted], vrs)
    out = pd.DataFrame(index=studies.index)
    for column in ("StudyInstanceUID", "PatientID", "StudyDescription"):
        out[column] = (pd.Series([None if is_absent(v) or is_empty(v) else _label(v) for v in table[column]],
                                 index=studies.index, dtype=object) if column in table.columns
                       else pd.Series([None] * len(studies), index=studies.index, dtype=object))
    date = table["StudyDate"] if "StudyDate" in table.columns else pd.Series(pd.NaT, index=studies.index)
    time_of_day = table["StudyTime"] if "StudyTime" in table.columns else pd.Series(pd.NaT, index=studies.index)
    out["StudyDate"] = pd.to_datetime(date, errors="coerce")
    out["StudyTime"] = pd.to_timedelta(time_of_day, errors="coerce")
    out["StudyDateTime"] = out["StudyDate"] + out["StudyTime"].fillna(pd.Timedelta(0))
    out = out.sort_values("StudyDateTime", kind="stable")

    dated = out[out["StudyDateTime"].notna()]
    fig, ax = _figure(ax, (7.0, max(2.0, 0.3 * len(out) + 1.2)))
    labels = [f"{p or '?'} {d or ''}".strip() for p, d in zip(out["PatientID"], out["StudyDescription"], strict=True)]
    positions = {key: i for i, key in enumerate(out.index)}
    ax.scatter(dated["StudyDateTime"], [positions[k] for k in dated.index], marker="o")
    ax.set_yticks(range(len(out)), [_short(label, 30) for label in labels], fontsize=7)
    ax.set_xlabel("study date and time")
    undated = len(out) - len(dated)
    ax.set_title("Studies" + (f" ({undated} without a StudyDate not shown)" if undated else ""))
    fig.autofmt_xdate()
    fig.timeline = out
    return fig


def _integer(value: Any) -> Any:
    if isinstance(value, list | tuple) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        number = parse_is(value)
        return pd.NA if number is None else number
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return pd.NA


def slice_geometry(data: Any, series_uid: str, *, ax: Any = None) -> Figure:
    """Slice positions of one series along its normal, against InstanceNumber, with problems flagged.

    ``data`` is a Snapshot (its instances) or an instance-level frame. Each instance's position is
    ImagePositionPatient · n, n the cross product of the series' (most common) ImageOrientationPatient row and
    column directions. In position order, ``spacing`` is the step from the previous slice; with the median
    step m: ``gap`` when spacing > 1.5 m, ``overlap`` when 0 < spacing < 0.5 m, ``duplicate`` for slices at the
    same position (both of them). ``fig.geometry`` is that table (index SOPInstanceUID, in position order;
    ``attrs["median_spacing"]``, ``attrs["normal"]``).
    """
    table = geometry_table(data, series_uid)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.0, 6.0), layout="constrained", sharex=False) if ax is None \
        else (ax.figure, (ax, None))
    ok = table["flag"] == ""
    top.plot(table.loc[ok, "InstanceNumber"].astype(float), table.loc[ok, "position"], ".", ms=3, label="ok")
    for name, marker, color in (("gap", "v", "tab:red"), ("overlap", "^", "tab:orange"),
                                ("duplicate", "x", "tab:purple")):
        hit = table[name]
        if hit.any():
            top.plot(table.loc[hit, "InstanceNumber"].astype(float), table.loc[hit, "position"], marker,
                     color=color, label=f"{name} ({int(hit.sum())})")
    top.set_xlabel("InstanceNumber")
    top.set_ylabel("position along normal (mm)")
    top.set_title(f"Slice geometry of …{series_uid[-16:]} (median spacing {table.attrs['median_spacing']:.3g} mm)")
    top.legend(fontsize=7)
    if bottom is not None:
        bottom.plot(range(len(table)), table["spacing"], ".-", ms=3)
        median = table.attrs["median_spacing"]
        if median == median:
            bottom.axhline(GAP_FACTOR * median, color="tab:red", ls="--", lw=0.8, label="gap threshold")
            bottom.axhline(OVERLAP_FACTOR * median, color="tab:orange", ls="--", lw=0.8, label="overlap threshold")
            bottom.legend(fontsize=7)
        bottom.set_xlabel("slice (position order)")
        bottom.set_ylabel("spacing (mm)")
    fig.geometry = table
    return fig


_VERSION_COLUMNS = ("versionId", "version_id", "VersionId", "version")
_TIME_COLUMNS = ("updatedAt", "updated_at", "createdAt", "created_at", "time")
_STATUS_COLUMNS = ("workflowStatus", "ImageSetWorkflowStatus", "imageSetWorkflowStatus", "workflow_status", "status")
_MESSAGE_COLUMNS = ("message",)


def _first(frame: pd.DataFrame, names: tuple[str, ...]) -> pd.Series | None:
    for name in names:
        if name in frame.columns:
            return frame[name]
        if name in (frame.index.names or []):
            return pd.Series(frame.index.get_level_values(name), index=frame.index)
    return None


def version_timeline(history: pd.DataFrame, *, ax: Any = None) -> Figure:
    """The versions of an image set over time (a frame from ``curation.run.history.history`` or of
    ListImageSetVersions' ``imageSetPropertiesList``).

    ``fig.versions``: one row per version, oldest first: version (int), time (updatedAt, else createdAt),
    status (the workflow status: CREATED, UPDATED, UPDATE_FAILED, COPIED ...), message, forced.
    """
    versions = _first(history, _VERSION_COLUMNS)
    if versions is None:
        raise KeyError("the history frame has no versionId column")
    times = _first(history, _TIME_COLUMNS)
    status = _first(history, _STATUS_COLUMNS)
    message = _first(history, _MESSAGE_COLUMNS)
    forced = history["overrides"].map(lambda o: bool(isinstance(o, dict) and o.get("forced"))) \
        if "overrides" in history.columns else history.get("forced")
    out = pd.DataFrame(
        {
            "version": pd.array([_integer(str(v)) for v in versions], dtype="Int64"),
            "time": pd.to_datetime(times.to_numpy(), utc=True) if times is not None else pd.NaT,
            "status": [None if is_absent(s) else str(s) for s in status] if status is not None else None,
            "message": [None if is_absent(m) else str(m) for m in message] if message is not None else None,
            "forced": [bool(f) if not is_absent(f) else False for f in forced] if forced is not None else False,
        }
    ).sort_values("version", kind="stable").reset_index(drop=True)

    fig, ax = _figure(ax, (7.0, 3.0))
    x = out["time"] if out["time"].notna().any() else out["version"].astype(float)
    ax.plot(x, out["version"].astype(float), "-", color="0.7", zorder=1)
    for name in dict.fromkeys(out["status"].fillna("?")):
        rows = out["status"].fillna("?") == name
        ax.scatter(x[rows], out.loc[rows, "version"].astype(float), label=name, zorder=2)
    for i, row in out.iterrows():
        note = "forced" if row["forced"] else ""
        if row["message"]:
            note = f"{note} {row['message']}".strip()
        if note:
            ax.annotate(_short(note, 30), (x.iloc[i], float(row["version"])), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_ylabel("version")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title("Image set versions")
    ax.legend(fontsize=7)
    if out["time"].notna().any():
        fig.autofmt_xdate()
    fig.versions = out
    return fig

