"""The HealthImaging calls of one run (apply, revert, verify): each under its action's limiter, AHI's
ConflictException waited out, and LOCKED polled until the image set is ACTIVE again.

Throttling, 5xx and connection errors are retried by botocore inside each call (``curation.run.retries``);
``ServiceCalls`` adds only what botocore cannot know: it resends an update refused with ConflictException
(the image set is LOCKED by another update) and re-reads what answers "not consistent yet", with the run's
``RetryPolicy``. An update that still fails raises ``UpdateFailed``, which carries the ``Attempts`` of the
call (how many went out, and whether any could have changed the image set) for the caller to decide between
"not applied", "someone else's version" and "reconcile with the service".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from curation.model.document import parse_document
from curation.model.quotas import Action
from curation.run.limits import Attempts, Cancelled, CancelSignal, Limiters
from curation.run.options import PollPolicy, RunOptions
from curation.run.retries import RetryPolicy, is_conflict

if TYPE_CHECKING:
    from mypy_boto3_medical_imaging import HealthImagingClient
    from mypy_boto3_medical_imaging.type_defs import (
        GetImageSetMetadataResponseTypeDef,
        GetImageSetResponseTypeDef,
        UpdateImageSetMetadataResponseTypeDef,
    )

T = TypeVar("T")


class LockTimeout(Exception):
    """The image set stayed LOCKED longer than the poll policy allows."""


class UpdateFailed(Exception):
    """UpdateImageSetMetadata failed after every retry: ``cause`` is the last error, ``attempts`` how it went."""

    def __init__(self, cause: Exception, attempts: Attempts) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.attempts = attempts


def read_blob(response: GetImageSetMetadataResponseTypeDef) -> bytes:
    """The bytes of a GetImageSetMetadata answer's blob (botocore's stream; bytes from a test double)."""
    body: Any = response["imageSetMetadataBlob"]
    return bytes(body.read() if hasattr(body, "read") else body)


class ServiceCalls:
    """The calls of one run against ``datastore_id`` with ``client``, under ``limiters``."""

    def __init__(
        self, client: HealthImagingClient, datastore_id: str, options: RunOptions, limiters: Limiters | None = None
    ) -> None:
        self.client = client
        self.datastore_id = datastore_id
        self.limiters = limiters or options.limiters()
        self.retries: RetryPolicy = options.retries
        self.poll: PollPolicy = options.poll
        self.cancel: CancelSignal | None = options.cancel

    @property
    def endpoint(self) -> str:
        return str(getattr(self.client.meta, "endpoint_url", "") or "the service")

    def read(self, action: Action, fn: Callable[[], T]) -> T:
        """A read under ``action``'s limiter, ConflictException ("not consistent yet", LOCKED) waited out."""
        return self.retries.call(lambda: self.limiters.call(self.client, action, fn), retryable=is_conflict)

    def get_image_set(self, image_set_id: str, version_id: str | None = None) -> GetImageSetResponseTypeDef:
        params = {"datastoreId": self.datastore_id, "imageSetId": image_set_id}
        if version_id is not None:
            params["versionId"] = str(version_id)
        return self.read(Action.GET_IMAGE_SET, lambda: self.client.get_image_set(**params))

    def document(self, image_set_id: str, version_id: str) -> dict[str, Any]:
        """The metadata document of one version."""
        params = {"datastoreId": self.datastore_id, "imageSetId": image_set_id, "versionId": str(version_id)}
        blob = self.read(Action.GET_IMAGE_SET_METADATA, lambda: read_blob(self.client.get_image_set_metadata(**params)))
        return parse_document(blob)

    def update(self, call: dict[str, Any]) -> UpdateImageSetMetadataResponseTypeDef:
        """Send one UpdateImageSetMetadata (``call`` holds its keyword arguments, ``latestVersionId``
        included); a ConflictException (LOCKED) is sent again with the retry policy.

        Raises ``curation.run.limits.Cancelled`` when the run is cancelled before it went out, and
        ``UpdateFailed`` (with the call's ``Attempts``) for any other failure.
        """
        attempts = Attempts()

        def attempt() -> UpdateImageSetMetadataResponseTypeDef:
            return self.limiters.call(
                self.client,
                Action.UPDATE_IMAGE_SET_METADATA,
                lambda: self.client.update_image_set_metadata(**call),
                cancel=self.cancel,
                attempts=attempts,
            )

        try:
            return self.retries.call(attempt, retryable=is_conflict)
        except Cancelled:
            raise
        except Exception as exc:
            raise UpdateFailed(exc, attempts) from exc

    def wait_active(self, image_set_id: str) -> GetImageSetResponseTypeDef:
        """GetImageSet until the image set is not LOCKED (LockTimeout past the poll policy's timeout)."""
        deadline = self.poll.clock() + self.poll.timeout
        interval = self.poll.initial
        while True:
            info = self.get_image_set(image_set_id)
            if info.get("imageSetState") != "LOCKED":
                return info
            if self.poll.clock() + interval > deadline:
                raise LockTimeout(f"image set {image_set_id} still LOCKED after {self.poll.timeout:g} s")
            self.poll.sleep(interval)
            interval = min(self.poll.max_interval, interval * self.poll.factor)
