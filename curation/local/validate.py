"""Server-side validation of operation parameters against botocore's ``medical-imaging`` model.

The service checks what a client may skip (patterns, maxima, unknown members, unions), so the store validates
every call the way AHI does and answers a ``ValidationException`` in AWS's wording.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import cache
from typing import Any

from botocore.model import OperationModel, ServiceModel, Shape

from curation.errors import AHIError


@cache
def service_model() -> ServiceModel:
    """The ``medical-imaging`` service model shipped with botocore."""
    import botocore.session

    return botocore.session.get_session().get_service_model("medical-imaging")


def operation_model(name: str) -> OperationModel:
    """The model of one operation; an unknown name is a ValidationException."""
    try:
        return service_model().operation_model(name)
    except Exception as exc:  # botocore raises OperationNotFoundError
        raise AHIError("ValidationException", f"Unknown operation {name!r}") from exc


@cache
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern.replace(r"\p{ASCII}", r"[\x00-\x7f]"))


def _fail(path: str, value: Any, constraint: str) -> AHIError:
    shown = value if isinstance(value, (str, int, float, bool)) else type(value).__name__
    if isinstance(shown, str) and len(shown) > 64:
        shown = shown[:64] + "..."
    return AHIError(
        "ValidationException",
        f"1 validation error detected: Value '{shown}' at '{path}' failed to satisfy constraint: {constraint}",
    )


def validate(operation: str, params: Any) -> dict[str, Any]:
    """Check ``params`` against the operation's input shape; return them (a dict) or raise ValidationException."""
    model = operation_model(operation)
    if params is None:
        params = {}
    if model.input_shape is None:
        if params:
            raise _fail("", params, f"{operation} takes no parameters")
        return {}
    _check(model.input_shape, params, "")
    return params


def _check(shape: Shape, value: Any, path: str) -> None:
    kind = shape.type_name
    meta = shape.metadata
    label = path or "input"
    if kind == "structure":
        if not isinstance(value, dict):
            raise _fail(label, value, "Member must be an object")
        unknown = sorted(set(value) - set(shape.members))
        if unknown:
            raise _fail(f"{path}.{unknown[0]}" if path else unknown[0], value[unknown[0]], "Member is not known")
        present = [k for k, v in value.items() if v is not None]
        for name in shape.required_members:
            if value.get(name) is None:
                raise _fail(f"{path}.{name}" if path else name, "null", "Member must not be null")
        if shape.metadata.get("union") and len(present) != 1:
            raise AHIError(
                "ValidationException",
                f"Exactly one member of {label} must be set, not {len(present)} ({', '.join(sorted(present))})",
            )
        for name in present:
            _check(shape.members[name], value[name], f"{path}.{name}" if path else name)
    elif kind == "list":
        if not isinstance(value, (list, tuple)):
            raise _fail(label, value, "Member must be a list")
        _length(len(value), meta, label, value)
        for index, item in enumerate(value):
            _check(shape.member, item, f"{label}.{index + 1}")
    elif kind == "map":
        if not isinstance(value, dict):
            raise _fail(label, value, "Member must be a map")
        for key, item in value.items():
            _check(shape.key, key, f"{label}.key")
            _check(shape.value, item, f"{label}.{key}")
    elif kind == "string":
        if not isinstance(value, str):
            raise _fail(label, value, "Member must be a string")
        _length(len(value), meta, label, value)
        if shape.enum and value not in shape.enum:
            raise _fail(label, value, f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
        if "pattern" in meta and not _pattern(meta["pattern"]).fullmatch(value):
            raise _fail(label, value, f"Member must satisfy regular expression pattern: {meta['pattern']}")
    elif kind == "blob":
        if isinstance(value, str):
            value = value.encode()
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise _fail(label, value, "Member must be a blob")
        _length(len(value), meta, label, value)
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise _fail(label, value, "Member must be a boolean")
    elif kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(label, value, "Member must be an integer")
        if "min" in meta and value < meta["min"]:
            raise _fail(label, value, f"Member must have value greater than or equal to {meta['min']}")
        if "max" in meta and value > meta["max"]:
            raise _fail(label, value, f"Member must have value less than or equal to {meta['max']}")
    elif kind == "timestamp":
        to_datetime(value, label)


def _length(length: int, meta: dict[str, Any], label: str, value: Any) -> None:
    if "min" in meta and length < meta["min"]:
        raise _fail(label, value, f"Member must have length greater than or equal to {meta['min']}")
    if "max" in meta and length > meta["max"]:
        raise _fail(label, value, f"Member must have length less than or equal to {meta['max']}")


def to_datetime(value: Any, label: str = "timestamp") -> dt.datetime:
    """A timestamp parameter (datetime, epoch seconds or ISO 8601 text) as a tz-aware UTC datetime."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        from botocore.utils import parse_timestamp

        try:
            return parse_timestamp(value).astimezone(dt.UTC)
        except (ValueError, TypeError, OverflowError) as exc:
            raise _fail(label, value, "Member must be a timestamp") from exc
    raise _fail(label, value, "Member must be a timestamp")
