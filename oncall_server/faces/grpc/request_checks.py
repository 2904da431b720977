"""Request checks the servicers rely on, worked out from each message type's descriptor.

The interceptor runs :func:`check_request` on every request message before its servicer sees
it, so what protobuf lets through but no servicer can use is refused as INVALID_ARGUMENT naming
the field: enum numbers outside the enum (proto3 enums are open), timestamps and durations out
of their documented range (converting them raised), JSON text nested deeper than the JSON
limit (``raw_payload``: the standard parser recursed until RecursionError), and messages nested
deeper than that limit. Each message type's checks are worked out once from its descriptor.
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import descriptor
from google.protobuf.message import Message

from oncall_server import json_codec
from oncall_server.errors import InvalidArgument

JSON_TEXT_FIELDS = frozenset({"raw_payload"})
_MIN_TIMESTAMP_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
_MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
_MAX_DURATION_SECONDS = 315_576_000_000  # 10,000 years
_NANOS = 1_000_000_000
_Check = tuple[str, str, bool, Any]  # field name, kind, repeated, kind's detail


@functools.cache
def _checks(message_type: descriptor.Descriptor) -> tuple[_Check, ...]:
    _checks_pending.add(message_type.full_name)
    try:
        out: list[_Check] = []
        for field in message_type.fields:
            repeated = field.is_repeated
            enum, sub = field.enum_type, field.message_type
            if enum is not None:
                out.append((field.name, "enum", repeated, (enum.name, frozenset(enum.values_by_number))))
            elif field.type == descriptor.FieldDescriptor.TYPE_STRING and field.name in JSON_TEXT_FIELDS:
                out.append((field.name, "json", repeated, None))
            elif sub is None:
                continue
            elif sub.GetOptions().map_entry:
                value = sub.fields_by_name["value"].message_type
                if value is not None and _needs_checks(value):
                    out.append((field.name, "map", False, None))
            elif sub.full_name == "google.protobuf.Timestamp":
                out.append((field.name, "timestamp", repeated, None))
            elif sub.full_name == "google.protobuf.Duration":
                out.append((field.name, "duration", repeated, None))
            elif _needs_checks(sub):
                out.append((field.name, "message", repeated, None))
        return tuple(out)
    finally:
        _checks_pending.discard(message_type.full_name)


_checks_pending: set[str] = set()


def _needs_checks(message_type: descriptor.Descriptor) -> bool:
    # A type that (indirectly) contains itself is checked: its instances are finite.
    return message_type.full_name in _checks_pending or bool(_checks(message_type))


def check_request(message: Message, path: str = "") -> None:
    """INVALID_ARGUMENT naming the first field no servicer could use (see above); ``path`` prefixes
    the field names (``requests[2]`` for the third message of a stream)."""
    _check(message, path, 1)


def _check(message: Message, path: str, depth: int) -> None:
    checks = _checks(message.DESCRIPTOR)
    if not checks:
        return
    if depth > json_codec.MAX_REQUEST_DEPTH:
        raise InvalidArgument.field(path, f"is nested more than {json_codec.MAX_REQUEST_DEPTH} levels deep")
    for name, kind, repeated, detail in checks:
        where = f"{path}.{name}" if path else name
        if kind == "map":
            for key, item in getattr(message, name).items():
                _check(item, f"{where}[{key!r}]", depth + 1)
            continue
        if repeated:
            for index, item in enumerate(getattr(message, name)):
                _check_value(kind, detail, item, f"{where}[{index}]", depth)
        elif kind in ("enum", "json") or message.HasField(name):
            _check_value(kind, detail, getattr(message, name), where, depth)


def _check_value(kind: str, detail: Any, value: Any, where: str, depth: int) -> None:
    if kind == "enum":
        enum_name, known = detail
        if value not in known:
            raise InvalidArgument.field(where, f"is not a known {enum_name} value ({value})")
    elif kind == "json":
        if value:
            json_codec.check_json_depth(value, where)
    elif kind == "message":
        _check(value, where, depth + 1)
    elif kind == "timestamp":
        if not (
            _MIN_TIMESTAMP_SECONDS <= value.seconds <= _MAX_TIMESTAMP_SECONDS and 0 <= value.nanos < _NANOS
        ):
            raise InvalidArgument.field(where, "must be a time between years 1 and 9999")
    elif kind == "duration":
        seconds, nanos = value.seconds, value.nanos
        if not (
            abs(seconds) <= _MAX_DURATION_SECONDS
            and abs(nanos) < _NANOS
            and (seconds == 0 or nanos == 0 or (seconds > 0) == (nanos > 0))
        ):
            raise InvalidArgument.field(where, "must be a duration within 10,000 years")
