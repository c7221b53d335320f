"""Apply an UpdatePlan to HealthImaging exactly once, resumably, and undo it: ``apply``, ``verify``, ``revert``.

``apply`` sends each image set's requests in order, each with the version the previous one produced (the
first with the plan's base version), under one client-side rate limiter shared by every worker. After each
request it waits out ``LOCKED`` (polling GetImageSet with backoff, for a bounded time) and reads UPDATED or
UPDATE_FAILED and its message. Throttling, 5xx and ConflictException (locked) are retried with jittered
exponential backoff (``curation.run.retries``). A stale version (AHI: ResourceNotFoundException "Requested
version(s) of ImageSet(s) is not the latest.") stops that image set with status ``"conflict"``: someone else
changed it since the snapshot, and nothing is overwritten.

Image sets linked by ``includeStudyImageSets`` (a request's ``affects``) run one after another in one worker,
in plan order; a sibling's expected version moves on only when GetImageSet shows exactly one new version
after our study-wide request (the journal holds that request's "done" record), else its requests stop as a
conflict.

Every step is journaled (``curation.run.journal``) before and after the call; running ``apply`` again with the
same plan and journal resumes. A request whose outcome is unknown (the process died after sending) is
reconciled with the service: the version after the one it was sent against is ours when its document is what
``apply_to_document`` makes of the earlier one; if no version appeared, it was never applied and is sent
again; otherwise it is reported. No change is ever applied twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
from botocore.exceptions import ClientError

from curation.curate.updateplan import PlannedRequest, UpdatePlan
from curation.model.document import DocumentError, parse_document
from curation.model.updates import study_part
from curation.run.journal import FINAL_STATUSES, UNKNOWN_STATUSES, Journal, JournalError, read_journal
from curation.run.retries import RateLimiter, RetryPolicy, error_code, is_transient

RESULT_COLUMNS = (
    "ImageSetID",
    "status",
    "version_before",
    "version_after",
    "requests_done",
    "requests_planned",
    "error",
)
MISMATCH_COLUMNS = ("ImageSetID", "path", "expected", "actual", "note")
STALE_TEXT = "not the latest"
#: AHI's GetImageSet quota (25/s, burst 50): what polling and reconciling use by default.
CONTROL_QUOTA = (25.0, 50.0)
DEFAULT_RETRIES = RetryPolicy()


@dataclass(frozen=True)
class PollPolicy:
    """How to wait out ``LOCKED``: poll at once, then every ``initial`` seconds growing by ``factor`` up to
    ``max_interval``, for at most ``timeout`` seconds in all."""

    initial: float = 0.5
    factor: float = 1.5
    max_interval: float = 10.0
    timeout: float = 900.0
    sleep: Callable[[float], object] = field(default=time.sleep, repr=False)

    @classmethod
    def coerce(cls, value: PollPolicy | float | None) -> PollPolicy:
        """A policy from a policy, a first interval in seconds, or None (the defaults)."""
        if isinstance(value, PollPolicy):
            return value
        if value is None:
            return cls()
        return cls(initial=float(value))


class LockTimeout(Exception):
    """The image set stayed LOCKED longer than the poll policy allows."""


# --- plans as plain data (the journal keeps them; revert makes them) -----------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def plan_record(plan: Any) -> dict[str, Any]:
    """The plan as the journal's first record holds it: ID, datastore, base versions and every request."""
    return {
        "plan_id": str(plan.plan_id),
        "datastore_id": str(plan.datastore_id),
        "base_versions": {str(k): str(v) for k, v in plan.base_versions.items()},
        "requests": [
            {
                "image_set_id": r.image_set_id,
                "index": int(r.index),
                "params": _jsonable(r.params),
                "affects": list(getattr(r, "affects", None) or []),
                "description": getattr(r, "description", "") or "",
            }
            for r in plan.requests
        ],
    }


def plan_from_record(record: Mapping[str, Any]) -> UpdatePlan:
    """The UpdatePlan a journal record (or ``plan_record`` output) holds."""
    return UpdatePlan(
        plan_id=record["plan_id"],
        datastore_id=record["datastore_id"],
        base_versions=dict(record["base_versions"]),
        requests=[
            PlannedRequest(
                image_set_id=r["image_set_id"],
                index=int(r["index"]),
                params=dict(r["params"]),
                affects=list(r.get("affects") or []),
                description=r.get("description", ""),
            )
            for r in record["requests"]
        ],
    )


def _by_image_set(plan: Any) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for request in plan.requests:
        groups.setdefault(request.image_set_id, []).append(request)
    for requests in groups.values():
        requests.sort(key=lambda r: int(r.index))
    return groups


def content_id(*parts: Any) -> str:
    """A stable short hash of JSON-able parts (what revert plans are identified by)."""
    return hashlib.sha256(orjson.dumps(_jsonable(list(parts)), option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


# --- the service calls ----------------------------------------------------------------------------------


def _message(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', type(exc).__name__)}: {error.get('Message', '')}"
    return f"{type(exc).__name__}: {exc}"


def is_stale(exc: BaseException) -> bool:
    """True for AHI's answer to a stale ``latestVersionId`` (ResourceNotFoundException "... not the latest.")."""
    return (
        isinstance(exc, ClientError)
        and error_code(exc) == "ResourceNotFoundException"
        and STALE_TEXT in str(exc.response.get("Error", {}).get("Message", "")).lower()
    )


def _is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and error_code(exc) == "ConflictException"


def _version_number(version: str | None) -> int | None:
    try:
        return int(str(version))
    except (TypeError, ValueError):
        return None


class _Calls:
    """The service calls of one apply: updates under the update limiter, reads under the control one."""

    def __init__(
        self,
        client: Any,
        datastore_id: str,
        limiter: RateLimiter,
        control: RateLimiter,
        retries: RetryPolicy,
        poll: PollPolicy,
    ) -> None:
        self.client = client
        self.datastore_id = datastore_id
        self.limiter = limiter
        self.control = control
        self.retries = retries
        self.poll = poll
        self.update_calls = 0
        self._count_lock = threading.Lock()

    def read(self, fn: Callable[[], Any]) -> Any:
        def attempt() -> Any:
            self.control.acquire()
            return fn()

        return self.retries.call(attempt, retryable=_is_conflict)

    def get_image_set(self, image_set_id: str, version_id: str | None = None) -> dict[str, Any]:
        params = {"datastoreId": self.datastore_id, "imageSetId": image_set_id}
        if version_id is not None:
            params["versionId"] = str(version_id)
        return self.read(lambda: self.client.get_image_set(**params))

    def document(self, image_set_id: str, version_id: str) -> dict[str, Any]:
        params = {"datastoreId": self.datastore_id, "imageSetId": image_set_id, "versionId": str(version_id)}

        def get() -> bytes:
            body = self.client.get_image_set_metadata(**params)["imageSetMetadataBlob"]
            return body.read() if hasattr(body, "read") else bytes(body)

        return parse_document(self.read(get))

    def update(self, request_params: dict[str, Any], version: str) -> dict[str, Any]:
        """Send one update, retrying throttling, 5xx and ConflictException (locked) under the update limiter."""

        attempts = 0

        def attempt() -> dict[str, Any]:
            nonlocal attempts
            self.limiter.acquire()
            with self._count_lock:
                self.update_calls += 1
            attempts += 1
            return self.client.update_image_set_metadata(**request_params, latestVersionId=str(version))

        try:
            return self.retries.call(attempt, retryable=_is_conflict)
        except Exception as exc:
            exc.update_attempts = attempts  # type: ignore[attr-defined]
            raise

    def wait_active(self, image_set_id: str) -> dict[str, Any]:
        """GetImageSet until the image set is not LOCKED (LockTimeout past the poll policy's timeout)."""
        deadline = time.monotonic() + self.poll.timeout
        interval = self.poll.initial
        while True:
            info = self.get_image_set(image_set_id)
            if info.get("imageSetState") != "LOCKED":
                return info
            if time.monotonic() + interval > deadline:
                raise LockTimeout(f"image set {image_set_id} still LOCKED after {self.poll.timeout:g} s")
            self.poll.sleep(interval)
            interval = min(self.poll.max_interval, interval * self.poll.factor)


# --- one apply run --------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    status: str  # done | failed | conflict | unsent
    new_version: str | None = None
    message: str | None = None
    actual: str | None = None


@dataclass
class _Row:
    image_set_id: str
    version_before: str | None
    planned: int
    status: str | None = None
    version_after: str | None = None
    done: int = 0
    error: str | None = None


class _Runner:
    def __init__(self, plan: Any, calls: _Calls, journal: Journal | None, *, send_new: bool = True) -> None:
        self.plan = plan
        self.calls = calls
        self.journal = journal
        self.send_new = send_new
        self.states = journal.last_states() if journal is not None else {}
        self.stop = threading.Event()

    # journal -----------------------------------------------------------------------------------------
    def _log(self, request: Any, status: str, base: str | None, *, sync: bool = True, **extra: Any) -> None:
        if self.journal is None:
            return
        self.journal.append(
            {
                "kind": "request",
                "plan_id": self.plan.plan_id,
                "image_set_id": request.image_set_id,
                "index": int(request.index),
                "base_version": base,
                "status": status,
                **{k: v for k, v in extra.items() if v is not None},
            },
            sync=sync,
        )

    # outcomes ----------------------------------------------------------------------------------------
    def _finish(self, image_set_id: str, new_version: str) -> _Outcome:
        """Wait until the image set is ACTIVE and read what became of ``new_version``."""
        info = self.calls.wait_active(image_set_id)
        if str(info.get("versionId")) != str(new_version):
            info = self.calls.get_image_set(image_set_id, new_version)
        status = str(info.get("imageSetWorkflowStatus", ""))
        if status.endswith("_FAILED"):
            return _Outcome("failed", new_version, f"{status}: {info.get('message', '')}".rstrip(": "))
        return _Outcome("done", new_version)

    def _expected(self, image_set_id: str, before: dict[str, Any], params: dict[str, Any]) -> dict[str, Any] | None:
        from curation.model.errors import AHIError
        from curation.model.updates import apply_to_document

        try:
            return apply_to_document(before, params, history=lambda v: self.calls.document(image_set_id, v))
        except (AHIError, DocumentError):
            return None

    def _reconcile(self, request: Any, sent: str) -> _Outcome:
        """What became of ``request`` sent against version ``sent`` when its answer was lost."""
        image_set_id = request.image_set_id
        latest = str(self.calls.wait_active(image_set_id)["versionId"])
        if latest == str(sent):
            return _Outcome("unsent")
        number = _version_number(sent)
        if number is None:
            return _Outcome("conflict", message=f"cannot tell the version after {sent}", actual=latest)
        candidate = str(number + 1)
        info = self.calls.get_image_set(image_set_id, candidate)
        ours = False
        expected = self._expected(image_set_id, self.calls.document(image_set_id, sent), request.params)
        if expected is not None:
            ours = self.calls.document(image_set_id, candidate) == expected
        status = str(info.get("imageSetWorkflowStatus", ""))
        if status.endswith("_FAILED"):
            return _Outcome(
                "failed",
                candidate,
                f"version {candidate} after {sent} ended {status}: {info.get('message', '')} "
                "(our request or another writer's)",
            )
        if ours:
            return _Outcome("done", candidate)
        return _Outcome(
            "conflict",
            message=f"image set changed by someone else: expected version {sent}, latest is {latest}",
            actual=latest,
        )

    def _send(self, request: Any, version: str) -> _Outcome:
        self._log(request, "sending", version, affects=list(getattr(request, "affects", None) or []) or None)
        try:
            response = self.calls.update(request.params, version)
        except Exception as exc:
            if is_stale(exc):
                if not _was_retried(exc):  # answered on the first and only send: someone else's version
                    latest = str(self.calls.wait_active(request.image_set_id)["versionId"])
                    return _Outcome(
                        "conflict",
                        message=f"image set changed by someone else: expected version {version}, latest is {latest}",
                        actual=latest,
                    )
                # ours when an answer was lost and the call was sent again: reconcile
                outcome = self._reconcile(request, version)
                if outcome.status == "unsent":
                    return _Outcome("conflict", message=_message(exc), actual=version)
                return outcome
            if is_transient(exc) or _is_conflict(exc):
                outcome = self._reconcile(request, version)
                if outcome.status == "unsent":
                    outcome.message = f"{_message(exc)} (not applied; run apply again to retry)"
                return outcome
            if isinstance(exc, ClientError):
                return _Outcome("failed", message=_message(exc))
            raise
        new_version = str(response["latestVersionId"])
        # not fsynced: if it is lost, the "sending" record alone makes a resume reconcile the request
        self._log(request, "accepted", version, new_version=new_version, sync=False)
        return self._finish(request.image_set_id, new_version)

    def _siblings(self, request: Any, current: dict[str, str | None]) -> dict[str, list[str | None]]:
        """After a study-wide request: each sibling's [version before, version after] (after None if unknown)."""
        moved: dict[str, list[str | None]] = {}
        for sibling in getattr(request, "affects", None) or []:
            before = current.get(sibling, self.plan.base_versions.get(sibling))
            latest = str(self.calls.wait_active(sibling)["versionId"])
            number = _version_number(before)
            if before is None and _version_number(latest) is not None:
                before = str(int(latest) - 1)
                number = int(before)
            after = latest if number is not None and _version_number(latest) == number + 1 else None
            moved[sibling] = [before, after]
        return moved

    # one component -----------------------------------------------------------------------------------
    def run_component(self, requests: list[Any], rows: dict[str, _Row], bar: Any) -> None:
        current: dict[str, str | None] = {}
        stopped: set[str] = set()
        for request in requests:
            image_set_id = request.image_set_id
            row = rows[image_set_id]
            if image_set_id not in current:
                current[image_set_id] = row.version_before
            if image_set_id in stopped or self.stop.is_set():
                bar.update(1)
                continue
            try:
                outcome = self._run_one(request, current, row)
            except Exception as exc:
                outcome = _Outcome(
                    "failed", message=f"{_message(exc)} (outcome journaled as unknown: run apply again to reconcile)"
                )
            bar.update(1)
            if outcome is None:  # not run (dry or not resumable here)
                stopped.add(image_set_id)
                continue
            if outcome.status == "done":
                row.done += 1
                current[image_set_id] = outcome.new_version
                row.version_after = outcome.new_version
                if row.done == row.planned:
                    row.status = "applied"
                continue
            stopped.add(image_set_id)
            row.status = "failed" if outcome.status == "unsent" else outcome.status
            row.error = outcome.message
            if outcome.status == "failed" and outcome.new_version:
                row.version_after = outcome.new_version
        for request in requests:  # image sets changed only through includeStudyImageSets
            for sibling in getattr(request, "affects", None) or []:
                row = rows[sibling]
                if row.planned or row.status:
                    continue
                if sibling not in current:
                    row.status, row.error = "skipped", "the study-wide request was not applied"
                elif current[sibling] is None:
                    row.status = "conflict"
                    row.error = "changed by another writer too: the version our study-wide request made is unknown"
                else:
                    row.status, row.version_after, row.done = "applied", current[sibling], 0

    def _run_one(self, request: Any, current: dict[str, str | None], row: _Row) -> _Outcome | None:
        image_set_id = request.image_set_id
        state = self.states.get((image_set_id, int(request.index)))
        status = state["status"] if state else None
        if status == "done":
            self._apply_affected(state.get("affected") or {}, current)
            return _Outcome("done", state["new_version"])
        if status in ("failed", "conflict"):
            return _Outcome(status, state.get("new_version"), state.get("message"), state.get("actual"))
        version = current.get(image_set_id)
        if status in UNKNOWN_STATUSES:
            sent = state["base_version"]
            if status == "accepted":
                outcome = self._finish(image_set_id, state["new_version"])
            else:
                outcome = self._reconcile(request, sent)
            if outcome.status != "unsent":
                return self._record(request, sent, outcome, current)
            version = sent if version is None else version  # never applied: the next "sending" supersedes it
        if not self.send_new:
            row.status = row.status or "skipped"
            row.error = row.error or "not sent (reconcile only)"
            return None
        if version is None:
            outcome = _Outcome(
                "conflict",
                message="the version to send against is unknown (a study-wide update "
                "by this plan could not be told apart from another writer's)",
            )
            return self._record(request, None, outcome, current)
        return self._record(request, version, self._send(request, version), current)

    def _record(self, request: Any, sent: str | None, outcome: _Outcome, current: dict[str, str | None]) -> _Outcome:
        if outcome.status == "unsent":
            self._log(request, "unsent", sent, message=outcome.message)
            return outcome
        affected = None
        if outcome.status == "done" and getattr(request, "affects", None):
            affected = self._siblings(request, current)
        self._log(
            request,
            outcome.status,
            sent,
            new_version=outcome.new_version,
            message=outcome.message,
            actual=outcome.actual,
            affected=affected,
        )
        if affected:
            self._apply_affected(affected, current)
        return outcome

    @staticmethod
    def _apply_affected(affected: Mapping[str, list[str | None]], current: dict[str, str | None]) -> None:
        for sibling, (_, after) in affected.items():
            current[sibling] = after


def _components(plan: Any) -> list[list[Any]]:
    """Requests grouped into independent runs: image sets linked by ``affects`` share one, in plan order."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for request in plan.requests:
        find(request.image_set_id)
        for other in getattr(request, "affects", None) or []:
            parent[find(other)] = find(request.image_set_id)
    groups: dict[str, list[Any]] = {}
    for request in plan.requests:
        groups.setdefault(find(request.image_set_id), []).append(request)
    for requests in groups.values():
        # plan order, but each image set's own requests by index
        queues: dict[str, list[Any]] = {}
        for r in requests:
            queues.setdefault(r.image_set_id, []).append(r)
        iterators = {k: iter(sorted(v, key=lambda r: int(r.index))) for k, v in queues.items()}
        requests[:] = [next(iterators[r.image_set_id]) for r in requests]
    return list(groups.values())


def _request_call(request: Any, version: str) -> dict[str, Any]:
    return {**_jsonable(request.params), "latestVersionId": version}


def _result_frame(rows: Iterable[_Row]) -> pd.DataFrame:
    data = [
        {
            "ImageSetID": r.image_set_id,
            "status": r.status or "skipped",
            "version_before": r.version_before,
            "version_after": r.version_after,
            "requests_done": r.done,
            "requests_planned": r.planned,
            "error": r.error,
        }
        for r in rows
    ]
    frame = pd.DataFrame(data, columns=list(RESULT_COLUMNS))
    return frame.astype({"requests_done": "int64", "requests_planned": "int64"}) if len(frame) else frame


def _header(plan: Any, purpose: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"purpose": purpose, **plan_record(plan), **(extra or {})}


def _control_limiter(rate: float | RateLimiter | None) -> RateLimiter:
    if isinstance(rate, RateLimiter):
        return rate
    return RateLimiter(rate, max(1.0, 2.0 * rate) if rate else 1.0)


def _make_limiter(rate: float | RateLimiter | None, burst: float) -> RateLimiter:
    return rate if isinstance(rate, RateLimiter) else RateLimiter(rate, burst)


def _run(
    plan: Any,
    client: Any,
    journal: Journal | None,
    *,
    rate: float | RateLimiter | None,
    burst: float,
    control_rate: float | RateLimiter | None,
    max_workers: int,
    progress: bool,
    retries: RetryPolicy | int | None,
    poll: PollPolicy | float | None,
    send_new: bool = True,
    desc: str = "UpdateImageSetMetadata",
) -> tuple[pd.DataFrame, _Calls]:
    from tqdm.auto import tqdm

    if max_workers < 1:
        raise ValueError("max_workers must be at least 1")
    control = _control_limiter(control_rate)
    calls = _Calls(
        client,
        plan.datastore_id,
        _make_limiter(rate, burst),
        control,
        RetryPolicy.coerce(retries),
        PollPolicy.coerce(poll),
    )
    runner = _Runner(plan, calls, journal, send_new=send_new)
    groups = _by_image_set(plan)
    rows = {
        image_set_id: _Row(image_set_id, _opt_str(plan.base_versions.get(image_set_id)), len(requests))
        for image_set_id, requests in groups.items()
    }
    for request in plan.requests:
        for sibling in getattr(request, "affects", None) or []:
            rows.setdefault(sibling, _Row(sibling, _opt_str(plan.base_versions.get(sibling)), 0))
    components = _components(plan)
    executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ahi-apply")
    completed = False
    try:
        with tqdm(total=len(plan.requests), desc=desc, unit=" requests", disable=not progress) as bar:
            futures: dict[Future[None], list[Any]] = {
                executor.submit(runner.run_component, component, rows, bar): component for component in components
            }
            for future in as_completed(futures):
                future.result()
        completed = True
    finally:
        if not completed:
            runner.stop.set()
        executor.shutdown(wait=True, cancel_futures=not completed)
    return _result_frame(rows.values()), calls


def _was_retried(exc: BaseException) -> bool:
    """True when the update behind ``exc`` was sent more than once (by our retries or botocore's)."""
    botocore_retries = 0
    if isinstance(exc, ClientError):
        botocore_retries = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0
    return getattr(exc, "update_attempts", 1) > 1 or botocore_retries > 0


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def apply(
    plan: Any,
    client: Any,
    journal: str | os.PathLike[str] | None = None,
    *,
    rate: float | RateLimiter | None = 0.25,
    burst: float = 1.0,
    max_workers: int = 4,
    dry_run: bool = False,
    progress: bool = True,
    poll: PollPolicy | float | None = None,
    retries: RetryPolicy | int | None = DEFAULT_RETRIES,
    control_rate: float | RateLimiter | None = CONTROL_QUOTA[0],
) -> pd.DataFrame:
    """Apply ``plan`` (an UpdatePlan) with ``client`` (a boto3 ``medical-imaging`` client), journaled.

    Returns one row per image set: ImageSetID, status (``"applied"``, ``"conflict"``, ``"failed"``,
    ``"skipped"``, ``"dry-run"``), version_before (the plan's base version), version_after (the last version
    our requests made), requests_done, requests_planned, error.

    - ``journal``: the JSON-lines journal path (required unless ``dry_run``). Calling ``apply`` again with the
      same plan and journal resumes: done requests are skipped, unknown outcomes reconciled, nothing is sent
      twice. A journal of another plan is refused (``JournalError``).
    - ``rate``/``burst``: the client-side limit on UpdateImageSetMetadata calls shared by all workers (AHI's
      default quota is 0.25 per second, burst 1: raise it to your account's). A ``RateLimiter`` can be given.
    - ``max_workers``: image sets applied concurrently. ``control_rate``: the limit on GetImageSet and other
      reads made while polling and reconciling (AHI's GetImageSet quota, 25 per second).
    - ``poll``: a ``PollPolicy`` (or the first poll interval in seconds) for waiting out LOCKED.
    - ``retries``: a ``RetryPolicy`` (or a number of attempts) for throttling, 5xx and ConflictException.
    - ``dry_run``: print every request exactly as it would be sent and send none (the table says
      ``"dry-run"``; ``frame.attrs["requests"]`` holds the calls' keyword arguments).
    - ``progress``: a tqdm bar (a widget in notebooks, text in a terminal).
    """
    groups = _by_image_set(plan)
    if dry_run:
        return _dry_run(plan, groups)
    if journal is None:
        raise ValueError("apply needs a journal path (journal=...): it is what makes a crash resumable")
    with Journal(journal) as opened:
        opened.start(_header(plan, "apply"))
        frame, _ = _run(
            plan,
            client,
            opened,
            rate=rate,
            burst=burst,
            control_rate=control_rate,
            max_workers=max_workers,
            progress=progress,
            retries=retries,
            poll=poll,
        )
    return frame


def _dry_run(plan: Any, groups: dict[str, list[Any]]) -> pd.DataFrame:
    calls = []
    rows = []
    for image_set_id, requests in groups.items():
        base = _opt_str(plan.base_versions.get(image_set_id))
        for number, request in enumerate(requests):
            version = base if number == 0 else f"<latestVersionId returned by request {number - 1}>"
            call = _request_call(request, version)
            calls.append(call)
            print(f"update_image_set_metadata(**{json.dumps(call, sort_keys=True)})")
        rows.append(_Row(image_set_id, base, len(requests), status="dry-run"))
    frame = _result_frame(rows)
    frame.attrs["requests"] = calls
    return frame


# --- verify ---------------------------------------------------------------------------------------------


def _differences(expected: Any, actual: Any, path: str, out: list[tuple[str, Any, Any]]) -> None:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in list(expected) + [k for k in actual if k not in expected]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in actual:
                out.append((sub, expected[key], None))
            elif key not in expected:
                out.append((sub, None, actual[key]))
            else:
                _differences(expected[key], actual[key], sub, out)
        return
    if expected != actual or type(expected) is not type(actual):
        out.append((path, expected, actual))


def verify(
    plan: Any,
    client: Any,
    journal: str | os.PathLike[str] | None = None,
    *,
    max_workers: int = 8,
    control_rate: float | RateLimiter | None = CONTROL_QUOTA[0],
    retries: RetryPolicy | int | None = DEFAULT_RETRIES,
    progress: bool = True,
) -> pd.DataFrame:
    """Re-fetch every image set the plan touches and compare it with the intended result; one row per mismatch.

    The intended result is every request of the plan applied (``apply_to_document``) to the document at the
    plan's base version (fetched with ``versionId``); image sets reached through ``includeStudyImageSets``
    get the Patient and Study.DICOM parts. Without a journal the latest versions are compared. With one, each
    image set is compared at the version the journal says our last request made (so later edits by others
    are not reported), and image sets the journal did not finish are reported with their status in ``note``.
    An empty frame means verified. Columns: ImageSetID, path (dotted document path), expected, actual, note.
    Image sets are checked ``max_workers`` at a time; reads are limited to ``control_rate`` per second.
    """
    from tqdm.auto import tqdm

    calls = _Calls(
        client,
        plan.datastore_id,
        RateLimiter(None),
        _control_limiter(control_rate),
        RetryPolicy.coerce(retries),
        PollPolicy(),
    )
    finished, unfinished = _journal_progress(plan, journal)
    components = _components(plan)
    executor = ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="ahi-verify")
    try:
        with tqdm(total=len(components), desc="verify", unit=" image sets", disable=not progress) as bar:

            def check(component: list[Any]) -> list[dict[str, Any]]:
                rows = _check_component(plan, calls, component, finished, unfinished, journal is not None)
                bar.update(1)
                return rows

            results = list(executor.map(check, components))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    rows = [row for rows in results for row in rows]
    return pd.DataFrame(rows, columns=list(MISMATCH_COLUMNS), dtype=object)


def _journal_progress(plan: Any, journal: str | os.PathLike[str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """From a journal: {image set: the version our last done request made} and {unfinished image set: status}."""
    finished: dict[str, str] = {}
    unfinished: dict[str, str] = {}
    if journal is None:
        return finished, unfinished
    states: dict[tuple[str, int], dict[str, Any]] = {}
    for record in read_journal(journal):
        if record.get("kind") != "request":
            continue
        states[(record["image_set_id"], int(record["index"]))] = record
        if record["status"] == "done":
            finished[record["image_set_id"]] = record["new_version"]
            for sibling, (_, after) in (record.get("affected") or {}).items():
                if after is not None:
                    finished[sibling] = after
    for image_set_id, requests in _by_image_set(plan).items():
        for request in requests:
            state = states.get((image_set_id, int(request.index)))
            if state is None or state["status"] != "done":
                unfinished[image_set_id] = state["status"] if state else "not sent"
                break
    return finished, unfinished


def _note_row(image_set_id: str, note: str) -> dict[str, Any]:
    return {"ImageSetID": image_set_id, "path": None, "expected": None, "actual": None, "note": note}


def _check_component(
    plan: Any,
    calls: _Calls,
    component: list[Any],
    finished: Mapping[str, str],
    unfinished: Mapping[str, str],
    journaled: bool,
) -> list[dict[str, Any]]:
    """Verify the image sets of one component (requests linked by ``affects``), in plan order."""
    from curation.model.updates import apply_to_document

    documents: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}

    def history_of(image_set_id: str) -> Callable[[str], dict[str, Any]]:
        return lambda version: calls.document(image_set_id, version)

    def current(image_set_id: str) -> dict[str, Any] | None:
        if image_set_id not in documents:
            base = plan.base_versions.get(image_set_id)
            if base is None:
                errors[image_set_id] = "no base version in the plan"
                return None
            documents[image_set_id] = calls.document(image_set_id, str(base))
        return documents[image_set_id]

    def advance(image_set_id: str, params: dict[str, Any]) -> None:
        document = None if image_set_id in errors else current(image_set_id)
        if document is None:
            return
        try:
            documents[image_set_id] = apply_to_document(document, params, history=history_of(image_set_id))
        except Exception as exc:
            errors[image_set_id] = f"the plan cannot be previewed: {exc}"

    for request in component:
        advance(request.image_set_id, request.params)
        part = study_part(request.params) if request.params.get("includeStudyImageSets") else None
        for sibling in (getattr(request, "affects", None) or []) if part else []:
            advance(sibling, part)
    touched = [r.image_set_id for r in component] + [s for r in component for s in (getattr(r, "affects", None) or [])]
    rows: list[dict[str, Any]] = []
    for image_set_id in dict.fromkeys(touched):
        if image_set_id in errors:
            rows.append(_note_row(image_set_id, errors[image_set_id]))
            continue
        if image_set_id in unfinished:
            rows.append(_note_row(image_set_id, f"not applied: {unfinished[image_set_id]}"))
            continue
        version = finished.get(image_set_id) if journaled else None
        if version is None:
            version = str(calls.get_image_set(image_set_id)["versionId"])
        found: list[tuple[str, Any, Any]] = []
        _differences(documents[image_set_id], calls.document(image_set_id, version), "", found)
        rows.extend(
            {"ImageSetID": image_set_id, "path": p, "expected": e, "actual": a, "note": f"version {version}"}
            for p, e, a in found
        )
    return rows


# --- revert ---------------------------------------------------------------------------------------------


def default_revert_journal(journal: str | os.PathLike[str]) -> Path:
    """Where ``revert`` journals by default: ``<journal>.revert`` beside the apply journal."""
    path = Path(journal)
    return path.with_name(path.name + ".revert")


def touched_versions(records: Iterable[Mapping[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """From journal records: {image set: version before the plan} and {image set: last version we made}.

    An image set is touched when one of our requests (or a study-wide one of ours, for siblings) made a new
    version that UPDATED it; failed updates change no document and are left out.
    """
    records = list(records)
    header = records[0] if records and records[0].get("kind") == "plan" else {}
    base_versions = dict(header.get("base_versions") or {})
    before: dict[str, str] = {}
    last: dict[str, str] = {}
    for record in records:
        if record.get("kind") != "request" or record.get("status") != "done":
            continue
        image_set_id = record["image_set_id"]
        before.setdefault(image_set_id, base_versions.get(image_set_id) or record["base_version"])
        last[image_set_id] = record["new_version"]
        for sibling, (sibling_before, after) in (record.get("affected") or {}).items():
            if after is None:
                continue
            first = base_versions.get(sibling) or sibling_before
            if first is not None:
                before.setdefault(sibling, first)
            last[sibling] = after
    return {k: v for k, v in before.items() if k in last}, last


def revert_plan_from_journal(records: list[dict[str, Any]]) -> UpdatePlan:
    """The plan that returns every image set the journal touched to its pre-plan version."""
    header = records[0] if records and records[0].get("kind") == "plan" else None
    if header is None:
        raise JournalError("the journal has no plan record: nothing to revert")
    before, last = touched_versions(records)
    planned = [r["image_set_id"] for r in header.get("requests", [])]
    planned += [s for r in header.get("requests", []) for s in r.get("affects") or []]
    order = {image_set_id: n for n, image_set_id in enumerate(dict.fromkeys(planned))}
    before = dict(sorted(before.items(), key=lambda item: order.get(item[0], len(order))))
    datastore_id = header["datastore_id"]
    requests = [
        PlannedRequest(
            image_set_id=image_set_id,
            index=0,
            params={
                "datastoreId": datastore_id,
                "imageSetId": image_set_id,
                "updateImageSetMetadataUpdates": {"revertToVersionId": str(version)},
            },
            description=f"revert {image_set_id} to version {version}",
        )
        for image_set_id, version in before.items()
    ]
    plan_id = content_id("revert", header["plan_id"], datastore_id, last, before)
    return UpdatePlan(plan_id=plan_id, datastore_id=datastore_id, base_versions=dict(last), requests=requests)


def revert(
    journal: str | os.PathLike[str],
    client: Any,
    *,
    journal_out: str | os.PathLike[str] | None = None,
    rate: float | RateLimiter | None = 0.25,
    burst: float = 1.0,
    max_workers: int = 4,
    dry_run: bool = False,
    progress: bool = True,
    poll: PollPolicy | float | None = None,
    retries: RetryPolicy | int | None = DEFAULT_RETRIES,
    control_rate: float | RateLimiter | None = CONTROL_QUOTA[0],
) -> pd.DataFrame:
    """Return every image set the apply ``journal`` touched to its pre-plan version (``revertToVersionId``).

    Each revert is sent against the version our apply left (the journal's), so an image set someone else
    changed since is reported as a conflict, never overwritten. Requests of the apply journal whose outcome
    is unknown are reconciled first. The revert is itself journaled in ``journal_out`` (default
    ``<journal>.revert``) and resumable: calling ``revert`` again continues it. Returns apply's table.
    """
    source = Path(journal)
    records = read_journal(source)
    header = records[0] if records and records[0].get("kind") == "plan" else None
    if header is None:
        raise JournalError(f"{source} has no plan record: it is not an apply journal")
    if header.get("purpose", "apply") != "apply":
        raise JournalError(f"{source} journals a {header.get('purpose')}; give the apply journal")
    options = {
        "rate": rate,
        "burst": burst,
        "control_rate": control_rate,
        "max_workers": max_workers,
        "progress": progress,
        "retries": retries,
        "poll": poll,
    }
    out = Path(journal_out) if journal_out is not None else default_revert_journal(source)
    if any(r.get("kind") == "request" and r["status"] in UNKNOWN_STATUSES for r in _last_states(records).values()):
        if dry_run:
            raise JournalError(f"{source} has requests of unknown outcome: run apply (or revert) without dry_run")
        with Journal(source) as opened:
            _run(plan_from_record(header), client, opened, send_new=False, desc="reconcile", **options)
        records = read_journal(source)
    existing = read_journal(out) if out.exists() else []
    if existing and existing[0].get("kind") == "plan":
        if existing[0].get("source_plan_id") != header["plan_id"]:
            raise JournalError(
                f"{out} is the revert journal of plan {existing[0].get('source_plan_id')!r}, "
                f"not of {header['plan_id']!r}"
            )
        plan = plan_from_record(existing[0])
    else:
        plan = revert_plan_from_journal(records)
    if dry_run:
        return _dry_run(plan, _by_image_set(plan))
    with Journal(out) as opened:
        opened.start(_header(plan, "revert", {"source_plan_id": header["plan_id"], "source_journal": str(source)}))
        frame, _ = _run(plan, client, opened, desc="revert", **options)
    return frame


def _last_states(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], Mapping[str, Any]]:
    """The last record of each (image set, request index) among ``records``."""
    last: dict[tuple[str, int], Mapping[str, Any]] = {}
    for record in records:
        if record.get("kind") == "request":
            last[(record["image_set_id"], int(record["index"]))] = record
    return last


# --- the command line -----------------------------------------------------------------------------------


def load_plan(path: str | os.PathLike[str]) -> Any:
    """A plan saved by ``UpdatePlan.save`` (or ``plan_record`` output saved as JSON)."""
    text = Path(path).read_text()
    if json.loads(text).get("format") is not None:  # UpdatePlan.save writes its format; plan_record does not
        return UpdatePlan.from_json(text)
    return plan_from_record(json.loads(text))


def make_client(*, endpoint_url: str | None = None, profile: str | None = None, region: str | None = None) -> Any:
    """A boto3 ``medical-imaging`` client for a profile/region, or for an endpoint such as ``ahi-curation serve``'s."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(profile_name=profile, region_name=region)
    config = Config(inject_host_prefix=False) if endpoint_url else None
    kwargs: dict[str, Any] = {"endpoint_url": endpoint_url, "config": config}
    if endpoint_url and session.get_credentials() is None:
        kwargs.update(aws_access_key_id="local", aws_secret_access_key="local")
    if endpoint_url and session.region_name is None:
        kwargs["region_name"] = "us-east-1"
    return session.client("medical-imaging", **kwargs)


def apply_plan_file(
    plan_path: str | os.PathLike[str],
    *,
    journal: str | os.PathLike[str],
    endpoint_url: str | None = None,
    profile: str | None = None,
    region: str | None = None,
    rate: float = 0.25,
    burst: float = 1.0,
    max_workers: int = 4,
    dry_run: bool = False,
    progress: bool = True,
) -> int:
    """``ahi-curation apply PLAN.json --journal PATH``: apply (or resume) a saved plan and print the table.

    Returns 0 when every image set is applied (or dry-run), 1 when any conflict, failure or skip remains,
    2 when the journal belongs to another plan.
    """
    plan = load_plan(plan_path)
    client = make_client(endpoint_url=endpoint_url, profile=profile, region=region)
    try:
        frame = apply(
            plan,
            client,
            journal,
            rate=rate,
            burst=burst,
            max_workers=max_workers,
            dry_run=dry_run,
            progress=progress,
        )
    except JournalError as exc:
        print(f"error: {exc}")
        return 2
    return _print_result(frame)


def revert_journal_file(
    journal: str | os.PathLike[str],
    *,
    journal_out: str | os.PathLike[str] | None = None,
    endpoint_url: str | None = None,
    profile: str | None = None,
    region: str | None = None,
    rate: float = 0.25,
    burst: float = 1.0,
    max_workers: int = 4,
    dry_run: bool = False,
    progress: bool = True,
) -> int:
    """``ahi-curation revert JOURNAL``: revert (or resume reverting) what an apply journal touched.

    Returns 0 when every image set is back at its pre-plan version, 1 otherwise, 2 for an unusable journal.
    """
    client = make_client(endpoint_url=endpoint_url, profile=profile, region=region)
    try:
        frame = revert(
            journal,
            client,
            journal_out=journal_out,
            rate=rate,
            burst=burst,
            max_workers=max_workers,
            dry_run=dry_run,
            progress=progress,
        )
    except JournalError as exc:
        print(f"error: {exc}")
        return 2
    return _print_result(frame)


def _print_result(frame: pd.DataFrame) -> int:
    with pd.option_context("display.max_rows", 200, "display.width", 200, "display.max_colwidth", 80):
        print(frame.to_string(index=False))
    counts = frame["status"].value_counts().to_dict()
    print(", ".join(f"{count} {status}" for status, count in counts.items()) or "nothing to do")
    return 0 if set(counts) <= {"applied", "dry-run"} else 1


def main_apply(args: Any) -> int:
    """The ``ahi-curation apply`` handler: ``args`` has plan, journal, endpoint_url, profile, region, rate."""
    return apply_plan_file(
        args.plan,
        journal=args.journal,
        endpoint_url=getattr(args, "endpoint_url", None),
        profile=getattr(args, "profile", None),
        region=getattr(args, "region", None),
        rate=getattr(args, "rate", 0.25),
        burst=getattr(args, "burst", 1.0),
        max_workers=getattr(args, "max_workers", 4),
        dry_run=getattr(args, "dry_run", False),
        progress=getattr(args, "progress", True),
    )


__all__ = [
    "FINAL_STATUSES",
    "JournalError",
    "PollPolicy",
    "apply",
    "apply_plan_file",
    "main_apply",
    "revert",
    "revert_journal_file",
    "verify",
]
