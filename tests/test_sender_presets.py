"""The sender presets end to end: each vendor's firing, repeat and recovery, as the vendor sends
them, over loopback HTTP to a real server: one incident, one page, closed by the recovery."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import oncall_adapters
import pytest
from redis.asyncio import Redis
from sqlalchemy import select

from oncall_server.runtime.app import App
from oncall_server.storage.models import Incident
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
from tests.helpers import post_body, webhook_url

SAMPLES = Path(oncall_adapters.__file__).parent / "samples"


def sample(adapter: str, case: str) -> Any:
    return json.loads((SAMPLES / adapter / f"{case}.json").read_text())["payload"]


def datadog_renotify() -> Any:
    """Datadog's reminder while the monitor still alerts: a new event (new ``id``), same monitor and scope."""
    body = copy.deepcopy(sample("datadog", "triggered"))
    body.update(id="7551296000000000001", alert_transition="Renotify")
    return body


# (integration type, firing, the vendor's repeat while it still fires, recovery)
SEQUENCES = {
    "alertmanager": (sample("alertmanager", "firing"), None, sample("alertmanager", "resolved")),
    "grafana": (sample("grafana", "firing"), None, sample("grafana", "resolved")),
    "zabbix": (sample("zabbix", "problem"), None, sample("zabbix", "recovery")),
    "uptime_kuma": (sample("uptime_kuma", "down"), None, sample("uptime_kuma", "up")),
    "datadog": (sample("datadog", "triggered"), datadog_renotify(), sample("datadog", "recovered")),
}


async def paged_tenant(server: RunningServer, integration_type: str) -> Tenant:
    tenant = await bootstrap(server.app, integration_type=integration_type)
    user = await add_user(server.app, tenant.tenant_id, "Ana", contacts=[("capture", "ana", "")])
    await add_policy(server.app, tenant.tenant_id, [(0, [("user", user)])], service_id=tenant.service_id)
    return tenant


async def deliver(server: RunningServer, tenant: Tenant, body: Any) -> tuple[int, Any]:
    """One delivery as the sender makes it (JSON body on the webhook URL), then every due page."""
    async with aiohttp.ClientSession() as http:
        answer = await post_body(http, webhook_url(server, tenant), json.dumps(body).encode())
    await settle(server.app)
    return answer


def outcomes(answer: Any) -> list[str]:
    return [r["outcome"] for r in answer.get("results", [answer])]


async def incidents_of(app: App, tenant: Tenant) -> list[Incident]:
    async with app.sessions() as session:
        rows = await session.scalars(
            select(Incident).where(Incident.tenant_id == tenant.tenant_id).order_by(Incident.id)
        )
        return list(rows.all())


@pytest.mark.parametrize("integration_type", sorted(SEQUENCES))
async def test_firing_repeat_and_recovery_make_one_incident_one_page_and_resolve_it(
    paging: tuple[RunningServer, CaptureChannel], integration_type: str
) -> None:
    server, channel = paging
    tenant = await paged_tenant(server, integration_type)
    firing, repeat, recovery = SEQUENCES[integration_type]
    status, fired = await deliver(server, tenant, firing)
    assert (status, outcomes(fired)) == (202, ["created"]), fired
    status, again = await deliver(server, tenant, repeat or firing)
    assert (status, outcomes(again)) == (202, ["deduplicated"]), again
    status, recovered = await deliver(server, tenant, recovery)
    assert (status, outcomes(recovered)) == (202, ["resolved"]), recovered
    [incident] = await incidents_of(server.app, tenant)
    assert incident.id == fired["incident_id"] == recovered["incident_id"]
    assert incident.status == "resolved" and incident.resolved_by == "source:Test Integration"
    [page] = channel.to("ana")  # the firing's; none for the repeat or the recovery
    assert page.incident_id == incident.id and page.source == integration_type


async def test_alertmanager_ha_pair_sending_everything_twice_is_harmless(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, channel = paging
    tenant = await paged_tenant(server, "alertmanager")
    firing, _, resolved = SEQUENCES["alertmanager"]
    answers = [await deliver(server, tenant, body) for body in (firing, firing, resolved, resolved)]
    assert [(status, outcomes(a)) for status, a in answers] == [
        (202, ["created"]),
        (202, ["deduplicated"]),
        (202, ["resolved"]),
        (202, ["no_op"]),  # the second Alertmanager's resolve finds nothing open
    ]
    [incident] = await incidents_of(server.app, tenant)
    assert incident.status == "resolved"
    assert len(channel.to("ana")) == 1


async def test_alertmanager_group_with_one_firing_and_one_resolved_alert(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, channel = paging
    tenant = await paged_tenant(server, "alertmanager")
    group = sample("alertmanager", "group_firing_and_resolved")
    both_firing = copy.deepcopy(group)
    both_firing["alerts"][1]["status"] = "firing"
    status, first = await deliver(server, tenant, both_firing)
    assert (status, outcomes(first)) == (202, ["created", "created"])
    status, second = await deliver(server, tenant, group)
    assert (status, outcomes(second)) == (202, ["deduplicated", "resolved"])
    by_id = {i.id: i.status for i in await incidents_of(server.app, tenant)}
    still_firing, recovered = (r["incident_id"] for r in first["results"])
    assert by_id == {still_firing: "triggered", recovered: "resolved"}
    assert len(channel.to("ana")) == 2  # one per alert, from the first notification


async def test_uptime_kuma_test_button_pages_nobody(paging: tuple[RunningServer, CaptureChannel]) -> None:
    server, channel = paging
    tenant = await paged_tenant(server, "uptime_kuma")
    status, answer = await deliver(server, tenant, sample("uptime_kuma", "test_message"))
    assert (status, outcomes(answer)) == (202, ["recorded"])
    assert await incidents_of(server.app, tenant) == [] and channel.sent == []


async def test_zabbix_acknowledgement_acknowledges_the_incident(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, _ = paging
    tenant = await paged_tenant(server, "zabbix")
    await deliver(server, tenant, sample("zabbix", "problem"))
    status, answer = await deliver(server, tenant, sample("zabbix", "acknowledged"))
    assert (status, outcomes(answer)) == (202, ["acknowledged"])
    [incident] = await incidents_of(server.app, tenant)
    assert incident.status == "acknowledged"


@pytest.mark.parametrize(
    ("integration_type", "body", "field"),
    [
        ("alertmanager", {"version": "4", "status": "firing", "receiver": "oncall"}, "alerts"),
        ("alertmanager", {"alerts": [{"status": "pending", "labels": {"a": "b"}}]}, "alerts[0].status"),
        ("grafana", {"title": "[FIRING:1] x", "state": "alerting"}, "alerts"),
        ("zabbix", {"event_name": "High CPU", "event_value": "1"}, "event_id"),
        ("zabbix", {"event_id": "1", "event_value": "{EVENT.VALUE}"}, "event_value"),
        ("uptime_kuma", {"monitor": {"id": 3, "name": "x"}}, "heartbeat"),
        ("datadog", {"alert_title": "High CPU", "alert_transition": "Triggered"}, "alert_id"),
        ("datadog", {"alert_id": "$ALERT_ID", "alert_transition": "Triggered"}, "alert_id"),
    ],
)
async def test_a_body_the_sender_does_not_send_is_refused_naming_the_field(
    paging: tuple[RunningServer, CaptureChannel], integration_type: str, body: Any, field: str
) -> None:
    server, channel = paging
    tenant = await paged_tenant(server, integration_type)
    status, answer = await deliver(server, tenant, body)
    assert status == 400, answer
    assert [f["field"] for f in answer["fields"]] == [field]
    assert await incidents_of(server.app, tenant) == [] and channel.sent == []


# -- overload: senders that retry only 5xx are answered 503 ------------------------------------


@pytest.fixture
async def one_alert_queue(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis
) -> AsyncIterator[RunningServer]:
    settings = server_settings(
        tmp_path, database_url, redis_url, ingest_integration_queue_alerts=1, ingest_queue_wait_seconds=0
    )
    async with running_server(settings) as running:
        yield running


@pytest.mark.parametrize(
    ("integration_type", "firing", "expected"),
    [
        ("alertmanager", sample("alertmanager", "firing"), 503),  # retries 5xx, never 4xx
        ("datadog", sample("datadog", "triggered"), 503),  # likewise
        ("zabbix", sample("zabbix", "problem"), 429),  # its script fails on any non-2xx; Zabbix retries
    ],
)
async def test_over_the_queue_limit_the_sender_gets_the_status_it_retries(
    one_alert_queue: RunningServer, redis: Redis, integration_type: str, firing: Any, expected: int
) -> None:
    server = one_alert_queue
    tenant = await bootstrap(server.app, integration_type=integration_type)
    url = webhook_url(server, tenant)
    body = json.dumps(firing).encode()

    async def held() -> bool:
        return server.app.writer.queue.queued_alerts >= 1

    async with aiohttp.ClientSession() as http:
        await redis.execute_command("CLIENT", "PAUSE", "4000", "WRITE")  # the writer's batch waits
        try:
            first = asyncio.ensure_future(post_body(http, url, body))
            await wait_for(held)
            async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as refused:
                assert refused.status == expected
                assert int(refused.headers["Retry-After"]) >= 1
        finally:
            await redis.execute_command("CLIENT", "UNPAUSE")
        assert (await first)[0] == 202
        # The sender's retry, once there is room, is accepted (and deduplicates onto the first).
        status, answer = await post_body(http, url, body)
    assert (status, outcomes(answer)) == (202, ["deduplicated"])
