"""A real Prometheus Alertmanager (Debian's ``prometheus-alertmanager``) sends to an ``alertmanager``
integration: an alert posted to it fires one incident and one page, and its end resolves the
incident, with nothing more paged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from oncall_adapters.alertmanager import label_fingerprint
from sqlalchemy import select

from oncall_server.severity import Severity
from oncall_server.storage.models import Alert, Incident
from oncall_server.testing import (
    CaptureChannel,
    RunningServer,
    Tenant,
    add_policy,
    add_user,
    bootstrap,
    settle,
    wait_for,
)
from tests.helpers import webhook_url

ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")

pytestmark = pytest.mark.skipif(
    not ALERTMANAGER.exists(),
    reason="needs Debian's prometheus-alertmanager (apt-get install -y prometheus-alertmanager)",
)

CONFIG = """\
route:
  receiver: oncall
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: oncall
    webhook_configs:
      - url: {url}
        send_resolved: true
"""

LABELS = {"alertname": "DiskAlmostFull", "instance": "fs-01:9100", "severity": "critical"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def configure(directory: Path, receiver_url: str) -> tuple[Path, Any]:
    """Alertmanager's config file in ``directory``, and its log file, opened."""
    directory.mkdir()
    config = directory / "alertmanager.yml"
    config.write_text(CONFIG.format(url=json.dumps(receiver_url)))
    return config, (directory / "alertmanager.log").open("wb")


def log_of(directory: Path) -> str:
    return (directory / "alertmanager.log").read_text()


@contextlib.asynccontextmanager
async def alertmanager(directory: Path, receiver_url: str) -> AsyncIterator[str]:
    """A started Alertmanager (temp storage, clustering off) sending to ``receiver_url``; its API URL."""
    config, log = configure(directory, receiver_url)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        str(ALERTMANAGER),
        f"--config.file={config}",
        f"--storage.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=debug",
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                if process.returncode is not None:
                    raise AssertionError(
                        f"Alertmanager exited: {(directory / 'alertmanager.log').read_text()}"
                    )
                try:
                    async with http.get(f"{url}/-/ready") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(ready, timeout=10)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def post_alert(http: aiohttp.ClientSession, api: str, **times: str) -> None:
    alert: dict[str, Any] = {
        "labels": LABELS,
        "annotations": {"summary": "Disk almost full on fs-01", "description": "3% of / left"},
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=disk",
        **times,
    }
    async with http.post(f"{api}/api/v2/alerts", json=[alert]) as response:
        assert response.status == 200, await response.text()


async def incidents_of(server: RunningServer, tenant: Tenant) -> list[Incident]:
    async with server.app.sessions() as session:
        rows = await session.scalars(select(Incident).where(Incident.tenant_id == tenant.tenant_id))
        return list(rows.all())


async def test_a_real_alertmanager_fires_one_incident_one_page_and_resolves_it(
    paging: tuple[RunningServer, CaptureChannel], tmp_path: Path
) -> None:
    server, channel = paging
    tenant = await bootstrap(server.app, integration_type="alertmanager")
    user = await add_user(server.app, tenant.tenant_id, "Ana", contacts=[("capture", "ana", "")])
    await add_policy(server.app, tenant.tenant_id, [(0, [("user", user)])], service_id=tenant.service_id)

    async with (
        alertmanager(tmp_path / "am", webhook_url(server, tenant)) as api,
        aiohttp.ClientSession() as http,
    ):
        started = datetime.now(UTC).isoformat()
        await post_alert(http, api, startsAt=started)

        async def opened() -> list[Incident]:
            return await incidents_of(server, tenant)

        [incident] = await wait_for(opened, timeout=10)
        await settle(server.app)
        assert len(channel.to("ana")) == 1
        async with http.get(f"{api}/api/v2/alerts") as response:
            [shown] = await response.json()
        fingerprint = shown["fingerprint"]

        await post_alert(http, api, startsAt=started, endsAt=datetime.now(UTC).isoformat())

        async def resolved() -> bool:
            return [i.status for i in await incidents_of(server, tenant)] == ["resolved"]

        await wait_for(resolved, timeout=10)
        await settle(server.app)

    [incident] = await incidents_of(server, tenant)
    assert incident.title == "Disk almost full on fs-01" and incident.severity == Severity.CRITICAL
    assert incident.resolved_by == "source:Test Integration"
    assert len(channel.to("ana")) == 1  # the firing's page; the recovery pages nobody
    async with server.app.sessions() as session:
        [alert] = (await session.scalars(select(Alert).where(Alert.incident_id == incident.id))).all()
    assert alert.dedup_key == f"alertmanager:{fingerprint}" and alert.state == "resolved"
    assert label_fingerprint(LABELS) == fingerprint  # the fallback hash is Alertmanager's own
