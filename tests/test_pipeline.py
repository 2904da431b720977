"""The alert pipeline end to end (spec "Alert Routing"): rules, maintenance, dedup, grouping, states."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import select

from oncall_server.api.v1 import (
    alert_pb2,
    catalog_service_pb2,
    catalog_service_pb2_grpc,
    incident_service_pb2,
    incident_service_pb2_grpc,
    integration_pb2,
    integration_service_pb2,
    integration_service_pb2_grpc,
    service_pb2,
)
from oncall_server.clock import FakeClock
from oncall_server.faces.grpc.convert import timestamp
from oncall_server.storage.models import Alert, AlertDelivery, Incident
from oncall_server.testing import RunningServer, Tenant, bootstrap, unlabelled_metrics
from tests.helpers import count_rows, create_window, post_json


async def send(server: RunningServer, tenant: Tenant, body: Any) -> dict[str, Any]:
    status, answer = await post_json(
        f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}", body
    )
    assert status == 202, answer
    result: dict[str, Any] = answer
    return result


async def put_rules(server: RunningServer, tenant: Tenant, rules: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{server.http_url}/api/integrations/{tenant.integration_id}",
            json={"routing_rules": rules},
            headers={"Authorization": f"Bearer {tenant.api_token}"},
        ) as response,
    ):
        return response.status, await response.json()


async def test_routing_rules_drop_silently_but_visibly(clocked_server: RunningServer) -> None:
    server = clocked_server
    tenant = await bootstrap(server.app)
    status, body = await put_rules(
        server,
        tenant,
        [
            {"name": "high-and-up", "severity_filter": {"minimum_severity": "high"}},
            {"field_match": {"path": "labels.team", "operator": "equals", "value": "db"}},
        ],
    )
    assert status == 200, body
    assert body["routing_rules"][0]["severity_filter"] == {"minimum_severity": "high"}

    low = await send(server, tenant, {"title": "noise", "severity": "low", "labels": {"team": "db"}})
    wrong_team = await send(
        server, tenant, {"title": "web", "severity": "critical", "labels": {"team": "web"}}
    )
    passes = await send(
        server, tenant, {"title": "db down", "severity": "critical", "labels": {"team": "db"}}
    )
    assert [low["outcome"], wrong_team["outcome"], passes["outcome"]] == ["dropped", "dropped", "created"]
    assert await count_rows(server.app) == (1, 1)  # dropped alerts leave no row and no incident

    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = integration_service_pb2_grpc.IntegrationServiceStub(channel)
        drops = await stub.ListDroppedAlerts(
            integration_service_pb2.ListDroppedAlertsRequest(integration_id=tenant.integration_id),
            metadata=tenant.auth,
        )
    assert [(d.rule_index, d.rule, d.title) for d in drops.dropped_alerts] == [
        (1, 'labels.team equals "db"', "web"),
        (0, "high-and-up", "noise"),
    ]
    assert drops.dropped_alerts[1].reason == "severity low is below high"
    assert dict(drops.drop_counts) == {"0": 1, "1": 1}
    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/metrics") as response:
        metrics = await response.text()
    assert (
        f'oncall_alerts_dropped_total{{integration_id="{tenant.integration_id}",rule_index="0"}} 1.0'
        in metrics
    )


async def test_invalid_rules_are_rejected_and_the_stored_rules_stay(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    assert (await put_rules(server, tenant, [{"title_match": {"contains": "disk"}}]))[0] == 200
    status, body = await put_rules(
        server, tenant, [{"field_match": {"path": "labels.team", "operator": "regex", "value": "(db"}}]
    )
    assert status == 400
    assert body["fields"][0]["field"] == "routing_rules[0].field_match.value"
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = integration_service_pb2_grpc.IntegrationServiceStub(channel)
        got = await stub.GetIntegration(
            integration_service_pb2.GetIntegrationRequest(integration_id=tenant.integration_id),
            metadata=tenant.auth,
        )
        assert got.integration.routing_rules[0].title_match.contains == "disk"
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.UpdateIntegration(
                integration_service_pb2.UpdateIntegrationRequest(
                    integration=integration_pb2.Integration(
                        id=tenant.integration_id,
                        routing_rules=[
                            integration_pb2.RoutingRule(field_match=integration_pb2.FieldMatch(path="a"))
                        ],
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["routing_rules"]),
                ),
                metadata=tenant.auth,
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "routing_rules[0].field_match.operator" in (bad.value.details() or "")
        updated = await stub.UpdateIntegration(
            integration_service_pb2.UpdateIntegrationRequest(
                integration=integration_pb2.Integration(
                    id=tenant.integration_id,
                    routing_rules=[
                        integration_pb2.RoutingRule(
                            severity_filter=integration_pb2.SeverityFilter(
                                minimum_severity=alert_pb2.SEVERITY_CRITICAL
                            )
                        )
                    ],
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["routing_rules"]),
            ),
            metadata=tenant.auth,
        )
        assert (
            updated.integration.routing_rules[0].severity_filter.minimum_severity
            == alert_pb2.SEVERITY_CRITICAL
        )
    assert (await send(server, tenant, {"title": "x", "severity": "high"}))["outcome"] == "dropped"


async def test_alerts_in_a_maintenance_window_are_suppressed(
    clocked_server: RunningServer, clock: FakeClock
) -> None:
    server = clocked_server
    tenant = await bootstrap(server.app)
    start = clock.now() - timedelta(minutes=1)
    window = await create_window(server, tenant, start)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = catalog_service_pb2_grpc.CatalogServiceStub(channel)
        inside = await send(server, tenant, {"title": "reboot", "dedup_key": "host-1"})
        assert inside["outcome"] == "suppressed" and inside["incident_id"] == ""
        clock.advance(timedelta(hours=1))
        after = await send(server, tenant, {"title": "reboot", "dedup_key": "host-1"})
        assert after["outcome"] == "created"  # a suppressed alert does not hold its dedup key open
        listed = await stub.ListMaintenanceWindows(
            catalog_service_pb2.ListMaintenanceWindowsRequest(
                service_id=tenant.service_id, include_past=True
            ),
            metadata=tenant.auth,
        )
        assert [w.reason for w in listed.maintenance_windows] == ["patching"]
        await stub.DeleteMaintenanceWindow(
            catalog_service_pb2.DeleteMaintenanceWindowRequest(maintenance_window_id=window.id),
            metadata=tenant.auth,
        )
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.CreateMaintenanceWindow(
                catalog_service_pb2.CreateMaintenanceWindowRequest(
                    maintenance_window=service_pb2.MaintenanceWindow(
                        service_id=tenant.service_id, start_time=timestamp(start), end_time=timestamp(start)
                    )
                ),
                metadata=tenant.auth,
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with server.app.sessions() as session:
        states = (await session.scalars(select(Alert.state).order_by(Alert.id))).all()
    assert states == ["suppressed", "triggered"]


async def test_duplicates_merge_into_one_alert_with_bounded_history(
    clocked_server: RunningServer, clock: FakeClock
) -> None:
    server = clocked_server
    tenant = await bootstrap(server.app)
    first_seen = clock.now()
    results = []
    for n in range(25):
        results.append(await send(server, tenant, {"title": "disk full", "dedup_key": "disk-1", "n": n}))
        clock.advance(10)
    assert results[0]["outcome"] == "created"
    assert {r["outcome"] for r in results[1:]} == {"deduplicated"}
    assert {r["alert_id"] for r in results} == {results[0]["alert_id"]}
    async with server.app.sessions() as session:
        alert = (await session.scalars(select(Alert))).one()
        deliveries = (await session.scalars(select(AlertDelivery).order_by(AlertDelivery.id))).all()
    assert alert.occurrence_count == 25
    assert alert.first_seen_at == first_seen
    assert alert.last_seen_at == first_seen + timedelta(seconds=240)
    assert '"n": 24' in (alert.latest_raw_payload or "")
    assert '"n": 0' in alert.raw_payload  # the first delivery is kept as received
    assert [d.raw_payload.split('"n": ')[1].rstrip("}") for d in deliveries] == [str(n) for n in range(5, 25)]
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = incident_service_pb2_grpc.IncidentServiceStub(channel)
        timeline = await stub.ListIncidentTimeline(
            incident_service_pb2.ListIncidentTimelineRequest(incident_id=results[0]["incident_id"]),
            metadata=tenant.auth,
        )
        got = await stub.GetAlert(
            incident_service_pb2.GetAlertRequest(alert_id=alert.id), metadata=tenant.auth
        )
    assert got.alert.occurrence_count == 25
    assert '"n": 24' in got.alert.raw_payload
    merged = [e for e in timeline.entries if e.kind == 2]  # TIMELINE_ENTRY_KIND_ALERT_MERGED
    assert sum(int(e.details["count"]) for e in merged) == 24


async def test_time_grouping_window_slides_and_splits_by_severity(
    clocked_server: RunningServer, clock: FakeClock
) -> None:
    server = clocked_server
    tenant = await bootstrap(server.app, alert_grouping="time", alert_grouping_timeout_minutes=5)
    first = await send(server, tenant, {"title": "disk full web-1", "severity": "high"})
    clock.advance(timedelta(minutes=4))
    second = await send(server, tenant, {"title": "disk full web-2", "severity": "high"})
    clock.advance(timedelta(minutes=4))  # 8 min after the first, 4 after the second: the window slid
    third = await send(server, tenant, {"title": "disk full web-3", "severity": "high"})
    other_severity = await send(server, tenant, {"title": "disk full web-4", "severity": "low"})
    clock.advance(timedelta(minutes=5, seconds=1))
    late = await send(server, tenant, {"title": "disk full web-5", "severity": "high"})
    assert [first["outcome"], second["outcome"], third["outcome"]] == ["created", "grouped", "grouped"]
    assert first["incident_id"] == second["incident_id"] == third["incident_id"]
    assert other_severity["outcome"] == "created" and other_severity["incident_id"] != first["incident_id"]
    assert late["outcome"] == "created" and late["incident_id"] != first["incident_id"]

    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = incident_service_pb2_grpc.IncidentServiceStub(channel)
        incident = (
            await stub.GetIncident(
                incident_service_pb2.GetIncidentRequest(incident_id=first["incident_id"]),
                metadata=tenant.auth,
            )
        ).incident
        assert incident.alert_count == 3
        alerts = await stub.ListIncidentAlerts(
            incident_service_pb2.ListIncidentAlertsRequest(incident_id=first["incident_id"]),
            metadata=tenant.auth,
        )
        assert [a.state for a in alerts.alerts] == [
            alert_pb2.ALERT_STATE_TRIGGERED,
            alert_pb2.ALERT_STATE_GROUPED,
            alert_pb2.ALERT_STATE_GROUPED,
        ]
        await stub.AcknowledgeIncident(
            incident_service_pb2.AcknowledgeIncidentRequest(incident_id=first["incident_id"]),
            metadata=tenant.auth,
        )
        alerts = await stub.ListIncidentAlerts(
            incident_service_pb2.ListIncidentAlertsRequest(incident_id=first["incident_id"]),
            metadata=tenant.auth,
        )
        assert {a.state for a in alerts.alerts} == {alert_pb2.ALERT_STATE_ACKNOWLEDGED}
        # Resolving the newest high incident releases its window: the next alert opens a new incident.
        await stub.ResolveIncident(
            incident_service_pb2.ResolveIncidentRequest(incident_id=late["incident_id"]), metadata=tenant.auth
        )
    after_resolve = await send(server, tenant, {"title": "disk full web-6", "severity": "high"})
    assert after_resolve["outcome"] == "created"
    assert after_resolve["incident_id"] not in {first["incident_id"], late["incident_id"]}


async def test_no_grouping_opens_one_incident_per_alert(server: RunningServer) -> None:
    tenant = await bootstrap(server.app, alert_grouping="none")
    results = [await send(server, tenant, {"title": f"disk {i}", "severity": "high"}) for i in range(3)]
    assert [r["outcome"] for r in results] == ["created"] * 3
    assert len({r["incident_id"] for r in results}) == 3


async def test_a_batch_body_is_one_transaction_with_results_in_order(server: RunningServer) -> None:
    tenant = await bootstrap(server.app, alert_grouping="time", alert_grouping_timeout_minutes=5)
    answer = await send(
        server,
        tenant,
        [
            {"title": "a", "dedup_key": "k1", "severity": "high"},
            {"title": "a again", "dedup_key": "k1", "severity": "high"},
            {"title": "b", "dedup_key": "k2", "severity": "high"},
            {"title": "c", "severity": "info"},
        ],
    )
    outcomes = [r["outcome"] for r in answer["results"]]
    assert outcomes == ["created", "deduplicated", "grouped", "created"]
    ids = [r["incident_id"] for r in answer["results"]]
    assert ids[0] == ids[1] == ids[2] != ids[3]
    async with server.app.sessions() as session:
        counts = (await session.scalars(select(Incident.alert_count).order_by(Incident.id))).all()
    assert sorted(counts) == [1, 2]


async def test_batch_payloads_keep_values_beyond_64_bit_and_non_ascii_text(server: RunningServer) -> None:
    """Raw payloads and JSON columns go through orjson, which refuses integers beyond 64 bits:
    those alerts must still be stored, byte-for-value the same as sent."""
    tenant = await bootstrap(server.app)
    huge = 2**70
    sent = [
        {"title": "counter wrapped", "dedup_key": "big", "severity": "high", "counter": huge},
        {"title": "Disque plein sur « srv-01 »", "dedup_key": "utf", "severity": "high", "host": "srv-é"},
    ]
    answer = await send(server, tenant, sent)
    assert [r["outcome"] for r in answer["results"]] == ["created", "created"]
    async with server.app.sessions() as session:
        rows = {a.dedup_key: a for a in (await session.scalars(select(Alert))).all()}
    assert json.loads(rows["big"].raw_payload) == sent[0]
    assert json.loads(rows["utf"].raw_payload) == sent[1]
    assert rows["utf"].title == sent[1]["title"]
    assert rows["utf"].details["host"] == "srv-é"


async def test_metrics_count_group_commits_and_their_alerts(server: RunningServer) -> None:
    """/metrics shows how many alerts each ingest commit carried (operators read batch sizes)."""
    tenant = await bootstrap(server.app)

    async def scrape() -> dict[str, float]:
        async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/metrics") as response:
            return unlabelled_metrics(await response.text())

    before = await scrape()
    await send(server, tenant, [{"title": f"disk {n}", "dedup_key": f"d{n}"} for n in range(3)])
    after = await scrape()
    assert after["oncall_ingest_batch_alerts_count"] - before["oncall_ingest_batch_alerts_count"] == 1
    assert after["oncall_ingest_batch_alerts_sum"] - before["oncall_ingest_batch_alerts_sum"] == 3
    assert after["oncall_ingest_batch_seconds_count"] - before["oncall_ingest_batch_seconds_count"] == 1
