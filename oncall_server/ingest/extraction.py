"""The spec's auto-extraction rules: title, severity and dedup key from any JSON.

First match wins within each rule list. A value that maps to nothing falls
through to the next rule, so a sender's odd field never costs an alert; the
functions accept any JSON value (and any non-dict payload) and never raise,
because a webhook that errors on a strange field drops the page with it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from oncall_server.ingest.model import EventAction
from oncall_server.severity import DEFAULT_SEVERITY, Severity, severity_from_word

MAX_TITLE = 1024
MAX_DEDUP_KEY = 255  # the width of the dedup_key columns

# The spec fixes these two scales exactly; the ``severity`` field reads the wider vocabulary
# (oncall_server.severity.SEVERITY_WORDS). docs/alert-routing.md has the tables.
PRIORITY_SEVERITY: dict[int, Severity] = {
    1: Severity.CRITICAL,
    2: Severity.HIGH,
    3: Severity.MEDIUM,
    4: Severity.LOW,
    5: Severity.INFO,
}
LEVEL_SEVERITY: dict[str, Severity] = {
    "error": Severity.HIGH,
    "critical": Severity.HIGH,
    "warning": Severity.MEDIUM,
    "warn": Severity.MEDIUM,
    "info": Severity.LOW,
}
TITLE_FIELDS = ("title", "summary", "message", "name")
ACTION_FIELDS = ("event_action", "status", "state")
# What a sender's status word asks for (case and surrounding spaces ignored). A word not listed is a
# trigger: an unknown status must never cost a page. docs/alert-routing.md has the table.
ACTION_WORDS: dict[str, EventAction] = {
    **dict.fromkeys(
        (
            "resolve",
            "resolved",
            "ok",
            "recovered",
            "recovery",
            "closed",
            "close",
            "cleared",
            "clear",
            "up",
            "normal",
            "solved",
        ),
        EventAction.RESOLVE,
    ),
    **dict.fromkeys(("acknowledge", "acknowledged", "ack", "acked"), EventAction.ACKNOWLEDGE),
    **dict.fromkeys(
        ("trigger", "triggered", "firing", "problem", "alerting", "open", "down"), EventAction.TRIGGER
    ),
    "change": EventAction.CHANGE,
}
DEDUP_FIELDS = ("dedup_key", "fingerprint", "id")


@dataclass(frozen=True, slots=True)
class Extracted:
    """What the rules found; ``severity_rule`` lets operators see why an alert got its severity."""

    title: str
    severity: Severity
    dedup_key: str | None
    severity_rule: str  # "severity", "priority", "level" or "default"
    action: EventAction = EventAction.TRIGGER


def _field(payload: object, name: str) -> object:
    """Top level only: nested objects are sender-specific and the spec names none."""
    return payload.get(name) if isinstance(payload, dict) else None


def _priority(value: object) -> int | None:
    """2, 2.0, "2" and "P2" all mean 2; bools are not numbers, whatever Python says."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("P", "p"):
            text = text[1:]
        # isascii: "²" and other Unicode digits pass isdigit() but are no sender's priority.
        if text.isascii() and text.isdigit():
            try:
                return int(text)
            except ValueError:  # more digits than int() will convert
                return None
    return None


def extract_severity(payload: object) -> tuple[Severity, str]:
    """The severity and the rule that decided it; the paging default if no rule matches."""
    value = _field(payload, "severity")
    if isinstance(value, str) and (severity := severity_from_word(value)) is not None:
        return severity, "severity"
    priority = _priority(_field(payload, "priority"))
    if priority is not None and priority in PRIORITY_SEVERITY:
        return PRIORITY_SEVERITY[priority], "priority"
    level = _field(payload, "level")
    if isinstance(level, str) and (severity := LEVEL_SEVERITY.get(level.strip().lower())) is not None:
        return severity, "level"
    return DEFAULT_SEVERITY, "default"


def _encodable(text: str) -> bool:
    """False for lone surrogates, which JSON escapes allow but UTF-8, protobuf and databases refuse."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _text(value: object) -> str | None:
    """Stripped non-empty text from a string or a number; None makes the rule fall through."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # too many digits to print: not an identifier anyone sent on purpose
            return None
    if isinstance(value, float) and math.isfinite(value):  # NaN and Infinity name nothing
        return str(value)
    return None


def extract_title(payload: object, integration_name: str) -> str:
    """The first usable title field, capped so one sender cannot bloat every page and list."""
    for name in TITLE_FIELDS:
        text = _text(_field(payload, name))
        if text is not None:
            if not _encodable(text):
                text = text.encode(errors="replace").decode()
            return text[:MAX_TITLE].rstrip()
    return f"Alert from {integration_name}"[:MAX_TITLE]


def extract_dedup_key(payload: object) -> str | None:
    """The first usable dedup field; None means every alert is new, as the spec says."""
    for name in DEDUP_FIELDS:
        value = _field(payload, name)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)  # 4821.0 and 4821 are the same device
        key = _text(value)
        if key is not None:
            return normalize_dedup_key(key)
    return None


def normalize_dedup_key(key: str) -> str:
    """Over-long or unencodable keys become a stable digest, so they fit the column and still dedupe."""
    if len(key) <= MAX_DEDUP_KEY and _encodable(key):
        return key
    return "sha256:" + hashlib.sha256(key.encode(errors="surrogatepass")).hexdigest()


def extract_action(payload: object) -> EventAction:
    """The first action field holding a known word; a trigger otherwise."""
    for name in ACTION_FIELDS:
        value = _field(payload, name)
        if isinstance(value, str) and (action := ACTION_WORDS.get(value.strip().lower())) is not None:
            return action
    return EventAction.TRIGGER


def extract(payload: object, integration_name: str) -> Extracted:
    """All the rules at once, as the webhook adapter needs them."""
    severity, rule = extract_severity(payload)
    return Extracted(
        extract_title(payload, integration_name),
        severity,
        extract_dedup_key(payload),
        rule,
        extract_action(payload),
    )
