"""The walking skeleton end to end: webhook and gRPC in, incidents out, over real loopback."""

from __future__ import annotations

import json

import grpc
import pytest

from oncall_server.api.v1 import (
    alert_pb2,
    incident_pb2,
    incident_service_pb2,
    incident_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
)
from oncall_server.testing import RunningServer, add_user, bootstrap, wait_for
from tests.helpers import count_rows, post_json

SPEC_EXAMPLE = (
    b'{\n"title": "CPU usage critical on client-server-01",\n"severity": "critical",\n'
    b'"dedup_key": "rmm-device-4821-cpu",\n'
    b'"body": "CPU sustained at 98% for 5 minutes. Host: client-server-01.",\n'
    b'"source_ref": "alert-4821"\n}'
)


async def test_webhook_creates_an_incident_that_list_incidents_returns(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    status, body = await post_json(
        f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}", data=SPEC_EXAMPLE
    )
    assert status == 202, body
    assert body["outcome"] == "created"
    assert body["dedup_key"] == "rmm-device-4821-cpu"

    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = incident_service_pb2_grpc.IncidentServiceStub(channel)
        listed = await stub.ListIncidents(incident_service_pb2.ListIncidentsRequest(), metadata=tenant.auth)
        assert [i.id for i in listed.incidents] == [body["incident_id"]]
        incident = listed.incidents[0]
        assert incident.title == "CPU usage critical on client-server-01"
        assert incident.severity == alert_pb2.SEVERITY_CRITICAL
        assert incident.status == incident_pb2.INCIDENT_STATUS_TRIGGERED
        assert incident.incident_url.endswith(f"/incidents/{incident.id}")

        alerts = await stub.ListIncidentAlerts(
            incident_service_pb2.ListIncidentAlertsRequest(incident_id=incident.id), metadata=tenant.auth
        )
        assert len(alerts.alerts) == 1
        got = await stub.GetAlert(
            incident_service_pb2.GetAlertRequest(alert_id=alerts.alerts[0].id), metadata=tenant.auth
        )
        assert got.alert.raw_payload == SPEC_EXAMPLE.decode()  # byte for byte, as received
        assert got.alert.state == alert_pb2.ALERT_STATE_TRIGGERED
        assert got.alert.details["source_ref"] == "alert-4821"


async def test_key_in_header_works_like_key_in_query(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    status, body = await post_json(
        f"{server.http_url}/api/webhooks/ingest",
        {"title": "disk full"},
        headers={"X-Integration-Key": tenant.integration_key},
    )
    assert status == 202 and body["outcome"] == "created"


async def test_retried_delivery_with_same_dedup_key_never_opens_a_second_incident(
    server: RunningServer,
) -> None:
    tenant = await bootstrap(server.app)
    url = f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}"
    first = await post_json(url, {"title": "db down", "dedup_key": "db-1"})
    second = await post_json(url, {"title": "db down again", "dedup_key": "db-1"})
    assert first[1]["outcome"] == "created"
    assert second[1]["outcome"] == "deduplicated"
    assert second[1]["incident_id"] == first[1]["incident_id"]
    assert await count_rows(server.app) == (1, 1)


async def test_idempotency_key_makes_keyless_retries_harmless(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    url = f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}"
    headers = {"Idempotency-Key": "delivery-77"}
    first = await post_json(url, {"title": "no key"}, headers=headers)
    retry = await post_json(url, {"title": "no key"}, headers=headers)
    other = await post_json(url, {"title": "no key"})
    assert first[1]["alert_id"] == retry[1]["alert_id"]
    assert other[1]["alert_id"] != first[1]["alert_id"]
    assert await count_rows(server.app) == (2, 2)


async def test_grpc_ingest_alert_and_streaming_batches(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        one = await ingest.IngestAlert(
            ingest_service_pb2.IngestAlertRequest(
                integration_key=tenant.integration_key,
                alert=alert_pb2.AlertEvent(
                    title="backup failed", severity=alert_pb2.SEVERITY_HIGH, dedup_key="bk-1"
                ),
            )
        )
        assert one.result.outcome == alert_pb2.INGEST_OUTCOME_CREATED

        async def messages():  # type: ignore[no-untyped-def]
            for batch in range(3):
                yield ingest_service_pb2.IngestAlertsRequest(
                    alerts=[
                        alert_pb2.AlertEvent(title=f"a{batch}-{i}", dedup_key=f"k{batch}-{i}")
                        for i in range(4)
                    ]
                )

        streamed = await ingest.IngestAlerts(
            messages(), metadata=[("x-integration-key", tenant.integration_key)]
        )
        assert [r.outcome for r in streamed.results] == [alert_pb2.INGEST_OUTCOME_CREATED] * 12
        assert len({r.incident_id for r in streamed.results}) == 12
    assert await count_rows(server.app) == (13, 13)


@pytest.mark.parametrize(
    ("query", "headers", "data", "status", "needle"),
    [
        ("?key={key}", {}, b'{"title": "x",', 400, "not valid JSON"),
        ("?key={key}", {}, b'"just a string"', 400, "body"),
        ("?key={key}", {}, b"\xff\xfe", 400, "UTF-8"),
        ("", {}, b'{"title": "x"}', 401, "integration key is required"),
        ("?key=oci_unknown", {}, b'{"title": "x"}', 401, "unknown integration key"),
        ("?key={key}", {}, b'{"title": "' + b"x" * (600 * 1024) + b'"}', 413, "limit"),
    ],
    ids=["malformed-json", "not-an-object", "not-utf8", "missing-key", "unknown-key", "oversized"],
)
async def test_bad_webhook_input_is_rejected_clearly_and_stores_nothing(
    server: RunningServer, query: str, headers: dict[str, str], data: bytes, status: int, needle: str
) -> None:
    tenant = await bootstrap(server.app)
    await post_json(
        f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}",
        {"title": "kept", "dedup_key": "k"},
    )
    before = await count_rows(server.app)
    got, body = await post_json(
        f"{server.http_url}/api/webhooks/ingest{query.format(key=tenant.integration_key)}",
        data=data,
        headers=headers,
    )
    assert got == status
    assert needle in body["message"]
    assert await count_rows(server.app) == before == (1, 1)


async def test_admin_rpcs_require_a_token_and_hide_other_tenants(server: RunningServer) -> None:
    ours = await bootstrap(server.app)
    theirs = await bootstrap(server.app)
    _, created = await post_json(
        f"{server.http_url}/api/webhooks/ingest?key={theirs.integration_key}", {"title": "theirs"}
    )
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = incident_service_pb2_grpc.IncidentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.ListIncidents(incident_service_pb2.ListIncidentsRequest())
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await stub.ListIncidents(
                incident_service_pb2.ListIncidentsRequest(), metadata=[("authorization", "Bearer oct_nope")]
            )
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
        listed = await stub.ListIncidents(incident_service_pb2.ListIncidentsRequest(), metadata=ours.auth)
        assert list(listed.incidents) == []
        for call in (
            stub.GetIncident(
                incident_service_pb2.GetIncidentRequest(incident_id=created["incident_id"]),
                metadata=ours.auth,
            ),
            stub.ResolveIncident(
                incident_service_pb2.ResolveIncidentRequest(incident_id=created["incident_id"]),
                metadata=ours.auth,
            ),
            stub.GetAlert(
                incident_service_pb2.GetAlertRequest(alert_id=created["alert_id"]), metadata=ours.auth
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as hidden:
                await call
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        theirs_view = await stub.GetIncident(
            incident_service_pb2.GetIncidentRequest(incident_id=created["incident_id"]), metadata=theirs.auth
        )
        assert (
            theirs_view.incident.status == incident_pb2.INCIDENT_STATUS_TRIGGERED
        )  # untouched by the other tenant


async def test_acknowledge_resolve_and_notes_are_recorded_with_who_did_it(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    url = f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}"
    _, created = await post_json(url, {"title": "ransomware", "dedup_key": "det-9"})
    incident_id = created["incident_id"]
    bob = await add_user(server.app, tenant.tenant_id, "Bob")
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = incident_service_pb2_grpc.IncidentServiceStub(channel)
        acked = await stub.AcknowledgeIncident(
            incident_service_pb2.AcknowledgeIncidentRequest(incident_id=incident_id, actor="alice"),
            metadata=tenant.auth,
        )
        assert acked.incident.status == incident_pb2.INCIDENT_STATUS_ACKNOWLEDGED
        assert acked.incident.acknowledged_by == "alice"
        await stub.AddIncidentNote(
            incident_service_pb2.AddIncidentNoteRequest(
                incident_id=incident_id, note="isolated host", actor="alice"
            ),
            metadata=tenant.auth,
        )
        await stub.ReassignIncident(
            incident_service_pb2.ReassignIncidentRequest(
                incident_id=incident_id, assigned_to="bob@example.com", actor="alice"
            ),
            metadata=tenant.auth,
        )
        resolved = await stub.ResolveIncident(
            incident_service_pb2.ResolveIncidentRequest(
                incident_id=incident_id, actor="bob", resolution_summary="wiped"
            ),
            metadata=tenant.auth,
        )
        assert resolved.incident.status == incident_pb2.INCIDENT_STATUS_RESOLVED
        assert resolved.incident.resolution_summary == "wiped"
        assert resolved.incident.assigned_to == bob
        timeline = await stub.ListIncidentTimeline(
            incident_service_pb2.ListIncidentTimelineRequest(incident_id=incident_id), metadata=tenant.auth
        )
        # Without the system's escalation and notification entries (tests/test_paging.py covers those).
        kinds = [
            (e.kind, e.actor)
            for e in timeline.entries
            if e.actor != "system" or e.kind == incident_pb2.TIMELINE_ENTRY_KIND_TRIGGERED
        ]
        assert kinds == [
            (incident_pb2.TIMELINE_ENTRY_KIND_TRIGGERED, "system"),
            (incident_pb2.TIMELINE_ENTRY_KIND_ACKNOWLEDGED, "alice"),
            (incident_pb2.TIMELINE_ENTRY_KIND_NOTE, "alice"),
            (incident_pb2.TIMELINE_ENTRY_KIND_REASSIGNED, "alice"),
            (incident_pb2.TIMELINE_ENTRY_KIND_RESOLVED, "bob"),
        ]
        alerts = await stub.ListIncidentAlerts(
            incident_service_pb2.ListIncidentAlertsRequest(incident_id=incident_id), metadata=tenant.auth
        )
        assert [a.state for a in alerts.alerts] == [alert_pb2.ALERT_STATE_RESOLVED]
    # After resolve the same key opens a new incident.
    _, again = await post_json(url, {"title": "ransomware", "dedup_key": "det-9"})
    assert again["outcome"] == "created"
    assert again["incident_id"] != incident_id


async def test_list_incidents_filters_and_pages(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    url = f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}"
    for i in range(5):
        await post_json(
            url, {"title": f"t{i}", "severity": "critical" if i % 2 else "low", "dedup_key": f"k{i}"}
        )
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = incident_service_pb2_grpc.IncidentServiceStub(channel)
        seen: list[str] = []
        token = ""
        while True:
            page = await stub.ListIncidents(
                incident_service_pb2.ListIncidentsRequest(page_size=2, page_token=token), metadata=tenant.auth
            )
            seen += [i.title for i in page.incidents]
            token = page.next_page_token
            if not token:
                break
        assert seen == ["t4", "t3", "t2", "t1", "t0"]  # newest first, each once
        critical = await stub.ListIncidents(
            incident_service_pb2.ListIncidentsRequest(severity=alert_pb2.SEVERITY_CRITICAL),
            metadata=tenant.auth,
        )
        assert sorted(i.title for i in critical.incidents) == ["t1", "t3"]
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.ListIncidents(
                incident_service_pb2.ListIncidentsRequest(page_token="garbage"), metadata=tenant.auth
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_watch_incidents_streams_changes(server: RunningServer) -> None:
    import asyncio

    tenant = await bootstrap(server.app)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = incident_service_pb2_grpc.IncidentServiceStub(channel)
        call = stub.WatchIncidents(incident_service_pb2.WatchIncidentsRequest(), metadata=tenant.auth)
        received: list[incident_service_pb2.WatchIncidentsResponse] = []

        async def read() -> None:
            async for change in call:
                received.append(change)
                if change.entry.kind == incident_pb2.TIMELINE_ENTRY_KIND_ACKNOWLEDGED:
                    return

        reader = asyncio.create_task(read())

        async def subscribed() -> bool:  # the watch is live once its Redis subscription exists
            counts = await server.app.redis.pubsub_numsub(f"oncall:changes:{tenant.tenant_id}")
            return bool(counts and counts[0][1])

        await wait_for(subscribed)
        _, created = await post_json(
            f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}", {"title": "watch me"}
        )
        await stub.AcknowledgeIncident(
            incident_service_pb2.AcknowledgeIncidentRequest(incident_id=created["incident_id"]),
            metadata=tenant.auth,
        )
        await asyncio.wait_for(reader, 5)
        call.cancel()
    # Triggered, then the system's escalation entries (no policy here: "nobody is paged"), then the ack.
    kinds = [c.entry.kind for c in received]
    assert kinds[0] == incident_pb2.TIMELINE_ENTRY_KIND_TRIGGERED
    assert kinds[-1] == incident_pb2.TIMELINE_ENTRY_KIND_ACKNOWLEDGED
    assert set(kinds[1:-1]) <= {incident_pb2.TIMELINE_ENTRY_KIND_ESCALATED}
    assert received[-1].incident.status == incident_pb2.INCIDENT_STATUS_ACKNOWLEDGED


async def test_healthz_answers_503_when_a_dependency_is_unreachable(server: RunningServer) -> None:
    import aiohttp
    from redis.asyncio import Redis

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_url}/healthz") as ok:
            assert ok.status == 200
        real = server.app.redis
        server.app.redis = Redis(
            host="127.0.0.1", port=1, socket_connect_timeout=0.2
        )  # nothing listens there
        try:
            async with http.get(f"{server.http_url}/healthz") as down:
                assert down.status == 503
                assert (await down.json())["status"] == "unavailable"
        finally:
            await server.app.redis.aclose()
            server.app.redis = real


def test_access_log_never_contains_keys() -> None:
    from oncall_server.security import scrub

    line = scrub("/api/webhooks/ingest?key=oci_SECRET123&x=1")
    assert "SECRET123" not in line
    assert line == "/api/webhooks/ingest?key=[redacted]&x=1"
    assert json.dumps(scrub("/x?token=abc")) == '"/x?token=[redacted]"'


async def test_health_checks_and_reflection(server: RunningServer) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "oncall.v1.IngestService", "oncall.v1.IncidentService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name async for r in responses for s in r.list_services_response.service}
        assert {
            "oncall.v1.IngestService",
            "oncall.v1.IncidentService",
            "oncall.v1.IntegrationService",
        } <= names
