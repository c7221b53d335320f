"""``Gate``: holds a client's UpdateImageSetMetadata calls until a test lets them through (a module of its own,
not conftest: test folders each have a conftest, and only one can be imported under that name)."""

from __future__ import annotations

import threading
from typing import Any

#: How long a test waits for a request to reach the gate before it fails (a hang guard, not a timing check).
HANG_GUARD = 120.0


class Gate:
    """Holds each UpdateImageSetMetadata call of ``client`` (botocore's ``before-call`` event) until the test
    lets one through: a run can be stopped at a known point without sleeping."""

    EVENT = "before-call.medical-imaging.UpdateImageSetMetadata"

    def __init__(self, client: Any) -> None:
        self._permits = threading.Semaphore(0)
        self._arrivals = threading.Semaphore(0)
        self.held = 0
        client.meta.events.register(self.EVENT, self._hold)

    def _hold(self, **_: Any) -> None:
        self._arrivals.release()
        self._permits.acquire()

    def arrived(self) -> None:
        """Wait until a request is held at the gate."""
        assert self._arrivals.acquire(timeout=HANG_GUARD), "no request reached the gate"
        self.held += 1

    def open(self, count: int = 1) -> None:
        """Let ``count`` requests through (held now or arriving later)."""
        for _ in range(count):
            self._permits.release()
