"""Defend → On-Call (spec "Defend Alert Integration"), over HTTP and gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from oncall_server.api.v1 import alert_pb2, ingest_service_pb2, ingest_service_pb2_grpc
from oncall_server.clock import FakeClock
from oncall_server.storage.models import Notification
from oncall_server.testing import (
    RunningServer,
    Tenant,
    add_policy,
    add_user,
    bootstrap,
    running_server,
    server_settings,
    settle,
)
from tests.helpers import WebhookReceiver, count_rows

SERVICE_KEY = "defend-shared-secret-for-tests"
DETECTION = {
    "title": "Ransomware behavior detected on CLIENT-WS-04",
    "severity": "critical",
    "source": "defend",
    "source_ref": "det-7731",
    "description": "Process chain: winword.exe > powershell.exe > vssadmin.exe delete shadows",
    "device_name": "CLIENT-WS-04",
    "detection_type": "T1486 - Data Encrypted for Impact",
    "mitre_technique": "T1486 Data Encrypted for Impact",
    "recommended_action": "Isolate device from network",
}


@pytest.fixture
async def defend_server(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis
) -> AsyncIterator[RunningServer]:
    settings = server_settings(tmp_path, database_url, redis_url, defend_service_key=SERVICE_KEY)
    async with running_server(settings) as running:
        yield running


async def defend_tenant(server: RunningServer, **kwargs: Any) -> Tenant:
    return await bootstrap(
        server.app, service="Defend Critical Alerts", integration_type="defend",
        alert_grouping="time", alert_grouping_timeout_minutes=5, **kwargs,
    )  # fmt: skip


async def escalate(server: RunningServer, body: Any, key: str | None = SERVICE_KEY) -> tuple[int, Any]:
    headers = {"X-Integration-Key": key} if key is not None else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.http_url}/api/internal/escalations/create", json=body, headers=headers
        ) as response,
    ):
        return response.status, await response.json()


async def test_critical_detection_opens_an_incident_with_the_technicians_context(
    defend_server: RunningServer,
) -> None:
    tenant = await defend_tenant(defend_server)
    status, body = await escalate(defend_server, {**DETECTION, "tenant_id": tenant.tenant_id})
    assert status == 202, body
    assert body["outcome"] == "created"
    assert body["incident_url"].endswith(f"/incidents/{body['incident_id']}")
    incident = await defend_server.app.incidents.get(tenant.tenant_id, body["incident_id"])
    assert (
        incident.source == "defend" and incident.source_ref == "det-7731" and incident.dedup_key == "det-7731"
    )
    assert incident.details["device_name"] == "CLIENT-WS-04"
    assert incident.details["detection_type"] == "T1486 - Data Encrypted for Impact"
    assert incident.details["mitre_technique"] == "T1486 Data Encrypted for Impact"
    assert incident.details["recommended_action"] == "Isolate device from network"
    assert incident.details["defend_url"].endswith("/detections/det-7731")


@pytest.mark.parametrize(
    ("severity", "outcome"),
    [
        ("critical", "created"),
        ("high", "created"),
        ("medium", "recorded"),
        ("low", "recorded"),
        ("info", "recorded"),
    ],
)
async def test_only_critical_and_high_page(defend_server: RunningServer, severity: str, outcome: str) -> None:
    tenant = await defend_tenant(defend_server)
    status, body = await escalate(
        defend_server, {**DETECTION, "severity": severity, "tenant_id": tenant.tenant_id}
    )
    assert status == 202 and body["outcome"] == outcome
    assert await count_rows(defend_server.app) == (1, 1 if outcome == "created" else 0)


async def test_threshold_is_adjustable_through_routing_rules(defend_server: RunningServer) -> None:
    tenant = await defend_tenant(
        defend_server, routing_rules=[{"severity_filter": {"minimum_severity": "medium"}}]
    )
    _, medium = await escalate(
        defend_server, {**DETECTION, "severity": "medium", "tenant_id": tenant.tenant_id}
    )
    _, low = await escalate(
        defend_server, {**DETECTION, "severity": "low", "source_ref": "d2", "tenant_id": tenant.tenant_id}
    )
    assert (medium["outcome"], low["outcome"]) == ("created", "recorded")


@pytest.mark.parametrize("key", [None, "", "wrong-key", SERVICE_KEY + "x"])
async def test_wrong_or_missing_service_key_is_401_and_stores_nothing(
    defend_server: RunningServer, key: str | None
) -> None:
    tenant = await defend_tenant(defend_server)
    status, body = await escalate(defend_server, {**DETECTION, "tenant_id": tenant.tenant_id}, key=key)
    assert status == 401
    assert "Defend service key" in body["message"]
    assert await count_rows(defend_server.app) == (0, 0)


async def test_unset_service_key_refuses_every_call(server: RunningServer) -> None:
    tenant = await defend_tenant(server)
    status, _ = await escalate(server, {**DETECTION, "tenant_id": tenant.tenant_id}, key="")
    assert status == 401
    status, _ = await escalate(server, {**DETECTION, "tenant_id": tenant.tenant_id}, key="anything")
    assert status == 401


async def test_missing_fields_are_named(defend_server: RunningServer) -> None:
    tenant = await defend_tenant(defend_server)
    body = {k: v for k, v in DETECTION.items() if k not in ("title", "source_ref")}
    status, answer = await escalate(defend_server, {**body, "tenant_id": tenant.tenant_id})
    assert status == 400
    assert [f["field"] for f in answer["fields"]] == ["title", "source_ref"]
    status, answer = await escalate(
        defend_server, {**DETECTION, "severity": "catastrophic", "tenant_id": tenant.tenant_id}
    )
    assert status == 400 and answer["fields"][0]["field"] == "severity"
    assert await count_rows(defend_server.app) == (0, 0)


async def test_unknown_tenant_is_404_and_creates_nothing(defend_server: RunningServer) -> None:
    await defend_tenant(defend_server)
    status, body = await escalate(
        defend_server, {**DETECTION, "tenant_id": "01a20000-0000-7000-8000-000000000000"}
    )
    assert status == 404 and "has no defend integration" in body["message"]
    status, _ = await escalate(defend_server, {**DETECTION, "tenant_id": "not-an-id"})
    assert status == 404
    assert await count_rows(defend_server.app) == (0, 0)


async def test_a_ransomware_burst_of_100_alerts_is_one_incident(defend_server: RunningServer) -> None:
    tenant = await defend_tenant(defend_server)
    answers = await asyncio.gather(
        *(escalate(defend_server, {**DETECTION, "tenant_id": tenant.tenant_id}) for _ in range(100))
    )
    assert {status for status, _ in answers} == {202}
    assert [b["outcome"] for _, b in answers].count("created") == 1
    assert len({b["incident_id"] for _, b in answers}) == 1
    assert await count_rows(defend_server.app) == (1, 1)


async def test_grpc_create_escalation_has_the_same_semantics(defend_server: RunningServer) -> None:
    tenant = await defend_tenant(defend_server)
    request = ingest_service_pb2.CreateEscalationRequest(**{**DETECTION, "tenant_id": tenant.tenant_id})
    async with grpc.aio.insecure_channel(defend_server.grpc_target) as channel:
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.CreateEscalation(request, metadata=[("x-integration-key", "wrong")])
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        first = await stub.CreateEscalation(request, metadata=[("x-integration-key", SERVICE_KEY)])
        again = await stub.CreateEscalation(request, metadata=[("x-integration-key", SERVICE_KEY)])
        assert first.result.outcome == alert_pb2.INGEST_OUTCOME_CREATED
        assert again.result.outcome == alert_pb2.INGEST_OUTCOME_DEDUPLICATED
        assert again.result.incident_id == first.result.incident_id
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.CreateEscalation(
                ingest_service_pb2.CreateEscalationRequest(tenant_id=tenant.tenant_id, severity="high"),
                metadata=[("x-integration-key", SERVICE_KEY)],
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "title" in (bad.value.details() or "")


async def test_a_defend_page_carries_what_the_technician_needs_and_a_burst_pages_once(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    redis: Redis,
    webhook_receiver: WebhookReceiver,
    clock: FakeClock,
) -> None:
    """Spec "What the On-Call Technician Sees", end to end: detection in, escalation starts, one page out.

    The test drives the scheduler and dispatcher (``settle``) at the injected clock's now, so
    "no second page" is a fact once nothing is due, not the outcome of a wait.
    """
    settings = server_settings(
        tmp_path, database_url, redis_url, defend_service_key=SERVICE_KEY,
        webhook_allowed_networks=["127.0.0.0/8"], roles=("grpc", "gateway"),
    )  # fmt: skip
    async with running_server(settings, clock=clock) as server:
        await server.app.escalator.rebuild()
        tenant = await defend_tenant(server)
        tech = await add_user(
            server.app, tenant.tenant_id, "tech", contacts=[("webhook", webhook_receiver.url, "secret")]
        )
        await add_policy(
            server.app, tenant.tenant_id, [(300, [("user", tech)])], service_id=tenant.service_id
        )
        _, medium = await escalate(
            server, {**DETECTION, "severity": "medium", "source_ref": "det-1", "tenant_id": tenant.tenant_id}
        )
        answers = await asyncio.gather(
            *(escalate(server, {**DETECTION, "tenant_id": tenant.tenant_id}) for _ in range(100))
        )
        incident_id = answers[0][1]["incident_id"]

        async def paged() -> bool:
            return len(webhook_receiver.received) >= 1

        await settle(server.app)  # every step and send due now, until none is left
        assert await paged()
        assert medium["outcome"] == "recorded"
        [page] = webhook_receiver.bodies
        assert page["incident_id"] == incident_id and page["kind"] == "page" and page["tier"] == 1
        assert (page["title"], page["severity"], page["service_name"]) == (
            DETECTION["title"], "critical", "Defend Critical Alerts",
        )  # fmt: skip
        assert page["device_name"] == "CLIENT-WS-04"
        assert page["detection_type"] == "T1486 - Data Encrypted for Impact"
        assert page["mitre_technique"] == "T1486 Data Encrypted for Impact"
        assert page["recommended_action"] == "Isolate device from network"
        assert page["incident_url"] == answers[0][1]["incident_url"]
        assert page["defend_url"].endswith("/detections/det-7731")
        async with server.app.sessions() as session:
            pages = await session.scalar(select(func.count()).select_from(Notification))
        assert pages == 1
