"""A source's resolve, acknowledge and change events act on the open alert and never page anyone."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import select

from oncall_server.api.v1 import (
    alert_pb2,
    catalog_service_pb2,
    catalog_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    service_pb2,
)
from oncall_server.clock import FakeClock
from oncall_server.storage.models import Alert, Incident, ServiceEvent, TimelineEntry
from oncall_server.testing import (
    CaptureChannel,
    RunningServer,
    Tenant,
    add_policy,
    add_user,
    bootstrap,
    settle,
)

Action = alert_pb2.EventAction


async def paged_tenant(server: RunningServer, **service: object) -> Tenant:
    tenant = await bootstrap(server.app, **service)  # type: ignore[arg-type]
    user = await add_user(server.app, tenant.tenant_id, "Ana", contacts=[("capture", "ana", "")])
    await add_policy(server.app, tenant.tenant_id, [(0, [("user", user)])], service_id=tenant.service_id)
    return tenant


async def send(
    server: RunningServer, tenant: Tenant, action: int, key: str, title: str = "Disk full on fs-01"
) -> ingest_service_pb2.IngestResult:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        answer = await ingest_service_pb2_grpc.IngestServiceStub(channel).IngestAlert(
            ingest_service_pb2.IngestAlertRequest(
                integration_key=tenant.integration_key,
                alert=alert_pb2.AlertEvent(title=title, dedup_key=key, action=action),  # type: ignore[arg-type]
            )
        )
    await settle(server.app)
    return answer.result


async def incidents_of(server: RunningServer, tenant: Tenant) -> list[Incident]:
    async with server.app.sessions() as session:
        return list(
            (await session.scalars(select(Incident).where(Incident.tenant_id == tenant.tenant_id))).all()
        )


async def timeline_kinds(server: RunningServer, incident_id: str) -> list[tuple[str, str]]:
    async with server.app.sessions() as session:
        rows = await session.scalars(
            select(TimelineEntry).where(TimelineEntry.incident_id == incident_id).order_by(TimelineEntry.id)
        )
        return [(e.kind, e.actor) for e in rows]


Outcome = alert_pb2.IngestOutcome


async def test_firing_then_resolved_opens_one_incident_pages_once_and_the_recovery_resolves_it(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, channel = paging
    tenant = await paged_tenant(server)
    fired = await send(server, tenant, Action.EVENT_ACTION_TRIGGER, "fs-01/disk")
    assert fired.outcome == Outcome.INGEST_OUTCOME_CREATED
    assert await send(server, tenant, Action.EVENT_ACTION_TRIGGER, "fs-01/disk") is not None  # a repeat
    resolved = await send(server, tenant, Action.EVENT_ACTION_RESOLVE, "fs-01/disk", "Disk ok on fs-01")
    assert resolved.outcome == Outcome.INGEST_OUTCOME_RESOLVED
    assert resolved.incident_id == fired.incident_id
    [incident] = await incidents_of(server, tenant)
    assert incident.status == "resolved"
    assert incident.resolved_by == "source:Test Integration"
    assert len(channel.to("ana")) == 1  # the trigger's page; nothing for the repeat or the recovery
    kinds = await timeline_kinds(server, incident.id)
    assert ("alert_resolved", "source:Test Integration") in kinds and kinds[-1][0] == "resolved"
    # The key is free again: the next trigger opens a new alert and incident, and pages.
    again = await send(server, tenant, Action.EVENT_ACTION_TRIGGER, "fs-01/disk")
    assert again.outcome == Outcome.INGEST_OUTCOME_CREATED and again.incident_id != fired.incident_id
    assert len(channel.to("ana")) == 2


async def test_a_resolve_for_no_open_alert_is_a_recorded_no_op(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, channel = paging
    tenant = await paged_tenant(server)
    result = await send(server, tenant, Action.EVENT_ACTION_RESOLVE, "never-fired")
    assert result.outcome == Outcome.INGEST_OUTCOME_NO_OP
    assert await incidents_of(server, tenant) == [] and channel.sent == []
    drops, _ = await server.app.pipeline.drops.latest(tenant.integration_id, 10)
    assert [d.reason for d in drops] == ["no open alert with dedup key 'never-fired'"]


async def test_a_grouped_incident_resolves_only_when_its_last_alert_does(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, _ = paging
    tenant = await paged_tenant(server, alert_grouping="time", alert_grouping_timeout_minutes=10)
    first = await send(server, tenant, Action.EVENT_ACTION_TRIGGER, "a")
    second = await send(server, tenant, Action.EVENT_ACTION_TRIGGER, "b")
    assert second.incident_id == first.incident_id
    await send(server, tenant, Action.EVENT_ACTION_RESOLVE, "a")
    [incident] = await incidents_of(server, tenant)
    assert incident.status == "triggered"
    third = await send(server, tenant, Action.EVENT_ACTION_TRIGGER, "c")  # the window still holds
    assert third.incident_id == first.incident_id
    await send(server, tenant, Action.EVENT_ACTION_RESOLVE, "b")
    await send(server, tenant, Action.EVENT_ACTION_RESOLVE, "c")
    [incident] = await incidents_of(server, tenant)
    assert incident.status == "resolved"


async def test_the_service_can_keep_incidents_open_when_sources_resolve(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, _ = paging
    tenant = await paged_tenant(server)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        catalog = catalog_service_pb2_grpc.CatalogServiceStub(channel)
        before = await catalog.GetService(
            catalog_service_pb2.GetServiceRequest(service_id=tenant.service_id), metadata=tenant.auth
        )
        assert before.service.resolve_from_source and before.service.acknowledge_from_source  # default: on
        after = await catalog.UpdateService(
            catalog_service_pb2.UpdateServiceRequest(
                service=service_pb2.Service(id=tenant.service_id, resolve_from_source=False),
                update_mask={"paths": ["resolve_from_source"]},
            ),
            metadata=tenant.auth,
        )
    assert not after.service.resolve_from_source and after.service.acknowledge_from_source
    await send(server, tenant, Action.EVENT_ACTION_TRIGGER, "k")
    resolved = await send(server, tenant, Action.EVENT_ACTION_RESOLVE, "k")
    assert resolved.outcome == Outcome.INGEST_OUTCOME_RESOLVED
    [incident] = await incidents_of(server, tenant)
    assert incident.status == "triggered"  # a technician closes it
    async with server.app.sessions() as session:
        alert = await session.scalar(select(Alert).where(Alert.incident_id == incident.id))
    assert alert is not None and alert.state == "resolved"


async def test_an_acknowledge_from_the_source_stops_escalation(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, channel = paging
    tenant = await bootstrap(server.app)
    ana = await add_user(server.app, tenant.tenant_id, "Ana", contacts=[("capture", "ana", "")])
    bo = await add_user(server.app, tenant.tenant_id, "Bo", contacts=[("capture", "bo", "")])
    await add_policy(
        server.app,
        tenant.tenant_id,
        [(300, [("user", ana)]), (300, [("user", bo)])],  # 300 s after Ana, Bo
        service_id=tenant.service_id,
    )
    await send(server, tenant, Action.EVENT_ACTION_TRIGGER, "k")
    acked = await send(server, tenant, Action.EVENT_ACTION_ACKNOWLEDGE, "k")
    assert acked.outcome == Outcome.INGEST_OUTCOME_ACKNOWLEDGED
    clock.advance(600)
    await settle(server.app)
    assert channel.addresses == ["ana"]  # tier 2 never paged
    [incident] = await incidents_of(server, tenant)
    assert incident.status == "acknowledged" and incident.acknowledged_by == "source:Test Integration"


async def test_a_change_event_is_on_the_service_timeline_and_never_pages(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, channel = paging
    tenant = await paged_tenant(server)
    result = await send(server, tenant, Action.EVENT_ACTION_CHANGE, "", "Deployed v2.3 to fs-01")
    assert result.outcome == Outcome.INGEST_OUTCOME_RECORDED
    assert await incidents_of(server, tenant) == [] and channel.sent == []
    async with server.app.sessions() as session:
        events = (await session.scalars(select(ServiceEvent))).all()
    assert [(e.service_id, e.summary) for e in events] == [(tenant.service_id, "Deployed v2.3 to fs-01")]


async def test_acknowledge_or_resolve_without_a_dedup_key_is_refused_by_name(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, _ = paging
    tenant = await paged_tenant(server)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await send(server, tenant, Action.EVENT_ACTION_RESOLVE, "")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "alert.dedup_key" in (refused.value.details() or "")
