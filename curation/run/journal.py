"""The apply journal: an append-only JSON-lines file that makes applying a plan crash-proof and undoable.

The first record (``"kind": "plan"``) holds the plan: its ID, datastore, base versions and requests, so that a
resumed apply can check it runs the same plan and a revert needs nothing but the journal. Every later record
(``"kind": "request"``) tells what happened to one request (image set, request index): ``"sending"`` is
written before the call, ``"accepted"`` when AHI answered with the new version, then ``"done"``, ``"failed"``
or ``"conflict"`` (final), or ``"unsent"`` (nothing changed, a resume sends it again). A request whose last
record is ``"sending"`` or ``"accepted"`` has an unknown outcome and must be reconciled with the service
before anything else is sent for that image set.

Every record is written with one ``os.write`` and fsynced before the call proceeds (``"accepted"`` excepted:
it only saves a resume some reading; without it the ``"sending"`` record is reconciled). A crash in the
middle of a write leaves a torn last line: it is ignored when reading and cut off before appending. The file
holds PHI (attribute values): it is created with mode 0600 and kept so.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

FORMAT = "ahi-curation-journal"
FORMAT_VERSION = 1
#: Statuses after which a request is never sent again.
FINAL_STATUSES = frozenset({"done", "failed", "conflict"})
#: Statuses of a request whose outcome the service must tell.
UNKNOWN_STATUSES = frozenset({"sending", "accepted"})
STATUSES = FINAL_STATUSES | UNKNOWN_STATUSES | {"unsent"}
FILE_MODE = 0o600


class JournalError(ValueError):
    """A journal that cannot be used: another plan's, unreadable, or not a journal at all."""


def now_iso() -> str:
    """The current UTC time as ISO 8601 (what journal records carry)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _parse_lines(data: bytes, path: str) -> tuple[list[dict[str, Any]], int]:
    """The records of ``data`` and the length of its intact part (a torn last line is left out)."""
    records: list[dict[str, Any]] = []
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
            if not isinstance(record, dict):
                raise orjson.JSONDecodeError("not an object", line.decode(errors="replace"), 0)
        except orjson.JSONDecodeError as exc:
            if last or all(not rest.strip() for rest in lines[number + 1 :]):
                break  # torn by a crash mid-write: what follows was never acknowledged
            raise JournalError(f"{path}: line {number + 1} is not a JSON object: {exc}") from exc
        if last:
            break  # a complete record without its newline: also torn (the newline is part of the write)
        records.append(record)
        good += len(line) + 1
    return records, good


def read_journal(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every intact record of the journal at ``path``, in order (a torn last line is ignored)."""
    with open(path, "rb") as handle:
        data = handle.read()
    return _parse_lines(data, os.fspath(path))[0]


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
    and cutting off a torn last line. ``start(header)`` writes the plan record of a new journal, or checks
    that an existing journal belongs to the same plan (``JournalError`` otherwise).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
            created = True
        except FileExistsError:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            created = False
        try:
            os.fchmod(fd, FILE_MODE)
            if not created:
                data = b""
                while chunk := os.read(fd, 1 << 20):
                    data += chunk
                self.records, good = _parse_lines(data, str(self.path))
                if good < len(data):
                    os.ftruncate(fd, good)
                    os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if created:
            _fsync_directory(self.path.parent)

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
    def header(self) -> dict[str, Any] | None:
        """The plan record, or None for a new journal."""
        if self.records and self.records[0].get("kind") == "plan":
            return self.records[0]
        return None

    def start(self, header: dict[str, Any]) -> dict[str, Any]:
        """Write the plan record of a new journal, or check the existing one is for ``header["plan_id"]``."""
        existing = self.header
        if existing is None:
            if self.records:
                raise JournalError(f"{self.path} is not an ahi-curation journal (no plan record first)")
            return self.append({"kind": "plan", "format": FORMAT, "format_version": FORMAT_VERSION, **header})
        if existing.get("plan_id") != header.get("plan_id"):
            raise JournalError(
                f"{self.path} is the journal of plan {existing.get('plan_id')!r}, not of plan "
                f"{header.get('plan_id')!r}: resume with the same plan, or give another journal path"
            )
        if existing.get("purpose", "apply") != header.get("purpose", "apply"):
            raise JournalError(
                f"{self.path} journals a {existing.get('purpose', 'apply')}, not a {header.get('purpose')}"
            )
        return existing

    def append(self, record: dict[str, Any], *, sync: bool = True) -> dict[str, Any]:
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

    def requests(self) -> Iterator[dict[str, Any]]:
        """The request records, in order."""
        return (r for r in self.records if r.get("kind") == "request")

    def last_states(self) -> dict[tuple[str, int], dict[str, Any]]:
        """The last record of every (image set, request index) journaled."""
        states: dict[tuple[str, int], dict[str, Any]] = {}
        for record in self.requests():
            states[(record["image_set_id"], int(record["index"]))] = record
        return states


def file_mode(path: str | os.PathLike[str]) -> int:
    """The permission bits of ``path`` (0o600 for a journal)."""
    return stat.S_IMODE(os.stat(path).st_mode)
