"""The PagerDuty Events API v2 face: what pages PagerDuty pages On-Call, with PagerDuty's answers.

Real HTTP over loopback to a real server; the request bodies are PagerDuty's documented examples
with an On-Call integration key as ``routing_key``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from sqlalchemy import func, select

from oncall_server.clock import FakeClock
from oncall_server.severity import Severity
from oncall_server.storage.models import Alert, Incident, ServiceEvent
from oncall_server.testing import (
    CaptureChannel,
    RunningServer,
    Tenant,
    add_policy,
    add_user,
    bootstrap,
    running_server,
    server_settings,
    settle,
    wait_for,
)

SUCCESS = {"status": "success", "message": "Event processed"}


async def paged_tenant(server: RunningServer, **service: Any) -> Tenant:
    """A tenant whose service pages Ana at once and Bo 300 s later unless acknowledged."""
    tenant = await bootstrap(server.app, **service)
    ana = await add_user(server.app, tenant.tenant_id, "Ana", contacts=[("capture", "ana", "")])
    bo = await add_user(server.app, tenant.tenant_id, "Bo", contacts=[("capture", "bo", "")])
    await add_policy(
        server.app,
        tenant.tenant_id,
        [(300, [("user", ana)]), (300, [("user", bo)])],
        service_id=tenant.service_id,
    )
    return tenant


async def post(server: RunningServer, body: Any, path: str = "/v2/enqueue") -> tuple[int, Any]:
    """POST an event (a dict is sent as JSON, bytes as they are); the status and decoded answer."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.http_url}{path}", data=data, headers={"Content-Type": "application/json"}) as r,
    ):
        answer = await r.json(content_type=None)
    await settle(server.app)
    return r.status, answer


def trigger_event(key: str, dedup_key: str | None = "srv01/mysql", **payload: Any) -> dict[str, Any]:
    """PagerDuty's documented trigger example (Events API v2 OpenAPI), with our key."""
    event: dict[str, Any] = {
        "payload": {
            "summary": "DISK at 99% on machine prod-datapipe03.example.com",
            "timestamp": "2015-07-17T08:42:58.315+0000",
            "severity": "critical",
            "source": "prod-datapipe03.example.com",
            "component": "mysql",
            "group": "prod-datapipe",
            "class": "disk",
            "custom_details": {"free space": "1%", "ping time": "1500ms", "load avg": 0.75},
            **payload,
        },
        "routing_key": key,
        "dedup_key": dedup_key,
        "event_action": "trigger",
        "client": "Sample Monitoring Service",
        "client_url": "https://monitoring.service.com",
        "links": [{"href": "http://pagerduty.example.com", "text": "An example link."}],
        "images": [
            {"src": "https://chart.example.com/chart.png", "href": "https://example.com", "alt": "chart"}
        ],
    }
    if dedup_key is None:
        del event["dedup_key"]
    return event


def action_event(key: str, action: str, dedup_key: str) -> dict[str, Any]:
    return {"routing_key": key, "dedup_key": dedup_key, "event_action": action}


async def incidents_of(server: RunningServer, tenant: Tenant) -> list[Incident]:
    async with server.app.sessions() as session:
        query = select(Incident).where(Incident.tenant_id == tenant.tenant_id).order_by(Incident.id)
        return list((await session.scalars(query)).all())


async def alerts_of(server: RunningServer, tenant: Tenant) -> list[Alert]:
    async with server.app.sessions() as session:
        query = select(Alert).where(Alert.tenant_id == tenant.tenant_id).order_by(Alert.id)
        return list((await session.scalars(query)).all())


async def stored_rows(server: RunningServer) -> tuple[int, int, int]:
    """(alerts, incidents, service events) in the whole database."""
    async with server.app.sessions() as session:
        counts = [
            await session.scalar(select(func.count()).select_from(model))
            for model in (Alert, Incident, ServiceEvent)
        ]
    return int(counts[0] or 0), int(counts[1] or 0), int(counts[2] or 0)


async def test_trigger_trigger_acknowledge_resolve_is_one_incident_paged_once(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, channel = paging
    tenant = await paged_tenant(server)
    key = tenant.integration_key

    assert await post(server, trigger_event(key)) == (202, {**SUCCESS, "dedup_key": "srv01/mysql"})
    assert await post(server, trigger_event(key)) == (202, {**SUCCESS, "dedup_key": "srv01/mysql"})
    [incident] = await incidents_of(server, tenant)
    assert incident.status == "triggered" and incident.severity == Severity.CRITICAL
    assert channel.addresses == ["ana"]  # one page for the two triggers

    acked = await post(server, action_event(key, "acknowledge", "srv01/mysql"))
    assert acked == (202, {**SUCCESS, "dedup_key": "srv01/mysql"})
    [incident] = await incidents_of(server, tenant)
    assert incident.status == "acknowledged" and incident.acknowledged_by == "source:Test Integration"
    clock.advance(600)  # tier 2 would have paged Bo by now
    await settle(server.app)
    assert await post(server, trigger_event(key)) == (202, {**SUCCESS, "dedup_key": "srv01/mysql"})
    [incident] = await incidents_of(server, tenant)
    assert incident.status == "acknowledged"  # a trigger while acknowledged notifies nobody
    assert channel.addresses == ["ana"]

    resolved = await post(server, action_event(key, "resolve", "srv01/mysql"))
    assert resolved == (202, {**SUCCESS, "dedup_key": "srv01/mysql"})
    [incident] = await incidents_of(server, tenant)
    assert incident.status == "resolved" and incident.resolved_by == "source:Test Integration"
    assert channel.addresses == ["ana"]

    # After resolve, the same key opens a new alert and incident, and pages.
    assert await post(server, trigger_event(key)) == (202, {**SUCCESS, "dedup_key": "srv01/mysql"})
    first, second = await incidents_of(server, tenant)
    assert first.id == incident.id and second.status == "triggered"
    assert channel.addresses == ["ana", "ana"]
    assert [a.state for a in await alerts_of(server, tenant)] == ["resolved", "triggered"]


async def test_the_event_is_stored_as_on_call_fields_without_its_routing_key(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, channel = paging
    tenant = await paged_tenant(server)
    assert (await post(server, trigger_event(tenant.integration_key)))[0] == 202
    [alert] = await alerts_of(server, tenant)
    assert alert.title == "DISK at 99% on machine prod-datapipe03.example.com"
    assert (alert.severity, alert.source) == (Severity.CRITICAL, "pagerduty")
    assert alert.dedup_key == f"{tenant.integration_id}:srv01/mysql"  # scoped to its routing key
    assert alert.details == {
        "source": "prod-datapipe03.example.com",
        "component": "mysql",
        "group": "prod-datapipe",
        "class": "disk",
        "timestamp": "2015-07-17T08:42:58.315+0000",
        "custom_details.free space": "1%",
        "custom_details.ping time": "1500ms",
        "custom_details.load avg": "0.75",
        "client": "Sample Monitoring Service",
        "client_url": "https://monitoring.service.com",
        "links": '[{"href":"http://pagerduty.example.com","text":"An example link."}]',
        "images": '[{"src":"https://chart.example.com/chart.png","href":"https://example.com","alt":"chart"}]',
    }
    raw = alert.raw_payload
    assert json.loads(raw)["payload"]["class"] == "disk"
    assert tenant.integration_key not in raw and "routing_key" not in raw  # a credential is never stored
    assert channel.sent[0][0].title == alert.title


@pytest.mark.parametrize(
    ("word", "severity"),
    [("critical", "critical"), ("error", "high"), ("warning", "medium"), ("info", "info")],
)
async def test_severities_map_to_on_calls(
    paging: tuple[RunningServer, CaptureChannel], word: str, severity: str
) -> None:
    server, _ = paging
    tenant = await paged_tenant(server)
    assert (await post(server, trigger_event(tenant.integration_key, severity=word)))[0] == 202
    [alert] = await alerts_of(server, tenant)
    assert Severity(alert.severity).label == severity


async def test_keyless_triggers_get_distinct_generated_keys_that_resolve_them(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, channel = paging
    tenant = await paged_tenant(server)
    key = tenant.integration_key
    answers = [await post(server, trigger_event(key, dedup_key=None)) for _ in range(2)]
    assert [status for status, _ in answers] == [202, 202]
    first, second = (answer["dedup_key"] for _, answer in answers)
    assert re.fullmatch("[0-9a-f]{32}", first) and re.fullmatch("[0-9a-f]{32}", second) and first != second
    assert answers[0][1] == {**SUCCESS, "dedup_key": first}
    assert len(await incidents_of(server, tenant)) == 2 and channel.addresses == ["ana", "ana"]
    assert await post(server, action_event(key, "resolve", first)) == (202, {**SUCCESS, "dedup_key": first})
    statuses = {i.id: i.status for i in await incidents_of(server, tenant)}
    by_key = {a.dedup_key: a.incident_id for a in await alerts_of(server, tenant)}
    scope = tenant.integration_id
    assert (statuses[by_key[f"{scope}:{first}"]], statuses[by_key[f"{scope}:{second}"]]) == (
        "resolved",
        "triggered",
    )


@pytest.mark.parametrize("action", ["acknowledge", "resolve"])
async def test_acknowledge_or_resolve_of_an_unknown_key_is_accepted_and_recorded(
    paging: tuple[RunningServer, CaptureChannel], action: str
) -> None:
    server, channel = paging
    tenant = await paged_tenant(server)
    answer = await post(server, action_event(tenant.integration_key, action, "never-fired"))
    assert answer == (202, {**SUCCESS, "dedup_key": "never-fired"})
    assert await stored_rows(server) == (0, 0, 0) and channel.sent == []
    drops, _ = await server.app.pipeline.drops.latest(tenant.integration_id, 10)
    assert [(d.rule, d.reason) for d in drops] == [
        (f"{action} event", f"no open alert with dedup key '{tenant.integration_id}:never-fired'")
    ]


async def test_events_on_another_routing_key_never_touch_the_alert(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, _ = paging
    tenant, other = await paged_tenant(server), await paged_tenant(server)
    assert (await post(server, trigger_event(tenant.integration_key)))[0] == 202
    assert (await post(server, action_event(other.integration_key, "resolve", "srv01/mysql")))[0] == 202
    [incident] = await incidents_of(server, tenant)
    assert incident.status == "triggered"
    drops, _ = await server.app.pipeline.drops.latest(other.integration_id, 10)
    assert len(drops) == 1


def _invalid(*errors: str) -> dict[str, Any]:
    return {"status": "invalid event", "message": "Event object is invalid", "errors": list(errors)}


KEY = "{key}"  # replaced by the tenant's integration key
INVALID_EVENTS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("no routing key", {"event_action": "resolve", "dedup_key": "k"}, ["'routing_key' is missing or blank"]),
    ("no event action", {"routing_key": KEY, "dedup_key": "k"}, ["'event_action' is missing or blank"]),
    (
        "bad event action",
        {"routing_key": KEY, "event_action": "snooze", "dedup_key": "k"},
        ["'event_action' must be one of trigger, acknowledge, resolve"],
    ),
    (
        "trigger without payload",
        {"routing_key": KEY, "event_action": "trigger"},
        ["'payload' is missing or not an object"],
    ),
    (
        "trigger with an empty payload",
        {"routing_key": KEY, "event_action": "trigger", "payload": {}},
        [
            "'payload.summary' is missing or blank",
            "'payload.source' is missing or blank",
            "'payload.severity' is missing or blank",
        ],
    ),
    (
        "bad severity",
        {
            "routing_key": KEY,
            "event_action": "trigger",
            "payload": {"summary": "s", "source": "h", "severity": "high"},
        },
        ["'payload.severity' must be one of critical, error, warning, info"],
    ),
    (
        "summary too long",
        {
            "routing_key": KEY,
            "event_action": "trigger",
            "payload": {"summary": "s" * 1025, "source": "h", "severity": "info"},
        },
        ["'payload.summary' is longer than 1024 characters"],
    ),
    (
        "dedup key too long",
        {"routing_key": KEY, "event_action": "resolve", "dedup_key": "k" * 256},
        ["'dedup_key' is longer than 255 characters"],
    ),
    (
        "resolve without dedup key",
        {"routing_key": KEY, "event_action": "resolve"},
        ["'dedup_key' is required for resolve events"],
    ),
    (
        "acknowledge with an empty dedup key",
        {"routing_key": KEY, "event_action": "acknowledge", "dedup_key": ""},
        ["'dedup_key' is required for acknowledge events"],
    ),
    (
        "bad timestamp",
        {
            "routing_key": KEY,
            "event_action": "trigger",
            "payload": {"summary": "s", "source": "h", "severity": "info", "timestamp": "yesterday"},
        },
        ["'payload.timestamp' is not an ISO 8601 timestamp"],
    ),
    (
        "link without href",
        {
            "routing_key": KEY,
            "event_action": "trigger",
            "payload": {"summary": "s", "source": "h", "severity": "info"},
            "links": [{"text": "t"}],
        },
        ["'links[0].href' is missing or blank"],
    ),
    (
        "dedup key with NUL",
        {"routing_key": KEY, "event_action": "resolve", "dedup_key": "k\x00"},
        ["'dedup_key' must not contain NUL characters or unpaired UTF-16 surrogates"],
    ),
    (
        "unknown routing key",
        {"routing_key": "0123456789abcdef0123456789abcdef", "event_action": "resolve", "dedup_key": "k"},
        ["Invalid routing key"],
    ),
]


@pytest.mark.parametrize(
    ("event", "errors"), [p[1:] for p in INVALID_EVENTS], ids=[p[0] for p in INVALID_EVENTS]
)
async def test_invalid_events_are_refused_naming_the_field_and_nothing_is_stored(
    paging: tuple[RunningServer, CaptureChannel], event: dict[str, Any], errors: list[str]
) -> None:
    server, channel = paging
    tenant = await paged_tenant(server)
    if event.get("routing_key") == KEY:
        event = {**event, "routing_key": tenant.integration_key}
    assert await post(server, event) == (400, _invalid(*errors))
    assert await stored_rows(server) == (0, 0, 0) and channel.sent == []
    assert (await server.app.pipeline.drops.latest(tenant.integration_id, 10))[0] == []


@pytest.mark.parametrize("body", [b"{", b"not json", b"[]", b'"event"', b"\xff\xfe", b""])
async def test_a_body_that_is_no_json_object_is_an_unrecognized_object(
    paging: tuple[RunningServer, CaptureChannel], body: bytes
) -> None:
    server, _ = paging
    status, answer = await post(server, body)
    assert status == 400
    assert (
        answer["status"] == "Unrecognized object"
        and answer["message"] == "Event object format is unrecognized"
    )
    assert await stored_rows(server) == (0, 0, 0)


async def test_an_event_over_512_kb_is_refused_with_pagerdutys_answer(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, _ = paging
    tenant = await paged_tenant(server)
    event = trigger_event(tenant.integration_key, custom_details={"log": "x" * (512 * 1024)})
    body = json.dumps(event).encode()
    status, answer = await post(server, body)  # Content-Length over the limit: refused before reading
    assert status == 400 and answer["status"] == "invalid event"
    assert answer["errors"] == [f"Event object is too large: at most {512 * 1024} bytes"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused once it grows too large
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.http_url}/v2/enqueue", data=chunks()) as response,
    ):
        assert response.status == 400
        assert (await response.json())["status"] == "invalid event"
    assert await stored_rows(server) == (0, 0, 0)


async def test_change_events_are_on_the_service_timeline_and_never_page(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, channel = paging
    tenant = await paged_tenant(server)
    change = {  # PagerDuty's documented change event
        "routing_key": tenant.integration_key,
        "payload": {
            "summary": "Build Success: Increase snapshot create timeout to 30 seconds",
            "timestamp": "2020-07-17T08:42:58.315+0000",
            "source": "acme-build-pipeline-tool-default-i-9999",
            "custom_details": {"build_state": "passed", "build_number": "2", "run_time": "1236s"},
        },
        "links": [{"href": "https://acme.pagerduty.dev/build/2", "text": "View more details in Acme!"}],
    }
    status, answer = await post(server, change, "/v2/change/enqueue")
    assert status == 202
    assert answer == {"status": "success", "message": "Change event processed", "id": answer["id"]}
    async with server.app.sessions() as session:
        [event] = (await session.scalars(select(ServiceEvent))).all()
    assert (event.id, event.service_id, event.summary) == (
        answer["id"],
        tenant.service_id,
        change["payload"]["summary"],
    )
    assert event.details["source"] == "acme-build-pipeline-tool-default-i-9999"
    assert event.details["custom_details.build_state"] == "passed"
    assert json.loads(event.details["links"])[0]["href"] == "https://acme.pagerduty.dev/build/2"
    assert tenant.integration_key not in event.raw_payload
    assert await incidents_of(server, tenant) == [] and channel.sent == []

    refused = await post(server, {"routing_key": tenant.integration_key, "payload": {}}, "/v2/change/enqueue")
    assert refused == (400, _invalid("'payload.summary' is missing or blank"))
    unknown = {"routing_key": "nope", "payload": {"summary": "deploy"}}
    assert await post(server, unknown, "/v2/change/enqueue") == (400, _invalid("Invalid routing key"))
    assert await stored_rows(server) == (0, 0, 1)


# -- over the ingest queue limit: 429, retried by PagerDuty clients ---------------------------------


async def test_over_the_queue_limit_the_event_is_refused_with_429_and_retry_after(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis
) -> None:
    settings_ = server_settings(
        tmp_path, database_url, redis_url, ingest_integration_queue_alerts=1, ingest_queue_wait_seconds=0
    )
    async with running_server(settings_) as server, aiohttp.ClientSession() as http:
        tenant = await bootstrap(server.app)
        url = f"{server.http_url}/v2/enqueue"

        async def send(dedup_key: str) -> tuple[int, Any, str | None]:
            data = json.dumps(trigger_event(tenant.integration_key, dedup_key)).encode()
            async with http.post(url, data=data) as response:
                return response.status, await response.json(), response.headers.get("Retry-After")

        await redis.execute_command("CLIENT", "PAUSE", "4000", "WRITE")  # the writer's decision waits
        try:
            held = asyncio.ensure_future(send("held"))

            async def queued() -> bool:
                return server.app.writer.queue.queued_alerts >= 1

            await wait_for(queued)
            status, answer, retry_after = await send("refused")
        finally:
            await redis.execute_command("CLIENT", "UNPAUSE")
        assert status == 429 and retry_after is not None and int(retry_after) >= 1
        assert answer["status"] == "throttle event"
        assert "ONCALL_INGEST_INTEGRATION_QUEUE_ALERTS" in answer["errors"][0]
        assert (await held)[:2] == (202, {**SUCCESS, "dedup_key": "held"})
        async with server.app.sessions() as session:
            keys = (await session.scalars(select(Alert.dedup_key))).all()
        assert keys == [f"{tenant.integration_id}:held"]


# -- nothing a client sends earns a 5xx --------------------------------------------------------------

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=20)
    | st.sampled_from(["trigger", "resolve", "info"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
_payloads = st.fixed_dictionaries(
    {},
    optional={
        "summary": _values,
        "source": _values,
        "severity": st.sampled_from(["critical", "error", "warning", "info", "high"]) | _values,
        "timestamp": st.sampled_from(["2015-07-17T08:42:58Z", "x"]) | _values,
        "custom_details": _values,
    },
)


def _events(key: str) -> st.SearchStrategy[dict[str, Any]]:
    valid = st.fixed_dictionaries(
        {
            "routing_key": st.just(key),
            "event_action": st.sampled_from(["trigger", "acknowledge", "resolve"]),
            "dedup_key": st.text(min_size=1, max_size=8),
            "payload": st.fixed_dictionaries(
                {
                    "summary": st.text(min_size=1, max_size=20).filter(str.strip),
                    "source": st.text(min_size=1, max_size=20).filter(str.strip),
                    "severity": st.sampled_from(["critical", "error", "warning", "info"]),
                },
                optional={"custom_details": _values, "component": _values, "class": _values},
            ),
        },
        optional={"links": st.just([{"href": "https://example.com"}]), "client": _values},
    )
    return valid | st.fixed_dictionaries(
        {},
        optional={
            "routing_key": st.just(key) | _values,
            "event_action": st.sampled_from(["trigger", "acknowledge", "resolve"]) | _values,
            "dedup_key": st.text(max_size=8) | _values,
            "payload": _payloads | _values,
            "links": st.lists(
                st.dictionaries(st.sampled_from(["href", "text"]), _values, max_size=2), max_size=2
            )
            | _values,
            "images": _values,
            "client": _values,
        },
    )


def test_random_events_never_earn_a_5xx(tmp_path: Path, backend_urls: dict[str, str], redis_url: str) -> None:
    with asyncio.Runner() as runner:
        settings_ = server_settings(tmp_path, backend_urls["sqlite"], redis_url)
        context = running_server(settings_)
        server = runner.run(context.__aenter__())
        try:
            tenant = runner.run(bootstrap(server.app))
            http = runner.run(_session())
            statuses: list[int] = []

            @settings(
                max_examples=150,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(
                event=_events(tenant.integration_key),
                path=st.sampled_from(["/v2/enqueue", "/v2/change/enqueue"]),
            )
            def check(event: dict[str, Any], path: str) -> None:
                async def send() -> int:
                    async with http.post(
                        f"{server.http_url}{path}", data=json.dumps(event).encode()
                    ) as response:
                        await response.read()
                        return response.status

                status = runner.run(send())
                statuses.append(status)
                assert status in (202, 400), (status, event)

            check()
            runner.run(http.close())
            assert statuses.count(202) >= 5 and statuses.count(400) >= 5
        finally:
            runner.run(context.__aexit__(None, None, None))


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


async def test_a_resolve_through_another_key_of_the_same_service_is_dropped(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, _ = paging
    tenant = await paged_tenant(server)
    _, other_key = await server.app.integrations.create(
        tenant.tenant_id, tenant.service_id, "Other tool", "webhook", None
    )
    assert (await post(server, trigger_event(tenant.integration_key)))[0] == 202
    assert (await post(server, action_event(other_key, "resolve", "srv01/mysql")))[0] == 202
    [incident] = await incidents_of(server, tenant)
    assert incident.status == "triggered"
