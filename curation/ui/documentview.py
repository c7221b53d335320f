"""An AHI metadata document as a person reads it: levels folded, attributes as tables, not raw JSON.

``DocumentView(snapshot.document(image_set_id))`` displays in a notebook as nested ``<details>``: the image
set's identity, then Patient and Study attribute tables (keyword, tag, VR, value), then one fold per series
(its attributes and how many instances) and inside it one fold per instance, the first ``max_instances``
only. ``json()`` gives the JSON text. The levels and their keys follow AHI's metadata document
(``Patient``/``Study``/``Series``/``Instances``, each with ``DICOM`` and optional ``DICOMVRs``).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import orjson
import pandas as pd

from curation.model.dictionary import keyword_of, tag_of, vr_of
from curation.model.missing import NULL
from curation.ui.display import short_uids, text_of

__all__ = ["DocumentView", "attribute_table"]


def attribute_table(level: Mapping[str, Any]) -> pd.DataFrame:
    """The ``DICOM`` attributes of one level (a Patient, Study, series or instance mapping) as rows of
    keyword, tag, VR and value; a JSON ``null`` (present, empty) is ``NULL``, private tags keep their hex key
    as keyword."""
    dicom = level.get("DICOM") or {}
    vrs = level.get("DICOMVRs") or {}
    rows = []
    for key, value in dicom.items():
        tag = tag_of(key)
        rows.append(
            {
                "keyword": keyword_of(key) or key,
                "tag": "" if tag is None else f"({tag >> 16:04X},{tag & 0xFFFF:04X})",
                "VR": vr_of(key, vrs) or "",
                "value": NULL if value is None else value,
            }
        )
    return pd.DataFrame(rows, columns=["keyword", "tag", "VR", "value"], dtype=object)


def _table(level: Mapping[str, Any]) -> str:
    """The level's attribute table as compact HTML (``to_html``: a document has hundreds of these tables,
    Styler's per-cell ids would multiply its size)."""
    table = attribute_table(level)
    if not len(table):
        return "<i>no attributes</i>"
    table["value"] = table["value"].map(text_of)
    return table.to_html(index=False, escape=True, border=0)


def _fold(summary: str, body: str, *, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{summary}</summary>{body}</details>"


class DocumentView:
    """One image set's metadata document, displayed folded by level (see the module docstring)."""

    def __init__(self, document: Mapping[str, Any], max_instances: int = 10) -> None:
        self.document = document
        self.max_instances = max_instances

    def __repr__(self) -> str:
        doc = self.document
        series = (doc.get("Study") or {}).get("Series") or {}
        count = sum(len(s.get("Instances") or {}) for s in series.values())
        return f"DocumentView(image set {doc.get('ImageSetID', '?')}: {len(series)} series, {count} instances)"

    def json(self) -> str:
        """The document as indented JSON text (what AHI returned)."""
        return orjson.dumps(self.document, option=orjson.OPT_INDENT_2).decode()

    def _series_html(self, uid: str, label: str, series: Mapping[str, Any]) -> str:
        instances: Mapping[str, Any] = series.get("Instances") or {}
        names = short_uids(instances)
        folds = [
            _fold(f"instance {html.escape(names[sop])}", _table(instance))
            for sop, instance in list(instances.items())[: self.max_instances]
        ]
        more = len(instances) - len(folds)
        if more > 0:
            folds.append(f"<div><i>… {more} more instance(s)</i></div>")
        dicom = series.get("DICOM") or {}
        what = " ".join(
            html.escape(str(dicom[k]))
            for k in ("Modality", "SeriesNumber", "SeriesDescription")
            if dicom.get(k) not in (None, "")
        )
        summary = f"<b>series {html.escape(label)}</b> {what}: {len(instances)} instance(s)"
        return _fold(summary, f"<div title='{html.escape(uid)}'>{_table(series)}</div>" + "".join(folds))

    def _repr_html_(self) -> str:
        doc = self.document
        study = doc.get("Study") or {}
        series: Mapping[str, Any] = study.get("Series") or {}
        labels = short_uids(series)
        head = (
            f"<b>image set {html.escape(str(doc.get('ImageSetID', '?')))}</b> "
            f"(datastore {html.escape(str(doc.get('DatastoreID', '?')))}, "
            f"schema {html.escape(str(doc.get('SchemaVersion', '?')))}): {len(series)} series"
        )
        parts = [
            f"<div>{head}</div>",
            _fold("<b>Patient</b>", _table(doc.get("Patient") or {}), open_=True),
            _fold("<b>Study</b>", _table(study), open_=True),
            *(self._series_html(uid, labels[uid], s) for uid, s in series.items()),
        ]
        return "<div class='ahi-document'>" + "".join(parts) + "</div>"
