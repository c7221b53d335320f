"""AHI's errors as one exception type, shared by the update semantics and the embedded service.

The code is the botocore error shape name (``ValidationException``, ``ResourceNotFoundException`` ...);
the HTTP status comes from botocore's ``medical-imaging`` service model, never from a hand-written table.
"""

from __future__ import annotations

from functools import cache


@cache
def _error_statuses() -> dict[str, int]:
    from curation.model.service import service_model

    model = service_model()
    return {shape.name: shape.metadata["error"]["httpStatusCode"] for shape in model.error_shapes}


class AHIError(Exception):
    """An error exactly as AHI answers it: a code (error shape name) and a message."""

    def __init__(self, code: str, message: str) -> None:
        if code not in _error_statuses():
            raise ValueError(f"{code!r} is not an error of the medical-imaging service model")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status the service model gives this error."""
        return _error_statuses()[self.code]
