"""JSON text for storage and the hot ingest path: orjson, with the standard library as fallback.

Every alert, incident, timeline entry and page writes JSON columns; the standard encoder was
~6 % of server CPU under batched ingest (docs/performance.md). orjson is compact and key-order
preserving like ``json.dumps(separators=(",", ":"))``; what it refuses (integers beyond 64 bits,
non-string keys) or reads differently (``NaN``, which only the standard library writes) goes
through the standard library, so no value that stored before fails to store now.
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


def loads(text: str | bytes) -> Any:
    """A value from JSON text written by :func:`dumps` or by ``json.dumps``."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
