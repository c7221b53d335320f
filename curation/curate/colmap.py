"""diff's column mapping: which snapshot column, level and DICOM key an edited column stands for, or why it
cannot be edited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from curation.curate.targets import LEVEL_RANK, Targets
from curation.frames.cells import infer_codec
from curation.frames.flattening import split_column
from curation.model import dictionary as dicom
from curation.model import rules
from curation.model.levels import level_of

__all__ = ["ColumnMapper", "Spec"]


@dataclass(frozen=True)
class Spec:
    """How one edited column maps to the snapshot: source frame and column, level, DICOM key, blockers."""

    source: str
    src_col: str
    level: str
    key: str
    blocker: str | None = None
    warning: str | None = None
    node: bool = False


class ColumnMapper:
    """Edited column -> ``Spec``, by frame kind (``studies``, ``series``, ``instances``, ``wide``, ``frames``)."""

    def __init__(self, targets: Targets) -> None:
        self.targets = targets
        self._specs: dict[tuple[str, Any], Spec] = {}

    def looks_wide(self, frame: pd.DataFrame) -> bool:
        """True when an instance-indexed frame carries studies or series columns (the ``wide`` view)."""
        instance_columns = set(self.targets.frame("instances").columns)
        upper = {c for c in self.targets.wide_map() if c not in instance_columns}
        return any(c in upper for c in frame.columns)

    def codec(self, kind: str, column: Any, spec: Spec, dtype: Any) -> str:
        """How the edited column's cells are read: the snapshot column's codec, else one inferred from its VR."""
        known = self.targets.codec(spec.source, spec.src_col)
        if known is not None and known != "index":
            return known
        vr = None if spec.node or dicom.is_tag_key(spec.key) else dicom.vr_of(spec.key)
        return "str" if known == "index" else infer_codec(spec.key, vr, dtype, spec.node)

    def spec(self, kind: str, column: Any) -> Spec:
        if (kind, column) not in self._specs:
            self._specs[(kind, column)] = self._spec(kind, column)
        return self._specs[(kind, column)]

    def _spec(self, kind: str, column: Any) -> Spec:
        if not isinstance(column, str):
            return Spec(
                kind, str(column), "Instance", str(column), blocker="column names must be DICOM keywords or tags"
            )
        qualifier, key, node_key = split_column(column)
        if kind == "frames":
            return Spec(
                "frames", column, "Instance", key, blocker="image frame data is AHI-generated and cannot be changed"
            )
        source, src_col, level = self._place(kind, column, qualifier, key)
        if kind in ("series", "instances") and qualifier is not None and qualifier != level:
            return Spec(
                source, src_col, level, key, blocker=f"a {qualifier}-level column cannot be edited in the {kind} frame"
            )
        if node_key:
            hint = "; give the VR of a new private tag with diff(..., vrs={tag: VR})" if key == "DICOMVRs" else ""
            return Spec(
                source,
                src_col,
                level,
                key,
                node=True,
                blocker=f"{column} is not a DICOM attribute (AHI-generated or node data): it cannot be "
                f"changed with UpdateImageSetMetadata{hint}",
            )
        return self._checked(Spec(source, src_col, level, key))

    def _place(self, kind: str, column: str, qualifier: str | None, key: str) -> tuple[str, str, str]:
        """(source frame, its column, level) of an edited column."""
        if kind == "wide":
            if column in self.targets.wide_map():
                source, src_col = self.targets.wide_map()[column]
                level = {"series": "Series", "instances": "Instance"}.get(source) or self.study_level(qualifier, key)
                return source, src_col, level
            level = qualifier or level_of(key)
            source = {"Patient": "studies", "Study": "studies", "Series": "series"}.get(level, "instances")
            return source, column if source == "studies" else key, level
        if kind == "studies":
            return kind, column, self.study_level(qualifier, key)
        return kind, column, "Series" if kind == "series" else "Instance"

    def _checked(self, spec: Spec) -> Spec:
        key, level = spec.key, spec.level
        if level not in LEVEL_RANK:
            return _blocked(spec, f"{spec.src_col} names no level of the document")
        generated = rules.generated_key_refusal(key)
        if generated:
            return _blocked(spec, generated)
        if dicom.is_tag_key(key):
            if key != key.upper():
                return _blocked(spec, f"tag keys are written with 8 uppercase hex digits: {key.upper()}")
            keyword = dicom.keyword_of(key)
            if keyword:
                return _blocked(
                    spec, f"tag {key} has the keyword {keyword}: AHI keys it by keyword, use column {keyword!r}"
                )
        elif not dicom.is_standard(key):
            return Spec(
                spec.source,
                spec.src_col,
                level,
                key,
                warning=f"{key!r} is not a DICOM keyword (pydicom's dictionary) nor an 8-hex tag: AHI takes "
                "it only with force",
            )
        return spec

    def study_level(self, qualifier: str | None, key: str) -> str:
        if qualifier is not None:
            return qualifier if qualifier in ("Patient", "Study") else f"?{qualifier}"
        level = self.targets.study_levels.get(key)
        if level:
            return level
        return "Patient" if level_of(key) == "Patient" else "Study"


def _blocked(spec: Spec, reason: str) -> Spec:
    return Spec(spec.source, spec.src_col, spec.level, spec.key, blocker=reason, node=spec.node)
