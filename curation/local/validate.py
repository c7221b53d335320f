"""Server-side validation of operation parameters against botocore's ``medical-imaging`` model.

The service checks what a client may skip (patterns, maxima, unknown members, unions), so the store validates
every call the way AHI does and answers a ``ValidationException`` in AWS's wording.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from functools import cache
from typing import Any

from botocore.model import ListShape, MapShape, OperationModel, Shape, StringShape, StructureShape
from botocore.utils import parse_timestamp

from curation.model.errors import AHIError
from curation.model.service import service_model


def operation_model(name: str) -> OperationModel:
    """The model of one operation; an unknown name is a ValidationException."""
    try:
        return service_model().operation_model(name)
    except Exception as exc:  # botocore raises OperationNotFoundError
        raise AHIError("ValidationException", f"Unknown operation {name!r}") from exc


@cache
def _pattern(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern.replace(r"\p{ASCII}", r"[\x00-\x7f]"))
    except re.error:
        return None  # not a Python regex: not checked


def bad_value(path: str, value: Any, constraint: str) -> str:
    """One problem in AWS's wording: ``Value '...' at 'path' failed to satisfy constraint: ...``."""
    if isinstance(value, bytes | bytearray):
        shown = f"<{len(value)} bytes>"
    elif isinstance(value, dict | list):
        shown = type(value).__name__
    else:
        shown = str(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"Value '{shown}' at '{path}' failed to satisfy constraint: {constraint}"


def validation_error(messages: list[str]) -> AHIError:
    """A ValidationException listing every problem, as AWS answers (``2 validation errors detected: ...``)."""
    count = len(messages)
    noun = "error" if count == 1 else "errors"
    return AHIError("ValidationException", f"{count} validation {noun} detected: " + "; ".join(messages))


def _fail(path: str, value: Any, constraint: str) -> AHIError:
    return validation_error([bad_value(path, value, constraint)])


def validate(operation: str, params: Any) -> dict[str, Any]:
    """Check ``params`` against the operation's input shape; return them (a dict) or raise one
    ValidationException listing every problem: required members, unknown members, one member per union,
    lengths, ranges, enums, patterns (matched in full) and timestamps, all as the model states them."""
    model = operation_model(operation)
    if params is None:
        params = {}
    if model.input_shape is None:
        if params:
            raise _fail("", params, f"{operation} takes no parameters")
        return {}
    problems: list[str] = []
    _check(model.input_shape, params, "", problems)
    if problems:
        raise validation_error(problems)
    return params


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _check(shape: Shape, value: Any, path: str, problems: list[str]) -> None:
    """Check one value against its shape, adding every problem to ``problems`` (botocore's ParamValidator
    style: one small checker per shape type)."""
    checker = _CHECKERS.get(shape.type_name)
    if checker is not None:
        checker(shape, value, path, path or shape.name, problems)


def _check_structure(shape: StructureShape, value: Any, path: str, label: str, problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(bad_value(label, value, "Member must be an object"))
        return
    for name in sorted(set(value) - set(shape.members)):
        problems.append(bad_value(_join(path, name), value[name], "Member is not known"))
    for name in shape.required_members:
        if value.get(name) is None:
            problems.append(bad_value(_join(path, name), "null", "Member must not be null"))
    present = [name for name, item in value.items() if item is not None and name in shape.members]
    if shape.is_tagged_union and len(present) != 1:
        problems.append(
            bad_value(label, value, f"Exactly one member must be set, got {len(present)} ({', '.join(present)})")
        )
    for name in present:
        _check(shape.members[name], value[name], _join(path, name), problems)


def _check_list(shape: ListShape, value: Any, path: str, label: str, problems: list[str]) -> None:
    if not isinstance(value, list | tuple):
        problems.append(bad_value(label, value, "Member must be a list"))
        return
    _length(len(value), shape.metadata, label, value, problems)
    for index, item in enumerate(value):
        _check(shape.member, item, f"{label}.{index + 1}", problems)


def _check_map(shape: MapShape, value: Any, path: str, label: str, problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(bad_value(label, value, "Member must be a map"))
        return
    _length(len(value), shape.metadata, label, value, problems)
    for key, item in value.items():
        _check(shape.key, key, f"{label}.key", problems)
        _check(shape.value, item, f"{label}.{key}", problems)


def _check_string(shape: StringShape, value: Any, path: str, label: str, problems: list[str]) -> None:
    if not isinstance(value, str):
        problems.append(bad_value(label, value, "Member must be a string"))
        return
    _length(len(value), shape.metadata, label, value, problems)
    if shape.enum and value not in shape.enum:
        problems.append(bad_value(label, value, f"Member must satisfy enum value set: [{', '.join(shape.enum)}]"))
    pattern = shape.metadata.get("pattern")
    compiled = _pattern(pattern) if pattern else None
    if compiled is not None and not compiled.fullmatch(value):
        problems.append(bad_value(label, value, f"Member must satisfy regular expression pattern: {pattern}"))


def _check_blob(shape: Shape, value: Any, path: str, label: str, problems: list[str]) -> None:
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        _length(len(value), shape.metadata, label, value, problems)
    elif not hasattr(value, "read"):
        problems.append(bad_value(label, value, "Member must be a blob"))


def _check_boolean(shape: Shape, value: Any, path: str, label: str, problems: list[str]) -> None:
    if not isinstance(value, bool):
        problems.append(bad_value(label, value, "Member must be a boolean"))


def _check_number(shape: Shape, value: Any, path: str, label: str, problems: list[str]) -> None:
    meta = shape.metadata
    integral = shape.type_name in ("integer", "long")
    if isinstance(value, bool) or not isinstance(value, int if integral else int | float):
        problems.append(bad_value(label, value, f"Member must be a{'n integer' if integral else ' number'}"))
        return
    if "min" in meta and value < meta["min"]:
        problems.append(bad_value(label, value, f"Member must have value greater than or equal to {meta['min']}"))
    if "max" in meta and value > meta["max"]:
        problems.append(bad_value(label, value, f"Member must have value less than or equal to {meta['max']}"))


def _check_timestamp(shape: Shape, value: Any, path: str, label: str, problems: list[str]) -> None:
    try:
        to_datetime(value)
    except (ValueError, TypeError):
        problems.append(bad_value(label, value, "Member must be a timestamp"))


_CHECKERS: dict[str, Callable[..., None]] = {
    "structure": _check_structure,
    "list": _check_list,
    "map": _check_map,
    "string": _check_string,
    "blob": _check_blob,
    "boolean": _check_boolean,
    "integer": _check_number,
    "long": _check_number,
    "float": _check_number,
    "double": _check_number,
    "timestamp": _check_timestamp,
}


def _length(length: int, meta: dict[str, Any], label: str, value: Any, problems: list[str]) -> None:
    if "min" in meta and length < meta["min"]:
        problems.append(bad_value(label, value, f"Member must have length greater than or equal to {meta['min']}"))
    if "max" in meta and length > meta["max"]:
        problems.append(bad_value(label, value, f"Member must have length less than or equal to {meta['max']}"))


def to_datetime(value: Any) -> dt.datetime:
    """A timestamp (datetime, epoch seconds, or ISO 8601 / RFC 822 text) as a tz-aware UTC datetime.

    The one timestamp parser of the embedded service (parameters, wire values, search filters); botocore's
    ``parse_timestamp`` reads the text forms. Raises ValueError (or TypeError for a value of another kind).
    """
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"not a timestamp: {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("timestamp must be finite")
    try:
        if not isinstance(value, str):
            return dt.datetime.fromtimestamp(value, dt.UTC)
        return parse_timestamp(value).astimezone(dt.UTC)
    except OverflowError as exc:
        raise ValueError(f"timestamp out of range: {value!r}") from exc
