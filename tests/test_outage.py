"""The database or Redis down is 503 + Retry-After / UNAVAILABLE on every face and path, the
integration-key look-up included, and service comes back with them.

PostgreSQL and Redis are made really unreachable: the server reaches them through a TCP proxy
the test stops (listener closed, every connection reset), so the driver sees what it sees when
the database host goes away. SQLite's file is made unopenable (its path turned into a directory
once the pool's connections are closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import grpc
import pytest
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from oncall_server.api.v1 import (
    alert_pb2,
    incident_service_pb2,
    incident_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
)
from oncall_server.storage import migrate
from oncall_server.storage.engine import create_engine
from oncall_server.testing import (
    RunningServer,
    Tenant,
    bootstrap,
    empty_all_tables,
    running_server,
    server_settings,
)

DEFEND_KEY = "defend-outage-key"


class Proxy:
    """A TCP proxy on 127.0.0.1 to a TCP address or a unix socket, stopped and started by the test."""

    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            if isinstance(self.target, str):
                upstream_reader, upstream_writer = await asyncio.open_unix_connection(self.target)
            else:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, upstream_writer}
        await asyncio.gather(
            self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer)
        )
        self._writers -= {client_writer, upstream_writer}

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Unreachable from now on: new connections are refused, open ones are reset."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            transport = writer.transport
            if isinstance(transport, asyncio.Transport):
                transport.abort()
        self._writers.clear()
        self._server = None


@contextlib.asynccontextmanager
async def proxied_redis(redis_url: str) -> AsyncIterator[tuple[Proxy, str]]:
    parts = urlsplit(redis_url)
    target: tuple[str, int] | str = (
        parts.path if parts.scheme == "unix" else (parts.hostname or "", parts.port or 6379)
    )
    proxy = await Proxy(target).start()
    try:
        yield proxy, f"redis://127.0.0.1:{proxy.port}/0"
    finally:
        with contextlib.suppress(AssertionError):
            await proxy.stop()


class Outage:
    """Makes the server's database unreachable and reachable again."""

    def __init__(self, down: Callable[[], Awaitable[object]], up: Callable[[], Awaitable[object]]) -> None:
        self.down, self.up = down, up


@pytest.fixture(params=["postgresql", "sqlite"])
async def database(
    request: pytest.FixtureRequest, tmp_path: Path, backend_urls: dict[str, str]
) -> AsyncIterator[tuple[str, Callable[[RunningServer], Outage]]]:
    """(database URL for the server, how to cut it off once the server runs)."""
    if request.param == "postgresql":
        if "postgresql" not in backend_urls:
            pytest.skip("ONCALL_TEST_DATABASE_URL is not set")
        real = make_url(backend_urls["postgresql"])
        await empty_all_tables(backend_urls["postgresql"])
        proxy = await Proxy((real.host or "127.0.0.1", real.port or 5432)).start()
        url = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        yield url, lambda _server: Outage(proxy.stop, proxy.start)
        with contextlib.suppress(AssertionError):
            await proxy.stop()
        return
    path = tmp_path / "db" / "oncall.db"
    path.parent.mkdir()
    url = f"sqlite+aiosqlite:///{path}"
    engine = create_engine(url)
    await migrate.upgrade(engine)
    await engine.dispose()

    def cut(server: RunningServer) -> Outage:
        moved = path.with_name("moved.db")

        async def down() -> None:
            await server.app.engine.dispose()  # pooled connections would keep the old file open
            os.rename(path, moved)
            path.mkdir()  # "unable to open database file"

        async def up() -> None:
            path.rmdir()
            os.rename(moved, path)

        return Outage(down, up)

    yield url, cut


async def http(method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


async def grpc_code(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def every_face(server: RunningServer, tenant: Tenant, incident_id: str) -> dict[str, object]:
    """What each face and path answers now: HTTP statuses with Retry-After, gRPC codes."""
    base = server.http_url
    answers: dict[str, object] = {}
    for name, method, path, kwargs in [
        (
            "webhook",
            "POST",
            f"/api/webhooks/ingest?key={tenant.integration_key}",
            {"json": {"title": "down?"}},
        ),
        (
            "webhook-header-key",
            "POST",
            "/api/webhooks/ingest",
            {"json": {"title": "down?"}, "headers": {"X-Integration-Key": tenant.integration_key}},
        ),
        (
            "defend",
            "POST",
            "/api/internal/escalations/create",
            {
                "json": {
                    "title": "t",
                    "severity": "critical",
                    "source_ref": "d-1",
                    "tenant_id": tenant.tenant_id,
                },
                "headers": {"X-Integration-Key": DEFEND_KEY},
            },
        ),
        (
            "update-integration",
            "PUT",
            f"/api/integrations/{tenant.integration_id}",
            {"json": {"name": "renamed"}, "headers": {"Authorization": f"Bearer {tenant.api_token}"}},
        ),
    ]:
        status, headers, body = await http(method, base + path, **kwargs)
        answers[name] = (status, headers.get("Retry-After"), body.get("error"))
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        incidents = incident_service_pb2_grpc.IncidentServiceStub(channel)
        alert = alert_pb2.AlertEvent(title="down?")

        async def stream() -> AsyncIterator[ingest_service_pb2.IngestAlertsRequest]:
            yield ingest_service_pb2.IngestAlertsRequest(alerts=[alert])

        metadata = [("x-integration-key", tenant.integration_key)]
        answers["grpc-ingest-alert"] = await grpc_code(
            ingest.IngestAlert(
                ingest_service_pb2.IngestAlertRequest(alert=alert), metadata=metadata, timeout=30
            )
        )
        answers["grpc-ingest-alerts"] = await grpc_code(
            ingest.IngestAlerts(stream(), metadata=metadata, timeout=30)
        )
        answers["grpc-get-incident"] = await grpc_code(
            incidents.GetIncident(
                incident_service_pb2.GetIncidentRequest(incident_id=incident_id),
                metadata=tenant.auth,
                timeout=30,
            )
        )
        answers["grpc-acknowledge"] = await grpc_code(
            incidents.AcknowledgeIncident(
                incident_service_pb2.AcknowledgeIncidentRequest(incident_id=incident_id),
                metadata=tenant.auth,
                timeout=30,
            )
        )
    return answers


async def test_database_down_is_503_and_unavailable_on_every_face_then_service_resumes(
    database: tuple[str, Callable[[RunningServer], Outage]], tmp_path: Path, redis_url: str, redis: Redis
) -> None:
    url, cut = database
    settings = server_settings(tmp_path, url, redis_url, defend_service_key=DEFEND_KEY)
    async with running_server(settings) as server:
        tenant = await bootstrap(server.app)
        await server.app.integrations.create(tenant.tenant_id, tenant.service_id, "Defend", "defend", None)
        status, _, created = await http(
            "POST",
            f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}",
            json={"title": "before"},
        )
        assert status == 202
        outage = cut(server)
        await outage.down()
        server.app.integrations.forget_cached()  # the 5 s key cache has expired: the look-up goes to SQL
        try:
            answers = await every_face(server, tenant, created["incident_id"])
            unavailable = (503, "5", "Unavailable")
            assert answers == {
                "webhook": unavailable,
                "webhook-header-key": unavailable,
                "defend": unavailable,
                "update-integration": unavailable,
                "grpc-ingest-alert": grpc.StatusCode.UNAVAILABLE,
                "grpc-ingest-alerts": grpc.StatusCode.UNAVAILABLE,
                "grpc-get-incident": grpc.StatusCode.UNAVAILABLE,
                "grpc-acknowledge": grpc.StatusCode.UNAVAILABLE,
            }
            health, _, _ = await http("GET", f"{server.http_url}/healthz")
            assert health == 503
        finally:
            await outage.up()
        # Back: the same calls succeed, and the pool's dead connections were replaced.
        status, _, again = await http(
            "POST",
            f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}",
            json={"title": "after"},
        )
        assert status == 202, again
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            got = await incident_service_pb2_grpc.IncidentServiceStub(channel).GetIncident(
                incident_service_pb2.GetIncidentRequest(incident_id=created["incident_id"]),
                metadata=tenant.auth,
            )
            assert got.incident.id == created["incident_id"]


async def test_redis_down_is_503_and_unavailable_then_service_resumes(
    database_url: str, tmp_path: Path, redis_url: str, redis: Redis
) -> None:
    async with proxied_redis(redis_url) as (proxy, proxied_url):
        settings = server_settings(
            tmp_path, database_url, proxied_url, defend_service_key=DEFEND_KEY, redis_timeout_seconds=2.0
        )
        async with running_server(settings) as server:
            tenant = await bootstrap(server.app)
            await server.app.integrations.create(
                tenant.tenant_id, tenant.service_id, "Defend", "defend", None
            )
            status, _, created = await http(
                "POST",
                f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}",
                json={"title": "before"},
            )
            assert status == 202
            await proxy.stop()
            try:
                answers = await every_face(server, tenant, created["incident_id"])
                unavailable = (503, "5", "Unavailable")
                # Paths that need Redis answer UNAVAILABLE; reads of SQL alone may still succeed.
                assert answers["webhook"] == unavailable
                assert answers["webhook-header-key"] == unavailable
                assert answers["defend"] == unavailable
                assert answers["grpc-ingest-alert"] == grpc.StatusCode.UNAVAILABLE
                assert answers["grpc-ingest-alerts"] == grpc.StatusCode.UNAVAILABLE
                assert answers["grpc-get-incident"] == grpc.StatusCode.OK
                assert answers["grpc-acknowledge"] in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
                assert all(
                    a != grpc.StatusCode.INTERNAL and (not isinstance(a, tuple) or a[0] != 500)
                    for a in answers.values()
                )
            finally:
                await proxy.start()
            status, _, again = await http(
                "POST",
                f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}",
                json={"title": "after"},
            )
            assert status == 202, again
