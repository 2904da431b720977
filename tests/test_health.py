"""gRPC health, readiness and reflection, with real clients against real servers on loopback.

* ``grpc.health.v1.Health``: ``Check`` and ``Watch`` through grpcio-health-checking's client stubs
  follow readiness (SERVING, NOT_SERVING while Redis is unreachable, SERVING again); ``List``
  answers every status and logs nothing at ERROR.
* ``GET /readyz``: 200 when ready; 503 naming ``redis``, ``database`` or ``migrations``; each check
  bounded by its timeout. ``/healthz`` is left as it was.
* Reflection: v1alpha through grpcio-reflection's ``ProtoReflectionDescriptorDatabase``, v1 through
  its generated-message protocol by hand and through the buf CLI (``buf curl``, both reflection
  protocols) when buf is installed: ``ONCALL_TEST_BUF`` naming it (``.ci/run`` does), or on ``PATH``.

Redis is made unreachable as in ``test_outage.py``: the server reaches it through a TCP proxy
the test stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from redis.asyncio import Redis

from oncall_server.faces.grpc.registry import SERVICE_NAMES
from oncall_server.faces.grpc.standard import V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME
from oncall_server.runtime import readiness
from oncall_server.runtime.app import App
from oncall_server.runtime.readiness import Readiness
from oncall_server.runtime.server import GatewayRole, GrpcRole, Server
from oncall_server.storage import migrate
from oncall_server.storage.engine import create_engine
from oncall_server.testing import RunningServer, running_server, server_settings
from tests.test_outage import Proxy, proxied_redis

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
READY = {"status": "ready", "checks": {"database": "ok", "redis": "ok", "migrations": "ok"}}


@pytest.fixture
async def proxied(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[RunningServer, Proxy]]:
    """A server whose Redis is behind a proxy the test stops; readiness checked every 0.2 s."""
    monkeypatch.setattr(readiness, "CHECK_INTERVAL_SECONDS", 0.2)
    monkeypatch.setattr(readiness, "CHECK_TIMEOUT_SECONDS", 1.0)
    async with proxied_redis(redis_url) as (proxy, url):
        settings = server_settings(tmp_path, database_url, url, roles=("grpc", "gateway"))
        async with running_server(settings) as server:
            yield server, proxy


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def check(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(reply.status)


async def test_watch_follows_readiness_as_redis_goes_and_comes_back(
    proxied: tuple[RunningServer, Proxy],
) -> None:
    server, proxy = proxied
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        overall = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        incidents = stub.Watch(health_pb2.HealthCheckRequest(service="oncall.v1.IncidentService"))
        try:
            assert (await asyncio.wait_for(overall.read(), 5)).status == SERVING
            assert (await asyncio.wait_for(incidents.read(), 5)).status == SERVING
            for name in ["", *SERVICE_NAMES]:
                assert await check(channel, name) == SERVING, name
            assert await get_json(f"{server.http_url}/readyz") == (200, READY)

            await proxy.stop()  # Redis unreachable: the periodic check notices
            assert (await asyncio.wait_for(overall.read(), 10)).status == NOT_SERVING
            assert (await asyncio.wait_for(incidents.read(), 10)).status == NOT_SERVING
            assert await check(channel, "oncall.v1.IngestService") == NOT_SERVING
            status, body = await get_json(f"{server.http_url}/readyz")
            assert status == 503
            assert body["status"] == "not ready"
            assert body["failing"] == ["redis"]
            assert body["checks"]["redis"].startswith("unreachable")
            assert body["checks"]["database"] == body["checks"]["migrations"] == "ok"

            await proxy.start()  # back on the same port: the client reconnects
            assert (await asyncio.wait_for(overall.read(), 10)).status == SERVING
            assert (await asyncio.wait_for(incidents.read(), 10)).status == SERVING
            assert await get_json(f"{server.http_url}/readyz") == (200, READY)
        finally:
            overall.cancel()
            incidents.cancel()


async def test_readyz_moves_the_grpc_status_on_demand(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No periodic check comes in between (an hour apart): /readyz's own check moves the status."""
    monkeypatch.setattr(readiness, "CHECK_INTERVAL_SECONDS", 3600.0)
    async with proxied_redis(redis_url) as (proxy, url):
        settings = server_settings(tmp_path, database_url, url, roles=("grpc", "gateway"))
        async with (
            running_server(settings) as server,
            grpc.aio.insecure_channel(server.grpc_target) as channel,
        ):
            assert await check(channel) == SERVING
            await proxy.stop()
            assert await check(channel) == SERVING  # nobody checked yet
            status, body = await get_json(f"{server.http_url}/readyz")
            assert (status, body["failing"]) == (503, ["redis"])
            assert await check(channel) == NOT_SERVING
            await proxy.start()
            assert await get_json(f"{server.http_url}/readyz") == (200, READY)
            assert await check(channel) == SERVING


async def test_each_check_is_bounded_by_its_timeout(server: RunningServer) -> None:
    """A Redis that accepts connections and never answers fails the check after its timeout."""
    silent = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)  # accepts, never writes
    port = silent.sockets[0].getsockname()[1]
    grpc_role = server.server.role("grpc")
    assert isinstance(grpc_role, GrpcRole)
    grpc_role.readiness.timeout_seconds = 0.3  # the one /readyz uses too
    real = server.app.redis
    server.app.redis = Redis(host="127.0.0.1", port=port, socket_timeout=30, socket_connect_timeout=30)
    try:
        started = asyncio.get_running_loop().time()
        status, body = await get_json(f"{server.http_url}/readyz")
        elapsed = asyncio.get_running_loop().time() - started
        assert (status, body["failing"]) == (503, ["redis"])
        assert body["checks"]["redis"] == "timed out after 0.3 s"
        assert elapsed < 2
    finally:
        await server.app.redis.aclose()
        server.app.redis = real
        silent.close()


async def test_readyz_names_an_unreachable_database(tmp_path: Path, redis_url: str, redis: Redis) -> None:
    path = tmp_path / "db" / "oncall.db"
    path.parent.mkdir()
    settings = server_settings(tmp_path, f"sqlite+aiosqlite:///{path}", redis_url, roles=("grpc", "gateway"))
    async with running_server(settings) as server:
        assert await get_json(f"{server.http_url}/readyz") == (200, READY)
        moved = path.with_name("moved.db")
        await server.app.engine.dispose()  # pooled connections would keep the old file open
        os.rename(path, moved)
        path.mkdir()  # "unable to open database file"
        try:
            status, body = await get_json(f"{server.http_url}/readyz")
            assert (status, body["failing"]) == (503, ["database"])
            assert body["checks"]["database"].startswith("unreachable")
            assert body["checks"]["migrations"].startswith("unknown")
            assert body["checks"]["redis"] == "ok"
            async with grpc.aio.insecure_channel(server.grpc_target) as channel:
                assert await check(channel) == NOT_SERVING
        finally:
            path.rmdir()
            os.rename(moved, path)
        assert await get_json(f"{server.http_url}/readyz") == (200, READY)


async def test_readyz_names_migrations_behind_the_code(tmp_path: Path, redis_url: str, redis: Redis) -> None:
    """A database migrated to 0004 (the server started without migrating it): not ready until
    it is brought to head, with both revisions named."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    await migrate.upgrade(engine, "0004")
    await engine.dispose()
    settings = server_settings(tmp_path, url, redis_url, roles=("grpc", "gateway"))
    app = await App.open(settings, run_migrations=False)
    checker = Readiness(app)
    grpc_role, gateway_role = GrpcRole(app, None, checker), GatewayRole(app, None, checker)
    server = Server(app, [grpc_role, gateway_role])
    await server.start()
    try:
        grpc_port = grpc_role.port
        http_url = f"http://127.0.0.1:{gateway_role.port}"
        status, body = await get_json(f"{http_url}/readyz")
        head = ", ".join(sorted(checker.heads))
        assert (status, body["failing"]) == (503, ["migrations"])
        assert body["checks"] == {
            "database": "ok",
            "redis": "ok",
            "migrations": f"behind: the database is at 0004, this code's head is {head}",
        }
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            assert await check(channel) == NOT_SERVING
            await migrate.upgrade(app.engine)
            assert await get_json(f"{http_url}/readyz") == (200, READY)
            assert await check(channel) == SERVING
    finally:
        await server.stop()


async def test_list_answers_every_status_and_logs_no_error(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.List(health_pb2.HealthListRequest(), timeout=5)
        assert {name: r.status for name, r in reply.statuses.items()} == {
            name: SERVING for name in ["", *SERVICE_NAMES]
        }
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        # The standard: Watch of an unknown service answers SERVICE_UNKNOWN and keeps the stream.
        watch = stub.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"))
        try:
            first = await asyncio.wait_for(watch.read(), 5)
            assert first.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        finally:
            watch.cancel()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def _v1alpha_describe(target: str) -> tuple[list[str], list[str], list[str]]:
    """(services, IncidentService's methods, v1 ServerReflection's methods), by the v1alpha
    client grpcio-reflection ships (a blocking one: run it in a thread)."""
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        services = list(database.get_services())
        incidents = pool.FindServiceByName("oncall.v1.IncidentService")
        v1 = pool.FindServiceByName(V1_SERVICE_NAME)
        return services, [m.name for m in incidents.methods], [m.name for m in v1.methods]


async def test_reflection_v1alpha_with_grpcio_reflections_client(server: RunningServer) -> None:
    services, incident_methods, v1_methods = await asyncio.to_thread(_v1alpha_describe, server.grpc_target)
    assert {*SERVICE_NAMES, "grpc.health.v1.Health", V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME} <= set(services)
    assert {"GetIncident", "AcknowledgeIncident", "WatchIncidents"} <= set(incident_methods)
    assert v1_methods == ["ServerReflectionInfo"]


async def test_reflection_v1_with_its_own_messages(server: RunningServer) -> None:
    """The v1 service by its v1 messages (their descriptors fetched over v1alpha, the one protocol
    the Python client speaks): it lists the services and describes one."""

    def v1_messages() -> tuple[Any, Any]:
        with grpc.insecure_channel(server.grpc_target) as channel:
            pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
            request = pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
            response = pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
            return message_factory.GetMessageClass(request), message_factory.GetMessageClass(response)

    request_class, response_class = await asyncio.to_thread(v1_messages)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        info = channel.stream_stream(
            f"/{V1_SERVICE_NAME}/ServerReflectionInfo",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        requests = [
            request_class(list_services=""),
            request_class(file_containing_symbol="oncall.v1.IncidentService"),
        ]
        answers = [answer async for answer in info(iter(requests), timeout=10)]
    listed = {s.name for s in answers[0].list_services_response.service}
    assert {*SERVICE_NAMES, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME} <= listed
    assert answers[1].file_descriptor_response.file_descriptor_proto  # the serialized file(s)


def _buf() -> str:
    found = os.environ.get("ONCALL_TEST_BUF") or shutil.which("buf")
    if not found:
        pytest.skip("no buf CLI (set ONCALL_TEST_BUF, as .ci/run does, or put buf on PATH)")
    return found


async def _buf_curl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        _buf(),
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
async def test_reflection_with_buf_curl(server: RunningServer, protocol: str) -> None:
    """buf's own reflection client, told which protocol to speak (it does not fall back)."""
    base = f"http://{server.grpc_target}"
    services = (await _buf_curl("--reflect-protocol", protocol, "--list-services", base)).split()
    assert {*SERVICE_NAMES, "grpc.health.v1.Health", V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME} <= set(services)
    methods = (await _buf_curl("--reflect-protocol", protocol, "--list-methods", base)).split()
    assert "oncall.v1.IncidentService/AcknowledgeIncident" in methods
    # A call whose schema buf fetched by reflection alone.
    reply = await _buf_curl(
        "--reflect-protocol", protocol, "-d", '{"service": ""}', f"{base}/grpc.health.v1.Health/Check"
    )
    assert json.loads(reply) == {"status": "SERVING"}
