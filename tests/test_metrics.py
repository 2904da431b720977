"""/metrics: each metric of issue 21 moves when its event happens.

A real server over loopback (the ``paging`` fixture: its scheduler and dispatcher driven by the
test on a fake clock). Counters and histograms are process-global, so tests compare before and
after; the scrape-time gauges (outbox, incidents, bus) read this test's empty database and Redis.
"""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from oncall_server.api.v1 import incident_service_pb2, incident_service_pb2_grpc
from oncall_server.clock import FakeClock
from oncall_server.ingest import bus
from oncall_server.ingest.bus import BusConsumer
from oncall_server.runtime import metrics as scrape_metrics
from oncall_server.testing import (
    CaptureChannel,
    RunningServer,
    Tenant,
    add_policy,
    add_user,
    bootstrap,
    settle,
)
from tests.helpers import post_json

MINUTE = 60


@pytest.fixture(autouse=True)
def no_scrape_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every scrape reads SQL and Redis again (one test checks the cache on its own)."""
    monkeypatch.setattr(scrape_metrics, "CACHE_SECONDS", 0.0)
    yield


async def scrape(server: RunningServer) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/metrics") as response:
        assert response.status == 200
        return await response.text()


def value(page: str, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def paged_tenant(server: RunningServer) -> Tenant:
    """A tenant whose service pages alice at once and bob 5 minutes later, both on ``capture``."""
    app = server.app
    tenant = await bootstrap(app)
    alice = await add_user(app, tenant.tenant_id, "alice", contacts=[("capture", "alice", "")])
    bob = await add_user(app, tenant.tenant_id, "bob", contacts=[("capture", "bob", "")])
    await add_policy(
        app,
        tenant.tenant_id,
        [(5 * MINUTE, [("user", alice)]), (5 * MINUTE, [("user", bob)])],
        service_id=tenant.service_id,
    )
    return tenant


async def trigger(server: RunningServer, tenant: Tenant, title: str = "disk full") -> str:
    status, answer = await post_json(
        f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}",
        {"title": title, "severity": "critical"},
    )
    assert status == 202, answer
    return str(answer["incident_id"])


async def test_pending_pages_show_as_outbox_depth_and_age_then_sent_notifications(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, channel = paging
    app = server.app
    tenant = await paged_tenant(server)
    before = await scrape(server)
    assert value(before, "oncall_outbox_rows", status="pending") == 0
    assert value(before, "oncall_outbox_oldest_due_seconds") == 0
    assert value(before, "oncall_incidents_open", status="triggered") == 0

    await trigger(server, tenant)  # no dispatcher loop here: tier 1's page waits in the outbox
    clock.advance(30)
    waiting = await scrape(server)
    assert value(waiting, "oncall_outbox_rows", status="pending") == 1
    assert value(waiting, "oncall_outbox_oldest_due_seconds") == pytest.approx(30, abs=0.01)
    assert value(waiting, "oncall_incidents_open", status="triggered") == 1
    assert value(waiting, "oncall_incidents_open", status="acknowledged") == 0
    assert value(waiting, "oncall_scrape_read_ok", part="outbox") == 1

    await settle(app)
    assert channel.addresses == ["alice"]
    sent = await scrape(server)
    assert value(sent, "oncall_outbox_rows", status="pending") == 0
    assert value(sent, "oncall_outbox_oldest_due_seconds") == 0
    assert value(sent, "oncall_notifications_total", channel="capture", outcome="sent") == (
        value(before, "oncall_notifications_total", channel="capture", outcome="sent") + 1
    )
    lag_count = "oncall_notification_send_lag_seconds_count"
    assert value(sent, lag_count, channel="capture") == value(before, lag_count, channel="capture") + 1
    lag_sum = "oncall_notification_send_lag_seconds_sum"
    assert value(sent, lag_sum, channel="capture") - value(before, lag_sum, channel="capture") == (
        pytest.approx(30, abs=0.01)
    )


async def test_a_due_step_run_late_is_observed_as_escalation_lag(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, channel = paging
    app = server.app
    tenant = await paged_tenant(server)
    await trigger(server, tenant)
    await settle(app)
    before = await scrape(server)

    clock.advance(5 * MINUTE + 42)  # tier 2 was due 42 s ago when the scheduler gets to it
    await settle(app)
    assert channel.addresses == ["alice", "bob"]
    after = await scrape(server)
    count, total = "oncall_escalation_step_lag_seconds_count", "oncall_escalation_step_lag_seconds_sum"
    assert value(after, count) == value(before, count) + 1
    assert value(after, total) - value(before, total) == pytest.approx(42, abs=0.01)
    assert value(after, "oncall_escalation_step_lag_seconds_bucket", le="30.0") == value(
        before, "oncall_escalation_step_lag_seconds_bucket", le="30.0"
    )
    assert value(after, "oncall_escalation_step_lag_seconds_bucket", le="60.0") == (
        value(before, "oncall_escalation_step_lag_seconds_bucket", le="60.0") + 1
    )


async def test_an_acknowledgement_cancels_pending_pages_and_counts_them_cancelled(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, channel = paging
    app = server.app
    tenant = await paged_tenant(server)
    before = await scrape(server)
    incident_id = await trigger(server, tenant)  # tier 1's page pending: nobody sent it yet
    await app.incidents.acknowledge(tenant.tenant_id, incident_id, "alice")
    await settle(app)
    assert channel.addresses == []
    after = await scrape(server)
    cancelled = {"channel": "capture", "outcome": "cancelled"}
    assert value(after, "oncall_notifications_total", **cancelled) == (
        value(before, "oncall_notifications_total", **cancelled) + 1
    )
    assert value(after, "oncall_incidents_open", status="acknowledged") == 1
    assert value(after, "oncall_incidents_open", status="triggered") == 0


async def test_a_failing_channel_counts_retrying_then_failed(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, _ = paging
    app = server.app
    tenant = await bootstrap(app)
    carol = await add_user(app, tenant.tenant_id, "carol", contacts=[("nowhere", "carol", "")])
    await add_policy(app, tenant.tenant_id, [(5 * MINUTE, [("user", carol)])], service_id=tenant.service_id)
    before = await scrape(server)
    await trigger(server, tenant)
    await settle(app)  # no channel named "nowhere": failed for good at once
    after = await scrape(server)
    failed = {"channel": "nowhere", "outcome": "failed"}
    assert value(after, "oncall_notifications_total", **failed) == (
        value(before, "oncall_notifications_total", **failed) + 1
    )


async def test_bus_lag_pending_and_dead_letters(paging: tuple[RunningServer, CaptureChannel]) -> None:
    server, _ = paging
    app = server.app
    consumer = BusConsumer(app, consumer="metrics-test")
    await consumer.ensure_groups()
    empty = await scrape(server)
    assert value(empty, "oncall_bus_lag_messages", source="rmm") == 0
    assert value(empty, "oncall_bus_dead_letters") == 0
    assert value(empty, "oncall_scrape_read_ok", part="bus") == 1

    await bus.publish(app.redis, "rmm", {"tenant_id": "no-such-tenant", "title": "x"})
    await bus.publish(app.redis, "rmm", {"tenant_id": "no-such-tenant", "title": "y"})
    published = await scrape(server)
    assert value(published, "oncall_bus_stream_length", source="rmm") == 2
    assert value(published, "oncall_bus_lag_messages", source="rmm") == 2
    assert value(published, "oncall_bus_pending_messages", source="rmm") == 0
    assert value(published, "oncall_bus_lag_messages", source="security") == 0

    # Read one without handling it: delivered, not acknowledged.
    await app.redis.xreadgroup(app.settings.bus_group, "stalled", {bus.stream_of("rmm"): ">"}, count=1)
    read = await scrape(server)
    assert value(read, "oncall_bus_lag_messages", source="rmm") == 1
    assert value(read, "oncall_bus_pending_messages", source="rmm") == 1

    consumer.max_deliveries = 1  # an unknown tenant cannot be fixed by retrying: dead at once
    assert await consumer.poll_once() == 1
    dead = await scrape(server)
    assert value(dead, "oncall_bus_dead_letters") == 1
    assert value(dead, "oncall_bus_lag_messages", source="rmm") == 0
    assert value(dead, "oncall_bus_pending_messages", source="rmm") == 1  # the stalled one


async def test_rpc_and_http_latency_by_method_route_and_code(
    paging: tuple[RunningServer, CaptureChannel],
) -> None:
    server, _ = paging
    tenant = await bootstrap(server.app)
    method = "/oncall.v1.IncidentService/ListIncidents"
    rpc = "oncall_grpc_request_duration_seconds_count"
    http = "oncall_http_request_duration_seconds_count"
    webhook = {"method": "POST", "route": "/api/webhooks/ingest", "status": "202"}
    before = await scrape(server)

    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = incident_service_pb2_grpc.IncidentServiceStub(channel)
        await stub.ListIncidents(incident_service_pb2.ListIncidentsRequest(), metadata=tenant.auth)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListIncidents(incident_service_pb2.ListIncidentsRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await trigger(server, tenant)
    nowhere = f"{server.http_url}/api/integrations/{tenant.integration_key}/nope"
    async with aiohttp.ClientSession() as session, session.get(nowhere) as r:
        assert r.status == 404

    after = await scrape(server)
    assert value(after, rpc, method=method, code="OK") == value(before, rpc, method=method, code="OK") + 1
    assert value(after, rpc, method=method, code="UNAUTHENTICATED") == (
        value(before, rpc, method=method, code="UNAUTHENTICATED") + 1
    )
    assert value(after, http, **webhook) == value(before, http, **webhook) + 1
    unmatched = {"method": "GET", "route": "-", "status": "404"}
    assert value(after, http, **unmatched) == value(before, http, **unmatched) + 1
    assert tenant.integration_key not in after  # a route template, never the path
    assert value(after, http, method="GET", route="/metrics", status="200") >= 1


async def test_scrape_time_gauges_are_cached(
    paging: tuple[RunningServer, CaptureChannel], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = paging
    tenant = await paged_tenant(server)
    monkeypatch.setattr(scrape_metrics, "CACHE_SECONDS", 60.0)
    first = await scrape(server)
    assert value(first, "oncall_incidents_open", status="triggered") == 0
    await trigger(server, tenant)
    assert value(await scrape(server), "oncall_incidents_open", status="triggered") == 0  # cached
    monkeypatch.setattr(scrape_metrics, "CACHE_SECONDS", 0.0)
    assert value(await scrape(server), "oncall_incidents_open", status="triggered") == 1
