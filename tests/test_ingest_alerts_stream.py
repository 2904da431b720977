"""``IngestAlerts`` is all or nothing per call, within ``ONCALL_MAX_BATCH_ALERTS`` over the stream.

It used to store each message as it arrived: a stream failing on a later message had committed the
earlier ones while the call answered an error, so the client's retry duplicated keyless alerts;
and no limit applied (5,000 alerts in one message were stored).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from oncall_server.api.v1 import alert_pb2, ingest_service_pb2, ingest_service_pb2_grpc
from oncall_server.testing import RunningServer, Tenant, bootstrap
from tests.helpers import count_rows


def violation(error: grpc.aio.AioRpcError) -> tuple[str, str]:
    """The (field, description) of the google.rpc.BadRequest an INVALID_ARGUMENT carries."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    status = rpc_status.from_call(error)
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return bad.field_violations[0].field, bad.field_violations[0].description


def events(prefix: str, count: int, *, keyed: bool = True) -> list[alert_pb2.AlertEvent]:
    return [
        alert_pb2.AlertEvent(title=f"{prefix}-{i}", dedup_key=f"{prefix}-{i}" if keyed else "")
        for i in range(count)
    ]


async def stream(*messages: ingest_service_pb2.IngestAlertsRequest) -> AsyncIterator[Any]:
    for message in messages:
        yield message


async def ingest_alerts(
    server: RunningServer, tenant: Tenant, *messages: ingest_service_pb2.IngestAlertsRequest, key: str = ""
) -> ingest_service_pb2.IngestAlertsResponse:
    metadata = [("x-integration-key", tenant.integration_key)] + ([("idempotency-key", key)] if key else [])
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        return await stub.IngestAlerts(stream(*messages), metadata=metadata)


@pytest.mark.parametrize(
    "split", [[1001], [400, 400, 201], [1000, 1]], ids=["one-message", "three", "last-one"]
)
async def test_ingest_alerts_refuses_more_alerts_than_the_batch_limit_and_stores_nothing(
    server: RunningServer, split: list[int]
) -> None:
    tenant = await bootstrap(server.app)
    messages = [
        ingest_service_pb2.IngestAlertsRequest(alerts=events(f"m{n}", size)) for n, size in enumerate(split)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest_alerts(server, tenant, *messages)
    field, description = violation(caught.value)
    assert field == "alerts"
    assert "1000" in description
    assert await count_rows(server.app) == (0, 0)


@pytest.mark.parametrize(
    ("third", "field"),
    [
        (alert_pb2.AlertEvent(title="x", dedup_key="k\x00"), "requests[2].alerts[1].dedup_key"),
        (alert_pb2.AlertEvent(title="x", source="s" * 65), "requests[2].alerts[1].source"),
        (alert_pb2.AlertEvent(raw_payload="{not json"), "requests[2].alerts[1].raw_payload"),
    ],
    ids=["nul-dedup-key", "long-source", "bad-raw-payload"],
)
async def test_an_ingest_alerts_stream_whose_third_message_is_invalid_stores_nothing(
    server: RunningServer, third: alert_pb2.AlertEvent, field: str
) -> None:
    tenant = await bootstrap(server.app)
    messages = [
        ingest_service_pb2.IngestAlertsRequest(alerts=events("first", 3, keyed=False)),
        ingest_service_pb2.IngestAlertsRequest(alerts=events("second", 3)),
        ingest_service_pb2.IngestAlertsRequest(alerts=[*events("third", 1), third]),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest_alerts(server, tenant, *messages)
    assert violation(caught.value)[0] == field
    assert await count_rows(server.app) == (0, 0)
    # The whole call again, fixed: everything stored once.
    messages[2] = ingest_service_pb2.IngestAlertsRequest(alerts=events("third", 2))
    answer = await ingest_alerts(server, tenant, *messages)
    assert [r.outcome for r in answer.results] == [alert_pb2.INGEST_OUTCOME_CREATED] * 8
    assert await count_rows(server.app) == (8, 8)


async def test_a_retried_ingest_alerts_call_with_an_idempotency_key_stores_keyless_alerts_once(
    server: RunningServer,
) -> None:
    tenant = await bootstrap(server.app)
    messages = [
        ingest_service_pb2.IngestAlertsRequest(alerts=events("a", 2, keyed=False)),
        ingest_service_pb2.IngestAlertsRequest(alerts=events("b", 2, keyed=False)),
    ]
    first = await ingest_alerts(server, tenant, *messages, key="call-1")
    again = await ingest_alerts(server, tenant, *messages, key="call-1")
    assert [r.outcome for r in first.results] == [alert_pb2.INGEST_OUTCOME_CREATED] * 4
    assert [r.outcome for r in again.results] == [alert_pb2.INGEST_OUTCOME_DEDUPLICATED] * 4
    assert [r.alert_id for r in again.results] == [r.alert_id for r in first.results]
    assert await count_rows(server.app) == (4, 4)


async def test_ingest_alert_names_the_refused_field(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.IngestAlert(
                ingest_service_pb2.IngestAlertRequest(
                    integration_key=tenant.integration_key,
                    alert=alert_pb2.AlertEvent(title="x", dedup_key="d" * 256),
                )
            )
        field, description = violation(caught.value)
        assert (field, description) == ("alert.dedup_key", "must be at most 255 characters")
        done = await stub.IngestAlert(
            ingest_service_pb2.IngestAlertRequest(
                integration_key=tenant.integration_key,
                alert=alert_pb2.AlertEvent(title="x", dedup_key="d" * 255),
            )
        )
        assert done.result.outcome == alert_pb2.INGEST_OUTCOME_CREATED
    assert await count_rows(server.app) == (1, 1)
