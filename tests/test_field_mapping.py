"""Field mappings per integration: where a sender's payload keeps its fields.

Validation on save names the field (``field_mapping.title``) and changes nothing; end to end over
loopback a mapped payload is stored with the mapped title, severity, dedup key, description, links
and device, and a mapped recovery status resolves the open alert; TestFieldMapping and
``POST /api/integrations/:id/test-mapping`` show the normalized result and store nothing; a
cleared mapping gives the adapter's fields back.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import grpc
import jmespath
import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from oncall_server.api.v1 import (
    alert_pb2,
    integration_pb2,
    integration_service_pb2,
    integration_service_pb2_grpc,
)
from oncall_server.errors import InvalidArgument
from oncall_server.hookspecs import AdapterContext
from oncall_server.ingest import field_mapping
from oncall_server.ingest.field_mapping import compile_mapping, parse_mapping
from oncall_server.ingest.model import EventAction
from oncall_server.severity import Severity
from oncall_server.testing import RunningServer, bootstrap
from tests.helpers import alerts_of, count_rows, post_json, webhook_url

# A monitoring tool of our own invention: nothing the auto-extraction rules know.
PROBLEM = {
    "event": {
        "name": "Disk C: almost full",
        "priority": "Yellow",
        "state": "PROBLEM",
        "id": 4821,
        "host": {"name": "client-server-01"},
        "urls": ["https://mon.example/e/4821"],
    },
    "message": "Free space below 5 %",
}
MAPPING: dict[str, Any] = {
    "title": "event.name",
    "severity": "event.priority",
    "severity_map": {"Yellow": "medium", "Red": "critical"},
    "dedup_key": "event.id",
    "status": "event.state",
    "status_map": {"PROBLEM": "trigger", "OK": "resolve"},
    "description": "message",
    "links": "event.urls",
    "device": "event.host.name",
}


def recovery() -> dict[str, Any]:
    payload = json.loads(json.dumps(PROBLEM))
    payload["event"]["state"] = "ok"  # the map's keys match ignoring case
    return payload


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mapping", "field", "words"),
    [
        ({"title": "alerts[0"}, "field_mapping.title", "not a valid JMESPath expression"),
        ({"severity": 3}, "field_mapping.severity", "must be a JMESPath expression"),
        ({"titel": "a"}, "field_mapping.titel", "is not a mapping field"),
        ({"title": "a" * 1001}, "field_mapping.title", "at most 1000"),
        ([], "field_mapping", "must be a JSON object"),
        (
            {"severity": "p", "severity_map": {"Average": "urgent"}},
            'field_mapping.severity_map["Average"]',
            "must be one of our severities",
        ),
        (
            {"status": "s", "status_map": {"OK": "maybe"}},
            'field_mapping.status_map["OK"]',
            "must be an action",
        ),
        (
            {"status": "s", "status_map": {"OK": "resolve", " ok": "resolve"}},
            'status_map[" ok"]',
            "repeats 'OK'",
        ),
        (
            {"severity_map": {"Average": "medium"}},
            "field_mapping.severity_map",
            "needs field_mapping.severity",
        ),
        ({"severity": "p", "severity_map": ["x"]}, "field_mapping.severity_map", "must be a JSON object"),
        (
            {"title": "to_string([@,@]|[@,@]|[@,@]|[@,@]|[@,@])"},
            "field_mapping.title",
            "too large or do too much work",
        ),
        ({"title": "[@,@]|[]|[@,@]|[]|[@,@]|[]|[@,@]|[]|[@,@]|[]"}, "field_mapping.title", "too much work"),
    ],
)
def test_invalid_mappings_are_refused_naming_the_field(mapping: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_mapping(mapping)
    assert caught.value.violations[0].field.endswith(field), caught.value.message
    assert words in caught.value.message


def test_the_stored_form_drops_empty_fields_and_names_our_words() -> None:
    assert parse_mapping(None) is None
    assert parse_mapping({}) is None
    assert parse_mapping({"title": "  ", "links": ""}) is None
    assert parse_mapping(
        {
            "title": " event.name ",
            "severity": "p",
            "severity_map": {"Yellow": "SEVERITY_MEDIUM"},
            "status": "s",
            "status_map": {"Fixed": "ok", "Taken": "acked"},
        }
    ) == {
        "title": "event.name",
        "severity": "p",
        "status": "s",
        "severity_map": {"Yellow": "medium"},
        "status_map": {"Fixed": "resolve", "Taken": "acknowledge"},
    }


def test_realistic_expressions_pass_the_static_bounds() -> None:
    for expression in (
        "alerts[0].labels.alertname",
        "alerts[*].labels.alertname | [0]",
        "join(', ', tags)",
        "tags[?starts_with(@, 'http')]",
        "labels.severity || 'medium'",
        "event.tags[?tag=='asset'].value | [0]",
        "sort_by(items, &name)[0].name",
        "{host: host.name, ip: host.ip}",
        "to_string(@)",
    ):
        assert parse_mapping({"title": expression}) == {"title": expression}


# --- evaluation ---------------------------------------------------------------------------------


class _Adapter:
    """The webhook adapter's shape without its rules: a title and the defaults."""

    name = "fake"

    def parse(self, payload: Any, context: AdapterContext) -> list[Any]:
        from oncall_server.ingest.model import NormalizedEvent

        items = payload if isinstance(payload, list) else [payload]
        return [NormalizedEvent(title="adapter title", severity=Severity.HIGH) for _ in items]


CONTEXT = AdapterContext("Sample", "fake", {})


def test_mapped_values_are_text_cut_to_their_caps_and_null_keeps_the_adapter_value() -> None:
    mapping = compile_mapping(
        {"title": "t", "dedup_key": "k", "severity": "s", "description": "d", "device": "missing"}
    )
    assert mapping is not None
    notes: list[str] = []
    payload = {"t": "x" * 5000, "k": 4821.0, "s": "Average", "d": {"b": [1, True]}}
    (event,) = mapping.normalize(_Adapter(), payload, CONTEXT, notes)
    assert event.title == "x" * 1024  # extraction's cap
    assert event.dedup_key == "4821"  # 4821.0 and 4821 are the same device
    assert event.severity is Severity.MEDIUM  # no map: the shared severity words
    assert event.description == '{"b":[1,true]}'  # JSON for what is not text
    assert "device_name" not in event.details and notes == []
    (event,) = mapping.normalize(_Adapter(), {"s": "weird", "k": "y" * 300}, CONTEXT, notes)
    assert event.title == "adapter title" and event.severity is Severity.HIGH
    assert event.dedup_key is not None and event.dedup_key.startswith("sha256:")  # fits the column
    assert notes == [
        "field_mapping.severity: 'weird' is in neither severity_map nor the severity words; kept 'high'"
    ]


def test_events_selects_the_alerts_of_a_payload_each_mapped_against_its_own_item() -> None:
    mapping = compile_mapping({"events": "alerts", "title": "labels.alertname", "status": "status"})
    assert mapping is not None
    payload = {
        "alerts": [
            {"labels": {"alertname": "A"}, "status": "firing"},
            {"labels": {"alertname": "B"}, "status": "resolved"},
        ]
    }
    events = mapping.normalize(_Adapter(), payload, CONTEXT)
    assert [(e.title, e.action) for e in events] == [("A", EventAction.TRIGGER), ("B", EventAction.RESOLVE)]
    assert json.loads(events[1].raw_payload) == payload["alerts"][1]
    # An array body of as many alerts as the adapter made: each maps against its own element.
    mapping = compile_mapping({"title": "labels.alertname"})
    assert mapping is not None
    assert [e.title for e in mapping.normalize(_Adapter(), payload["alerts"], CONTEXT)] == ["A", "B"]
    # null selects the payload itself; an empty list is refused.
    mapping = compile_mapping({"events": "alerts", "title": "name"})
    assert mapping is not None
    assert [e.title for e in mapping.normalize(_Adapter(), {"name": "one"}, CONTEXT)] == ["one"]
    with pytest.raises(InvalidArgument, match="selected no alerts"):
        mapping.normalize(_Adapter(), {"alerts": []}, CONTEXT)


def test_a_mapping_stops_at_its_step_budget_and_keeps_the_adapter_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(field_mapping, "MAX_VISITS", 50)
    mapping = compile_mapping({"title": "items[*].name | [-1]", "dedup_key": "id"})
    assert mapping is not None
    notes: list[str] = []
    (event,) = mapping.normalize(
        _Adapter(), {"items": [{"name": str(i)} for i in range(100)], "id": "k"}, CONTEXT, notes
    )
    assert event.title == "adapter title" and event.dedup_key is None
    assert notes[0].startswith("field_mapping.title: stopped after 50 steps")
    assert notes[1].startswith("field_mapping.dedup_key: not evaluated")
    # A function given the wrong type fails alone.
    mapping = compile_mapping({"title": "length(n)", "dedup_key": "id"})
    assert mapping is not None
    notes = []
    (event,) = mapping.normalize(_Adapter(), {"n": 5, "id": "k"}, CONTEXT, notes)
    assert (event.title, event.dedup_key) == ("adapter title", "k")
    assert notes and notes[0].startswith("field_mapping.title: ")


def test_a_dotted_path_with_indexes_is_a_jmespath_expression() -> None:
    assert jmespath.search("alerts[0].labels.alertname", {"alerts": [{"labels": {"alertname": "X"}}]}) == "X"


# Plain paths take the fast path (direct lookups); it must agree with JMESPath's interpreter.
FAST_PATHS = [
    "a",
    "a.b",
    "a.b.c",
    "a[0]",
    "a[-1]",
    "a[-3]",
    "a[5]",
    "a[0].b",
    "a[1][0]",
    "a[0][-1]",
    "[0]",
    "[-1].b",
    '"a"',
    '"dotted.key"',
    '"dotted.key".x',
    '"with space"[0]',
    'a."b"',
    '"a"."b"."c"',
    "labels.alertname",
    "missing",
    "missing.deeper[0]",
    "n.b",
    "s[0]",
    "s.b",
    "t.b",
    "z",
    "z.b",
    "f[0]",
]
FAST_PAYLOADS: list[Any] = [
    {"a": {"b": {"c": "C"}}},
    {"a": [{"b": 1}, [10, 20], {"b": None}]},
    {"a": [[1, 2], [3]], "b": "x"},
    {"a": []},
    {"a": "text", "n": 5, "s": "string", "t": True, "z": None, "f": 1.5},
    {"dotted.key": {"x": "X"}, "with space": ["first", "second"], "a": {"b": {"c": 0}}},
    {"labels": {"alertname": "HighCPU"}, "a": {"b": False}},
    [{"b": "B0"}, {"b": "B1"}],
    [[1], [2]],
    [],
    "top-level string",
    42,
    None,
]


@pytest.mark.parametrize("expression", FAST_PATHS)
def test_the_fast_path_agrees_with_the_interpreter(expression: str) -> None:
    compiled = field_mapping._compile(expression)
    assert compiled.path is not None, f"{expression} should take the fast path"
    for payload in FAST_PAYLOADS:
        interpreter = field_mapping._Interpreter()
        expected = interpreter.visit(compiled.parsed, payload)
        assert field_mapping._walk(compiled.path, payload) == expected, (expression, payload)
        # and it is charged what the interpreter charged
        assert field_mapping.MAX_VISITS - interpreter.steps_left == compiled.steps, expression


@pytest.mark.parametrize(
    "expression",
    [
        "a[*].b",
        "a[0:2]",
        "a[]",
        "a[?b == `1`]",
        "a.*",
        "a || b",
        "a | b",
        "join(' ', [a, b])",
        '`"literal"`',
        "'raw'",
        "{x: a}",
        "[a, b]",
        "!a",
        "a.b == c",
    ],
)
def test_everything_else_goes_through_the_interpreter(expression: str) -> None:
    assert field_mapping._compile(expression).path is None


def test_a_mapping_with_paths_and_expressions_gives_the_same_events_either_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stored = {
        "title": "join(' ', [labels.alertname, labels.instance])",
        "severity": "labels.severity",
        "severity_map": {"crit": "critical"},
        "dedup_key": "id",
        "description": "annotations.description",
        "links": "urls[0]",
        "device": '"host"."name"',
    }
    payload = [
        {
            "labels": {"alertname": "HighCPU", "instance": "srv:9100", "severity": "crit"},
            "annotations": {"description": "hot"},
            "id": f"k{i}",
            "urls": [f"https://mon.example/{i}"],
            "host": {"name": "srv"} if i else "not an object",
        }
        for i in range(3)
    ]
    fast = compile_mapping(stored)
    assert fast is not None
    assert [c.path is not None for _, c in fast.expressions] == [False, True, True, True, True, True]
    with monkeypatch.context() as patched:
        patched.setattr(field_mapping, "_path_steps", lambda node: None)
        slow = compile_mapping(stored)
    assert slow is not None and all(c.path is None for _, c in slow.expressions)

    class Webhookish(_Adapter):
        pass

    assert fast.normalize(Webhookish(), payload, CONTEXT) == slow.normalize(Webhookish(), payload, CONTEXT)
    events = fast.normalize(Webhookish(), payload, CONTEXT)
    assert [e.title for e in events] == ["HighCPU srv:9100"] * 3
    assert [e.dedup_key for e in events] == ["k0", "k1", "k2"]
    assert events[0].severity is Severity.CRITICAL
    assert "device_name" not in events[0].details and events[1].details["device_name"] == "srv"


# --- end to end ---------------------------------------------------------------------------------


def bad_request(error: grpc.aio.AioRpcError) -> tuple[str, str]:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    bad = error_details_pb2.BadRequest()
    assert rpc_status.from_call(error).details[0].Unpack(bad)
    return bad.field_violations[0].field, bad.field_violations[0].description


async def put_integration(
    server: RunningServer, token: str, integration_id: str, body: Any
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{server.http_url}/api/integrations/{integration_id}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        return response.status, await response.json()


async def test_a_mapped_payload_is_stored_with_the_mapped_fields_and_its_recovery_resolves(
    server: RunningServer,
) -> None:
    tenant = await bootstrap(server.app)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = integration_service_pb2_grpc.IntegrationServiceStub(channel)
        update = integration_service_pb2.UpdateIntegrationRequest(
            integration=integration_pb2.Integration(
                id=tenant.integration_id, field_mapping=integration_pb2.FieldMapping(**MAPPING)
            )
        )
        update.update_mask.paths.append("field_mapping")
        shown = (await stub.UpdateIntegration(update, metadata=tenant.auth)).integration
        assert shown.field_mapping.severity_map == {"Yellow": "medium", "Red": "critical"}
        got = await stub.GetIntegration(
            integration_service_pb2.GetIntegrationRequest(integration_id=tenant.integration_id),
            metadata=tenant.auth,
        )
        assert got.integration.field_mapping.title == "event.name"

    status, body = await post_json(webhook_url(server, tenant), PROBLEM)
    assert status == 202, body
    assert (body["outcome"], body["dedup_key"]) == ("created", "4821")
    (alert,) = await alerts_of(server.app, tenant.service_id)
    assert (alert.title, Severity(alert.severity), alert.dedup_key, alert.state) == (
        "Disk C: almost full",
        Severity.MEDIUM,
        "4821",
        "triggered",
    )
    assert alert.description == "Free space below 5 %"
    assert alert.details["device_name"] == "client-server-01"
    assert json.loads(alert.details["links"]) == ["https://mon.example/e/4821"]

    status, body = await post_json(webhook_url(server, tenant), recovery())
    assert status == 202, body
    assert body["outcome"] == "resolved"
    (alert,) = await alerts_of(server.app, tenant.service_id)
    assert alert.state == "resolved"


async def test_an_invalid_mapping_is_refused_naming_the_field_and_nothing_changes(
    server: RunningServer,
) -> None:
    tenant = await bootstrap(server.app)
    status, body = await put_integration(
        server, tenant.api_token, tenant.integration_id, {"field_mapping": MAPPING}
    )
    assert status == 200, body
    assert body["field_mapping"]["severity_map"] == {"Yellow": "medium", "Red": "critical"}

    bad = {**MAPPING, "title": "event.name[", "severity_map": {"Yellow": "medium"}}
    status, body = await put_integration(
        server, tenant.api_token, tenant.integration_id, {"name": "Renamed", "field_mapping": bad}
    )
    assert status == 400, body
    assert body["fields"][0]["field"] == "field_mapping.title"
    assert "not a valid JMESPath expression" in body["fields"][0]["description"]
    row = await server.app.integrations.get(tenant.tenant_id, tenant.integration_id)
    assert (row.name, row.field_mapping) == ("Test Integration", parse_mapping(MAPPING))

    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = integration_service_pb2_grpc.IntegrationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateIntegration(
                integration_service_pb2.CreateIntegrationRequest(
                    integration=integration_pb2.Integration(
                        service_id=tenant.service_id,
                        name="Custom",
                        field_mapping=integration_pb2.FieldMapping(
                            status="s", status_map={"OK": "sometimes"}
                        ),
                    )
                ),
                metadata=tenant.auth,
            )
        field, description = bad_request(caught.value)
        assert field == 'integration.field_mapping.status_map["OK"]'
        assert "must be an action" in description
        listed = await stub.ListIntegrations(
            integration_service_pb2.ListIntegrationsRequest(), metadata=tenant.auth
        )
        assert [i.name for i in listed.integrations] == ["Test Integration"]
    # The stored mapping still applies.
    status, body = await post_json(webhook_url(server, tenant), PROBLEM)
    assert (status, body["dedup_key"]) == (202, "4821")


async def test_the_test_call_shows_the_normalized_events_and_stores_nothing(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    await server.app.integrations.update(tenant.tenant_id, tenant.integration_id, {"field_mapping": MAPPING})
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = integration_service_pb2_grpc.IntegrationServiceStub(channel)
        answer = await stub.TestFieldMapping(
            integration_service_pb2.TestFieldMappingRequest(
                integration_id=tenant.integration_id, sample_payload=json.dumps(PROBLEM)
            ),
            metadata=tenant.auth,
        )
        (event,) = answer.events
        assert (event.title, event.severity, event.dedup_key, event.action) == (
            "Disk C: almost full",
            alert_pb2.SEVERITY_MEDIUM,
            "4821",
            alert_pb2.EVENT_ACTION_TRIGGER,
        )
        assert event.details["device_name"] == "client-server-01" and not event.raw_payload
        assert list(answer.notes) == []
        # A mapping given in the call is tried instead of the stored one, with notes.
        answer = await stub.TestFieldMapping(
            integration_service_pb2.TestFieldMappingRequest(
                integration_id=tenant.integration_id,
                sample_payload=json.dumps(recovery()),
                field_mapping=integration_pb2.FieldMapping(
                    dedup_key="event.id", status="event.state", severity="event.priority"
                ),
            ),
            metadata=tenant.auth,
        )
        (event,) = answer.events
        assert (event.title, event.action) == ("Free space below 5 %", alert_pb2.EVENT_ACTION_RESOLVE)
        assert event.severity == alert_pb2.SEVERITY_HIGH
        assert "'Yellow' is in neither severity_map" in answer.notes[0]
        # Refused like a save: the field is named.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.TestFieldMapping(
                integration_service_pb2.TestFieldMappingRequest(
                    sample_payload="{}", field_mapping=integration_pb2.FieldMapping(title="a[")
                ),
                metadata=tenant.auth,
            )
        assert bad_request(caught.value)[0] == "field_mapping.title"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.TestFieldMapping(
                integration_service_pb2.TestFieldMappingRequest(sample_payload="{"), metadata=tenant.auth
            )
        assert bad_request(caught.value)[0] == "sample_payload"

    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.http_url}/api/integrations/{tenant.integration_id}/test-mapping",
            json={"payload": [PROBLEM, recovery()]},
            headers={"Authorization": f"Bearer {tenant.api_token}"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        body = await response.json()
    assert [(e["title"], e["severity"], e["dedup_key"], e["action"]) for e in body["events"]] == [
        ("Disk C: almost full", "medium", "4821", "trigger"),
        ("Disk C: almost full", "medium", "4821", "resolve"),
    ]
    assert await count_rows(server.app) == (0, 0)


async def test_a_cleared_mapping_gives_the_adapter_fields_back(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    status, body = await put_integration(
        server, tenant.api_token, tenant.integration_id, {"field_mapping": MAPPING}
    )
    assert status == 200, body
    status, body = await post_json(webhook_url(server, tenant), PROBLEM)
    assert (status, body["dedup_key"]) == (202, "4821")

    status, body = await put_integration(
        server, tenant.api_token, tenant.integration_id, {"field_mapping": None}
    )
    assert (status, body["field_mapping"]) == (200, None)
    status, body = await post_json(webhook_url(server, tenant), PROBLEM)
    assert (status, body["dedup_key"]) == (202, "")  # the adapter finds no dedup field
    stored = sorted(await alerts_of(server.app, tenant.service_id), key=lambda a: a.id)
    assert [(a.title, Severity(a.severity)) for a in stored] == [
        ("Disk C: almost full", Severity.MEDIUM),
        ("Free space below 5 %", Severity.HIGH),  # the webhook's own rules: "message", the default
    ]
