"""The spec's auto-extraction rules: title, severity and dedup key from any JSON.

First match wins within each rule list. Values that map to nothing fall
through to the next rule, so a sender's odd field never costs an alert; the
functions accept any JSON value and never raise.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from oncall_server.severity import DEFAULT_SEVERITY, Severity

MAX_TITLE = 1024
MAX_DEDUP_KEY = 255

PRIORITY_SEVERITY = {
    1: Severity.CRITICAL,
    2: Severity.HIGH,
    3: Severity.MEDIUM,
    4: Severity.LOW,
    5: Severity.INFO,
}
LEVEL_SEVERITY = {
    "error": Severity.HIGH,
    "critical": Severity.HIGH,
    "warning": Severity.MEDIUM,
    "warn": Severity.MEDIUM,
    "info": Severity.LOW,
}
SEVERITY_WORDS = ("critical", "high", "medium", "low", "info")
TITLE_FIELDS = ("title", "summary", "message", "name")
DEDUP_FIELDS = ("dedup_key", "fingerprint", "id")


@dataclass(frozen=True, slots=True)
class Extracted:
    title: str
    severity: Severity
    dedup_key: str | None
    severity_rule: str  # "severity", "priority", "level" or "default": which rule decided


def _field(payload: object, name: str) -> object:
    return payload.get(name) if isinstance(payload, dict) else None


def _integral(value: object) -> int | None:
    """An int from 2, 2.0 or " 2 "; None for bools, fractions and words."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("p", "P"):
            text = text[1:]
        return int(text) if text.isdigit() else None
    return None


def extract_severity(payload: object) -> tuple[Severity, str]:
    value = _field(payload, "severity")
    if isinstance(value, str) and value.strip().lower() in SEVERITY_WORDS:
        return Severity[value.strip().upper()], "severity"
    priority = _integral(_field(payload, "priority"))
    if priority in PRIORITY_SEVERITY:
        return PRIORITY_SEVERITY[priority], "priority"
    level = _field(payload, "level")
    if isinstance(level, str) and level.strip().lower() in LEVEL_SEVERITY:
        return LEVEL_SEVERITY[level.strip().lower()], "level"
    return DEFAULT_SEVERITY, "default"


def _scalar_text(value: object) -> str | None:
    """Non-empty text from a string or a number; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def extract_title(payload: object, integration_name: str) -> str:
    for name in TITLE_FIELDS:
        text = _scalar_text(_field(payload, name))
        if text:
            return text[:MAX_TITLE]
    return f"Alert from {integration_name}"[:MAX_TITLE]


def extract_dedup_key(payload: object) -> str | None:
    for name in DEDUP_FIELDS:
        key = _scalar_text(_field(payload, name))
        if key:
            return normalize_dedup_key(key)
    return None


def normalize_dedup_key(key: str) -> str:
    """Keys over 255 characters become a stable digest, so they still deduplicate."""
    if len(key) <= MAX_DEDUP_KEY:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def extract(payload: object, integration_name: str) -> Extracted:
    severity, rule = extract_severity(payload)
    return Extracted(extract_title(payload, integration_name), severity, extract_dedup_key(payload), rule)
