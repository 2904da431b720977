"""Routing rules: every kind and operator, all-must-pass, and validation errors that name the rule."""

from __future__ import annotations

from typing import Any

import pytest

from oncall_server.errors import InvalidArgument
from oncall_server.ingest.routing_rules import evaluate, parse_rules, rules_to_json
from oncall_server.severity import Severity

PAYLOAD = {
    "labels": {"team": "db-core", "tier": 1},
    "alerts": [{"status": "firing"}],
    "flag": True,
    "gone": None,
}


def verdict(
    rule: dict[str, Any], severity: Severity = Severity.HIGH, title: str = "Disk full on web-1"
) -> str | None:
    drop = evaluate(parse_rules([rule]), severity=severity, title=title, payload=lambda: PAYLOAD)
    return None if drop is None else drop.reason


@pytest.mark.parametrize(
    ("rule", "severity", "title", "reason"),
    [
        ({"severity_filter": {"minimum_severity": "high"}}, Severity.CRITICAL, "t", None),
        ({"severity_filter": {"minimum_severity": "high"}}, Severity.HIGH, "t", None),
        (
            {"severity_filter": {"minimum_severity": "high"}},
            Severity.MEDIUM,
            "t",
            "severity medium is below high",
        ),
        (
            {"severity_filter": {"minimum_severity": "SEVERITY_CRITICAL"}},
            Severity.HIGH,
            "t",
            "severity high is below critical",
        ),
        ({"title_match": {"contains": "Disk"}}, Severity.HIGH, "Disk full", None),
        ({"title_match": {"contains": "disk"}}, Severity.HIGH, "Disk full", 'title does not contain "disk"'),
        ({"title_match": {"contains": "disk", "ignore_case": True}}, Severity.HIGH, "Disk full", None),
    ],
)
def test_severity_and_title_rules(
    rule: dict[str, Any], severity: Severity, title: str, reason: str | None
) -> None:
    assert verdict(rule, severity, title) == reason


@pytest.mark.parametrize(
    ("path", "operator", "value", "reason"),
    [
        ("labels.team", "equals", "db-core", None),
        ("labels.team", "equals", "db", 'field labels.team is "db-core", not "db"'),
        ("labels.team", "contains", "core", None),
        ("labels.team", "regex", "^db-", None),
        ("labels.team", "FIELD_MATCH_OPERATOR_REGEX", "^web-", 'field labels.team does not match "^web-"'),
        ("labels.tier", "equals", "1", None),
        ("flag", "equals", "true", None),
        ("alerts.0.status", "equals", "firing", None),
        ("alerts.1.status", "exists", "", "field alerts.1.status is missing"),
        ("labels", "contains", '"team":"db-core"', None),
        ("labels.owner", "exists", "", "field labels.owner is missing"),
        ("gone", "exists", "", None),
        ("gone", "equals", "x", "field gone is null"),
        ("gone", "equals", "null", None),
    ],
)
def test_field_match(path: str, operator: str, value: str, reason: str | None) -> None:
    assert verdict({"field_match": {"path": path, "operator": operator, "value": value}}) == reason


def test_every_rule_must_pass_and_the_first_failure_is_reported() -> None:
    rules = parse_rules(
        [
            {"severity_filter": {"minimum_severity": "low"}},
            {"name": "team-db", "field_match": {"path": "labels.team", "operator": "regex", "value": "^web"}},
            {"title_match": {"contains": "never"}},
        ]
    )
    drop = evaluate(rules, severity=Severity.HIGH, title="Disk", payload=lambda: PAYLOAD)
    assert drop is not None
    assert (drop.rule_index, drop.rule) == (1, "team-db")
    unnamed = evaluate(rules[2:], severity=Severity.HIGH, title="Disk", payload=lambda: PAYLOAD)
    assert unnamed is not None and unnamed.rule == 'title contains "never"'
    assert evaluate([], severity=Severity.INFO, title="", payload=lambda: None) is None


@pytest.mark.parametrize(
    ("rules", "field", "words"),
    [
        ({"severity_filter": {}}, "routing_rules", "list"),
        (["x"], "routing_rules[0]", "object"),
        ([{}], "routing_rules[0]", "exactly one"),
        (
            [{"severity_filter": {"minimum_severity": "high"}, "title_match": {"contains": "x"}}],
            "routing_rules[0]",
            "exactly one",
        ),
        ([{"colour_match": {}}], "routing_rules[0].colour_match", "unknown key"),
        (
            [{"severity_filter": {"minimum_severity": "urgent"}}],
            "routing_rules[0].severity_filter.minimum_severity",
            "critical",
        ),
        ([{"title_match": {"contains": ""}}], "routing_rules[0].title_match.contains", "non-empty"),
        ([{"title_match": {"contain": "x"}}], "routing_rules[0].title_match.contain", "unknown key"),
        (
            [{"field_match": {"path": "a..b", "operator": "exists"}}],
            "routing_rules[0].field_match.path",
            "dotted",
        ),
        (
            [{"field_match": {"path": "a", "operator": "like", "value": "x"}}],
            "routing_rules[0].field_match.operator",
            "equals",
        ),
        (
            [
                {"title_match": {"contains": "ok"}},
                {"field_match": {"path": "a", "operator": "regex", "value": "(unclosed"}},
            ],
            "routing_rules[1].field_match.value",
            "invalid regular expression",
        ),
        (
            [{"field_match": {"path": "a", "operator": "contains"}}],
            "routing_rules[0].field_match.value",
            "required",
        ),
        ([{"title_match": {"contains": "x"}}] * 51, "routing_rules", "at most 50"),
    ],
)
def test_invalid_rules_are_rejected_naming_the_rule(rules: object, field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_rules(rules)
    assert error.value.violations[0].field == field
    assert words in error.value.violations[0].description


def test_storage_form_round_trips_and_normalizes_words() -> None:
    given = [
        {"name": "n", "severity_filter": {"minimum_severity": "SEVERITY_HIGH"}},
        {"title_match": {"contains": "disk", "ignore_case": True}},
        {"field_match": {"path": "labels.team", "operator": "FIELD_MATCH_OPERATOR_REGEX", "value": "^db"}},
    ]
    stored = rules_to_json(parse_rules(given))
    assert stored == [
        {"name": "n", "severity_filter": {"minimum_severity": "high"}},
        {"title_match": {"contains": "disk", "ignore_case": True}},
        {"field_match": {"path": "labels.team", "operator": "regex", "value": "^db"}},
    ]
    assert rules_to_json(parse_rules(stored)) == stored
