"""Every row of the spec's "Auto-Extraction Rules", plus the forms senders really use."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oncall_server.extraction import extract, extract_dedup_key, extract_severity, extract_title
from oncall_server.severity import Severity

C, H, M, L, INF = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW, Severity.INFO


@pytest.mark.parametrize(
    ("payload", "severity", "rule"),
    [
        # severity field: maps critical/high/medium/low/info directly
        ({"severity": "critical"}, C, "severity"),
        ({"severity": "high"}, H, "severity"),
        ({"severity": "medium"}, M, "severity"),
        ({"severity": "low"}, L, "severity"),
        ({"severity": "info"}, INF, "severity"),
        # priority field: 1→critical … 5→info
        ({"priority": 1}, C, "priority"),
        ({"priority": 2}, H, "priority"),
        ({"priority": 3}, M, "priority"),
        ({"priority": 4}, L, "priority"),
        ({"priority": 5}, INF, "priority"),
        # level field: error/critical→high, warning→medium, info→low
        ({"level": "error"}, H, "level"),
        ({"level": "critical"}, H, "level"),
        ({"level": "warning"}, M, "level"),
        ({"level": "info"}, L, "level"),
        # first match wins
        ({"severity": "low", "priority": 1, "level": "error"}, L, "severity"),
        ({"priority": 4, "level": "error"}, L, "priority"),
        # forms senders really use
        ({"severity": " CRITICAL "}, C, "severity"),
        ({"priority": "2"}, H, "priority"),
        ({"priority": " 3 "}, M, "priority"),
        ({"priority": 2.0}, H, "priority"),
        ({"priority": "P1"}, C, "priority"),
        ({"level": "WARN"}, M, "level"),
        # values that map to nothing fall through to the next rule
        ({"severity": "urgent", "priority": 1}, C, "priority"),
        ({"severity": 1, "level": "warning"}, M, "level"),
        ({"priority": 0, "level": "info"}, L, "level"),
        ({"priority": 6, "level": "info"}, L, "level"),
        ({"priority": True, "level": "info"}, L, "level"),  # a bool is not priority 1
        ({"priority": 2.5, "level": "error"}, H, "level"),
        ({"level": "debug"}, H, "default"),
        # nothing matches: the documented default (high)
        ({}, H, "default"),
        ({"severity": None, "priority": None, "level": None}, H, "default"),
        ([1, 2, 3], H, "default"),
        ("text", H, "default"),
    ],
)
def test_severity_extraction(payload: object, severity: Severity, rule: str) -> None:
    assert extract_severity(payload) == (severity, rule)


@pytest.mark.parametrize(
    ("payload", "title"),
    [
        ({"title": "T", "summary": "S", "message": "M", "name": "N"}, "T"),
        ({"summary": "S", "message": "M", "name": "N"}, "S"),
        ({"message": "M", "name": "N"}, "M"),
        ({"name": "N"}, "N"),
        ({}, "Alert from Zabbix"),
        ({"title": "   ", "summary": "S"}, "S"),
        ({"title": None, "message": "M"}, "M"),
        ({"title": {"nested": 1}, "name": "N"}, "N"),
        ({"title": 404}, "404"),
        ({"title": True}, "Alert from Zabbix"),
        ({"title": "  padded  "}, "padded"),
        ([{"title": "inside a list"}], "Alert from Zabbix"),
    ],
)
def test_title_extraction(payload: object, title: str) -> None:
    assert extract_title(payload, "Zabbix") == title


def test_title_is_capped() -> None:
    assert extract_title({"title": "x" * 5000}, "Z") == "x" * 1024


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        ({"dedup_key": "D", "fingerprint": "F", "id": "I"}, "D"),
        ({"fingerprint": "F", "id": "I"}, "F"),
        ({"id": "I"}, "I"),
        ({}, None),
        ({"id": 4821}, "4821"),
        ({"id": 4821.0}, "4821"),
        ({"dedup_key": "", "fingerprint": "F"}, "F"),
        ({"dedup_key": "  ", "id": 7}, "7"),
        ({"dedup_key": False, "id": "I"}, "I"),
        ({"dedup_key": ["a"], "id": "I"}, "I"),
        ({"dedup_key": " k "}, "k"),
    ],
)
def test_dedup_key_extraction(payload: object, key: str | None) -> None:
    assert extract_dedup_key(payload) == key


def test_long_dedup_keys_become_stable_distinct_digests() -> None:
    a, b = "a" * 300, "a" * 299 + "b"
    key_a = extract_dedup_key({"dedup_key": a})
    assert key_a is not None and key_a.startswith("sha256:") and len(key_a) <= 255
    assert key_a == extract_dedup_key({"dedup_key": a})
    assert key_a != extract_dedup_key({"dedup_key": b})
    assert extract_dedup_key({"dedup_key": "a" * 255}) == "a" * 255


def test_spec_example_payload() -> None:
    found = extract(
        {
            "title": "CPU usage critical on client-server-01",
            "severity": "critical",
            "dedup_key": "rmm-device-4821-cpu",
            "body": "CPU sustained at 98% for 5 minutes. Host: client-server-01.",
            "source_ref": "alert-4821",
        },
        "RMM",
    )
    assert (found.title, found.severity, found.dedup_key) == (
        "CPU usage critical on client-server-01",
        C,
        "rmm-device-4821-cpu",
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
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
                    "x",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=12,
)


@given(json_values)
def test_extraction_never_fails_on_any_json(payload: object) -> None:
    found = extract(payload, "Any")
    assert 0 < len(found.title) <= 1024
    assert isinstance(found.severity, Severity)
    assert found.dedup_key is None or 0 < len(found.dedup_key) <= 255
