"""What diff looks up in the snapshot: its frames and their codecs, row labels and addresses, parents, VRs.

``Targets`` wraps the snapshot's own cached frames (never modified, never copied) and remembers what it
computes (index level arrays, instance -> series/studies positions, where each attribute is held).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from curation.frames.cells import INDEX
from curation.frames.flattening import Flattened, wide_codecs

__all__ = ["Targets"]

LEVEL_RANK = {"Patient": 0, "Study": 1, "Series": 2, "Instance": 3}
#: The UID each row frame keys by (its last index level).
KEY_UID = {"studies": "ImageSetID", "series": "SeriesInstanceUID", "instances": "SOPInstanceUID"}


def by_position(frame: pd.DataFrame, cache: dict[str, pd.DataFrame], name: str) -> pd.DataFrame:
    """``frame`` indexed by row position (cached in ``cache`` under ``name``): taking a column of it makes no
    copy of a MultiIndex (a column of the frame itself costs a quarter of a millisecond for that alone)."""
    if name not in cache:
        cache[name] = frame.set_axis(pd.RangeIndex(len(frame)), axis=0)
    return cache[name]


def _flattened(snapshot: Any) -> Flattened:
    cached = getattr(snapshot, "cached_flattened", None)
    return cached() if callable(cached) else snapshot.flattened


class Targets:
    """Read-only lookups into one snapshot's frames for one diff."""

    def __init__(self, snapshot: Any, study_levels: Mapping[str, str] | None = None) -> None:
        self.snapshot = snapshot
        self.flat = _flattened(snapshot)
        self.study_levels = {**self.flat.levels, **(study_levels or {})}
        primary = getattr(snapshot, "primary", None)
        self.primary: Mapping[str, Any] | None = primary if isinstance(primary, Mapping) else None
        self._ids: dict[str, list[np.ndarray]] = {}
        self._by_position: dict[str, pd.DataFrame] = {}
        self._maps: dict[str, np.ndarray] = {}
        self._holding: dict[str, dict[str, set[str]]] = {}
        self._wide: dict[str, tuple[str, str]] | None = None
        self._instance_vrs: np.ndarray | None = None

    # -- frames and columns --

    def frame(self, source: str) -> pd.DataFrame:
        return getattr(self.flat, source)

    def codec(self, source: str, column: str) -> str | None:
        """How ``source``'s column holds its cells (None for a column the documents never had)."""
        return self.flat.codecs.get(source, {}).get(column)

    def wide_codecs(self) -> dict[str, str]:
        columns = {n: list(self.frame(n).columns) for n in ("studies", "series", "instances")}
        return wide_codecs(self.flat.codecs, columns)

    def held_by_index(self, source: str, column: str) -> bool:
        """True when ``column`` is the UID ``source``'s index holds instead of a column (codec ``index``)."""
        return self.codec(source, column) == INDEX and column not in self.frame(source).columns

    def column(self, source: str, column: str) -> Any:
        """The snapshot's cells of ``source``'s ``column`` (the index level for a UID held by the index)."""
        frame = self.frame(source)
        if column in frame.columns:
            return by_position(frame, self._by_position, source)[column].array
        if self.held_by_index(source, column):
            return self.ids(source)[-1]
        return None

    def ids(self, source: str) -> list[np.ndarray]:
        """The index levels of ``source`` as object arrays."""
        if source not in self._ids:
            index = self.frame(source).index
            self._ids[source] = [index.get_level_values(i).to_numpy(dtype=object) for i in range(index.nlevels)]
        return self._ids[source]

    def map_to(self, source: str) -> np.ndarray:
        """Position in ``source`` (studies or series) of each instance row."""
        if source not in self._maps:
            image_sets, series_uids = self.ids("instances")[:2]
            target = self.frame(source).index
            keys = pd.Index(image_sets) if source == "studies" else pd.MultiIndex.from_arrays([image_sets, series_uids])
            self._maps[source] = target.get_indexer(keys)
        return self._maps[source]

    def series_to_studies(self) -> np.ndarray:
        """Position in ``studies`` of each series row."""
        if "series->studies" not in self._maps:
            self._maps["series->studies"] = self.frame("studies").index.get_indexer(pd.Index(self.ids("series")[0]))
        return self._maps["series->studies"]

    def wide_map(self) -> dict[str, tuple[str, str]]:
        """Column of the wide view -> (source frame, its column), named as ``wide_view`` names them."""
        if self._wide is None:
            mapping: dict[str, tuple[str, str]] = {}
            for source, level in (("studies", None), ("series", "Series"), ("instances", "Instance")):
                for column in self.frame(source).columns:
                    name = f"@{level}:{column}" if column in mapping else column
                    mapping[name] = (source, column)
            self._wide = mapping
        return self._wide

    # -- rows --

    def label(self, kind: str, position: int) -> Any:
        """The index label of row ``position`` of ``kind``'s frame (a str or a tuple)."""
        ids = self.ids("instances" if kind == "wide" else kind)
        return ids[0][position] if len(ids) == 1 else tuple(level[position] for level in ids)

    def address(self, kind: str, level: str, position: int) -> tuple[str, str | None, str | None]:
        """(image set, series, sop) of row ``position`` of ``kind``'s frame, cut to ``level``."""
        ids = self.ids("instances" if kind == "wide" else kind)
        image_set = ids[0][position]
        series = ids[1][position] if len(ids) > 1 and level in ("Series", "Instance") else None
        sop = ids[2][position] if len(ids) > 2 and level == "Instance" else None
        return image_set, series, sop

    def is_primary(self, image_set: str) -> bool | None:
        if self.primary is None or image_set not in self.primary:
            return None
        flag = self.primary[image_set]
        return None if flag is None else bool(flag)

    # -- attributes --

    def holding(self, key: str) -> dict[str, set[str]]:
        """Image set -> levels at which the snapshot holds attribute ``key``."""
        if key not in self._holding:
            found: dict[str, set[str]] = {}
            studies = self.frame("studies")
            columns = [
                (key, self.study_levels.get(key, "Study")),
                (f"@Patient:{key}", "Patient"),
                (f"@Study:{key}", "Study"),
            ]
            for column, level in columns:
                if column in studies.columns:
                    for image_set in self.ids("studies")[0][~_missing(studies[column])]:
                        found.setdefault(image_set, set()).add(level)
            for source, level in (("series", "Series"), ("instances", "Instance")):
                frame = self.frame(source)
                if key in frame.columns or self.held_by_index(source, key):
                    present = ~_missing(frame[key]) if key in frame.columns else np.ones(len(frame), dtype=bool)
                    for image_set in np.unique(self.ids(source)[0][present].astype(str)):
                        found.setdefault(str(image_set), set()).add(level)
            self._holding[key] = found
        return self._holding[key]

    def instance_vr(self, position: int, key: str) -> str | None:
        """The VR instance row ``position`` gives private tag ``key`` in its DICOMVRs."""
        if self._instance_vrs is None:
            instances = self.frame("instances")
            self._instance_vrs = (
                instances["@DICOMVRs"].to_numpy(dtype=object)
                if "@DICOMVRs" in instances.columns
                else np.full(len(instances), None, dtype=object)
            )
        vrs = self._instance_vrs[position]
        return vrs.get(key) if isinstance(vrs, dict) else None

    def instance_position(self, image_set: str, series: Any, sop: Any) -> int:
        return int(self.frame("instances").index.get_indexer([(image_set, series, sop)])[0])  # type: ignore[arg-type]

    def known_vr(self, key: str) -> str | None:
        """The VR some instance of the snapshot gives private tag ``key`` (a hint for messages)."""
        vrs = getattr(self.snapshot, "dicom_vrs", None)
        try:
            return vrs().get(key) if callable(vrs) else None
        except Exception:  # only a hint for a message
            return None


def _missing(values: pd.Series) -> np.ndarray:
    return np.asarray(values.isna(), dtype=bool)
