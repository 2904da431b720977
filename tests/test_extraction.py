"""Every row of the spec's "Auto-Extraction Rules", plus the forms senders really use.

Expectations are written out per row, never derived from the module's tables, so
changing a mapping has to change a test too.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oncall_server.ingest.extraction import (
    Extracted,
    extract,
    extract_dedup_key,
    extract_severity,
    extract_title,
)
from oncall_server.severity import Severity

C, H, M, L, INF = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW, Severity.INFO


row = pytest.param


@pytest.mark.parametrize(
    ("payload", "severity", "rule"),
    [
        # spec: severity field maps critical/high/medium/low/info directly
        row({"severity": "critical"}, C, "severity", id="severity-critical"),
        row({"severity": "high"}, H, "severity", id="severity-high"),
        row({"severity": "medium"}, M, "severity", id="severity-medium"),
        row({"severity": "low"}, L, "severity", id="severity-low"),
        row({"severity": "info"}, INF, "severity", id="severity-info"),
        # spec: priority field maps 1→critical … 5→info
        row({"priority": 1}, C, "priority", id="priority-1"),
        row({"priority": 2}, H, "priority", id="priority-2"),
        row({"priority": 3}, M, "priority", id="priority-3"),
        row({"priority": 4}, L, "priority", id="priority-4"),
        row({"priority": 5}, INF, "priority", id="priority-5"),
        # spec: level field maps error/critical→high, warning→medium, info→low
        row({"level": "error"}, H, "level", id="level-error"),
        row({"level": "critical"}, H, "level", id="level-critical"),
        row({"level": "warning"}, M, "level", id="level-warning"),
        row({"level": "info"}, L, "level", id="level-info"),
        # spec: first match wins
        row(
            {"severity": "low", "priority": 1, "level": "error"}, L, "severity", id="severity-before-priority"
        ),
        row({"priority": 4, "level": "error"}, L, "priority", id="priority-before-level"),
        row({"severity": "info", "level": "error"}, INF, "severity", id="severity-before-level"),
        # forms senders really use
        row({"severity": " CRITICAL "}, C, "severity", id="severity-case-and-spaces"),
        row({"severity": "Medium"}, M, "severity", id="severity-mixed-case"),
        row({"severity": "SEVERITY_LOW"}, L, "severity", id="severity-proto-name"),
        row({"priority": "2"}, H, "priority", id="priority-string"),
        row({"priority": " 3 "}, M, "priority", id="priority-string-spaces"),
        row({"priority": 2.0}, H, "priority", id="priority-integral-float"),
        row({"priority": "P1"}, C, "priority", id="priority-P1"),
        row({"priority": "P2"}, H, "priority", id="priority-P2"),
        row({"priority": " p4 "}, L, "priority", id="priority-lowercase-p"),
        row({"priority": "P5"}, INF, "priority", id="priority-P5"),
        row({"level": "WARN"}, M, "level", id="level-warn-alias"),
        row({"level": " Warning "}, M, "level", id="level-case-and-spaces"),
        row({"level": "ERROR"}, H, "level", id="level-uppercase"),
        # the severity field's wider vocabulary (every word: tests/test_severity_vocabulary.py)
        row({"severity": "Disaster", "priority": 5}, C, "severity", id="severity-zabbix-word"),
        row({"severity": "warning", "priority": 1}, M, "severity", id="severity-pagerduty-word"),
        row({"severity": "SEV-2"}, H, "severity", id="severity-sev-n"),
        row({"severity": "P4"}, L, "severity", id="severity-p-n"),
        row({"severity": "Not classified"}, INF, "severity", id="severity-not-classified"),
        # values that map to nothing fall through to the next rule
        row({"severity": "urgent", "priority": 1}, C, "priority", id="unknown-severity-word"),
        row({"severity": 1, "level": "warning"}, M, "level", id="severity-number-is-no-label"),
        row({"severity": True, "priority": 3}, M, "priority", id="severity-bool"),
        row({"severity": {"x": 1}, "priority": [1], "level": "info"}, L, "level", id="object-and-list"),
        row({"priority": 0, "level": "info"}, L, "level", id="priority-0"),
        row({"priority": 6, "level": "info"}, L, "level", id="priority-6"),
        row({"priority": -1, "level": "info"}, L, "level", id="priority-negative"),
        row({"priority": True, "level": "info"}, L, "level", id="priority-true-is-not-1"),
        row({"priority": False, "level": "info"}, L, "level", id="priority-false"),
        row({"priority": 2.5, "level": "error"}, H, "level", id="priority-fraction"),
        row({"priority": float("nan"), "level": "error"}, H, "level", id="priority-nan"),
        row({"priority": float("inf"), "level": "error"}, H, "level", id="priority-infinity"),
        row({"priority": "P", "level": "info"}, L, "level", id="priority-bare-P"),
        row({"priority": "", "level": "info"}, L, "level", id="priority-empty"),
        row({"priority": "2.0", "level": "info"}, L, "level", id="priority-decimal-string"),
        row({"priority": "²", "level": "info"}, L, "level", id="priority-superscript-digit"),
        row({"priority": "\u0661", "level": "info"}, L, "level", id="priority-non-ascii-digit"),
        row({"priority": "1" * 5000, "level": "info"}, L, "level", id="priority-5000-digits"),
        row({"priority": 10**5000, "level": "info"}, L, "level", id="priority-huge-int"),
        row({"level": "debug"}, H, "default", id="unknown-level"),
        # nothing matches: the documented default (high)
        row({}, H, "default", id="empty-object"),
        row({"severity": None, "priority": None, "level": None}, H, "default", id="all-null"),
        row({"alert": {"severity": "critical"}}, H, "default", id="nested-is-not-read"),
        row([{"severity": "critical"}], H, "default", id="payload-list"),
        row("critical", H, "default", id="payload-string"),
        row(1, H, "default", id="payload-number"),
        row(None, H, "default", id="payload-null"),
    ],
)
def test_severity_extraction(payload: object, severity: Severity, rule: str) -> None:
    assert extract_severity(payload) == (severity, rule)


@pytest.mark.parametrize(
    ("payload", "title"),
    [
        # spec: title → summary → message → name → "Alert from <integration_name>"
        row({"title": "T", "summary": "S", "message": "M", "name": "N"}, "T", id="title"),
        row({"summary": "S", "message": "M", "name": "N"}, "S", id="summary"),
        row({"message": "M", "name": "N"}, "M", id="message"),
        row({"name": "N"}, "N", id="name"),
        row({}, "Alert from Zabbix", id="fallback"),
        # only non-empty strings and numbers count
        row({"title": "", "summary": "S"}, "S", id="empty-falls-through"),
        row({"title": "   ", "summary": "S"}, "S", id="blank-falls-through"),
        row({"title": None, "message": "M"}, "M", id="null-falls-through"),
        row({"title": {"nested": 1}, "name": "N"}, "N", id="object-falls-through"),
        row({"title": ["T"], "name": "N"}, "N", id="list-falls-through"),
        row({"title": True, "summary": False}, "Alert from Zabbix", id="bools-fall-through"),
        row({"title": float("nan"), "name": "N"}, "N", id="nan-falls-through"),
        row({"title": 404}, "404", id="int"),
        row({"title": 0}, "0", id="zero-is-a-number"),
        row({"title": 2.5}, "2.5", id="float"),
        row({"title": 404.0}, "404.0", id="integral-float-via-str"),
        row({"title": "  padded\n"}, "padded", id="stripped"),
        row({"title": "\ud800x"}, "?x", id="lone-surrogate-replaced"),
        # non-dict payloads and nested fields get the fallback
        row([{"title": "inside a list"}], "Alert from Zabbix", id="payload-list"),
        row("a string", "Alert from Zabbix", id="payload-string"),
        row(None, "Alert from Zabbix", id="payload-null"),
        row({"alert": {"title": "nested"}}, "Alert from Zabbix", id="nested-is-not-read"),
    ],
)
def test_title_extraction(payload: object, title: str) -> None:
    assert extract_title(payload, "Zabbix") == title


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        row("x" * 5000, "x" * 1024, id="truncated"),
        row("x" * 1024, "x" * 1024, id="exactly-the-cap"),
        row("x" * 1023 + " y", "x" * 1023, id="no-trailing-space-after-cut"),
        row("😀" * 2000, "😀" * 1024, id="cut-between-characters"),
    ],
)
def test_title_is_capped(title: str, expected: str) -> None:
    assert extract_title({"title": title}, "Z") == expected


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        # spec: dedup_key → fingerprint → id → none (no deduplication)
        row({"dedup_key": "D", "fingerprint": "F", "id": "I"}, "D", id="dedup_key"),
        row({"fingerprint": "F", "id": "I"}, "F", id="fingerprint"),
        row({"id": "I"}, "I", id="id"),
        row({}, None, id="none-found"),
        # numbers count; integral floats read as ints
        row({"id": 4821}, "4821", id="int"),
        row({"id": 0}, "0", id="zero-is-a-number"),
        row({"id": 4821.0}, "4821", id="integral-float-as-int"),
        row({"id": 2.5}, "2.5", id="fractional-float"),
        # anything else falls through
        row({"dedup_key": "", "fingerprint": "F"}, "F", id="empty-falls-through"),
        row({"dedup_key": "  ", "id": 7}, "7", id="blank-falls-through"),
        row({"dedup_key": False, "id": "I"}, "I", id="false-falls-through"),
        row({"dedup_key": True}, None, id="true-is-not-a-key"),
        row({"dedup_key": ["a"], "fingerprint": {"a": 1}, "id": "I"}, "I", id="list-and-object"),
        row({"dedup_key": None, "id": float("inf")}, None, id="null-and-infinity"),
        row({"dedup_key": " k "}, "k", id="stripped"),
        # non-dict payloads and nested fields: no deduplication
        row([{"dedup_key": "D"}], None, id="payload-list"),
        row("D", None, id="payload-string"),
        row({"alert": {"dedup_key": "D"}}, None, id="nested-is-not-read"),
        # long or unencodable keys: a pinned digest, so deduplication survives upgrades
        row({"dedup_key": "a" * 255}, "a" * 255, id="exactly-the-cap"),
        row(
            {"dedup_key": "a" * 300},
            "sha256:9835fa6bf4e20a9b9ea812506302e98982721a6cf8d2cae67af57129bf21ae90",
            id="long-key-digest",
        ),
        row(
            {"id": 10**300},
            "sha256:1cc2e01d965b946d83b87e0efbb7ecaec28c750c04af95abbe191555e2d5a375",
            id="long-int-digest",
        ),
        row(
            {"dedup_key": "\ud800"},
            "sha256:91a681b998555fb475479817b126c94e57e52011fa1842c5d188795a4a05226b",
            id="lone-surrogate-digest",
        ),
        row({"id": 10**5000, "fingerprint": None}, None, id="unprintable-int"),
    ],
)
def test_dedup_key_extraction(payload: object, key: str | None) -> None:
    assert extract_dedup_key(payload) == key


def test_long_dedup_keys_stay_stable_and_distinct() -> None:
    a, b = "a" * 300, "a" * 299 + "b"
    key_a = extract_dedup_key({"dedup_key": a})
    assert key_a is not None and key_a.startswith("sha256:") and len(key_a) <= 255
    assert key_a == extract_dedup_key({"fingerprint": a})
    assert key_a != extract_dedup_key({"dedup_key": b})
    assert extract_dedup_key({"dedup_key": "\ud800"}) != extract_dedup_key({"dedup_key": "\ud801"})


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        row(
            {
                "title": "CPU usage critical on client-server-01",
                "severity": "critical",
                "dedup_key": "rmm-device-4821-cpu",
                "body": "CPU sustained at 98% for 5 minutes. Host: client-server-01.",
                "source_ref": "alert-4821",
            },
            Extracted("CPU usage critical on client-server-01", C, "rmm-device-4821-cpu", "severity"),
            id="spec-example",
        ),
        row(
            {"summary": "Disk full", "priority": "P3", "fingerprint": 77},
            Extracted("Disk full", M, "77", "priority"),
            id="second-choices",
        ),
        row([1, 2, 3], Extracted("Alert from RMM", H, None, "default"), id="payload-list"),
    ],
)
def test_extract(payload: object, expected: Extracted) -> None:
    assert extract(payload, "RMM") == expected


FIELDS = [
    "title",
    "summary",
    "message",
    "name",
    "severity",
    "priority",
    "level",
    "dedup_key",
    "fingerprint",
    "id",
]
MAPPED = ["critical", " High ", "info", "P2", "2", "warn", "error", "", "  ", "Disaster", "sev-1", "ok"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(exclude_categories=()))  # includes lone surrogates, as JSON escapes can
    | st.sampled_from(MAPPED),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from([*FIELDS, "x"]) | st.text(max_size=3), children, max_size=6)
    ),
    max_leaves=12,
)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@given(json_values)
def test_extraction_never_fails_on_any_json(payload: object) -> None:
    found = extract(payload, "Any")
    assert isinstance(found.title, str) and 0 < len(found.title) <= 1024
    assert found.title == found.title.strip() and _encodable(found.title)
    assert isinstance(found.severity, Severity)
    assert found.severity_rule in ("severity", "priority", "level", "default")
    assert (found.severity, found.severity_rule) == extract_severity(payload)
    if found.dedup_key is not None:
        assert isinstance(found.dedup_key, str) and 0 < len(found.dedup_key) <= 255
        assert _encodable(found.dedup_key)
