"""Keys and tokens never reach the log, however a client encodes them: the access log and the
error log name a request by its route template, and the gRPC side never logs metadata values."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis

from oncall_server.api.v1 import (
    alert_pb2,
    incident_service_pb2,
    incident_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
)
from oncall_server.testing import RunningServer, Tenant, bootstrap, running_server, server_settings
from tests.raw_http import exchange, request_bytes

DEFEND_KEY = "defend-secret-4c1d2e9f7a"


@pytest.fixture
async def server(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis
) -> AsyncIterator[RunningServer]:
    settings = server_settings(tmp_path, database_url, redis_url, defend_service_key=DEFEND_KEY).model_copy(
        update={"access_log": True}
    )
    async with running_server(settings) as running:
        yield running


def encodings(secret: str) -> list[str]:
    """Request targets carrying ``secret`` the ways a sender (or an attacker probing) might."""
    hexed = "".join(f"%{b:02X}" for b in secret.encode())
    return [
        f"/api/webhooks/ingest?key={secret}",
        f"/api/webhooks/ingest?%6Bey={secret}",
        f"/api/webhooks/ingest?k%65y={secret}",
        f"/api/webhooks/ingest?KEY={secret}",
        f"/api/webhooks/ingest?key%5B%5D={secret}",
        f"/api/webhooks/ingest?api_key={secret}",
        f"/api/webhooks/ingest?access_token={secret}",
        f"/api/webhooks/ingest?x=1&key={hexed}",
        f"/api/webhooks/ingest?x=1;key={secret}",
        f"/api/webhooks/ingest/{secret}",
        f"/api/webhooks/ingest?key={secret}#{secret}",
        f"/{secret}",
        f"/api/{hexed}?routing_key={secret}",
        f"/metrics?token={secret}",
        f"/healthz?key={secret}",
    ]


def logged(caplog: pytest.LogCaptureFixture) -> str:
    lines = []
    for record in caplog.records:
        lines.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            lines.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(lines)


def assert_never_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    text = logged(caplog)
    for secret in secrets:
        for form in {secret, secret[4:], secret[-12:], "".join(f"%{b:02X}" for b in secret.encode())}:
            assert form not in text, f"{form!r} logged:\n{text}"


async def test_access_log_names_routes_and_never_keys_however_encoded(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await bootstrap(server.app)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="aiosqlite")  # statements, not requests
    caplog.clear()
    statuses = []
    for target in encodings(tenant.integration_key):
        method = "GET" if target.startswith(("/metrics", "/healthz")) else "POST"
        got = await exchange(server.http_url, request_bytes(method, target, body=b'{"title": "x"}'))
        statuses.append(got.status)
    assert_never_logged(caplog, tenant.integration_key)
    assert 202 in statuses and 404 in statuses and 200 in statuses  # accepted, unmatched, and GET routes
    access = [r.getMessage() for r in caplog.records if r.name == "oncall.access"]
    assert len(access) == len(statuses)
    assert any('"POST /api/webhooks/ingest" 202' in line for line in access), access
    assert any('"POST -" 404' in line for line in access), access
    assert any('"GET /metrics" 200' in line for line in access), access


async def test_credentials_in_headers_and_path_parameters_are_never_logged(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await bootstrap(server.app)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="aiosqlite")  # statements, not requests
    caplog.clear()
    cases: list[tuple[str, str, list[tuple[bytes, bytes]], bytes]] = [
        (
            "PUT",
            f"/api/integrations/{tenant.api_token}",
            [(b"Authorization", b"Bearer " + tenant.api_token.encode())],
            b"{}",
        ),
        (
            "PUT",
            f"/api/integrations/{tenant.integration_id}",
            [(b"Authorization", tenant.api_token.encode())],
            b"{}",
        ),
        ("POST", "/api/internal/escalations/create", [(b"X-Integration-Key", DEFEND_KEY.encode())], b"[1"),
        ("POST", "/api/webhooks/ingest", [(b"X-Integration-Key", tenant.integration_key.encode())], b"{"),
        (tenant.integration_key[:20], "/api/webhooks/ingest", [], b"{}"),  # a made-up method
    ]
    for method, target, headers, body in cases:
        got = await exchange(server.http_url, request_bytes(method, target, headers=headers, body=body))
        assert got.status < 500, got.body
    assert_never_logged(caplog, tenant.integration_key, tenant.api_token, DEFEND_KEY)
    access = [r.getMessage() for r in caplog.records if r.name == "oncall.access"]
    assert any('"PUT /api/integrations/{integration_id}"' in line for line in access), access


async def test_requests_aiohttp_cannot_parse_are_logged_without_their_bytes(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's parser errors quote the offending line: the request line or a credential header."""
    tenant = await bootstrap(server.app)
    key, token = tenant.integration_key.encode(), tenant.api_token.encode()
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    malformed = [
        b"POST /api/webhooks/ingest?key=" + key + b" HTTP/1.1 trailing\r\nHost: x\r\n\r\n",
        b"POST /api/webhooks/ingest?key=" + key + b"\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        request_bytes(
            "POST", "/api/webhooks/ingest", headers=[(b"X-Integration-Key", key + b"\x01")], body=b"{}"
        ),
        request_bytes(
            "PUT",
            "/api/integrations/x",
            headers=[(b"Authorization", b"Bearer " + token + b"\x7f")],
            body=b"{}",
        ),
        request_bytes(
            "POST", "/api/webhooks/ingest", headers=[(b"X-Integration-Key", key + b"k" * 9000)], body=b"{}"
        ),
        request_bytes("GET", "/healthz?key=" + key.decode() + "x" * 9000),
    ]
    for raw in malformed:
        assert (await exchange(server.http_url, raw)).status == 400
    assert_never_logged(caplog, tenant.integration_key, tenant.api_token)
    assert "malformed HTTP request from 127.0.0.1" in logged(caplog)


async def test_the_unexpected_error_line_names_the_route_not_the_target(
    server: RunningServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = await bootstrap(server.app)

    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.app.integrations, "resolve_key", broken)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="aiosqlite")  # statements, not requests
    caplog.clear()
    targets = encodings(tenant.integration_key)[:9]
    for target in targets:
        got = await exchange(server.http_url, request_bytes("POST", target, body=b'{"title": "x"}'))
        assert got.status == 500
        assert got.json()["message"] == "internal error"
    assert_never_logged(caplog, tenant.integration_key)
    errors = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("unexpected error handling")
    ]
    assert errors == ["unexpected error handling POST /api/webhooks/ingest"] * len(targets)


async def test_grpc_never_logs_metadata_values(
    server: RunningServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant: Tenant = await bootstrap(server.app)

    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="aiosqlite")  # statements, not requests
    caplog.clear()
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        incidents = incident_service_pb2_grpc.IncidentServiceStub(channel)
        request = ingest_service_pb2.IngestAlertRequest(alert=alert_pb2.AlertEvent(title="x"))
        await ingest.IngestAlert(request, metadata=[("x-integration-key", tenant.integration_key)])
        with pytest.raises(grpc.aio.AioRpcError):  # a key that is almost right
            await ingest.IngestAlert(request, metadata=[("x-integration-key", tenant.integration_key[:-1])])
        with pytest.raises(grpc.aio.AioRpcError):
            await incidents.ListIncidents(
                incident_service_pb2.ListIncidentsRequest(), metadata=[("authorization", tenant.api_token)]
            )
        monkeypatch.setattr(server.app.pipeline, "ingest_events", broken)
        monkeypatch.setattr(server.app.incidents, "list_incidents", broken)
        with pytest.raises(grpc.aio.AioRpcError) as internal:
            await ingest.IngestAlert(request, metadata=[("x-integration-key", tenant.integration_key)])
        assert internal.value.code() == grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.aio.AioRpcError) as listed:
            await incidents.ListIncidents(incident_service_pb2.ListIncidentsRequest(), metadata=tenant.auth)
        assert listed.value.code() == grpc.StatusCode.INTERNAL
    assert_never_logged(caplog, tenant.integration_key, tenant.api_token)
    text = logged(caplog)
    assert "unexpected error in gRPC handler /oncall.v1.IngestService/IngestAlert" in text
    assert "unexpected error in gRPC handler /oncall.v1.IncidentService/ListIncidents" in text
