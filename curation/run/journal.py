"""The apply journal: an append-only JSON-lines file that makes applying a plan crash-proof and undoable.

The first record (``"kind": "plan"``) holds the plan exactly as ``UpdatePlan.to_dict`` writes it (the one
serialisation of a plan, checked against its content hash when read back), so that a resumed apply can check
it runs the same plan and a revert needs nothing but the journal. Every later record (``"kind":
"request"``) tells what happened to one step (image set, request index, ``operation``): ``"sending"`` is
written before the call, ``"accepted"`` when AHI answered with the new version, then ``"done"``,
``"failed"`` or ``"conflict"`` (final), or ``"unsent"`` (nothing changed, a resume sends it again). A step
whose last record is ``"sending"`` or ``"accepted"`` has an unknown outcome and must be reconciled with the
service before anything else is sent for that image set. ``"kind": "stop"`` records a run that stopped
early (cancelled, or the endpoint unreachable); a resume simply continues.

Every record is written with one ``os.write`` and fsynced before the call proceeds (``"accepted"`` excepted:
it only saves a resume some reading; without it the ``"sending"`` record is reconciled). A crash in the
middle of a write leaves a torn last line: it is ignored when reading and cut off before appending. The file
holds PHI (attribute values): it is created with mode 0600 and kept so.

One writer per journal: ``JournalLock`` holds an exclusive ``flock`` on ``<journal>.lock`` (which records the
holder's PID) for a whole apply or revert; a second one fails at once naming that PID. The kernel drops the
lock when its process dies, so a lock left by a killed process is simply taken over.

``VersionChains`` derives from the records which versions this plan made: for each image set the chain of
versions from its base version, each link a request (or a study-wide request of a sibling) that was sent
against one version and made the next. Revert and verify follow these chains, never the file order.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from curation.curate.updateplan import PlanFormatError, UpdatePlan
from curation.model.quotas import Action

FORMAT = "ahi-curation-journal"
FORMAT_VERSION = 2
FILE_MODE = 0o600

Record = dict[str, Any]


class RecordKind(StrEnum):
    """What a journal line records."""

    PLAN = "plan"
    REQUEST = "request"
    STOP = "stop"
    STEP = "step"  #: one step of a copy-and-promote procedure (``curation.run.procedures``)
    MAPPING = "mapping"  #: a pre-plan image set's content now lives under a new primary image set ID
    ORPHAN = "orphan"  #: an image set a retried CopyImageSet made twice: not ours, listed for cleanup


class Purpose(StrEnum):
    """What a journal's run does with its plan."""

    APPLY = "apply"
    REVERT = "revert"


class Operation(StrEnum):
    """The kind of a journaled step, and the HealthImaging action it calls.

    Today every step is an UpdateImageSetMetadata call; the copy / delete / promote steps of primary image
    sets (issue 12) add members here and a ``curation.model.quotas.Action`` for each in ``action``.
    """

    UPDATE = "update"

    @property
    def action(self) -> Action:
        return {Operation.UPDATE: Action.UPDATE_IMAGE_SET_METADATA}[self]


class RequestStatus(StrEnum):
    """The status of one journaled step."""

    SENDING = "sending"
    ACCEPTED = "accepted"
    DONE = "done"
    FAILED = "failed"
    CONFLICT = "conflict"
    UNSENT = "unsent"

    @property
    def final(self) -> bool:
        """A step never sent again."""
        return self in FINAL_STATUSES

    @property
    def unknown(self) -> bool:
        """A step whose outcome the service must tell."""
        return self in UNKNOWN_STATUSES


#: Statuses after which a request is never sent again.
FINAL_STATUSES = frozenset({RequestStatus.DONE, RequestStatus.FAILED, RequestStatus.CONFLICT})
#: Statuses of a request whose outcome the service must tell.
UNKNOWN_STATUSES = frozenset({RequestStatus.SENDING, RequestStatus.ACCEPTED})
STATUSES = frozenset(RequestStatus)


class JournalError(ValueError):
    """A journal that cannot be used: another plan's, unreadable, or not a journal at all (one line)."""


class JournalBusyError(JournalError):
    """Another process is applying or reverting with this journal."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"{path} is in use by {holder} (an apply or revert is running with it): wait for it to finish, "
            "or give another journal"
        )


def now_iso() -> str:
    """The current UTC time as ISO 8601 (what journal records carry)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


# --- reading ----------------------------------------------------------------------------------------------


def _check_record(record: Record, path: str, number: int) -> None:
    """A request record must name its image set, index and a known status, a step record its step and a
    known status (JournalError names the line)."""
    where = f"{path}: line {number}"
    if record.get("kind") == RecordKind.STEP:
        if not isinstance(record.get("step"), str) or record.get("status") not in STATUSES:
            raise JournalError(f"{where}: a step record without 'step' or with an unknown status")
        return
    if record.get("kind") != RecordKind.REQUEST:
        return
    if not isinstance(record.get("image_set_id"), str):
        raise JournalError(f"{where}: a request record without 'image_set_id'")
    index = record.get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        raise JournalError(f"{where}: a request record without an integer 'index'")
    if record.get("status") not in STATUSES:
        raise JournalError(f"{where}: unknown request status {record.get('status')!r}")


def _parse_lines(data: bytes, path: str) -> tuple[list[Record], int]:
    """The records of ``data`` and the length of its intact part (a torn last line is left out)."""
    records: list[Record] = []
    good = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines):
        last = number == len(lines) - 1
        if not line.strip():
            if not last:
                good += len(line) + 1
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            if last or all(not rest.strip() for rest in lines[number + 1 :]):
                break  # torn by a crash mid-write: what follows was never acknowledged
            raise JournalError(f"{path}: line {number + 1} is not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise JournalError(f"{path}: line {number + 1} is not a JSON object: not an ahi-curation journal")
        if last:
            break  # a complete record without its newline: also torn (the newline is part of the write)
        _check_record(record, path, number + 1)
        records.append(record)
        good += len(line) + 1
    return records, good


def read_journal(path: str | os.PathLike[str]) -> list[Record]:
    """Every intact record of the journal at ``path``, in order (a torn last line is ignored)."""
    with open(path, "rb") as handle:
        data = handle.read()
    return _parse_lines(data, os.fspath(path))[0]


def journal_header(records: list[Record], path: str | os.PathLike[str]) -> Record:
    """The plan record of a journal, checked to be one this version reads (JournalError otherwise)."""
    header = records[0] if records else None
    if header is None:
        raise JournalError(f"{path} is empty: not an apply journal")
    if header.get("kind") != RecordKind.PLAN or header.get("format") != FORMAT:
        if header.get("format") == "ahi-curation-plan":
            raise JournalError(f"{path} is a saved plan, not a journal: give it as the plan")
        raise JournalError(f"{path} is not an ahi-curation journal (its first record is not a plan record)")
    if header.get("format_version") != FORMAT_VERSION:
        raise JournalError(
            f"{path} is a journal of format version {header.get('format_version')!r}; this ahi-curation "
            f"reads version {FORMAT_VERSION}"
        )
    return header


def journal_plan(header: Mapping[str, Any], path: str | os.PathLike[str]) -> UpdatePlan:
    """The plan a journal's plan record holds, checked against its content hash."""
    try:
        return UpdatePlan.from_dict(header.get("plan"), source=f"the plan in {os.fspath(path)}")
    except PlanFormatError as exc:
        raise JournalError(str(exc)) from None


def purpose_of(header: Mapping[str, Any]) -> Purpose:
    try:
        return Purpose(header.get("purpose", Purpose.APPLY))
    except ValueError:
        raise JournalError(f"unknown journal purpose {header.get('purpose')!r}") from None


def request_records(records: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """The request records among ``records``, in order."""
    return (r for r in records if r.get("kind") == RecordKind.REQUEST)


def _precedence(record: Mapping[str, Any]) -> tuple[int, str]:
    """How far a record says its request got: a final record outranks any other (``done`` first), then the
    latest by its time; so the state does not depend on the order of the lines."""
    status = record.get("status")
    rank = 2 if status == RequestStatus.DONE else 1 if status in FINAL_STATUSES else 0
    return rank, str(record.get("time") or "")


def last_states(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], Mapping[str, Any]]:
    """The state of each (image set, request index) among ``records``: its final record if it has one, else
    its latest (by time; among equal times the later line)."""
    states: dict[tuple[str, int], Mapping[str, Any]] = {}
    for record in request_records(records):
        key = (record["image_set_id"], int(record["index"]))
        known = states.get(key)
        if known is None or _precedence(record) >= _precedence(known):
            states[key] = record
    return states


def step_states(records: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The state of each procedure step among ``records`` (by step ID): its final record if it has one, else
    its latest, as ``last_states`` decides for requests. Fields of earlier records of the step that the state
    lacks (the created image set's ID of an ``accepted`` record) are carried into it."""
    states: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("kind") != RecordKind.STEP:
            continue
        key = str(record["step"])
        known = states.get(key)
        if known is None or _precedence(record) >= _precedence(known):
            states[key] = {**(known or {}), **record}
        else:
            states[key] = {**record, **known}
    return dict(states)


def mappings(records: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The ``mapping`` records by pre-plan image set (the last one of each)."""
    return {str(r["original"]): r for r in records if r.get("kind") == RecordKind.MAPPING}


# --- versions this plan made ------------------------------------------------------------------------------


def _number(version: Any) -> int | None:
    try:
        return int(str(version))
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class _Link:
    source: str
    target: str
    changed: bool  # False for a failed update (it consumed a version, the document stayed)


class VersionChains:
    """Which versions of each image set this plan made, as chains from the base versions.

    A link is one of our requests, sent against a version, that made the next (``done``: the document
    changed; ``failed``: AHI consumed a version without changing it), or a sibling's version moved by one of
    our study-wide requests. Chains are followed from the plan's base versions, so the order of the lines in
    the file does not matter, and a version someone else made is never ours.
    """

    def __init__(self, records: Iterable[Mapping[str, Any]], base_versions: Mapping[str, str]) -> None:
        self.base_versions = {k: str(v) for k, v in base_versions.items()}
        self._links: dict[str, dict[str, _Link]] = {}
        for record in request_records(records):
            self._add_record(record)

    def _add(self, image_set_id: str, source: Any, target: Any, changed: bool) -> None:
        if source is None or target is None:
            return
        low, high = _number(source), _number(target)
        if low is not None and high is not None and high <= low:
            return
        links = self._links.setdefault(image_set_id, {})
        known = links.get(str(source))
        if known is None or (_number(known.target) or 0) < (high or 0):
            links[str(source)] = _Link(str(source), str(target), changed)

    def _add_record(self, record: Mapping[str, Any]) -> None:
        status = record.get("status")
        if status not in (RequestStatus.DONE, RequestStatus.FAILED):
            return
        self._add(record["image_set_id"], record.get("base_version"), record.get("new_version"), status == "done")
        if status == RequestStatus.DONE:
            for sibling, pair in (record.get("affected") or {}).items():
                before, after = [*list(pair), None, None][:2]
                self._add(sibling, before, after, True)

    def _walk(self, image_set_id: str) -> list[_Link]:
        links = self._links.get(image_set_id, {})
        start = self.base_versions.get(image_set_id)
        if start is None and links:  # a sibling without a base version: start at its lowest link
            start = min(links, key=lambda v: _number(v) or 0)
        chain: list[_Link] = []
        while start in links and len(chain) <= len(links):
            chain.append(links[start])
            start = links[start].target
        return chain

    def image_set_ids(self) -> list[str]:
        return list(self._links)

    def end(self, image_set_id: str) -> str | None:
        """The last version of the chain (the version our last request left), or None if we made none."""
        chain = self._walk(image_set_id)
        return chain[-1].target if chain else None

    def last_changed(self, image_set_id: str) -> str | None:
        """The last version whose document one of our requests changed."""
        changed = [link.target for link in self._walk(image_set_id) if link.changed]
        return changed[-1] if changed else None

    def before(self, image_set_id: str) -> str | None:
        """The version the chain starts from (the base version)."""
        chain = self._walk(image_set_id)
        return chain[0].source if chain else self.base_versions.get(image_set_id)

    def ours(self, image_set_id: str) -> set[str]:
        """Every version on the chain that this plan made."""
        return {link.target for link in self._walk(image_set_id)}

    def touched(self) -> tuple[dict[str, str], dict[str, str]]:
        """{image set: version before the plan} and {image set: the version our requests left} for every image
        set whose document one of our requests changed."""
        before: dict[str, str] = {}
        last: dict[str, str] = {}
        for image_set_id in self._links:
            end, start = self.end(image_set_id), self.before(image_set_id)
            if self.last_changed(image_set_id) is not None and end is not None and start is not None:
                before[image_set_id], last[image_set_id] = start, end
        return before, last


def touched_versions(records: list[Record]) -> tuple[dict[str, str], dict[str, str]]:
    """From an apply journal's records: {image set: version before the plan} and {image set: the last version
    our requests made}, following the chains of versions (``VersionChains``)."""
    header = records[0] if records and records[0].get("kind") == RecordKind.PLAN else {}
    plan = header.get("plan") or {}
    return VersionChains(records, plan.get("base_versions") or {}).touched()


# --- the lock ---------------------------------------------------------------------------------------------


def lock_path(journal: str | os.PathLike[str]) -> Path:
    """The lock file of a journal: ``<journal>.lock``."""
    path = Path(journal)
    return path.with_name(path.name + ".lock")


class JournalLock:
    """An exclusive inter-process lock on a journal, held while one apply or revert writes it.

    ``acquire`` never waits: when another process holds the lock it raises ``JournalBusyError`` naming that
    process's PID (read from the lock file). The kernel releases a ``flock`` when its holder dies, so a lock
    left by a killed process is taken over by the next run.
    """

    def __init__(self, journal: str | os.PathLike[str]) -> None:
        self.journal = Path(journal)
        self.path = lock_path(journal)
        self._fd = -1

    def acquire(self) -> JournalLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise JournalBusyError(self.journal, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.fchmod(fd, FILE_MODE)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1

    def __enter__(self) -> JournalLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


# --- writing ----------------------------------------------------------------------------------------------


def _fsync_directory(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Journal:
    """An open journal: the records read so far, and ``append`` (thread-safe, fsynced).

    ``Journal(path)`` creates the file (mode 0600, exclusive) or opens an existing one, reading its records
    and cutting off a torn last line. ``start(plan, purpose)`` writes the plan record of a new journal, or
    checks that an existing journal belongs to the same plan (``JournalError`` otherwise). Hold a
    ``JournalLock`` while writing (``apply`` and ``revert`` do).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.records: list[Record] = []
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
            created = True
        except FileExistsError:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            created = False
        try:
            os.fchmod(fd, FILE_MODE)
            if not created:
                self._read_existing(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if created:
            _fsync_directory(self.path.parent)

    def _read_existing(self, fd: int) -> None:
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
        self.records, good = _parse_lines(data, str(self.path))
        if good < len(data):
            os.ftruncate(fd, good)
            os.fsync(fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (records stay readable in ``records``)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    @property
    def header(self) -> Record | None:
        """The plan record, or None for a new journal."""
        if self.records and self.records[0].get("kind") == RecordKind.PLAN:
            return self.records[0]
        return None

    def start(self, plan: UpdatePlan, purpose: Purpose, extra: Mapping[str, Any] | None = None) -> Record:
        """Write the plan record of a new journal, or check the existing one is for ``plan`` and ``purpose``."""
        existing = self.header
        if existing is None:
            if self.records:
                raise JournalError(f"{self.path} is not an ahi-curation journal (no plan record first)")
            header = {
                "kind": RecordKind.PLAN,
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "purpose": purpose,
                "plan_id": plan.plan_id,
                "plan": plan.to_dict(),
                **(extra or {}),
            }
            return self.append(header)
        journal_header(self.records, self.path)
        if existing.get("plan_id") != plan.plan_id:
            raise JournalError(
                f"{self.path} is the journal of plan {existing.get('plan_id')!r}, not of plan "
                f"{plan.plan_id!r}: resume with the same plan, or give another journal path"
            )
        if purpose_of(existing) != purpose:
            raise JournalError(f"{self.path} journals a {existing.get('purpose', 'apply')}, not a {purpose}")
        return existing

    def append(self, record: Record, *, sync: bool = True) -> Record:
        """Write ``record`` (with its ``time``) as one line, flush and fsync it; return it.

        ``sync=False`` skips the fsync, for records whose loss a resume recovers from anyway."""
        record = {**record, "time": record.get("time") or now_iso()}
        line = orjson.dumps(record) + b"\n"
        with self._lock:
            if self._fd < 0:
                raise JournalError(f"{self.path} is closed")
            view = memoryview(line)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if sync:
                os.fsync(self._fd)
            self.records.append(record)
        return record

    def requests(self) -> Iterator[Mapping[str, Any]]:
        """The request records, in order."""
        return request_records(self.records)

    def last_states(self) -> dict[tuple[str, int], Mapping[str, Any]]:
        """The last record of every (image set, request index) journaled."""
        return last_states(self.records)

    def chains(self, base_versions: Mapping[str, str]) -> VersionChains:
        """The chains of versions this plan made, from the records read and written so far."""
        return VersionChains(self.records, base_versions)

    def reread(self) -> list[Record]:
        """Every record in the file now: what this run wrote, and anything another process appended (were
        the lock ever bypassed)."""
        return read_journal(self.path)


def file_mode(path: str | os.PathLike[str]) -> int:
    """The permission bits of ``path`` (0o600 for a journal)."""
    return stat.S_IMODE(os.stat(path).st_mode)
