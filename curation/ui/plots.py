"""Matplotlib views for looking at metadata before trusting a table.

Each view is two functions: ``<view>_table`` computes the numbers (a DataFrame you can check, sort and
display), and ``<view>`` draws them and returns its matplotlib ``Axes``, as pandas' ``DataFrame.plot`` and
seaborn do. In Jupyter the figure shows once, at the end of the cell (pyplot's inline backend), whether or not
the cell ends with the call; pass ``ax=`` to draw into a figure of your own.

- ``completeness(data)``: attributes x series heatmap, series labelled "CT #2 CHEST"
  (Modality, SeriesNumber, SeriesDescription); ``completeness_table``: the fraction of instances where the
  attribute is present and not NULL.
- ``value_counts(frame, attribute, by="Modality")``: stacked bars; ``value_counts_table`` (values x groups).
- ``study_timeline(snapshot)``: StudyDate/StudyTime per image set; ``study_timeline_table``.
- ``slice_geometry(data, series_uid)``: position along the slice normal against InstanceNumber, with gaps,
  overlaps and duplicates flagged; ``geometry_table``.
- ``version_timeline(history, reverts=...)``: the versions of an image set on a date axis, reverts and forced
  updates marked; ``version_table``.

Nothing here changes its input.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import matplotlib.dates as mdates
import numpy as np
import orjson
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from curation.frames.cells import is_empty
from curation.frames.flattening import is_absent
from curation.frames.geometry import GAP_FACTOR, OVERLAP_FACTOR, geometry_table
from curation.frames.views import parse_is, typed

__all__ = [
    "completeness",
    "completeness_table",
    "geometry_table",
    "series_labels",
    "slice_geometry",
    "study_timeline",
    "study_timeline_table",
    "value_counts",
    "value_counts_table",
    "version_table",
    "version_timeline",
]

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
        return pd.MultiIndex.from_arrays(
            [["all"] * len(frame), ["all"] * len(frame)], names=["ImageSetID", "SeriesInstanceUID"]
        )
    if image_sets is None:
        image_sets = pd.Index(["all"] * len(frame))
    return pd.MultiIndex.from_arrays(
        [np.asarray(image_sets, dtype=object), np.asarray(series, dtype=object)],
        names=["ImageSetID", "SeriesInstanceUID"],
    )


def _short(text: str, keep: int = 10) -> str:
    return text if len(text) <= keep + 1 else "…" + text[-keep:]


def completeness_table(data: Any, attributes: list[str] | None = None) -> pd.DataFrame:
    """Attributes (rows) x series (columns): the fraction of the series' instances where the attribute is
    present and not NULL (absent and NULL count as missing).

    ``data`` is a Snapshot (its wide view) or an instance-level frame (wide or instances). ``attributes``
    defaults to every DICOM column (``@`` columns left out). Columns: (ImageSetID, SeriesInstanceUID);
    ``series_labels(data)`` names them as a person does.
    """
    frame = _frame_of(data)
    if attributes is None:
        attributes = [c for c in frame.columns if isinstance(c, str) and not c.startswith("@")]
    present = pd.DataFrame(
        {
            a: np.zeros(len(frame), dtype=bool)
            if a not in frame.columns
            else np.fromiter(
                (not is_absent(v) and not is_empty(v) for v in frame[a].to_numpy(dtype=object)), bool, len(frame)
            )
            for a in attributes
        },
        index=range(len(frame)),
    )
    present.index = _series_keys(frame)
    matrix = present.groupby(level=[0, 1], sort=False).mean().T.astype(float)
    matrix.index.name = "attribute"
    return matrix


def completeness(data: Any, attributes: list[str] | None = None, *, ax: Axes | None = None) -> Axes:
    """Heatmap of ``completeness_table``: attributes x series, the series labelled by ``series_labels``."""
    matrix = completeness_table(data, attributes)
    labels = series_labels(data)
    fig, ax = _figure(ax, (max(4.0, 1.1 * matrix.shape[1] + 3), max(2.5, 0.22 * matrix.shape[0] + 1.5)))
    image = ax.imshow(matrix.to_numpy(), aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis", interpolation="none")
    ax.set_yticks(range(len(matrix.index)), list(matrix.index), fontsize=7)
    keys: list[Any] = list(matrix.columns)
    ax.set_xticks(
        range(len(keys)),
        [labels.get((str(i), str(u)), _short(str(u))) for i, u in keys],
        rotation=45,
        ha="right",
        fontsize=7,
    )
    ax.set_title("Attribute completeness (present and not NULL)")
    fig.colorbar(image, ax=ax, label="fraction of instances")
    return ax


def _first_text(rows: pd.DataFrame, column: str) -> str | None:
    if column not in rows.columns or not len(rows):
        return None
    value = rows[column].iloc[0]
    return None if is_absent(value) or is_empty(value) else _label(value)


def series_labels(data: Any) -> dict[tuple[str, str], str]:
    """A label per series a person recognises: ``Modality #SeriesNumber SeriesDescription``, by
    (ImageSetID, SeriesInstanceUID); the distinguishing end of the UID is added where two labels would be equal
    (or stands alone when the frame has none of those columns)."""
    from curation.ui.display import short_uids

    frame = _frame_of(data)
    keys = _series_keys(frame)
    rows = frame.reset_index(drop=True)
    rows.index = keys
    labels: dict[tuple[str, str], str] = {}
    for key, group in rows.groupby(level=[0, 1], sort=False):
        parts = [
            _first_text(group, "Modality"),
            _first_text(group, "SeriesNumber"),
            _first_text(group, "SeriesDescription"),
        ]
        if parts[1] is not None:
            parts[1] = f"#{parts[1]}"
        label = " ".join(p for p in parts if p)
        labels[(str(key[0]), str(key[1]))] = label if len(label) <= 40 else label[:39] + "…"
    counts = pd.Series(list(labels.values())).value_counts()
    uids = short_uids(series for _, series in labels)
    for key, label in labels.items():
        if not label or counts.get(label, 0) > 1:
            labels[key] = f"{label} {uids[key[1]]}".strip()
    return labels


def _figure(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    return fig, ax


def value_counts_table(frame: Any, attribute: str, by: str | None = "Modality") -> pd.DataFrame:
    """Counts of the values of ``attribute`` (rows, most frequent first) by ``by`` (columns): a column such as
    "Modality", an index level, "series" (labelled by ``series_labels``), or None (one column, "all").

    ``frame`` is a level frame or a Snapshot (its wide view: counts are instance counts). Values are text
    (arrays joined with backslashes; ``(NULL)`` and ``(missing)`` named).
    """
    data = frame
    frame = _frame_of(frame)
    if attribute not in frame.columns:
        raise KeyError(f"no column {attribute!r}")
    values = pd.Series([_label(v) for v in frame[attribute].to_numpy(dtype=object)], dtype=object, name=attribute)
    if by is None:
        groups = pd.Series(["all"] * len(frame), dtype=object)
    elif by == "series":
        labels = series_labels(data)
        groups = pd.Series([labels.get((str(i), str(s)), str(s)) for i, s in _series_keys(frame)], dtype=object)
    elif by in frame.columns:
        groups = pd.Series([_label(v) for v in frame[by].to_numpy(dtype=object)], dtype=object)
    elif (level := _index_level(frame, by)) is not None:
        groups = pd.Series([str(v) for v in level], dtype=object)
    else:
        raise KeyError(f"no column or index level {by!r} to group by")
    groups.name = by or "group"
    counts = pd.crosstab(values, groups)
    counts = counts.loc[counts.sum(axis=1).sort_values(ascending=False, kind="stable").index]
    counts.columns.name = by or "group"
    return counts


def value_counts(frame: Any, attribute: str, by: str | None = "Modality", *, ax: Axes | None = None) -> Axes:
    """Bar chart of ``value_counts_table``, stacked by ``by``."""
    counts = value_counts_table(frame, attribute, by)
    _, ax = _figure(ax, (max(4.0, 0.5 * len(counts) + 2), 3.5))
    bottom = np.zeros(len(counts))
    for group in counts.columns:
        heights = counts[group].to_numpy()
        ax.bar(range(len(counts)), heights, bottom=bottom, label=str(group))
        bottom += heights
    ax.set_xticks(range(len(counts)), [_short(str(v), 24) for v in counts.index], rotation=45, ha="right")
    ax.set_ylabel("instances")
    ax.set_title(f"{attribute} by {by}" if by else attribute)
    if by is not None:
        ax.legend(title=by, fontsize=7)
    return ax


def study_timeline_table(snapshot: Any) -> pd.DataFrame:
    """Per image set, oldest first: StudyInstanceUID, PatientID, StudyDescription, StudyDate (Timestamp),
    StudyTime (Timedelta) and StudyDateTime (their sum; NaT when the date is missing or not a date, a missing
    time counts as midnight), typed with ``curation.typed``; undated studies last.

    ``snapshot`` is a Snapshot or its studies frame.
    """
    studies = _frame_of(snapshot, "studies")
    vrs = snapshot if not isinstance(snapshot, pd.DataFrame) else None
    wanted = [
        c
        for c in ("StudyInstanceUID", "PatientID", "StudyDescription", "StudyDate", "StudyTime")
        if c in studies.columns
    ]
    table = typed(studies[wanted], vrs)
    out = pd.DataFrame(index=studies.index)
    for column in ("StudyInstanceUID", "PatientID", "StudyDescription"):
        out[column] = (
            pd.Series(
                [None if is_absent(v) or is_empty(v) else _label(v) for v in table[column]],
                index=studies.index,
                dtype=object,
            )
            if column in table.columns
            else pd.Series([None] * len(studies), index=studies.index, dtype=object)
        )
    date = table["StudyDate"] if "StudyDate" in table.columns else pd.Series(pd.NaT, index=studies.index)
    time_of_day = table["StudyTime"] if "StudyTime" in table.columns else pd.Series(pd.NaT, index=studies.index)
    out["StudyDate"] = pd.to_datetime(date, errors="coerce")
    out["StudyTime"] = pd.to_timedelta(time_of_day, errors="coerce")
    out["StudyDateTime"] = out["StudyDate"] + out["StudyTime"].fillna(pd.Timedelta(0))
    return out.sort_values("StudyDateTime", kind="stable")


def study_timeline(snapshot: Any, *, ax: Axes | None = None) -> Axes:
    """``study_timeline_table`` on a date axis, one row per study (undated ones listed, not drawn)."""
    out = study_timeline_table(snapshot)
    dated = out[out["StudyDateTime"].notna()]
    _, ax = _figure(ax, (7.0, max(2.0, 0.3 * len(out) + 1.2)))
    labels = [f"{p or '?'} {d or ''}".strip() for p, d in zip(out["PatientID"], out["StudyDescription"], strict=True)]
    positions = {key: i for i, key in enumerate(out.index)}
    ax.scatter(dated["StudyDateTime"], [positions[k] for k in dated.index], marker="o")
    ax.set_yticks(range(len(out)), [_short(label, 30) for label in labels], fontsize=7)
    ax.set_xlabel("study date")
    _date_axis(ax)
    undated = len(out) - len(dated)
    ax.set_title("Studies" + (f" ({undated} without a StudyDate not shown)" if undated else ""))
    return ax


def _date_axis(ax: Axes) -> None:
    """Dates (with the time where it matters) on the x axis, concisely."""
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _integer(value: Any) -> Any:
    if isinstance(value, list | tuple) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        number = parse_is(value)
        return pd.NA if number is None else number
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return pd.NA


def slice_geometry(data: Any, series_uid: str, *, ax: Axes | None = None) -> Axes:
    """Slice positions of one series along its normal, against InstanceNumber, with problems flagged; below
    (when no ``ax`` is given) the spacing in position order against the gap and overlap thresholds.

    ``data`` is a Snapshot (its instances) or an instance-level frame. Each instance's position is
    ImagePositionPatient · n, n the cross product of the series' (most common) ImageOrientationPatient row and
    column directions. In position order, ``spacing`` is the step from the previous slice; with the median
    step m: ``gap`` when spacing > 1.5 m, ``overlap`` when 0 < spacing < 0.5 m, ``duplicate`` for slices at the
    same position (both of them). ``geometry_table`` is that table. Returns the positions' Axes.
    """
    table = geometry_table(data, series_uid)
    if ax is None:
        _, (top, bottom) = plt.subplots(2, 1, figsize=(7.0, 6.0), layout="constrained")
    else:
        top, bottom = ax, None
    ok = table["flag"] == ""
    top.plot(table.loc[ok, "InstanceNumber"].astype(float), table.loc[ok, "position"], ".", ms=3, label="ok")
    for name, marker, color in (
        ("gap", "v", "tab:red"),
        ("overlap", "^", "tab:orange"),
        ("duplicate", "x", "tab:purple"),
    ):
        hit = table[name]
        if hit.any():
            top.plot(
                table.loc[hit, "InstanceNumber"].astype(float),
                table.loc[hit, "position"],
                marker,
                color=color,
                label=f"{name} ({int(hit.sum())})",
            )
    top.set_xlabel("InstanceNumber")
    top.set_ylabel("position along normal (mm)")
    label = _series_name(data, series_uid)
    top.set_title(f"Slice geometry of {label} (median spacing {table.attrs['median_spacing']:.3g} mm)")
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
    return top


def _series_name(data: Any, series_uid: str) -> str:
    """The series' label (``series_labels``), or the end of its UID."""
    try:
        labels = series_labels(data)
    except (KeyError, TypeError, ValueError):
        labels = {}
    found = [label for (_, series), label in labels.items() if series == series_uid]
    return found[0] if found else "…" + series_uid[-16:]


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


def _reverted(reverts: Iterable[Any] | pd.DataFrame | None) -> set[int]:
    if reverts is None:
        return set()
    if isinstance(reverts, pd.DataFrame):
        rows = reverts[reverts["status"] == "applied"] if "status" in reverts.columns else reverts
        reverts = rows["version_after"].tolist()
    numbers = (_integer(str(v)) for v in reverts if not is_absent(v))
    return {int(n) for n in numbers if n is not pd.NA}


def version_table(history: pd.DataFrame, reverts: Iterable[Any] | pd.DataFrame | None = None) -> pd.DataFrame:
    """The versions of an image set, oldest first: version (int), time (updatedAt, else createdAt), status
    (the workflow status: CREATED, UPDATED, UPDATE_FAILED, COPIED ...), message, forced, revert.

    ``history`` is a frame from ``curation.history`` or ListImageSetVersions' ``imageSetPropertiesList``.
    AHI's version list does not say which versions a revert made: ``reverts`` does, as version IDs or as the
    result table of ``curation.revert`` for this image set (its applied rows' ``version_after``).
    """
    versions = _first(history, _VERSION_COLUMNS)
    if versions is None:
        raise KeyError("the history frame has no versionId column")
    times = _first(history, _TIME_COLUMNS)
    status = _first(history, _STATUS_COLUMNS)
    message = _first(history, _MESSAGE_COLUMNS)
    forced = (
        history["overrides"].map(lambda o: bool(isinstance(o, dict) and o.get("forced")))
        if "overrides" in history.columns
        else history.get("forced")
    )
    reverted = _reverted(reverts)
    numbers = pd.array([_integer(str(v)) for v in versions], dtype="Int64")
    out = pd.DataFrame(
        {
            "version": numbers,
            "time": pd.to_datetime(times.to_numpy(), utc=True) if times is not None else pd.NaT,
            "status": [None if is_absent(s) else str(s) for s in status] if status is not None else None,
            "message": [None if is_absent(m) else str(m) for m in message] if message is not None else None,
            "forced": [bool(f) if not is_absent(f) else False for f in forced] if forced is not None else False,
            "revert": [n is not pd.NA and int(n) in reverted for n in numbers],
        }
    )
    return out.sort_values("version", kind="stable").reset_index(drop=True)


def version_timeline(
    history: pd.DataFrame, *, reverts: Iterable[Any] | pd.DataFrame | None = None, ax: Axes | None = None
) -> Axes:
    """``version_table`` drawn: each version by date, coloured by workflow status, reverts and forced
    updates marked and labelled."""
    out = version_table(history, reverts)
    _, ax = _figure(ax, (7.0, 3.0))
    dated = bool(out["time"].notna().any())
    x = out["time"] if dated else out["version"].astype(float)
    ax.plot(x, out["version"].astype(float), "-", color="0.7", zorder=1)
    for name in dict.fromkeys(out["status"].fillna("?")):
        rows = (out["status"].fillna("?") == name) & ~out["revert"]
        if rows.any():
            ax.scatter(x[rows], out.loc[rows, "version"].astype(float), label=name, zorder=2)
    if out["revert"].any():
        rows = out["revert"]
        ax.scatter(
            x[rows], out.loc[rows, "version"].astype(float), marker="D", s=60, color="tab:red", label="revert", zorder=3
        )
    for i, row in out.iterrows():
        notes = [word for word, on in (("revert", row["revert"]), ("forced", row["forced"])) if on]
        if row["message"]:
            notes.append(str(row["message"]))
        if notes:
            ax.annotate(
                _short(" ".join(notes), 30),
                (x.iloc[int(str(i))], float(row["version"])),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
    ax.set_ylabel("version")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Image set versions")
    ax.legend(fontsize=7)
    if dated:
        _date_axis(ax)
        ax.set_xlabel("date (UTC)")
    return ax
