"""The embedded HealthImaging backend: datastores, image sets and their versions with AHI's semantics.

``Store(path)`` is the backend of moto's backend/responses split: one plain method per operation with keyword
arguments named after botocore's members (``store.get_image_set(datastore_id=..., image_set_id=...)``), and
``Store.call(operation, params)``, the responses side, which validates botocore's member names against the
service model and dispatches to them. There is no HTTP here; :mod:`curation.local.wire` builds the transports
on top of ``call``.

The backend is composed of one class per group of operations (as moto composes its EC2 backend):
:mod:`~curation.local.datastores`, :mod:`~curation.local.imagesets` (reads and search), :mod:`~curation.local.updating`,
:mod:`~curation.local.copying` (copy and delete) and :mod:`~curation.local.importing`, over the persistence
of :mod:`~curation.local.database`. Each module's docstring states the choices it makes where AHI's
documentation is silent. Messages of refusals AHI does not document (LOCKED, datastore not empty) are the
store's own wording.
"""

from __future__ import annotations

import os
import time
from typing import Any

from botocore import xform_name

from curation.local.copying import CopyOperations
from curation.local.database import (
    NOT_CONSISTENT,
    STALE_VERSION,
    Clock,
    Database,
    StoreNotFoundError,
    new_id,
)
from curation.local.faults import fail_next_copies, fail_next_updates
from curation.local.imagesets import ImageSetReads
from curation.local.importing import ImportOperations, ImportReport
from curation.local.updating import UpdateOperations
from curation.local.validate import validate
from curation.model.errors import AHIError

__all__ = ["NOT_CONSISTENT", "STALE_VERSION", "ImportReport", "Store", "StoreNotFoundError", "new_id"]

#: Operations of the model the store answers; StartDICOMImportJob is not one (use ``import_paths``).
_UNSUPPORTED = frozenset({"StartDICOMImportJob"})


class Store(ImageSetReads, UpdateOperations, CopyOperations, ImportOperations):
    """A durable HealthImaging datastore collection in a directory; ``call`` answers AHI operations.

    ``clock`` (epoch seconds; default ``time.time``) stamps every version and decides when LOCKED ends, so
    tests can inject one. ``create=False`` refuses a path that holds no store (``StoreNotFoundError``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lock_seconds: float = 0.0,
        consistency_seconds: float = 0.0,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        clock: Clock = time.time,
        create: bool = True,
    ) -> None:
        self.db = Database(path, clock=clock, lock_seconds=lock_seconds, create=create)
        self.path = self.db.path
        self.database = self.db.file
        self.consistency_seconds = float(consistency_seconds)
        self.region = region
        self.account_id = account_id

    @staticmethod
    def exists(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` holds a store."""
        try:
            return Database.file_of(path).is_file()
        except OSError:
            return False

    def close(self) -> None:
        """Close this thread's database connection (the store stays usable: it reconnects on demand)."""
        self.db.close()

    def call(self, operation_name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Answer one AHI operation (botocore member names in and out); raise AHIError as AHI would."""
        checked = validate(operation_name, params)
        handler = getattr(self, xform_name(operation_name), None)
        if handler is None or operation_name in _UNSUPPORTED:
            raise AHIError("ValidationException", f"{operation_name} is not supported by the local HealthImaging store")
        result: dict[str, Any] = handler(**{xform_name(name): value for name, value in checked.items()})
        return result

    def fail_next_updates(self, count: int, message: str = "INTERNAL_ERROR: simulated update failure") -> None:
        """Make the next ``count`` accepted updates end ``UPDATE_FAILED`` with ``message`` (a test knob)."""
        fail_next_updates(self.db, count, message)

    def fail_next_copies(
        self, count: int, message: str = "INTERNAL_ERROR: simulated copy failure", *, promote: bool | None = None
    ) -> None:
        """Make the next ``count`` accepted copies end ``COPY_FAILED`` with ``message`` (a test knob; ``promote``
        True: only promotions, False: only plain copies)."""
        fail_next_copies(self.db, count, message, promote=promote)
