"""The HealthImaging waiters of copy-and-promote procedures: botocore's waiter model format and acceptors, an
injected sleep and clock, failure states carrying AHI's message."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.waiter import Waiter

from curation.run.waiters import (
    IMAGE_SET_COPIED,
    IMAGE_SET_DELETED,
    IMAGE_SET_NOT_LOCKED,
    IMAGE_SET_UPDATED,
    WaiterError,
    WaitSettings,
    wait_for,
    waiter,
    waiter_model,
)


class Answers:
    """A GetImageSet that answers from a list (a ClientError raised for an error code)."""

    def __init__(self, *answers: dict[str, Any] | str) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **params: Any) -> dict[str, Any]:
        self.calls.append(params)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, str):
            raise ClientError({"Error": {"Code": answer, "Message": f"{answer} (test)"}}, "GetImageSet")
        return answer


def _locked(status: str) -> dict[str, Any]:
    return {"imageSetState": "LOCKED", "imageSetWorkflowStatus": status}


def _settings(clock: Any, timeout: float = 60) -> WaitSettings:
    return WaitSettings(delay=0.5, timeout=timeout, sleep=clock.sleep, clock=clock)


def test_the_model_is_botocores_format_and_has_the_four_waiters() -> None:
    model = waiter_model()
    assert model.version == 2
    assert set(model.waiter_names) == {IMAGE_SET_NOT_LOCKED, IMAGE_SET_COPIED, IMAGE_SET_UPDATED, IMAGE_SET_DELETED}
    assert {model.get_waiter(name).operation for name in model.waiter_names} == {"GetImageSet"}


def test_a_copy_is_waited_out_through_locked_and_throttling(clock: Any) -> None:
    answers = Answers(
        _locked("COPYING"),
        "ThrottlingException",
        _locked("COPYING"),
        {"imageSetState": "ACTIVE", "imageSetWorkflowStatus": "COPIED", "versionId": "1"},
    )
    info = wait_for(IMAGE_SET_COPIED, answers, _settings(clock), datastoreId="d", imageSetId="i")
    assert info["versionId"] == "1"
    assert clock.sleeps == [0.5, 0.5, 0.5]
    assert answers.calls[0] == {"datastoreId": "d", "imageSetId": "i"}


def test_copy_failed_is_a_failure_carrying_the_message(clock: Any) -> None:
    failed = {"imageSetState": "ACTIVE", "imageSetWorkflowStatus": "COPY_FAILED", "message": "INVALID_REQUEST: x"}
    with pytest.raises(WaiterError) as caught:
        wait_for(IMAGE_SET_COPIED, Answers(_locked("COPYING"), failed), _settings(clock), imageSetId="i")
    assert caught.value.last_response["message"] == "INVALID_REQUEST: x"
    with pytest.raises(WaiterError):
        wait_for(IMAGE_SET_UPDATED, Answers({**failed, "imageSetWorkflowStatus": "UPDATE_FAILED"}), _settings(clock))


def test_a_deleted_image_set_and_an_unknown_one_are_deleted(clock: Any) -> None:
    assert wait_for(IMAGE_SET_DELETED, Answers({"imageSetState": "DELETED"}), _settings(clock))
    gone = wait_for(IMAGE_SET_DELETED, Answers("ResourceNotFoundException"), _settings(clock))
    assert gone["Error"]["Code"] == "ResourceNotFoundException"


def test_an_unexpected_error_and_the_timeout_raise(clock: Any) -> None:
    with pytest.raises(WaiterError, match="AccessDeniedException"):
        wait_for(IMAGE_SET_NOT_LOCKED, Answers("AccessDeniedException"), _settings(clock))
    with pytest.raises(WaiterError, match="Max attempts exceeded"):
        wait_for(IMAGE_SET_NOT_LOCKED, Answers(_locked("UPDATING")), _settings(clock, timeout=2))
    assert clock.now - 1000.0 <= 2.0


def test_the_botocore_waiter_runs_against_the_embedded_service(local_client: Any) -> None:
    store = local_client.meta.local_service.store
    report = store.import_documents([_document()])
    wait = waiter(local_client, IMAGE_SET_NOT_LOCKED)
    assert isinstance(wait, Waiter)
    wait.wait(
        datastoreId=report.datastore_id, imageSetId=report.created[0], WaiterConfig={"Delay": 0, "MaxAttempts": 2}
    )


def _document() -> dict[str, Any]:
    from pathlib import Path

    from curation.model.document import read_document

    document = read_document(str(Path(__file__).parents[1] / "data" / "reference" / "ct-2025-htj2k-1-instance.json"))
    document.pop("ImageSetID", None)
    return document
