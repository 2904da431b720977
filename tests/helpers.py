"""Small helpers shared by the test modules."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from sqlalchemy import func, select

from oncall_server.api.v1 import catalog_service_pb2, catalog_service_pb2_grpc, service_pb2
from oncall_server.faces.grpc.convert import timestamp
from oncall_server.runtime.app import App
from oncall_server.storage.models import Alert, Incident
from oncall_server.testing import RunningServer, Tenant


async def post_json(
    url: str, body: Any = None, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        return await post_body(http, url, data if data is not None else json.dumps(body).encode(), headers)


async def post_body(
    http: aiohttp.ClientSession, url: str, data: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """A JSON body as given (bytes, so tests can send what no encoder would) on a shared session."""
    async with http.post(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    ) as r:
        return r.status, await r.json(content_type=None)


def webhook_url(server: RunningServer, tenant: Tenant) -> str:
    return f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}"


async def alerts_of(app: App, service_id: str) -> list[Alert]:
    async with app.sessions() as session:
        return list((await session.scalars(select(Alert).where(Alert.service_id == service_id))).all())


async def count_rows(app: App) -> tuple[int, int]:
    """(alerts, incidents) stored."""
    async with app.sessions() as session:
        alerts = await session.scalar(select(func.count()).select_from(Alert))
        incidents = await session.scalar(select(func.count()).select_from(Incident))
    return int(alerts or 0), int(incidents or 0)


class WebhookReceiver:
    """A real HTTP receiver on loopback for the webhook channel; ``status`` sets its answer."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], Any]] = []
        self.status = 204
        self.url = ""
        self._runner: Any = None

    async def _receive(self, request: Any) -> Any:
        from aiohttp import web

        if self.status >= 300:
            return web.Response(status=self.status)
        self.received.append((dict(request.headers), await request.json()))
        return web.Response(status=self.status)

    async def start(self) -> WebhookReceiver:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/hook", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()

    @property
    def bodies(self) -> list[Any]:
        return [body for _, body in self.received]


CLI = [sys.executable, "-m", "oncall_server.runtime.cli"]


async def start_serve(data_dir: Path, **settings: str) -> asyncio.subprocess.Process:
    """``oncall-server serve`` in its own process on free loopback ports, with none of this
    process's ``ONCALL_*`` variables and the given ones; its log on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONCALL_")} | settings
    process = await asyncio.create_subprocess_exec(
        *CLI, "serve", "--data-dir", str(data_dir), "--grpc-listen", "127.0.0.1:0",
        "--http-listen", "127.0.0.1:0", stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert process.stderr is not None
    return process


async def run_cli(*args: str, data_dir: Path) -> dict[str, str]:
    """``oncall-server <args> --data-dir D --json`` in a process; its JSON output."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        "--data-dir",
        str(data_dir),
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result: dict[str, str] = json.loads(out)
    return result


async def wait_for_line(
    stream: asyncio.StreamReader, pattern: str, seen: list[str], timeout: float = 30
) -> re.Match[str]:
    """Read a server's log until a line matches; every line read is appended to ``seen``."""

    async def scan() -> re.Match[str]:
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError("server exited early:\n" + "".join(seen))
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    return await asyncio.wait_for(scan(), timeout)


async def create_window(
    server: RunningServer, tenant: Tenant, start: Any, *, hours: float = 1.0, reason: str = "patching"
) -> Any:
    """A maintenance window of the tenant's service through the gRPC API; returns the stored one."""
    from datetime import timedelta

    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        created = await catalog_service_pb2_grpc.CatalogServiceStub(channel).CreateMaintenanceWindow(
            catalog_service_pb2.CreateMaintenanceWindowRequest(
                maintenance_window=service_pb2.MaintenanceWindow(
                    service_id=tenant.service_id,
                    start_time=timestamp(start),
                    end_time=timestamp(start + timedelta(hours=hours)),
                    reason=reason,
                )
            ),
            metadata=tenant.auth,
        )
    return created.maintenance_window
