"""Bad input on every face is a 4xx / INVALID_ARGUMENT / UNAUTHENTICATED naming the problem,
never a 5xx / INTERNAL, and nothing is stored: over a real server on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis

from oncall_server.api.v1 import (
    alert_pb2,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    integration_service_pb2,
    integration_service_pb2_grpc,
)
from oncall_server.testing import RunningServer, Tenant, bootstrap, running_server, server_settings
from tests.helpers import count_rows
from tests.raw_http import closed_within, exchange, host_port, read_response, request_bytes

DEFEND_KEY = "defend-service-key-for-tests"
DEEP = 1000  # far past Python's recursion limit for the standard library's parser
HUGE_INT = b"9" * 5000  # past CPython's 4,300-digit int conversion limit


@pytest.fixture
async def server(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis
) -> AsyncIterator[RunningServer]:
    settings = server_settings(tmp_path, database_url, redis_url, defend_service_key=DEFEND_KEY)
    async with running_server(settings) as running:
        yield running


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def route(tenant: Tenant, name: str) -> tuple[str, str, list[tuple[bytes, bytes]]]:
    """method, target, credential headers of each JSON route."""
    if name == "webhook":
        return "POST", "/api/webhooks/ingest", [(b"X-Integration-Key", tenant.integration_key.encode())]
    if name == "defend":
        return "POST", "/api/internal/escalations/create", [(b"X-Integration-Key", DEFEND_KEY.encode())]
    return (
        "PUT",
        f"/api/integrations/{tenant.integration_id}",
        [(b"Authorization", b"Bearer " + tenant.api_token.encode())],
    )


async def stored_state(server: RunningServer, tenant: Tenant) -> tuple[object, ...]:
    integration = await server.app.integrations.context_of(tenant.integration_id)
    return (*await count_rows(server.app), integration.name, integration.routing_rules)


async def seeded(server: RunningServer) -> tuple[Tenant, tuple[object, ...]]:
    tenant = await bootstrap(server.app)
    kept = await exchange(
        server.http_url,
        request_bytes(
            "POST",
            f"/api/webhooks/ingest?key={tenant.integration_key}",
            body=b'{"title": "kept", "dedup_key": "k"}',
        ),
    )
    assert kept.status == 202
    return tenant, await stored_state(server, tenant)


@pytest.mark.parametrize("name", ["webhook", "defend", "integration"])
@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"title": "x", "name": ' + HUGE_INT + b"}", "digits"),
        (b'{"title": "x", "name": ' + nested(DEEP) + b"}", "nested"),
        (b'{"title": "x", "name": ' + nested(200) + b"}", "nested"),
        (b'{"title": "x", "name": ' + nested(DEEP).replace(b"[]", b'[{"a": 1}]') + b"}", "nested"),
        (b'{"title": "x", "name": NaN}', "NaN is not a JSON value"),
        (b'{"title": "x", "name": -Infinity}', "Infinity is not a JSON value"),
        (b'{"title": "x", "name": 1e999}', "out of range"),
        (b'{"title": "x", "name": "\xff"}', "UTF-8"),
    ],
    ids=[
        "int-5000-digits",
        "nested-1000",
        "nested-200",
        "nested-objects",
        "nan",
        "infinity",
        "1e999",
        "not-utf8",
    ],
)
async def test_json_bodies_are_refused_naming_the_body(
    server: RunningServer, name: str, body: bytes, needle: str
) -> None:
    tenant, before = await seeded(server)
    method, target, headers = route(tenant, name)
    started = time.monotonic()
    got = await exchange(server.http_url, request_bytes(method, target, headers=headers, body=body))
    assert got.status == 400, got.body
    answer = got.json()
    assert answer["error"] == "InvalidArgument"
    assert answer["fields"][0]["field"].startswith("body"), answer
    assert needle in answer["message"], answer
    assert time.monotonic() - started < 5
    assert await stored_state(server, tenant) == before


@pytest.mark.parametrize("name", ["webhook", "defend", "integration"])
@pytest.mark.parametrize(
    "credential",
    [b"oci_\xff\xfe\x80", b"\xc3\xa9t\xc3\xa9", b"oct_\xed\xa0\x80"],
    ids=["invalid-utf8", "non-ascii-utf8", "encoded-surrogate"],
)
async def test_non_ascii_credentials_are_unauthenticated(
    server: RunningServer, name: str, credential: bytes
) -> None:
    tenant, before = await seeded(server)
    method, target, headers = route(tenant, name)
    header_name = headers[0][0]
    value = b"Bearer " + credential if header_name == b"Authorization" else credential
    got = await exchange(
        server.http_url,
        request_bytes(method, target, headers=[(header_name, value)], body=b'{"title": "x"}'),
    )
    assert got.status == 401, got.body
    assert got.json()["error"] == "Unauthenticated"
    assert await stored_state(server, tenant) == before


@pytest.mark.parametrize("query", ["key=%FF%FE", "key=%C3%A9", "key=oci_%00"])
async def test_non_ascii_key_in_the_query_is_unauthenticated(server: RunningServer, query: str) -> None:
    tenant, before = await seeded(server)
    got = await exchange(
        server.http_url, request_bytes("POST", f"/api/webhooks/ingest?{query}", body=b'{"title": "x"}')
    )
    assert got.status == 401, got.body
    assert await stored_state(server, tenant) == before


@pytest.mark.parametrize(
    ("name", "description"),
    [("a\u0000b", "NUL"), ("  ", "1 to 200"), ("x" * 201, "1 to 200"), (7, "string")],
    ids=["nul", "blank", "too-long", "not-a-string"],
)
async def test_integration_name_is_checked_as_text(
    server: RunningServer, name: object, description: str
) -> None:
    import json

    tenant, before = await seeded(server)
    method, target, headers = route(tenant, "integration")
    got = await exchange(
        server.http_url,
        request_bytes(method, target, headers=headers, body=json.dumps({"name": name}).encode()),
    )
    assert got.status == 400, got.body
    answer = got.json()
    assert answer["fields"][0]["field"].endswith("name"), answer
    assert description in answer["message"], answer
    assert await stored_state(server, tenant) == before


async def test_integration_name_nul_over_grpc_is_invalid_argument(server: RunningServer) -> None:
    tenant, before = await seeded(server)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = integration_service_pb2_grpc.IntegrationServiceStub(channel)
        got = await stub.GetIntegration(
            integration_service_pb2.GetIntegrationRequest(integration_id=tenant.integration_id),
            metadata=tenant.auth,
        )
        changed = got.integration
        changed.name = "a\x00b"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.UpdateIntegration(
                integration_service_pb2.UpdateIntegrationRequest(integration=changed), metadata=tenant.auth
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in (refused.value.details() or "")
    assert await stored_state(server, tenant) == before


@pytest.mark.parametrize("name", ["webhook", "defend", "integration"])
async def test_content_length_over_the_limit_is_413_at_once_and_the_connection_closed(
    server: RunningServer, name: str
) -> None:
    tenant, before = await seeded(server)
    method, target, headers = route(tenant, name)
    host, port = host_port(server.http_url)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        started = time.monotonic()
        # Headers only: the 10 GB body never comes. The answer must not wait for it.
        writer.write(request_bytes(method, target, headers=[*headers, (b"Content-Length", b"10000000000")]))
        await writer.drain()
        got = await asyncio.wait_for(read_response(reader), 3)
        assert got.status == 413, got.body
        assert got.json()["fields"][0]["field"] == "body"
        assert got.headers.get("connection", "").lower() == "close"
        assert await closed_within(reader, 3)
        assert time.monotonic() - started < 3
    finally:
        writer.close()
    assert await stored_state(server, tenant) == before


async def test_a_body_of_exactly_the_limit_is_accepted(server: RunningServer) -> None:
    tenant, _ = await seeded(server)
    limit = server.app.settings.max_body_bytes
    prefix, suffix = b'{"title": "big", "description": "', b'"}'
    body = prefix + b"x" * (limit - len(prefix) - len(suffix)) + suffix
    assert len(body) == limit
    got = await exchange(
        server.http_url,
        request_bytes("POST", f"/api/webhooks/ingest?key={tenant.integration_key}", body=body),
    )
    assert got.status == 202, got.body[:300]


def _alert(**fields: object) -> alert_pb2.AlertEvent:
    return alert_pb2.AlertEvent(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("alert", "field", "needle"),
    [
        (_alert(title="x", severity=99), "alert.severity", "Severity"),
        (_alert(title="x", severity=-1), "alert.severity", "Severity"),
        (_alert(raw_payload="[" * DEEP + "]" * DEEP), "alert.raw_payload", "nested"),
        (_alert(raw_payload='{"a": ' + "[" * 200 + "]" * 200 + "}"), "alert.raw_payload", "nested"),
        (
            _alert(title="x", raw_payload='{"a": ' + "[" * DEEP + "]" * DEEP + "}"),
            "alert.raw_payload",
            "nested",
        ),
        (_alert(title="x", occurred_time={"seconds": 10**12}), "alert.occurred_time", "years 1 and 9999"),
        (
            _alert(title="x", occurred_time={"seconds": 1, "nanos": -1}),
            "alert.occurred_time",
            "years 1 and 9999",
        ),
    ],
    ids=[
        "severity-99",
        "severity-negative",
        "raw-nested-1000",
        "raw-nested-200",
        "raw-nested-with-title",
        "occurred-time-year-33658",
        "occurred-time-negative-nanos",
    ],
)
async def test_grpc_ingest_refuses_bad_alerts_naming_the_field(
    server: RunningServer, alert: alert_pb2.AlertEvent, field: str, needle: str
) -> None:
    from grpc_status import rpc_status

    tenant, before = await seeded(server)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as one:
            await ingest.IngestAlert(
                ingest_service_pb2.IngestAlertRequest(integration_key=tenant.integration_key, alert=alert)
            )
        assert one.value.code() == grpc.StatusCode.INVALID_ARGUMENT, one.value.details()
        assert needle in (one.value.details() or ""), one.value.details()
        status = rpc_status.from_call(one.value)
        assert status is not None and status.details, "BadRequest details expected"
        assert field in (one.value.details() or "")

        async def messages() -> AsyncIterator[ingest_service_pb2.IngestAlertsRequest]:
            yield ingest_service_pb2.IngestAlertsRequest(
                integration_key=tenant.integration_key, alerts=[_alert(title="fine"), alert]
            )

        with pytest.raises(grpc.aio.AioRpcError) as many:
            await ingest.IngestAlerts(messages())
        assert many.value.code() == grpc.StatusCode.INVALID_ARGUMENT, many.value.details()
        assert "alerts[1]" in (many.value.details() or ""), many.value.details()
    assert await stored_state(server, tenant) == before


@pytest.mark.parametrize(
    "method", ["/oncall.v1.IngestService/IngestAlert", "/oncall.v1.IncidentService/ListIncidents"]
)
async def test_grpc_bytes_that_are_not_a_message_are_invalid_argument(
    server: RunningServer, method: str
) -> None:
    tenant, before = await seeded(server)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            method
        )  # bytes as they are
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(b"\xff\xff\xff\xff", metadata=tenant.auth, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "request" in (refused.value.details() or "")
    assert await stored_state(server, tenant) == before
