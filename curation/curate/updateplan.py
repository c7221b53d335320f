"""UpdatePlan: the exact requests a ChangeSet becomes, as plain data a person reviews and a file keeps.

``PlannedRequest`` is one call (boto3's keyword arguments, without ``latestVersionId``); ``UpdatePlan`` holds
them in order with the versions they were planned against, its content hash as ``plan_id``, the problems
that kept image sets out, a preview (every request applied with ``apply_to_document``) and its displays.
``curation.curate.planner`` builds plans; ``curation.run`` applies them.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd

from curation.curate.changeset import PROBLEM_COLUMNS, empty_problems, payload_removals, removal_text
from curation.frames.flattening import NULL
from curation.model.updates import apply_to_document, study_part

__all__ = ["PlanError", "PlannedRequest", "UpdatePlan"]

FORMAT = "ahi-curation-plan"
FORMAT_VERSION = 1
SCHEMA_VERSION = 1.1
UNKNOWN_PRIMARY = "primary flag unknown (snapshot.primary has no entry): treated as primary"
_HTML_IMAGE_SETS = 50
_HTML_JSON_CHARS = 20_000


class PlanError(ValueError):
    """Planning stopped: ``problems`` (a DataFrame of PROBLEM_COLUMNS) lists every problem found."""

    def __init__(self, problems: pd.DataFrame) -> None:
        self.problems = problems.reset_index(drop=True)
        lines = [f"{len(self.problems)} problem(s) stop the plan (allow_problems=True plans the other image sets):"]
        for record in self.problems.to_dict("records"):
            lines.append("- " + _problem_text(record))
        super().__init__("\n".join(lines))


def _problem_text(record: Mapping[str, Any]) -> str:
    where = [f"image set {record.get('ImageSetID')}"]
    for name in ("row", "column", "attribute"):
        value = record.get(name)
        if value is not None and not (isinstance(value, float) and value != value):
            where.append(f"{name} {value}")
    return f"{', '.join(where)}: {record.get('reason')}"


# --- plan data ---------------------------------------------------------------------------------------------


@dataclass
class PlannedRequest:
    """One UpdateImageSetMetadata call: ``params`` are boto3's kwargs except ``latestVersionId``."""

    image_set_id: str
    index: int
    params: dict[str, Any]
    force_reasons: list[str] = field(default_factory=list)
    affects: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def force(self) -> bool:
        return bool(self.params.get("force"))

    @property
    def include_study_image_sets(self) -> bool:
        return bool(self.params.get("includeStudyImageSets"))

    @property
    def blobs(self) -> dict[str, str]:
        """The DICOMUpdates blobs (``updatableAttributes``/``removableAttributes`` -> JSON text)."""
        return dict(self.params["updateImageSetMetadataUpdates"].get("DICOMUpdates") or {})

    @property
    def revert_to(self) -> str | None:
        return self.params["updateImageSetMetadataUpdates"].get("revertToVersionId")

    def blob_bytes(self, name: str) -> int:
        """Length in bytes of one blob as sent (0 when absent)."""
        blob = self.blobs.get(name)
        return 0 if blob is None else len(blob.encode() if isinstance(blob, str) else blob)

    def payload(self, name: str) -> dict[str, Any] | None:
        """One blob parsed back to a dict (None when absent)."""
        blob = self.blobs.get(name)
        return None if blob is None else orjson.loads(blob)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_set_id": self.image_set_id,
            "index": self.index,
            "params": self.params,
            "force_reasons": list(self.force_reasons),
            "affects": list(self.affects),
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlannedRequest:
        return cls(
            image_set_id=data["image_set_id"],
            index=int(data["index"]),
            params=data["params"],
            force_reasons=list(data.get("force_reasons") or []),
            affects=list(data.get("affects") or []),
            description=data.get("description") or "",
        )


def _plan_id(datastore_id: str, base_versions: Mapping[str, str], requests: list[PlannedRequest]) -> str:
    content = {
        "datastore_id": datastore_id,
        "base_versions": dict(base_versions),
        "requests": [[r.image_set_id, r.index, r.params, r.affects] for r in requests],
    }
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]


@dataclass(eq=False)
class UpdatePlan:
    """The requests that express a ChangeSet, per image set in order, with the versions they were made against."""

    plan_id: str
    datastore_id: str
    base_versions: dict[str, str]
    requests: list[PlannedRequest]
    problems: pd.DataFrame = field(default_factory=empty_problems)

    @classmethod
    def build(
        cls,
        datastore_id: str,
        base_versions: Mapping[str, str],
        requests: list[PlannedRequest],
        problems: pd.DataFrame | None = None,
    ) -> UpdatePlan:
        """A plan whose ``plan_id`` is the hash of its content."""
        versions = {k: str(v) for k, v in base_versions.items()}
        return cls(
            _plan_id(datastore_id, versions, requests),
            datastore_id,
            versions,
            requests,
            empty_problems() if problems is None else problems.reset_index(drop=True),
        )

    def __len__(self) -> int:
        return len(self.requests)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UpdatePlan):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        forced = sum(r.force for r in self.requests)
        return (
            f"UpdatePlan(plan_id={self.plan_id!r}, image_sets={len(self.by_image_set())}, "
            f"requests={len(self.requests)}, forced={forced}, {self._removals()}, problems={len(self.problems)})"
        )

    def _removals(self) -> str:
        """What the plan removes, for its first line (attributes, instances, series)."""
        return removal_text(payload_removals(r.payload("removableAttributes") for r in self.requests))

    @property
    def image_set_ids(self) -> list[str]:
        return list(dict.fromkeys(r.image_set_id for r in self.requests))

    def by_image_set(self) -> dict[str, list[PlannedRequest]]:
        """Requests grouped by image set (in plan order), each list in application order."""
        groups: dict[str, list[PlannedRequest]] = {}
        for request in self.requests:
            groups.setdefault(request.image_set_id, []).append(request)
        return {key: sorted(value, key=lambda r: r.index) for key, value in groups.items()}

    # --- persistence -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "plan_id": self.plan_id,
            "datastore_id": self.datastore_id,
            "base_versions": self.base_versions,
            "requests": [r.to_dict() for r in self.requests],
            "problems": [
                {name: _jsonable(record.get(name)) for name in PROBLEM_COLUMNS}
                for record in self.problems.to_dict("records")
            ],
        }

    def to_json(self) -> str:
        """The plan as JSON text (blobs stay JSON strings inside it)."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2, default=_json_default).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> UpdatePlan:
        data = orjson.loads(text)
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"not an ahi-curation plan of format version {FORMAT_VERSION}")
        problems = pd.DataFrame(
            {
                name: pd.Series([_from_jsonable(p.get(name)) for p in data.get("problems", [])], dtype=object)
                for name in PROBLEM_COLUMNS
            }
        )
        return cls(
            plan_id=data["plan_id"],
            datastore_id=data["datastore_id"],
            base_versions={k: str(v) for k, v in data["base_versions"].items()},
            requests=[PlannedRequest.from_dict(r) for r in data["requests"]],
            problems=problems,
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> UpdatePlan:
        with open(path, encoding="utf-8") as handle:
            return cls.from_json(handle.read())

    # --- preview -----------------------------------------------------------------------------------------

    def preview(
        self,
        documents: Mapping[str, dict[str, Any]],
        *,
        history: Callable[[str, str], dict[str, Any]] | None = None,
        primary: Mapping[str, bool] | None = None,
        max_blob_bytes: int | None = None,
    ) -> dict[str, dict[str, Any]]:
        """The documents the plan will produce: every request applied in order with ``apply_to_document``.

        ``documents`` maps image set IDs to current documents (others are returned unchanged); a request with
        ``includeStudyImageSets`` also applies its Patient/Study part to the documents of ``affects``.
        ``history(image_set_id, version_id)`` serves reverts. Raises the AHIError AHI would answer.
        """
        result = dict(documents)
        primary = primary or {}
        for request in self.requests:
            image_set = request.image_set_id
            if image_set not in result:
                raise KeyError(f"no document for image set {image_set}")
            past = None if history is None else (lambda version, _id=image_set: history(_id, version))
            result[image_set] = apply_to_document(
                result[image_set],
                request.params,
                history=past,
                is_primary=bool(primary.get(image_set, False)),
                max_blob_bytes=max_blob_bytes,
            )
            if request.affects:
                part = study_part(request.params)
                for other in request.affects if part else []:
                    if other in result:
                        result[other] = apply_to_document(
                            result[other],
                            part,
                            is_primary=bool(primary.get(other, True)),
                            max_blob_bytes=max_blob_bytes,
                        )
        return result

    # --- display -----------------------------------------------------------------------------------------

    def requests_frame(self) -> pd.DataFrame:
        """One row per request: image set, index, force and reasons, blob sizes, description."""
        rows = [
            {
                "ImageSetID": r.image_set_id,
                "index": r.index,
                "force": r.force,
                "force_reasons": list(r.force_reasons),
                "includeStudyImageSets": r.include_study_image_sets,
                "affects": list(r.affects),
                "updatable_bytes": r.blob_bytes("updatableAttributes"),
                "removable_bytes": r.blob_bytes("removableAttributes"),
                "revertToVersionId": r.revert_to,
                "base_version": self.base_versions.get(r.image_set_id),
                "description": r.description,
            }
            for r in self.requests
        ]
        columns = [
            "ImageSetID",
            "index",
            "force",
            "force_reasons",
            "includeStudyImageSets",
            "affects",
            "updatable_bytes",
            "removable_bytes",
            "revertToVersionId",
            "base_version",
            "description",
        ]
        return pd.DataFrame(rows, columns=columns)

    def _repr_html_(self) -> str:
        esc = html.escape
        forced = sum(r.force for r in self.requests)
        groups = self.by_image_set()
        parts = [
            '<div class="ahi-update-plan">',
            f"<h4>UpdatePlan {esc(self.plan_id)}: {len(self.requests)} request(s) on {len(groups)} image set(s), "
            f"{forced} forced, {esc(self._removals())}, datastore {esc(self.datastore_id)}</h4>",
        ]
        if len(self.problems):
            parts.append(
                f'<div style="background:#fde2e2;border:1px solid #c00;padding:4px"><b>{len(self.problems)} '
                "problem(s): these image sets are not planned</b><table>"
                "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in PROBLEM_COLUMNS) + "</tr>"
            )
            for record in self.problems.to_dict("records"):
                parts.append(
                    "<tr>" + "".join(f"<td>{esc(_cell_text(record.get(c)))}</td>" for c in PROBLEM_COLUMNS) + "</tr>"
                )
            parts.append("</table></div>")
        for number, (image_set, requests) in enumerate(groups.items()):
            if number == _HTML_IMAGE_SETS:
                parts.append(f"<p>... and {len(groups) - number} more image set(s) (see requests_frame())</p>")
                break
            base = self.base_versions.get(image_set)
            parts.append(
                f"<details open><summary><b>image set {esc(image_set)}</b>: {len(requests)} request(s)"
                f"{'' if base is None else f', against version {esc(base)}'}</summary>"
            )
            for request in requests:
                parts.append(_request_html(request))
            parts.append("</details>")
        parts.append("</div>")
        return "".join(parts)


def _request_html(request: PlannedRequest) -> str:
    esc = html.escape
    color = "#c00" if request.force else "#888"
    out = [
        f'<div style="border-left:4px solid {color};margin:4px 0 8px 8px;padding-left:6px">',
        f"<div><b>#{request.index}</b> {esc(request.description)}</div>",
    ]
    flags = [f"datastoreId={esc(request.params.get('datastoreId', ''))}", f"imageSetId={esc(request.image_set_id)}"]
    if request.force:
        flags.append('<b style="color:#c00">force=True</b>')
    if request.include_study_image_sets:
        flags.append("<b>includeStudyImageSets=True</b>")
    out.append(f"<div><code>{' '.join(flags)}</code></div>")
    if request.force_reasons:
        out.append('<div style="color:#c00">force needed because:<ul>')
        out.extend(f"<li>{esc(reason)}</li>" for reason in request.force_reasons)
        out.append("</ul></div>")
    if request.affects:
        out.append(f"<div>also updates (study consistency): {esc(', '.join(request.affects))}</div>")
    if request.revert_to is not None:
        out.append(f"<div>revertToVersionId = <code>{esc(request.revert_to)}</code></div>")
    for name in ("updatableAttributes", "removableAttributes"):
        payload = request.payload(name)
        if payload is None:
            continue
        text = json.dumps(payload, indent=2, ensure_ascii=False)
        if len(text) > _HTML_JSON_CHARS:
            text = text[:_HTML_JSON_CHARS] + "\n... (truncated)"
        out.append(f"<div>{name} ({request.blob_bytes(name)} bytes):</div><pre>{esc(text)}</pre>")
    out.append("</div>")
    return "".join(out)


def _cell_text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _json_default(value: Any) -> Any:
    if value is NULL:
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, tuple):
        return {"tuple": [_jsonable(v) for v in value]}
    if isinstance(value, np.generic):
        return value.item()
    if value is NULL or value is pd.NA:
        return None
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"tuple"}:
        return tuple(_from_jsonable(v) for v in value["tuple"])
    return value


