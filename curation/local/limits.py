"""The resource limits of the embedded HTTP endpoint: body sizes the service model allows, timeouts, workers.

A request body can never be larger than what its operation's input shape can hold: the model gives maxima for
the members AHI bounds (``updatableAttributes`` 30,000 bytes as base64 in JSON, ``copiableAttributes``
260,000 characters, two search filters of two values ...). :func:`max_body_bytes` derives each operation's
bound from the model, assuming the worst JSON spelling (every character escaped as ``\\uXXXX``), and the
server refuses a larger body before reading it (413), so a client cannot make the server hold more.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from botocore.model import ListShape, MapShape, Shape, StructureShape

from curation.model.service import service_model

#: Bound of a body without bounded members (every operation accepts at least this much: ``{}`` and padding).
FLOOR_BYTES = 16 * 1024
#: What an unbounded member of a shape is allowed (none of AHI's body members is unbounded *and* large).
_UNBOUNDED_STRING = 2048
_UNBOUNDED_ITEMS = 200
_ESCAPED = 6  # a JSON string character may be written as \\uXXXX


def _bound(shape: Shape, depth: int = 0) -> int:
    kind = shape.type_name
    meta = shape.metadata
    if depth > 12:
        return 0
    if isinstance(shape, StructureShape):
        members = shape.members.items()
        return 2 + sum(len(name) + 4 + _bound(member, depth + 1) for name, member in members)
    if isinstance(shape, ListShape):
        return 2 + int(meta.get("max", _UNBOUNDED_ITEMS)) * (1 + _bound(shape.member, depth + 1))
    if isinstance(shape, MapShape):
        items = int(meta.get("max", _UNBOUNDED_ITEMS))
        return 2 + items * (4 + _bound(shape.key, depth + 1) + _bound(shape.value, depth + 1))
    if kind == "blob":
        return 2 + (int(meta.get("max", _UNBOUNDED_STRING)) * 4 + 2) // 3
    if kind == "string":
        return 2 + _ESCAPED * int(meta.get("max", _UNBOUNDED_STRING))
    return 32  # numbers, booleans, timestamps


@cache
def max_body_bytes(operation_name: str) -> int:
    """The largest request body an operation's input shape allows (at least :data:`FLOOR_BYTES`)."""
    shape = service_model().operation_model(operation_name).input_shape
    if shape is None:
        return FLOOR_BYTES
    payload = shape.serialization.get("payload")
    body_members = [
        member
        for name, member in shape.members.items()
        if member.serialization.get("location") is None and (payload is None or name == payload)
    ]
    return max(FLOOR_BYTES, sum(_bound(member) + 64 for member in body_members))


@dataclass(frozen=True)
class ServerLimits:
    """Resource bounds of one server.

    ``workers`` threads answer requests; at most ``connections`` are open at once (idle kept-alive ones wait
    in a selector and hold no thread; one more is answered 503 and closed); each read from a client waits at
    most ``read_timeout`` seconds, one request (headers and body) must arrive within ``request_timeout``, and
    a kept-alive connection idle for ``idle_timeout`` is closed.
    """

    workers: int = 32
    connections: int = 256
    read_timeout: float = 20.0
    request_timeout: float = 60.0
    idle_timeout: float = 60.0
