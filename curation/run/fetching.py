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

import dataclasses
import datetime as dt
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import cache, partial
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import pandas as pd
from botocore.model import StringShape, StructureShape
from botocore.paginate import TokenEncoder

from curation.frames.gcpause import gc_paused
from curation.model.document import DocumentError, check_document, parse_document
from curation.model.quotas import DOCUMENTED_QUOTAS, Action, TokenBucket
from curation.model.service import shape
from curation.run.limits import AUTO, Limiters, Rate
from curation.run.retries import DEFAULT_RETRIES, RetryPolicy, error_code, error_message, is_not_consistent_yet
from curation.run.servicecalls import read_blob

if TYPE_CHECKING:
    from mypy_boto3_medical_imaging import HealthImagingClient
    from mypy_boto3_medical_imaging.type_defs import PaginatorConfigTypeDef, SearchImageSetsResponseTypeDef

    from curation.frames.snapshot import Snapshot

#: AHI's documented quotas (requests per second, burst) of the calls fetch makes (``curation.model.quotas``).
GET_METADATA_QUOTA = (
    DOCUMENTED_QUOTAS[Action.GET_IMAGE_SET_METADATA].rate,
    DOCUMENTED_QUOTAS[Action.GET_IMAGE_SET_METADATA].burst,
)
CONTROL_QUOTA = (DOCUMENTED_QUOTAS[Action.GET_IMAGE_SET].rate, DOCUMENTED_QUOTAS[Action.GET_IMAGE_SET].burst)
#: ImageSetID, stage and error as in Snapshot.failures (error is "code: message"), plus code and message apart
FAILURE_COLUMNS = ("ImageSetID", "stage", "error", "code", "message")
#: Operators whose values are a (lowerBound, upperBound) pair; AHI only takes ranges of dates.
RANGE_FILTERS = frozenset({"createdAt", "updatedAt", "DICOMStudyDateAndTime"})
MAX_FILTERS = 2
SEARCH_PAGE_SIZE = 50


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
    #: the blobs as GetImageSetMetadata returned them (gzip), by image set ID: what ``parsed`` (or a consumer
    #: that keeps or parses them itself) reads
    blobs: dict[str, bytes] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return (
            f"FetchResult(datastore_id={self.datastore_id!r}, documents={len(self.documents)}, "
            f"blobs={len(self.blobs)}, failures={len(self.failures)})"
        )

    def parsed(self) -> FetchResult:
        """This result with its blobs parsed into ``documents`` (all at once, the cyclic GC paused; a blob that
        is not a document is a "parse" failure). A result fetched with ``parse=True`` is returned as it is."""
        if self.documents or not self.blobs:
            return self
        documents: list[dict[str, Any]] = []
        failed: list[tuple[str, str, str, str]] = []
        with gc_paused():
            for image_set_id, blob in self.blobs.items():
                try:
                    documents.append(_Fetcher.parse(image_set_id, blob))
                except _Failed as exc:
                    failed.append((image_set_id, exc.stage, exc.code, exc.message))
        bad = {row[0] for row in failed}
        failures = pd.concat([self.failures, _failure_table(failed)], ignore_index=True) if failed else self.failures
        return dataclasses.replace(
            self,
            documents=documents,
            version_ids={k: v for k, v in self.version_ids.items() if k not in bad},
            failures=failures.astype(object),
            blobs={k: v for k, v in self.blobs.items() if k not in bad},
        )


# --- search criteria -------------------------------------------------------------------------------------


def _structure(name: str) -> StructureShape:
    found = shape(name)
    assert isinstance(found, StructureShape), name
    return found


@cache
def _filter_members() -> dict[str, str]:
    """Lower-case aliases -> SearchByAttributeValue member names, read from botocore's model."""
    members = list(_structure("SearchByAttributeValue").members)
    aliases: dict[str, str] = {}
    for name in members:
        aliases[name.lower()] = name
        aliases[name.removeprefix("DICOM").lower()] = name
    aliases["studydate"] = "DICOMStudyDateAndTime"
    return aliases


@cache
def _sort_members() -> tuple[frozenset[str], frozenset[str]]:
    sort = _structure("Sort")
    fields, orders = sort.members["sortField"], sort.members["sortOrder"]
    assert isinstance(fields, StringShape) and isinstance(orders, StringShape)
    return frozenset(fields.enum), frozenset(orders.enum)


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


def fetch_limiters(rate: Rate | TokenBucket = AUTO, burst: float | None = None) -> Limiters:
    """The limiters of a fetch: GetImageSetMetadata at ``rate`` (``"auto"``: the quota's, adapting; None: no
    limit) and SearchImageSets/GetImageSet at half of it (as AHI's quotas are), or at their own quotas."""
    if isinstance(rate, TokenBucket):  # a bucket of the previous API: its rate and burst as ceilings
        bucket = rate
        rate, burst = (None if bucket.unlimited else bucket.rate), bucket.burst
    reads = (Action.SEARCH_IMAGE_SETS, Action.GET_IMAGE_SET)
    if rate is None or rate == AUTO:
        return Limiters(rates={a: rate for a in (Action.GET_IMAGE_SET_METADATA, *reads)})
    rates: dict[str, Rate] = {Action.GET_IMAGE_SET_METADATA: float(rate)}
    rates.update(dict.fromkeys(reads, float(rate) / 2))
    bursts: dict[str, float] = {}
    if burst is not None:
        bursts = {Action.GET_IMAGE_SET_METADATA: burst, **dict.fromkeys(reads, max(1.0, burst / 2))}
    return Limiters(rates=rates, bursts=bursts)


def _search_limiters(limiter: TokenBucket | Limiters | None) -> Limiters:
    if isinstance(limiter, Limiters):
        return limiter
    if isinstance(limiter, TokenBucket):
        rate = None if limiter.unlimited else limiter.rate
        return Limiters(rates={Action.SEARCH_IMAGE_SETS: rate}, bursts={Action.SEARCH_IMAGE_SETS: limiter.burst})
    return Limiters()


def iter_search_pages(
    client: HealthImagingClient,
    datastore_id: str,
    search: Mapping[str, Any] | None = None,
    *,
    sort: str | tuple[str, str] | None = None,
    limiter: TokenBucket | Limiters | None = None,
    retries: RetryPolicy | int | None = DEFAULT_RETRIES,
) -> Iterator[list[dict[str, Any]]]:
    """Yield the image-set summaries of each SearchImageSets page for ``search`` (see ``search_criteria``).

    Pages through boto3's ``search_image_sets`` paginator one page at a time, so that a page is retried (by
    botocore) from its own ``nextToken`` instead of restarting the search. ``limiter``: the run's
    ``Limiters`` (or a ``TokenBucket`` for SearchImageSets); default AHI's quota, adapting.
    """
    policy = RetryPolicy.coerce(retries)
    limiters = _search_limiters(limiter)
    kwargs: dict[str, Any] = {"datastoreId": datastore_id}
    criteria = search_criteria(search, sort=sort)
    if criteria:
        kwargs["searchCriteria"] = criteria
    paginator = client.get_paginator("search_image_sets")
    encoder = TokenEncoder()

    def page(token: str | None) -> SearchImageSetsResponseTypeDef:
        config: PaginatorConfigTypeDef = {"PageSize": SEARCH_PAGE_SIZE}
        if token is not None:
            config["StartingToken"] = encoder.encode({"nextToken": token})
        return limiters.call(
            client, Action.SEARCH_IMAGE_SETS, lambda: next(iter(paginator.paginate(**kwargs, PaginationConfig=config)))
        )

    token: str | None = None
    while True:
        response = policy.call(partial(page, token), retryable=is_not_consistent_yet)
        summaries: list[Any] = list(response.get("imageSetsMetadataSummaries", []))  # JSON summaries, as dicts
        yield summaries
        token = response.get("nextToken")
        if not token:
            return


def search_image_sets(
    client: HealthImagingClient,
    datastore_id: str,
    search: Mapping[str, Any] | None = None,
    *,
    sort: str | tuple[str, str] | None = None,
    limiter: TokenBucket | Limiters | None = None,
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


def _failure_table(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    records = [(i, stage, f"{code}: {message}", code, message) for i, stage, code, message in rows]
    return pd.DataFrame(records, columns=list(FAILURE_COLUMNS), dtype=object)


@dataclass
class _Targets:
    """What to fetch: image set IDs arrive in batches (a search page at a time) with versions and summaries."""

    versions: dict[str, str] = field(default_factory=dict)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def batches(
        self,
        client: HealthImagingClient,
        datastore_id: str,
        image_set_ids: Iterable[str] | None,
        search: Mapping[str, Any] | None,
        version_ids: Mapping[str, Any] | None,
        sort: str | tuple[str, str] | None,
        limiters: Limiters,
        policy: RetryPolicy,
    ) -> Iterator[list[str]]:
        """Yield batches of new image set IDs to fetch, filling in versions and summaries."""
        if image_set_ids is not None and search is not None:
            raise ValueError("give image_set_ids or search, not both")
        self.versions.update({str(k): str(v) for k, v in (version_ids or {}).items() if v is not None})
        if isinstance(image_set_ids, str):
            image_set_ids = [image_set_ids]
        if image_set_ids is None and search is None and version_ids:
            image_set_ids = list(version_ids)
        if image_set_ids is not None:
            yield list(dict.fromkeys(str(i) for i in image_set_ids))
            return
        for page in iter_search_pages(client, datastore_id, search, sort=sort, limiter=limiters, retries=policy):
            batch = []
            for summary in page:
                image_set_id = summary["imageSetId"]
                if image_set_id in self.summaries:
                    continue
                self.summaries[image_set_id] = summary
                if image_set_id not in self.versions and summary.get("version") is not None:
                    self.versions[image_set_id] = str(summary["version"])
                batch.append(image_set_id)
            yield batch


class _Fetcher:
    """Fetches and parses one image set's document (a worker's task), under the fetch's limiters."""

    def __init__(
        self, client: HealthImagingClient, datastore_id: str, targets: _Targets, limiters: Limiters, policy: RetryPolicy
    ) -> None:
        self.client, self.datastore_id = client, datastore_id
        self.targets, self.limiters, self.policy = targets, limiters, policy

    def call(self, stage: Action, fn: Callable[[], Any]) -> Any:
        try:
            return self.policy.call(lambda: self.limiters.call(self.client, stage, fn), retryable=is_not_consistent_yet)
        except Exception as exc:
            raise _Failed(str(stage), error_code(exc), error_message(exc)) from exc

    def __call__(self, image_set_id: str) -> tuple[str, bytes, bool | None]:
        version = self.targets.versions.get(image_set_id)
        primary = self.targets.summaries.get(image_set_id, {}).get("isPrimary")
        if version is None:
            info = self.call(
                Action.GET_IMAGE_SET,
                lambda: self.client.get_image_set(datastoreId=self.datastore_id, imageSetId=image_set_id),
            )
            version = str(info["versionId"])
            primary = info.get("isPrimary", primary)
        params = {"datastoreId": self.datastore_id, "imageSetId": image_set_id, "versionId": version}
        blob = self.call(Action.GET_IMAGE_SET_METADATA, lambda: read_blob(self.client.get_image_set_metadata(**params)))
        return version, blob, primary  # parsed later, all at once (the workers only download)

    @staticmethod
    def parse(image_set_id: str, blob: bytes) -> dict[str, Any]:
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
        return document


@dataclass
class _Collected:
    blobs: dict[str, bytes] = field(default_factory=dict)
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    primary: dict[str, bool] = field(default_factory=dict)
    failures: list[tuple[str, str, str, str]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def take(self, image_set_id: str, future: Future[tuple[str, bytes, bool | None]]) -> None:
        try:
            version, blob, primary = future.result()
        except _Failed as exc:
            self.failures.append((image_set_id, exc.stage, exc.code, exc.message))
        except Exception as exc:
            self.failures.append((image_set_id, "fetch", type(exc).__name__, str(exc)))
        else:
            self.blobs[image_set_id] = blob
            self.versions[image_set_id] = version
            if primary is not None:
                self.primary[image_set_id] = bool(primary)

    def parse(self) -> None:
        """Parse every blob downloaded, in this thread with the cyclic GC paused (the documents are acyclic:
        parsing them while workers download would make the GC rescan the growing graph again and again)."""
        with gc_paused():
            for image_set_id in self.ids:
                blob = self.blobs.get(image_set_id)
                if blob is None:
                    continue
                try:
                    self.documents[image_set_id] = _Fetcher.parse(image_set_id, blob)
                except _Failed as exc:
                    self.failures.append((image_set_id, exc.stage, exc.code, exc.message))


class FetchKeywords(TypedDict, total=False):
    """The keyword arguments of ``fetch`` (those of ``fetch_documents`` but ``parse``); defaults as there."""

    sort: str | tuple[str, str] | None
    max_workers: int
    rate: Rate | TokenBucket
    burst: float | None
    progress: bool
    retries: RetryPolicy | int | None
    limiters: Limiters | None


def fetch_documents(
    client: HealthImagingClient,
    datastore_id: str,
    image_set_ids: Iterable[str] | None = None,
    search: Mapping[str, Any] | None = None,
    version_ids: Mapping[str, Any] | None = None,
    *,
    sort: str | tuple[str, str] | None = None,
    max_workers: int = 8,
    rate: Rate | TokenBucket = AUTO,
    burst: float | None = None,
    progress: bool = True,
    retries: RetryPolicy | int | None = DEFAULT_RETRIES,
    limiters: Limiters | None = None,
    parse: bool = True,
) -> FetchResult:
    """Fetch (and parse) the metadata documents; the work of ``fetch`` without building the Snapshot.

    See ``fetch`` for the arguments. Documents come back in the order of ``image_set_ids`` (or of the
    search), failed image sets are left out and listed in ``failures``. The workers only download; the blobs
    are parsed at the end, all at once with the cyclic GC paused, or not at all with ``parse=False`` (the
    result then holds ``blobs`` and no documents: ``result.parsed()`` parses them, ``to_snapshot`` too).
    """
    from tqdm.auto import tqdm

    if max_workers < 1:
        raise ValueError("max_workers must be at least 1")
    policy = RetryPolicy.coerce(retries)
    limiters = limiters or fetch_limiters(rate, burst)
    targets = _Targets()
    batches = targets.batches(client, datastore_id, image_set_ids, search, version_ids, sort, limiters, policy)
    fetcher = _Fetcher(client, datastore_id, targets, limiters, policy)
    got = _Collected()
    executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ahi-fetch")
    completed = False
    try:
        with tqdm(total=0, desc="GetImageSetMetadata", unit=" image sets", disable=not progress) as bar:
            pending: dict[Future[tuple[str, bytes, bool | None]], str] = {}
            for batch in batches:  # downloads start while the search is still paging
                got.ids += batch
                pending.update({executor.submit(fetcher, image_set_id): image_set_id for image_set_id in batch})
                bar.total = len(got.ids)
                bar.refresh()
            for future in as_completed(pending):
                got.take(pending[future], future)
                bar.update(1)
                if got.failures:
                    bar.set_postfix(failed=len(got.failures), refresh=False)
        completed = True
    finally:
        # interrupted (e.g. Ctrl-C in a notebook) or the search failed: drop queued work, do not wait for it
        executor.shutdown(wait=completed, cancel_futures=True)
    if parse:
        got.parse()
    kept = got.documents if parse else got.blobs
    order = {image_set_id: i for i, image_set_id in enumerate(got.ids)}
    got.failures.sort(key=lambda row: order[row[0]])
    return FetchResult(
        datastore_id=datastore_id,
        documents=[got.documents[i] for i in got.ids if i in got.documents],
        version_ids={i: got.versions[i] for i in got.ids if i in kept},
        failures=_failure_table(got.failures),
        summaries=targets.summaries,
        primary={i: got.primary[i] for i in got.ids if i in got.primary},
        blobs={i: got.blobs[i] for i in got.ids if i in kept},
    )


def fetch(
    client: HealthImagingClient,
    datastore_id: str,
    image_set_ids: Iterable[str] | None = None,
    search: Mapping[str, Any] | None = None,
    version_ids: Mapping[str, Any] | None = None,
    **keywords: Unpack[FetchKeywords],
) -> Snapshot:
    """Fetch image-set metadata documents into a ``Snapshot``.

    - ``client``: any boto3 ``medical-imaging`` client (AWS, or ``curation.local.client(...)``); create your own
      with ``Config(retries={"mode": "standard"})`` so that botocore retries throttling and 5xx.
    - ``image_set_ids``: the image sets to fetch; without them (and without ``version_ids``) every image
      set matching ``search`` is fetched (all of the datastore when ``search`` is None too). ``search`` is
      plain Python, e.g. ``{"PatientId": "X", "StudyDate": ("20200101", "20201231")}``; see
      ``search_criteria`` for the keys and ``sort``.
    - ``version_ids``: ``{image_set_id: version}`` to fetch older versions. Otherwise the search summary's
      version is used, or GetImageSet's latest for given IDs; the document is always requested at that
      version, so the Snapshot records exactly the version each document is.
    - ``max_workers`` concurrent downloads under a client-side limit: ``rate="auto"`` (default) starts at AHI's
      GetImageSetMetadata quota (50 per second, burst 100; SearchImageSets and GetImageSet at theirs) and
      adapts to ThrottlingExceptions; a number is a ceiling (``burst`` tokens; the search and GetImageSet
      at half of it); None: no limit. ``limiters`` (``curation.run.limits.Limiters``) share one set of
      limits between calls.
    - ``retries``: a ``RetryPolicy`` (or a number of attempts) for AHI's "not consistent yet"
      ConflictException, which botocore does not retry.
    - ``progress``: a tqdm bar (``tqdm.auto``: a widget in notebooks, text in a terminal).

    An image set that cannot be fetched or parsed does not fail the fetch: it is listed in the Snapshot's
    failures (ImageSetID, stage, code, message). Errors of the search itself are raised.
    """
    result = fetch_documents(client, datastore_id, image_set_ids, search, version_ids, **keywords, parse=False)
    return to_snapshot(result)


def to_snapshot(result: FetchResult) -> Snapshot:
    """Build the Snapshot of a FetchResult: from its documents when it holds them, else from the blobs as
    fetched (``Snapshot.from_blobs`` parses and flattens them in batches and keeps only the blobs: compact)."""
    from curation.frames.snapshot import Snapshot

    if result.documents or not result.blobs:
        snapshot = Snapshot.from_documents(
            result.documents,
            datastore_id=result.datastore_id,
            version_ids=result.version_ids,
            failures=result.failures,
        )
    else:
        snapshot = Snapshot.from_blobs(
            result.blobs,
            datastore_id=result.datastore_id,
            version_ids=result.version_ids,
            failures=result.failures,
        )
    snapshot.primary = {i: p for i, p in result.primary.items() if i in snapshot.documents}
    return snapshot
