"""Routing rules on an integration: which alerts pass, and why the rest are dropped.

An alert must pass every rule; the first failing rule names the drop.
Rules are validated (and regexes compiled) once when they are saved or
loaded, never per alert.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from oncall_server.errors import InvalidArgument
from oncall_server.severity import Severity

MAX_RULES = 50
MAX_PATTERN = 512
MAX_MATCHED_TEXT = 64 * 1024
OPERATORS = ("equals", "contains", "regex", "exists")
_KINDS = ("severity_filter", "title_match", "field_match")
_KEYS = {
    "severity_filter": {"minimum_severity"},
    "title_match": {"contains", "ignore_case"},
    "field_match": {"path", "operator", "value"},
}


@dataclass(frozen=True, slots=True)
class RoutingRule:
    kind: str  # severity_filter | title_match | field_match
    name: str = ""
    minimum_severity: Severity | None = None
    contains: str = ""
    ignore_case: bool = False
    path: tuple[str, ...] = ()
    operator: str = ""
    value: str = ""
    pattern: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class Drop:
    rule_index: int
    rule: str
    reason: str


def parse_rules(raw: object) -> list[RoutingRule]:
    """Validate the JSON form; errors name the rule (``routing_rules[2].field_match.value``)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidArgument.field("routing_rules", "must be a list of rules")
    if len(raw) > MAX_RULES:
        raise InvalidArgument.field("routing_rules", f"at most {MAX_RULES} rules")
    return [_parse_rule(index, item) for index, item in enumerate(raw)]


def _parse_rule(index: int, item: object) -> RoutingRule:
    where = f"routing_rules[{index}]"
    if not isinstance(item, dict):
        raise InvalidArgument.field(where, "must be an object")
    unknown = sorted(set(item) - {"name", *_KINDS})
    if unknown:
        raise InvalidArgument.field(f"{where}.{unknown[0]}", f"unknown key; use one of {', '.join(_KINDS)}")
    kinds = [k for k in _KINDS if k in item]
    if len(kinds) != 1:
        raise InvalidArgument.field(where, f"must have exactly one of {', '.join(_KINDS)}")
    kind = kinds[0]
    body = item[kind]
    where = f"{where}.{kind}"
    if not isinstance(body, dict):
        raise InvalidArgument.field(where, "must be an object")
    unknown = sorted(set(body) - _KEYS[kind])
    if unknown:
        raise InvalidArgument.field(
            f"{where}.{unknown[0]}", f"unknown key; use {', '.join(sorted(_KEYS[kind]))}"
        )
    name = str(item.get("name") or "")
    if kind == "severity_filter":
        raw_severity = body.get("minimum_severity")
        severity = Severity.parse(raw_severity) if isinstance(raw_severity, str) else None
        if severity is None:
            raise InvalidArgument.field(
                f"{where}.minimum_severity", "must be critical, high, medium, low or info"
            )
        return RoutingRule(kind, name, minimum_severity=severity)
    if kind == "title_match":
        contains = body.get("contains")
        if not isinstance(contains, str) or not contains:
            raise InvalidArgument.field(f"{where}.contains", "must be a non-empty string")
        return RoutingRule(kind, name, contains=contains, ignore_case=bool(body.get("ignore_case", False)))
    path = body.get("path")
    if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
        raise InvalidArgument.field(f"{where}.path", 'must be a dotted path such as "labels.team"')
    operator = str(body.get("operator") or "").strip().lower().removeprefix("field_match_operator_")
    if operator not in OPERATORS:
        raise InvalidArgument.field(f"{where}.operator", f"must be one of {', '.join(OPERATORS)}")
    value = body.get("value", "")
    if not isinstance(value, str):
        raise InvalidArgument.field(f"{where}.value", "must be a string")
    pattern = None
    if operator in ("equals", "contains", "regex") and value == "" and operator != "equals":
        raise InvalidArgument.field(f"{where}.value", f"is required for {operator}")
    if operator == "regex":
        if len(value) > MAX_PATTERN:
            raise InvalidArgument.field(
                f"{where}.value", f"regular expressions are limited to {MAX_PATTERN} characters"
            )
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise InvalidArgument.field(f"{where}.value", f"invalid regular expression: {exc}") from None
    return RoutingRule(
        kind, name, path=tuple(path.split(".")), operator=operator, value=value, pattern=pattern
    )


def rules_to_json(rules: Sequence[RoutingRule]) -> list[dict[str, Any]]:
    """The normalized storage form; ``parse_rules(rules_to_json(x)) == x``."""
    out: list[dict[str, Any]] = []
    for rule in rules:
        item: dict[str, Any] = {"name": rule.name} if rule.name else {}
        if rule.kind == "severity_filter":
            assert rule.minimum_severity is not None
            item["severity_filter"] = {"minimum_severity": rule.minimum_severity.label}
        elif rule.kind == "title_match":
            item["title_match"] = {"contains": rule.contains, "ignore_case": rule.ignore_case}
        else:
            item["field_match"] = {
                "path": ".".join(rule.path),
                "operator": rule.operator,
                "value": rule.value,
            }
        out.append(item)
    return out


def describe(rule: RoutingRule) -> str:
    if rule.kind == "severity_filter":
        assert rule.minimum_severity is not None
        return f"severity >= {rule.minimum_severity.label}"
    if rule.kind == "title_match":
        return f"title contains {json.dumps(rule.contains)}"
    shown = "" if rule.operator == "exists" else f" {json.dumps(rule.value)}"
    return f"{'.'.join(rule.path)} {rule.operator}{shown}"


_MISSING = object()


def _lookup(payload: object, path: tuple[str, ...]) -> object:
    current = payload
    for part in path:
        if isinstance(current, dict):
            current = current.get(part, _MISSING)
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
        if current is _MISSING:
            return _MISSING
    return current


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _failure(rule: RoutingRule, severity: Severity, title: str, payload: Callable[[], object]) -> str | None:
    if rule.kind == "severity_filter":
        assert rule.minimum_severity is not None
        if severity.at_least(rule.minimum_severity):
            return None
        return f"severity {severity.label} is below {rule.minimum_severity.label}"
    if rule.kind == "title_match":
        haystack, needle = (
            (title.lower(), rule.contains.lower()) if rule.ignore_case else (title, rule.contains)
        )
        return None if needle in haystack else f"title does not contain {json.dumps(rule.contains)}"
    value = _lookup(payload(), rule.path)
    dotted = ".".join(rule.path)
    if value is _MISSING:
        return f"field {dotted} is missing"
    if rule.operator == "exists":
        return None
    if value is None and not (rule.operator == "equals" and rule.value == "null"):
        return f"field {dotted} is null"
    text = _as_text(value)
    if rule.operator == "equals":
        return (
            None
            if text == rule.value
            else f"field {dotted} is {json.dumps(text[:100])}, not {json.dumps(rule.value)}"
        )
    if rule.operator == "contains":
        return None if rule.value in text else f"field {dotted} does not contain {json.dumps(rule.value)}"
    assert rule.pattern is not None
    if rule.pattern.search(text[:MAX_MATCHED_TEXT]):
        return None
    return f"field {dotted} does not match {json.dumps(rule.value)}"


def evaluate(
    rules: Sequence[RoutingRule], *, severity: Severity, title: str, payload: Callable[[], object]
) -> Drop | None:
    """None if the alert passes every rule, else the first failing rule and why.

    ``payload`` is called (once) only if a field rule needs it: parsing the raw JSON again
    for every alert of an integration with no field rules was pure overhead.
    """
    if not rules:
        return None
    payload = functools.cache(payload)
    for index, rule in enumerate(rules):
        reason = _failure(rule, severity, title, payload)
        if reason is not None:
            return Drop(index, rule.name or describe(rule), reason)
    return None
