"""JSON text for storage and the hot ingest path: orjson, with the standard library as fallback.

Every alert, incident, timeline entry and page writes JSON columns; the standard encoder was
~6 % of server CPU under batched ingest (docs/performance.md). orjson is compact and key-order
preserving like ``json.dumps(separators=(",", ":"))``; what it refuses (integers beyond 64 bits,
non-string keys) goes through the standard library, so no value that stored before fails to
store now. Reading is the standard library's (see :func:`loads`).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


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
