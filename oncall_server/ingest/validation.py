"""What the database cannot hold, settled before an alert joins a group commit.

The writer commits many requests' alerts in one transaction, so a value the database refuses would
fail every request of the batch. Everything that can be checked is checked here, once, by the
pipeline every face goes through:

* free text (title, description, details keys and values, raw payload) keeps the alert: NUL
  characters and unpaired UTF-16 surrogates, which neither PostgreSQL text nor UTF-8 can hold,
  become U+FFFD. A page matters more than a perfect title.
* identifiers (dedup key, source, source ref, idempotency key) are compared and looked up, so they
  are never rewritten: one holding NUL or a surrogate, or longer than its column, is refused with
  ``INVALID_ARGUMENT`` naming the field, and nothing of the request is stored.

What only the database can refuse (a constraint) is isolated by the writer instead.
"""

from __future__ import annotations

import re
from typing import Any

from oncall_server.errors import InvalidArgument
from oncall_server.ingest.model import EventAction, NormalizedEvent

REPLACEMENT = "\ufffd"
# Column widths (oncall_server/storage/models.py: alerts and incidents).
MAX_DEDUP_KEY = 255
MAX_SOURCE = 64
MAX_SOURCE_REF = 255
MAX_IDEMPOTENCY_KEY = 255

# Any surrogate code point in a Python str is unpaired: a valid pair decodes to one code point.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_IDENTIFIERS = (("dedup_key", MAX_DEDUP_KEY), ("source", MAX_SOURCE), ("source_ref", MAX_SOURCE_REF))


def clean_text(text: str) -> str:
    """``text`` with NUL and unpaired surrogates replaced by U+FFFD (the same object when clean)."""
    if text.isascii():  # the usual case: only NUL can be wrong, and ``in`` is a C scan
        return text.replace("\x00", REPLACEMENT) if "\x00" in text else text
    return _UNSTORABLE.sub(REPLACEMENT, text)


def clean_value(value: Any) -> Any:
    """A JSON-able value with every string in it cleaned (keys too)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_value(k): clean_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_value(v) for v in value]
    return value


def _clean_details(details: dict[str, Any]) -> dict[str, Any]:
    for key, value in details.items():
        if clean_value(key) is not key or clean_value(value) is not value:
            return {clean_value(k): clean_value(v) for k, v in details.items()}
    return details  # nothing to repair: no copy on the hot path


def check_identifier(value: str, field: str, limit: int) -> None:
    """Refuse an identifier the database cannot hold as it is."""
    if len(value) > limit:
        raise InvalidArgument.field(field, f"must be at most {limit} characters")
    if _UNSTORABLE.search(value):
        raise InvalidArgument.field(field, "must not contain NUL characters or unpaired UTF-16 surrogates")


def field_name(path: str, name: str) -> str:
    """``name`` inside the part of the request at ``path`` (``body[3]`` → ``body[3].dedup_key``)."""
    return f"{path}.{name}" if path else name


_NEEDS_KEY = (EventAction.ACKNOWLEDGE, EventAction.RESOLVE)


def check_event(event: NormalizedEvent, path: str) -> None:
    """Refuse the event's identifiers the database cannot hold, then repair its free text in place.

    ``path`` is where the event was in the request (``body[3]``, ``alert``; empty: top level), so a
    refusal names the field as the sender wrote it.
    """
    for name, limit in _IDENTIFIERS:
        value = getattr(event, name)
        if value is not None and (len(value) > limit or _UNSTORABLE.search(value)):
            check_identifier(value, field_name(path, name), limit)
    if event.action in _NEEDS_KEY and not event.dedup_key:
        raise InvalidArgument.field(
            field_name(path, "dedup_key"),
            f"is required to {event.action.name.lower()}: it names the open alert to act on",
        )
    event.title = clean_text(event.title)
    event.description = clean_text(event.description)
    event.raw_payload = clean_text(event.raw_payload)
    if event.details:
        event.details = _clean_details(event.details)


def idempotency_key(value: str | None, alerts: int, field: str = "Idempotency-Key") -> str | None:
    """The request's idempotency key; None when absent, empty or only whitespace (no key).

    A request of several alerts stores ``<key>#<index>`` for each, so the key leaves room for that.
    """
    if value is None or not value.strip():
        return None
    suffix = len(f"#{alerts - 1}") if alerts > 1 else 0
    if len(value) + suffix > MAX_IDEMPOTENCY_KEY:
        limit = MAX_IDEMPOTENCY_KEY - suffix
        reason = f" for a request of {alerts} alerts (each is stored as <key>#<index>)" if suffix else ""
        raise InvalidArgument.field(field, f"must be at most {limit} characters{reason}")
    check_identifier(value, field, MAX_IDEMPOTENCY_KEY)
    return value
