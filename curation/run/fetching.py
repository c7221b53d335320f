"""Fetch image-set metadata from HealthImaging (AWS or the embedded service) into a Snapshot.

``fetch`` lists image sets (given IDs, or SearchImageSets with plain-Python filters), then downloads every
metadata document concurrently under a client-side rate limit (AHI's GetImageSetMetadata quota by default),
gunzips and parses it, retries transient errors (see ``curation.run.retries``), and records per-image-set
failures in a table instead of failing the whole fetch. Every document is fetched at an explicit version
(the search summary's, the caller's, or GetImageSet's latest), so a Snapshot's documents are exactly the
versions it records: the ``latestVersionId`` that ``apply`` will send.

A ``max_workers`` above the client's connection pool (botocore default 10) makes urllib3 discard
connections: create the client with ``botocore.config.Config(max_pool_connections=...)`` to match.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import cache, partial
from typing import TYPE_CHECKING, Any

import pandas as pd
from botocore.paginate import TokenEncoder

from curation.model.document import DocumentError, check_document, parse_document
from curation.model.service import shape
from curation.run.retries import (
    RateLimiter,
    RetryPolicy,
    error_code,
    is_not_consistent_yet,
)

if TYPE_CHECKING:
    from curation.frames.snapshot import Snapshot

#: AHI's default quotas (requests per second, burst) for the calls fetch makes.
GET_METADATA_QUOTA = (50.0, 100.0)
CONTROL_QUOTA = (25.0, 50.0)  # SearchImageSets, GetImageSet
#: ImageSetID, stage and error as in Snapshot.failures (error is "code: message"), plus code and message apart
FAILURE_COLUMNS = ("ImageSetID", "stage", "error", "code", "message")
#: Operators whose values are a (lowerBound, upperBound) pair; AHI only takes ranges of dates.
RANGE_FILTERS = frozenset({"createdAt", "updatedAt", "DICOMStudyDateAndTime"})
MAX_FILTERS = 2
SEARCH_PAGE_SIZE = 50
DEFAULT_RETRIES = RetryPolicy()


class SearchError(ValueError):
    """A ``search`` argument that cannot be expressed as AHI ``searchCriteria``."""


@dataclass
class FetchResult:
    """What a fetch brought back, before flattening: documents, their versions, and what failed."""

    datastore_id: str
    documents: list[dict[str, Any]]
    version_ids: dict[str, str]
    failures: pd.DataFrame
    #: the SearchImageSets summaries by image set ID (empty when IDs were given)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: isPrimary of each fetched image set when known: from the search summary, or GetImageSet when no version
    #: was given (with explicit ``version_ids`` and no search it stays unknown, and plan assumes primary)
    primary: dict[str, bool] = field(default_factory=dict)
    #: the metadata blobs as fetched (gzip bytes), by image set ID, in fetch order
    blobs: dict[str, bytes] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"FetchResult(datastore_id={self.datastore_id!r}, documents={len(self.documents)}, "
            f"failures={len(self.failures)})"
        )


# --- search criteria -------------------------------------------------------------------------------------


@cache
def _filter_members() -> dict[str, str]:
    """Lower-case aliases -> SearchByAttributeValue member names, read from botocore's model."""
    members = list(shape("SearchByAttributeValue").members)
    aliases: dict[str, str] = {}
    for name in members:
        aliases[name.lower()] = name
        aliases[name.removeprefix("DICOM").lower()] = name
    aliases["studydate"] = "DICOMStudyDateAndTime"
    return aliases


@cache
def _sort_members() -> tuple[frozenset[str], frozenset[str]]:
    sort = shape("Sort")
    return frozenset(sort.members["sortField"].enum), frozenset(sort.members["sortOrder"].enum)


def _date_string(value: Any) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.strftime("%Y%m%d")
    return str(value)


def _study_date_time(key: str, value: Any) -> dict[str, str]:
    """A DICOMStudyDateAndTime value from a "YYYYMMDD" string, a date, a datetime, or the raw dict."""
    if isinstance(value, Mapping):
        if "DICOMStudyDate" not in value:
            raise SearchError(f"{key}: a DICOMStudyDateAndTime needs DICOMStudyDate, got {dict(value)!r}")
        return {k: str(v) for k, v in value.items()}
    if isinstance(value, dt.datetime) and key.lower() != "studydate":
        return {"DICOMStudyDate": value.strftime("%Y%m%d"), "DICOMStudyTime": value.strftime("%H%M%S")}
    return {"DICOMStudyDate": _date_string(value)}


def _filter_value(key: str, member: str, value: Any) -> dict[str, Any]:
    if member == "DICOMStudyDateAndTime":
        return {member: _study_date_time(key, value)}
    if member == "isPrimary":
        if not isinstance(value, bool):
            raise SearchError(f"{key} takes True or False, not {value!r}")
        return {member: value}
    if member in ("createdAt", "updatedAt"):
        if not isinstance(value, dt.datetime | str):
            raise SearchError(f"{key} takes a datetime (or ISO 8601 string), not {type(value).__name__}")
        return {member: value}
    if not isinstance(value, str):
        raise SearchError(f"{key} takes a string, not {type(value).__name__}")
    return {member: value}


def search_criteria(
    search: Mapping[str, Any] | None, *, sort: str | tuple[str, str] | None = None
) -> dict[str, Any] | None:
    """Translate plain-Python search filters into AHI's ``searchCriteria``.

    Keys are the SearchByAttributeValue members of botocore's model, with or without their ``DICOM``
    prefix and in any case (``PatientId``, ``PatientID``, ``DICOMAccessionNumber``, ``StudyInstanceUID``,
    ``SeriesInstanceUID``, ``StudyId``, ``createdAt``, ``updatedAt``, ``isPrimary``, ``StudyDateAndTime``),
    plus ``StudyDate``. A scalar value is an EQUAL filter; a ``(lower, upper)`` tuple or list is BETWEEN
    (dates only: createdAt/updatedAt take datetimes, StudyDate "YYYYMMDD" strings or dates,
    StudyDateAndTime datetimes or ``{"DICOMStudyDate": .., "DICOMStudyTime": ..}``). AHI accepts at most
    two filters. ``sort`` is a field (``"updatedAt"``, ``"createdAt"``, ``"DICOMStudyDateAndTime"``;
    descending) or a ``(field, "ASC"|"DESC")`` pair. A mapping that already has ``filters`` passes through.
    """
    if search is not None and "filters" in search:
        criteria = dict(search)
    else:
        filters = []
        aliases = _filter_members()
        for key, value in (search or {}).items():
            member = aliases.get(str(key).lower())
            if member is None:
                known = sorted({m for m in aliases.values()} | {"StudyDate"})
                raise SearchError(f"cannot search on {key!r}; AHI searches on {', '.join(known)}")
            if isinstance(value, tuple | list):
                if member not in RANGE_FILTERS:
                    raise SearchError(f"{key}: AHI only takes ranges (BETWEEN) of dates, not of {member}")
                if len(value) != 2:
                    raise SearchError(f"{key}: a range is a (lower, upper) pair, got {len(value)} values")
                values = [_filter_value(key, member, v) for v in value]
                filters.append({"values": values, "operator": "BETWEEN"})
            else:
                filters.append({"values": [_filter_value(key, member, value)], "operator": "EQUAL"})
        criteria = {"filters": filters} if filters else {}
    if len(criteria.get("filters", [])) > MAX_FILTERS:
        raise SearchError(
            f"AHI's SearchImageSets takes at most {MAX_FILTERS} filters, got {len(criteria['filters'])}: "
            "fetch with fewer filters and narrow the Snapshot with pandas"
        )
    if sort is not None:
        fields, orders = _sort_members()
        sort_field, order = (sort, "DESC") if isinstance(sort, str) else sort
        if sort_field not in fields or order not in orders:
            raise SearchError(f"sort must be one of {sorted(fields)} with order in {sorted(orders)}, got {sort!r}")
        criteria["sort"] = {"sortField": sort_field, "sortOrder": order}
    return criteria or None


def iter_search_pages(
    client: Any,
    datastore_id: str,
    search: Mapping[str, Any] | None = None,
    *,
    sort: str | tuple[str, str] | None = None,
    limiter: RateLimiter | None = None,
    retries: RetryPolicy | int | None = DEFAULT_RETRIES,
) -> Iterator[list[dict[str, Any]]]:
    """Yield the image-set summaries of each SearchImageSets page for ``search`` (see ``search_criteria``).

    Pages through boto3's ``search_image_sets`` paginator one page at a time, so that a throttled page is
    retried from its own ``nextToken`` instead of restarting the search.
    """
    policy = RetryPolicy.coerce(retries)
    limiter = limiter or RateLimiter(*CONTROL_QUOTA)
    kwargs: dict[str, Any] = {"datastoreId": datastore_id}
    criteria = search_criteria(search, sort=sort)
    if criteria:
        kwargs["searchCriteria"] = criteria
    paginator = client.get_paginator("search_image_sets")
    encoder = TokenEncoder()

    def page(token: str | None) -> dict[str, Any]:
        limiter.acquire()
        config: dict[str, Any] = {"PageSize": SEARCH_PAGE_SIZE}
        if token is not None:
            config["StartingToken"] = encoder.encode({"nextToken": token})
        return next(iter(paginator.paginate(**kwargs, PaginationConfig=config)))

    token: str | None = None
    while True:
        response = policy.call(partial(page, token))
        yield list(response.get("imageSetsMetadataSummaries", []))
        token = response.get("nextToken")
        if not token:
            return


def search_image_sets(
    client: Any,
    datastore_id: str,
    search: Mapping[str, Any] | None = None,
    *,
    sort: str | tuple[str, str] | None = None,
    limiter: RateLimiter | None = None,
    retries: RetryPolicy | int | None = DEFAULT_RETRIES,
) -> list[dict[str, Any]]:
    """Every image-set summary SearchImageSets returns for ``search``, in order, each image set once.

    (An image set updated during the search moves in the default updatedAt order and may be listed twice.)
    """
    summaries: dict[str, dict[str, Any]] = {}
    for page in iter_search_pages(client, datastore_id, search, sort=sort, limiter=limiter, retries=retries):
        for summary in page:
            summaries.setdefault(summary["imageSetId"], summary)
    return list(summaries.values())


# --- fetching documents ----------------------------------------------------------------------------------


class _Failed(Exception):
    def __init__(self, stage: str, code: str, message: str) -> None:
        super().__init__(f"{stage}: {code}: {message}")
        self.stage, self.code, self.message = stage, code, message


def _message(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
    return str(exc)


def _failure_table(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    records = [(i, stage, f"{code}: {message}", code, message) for i, stage, code, message in rows]
    return pd.DataFrame(records, columns=list(FAILURE_COLUMNS), dtype=object)


def _read_blob(response: Mapping[str, Any]) -> bytes:
    body = response["imageSetMetadataBlob"]
    return body.read() if hasattr(body, "read") else bytes(body)


def _limiters(rate: float | RateLimiter | None, burst: float) -> tuple[RateLimiter, RateLimiter]:
    """The GetImageSetMetadata limiter and the SearchImageSets/GetImageSet one (half of it, as AHI's quotas)."""
    if isinstance(rate, RateLimiter):
        return rate, RateLimiter(*CONTROL_QUOTA)
    if rate is None:
        return RateLimiter(None), RateLimiter(None)
    return RateLimiter(rate, burst), RateLimiter(rate / 2, max(1.0, burst / 2))


def _targets(
    client: Any,
    datastore_id: str,
    image_set_ids: Iterable[str] | None,
    search: Mapping[str, Any] | None,
    version_ids: Mapping[str, Any] | None,
    sort: str | tuple[str, str] | None,
    control: RateLimiter,
    policy: RetryPolicy,
    versions: dict[str, str],
    summaries: dict[str, dict[str, Any]],
) -> Iterator[list[str]]:
    """Yield batches of new image set IDs to fetch (a search page at a time), filling in versions and summaries."""
    if image_set_ids is not None and search is not None:
        raise ValueError("give image_set_ids or search, not both")
    versions.update({str(k): str(v) for k, v in (version_ids or {}).items() if v is not None})
    if isinstance(image_set_ids, str):
        image_set_ids = [image_set_ids]
    if image_set_ids is None and search is None and version_ids:
        image_set_ids = list(version_ids)
    if image_set_ids is not None:
        yield list(dict.fromkeys(str(i) for i in image_set_ids))
        return
    for page in iter_search_pages(client, datastore_id, search, sort=sort, limiter=control, retries=policy):
        batch = []
        for summary in page:
            image_set_id = summary["imageSetId"]
            if image_set_id in summaries:
                continue
            summaries[image_set_id] = summary
            if image_set_id not in versions and summary.get("version") is not None:
                versions[image_set_id] = str(summary["version"])
            batch.append(image_set_id)
        yield batch


def fetch_documents(
    client: Any,
    datastore_id: str,
    image_set_ids: Iterable[str] | None = None,
    search: Mapping[str, Any] | None = None,
    version_ids: Mapping[str, Any] | None = None,
    *,
    sort: str | tuple[str, str] | None = None,
    max_workers: int = 8,
    rate: float | RateLimiter | None = GET_METADATA_QUOTA[0],
    burst: float = GET_METADATA_QUOTA[1],
    progress: bool = True,
    retries: RetryPolicy | int | None = DEFAULT_RETRIES,
    keep_documents: bool = True,
) -> FetchResult:
    """Fetch and parse the metadata documents; the work of ``fetch`` without building the Snapshot.

    See ``fetch`` for the arguments. Documents come back in the order of ``image_set_ids`` (or of the
    search), failed image sets are left out and listed in ``failures``; ``blobs`` holds the bytes as fetched.
    With ``keep_documents=False`` each blob is parsed (to check it) and the dict dropped: ``documents`` stays
    empty, and the live object graph small while downloads run (the cyclic GC's work grows with it).
    """
    from tqdm.auto import tqdm

    if max_workers < 1:
        raise ValueError("max_workers must be at least 1")
    policy = RetryPolicy.coerce(retries)
    metadata_limiter, control = _limiters(rate, burst)
    versions: dict[str, str] = {}
    summaries: dict[str, dict[str, Any]] = {}
    targets = _targets(
        client, datastore_id, image_set_ids, search, version_ids, sort, control, policy, versions, summaries
    )

    def call(stage: str, limiter: RateLimiter, fn: Callable[[], Any]) -> Any:
        def attempt() -> Any:
            limiter.acquire()
            return fn()

        try:
            return policy.call(attempt, retryable=is_not_consistent_yet)
        except Exception as exc:
            raise _Failed(stage, error_code(exc), _message(exc)) from exc

    def one(image_set_id: str) -> tuple[str, dict[str, Any] | None, bool | None, bytes]:
        version = versions.get(image_set_id)
        primary = summaries.get(image_set_id, {}).get("isPrimary")
        if version is None:
            info = call(
                "GetImageSet",
                control,
                lambda: client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id),
            )
            version = str(info["versionId"])
            primary = info.get("isPrimary", primary)
        params = {"datastoreId": datastore_id, "imageSetId": image_set_id, "versionId": version}
        blob = call(
            "GetImageSetMetadata", metadata_limiter, lambda: _read_blob(client.get_image_set_metadata(**params))
        )
        try:
            document = parse_document(blob)
            check_document(document)
        except DocumentError as exc:
            raise _Failed("parse", "DocumentError", f"image set {image_set_id}: {exc}") from exc
        except (zlib.error, EOFError, OSError) as exc:  # parse_document lets some gzip errors through
            raise _Failed("parse", "DocumentError", f"image set {image_set_id}: blob is not valid gzip: {exc}") from exc
        found = document.get("ImageSetID")
        if found != image_set_id:
            raise _Failed("parse", "DocumentError", f"image set {image_set_id}: document has ImageSetID {found!r}")
        return version, document if keep_documents else None, primary, blob

    documents: dict[str, dict[str, Any] | None] = {}
    blobs: dict[str, bytes] = {}
    fetched_versions: dict[str, str] = {}
    primaries: dict[str, bool] = {}
    failures: list[tuple[str, str, str, str]] = []
    ids: list[str] = []
    executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ahi-fetch")
    completed = False
    try:
        with tqdm(total=0, desc="GetImageSetMetadata", unit=" image sets", disable=not progress) as bar:
            pending: dict[Future[tuple[str, dict[str, Any] | None, bool | None, bytes]], str] = {}
            for batch in targets:  # downloads start while the search is still paging
                ids += batch
                pending.update({executor.submit(one, image_set_id): image_set_id for image_set_id in batch})
                bar.total = len(ids)
                bar.refresh()
            for future in as_completed(pending):
                image_set_id = pending[future]
                try:
                    version, document, primary, blob = future.result()
                except _Failed as exc:
                    failures.append((image_set_id, exc.stage, exc.code, exc.message))
                except Exception as exc:
                    failures.append((image_set_id, "fetch", type(exc).__name__, str(exc)))
                else:
                    documents[image_set_id] = document
                    blobs[image_set_id] = blob
                    fetched_versions[image_set_id] = version
                    if primary is not None:
                        primaries[image_set_id] = bool(primary)
                bar.update(1)
                if failures:
                    bar.set_postfix(failed=len(failures), refresh=False)
        completed = True
    finally:
        # interrupted (e.g. Ctrl-C in a notebook) or the search failed: drop queued work, do not wait for it
        executor.shutdown(wait=completed, cancel_futures=True)
    order = {image_set_id: i for i, image_set_id in enumerate(ids)}
    failures.sort(key=lambda row: order[row[0]])
    return FetchResult(
        datastore_id=datastore_id,
        documents=[d for i in ids if (d := documents.get(i)) is not None],
        version_ids={i: fetched_versions[i] for i in ids if i in documents},
        failures=_failure_table(failures),
        summaries=summaries,
        primary={i: primaries[i] for i in ids if i in primaries},
        blobs={i: blobs[i] for i in ids if i in blobs},
    )


def fetch(
    client: Any,
    datastore_id: str,
    image_set_ids: Iterable[str] | None = None,
    search: Mapping[str, Any] | None = None,
    version_ids: Mapping[str, Any] | None = None,
    *,
    sort: str | tuple[str, str] | None = None,
    max_workers: int = 8,
    rate: float | RateLimiter | None = GET_METADATA_QUOTA[0],
    burst: float = GET_METADATA_QUOTA[1],
    progress: bool = True,
    retries: RetryPolicy | int | None = DEFAULT_RETRIES,
) -> Snapshot:
    """Fetch image-set metadata documents into a ``Snapshot``.

    - ``client``: any boto3 ``medical-imaging`` client (AWS, or ``curation.local.client(...)``).
    - ``image_set_ids``: the image sets to fetch; without them (and without ``version_ids``) every image
      set matching ``search`` is fetched (all of the datastore when ``search`` is None too). ``search`` is
      plain Python, e.g. ``{"PatientId": "X", "StudyDate": ("20200101", "20201231")}``; see
      ``search_criteria`` for the keys and ``sort``.
    - ``version_ids``: ``{image_set_id: version}`` to fetch older versions. Otherwise the search summary's
      version is used, or GetImageSet's latest for given IDs; the document is always requested at that
      version, so the Snapshot records exactly the version each document is.
    - ``max_workers`` concurrent downloads under a ``rate`` per second (``burst`` tokens) client-side limit,
      AHI's GetImageSetMetadata quota by default; SearchImageSets/GetImageSet run at half of it (AHI's
      quotas for them). ``rate=None`` disables the limit; a ``RateLimiter`` can be shared between calls.
    - ``retries``: a ``RetryPolicy`` (or a number of attempts; None: no retry) for throttling, 5xx,
      connection errors and the "not consistent yet" ConflictException, on top of botocore's own retries.
    - ``progress``: a tqdm bar (``tqdm.auto``: a widget in notebooks, text in a terminal).

    An image set that cannot be fetched or parsed does not fail the fetch: it is listed in the Snapshot's
    failures (ImageSetID, stage, code, message). Errors of the search itself are raised.
    """
    result = fetch_documents(
        client,
        datastore_id,
        image_set_ids,
        search,
        version_ids,
        sort=sort,
        max_workers=max_workers,
        rate=rate,
        burst=burst,
        progress=progress,
        retries=retries,
        keep_documents=False,
    )
    return to_snapshot(result)


def to_snapshot(result: FetchResult) -> Snapshot:
    """Build the Snapshot of a FetchResult (flattening happens there): from the blobs as fetched when the
    documents were not kept (``Snapshot.from_blobs``: compact), else from the documents."""
    from curation.frames.snapshot import Snapshot

    build = Snapshot.from_documents if result.documents or not result.blobs else Snapshot.from_blobs
    source: Any = result.documents if build is Snapshot.from_documents else result.blobs
    snapshot = build(
        source,
        datastore_id=result.datastore_id,
        version_ids=result.version_ids,
        failures=result.failures,
    )
    snapshot.primary = {i: p for i, p in result.primary.items() if i in snapshot.documents}
    return snapshot
