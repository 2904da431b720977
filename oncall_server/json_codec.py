"""JSON text for storage and the hot ingest path: orjson, with the standard library as fallback.

Every alert, incident, timeline entry and page writes JSON columns; the standard encoder was
~6 % of server CPU under batched ingest (docs/performance.md). orjson is compact and key-order
preserving like ``json.dumps(separators=(",", ":"))``; what it refuses (integers beyond 64 bits,
non-string keys) goes through the standard library, so no value that stored before fails to
store now. Reading is the standard library's (see :func:`loads`).

Requests' JSON is read by :func:`loads_request`, with the limits every face shares; text that
must be storable (names) is checked by :func:`check_text` / :func:`check_name`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from oncall_server.errors import InvalidArgument


def dumps(value: Any) -> str:
    """Compact JSON text."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value, separators=(",", ":"))


def dumps_bytes(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes (a request body), without a decode and an encode in between."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def loads(text: str | bytes) -> Any:
    """A value from JSON text: the standard library, which keeps integers beyond 64 bits exact
    (orjson reads them as floats). Reads are off the ingest path."""
    return json.loads(text)


# --- JSON and text from requests ---------------------------------------------------------------
#
# Every face parses a request's JSON with :func:`loads_request` (the webhook and Defend bodies, the
# integration update, the ingest pipeline): one set of rules, one way of naming what is wrong. The
# standard library alone would answer some of these with an exception no face expects (a
# ``RecursionError`` around 1,000 levels, a ``ValueError`` for integers over 4,300 digits), and
# accept what the database refuses later (``NaN``).

MAX_REQUEST_DEPTH = 64
"""Deepest nesting of arrays and objects a request's JSON may have (documented in docs/api.md).
Alert payloads are a few levels deep; anything deeper is refused before an adapter or the
database sees it, so nothing downstream recurses without bound."""

MAX_INT_DIGITS = 4300
"""Longest integer literal accepted: CPython's own bound on int/str conversion (quadratic
beyond it), stated here so the message can say it."""


def request_text(body: bytes, field: str = "body") -> str:
    """A request body as text; INVALID_ARGUMENT naming ``field`` if it is not UTF-8."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument.field(field, f"is not UTF-8 text (byte {exc.start})") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):  # 1e999: stored, it would be written back as Infinity, which is not JSON
        raise ValueError(f"the number {literal[:24]} is out of range")
    return value


def _too_deep(field: str) -> InvalidArgument:
    return InvalidArgument.field(
        field, f"is nested more than {MAX_REQUEST_DEPTH} levels deep (arrays and objects)"
    )


_CONTAINERS = frozenset((dict, list))


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether the arrays/objects of a parsed JSON value nest deeper than ``limit``: one level at
    a time, without recursion, looking only at containers (``json.loads`` makes exact dicts and
    lists, so ``type`` is enough, and cheaper than ``isinstance``)."""
    level = [value] if type(value) in _CONTAINERS else []
    depth = 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        for container in level:
            children = container.values() if type(container) is dict else container
            below += [child for child in children if type(child) in _CONTAINERS]
        level = below
        depth += 1
    return False


def loads_request(body: str | bytes, field: str = "body") -> Any:
    """A request's JSON value, or INVALID_ARGUMENT naming ``field``.

    Refuses: bytes that are not UTF-8, text that is not JSON (``NaN``, ``Infinity`` and numbers
    beyond a float's range such as ``1e999`` included), integers longer than
    :data:`MAX_INT_DIGITS` digits, and arrays/objects nested deeper than
    :data:`MAX_REQUEST_DEPTH`. Integers beyond 64 bits stay exact (the standard library parses).
    Strings are returned as JSON wrote them, NUL and unpaired surrogates included: what may be
    stored is decided where the fields are known.
    """
    text = request_text(body, field) if isinstance(body, bytes | bytearray) else body
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise InvalidArgument.field(
            field, f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise _too_deep(field) from None
    except ValueError as exc:  # an over-long integer, NaN/Infinity, a number out of range
        reason = str(exc)
        if "digits" in reason:
            reason = f"holds an integer longer than {MAX_INT_DIGITS} digits"
        else:
            reason = f"is not valid JSON: {reason}"
        raise InvalidArgument.field(field, reason) from None
    if _depth_exceeds(value, MAX_REQUEST_DEPTH):
        raise _too_deep(field)
    return value


def check_json_depth(text: str, field: str) -> None:
    """INVALID_ARGUMENT naming ``field`` if JSON ``text`` nests deeper than :data:`MAX_REQUEST_DEPTH`.

    For JSON text kept as text and parsed later by someone else (a gRPC alert's ``raw_payload``):
    only the depth is judged here; text that is not JSON at all is left to that parser to name.
    Text with no more brackets than the limit cannot be too deep and is not parsed.
    """
    if text.count("[") + text.count("{") <= MAX_REQUEST_DEPTH:
        return
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep(field) from None
    except ValueError:
        return
    if _depth_exceeds(value, MAX_REQUEST_DEPTH):
        raise _too_deep(field)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_text(value: str, field: str) -> str:
    """``value`` if both databases can store it as text: no NUL (PostgreSQL refuses it) and no
    unpaired surrogate (not UTF-8); else INVALID_ARGUMENT naming ``field``."""
    if "\x00" in value:
        raise InvalidArgument.field(field, "must not contain NUL (U+0000)")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument.field(
                field, "must not contain unpaired surrogates (not valid Unicode)"
            ) from None
    return value


def check_name(value: object, field: str, *, max_length: int = 200) -> str:
    """A configured object's display name (integration, service, user, policy, schedule): a string,
    trimmed, 1 to ``max_length`` characters, one line of storable text (no control characters)."""
    if not isinstance(value, str):
        raise InvalidArgument.field(field, "must be a string")
    name = check_text(value.strip(), field)
    if not name or len(name) > max_length:
        raise InvalidArgument.field(field, f"must be 1 to {max_length} characters")
    control = _CONTROL.search(name)
    if control:
        raise InvalidArgument.field(
            field, f"must not contain control characters (U+{ord(control.group()):04X})"
        )
    return name
