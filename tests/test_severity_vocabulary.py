"""The generic webhook's severity and status words, row by row, through the real adapter.

Each word of the tables (oncall_server.severity.SEVERITY_WORDS, extraction.ACTION_WORDS) is sent
as a webhook would send it; explicit rows pin what the well-known words mean, so editing a table
cannot silently change what "Disaster" or "resolved" does; and docs/alert-routing.md must list
exactly the tables' words.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from oncall_adapters.webhook import WebhookAdapter

from oncall_server.hookspecs import AdapterContext
from oncall_server.ingest.extraction import ACTION_FIELDS, ACTION_WORDS, extract_severity
from oncall_server.ingest.model import EventAction, NormalizedEvent
from oncall_server.severity import SEVERITY_WORDS, Severity

C, H, M, L, INF = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW, Severity.INFO
TRIGGER, ACK, RESOLVE, CHANGE = (
    EventAction.TRIGGER,
    EventAction.ACKNOWLEDGE,
    EventAction.RESOLVE,
    EventAction.CHANGE,
)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "alert-routing.md"
row = pytest.param


def parse(payload: dict[str, Any]) -> NormalizedEvent:
    [event] = WebhookAdapter().parse(payload, AdapterContext("Test", "webhook", {}))
    return event


def severity_of(payload: dict[str, Any]) -> Severity:
    return parse({"title": "t", **payload}).severity


def action_of(payload: dict[str, Any]) -> EventAction:
    return parse({"title": "t", "dedup_key": "k", **payload}).action


# --- severity -------------------------------------------------------------------------------


@pytest.mark.parametrize(("word", "severity"), sorted(SEVERITY_WORDS.items()))
def test_every_severity_word(word: str, severity: Severity) -> None:
    assert severity_of({"severity": word}) is severity
    assert severity_of({"severity": f"  {word.upper()} "}) is severity
    assert severity_of({"severity": word.title().replace(" ", "_")}) is severity
    assert severity_of({"severity": word.replace(" ", "-"), "priority": 5, "level": "info"}) is severity
    assert extract_severity({"severity": word}) == (severity, "severity")


@pytest.mark.parametrize(
    ("word", "severity"),
    [
        # our five labels (the spec: they map directly)
        row("critical", C),
        row("high", H),
        row("medium", M),
        row("low", L),
        row("info", INF),
        row("SEVERITY_LOW", L, id="proto-name"),
        # PagerDuty Events v2
        row("critical", C, id="pagerduty-critical"),
        row("error", H, id="pagerduty-error"),
        row("warning", M, id="pagerduty-warning"),
        row("info", INF, id="pagerduty-info"),
        # Zabbix {EVENT.SEVERITY}
        row("Disaster", C),
        row("High", H),
        row("Average", M),
        row("Warning", M),
        row("Information", INF),
        row("Not classified", INF),
        # syslog
        row("emerg", C),
        row("alert", C),
        row("crit", C),
        row("err", H),
        row("notice", L),
        row("debug", INF),
        # others
        row("fatal", C),
        row("emergency", C),
        row("page", C),
        row("major", H),
        row("warn", M),
        row("moderate", M),
        row("minor", L),
        row("informational", INF),
        row("OK", INF),
        *(row(f"P{n}", s) for n, s in zip(range(1, 6), (C, H, M, L, INF), strict=True)),
        *(row(f"sev{n}", s) for n, s in zip(range(1, 6), (C, H, M, L, INF), strict=True)),
        row("SEV-1", C),
        row("Sev 2", H),
        row("sev_3", M),
        row("not_classified", INF),
        row("Not-Classified", INF),
        row(" NOTCLASSIFIED ", INF),
    ],
)
def test_severity_word_means(word: str, severity: Severity) -> None:
    assert severity_of({"severity": word}) is severity


@pytest.mark.parametrize(
    ("payload", "severity", "rule"),
    [
        # the spec's priority scale, unchanged: 1 the most urgent
        *(row({"priority": n}, s, "priority") for n, s in zip(range(1, 6), (C, H, M, L, INF), strict=True)),
        row({"priority": "P1"}, C, "priority"),
        # the spec's level scale, unchanged: its top is high, info is low
        row({"level": "critical"}, H, "level"),
        row({"level": "error"}, H, "level"),
        row({"level": "warning"}, M, "level"),
        row({"level": "warn"}, M, "level"),
        row({"level": "info"}, L, "level"),
        # level does not read the severity vocabulary
        row({"level": "fatal"}, H, "default"),
        row({"level": "debug"}, H, "default"),
        row({"level": "Disaster"}, H, "default"),
        # the severity field first, as the spec orders them
        row({"severity": "warning", "priority": 1}, M, "severity"),
        row({"severity": "Disaster", "level": "info"}, C, "severity"),
    ],
)
def test_spec_scales_unchanged(payload: dict[str, Any], severity: Severity, rule: str) -> None:
    assert extract_severity(payload) == (severity, rule)
    assert severity_of(payload) is severity


@pytest.mark.parametrize(
    ("payload", "severity", "rule"),
    [
        # unknown words fall through to the next rule, then to the paging default (high)
        row({"severity": "urgent"}, H, "default"),
        row({"severity": "indeterminate", "priority": 4}, L, "priority"),
        row({"severity": "sev0"}, H, "default"),
        row({"severity": "sev6", "level": "warning"}, M, "level"),
        row({"severity": "p0"}, H, "default"),
        row({"severity": "classified"}, H, "default"),
        row({"severity": "severity"}, H, "default"),
        row({"severity": ""}, H, "default"),
        row({"severity": "-_ "}, H, "default"),
        row({"severity": "info2"}, H, "default"),
        row({"severity": "high priority"}, H, "default"),
        # a bare number is not read (Zabbix counts up, syslog and SEV count down)
        *(row({"severity": n}, H, "default", id=f"number-{n}") for n in range(6)),
        *(row({"severity": str(n)}, H, "default", id=f"numeric-string-{n}") for n in range(6)),
        row({"severity": 5, "priority": 1}, C, "priority"),
        row({"severity": "0", "level": "info"}, L, "level"),
        row({"severity": 2.0}, H, "default"),
        row({"severity": True}, H, "default"),
        row({"severity": None}, H, "default"),
        row({"severity": ["critical"]}, H, "default"),
        row({"severity": {"name": "critical"}}, H, "default"),
    ],
)
def test_unknown_severities_fall_through(payload: dict[str, Any], severity: Severity, rule: str) -> None:
    assert extract_severity(payload) == (severity, rule)
    assert severity_of(payload) is severity


# --- status / action ------------------------------------------------------------------------


@pytest.mark.parametrize(("word", "action"), sorted(ACTION_WORDS.items()))
@pytest.mark.parametrize("field", ACTION_FIELDS)
def test_every_status_word(field: str, word: str, action: EventAction) -> None:
    assert action_of({field: word}) is action
    assert action_of({field: f" {word.upper()}  "}) is action
    assert action_of({field: word.title()}) is action


@pytest.mark.parametrize(
    ("word", "action"),
    [
        row("resolved", RESOLVE),
        row("resolve", RESOLVE),
        row("ok", RESOLVE),
        row("OK", RESOLVE),
        row("recovered", RESOLVE),
        row("recovery", RESOLVE),
        row("closed", RESOLVE),
        row("close", RESOLVE),
        row("cleared", RESOLVE),
        row("clear", RESOLVE),
        row("up", RESOLVE),
        row("normal", RESOLVE),
        row("solved", RESOLVE),
        row("acknowledged", ACK),
        row("acknowledge", ACK),
        row("ack", ACK),
        row("acked", ACK),
        row("trigger", TRIGGER),
        row("triggered", TRIGGER),
        row("firing", TRIGGER),
        row("problem", TRIGGER),
        row("PROBLEM", TRIGGER),
        row("alerting", TRIGGER),
        row("open", TRIGGER),
        row("down", TRIGGER),
        row("change", CHANGE),
    ],
)
def test_status_word_means(word: str, action: EventAction) -> None:
    assert action_of({"status": word}) is action


@pytest.mark.parametrize(
    ("payload", "action"),
    [
        # no status at all, or one nobody listed: a trigger (an unknown status never costs a page)
        row({}, TRIGGER),
        row({"status": "pending"}, TRIGGER),
        row({"status": "update"}, TRIGGER),
        row({"status": "re-solved"}, TRIGGER),
        row({"status": "resolved_by_user"}, TRIGGER),
        row({"status": ""}, TRIGGER),
        row({"status": 0}, TRIGGER),
        row({"status": True}, TRIGGER),
        row({"status": None}, TRIGGER),
        row({"status": ["resolved"]}, TRIGGER),
        row({"status": {"state": "resolved"}}, TRIGGER),
        row({"alert": {"status": "resolved"}}, TRIGGER, id="nested-is-not-read"),
        # fields in order: event_action, status, state; the first holding a known word wins
        row({"event_action": "resolve", "status": "firing", "state": "open"}, RESOLVE),
        row({"event_action": "trigger", "status": "resolved"}, TRIGGER),
        row({"status": "acknowledged", "state": "resolved"}, ACK),
        row({"event_action": "mystery", "status": "resolved"}, RESOLVE),
        row({"event_action": 3, "status": "pending", "state": "ok"}, RESOLVE),
    ],
)
def test_status_fields_and_unknowns(payload: dict[str, Any], action: EventAction) -> None:
    assert action_of(payload) is action


def test_resolve_example_from_the_docs() -> None:
    event = parse({"dedup_key": "backup-job-17", "status": "resolved"})
    assert (event.action, event.dedup_key) == (RESOLVE, "backup-job-17")


# --- the docs list exactly the tables --------------------------------------------------------


def _doc_table(heading: str) -> dict[str, list[str]]:
    """The rows of the table under ``### <heading>`` in docs/alert-routing.md: first cell → words."""
    text = DOCS.read_text()
    section = text.split(f"\n### {heading}\n", 1)[1].split("\n#", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.startswith("|")]
    assert lines[1] == "|---|---|", f"no table under {heading!r}"
    rows: dict[str, list[str]] = {}
    for line in lines[2:]:  # after the header and its rule
        label, words = (cell.strip() for cell in line.strip("|").split("|"))
        rows[label] = re.findall(r"`([^`]+)`", words)
    return rows


def _grouped(table: dict[str, Any]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for word, value in table.items():
        groups[value.name.lower()].append(word)
    return dict(groups)


def test_docs_list_the_severity_words() -> None:
    documented = _doc_table("Severity words")
    assert list(documented) == [s.label for s in Severity]
    assert documented == _grouped(SEVERITY_WORDS)


def test_docs_list_the_status_words() -> None:
    assert _doc_table("Status words") == _grouped(ACTION_WORDS)
