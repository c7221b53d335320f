"""AHI's REST-JSON wire format, read from botocore's ``medical-imaging`` service model (no hand-written routes).

The reverse of botocore's rest-json serializer and parser: :func:`parse_request` turns an HTTP request
(method, path, query string, headers, body) into ``(operation_name, params)`` with botocore's member names,
:func:`serialize_response` turns an operation's output dict into ``(status, headers, body)``, and
:func:`serialize_error` renders an :class:`~curation.model.errors.AHIError` as AWS rest-json errors look
(``x-amzn-ErrorType`` header and ``{"message": ...}`` body), so botocore raises a ``ClientError`` whose
``Error.Code`` and ``Error.Message`` are AHI's. Both transports (in-process and HTTP) go through
:func:`handle_http`, so they share every line of this module.

Values: streaming blobs and JSON blobs are ``bytes`` (base64 inside JSON bodies), timestamps are tz-aware
UTC datetimes (epoch seconds in JSON bodies, ISO 8601 in query strings, RFC 822 in headers, as rest-json
does), booleans in query strings and headers are ``true``/``false``. Parameters are validated against the
input shape (required members, unions, lengths, ranges, enums, patterns matched in full), because any SDK
may skip checks that botocore's client does not make either (maxima, patterns).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from functools import cache
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote

import orjson
from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape

from curation.local.validate import bad_value, to_datetime, validate, validation_error
from curation.model.errors import AHIError
from curation.model.service import SERVICE_NAME, service_model

logger = logging.getLogger(__name__)


class WireError(Exception):
    """A request that names no operation of the model (unknown route or method): AWS's UnknownOperation."""

    def __init__(self, http_status: int, message: str, code: str = "UnknownOperationException") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status


class Handler(Protocol):
    """Whatever answers operations for the wire: a :class:`~curation.local.service.Service` or a test fake."""

    def handle(self, operation_name: str, params: dict[str, Any]) -> dict[str, Any]: ...


# --------------------------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class Route:
    """One operation's ``requestUri`` template compiled to a regular expression over the raw (encoded) path."""

    operation: OperationModel
    method: str
    regex: re.Pattern[str]
    labels: tuple[tuple[str, str], ...]  # (regex group, URI label name)
    fixed_query: tuple[tuple[str, str], ...]  # literal query members of the template ("/x?tagging")
    literal_chars: int

    @classmethod
    def from_operation(cls, operation: OperationModel) -> Route:
        template = operation.http["requestUri"]
        path, _, query = template.partition("?")
        pieces: list[str] = []
        labels: list[tuple[str, str]] = []
        literal = 0
        for index, part in enumerate(re.split(r"(\{[^}]+\})", path)):
            if index % 2 == 0:
                pieces.append(re.escape(part))
                literal += len(part)
                continue
            name = part[1:-1]
            greedy = name.endswith("+")
            group = f"g{len(labels)}"
            labels.append((group, name.rstrip("+")))
            pieces.append(f"(?P<{group}>.+)" if greedy else f"(?P<{group}>[^/]+)")
        fixed = tuple(parse_qsl(query, keep_blank_values=True)) if query else ()
        return cls(
            operation=operation,
            method=operation.http.get("method", "POST").upper(),
            regex=re.compile("".join(pieces)),
            labels=tuple(labels),
            fixed_query=fixed,
            literal_chars=literal,
        )

    def match(self, path: str, query: Mapping[str, list[str]]) -> dict[str, str] | None:
        """The URI label values (percent-decoded) when ``path`` fits this route, else None."""
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        if any(key not in query or (value and value not in query[key]) for key, value in self.fixed_query):
            return None
        return {name: unquote(found.group(group)) for group, name in self.labels}


@cache
def routes() -> tuple[Route, ...]:
    """Every operation's route, most specific (longest literal text) first."""
    model = service_model()
    built = [Route.from_operation(model.operation_model(name)) for name in model.operation_names]
    return tuple(sorted(built, key=lambda route: (-route.literal_chars, -len(route.fixed_query))))


def match_route(method: str, path: str, query: Mapping[str, list[str]]) -> tuple[Route, dict[str, str]]:
    """The route a request names and its URI labels; WireError (404 or 405) when none does."""
    method = method.upper()
    path_matched = False
    for route in routes():
        labels = route.match(path, query)
        if labels is None:
            continue
        if route.method == method:
            return route, labels
        path_matched = True
    if path_matched:
        raise WireError(405, f"Method {method} is not allowed on {path}")
    raise WireError(404, f"No operation of {SERVICE_NAME} matches {method} {path}")


# ------------------------------------------------------------------------------------ request parsing


class _ParseError(Exception):
    def __init__(self, path: str, value: Any, constraint: str) -> None:
        super().__init__(bad_value(path, value, constraint))


def _text_value(shape: Shape, text: str, path: str) -> Any:
    """A URI label, query or header value (text) as the Python value of ``shape``."""
    kind = shape.type_name
    try:
        if kind == "string":
            return text
        if kind == "boolean":
            if text not in ("true", "false"):
                raise ValueError(text)
            return text == "true"
        if kind in ("integer", "long"):
            return int(text)
        if kind in ("float", "double"):
            return float(text)
        if kind == "timestamp":
            return to_datetime(float(text) if re.fullmatch(r"-?\d+(\.\d+)?", text) else text)
        if kind == "blob":
            return base64.b64decode(text, validate=True)
    except (ValueError, TypeError, OverflowError, binascii.Error) as exc:
        raise _ParseError(path, text, f"Member must be of type {kind}") from exc
    raise _ParseError(path, text, f"Members of type {kind} cannot be sent in the URI, query or headers")


def _json_value(shape: Shape, value: Any, path: str) -> Any:
    """A JSON-decoded body value as the Python value of ``shape`` (unknown structure members dropped)."""
    if value is None:
        return None
    reader = _JSON_READERS.get(shape.type_name)
    return value if reader is None else reader(shape, value, path)  # document types pass through


def _json_structure(shape: StructureShape, value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _ParseError(path, value, "Member must be an object")
    parsed = {}
    for name, member in shape.members.items():
        key = member.serialization.get("name", name)
        if key in value and value[key] is not None:
            parsed[name] = _json_value(member, value[key], f"{path}.{name}" if path else name)
    return parsed


def _json_list(shape: ListShape, value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _ParseError(path, value, "Member must be a list")
    return [_json_value(shape.member, item, f"{path}.{index + 1}") for index, item in enumerate(value)]


def _json_map(shape: MapShape, value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _ParseError(path, value, "Member must be a map")
    return {key: _json_value(shape.value, item, f"{path}.{key}") for key, item in value.items()}


def _json_of_type(kind: type | tuple[type, ...], what: str) -> Any:
    def read(shape: Shape, value: Any, path: str) -> Any:
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise _ParseError(path, value, f"Member must be {what}")
        return value

    return read


def _json_float(shape: Shape, value: Any, path: str) -> float:
    if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _ParseError(path, value, "Member must be a number")
    return float(value)


def _json_timestamp(shape: Shape, value: Any, path: str) -> dt.datetime:
    try:
        return to_datetime(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _ParseError(path, value, "Member must be a timestamp (epoch seconds)") from exc


def _json_blob(shape: Shape, value: Any, path: str) -> bytes:
    if not isinstance(value, str):
        raise _ParseError(path, value, "Member must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _ParseError(path, value, "Member must be base64-encoded") from exc


_JSON_READERS: dict[str, Any] = {
    "structure": _json_structure,
    "list": _json_list,
    "map": _json_map,
    "string": _json_of_type(str, "a string"),
    "boolean": _json_of_type(bool, "a boolean"),
    "integer": _json_of_type(int, "an integer"),
    "long": _json_of_type(int, "an integer"),
    "float": _json_float,
    "double": _json_float,
    "timestamp": _json_timestamp,
    "blob": _json_blob,
}


def _decode_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise AHIError("ValidationException", f"Could not parse request body into json: {exc}") from exc


def _lower_headers(headers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    lowered: dict[str, str] = {}
    for key, value in items:
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        lowered[str(key).lower()] = str(value)
    return lowered


def parse_query(query: str | Mapping[str, Any] | None) -> dict[str, list[str]]:
    """A query string (or mapping) as ``{name: [values]}``."""
    if not query:
        return {}
    if isinstance(query, str):
        pairs: Iterable[tuple[str, str]] = parse_qsl(query, keep_blank_values=True)
    else:
        pairs = (
            (key, item)
            for key, value in query.items()
            for item in (value if isinstance(value, list | tuple) else [value])
        )
    result: dict[str, list[str]] = {}
    for key, value in pairs:
        result.setdefault(key, []).append(value)
    return result


def _body_bytes(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if hasattr(body, "read"):
        data = body.read()
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return b"".join(body)


def parse_request(
    method: str,
    url_path: str,
    query: str | Mapping[str, Any] | None = None,
    headers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
    body: bytes | str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Reverse botocore's rest-json serializer: ``(operation_name, params)`` of a raw HTTP request.

    ``url_path`` is the raw (percent-encoded) path, ``query`` the raw query string (or a mapping). Raises
    :class:`WireError` for an unknown route and ``AHIError("ValidationException")`` for a request that does
    not fit the operation's input shape.
    """
    query_values = parse_query(query)
    route, labels = match_route(method, url_path, query_values)
    operation = route.operation
    shape = operation.input_shape
    params: dict[str, Any] = {}
    if shape is None:
        return operation.name, params
    header_values = _lower_headers(headers)
    raw_body = _body_bytes(body)
    problems: list[str] = []
    claimed_query = {name for name, _ in route.fixed_query}
    body_members: dict[str, Shape] = {}
    deferred_query_map: list[str] = []
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        wire_name = member.serialization.get("name", name)
        if location is None:
            body_members[name] = member
            continue
        if location == "querystring":
            if member.type_name == "map":
                deferred_query_map.append(name)
                continue
            claimed_query.add(wire_name)
        try:
            value = _located(member, name, wire_name, labels, query_values, header_values)
        except _ParseError as exc:
            problems.append(str(exc))
            continue
        if value is not _MISSING:
            params[name] = value
    for name in deferred_query_map:
        leftovers = {key: values[-1] for key, values in query_values.items() if key not in claimed_query}
        if leftovers:
            params[name] = leftovers
    if problems:
        raise validation_error(problems)
    try:
        params.update(_parse_body(shape, body_members, raw_body))
    except _ParseError as exc:
        raise validation_error([str(exc)]) from exc
    validate(operation.name, params)
    return operation.name, params


_MISSING = object()


def _located(
    member: Shape,
    name: str,
    wire_name: str,
    labels: Mapping[str, str],
    query_values: Mapping[str, list[str]],
    header_values: Mapping[str, str],
) -> Any:
    """The value of a member sent in the URI, the query string or the headers (``_MISSING`` when absent)."""
    location = member.serialization.get("location")
    if location == "uri":
        return _text_value(member, labels[wire_name], name) if wire_name in labels else _MISSING
    if location == "querystring":
        if wire_name not in query_values:
            return _MISSING
        values = query_values[wire_name]
        if isinstance(member, ListShape):
            return [_text_value(member.member, text, name) for text in values]
        return _text_value(member, values[-1], name)
    if location == "header":
        key = wire_name.lower()
        return _header_value(member, header_values[key], name) if key in header_values else _MISSING
    if location == "headers":
        prefix = wire_name.lower()
        found = {key[len(prefix) :]: value for key, value in header_values.items() if key.startswith(prefix)}
        return found or _MISSING
    return _MISSING  # statusCode


def _header_value(shape: Shape, text: str, path: str) -> Any:
    if isinstance(shape, ListShape):
        return [_text_value(shape.member, item.strip(), path) for item in text.split(",") if item.strip()]
    if shape.type_name == "string" and shape.serialization.get("jsonvalue"):
        try:
            return orjson.loads(base64.b64decode(text))
        except (ValueError, binascii.Error) as exc:
            raise _ParseError(path, text, "Member must be base64-encoded JSON") from exc
    return _text_value(shape, text, path)


def _parse_body(shape: StructureShape, body_members: dict[str, Shape], raw: bytes) -> dict[str, Any]:
    payload_name = shape.serialization.get("payload")
    if payload_name is not None:
        member = shape.members[payload_name]
        if member.type_name == "blob":
            return {payload_name: raw} if raw or payload_name in shape.required_members else {}
        if member.type_name == "string":
            try:
                return {payload_name: raw.decode("utf-8")} if raw else {}
            except UnicodeDecodeError as exc:
                raise _ParseError(payload_name, raw, "Member must be UTF-8 text") from exc
        if not raw.strip():
            return {}
        value = _json_value(member, _decode_json(raw), payload_name)
        if value == {} and payload_name not in shape.required_members:
            return {}  # botocore sends "{}" for an absent structure payload
        return {payload_name: value} if value is not None else {}
    if not body_members or not raw.strip():
        return {}
    document = _decode_json(raw)
    if not isinstance(document, dict):
        raise _ParseError("body", document, "Request body must be a JSON object")
    parsed = {}
    for name, member in body_members.items():
        key = member.serialization.get("name", name)
        if document.get(key) is not None:
            parsed[name] = _json_value(member, document[key], name)
    return parsed


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# ------------------------------------------------------------------------------- response serializing


def _epoch(value: Any) -> int | float:
    delta = to_datetime(value) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros // 1_000_000 if micros % 1_000_000 == 0 else micros / 1_000_000


def _drop_unknown(value: Mapping[str, Any], shape: StructureShape, path: str) -> None:
    unknown = sorted(set(value) - set(shape.members))
    if unknown:
        logger.warning("%s: %s are not members of %s; not sent", path or shape.name, unknown, shape.name)


def _output_json(shape: Shape, value: Any, path: str) -> Any:
    """A Python output value as the JSON value of ``shape`` (members the model does not know are dropped)."""
    kind = shape.type_name
    if isinstance(shape, StructureShape):
        if not isinstance(value, Mapping):
            raise ValueError(f"{path or shape.name}: expected a dict for {shape.name}, got {type(value).__name__}")
        _drop_unknown(value, shape, path)
        return {
            member.serialization.get("name", name): _output_json(member, value[name], _join(path, name))
            for name, member in shape.members.items()
            if value.get(name) is not None
        }
    if isinstance(shape, ListShape):
        return [_output_json(shape.member, item, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(shape, MapShape):
        return {str(key): _output_json(shape.value, item, f"{path}.{key}") for key, item in value.items()}
    if kind == "timestamp":
        return _epoch(value)
    if kind == "blob":
        if isinstance(value, str):
            value = value.encode("utf-8")
        return base64.b64encode(bytes(value)).decode("ascii")
    if kind == "boolean":
        return bool(value)
    if kind in ("integer", "long"):
        return int(value)
    if kind in ("float", "double"):
        return float(value)
    if kind == "string":
        return str(value)
    return value


def _header_text(shape: Shape, value: Any) -> str:
    kind = shape.type_name
    if kind == "timestamp":
        timestamp_format = shape.serialization.get("timestampFormat", "rfc822")
        if timestamp_format == "iso8601":
            return to_datetime(value).strftime("%Y-%m-%dT%H:%M:%SZ")
        if timestamp_format == "unixTimestamp":
            return str(_epoch(value))
        return formatdate(int(to_datetime(value).timestamp()), usegmt=True)
    if kind == "boolean":
        return "true" if value else "false"
    if isinstance(shape, ListShape):
        return ",".join(_header_text(shape.member, item) for item in value)
    if shape.serialization.get("jsonvalue"):
        return base64.b64encode(orjson.dumps(value)).decode("ascii")
    return str(value)


def _blob_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8")
    if hasattr(value, "read"):
        return _body_bytes(value)
    return bytes(value)


def _request_id() -> str:
    return str(uuid.uuid4())


def serialize_response(operation_name: str, output: Mapping[str, Any] | None) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)`` of an operation's output, laid out as the output shape says.

    Header members become headers, a streaming payload is the raw body (GetImageSetMetadata's gzip blob is
    sent untouched with ``Content-Encoding: gzip``, which botocore does not undo), other members form the JSON
    body with timestamps as epoch seconds and blobs as base64. Members the model does not know are dropped
    (with a warning: AHI never sends them); a value of the wrong kind raises ValueError (a backend bug,
    answered as InternalServerException by :func:`handle_http`).
    """
    operation = service_model().operation_model(operation_name)
    status = int(operation.http.get("responseCode", 200))
    headers: dict[str, str] = {"x-amzn-RequestId": _request_id()}
    output = dict(output or {})
    shape = operation.output_shape
    if shape is None:
        body = b"{}"
        headers["Content-Type"] = "application/json"
        headers["Content-Length"] = str(len(body))
        return status, headers, body
    _drop_unknown(output, shape, operation_name)
    body_values: dict[str, Any] = {}
    for name, member in shape.members.items():
        value = output.get(name)
        if value is None:
            continue
        location = member.serialization.get("location")
        wire_name = member.serialization.get("name", name)
        if location == "header":
            headers[wire_name] = _header_text(member, value)
        elif location == "headers":
            for key, item in value.items():
                headers[f"{wire_name}{key}"] = str(item)
        elif location == "statusCode":
            status = int(value)
        else:
            body_values[name] = value
    payload_name = shape.serialization.get("payload")
    if payload_name is not None:
        member = shape.members[payload_name]
        value = body_values.get(payload_name)
        if member.type_name in ("blob", "string"):
            body = _blob_bytes(value)
            headers.setdefault("Content-Type", "application/octet-stream")
        else:
            body = orjson.dumps(_output_json(member, value, payload_name)) if value is not None else b"{}"
            headers.setdefault("Content-Type", "application/json")
    else:
        body = orjson.dumps(_output_json(shape, body_values, ""))
        headers.setdefault("Content-Type", "application/json")
    headers["Content-Length"] = str(len(body))
    return status, headers, body


def serialize_error(error: AHIError | WireError) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)`` of an error the way AWS rest-json services send it."""
    body = orjson.dumps({"message": error.message})
    headers = {
        "x-amzn-RequestId": _request_id(),
        "x-amzn-ErrorType": error.code,
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
    }
    return int(error.http_status), headers, body


def handle_http(
    backend: Handler,
    method: str,
    url_path: str,
    query: str | Mapping[str, Any] | None,
    headers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None,
    body: bytes | str | None,
) -> tuple[int, dict[str, str], bytes]:
    """Answer one HTTP request with ``backend``: parse, handle, serialize; every failure becomes an AWS error."""
    operation_name = "?"
    try:
        operation_name, params = parse_request(method, url_path, query, headers, body)
        output = backend.handle(operation_name, params)
        return serialize_response(operation_name, output)
    except (AHIError, WireError) as error:
        return serialize_error(error)
    except Exception as exc:
        logger.exception("%s %s (%s) failed", method, url_path, operation_name)
        return serialize_error(AHIError("InternalServerException", f"Internal error in {operation_name}: {exc!r}"))
