"""Field helpers shared by the built-in adapters (pure functions)."""

from __future__ import annotations

from typing import Any

from oncall_server.errors import FieldViolation, InvalidArgument
from oncall_server.severity import Severity


def require_object(payload: Any, source: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise InvalidArgument.field("payload", f"a {source} event must be a JSON object")
    return payload


def require_text(payload: dict[str, Any], *names: str) -> None:
    """400 naming every missing field at once."""
    missing = [
        n for n in names if not isinstance(payload.get(n), (str, int)) or str(payload[n]).strip() == ""
    ]
    if missing:
        raise InvalidArgument(
            f"missing required fields: {', '.join(missing)}",
            [FieldViolation(n, "is required") for n in missing],
        )


def text(payload: dict[str, Any], name: str, default: str = "") -> str:
    value = payload.get(name)
    return default if value is None else str(value).strip()


def severity(payload: dict[str, Any], name: str = "severity") -> Severity:
    """The source's own severity word, which maps directly; anything else is a 400 naming the field."""
    parsed = Severity.parse(str(payload.get(name, "")))
    if parsed is None:
        raise InvalidArgument.field(name, "must be one of critical, high, medium, low, info")
    return parsed


def details(payload: dict[str, Any], *names: str) -> dict[str, str]:
    return {n: str(payload[n]) for n in names if payload.get(n) not in (None, "")}
