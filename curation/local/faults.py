"""Faults a test can inject into the store itself (beyond the Service's throttles and 5xx): failing updates and copies.

``fail_next_updates(db, count, message)`` makes the next ``count`` accepted updates end ``UPDATE_FAILED``
with ``message``, as AHI reports an update that failed after it was accepted (a version number is consumed,
the document is unchanged). The knob lives in the database, so every process sharing the store sees it.
"""

from __future__ import annotations

import sqlite3

from curation.local.database import Database

_KNOB = "fail_updates"


def fail_next_updates(db: Database, count: int, message: str) -> None:
    """Arm the next ``count`` accepted updates to fail with ``message``."""
    with db.transaction(write=True) as conn:
        db.set_knob(conn, _KNOB, {"count": int(count), "message": message})


def take_failure(db: Database, conn: sqlite3.Connection) -> str | None:
    """The failure message for the update being accepted in ``conn`` (consuming one), or None."""
    knob = db.knob(conn, _KNOB)
    if knob is None or knob["count"] <= 0:
        return None
    knob["count"] -= 1
    db.set_knob(conn, _KNOB, knob)
    return str(knob["message"])


_COPY_KNOB = "fail_copies"


def fail_next_copies(db: Database, count: int, message: str, *, promote: bool | None = None) -> None:
    """Arm the next ``count`` accepted copies (only promotions when ``promote`` is True, only plain copies when
    False, any when None) to end ``COPY_FAILED`` with ``message``."""
    with db.transaction(write=True) as conn:
        db.set_knob(conn, _COPY_KNOB, {"count": int(count), "message": message, "promote": promote})


def take_copy_failure(db: Database, conn: sqlite3.Connection, *, promote: bool) -> str | None:
    """The failure message for the copy being accepted in ``conn`` (consuming one), or None."""
    knob = db.knob(conn, _COPY_KNOB)
    if knob is None or knob["count"] <= 0 or knob["promote"] not in (None, promote):
        return None
    knob["count"] -= 1
    db.set_knob(conn, _COPY_KNOB, knob)
    return str(knob["message"])
