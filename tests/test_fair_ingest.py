"""Fair ingest: one tenant's flood never starves another, and over its limits a sender is told to retry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from redis.asyncio import Redis

from oncall_server.api.v1 import alert_pb2, ingest_service_pb2, ingest_service_pb2_grpc
from oncall_server.hookspecs import AdapterContext, hookimpl
from oncall_server.ingest import bus
from oncall_server.ingest.fair_queue import FairQueue, QueuedRequest, QueueLimits
from oncall_server.ingest.model import IngestResult, NormalizedEvent, PreparedAlert
from oncall_server.runtime.app import App
from oncall_server.severity import Severity
from oncall_server.testing import RunningServer, Tenant, bootstrap, running_server, server_settings, wait_for
from tests.helpers import alerts_of, post_body, webhook_url

# -- the queue: who is in the next batch -------------------------------------------------------


def _request(tenant: str, alerts: int, label: str = "") -> QueuedRequest:
    event = NormalizedEvent(title=label or tenant, severity=Severity.HIGH)
    prepared = [
        PreparedAlert(
            tenant_id=tenant,
            service_id=f"svc-{tenant}",
            integration_id=f"int-{tenant}",
            grouping_window_ms=0,
            event=event,
            received_at=None,  # type: ignore[arg-type]  # the queue never reads it
        )
        for _ in range(alerts)
    ]
    future: asyncio.Future[list[IngestResult]] = asyncio.get_running_loop().create_future()
    return QueuedRequest.of(prepared, future)


def _tenants(batch: Sequence[QueuedRequest]) -> list[str]:
    return [r.tenant_id for r in batch]


async def test_a_lone_tenant_gets_the_whole_batch() -> None:
    queue = FairQueue(QueueLimits(contended_share_alerts=10))
    for _ in range(30):
        await queue.put(_request("a", 50))
    assert len(queue.take_batch(500)) == 10  # 500 alerts: the share only applies while others wait


async def test_a_flooding_tenant_cannot_delay_another_beyond_its_share_of_one_batch() -> None:
    queue = FairQueue(QueueLimits(contended_share_alerts=100))
    flood = [_request("a", 50, f"a{i}") for i in range(40)]
    for request in flood:
        await queue.put(request)
    await queue.put(_request("b", 1))
    first = queue.take_batch(500)
    assert _tenants(first).count("b") == 1
    assert sum(len(r.alerts) for r in first if r.tenant_id == "a") <= 100
    taken = [r for r in first if r.tenant_id == "a"]
    while queue.has_work():
        taken += queue.take_batch(500)
    assert taken == flood  # every one of A's requests, in the order sent


async def test_a_request_larger_than_the_share_is_still_taken_while_others_keep_flowing() -> None:
    queue = FairQueue(QueueLimits(contended_share_alerts=100))
    big = _request("big", 450)
    await queue.put(big)
    for _ in range(100):
        await queue.put(_request("small", 10))
    batches: list[list[QueuedRequest]] = []
    while big not in (batches[-1] if batches else []):
        batches.append(queue.take_batch(500))
        assert len(batches) <= 5, "deficit round-robin must reach the large request"
    assert all("small" in _tenants(b) for b in batches)


async def test_over_a_limit_put_waits_for_room_then_refuses_with_a_retry_hint() -> None:
    queue = FairQueue(QueueLimits(integration_alerts=3))
    await queue.put(_request("a", 2))
    await queue.put(_request("a", 1))
    with pytest.raises(Exception, match="ONCALL_INGEST_INTEGRATION_QUEUE_ALERTS") as refused:
        await queue.put(_request("a", 1))  # no wait: refused at once
    assert getattr(refused.value, "retry_after_seconds", 0) >= 1
    with pytest.raises(Exception, match="ONCALL_INGEST_INTEGRATION_QUEUE_ALERTS"):
        await queue.put(_request("a", 1), wait_seconds=0.05)  # no room came
    await queue.put(_request("b", 1))  # another tenant's integration is not limited by A's backlog
    waiting = asyncio.ensure_future(queue.put(_request("a", 1), wait_seconds=None))
    await asyncio.sleep(0)  # let the waiting put run up to its wait
    assert not waiting.done()
    queue.answered(queue.take_batch(500), 0.01)
    await asyncio.wait_for(waiting, 1)  # admitted once the batch was answered


async def test_a_lone_tenants_batch_stays_at_its_share_while_another_tenant_is_active() -> None:
    queue = FairQueue(QueueLimits(contended_share_alerts=100))
    await queue.put(_request("b", 1))
    queue.answered(queue.take_batch(500), 0.01)  # B was just here, and is idle now
    for _ in range(10):
        await queue.put(_request("a", 50))
    assert sum(len(r.alerts) for r in queue.take_batch(500)) == 100


async def test_a_request_over_the_limit_alone_is_admitted_when_nothing_else_waits() -> None:
    queue = FairQueue(QueueLimits(integration_alerts=5, tenant_alerts=5, total_alerts=5))
    await queue.put(_request("a", 50))  # slow, never refused forever
    assert queue.has_work()


# -- a server whose writer is held: Redis refuses writes for a moment ---------------------------


class _Retry5xxSender:
    """A sender that retries 5xx only (as Alertmanager does): its adapter asks for 503 on overload."""

    name = "retry_5xx_sender"
    overload_http_status = 503

    def parse(self, payload: Any, context: AdapterContext) -> list[NormalizedEvent]:
        return [NormalizedEvent(str(payload.get("title", "")), Severity.HIGH, payload.get("dedup_key"))]


class _Retry5xxPlugin:
    @hookimpl
    def oncall_register_adapters(self, register: Any) -> None:
        register(_Retry5xxSender())


@pytest.fixture
async def limited(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis
) -> AsyncIterator[RunningServer]:
    settings = server_settings(
        tmp_path,
        database_url,
        redis_url,
        ingest_integration_queue_alerts=2,
        ingest_queue_wait_seconds=0,
        ingest_fair_share_alerts=20,
        write_batch_size=100,
    )
    async with running_server(settings) as running:
        running.app.plugins.register(_Retry5xxPlugin(), "retry-5xx-sender")
        yield running


class _WritesPaused:
    """Redis answers no write (CLIENT PAUSE WRITE) so the writer's next decision waits: what is
    submitted meanwhile stays queued. Well under the server's Redis timeout."""

    def __init__(self, redis: Redis, app: App) -> None:
        self.redis, self.app = redis, app

    async def __aenter__(self) -> _WritesPaused:
        await self.redis.execute_command("CLIENT", "PAUSE", "4000", "WRITE")
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.redis.execute_command("CLIENT", "UNPAUSE")

    async def queued(self, alerts: int) -> None:
        """Until ``alerts`` are queued: the requests sent so far have been admitted."""

        async def enough() -> bool:
            return self.app.writer.queue.queued_alerts >= alerts

        await wait_for(enough)


def _alerts(prefix: str, count: int) -> bytes:
    return json.dumps(
        [{"title": f"{prefix} {i}", "dedup_key": f"{prefix}-{i}"} for i in range(count)]
    ).encode()


async def test_a_flooding_tenant_cannot_starve_another(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis
) -> None:
    settings = server_settings(
        tmp_path, database_url, redis_url, ingest_fair_share_alerts=20, write_batch_size=100
    )
    async with running_server(settings) as server, aiohttp.ClientSession() as http:
        flooder, other = await bootstrap(server.app), await bootstrap(server.app)
        answered: list[str] = []

        async def send(tenant: Tenant, label: str, body: bytes) -> None:
            status, answer = await post_body(http, webhook_url(server, tenant), body)
            assert status == 202, answer
            answered.append(label)

        async with _WritesPaused(redis, server.app) as paused:
            flood = [asyncio.ensure_future(send(flooder, f"a{i}", _alerts(f"a{i}", 20))) for i in range(12)]
            await paused.queued(12 * 20)
            lone = asyncio.ensure_future(send(other, "b", _alerts("b", 1)))
            await paused.queued(12 * 20 + 1)
        await asyncio.gather(*flood, lone)
        # The batch in flight when B arrived held 5 of A's requests; then B shares the next one.
        assert answered.index("b") <= 7, answered
        assert len(await alerts_of(server.app, flooder.service_id)) == 12 * 20


def _metric(exposition: str, name: str, **labels: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_over_the_limit_each_face_answers_retry_and_nothing_accepted_is_lost(
    limited: RunningServer, redis: Redis
) -> None:
    server = limited
    tenant = await bootstrap(server.app)
    bystander = await bootstrap(server.app)
    url = webhook_url(server, tenant)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_url}/metrics") as response:
            rejected_before = _metric(
                await response.text(),
                "oncall_ingest_requests_rejected_total",
                source="webhook",
                error="ResourceExhausted",
            )
        async with _WritesPaused(redis, server.app) as paused:
            first = asyncio.ensure_future(post_body(http, url, _alerts("first", 1)))
            await paused.queued(1)
            second = asyncio.ensure_future(post_body(http, url, _alerts("second", 1)))
            await paused.queued(2)

            async with http.post(url, data=_alerts("refused", 1)) as response:
                assert response.status == 429
                assert int(response.headers["Retry-After"]) >= 1
                body = await response.json()
            assert body["error"] == "ResourceExhausted"
            assert "ONCALL_INGEST_INTEGRATION_QUEUE_ALERTS" in body["message"]

            async with grpc.aio.insecure_channel(server.grpc_target) as channel:
                stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.IngestAlert(
                        ingest_service_pb2.IngestAlertRequest(
                            integration_key=tenant.integration_key,
                            alert=alert_pb2.AlertEvent(title="refused over gRPC"),
                        )
                    )
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = status_pb2.Status.FromString(
                dict(refused.value.trailing_metadata() or ())["grpc-status-details-bin"]
            ).details
            retry = error_details_pb2.RetryInfo()
            assert any(d.Unpack(retry) for d in details) and retry.retry_delay.seconds >= 1

            # Another tenant is not refused for this one's backlog (it waits for Redis like everyone).
            bystanding = asyncio.ensure_future(
                post_body(http, webhook_url(server, bystander), _alerts("b", 1))
            )
            await paused.queued(3)
        assert [(await first)[0], (await second)[0], (await bystanding)[0]] == [202, 202, 202]
        titles = sorted(a.title for a in await alerts_of(server.app, tenant.service_id))
        assert titles == ["first 0", "second 0"]  # both accepted stored, no refused one
        async with http.get(f"{server.http_url}/metrics") as response:
            exposition = await response.text()
    refused_count = _metric(
        exposition,
        "oncall_ingest_refused_alerts_total",
        tenant_id=tenant.tenant_id,
        integration_id=tenant.integration_id,
        limit="integration",
    )
    assert refused_count == 2  # the webhook's alert and the gRPC one
    rejected = _metric(
        exposition, "oncall_ingest_requests_rejected_total", source="webhook", error="ResourceExhausted"
    )
    assert rejected - rejected_before == 2


async def test_a_sender_that_retries_only_5xx_is_answered_503(limited: RunningServer, redis: Redis) -> None:
    server = limited
    tenant = await bootstrap(server.app, integration_type="retry_5xx_sender")
    url = webhook_url(server, tenant)
    async with aiohttp.ClientSession() as http:
        async with _WritesPaused(redis, server.app) as paused:
            held = [
                asyncio.ensure_future(post_body(http, url, json.dumps({"title": f"t{i}"}).encode()))
                for i in range(2)
            ]
            await paused.queued(2)
            async with http.post(url, data=json.dumps({"title": "over"}).encode()) as response:
                assert response.status == 503
                assert int(response.headers["Retry-After"]) >= 1
        assert [(await h)[0] for h in held] == [202, 202]


async def test_the_bus_waits_for_room_instead_of_refusing(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis
) -> None:
    settings = server_settings(tmp_path, database_url, redis_url, ingest_integration_queue_alerts=1)
    app = await App.open(settings)
    try:
        tenant = await bootstrap(app, integration_type="rmm", tenant="bus-flood")
        consumer = bus.BusConsumer(app, "c1")
        await consumer.ensure_groups()
        for i in range(30):
            await bus.publish(
                app.redis,
                "rmm",
                {
                    "title": f"disk {i}",
                    "severity": "high",
                    "alert_id": f"rmm-{i}",
                    "tenant_id": tenant.tenant_id,
                },
            )
        assert await consumer.poll_once() == 30  # 30 at once through a queue that holds one
        assert len(await alerts_of(app, tenant.service_id)) == 30
        assert await app.redis.xlen(bus.DEAD_LETTERS) == 0
    finally:
        await app.close()


async def test_over_the_limit_a_request_waits_for_room_instead_of_being_refused(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis
) -> None:
    settings = server_settings(
        tmp_path, database_url, redis_url, ingest_integration_queue_alerts=2, ingest_queue_wait_seconds=30
    )
    async with running_server(settings) as server, aiohttp.ClientSession() as http:
        tenant = await bootstrap(server.app)
        url = webhook_url(server, tenant)
        async with _WritesPaused(redis, server.app) as paused:
            held = [asyncio.ensure_future(post_body(http, url, _alerts(f"held{i}", 1))) for i in range(2)]
            await paused.queued(2)
            waiting = asyncio.ensure_future(post_body(http, url, _alerts("waiting", 1)))

            async def is_waiting() -> bool:
                return server.app.writer.queue.waiting_for_room == 1

            await wait_for(is_waiting)
            assert not waiting.done()
        assert [(await r)[0] for r in [*held, waiting]] == [202, 202, 202]
        titles = sorted(a.title for a in await alerts_of(server.app, tenant.service_id))
        assert titles == ["held0 0", "held1 0", "waiting 0"]
