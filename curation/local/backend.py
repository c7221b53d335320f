"""What every part of the embedded backend shares: the database, the account and region, ARNs and the clock.

The backend (:class:`curation.local.store.Store`) is composed of one class per group of operations, as moto
composes its EC2 backend: :mod:`~curation.local.datastores`, :mod:`~curation.local.imagesets` (reads and
search), :mod:`~curation.local.updating`, :mod:`~curation.local.copying` (copy and delete) and
:mod:`~curation.local.importing`. Each operation is a plain method with keyword arguments named after
botocore's members (``datastore_id``, ``image_set_id`` ...); outputs are dicts with botocore's member names.
"""

from __future__ import annotations

from curation.local.database import Database


class BackendBase:
    """The state every operation group reads: ``db`` (persistence), ``region``, ``account_id``, timings."""

    db: Database
    region: str
    account_id: str
    consistency_seconds: float

    @property
    def lock_seconds(self) -> float:
        """How long accepted asynchronous work (update, copy) shows the image set as LOCKED."""
        return self.db.lock_seconds

    @lock_seconds.setter
    def lock_seconds(self, value: float) -> None:
        self.db.lock_seconds = float(value)

    def datastore_arn(self, datastore_id: str, image_set_id: str | None = None) -> str:
        """The ARN AHI gives a datastore (or an image set of it)."""
        arn = f"arn:aws:medical-imaging:{self.region}:{self.account_id}:datastore/{datastore_id}"
        return f"{arn}/imageset/{image_set_id}" if image_set_id else arn
