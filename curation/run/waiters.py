"""Waiting until an image set leaves LOCKED (an update, a copy, a delete): botocore waiters for HealthImaging.

botocore ships no waiter for ``medical-imaging`` (its ``waiters-2.json`` for 2023-07-19 is ``{"version": 2,
"waiters": {}}``), so this module holds a waiter model in botocore's own format (version 2: ``operation``,
``delay``, ``maxAttempts``, ``acceptors`` with ``path`` / ``status`` / ``error`` matchers and ``success`` /
``failure`` / ``retry`` states), loaded with ``botocore.waiter.WaiterModel`` as Apache Airflow does for the
services botocore lacks waiters for. The states come from the Developer Guide: "Copy is an asynchronous process.
Therefore, the state (``imageSetState``) and status (``imageSetWorkflowStatus``) response elements are available
to let you know what operation is happening on a locked image set" ("Copying an image set"), and "You cannot
perform other write operations on a LOCKED image set" ("Updating image set metadata").

``waiter(client, name)`` is ``botocore.waiter.create_waiter_with_client``: a plain botocore ``Waiter``
(``wait(datastoreId=..., imageSetId=..., WaiterConfig={"Delay": .., "MaxAttempts": ..})``, ``WaiterError`` with
``last_response``). botocore's ``Waiter.wait`` sleeps with ``time.sleep`` and returns nothing, so the runs use
``wait_for``: the same model and botocore's compiled acceptors (``SingleWaiterConfig.acceptors``,
``matcher_func``) and ``NormalizedOperationMethod`` (an error answer becomes its response), with an injectable
``sleep`` and ``clock`` (tests never sleep) and the last GetImageSet answer returned.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from botocore.exceptions import WaiterError
from botocore.waiter import NormalizedOperationMethod, Waiter, WaiterModel, create_waiter_with_client

__all__ = [
    "IMAGE_SET_COPIED",
    "IMAGE_SET_DELETED",
    "IMAGE_SET_NOT_LOCKED",
    "IMAGE_SET_UPDATED",
    "WAITER_MODEL",
    "WaitSettings",
    "WaiterError",
    "wait_for",
    "waiter",
    "waiter_model",
]

IMAGE_SET_NOT_LOCKED = "ImageSetNotLocked"
IMAGE_SET_COPIED = "ImageSetCopied"
IMAGE_SET_UPDATED = "ImageSetUpdated"
IMAGE_SET_DELETED = "ImageSetDeleted"

_RETRY_BUSY = [
    {"state": "retry", "matcher": "path", "argument": "imageSetState", "expected": "LOCKED"},
    {"state": "retry", "matcher": "error", "expected": "ThrottlingException"},
    {"state": "retry", "matcher": "error", "expected": "InternalServerException"},
    {"state": "retry", "matcher": "error", "expected": "ConflictException"},
]


def _waiter(acceptors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"operation": "GetImageSet", "delay": 2, "maxAttempts": 450, "acceptors": acceptors + _RETRY_BUSY}


#: The waiter model (botocore's waiters-2 format) for GetImageSet.
WAITER_MODEL: dict[str, Any] = {
    "version": 2,
    "waiters": {
        IMAGE_SET_NOT_LOCKED: _waiter(
            [
                {"state": "success", "matcher": "path", "argument": "imageSetState", "expected": "ACTIVE"},
                {"state": "success", "matcher": "path", "argument": "imageSetState", "expected": "DELETED"},
            ]
        ),
        IMAGE_SET_COPIED: _waiter(
            [
                {
                    "state": "success",
                    "matcher": "path",
                    "argument": "imageSetState == 'ACTIVE' && imageSetWorkflowStatus == 'COPIED'",
                    "expected": True,
                },
                {
                    "state": "failure",
                    "matcher": "path",
                    "argument": "imageSetWorkflowStatus",
                    "expected": "COPY_FAILED",
                },
            ]
        ),
        IMAGE_SET_UPDATED: _waiter(
            [
                {
                    "state": "success",
                    "matcher": "path",
                    "argument": "imageSetState == 'ACTIVE' && "
                    "(imageSetWorkflowStatus == 'UPDATED' || imageSetWorkflowStatus == 'COPIED')",
                    "expected": True,
                },
                {
                    "state": "failure",
                    "matcher": "path",
                    "argument": "imageSetWorkflowStatus",
                    "expected": "UPDATE_FAILED",
                },
            ]
        ),
        IMAGE_SET_DELETED: _waiter(
            [
                {"state": "success", "matcher": "path", "argument": "imageSetState", "expected": "DELETED"},
                {"state": "success", "matcher": "error", "expected": "ResourceNotFoundException"},
            ]
        ),
    },
}

_MODEL: WaiterModel | None = None


def waiter_model() -> WaiterModel:
    """The ``botocore.waiter.WaiterModel`` of ``WAITER_MODEL`` (built once)."""
    global _MODEL
    if _MODEL is None:
        _MODEL = WaiterModel(WAITER_MODEL)
    return _MODEL


def waiter(client: Any, name: str) -> Waiter:
    """A botocore ``Waiter`` named ``name`` for a ``medical-imaging`` client (``create_waiter_with_client``)."""
    return create_waiter_with_client(name, waiter_model(), client)


@dataclass(frozen=True)
class WaitSettings:
    """How ``wait_for`` polls: every ``delay`` seconds (botocore's ``Delay``) for at most ``timeout`` seconds
    (``MaxAttempts`` = ceil(timeout / delay) + 1), sleeping with ``sleep`` and timing with ``clock``."""

    delay: float = 2.0
    timeout: float = 900.0
    sleep: Callable[[float], object] = time.sleep
    clock: Callable[[], float] = time.monotonic

    @property
    def max_attempts(self) -> int:
        return max(1, math.ceil(self.timeout / self.delay) + 1) if self.delay > 0 else 1_000_000

    def config(self) -> dict[str, float | int]:
        """The ``WaiterConfig`` botocore's ``Waiter.wait`` takes for these settings."""
        return {"Delay": self.delay, "MaxAttempts": self.max_attempts}


def wait_for(
    name: str,
    get_image_set: Callable[..., Mapping[str, Any]],
    settings: WaitSettings,
    **params: Any,
) -> dict[str, Any]:
    """Poll ``get_image_set(**params)`` (a GetImageSet method) until waiter ``name`` succeeds; return that answer.

    The acceptors are botocore's, compiled from ``WAITER_MODEL``; an answer no acceptor matches that is an error,
    a ``failure`` acceptor, or more than ``settings.timeout`` seconds of waiting raise ``WaiterError`` (its
    ``last_response`` is the last answer: a COPY_FAILED's ``message`` is there), exactly as ``Waiter.wait``.
    """
    config = waiter_model().get_waiter(name)
    method = NormalizedOperationMethod(cast(Any, get_image_set))
    deadline = settings.clock() + settings.timeout
    attempts = 0
    while True:
        response = dict(method(**params))
        attempts += 1
        state, explanation = "waiting", ""
        for acceptor in config.acceptors:
            if acceptor.matcher_func(response):
                state, explanation = acceptor.state, acceptor.explanation
                break
        else:
            if "Error" in response:
                error = response["Error"]
                raise WaiterError(
                    name=name,
                    reason=f"An error occurred ({error.get('Code', 'Unknown')}): {error.get('Message', 'Unknown')}",
                    last_response=cast(Any, response),
                )
        if state == "success":
            return response
        if state == "failure":
            reason = f"Waiter encountered a terminal failure state: {explanation}"
            raise WaiterError(name=name, reason=reason, last_response=cast(Any, response))
        if attempts >= settings.max_attempts or settings.clock() + settings.delay > deadline:
            raise WaiterError(name=name, reason="Max attempts exceeded", last_response=cast(Any, response))
        settings.sleep(settings.delay)
