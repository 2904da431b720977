"""Time-ordered identifiers.

UUIDv7 keeps inserts at the right edge of the primary-key index and lets
"newest first" pagination order by id alone.
"""

from __future__ import annotations

import os
import time
import uuid


def uuid7() -> str:
    """A new UUIDv7 as its canonical 36-character string."""
    millis = time.time_ns() // 1_000_000 & ((1 << 48) - 1)
    rand_a = int.from_bytes(os.urandom(2), "big") & 0xFFF
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = millis << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


def is_valid_id(value: str) -> bool:
    """True if ``value`` parses as a UUID, so bad IDs fail fast as NOT_FOUND instead of reaching SQL."""
    try:
        uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return False
    return len(value) == 36
