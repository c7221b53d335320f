"""SearchImageSets' filters and sorts as SQL, and the paging tokens every List/Search operation hands out.

A ``nextToken`` is a keyset position (the last item's sort key and a tie-breaker) bound to the request that
issued it, so image sets added between pages cause no duplicates and a token replayed on another request is a
ValidationException. Pages hold 50 items unless ``maxResults`` says otherwise. Filters follow the API reference
of ``SearchCriteria``: ``EQUAL`` takes one value, ``BETWEEN`` two, and only on timestamps and the study date.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

from curation.local.database import invalid
from curation.local.indexing import study_datetime_key
from curation.local.validate import to_datetime

DEFAULT_PAGE = 50

SORT_COLUMNS: dict[str, str] = {
    "updatedAt": "updated_at",
    "createdAt": "created_at",
    "DICOMStudyDateAndTime": "COALESCE(study_datetime, '')",
}
_EQUAL_COLUMNS: dict[str, str] = {
    "DICOMPatientId": "patient_id",
    "DICOMAccessionNumber": "accession_number",
    "DICOMStudyId": "study_id",
    "DICOMStudyInstanceUID": "study_uid",
}
_RANGES = ("createdAt", "updatedAt", "DICOMStudyDateAndTime")


def scope(*parts: Any) -> str:
    """What a token is bound to: a short hash of the request's identifying parameters."""
    return hashlib.sha256(orjson.dumps(parts, default=str)).hexdigest()[:16]


def encode_token(scope_id: str, key: Any) -> str:
    """A nextToken holding position ``key`` for requests of ``scope_id``."""
    return base64.urlsafe_b64encode(orjson.dumps({"s": scope_id, "k": key})).decode()


def decode_token(token: str, scope_id: str, size: int | None = None) -> Any:
    """The position a nextToken holds (an int, or a list of ``size`` values); ValidationException if foreign."""
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        key = payload["k"]
        valid = payload.get("s") == scope_id and (
            isinstance(key, int) if size is None else isinstance(key, list) and len(key) == size
        )
    except (ValueError, TypeError, KeyError, AttributeError, orjson.JSONDecodeError) as exc:
        raise invalid("Invalid nextToken") from exc
    if not valid:
        raise invalid("Invalid nextToken: it was not issued for this request")
    return key


def _filter_kind(search_filter: dict[str, Any]) -> str:
    operator, values = search_filter["operator"], search_filter["values"]
    kinds = {next(iter(value)) for value in values}
    if len(kinds) != 1:
        raise invalid("All values of a search filter must be of the same attribute")
    kind = kinds.pop()
    if operator == "EQUAL" and len(values) != 1:
        raise invalid("The EQUAL operator takes exactly one value")
    if operator == "BETWEEN":
        if len(values) != 2:
            raise invalid("The BETWEEN operator takes exactly two values")
        if kind not in _RANGES:
            raise invalid(f"The BETWEEN operator is not supported for {kind}")
    return str(kind)


def _study_datetime_sql(operator: str, raw: list[Any]) -> tuple[str, list[Any]]:
    keys = [study_datetime_key(value["DICOMStudyDate"], value.get("DICOMStudyTime")) for value in raw]
    if None in keys:
        raise invalid("DICOMStudyDate must not be empty")
    known = [key for key in keys if key is not None]
    if operator == "EQUAL":
        if raw[0].get("DICOMStudyTime"):
            return "study_datetime = ?", known
        return "substr(study_datetime, 1, 8) = ?", [known[0][:8]]
    return "study_datetime BETWEEN ? AND ?", sorted(known)


def filter_sql(search_filter: dict[str, Any]) -> tuple[str, list[Any]]:
    """One search filter as a SQL condition over ``image_sets`` and its arguments."""
    kind = _filter_kind(search_filter)
    operator = search_filter["operator"]
    raw = [value[kind] for value in search_filter["values"]]
    if kind in _EQUAL_COLUMNS:
        return f"{_EQUAL_COLUMNS[kind]} = ?", raw
    if kind == "DICOMSeriesInstanceUID":
        return (
            "EXISTS (SELECT 1 FROM image_set_series r WHERE r.image_set_id = image_sets.image_set_id "
            "AND r.series_uid = ?)",
            raw,
        )
    if kind == "isPrimary":
        return "is_primary = ?", [int(raw[0])]
    if kind in ("createdAt", "updatedAt"):
        column = "created_at" if kind == "createdAt" else "updated_at"
        stamps = [to_datetime(value).timestamp() for value in raw]
        if operator == "EQUAL":
            return f"ABS({column} - ?) < 0.0005", stamps
        return f"{column} BETWEEN ? AND ?", sorted(stamps)
    return _study_datetime_sql(operator, raw)


def search_sql(
    datastore_id: str, criteria: dict[str, Any], limit: int, token: str | None
) -> tuple[str, list[Any], str]:
    """The query of one SearchImageSets page (one row more than ``limit``, to know if another page follows),
    its arguments, and the token scope of this request."""
    sort = criteria.get("sort") or {"sortField": "updatedAt", "sortOrder": "DESC"}
    column = SORT_COLUMNS[sort["sortField"]]
    descending = sort["sortOrder"] == "DESC"
    where, args = ["datastore_id = ?", "deleted = 0"], [datastore_id]
    for search_filter in criteria.get("filters") or []:
        clause, values = filter_sql(search_filter)
        where.append(clause)
        args += values
    scope_id = scope("SearchImageSets", datastore_id, criteria)
    if token:
        last = decode_token(token, scope_id, 2)
        comparison = "<" if descending else ">"
        where.append(f"({column} {comparison} ? OR ({column} = ? AND rowid {comparison} ?))")
        args += [last[0], last[0], last[1]]
    order = "DESC" if descending else "ASC"
    sql = (
        "SELECT rowid, image_set_id, latest_version, created_at, updated_at, is_primary, tags, "
        f"{column} AS sort_key FROM image_sets WHERE {' AND '.join(where)} "
        f"ORDER BY sort_key {order}, rowid {order} LIMIT ?"
    )
    return sql, [*args, limit + 1], scope_id
