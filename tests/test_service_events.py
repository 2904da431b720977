"""``CatalogService.ListServiceEvents``: a service's change events, as senders' CHANGE events stored
them (the webhook's ``"event_action": "change"``, PagerDuty's ``POST /v2/change/enqueue``), newest
first, a page at a time, only to the service's own tenant.

A real server on loopback (gRPC and the HTTP gateway); the events go in over HTTP as senders send them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from oncall_server.api.v1 import catalog_service_pb2 as cat_pb
from oncall_server.api.v1 import catalog_service_pb2_grpc as cat_grpc
from oncall_server.api.v1 import service_pb2
from oncall_server.clock import FakeClock
from oncall_server.testing import RunningServer, Tenant, bootstrap, running_server, server_settings, settle
from tests.helpers import post_json


@pytest.fixture
async def server(
    tmp_path: Path, database_url: str, redis_url: str, clock: FakeClock
) -> AsyncIterator[RunningServer]:
    settings = server_settings(tmp_path, database_url, redis_url, roles=("grpc", "gateway"))
    async with running_server(settings, clock=clock) as running:
        yield running


async def webhook_change(server: RunningServer, tenant: Tenant, body: dict[str, Any]) -> None:
    status, answer = await post_json(
        f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}",
        {**body, "event_action": "change"},
    )
    assert status == 202, answer
    assert answer["outcome"] == "recorded", answer
    await next_millisecond()


async def pagerduty_change(server: RunningServer, tenant: Tenant, payload: dict[str, Any]) -> str:
    status, answer = await post_json(
        f"{server.http_url}/v2/change/enqueue", {"routing_key": tenant.integration_key, "payload": payload}
    )
    assert status == 202, answer
    assert answer["message"] == "Change event processed", answer
    await next_millisecond()
    return str(answer["id"])


async def next_millisecond() -> None:
    """Event ids are UUIDv7 (millisecond time first): two events in one millisecond have no order."""
    await asyncio.sleep(0.003)


async def list_events(
    server: RunningServer,
    auth: list[tuple[str, str]] | None,
    service_id: str,
    page_size: int = 0,
    page_token: str = "",
) -> cat_pb.ListServiceEventsResponse:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        return await cat_grpc.CatalogServiceStub(channel).ListServiceEvents(
            cat_pb.ListServiceEventsRequest(
                service_id=service_id, page_size=page_size, page_token=page_token
            ),
            metadata=auth,
        )


async def refused(
    server: RunningServer, auth: list[tuple[str, str]] | None, service_id: str, **request: Any
) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await list_events(server, auth, service_id, **request)
    code = error.value.code()
    assert isinstance(code, grpc.StatusCode)
    return code


async def test_change_events_from_the_webhook_and_pagerduty_are_listed_newest_first(
    server: RunningServer,
) -> None:
    tenant = await bootstrap(server.app)
    await webhook_change(server, tenant, {"title": "Deployed v2.3"})
    await webhook_change(server, tenant, {"title": "Feature flag checkout-v2 on", "source": "flagd"})
    pd_id = await pagerduty_change(
        server,
        tenant,
        {
            "summary": "Build Success: snapshot timeout 30 s",
            "source": "acme-build-pipeline",
            "custom_details": {"build_state": "passed", "build_number": 2, "stages": ["test", "ship"]},
        },
    )
    await settle(server.app)

    answer = await list_events(server, tenant.auth, tenant.service_id)
    assert answer.next_page_token == ""
    events = list(answer.service_events)
    assert [e.summary for e in events] == [
        "Build Success: snapshot timeout 30 s",
        "Feature flag checkout-v2 on",
        "Deployed v2.3",
    ]
    pd, flag, deploy = events
    for event in events:
        assert event.service_id == tenant.service_id
        assert event.integration_id == tenant.integration_id
        assert event.HasField("occurred_time") and event.HasField("create_time")
    assert pd.id == pd_id
    assert pd.source == "pagerduty"
    assert pd.details["source"] == "acme-build-pipeline"
    assert pd.details["custom_details.build_state"] == "passed"
    # Non-string values reach the map as JSON text.
    assert pd.details["custom_details.build_number"] == "2"
    assert json.loads(pd.details["custom_details.stages"]) == ["test", "ship"]
    # The plain webhook extracts title, severity, key and action; it fills no details.
    assert dict(flag.details) == {} and dict(deploy.details) == {}
    assert (flag.source, deploy.source) == ("flagd", "webhook")  # the body's source, else the type
    assert flag.id > deploy.id and pd.id > flag.id


async def test_paging_walks_every_event_once_newest_first(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    for n in range(5):
        await webhook_change(server, tenant, {"title": f"Deploy {n}"})
    await settle(server.app)

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        answer = await list_events(server, tenant.auth, tenant.service_id, page_size=2, page_token=token)
        assert len(answer.service_events) <= 2
        seen += [e.summary for e in answer.service_events]
        pages += 1
        token = answer.next_page_token
        if not token:
            break
    assert seen == [f"Deploy {n}" for n in reversed(range(5))]
    assert pages == 3

    everything = await list_events(server, tenant.auth, tenant.service_id, page_size=5)
    assert len(everything.service_events) == 5 and everything.next_page_token == ""


async def test_a_service_without_change_events_lists_none(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        other = await cat_grpc.CatalogServiceStub(channel).CreateService(
            cat_pb.CreateServiceRequest(service=service_pb2.Service(name="Quiet")), metadata=tenant.auth
        )
    await webhook_change(server, tenant, {"title": "Deployed v2.3"})  # on the default service
    await settle(server.app)
    answer = await list_events(server, tenant.auth, other.service.id)
    assert list(answer.service_events) == [] and answer.next_page_token == ""


async def test_another_tenant_sees_not_found_and_no_token_is_unauthenticated(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    stranger = await bootstrap(server.app)
    await webhook_change(server, tenant, {"title": "Deployed v2.3"})
    await settle(server.app)

    assert await refused(server, stranger.auth, tenant.service_id) == grpc.StatusCode.NOT_FOUND
    assert await refused(server, None, tenant.service_id) == grpc.StatusCode.UNAUTHENTICATED
    assert await refused(server, tenant.auth, "not-a-uuid") == grpc.StatusCode.NOT_FOUND
    # The stranger's own service has none of them.
    mine = await list_events(server, stranger.auth, stranger.service_id)
    assert list(mine.service_events) == []


async def test_page_size_and_token_are_checked(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    assert (
        await refused(server, tenant.auth, tenant.service_id, page_size=-1)
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        await refused(server, tenant.auth, tenant.service_id, page_token="not a token")
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    # Over the maximum is clamped (1000), not refused.
    answer = await list_events(server, tenant.auth, tenant.service_id, page_size=5000)
    assert list(answer.service_events) == []
