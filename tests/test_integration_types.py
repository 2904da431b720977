"""An integration's type must be an adapter a loaded plugin provides.

Creation refuses unknown types (gRPC and CLI: INVALID_ARGUMENT naming ``integration.type`` and
listing the loaded types). Alerts for an integration whose plugin was removed or blocked since are
refused with 422 / FAILED_PRECONDITION naming the integration and its type, logged once per
integration and counted in ``oncall_ingest_refused_no_adapter_total``: never a 5xx, never dropped
silently.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from oncall_server.api.v1 import (
    alert_pb2,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    integration_pb2,
    integration_service_pb2,
    integration_service_pb2_grpc,
)
from oncall_server.plugins import BLOCK_ENV, Plugins
from oncall_server.testing import RunningServer, bootstrap, running_server, server_settings
from tests.helpers import CLI, count_rows, post_json

METRIC = "oncall_ingest_refused_no_adapter_total"


def bad_request(error: grpc.aio.AioRpcError) -> tuple[str, str]:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    status = rpc_status.from_call(error)
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return bad.field_violations[0].field, bad.field_violations[0].description


async def test_create_integration_refuses_a_type_no_plugin_provides(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = integration_service_pb2_grpc.IntegrationServiceStub(channel)

        def request(type_: str) -> integration_service_pb2.CreateIntegrationRequest:
            return integration_service_pb2.CreateIntegrationRequest(
                integration=integration_pb2.Integration(
                    service_id=tenant.service_id, name="Zabbix", type=type_
                )
            )

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateIntegration(request("nosuchadapter"), metadata=tenant.auth)
        field, why = bad_request(refused.value)
        assert field == "integration.type"
        assert "'nosuchadapter'" in why
        for offered in ("webhook", "defend", "rmm"):
            assert offered in why
        created = await stub.CreateIntegration(request("rmm"), metadata=tenant.auth)
        listed = await stub.ListIntegrations(
            integration_service_pb2.ListIntegrationsRequest(), metadata=tenant.auth
        )
    assert created.integration.type == "rmm" and created.integration_key.startswith("oci_")
    assert sorted(i.name for i in listed.integrations) == ["Test Integration", "Zabbix"]


async def cli(*args: str, database_url: str, data_dir: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        "--database-url",
        database_url,
        "--data-dir",
        str(data_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_integration_create_refuses_an_unknown_type(tmp_path: Path, database_url: str) -> None:
    code, out, err = await cli("bootstrap", "--json", database_url=database_url, data_dir=tmp_path)
    assert code == 0, err
    creds = json.loads(out)
    code, out, err = await cli(
        "integration", "create", "Zabbix", "--type", "nosuchadapter",
        "--tenant", creds["tenant_id"], "--service", creds["service_id"],
        database_url=database_url, data_dir=tmp_path,
    )  # fmt: skip
    assert code == 2 and out == ""  # no key printed
    assert "integration.type" in err and "'nosuchadapter'" in err and "webhook" in err and "rmm" in err
    code, out, err = await cli(
        "integration", "create", "RMM", "--type", "rmm", "--json",
        "--tenant", creds["tenant_id"], "--service", creds["service_id"],
        database_url=database_url, data_dir=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["integration_key"].startswith("oci_")


async def refusals(server: RunningServer) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == METRIC and sample.labels == {"integration_type": "rmm"}:
                return float(sample.value)
    return 0.0


async def test_alerts_for_an_integration_whose_plugin_was_blocked_since_are_refused_visibly(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = server_settings(tmp_path, database_url, redis_url)
    async with running_server(settings) as before:
        tenant = await bootstrap(before.app, integration_type="rmm")
        status, body = await post_json(
            f"{before.http_url}/api/webhooks/ingest?key={tenant.integration_key}",
            {"tenant_id": tenant.tenant_id, "title": "Disk full", "severity": "high", "alert_id": "a-1"},
        )
        assert status == 202, body
        stored = await count_rows(before.app)

    # The operator blocks the plugin that provides ``rmm`` (oncall_bus_sources) and restarts.
    monkeypatch.setenv(BLOCK_ENV, "oncall_bus_sources")
    settings = server_settings(tmp_path, database_url, redis_url)  # read again, as a restart does
    assert "rmm" not in Plugins(settings=settings).load().adapters
    async with running_server(settings) as after:
        counted = await refusals(after)
        url = f"{after.http_url}/api/webhooks/ingest?key={tenant.integration_key}"
        with caplog.at_level(logging.WARNING, logger="oncall_server.ingest.integrations"):
            answers: list[tuple[int, Any]] = [
                await post_json(url, {"device": "srv-1", "alert": "Disk full"}) for _ in range(2)
            ]
            async with grpc.aio.insecure_channel(after.grpc_target) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await ingest_service_pb2_grpc.IngestServiceStub(channel).IngestAlert(
                        ingest_service_pb2.IngestAlertRequest(
                            integration_key=tenant.integration_key,
                            alert=alert_pb2.AlertEvent(title="Disk full", severity=alert_pb2.SEVERITY_HIGH),
                        )
                    )
        assert await count_rows(after.app) == stored  # nothing stored, nothing half-stored
        assert await refusals(after) == counted + 3

    for status, body in answers:
        assert status == 422, body
        assert body["error"] == "NoAdapter"
        assert body["message"].startswith(
            "integration 'Test Integration' has type 'rmm', which no loaded plugin provides"
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "has type 'rmm', which no loaded plugin provides" in (refused.value.details() or "")
    warnings = [r for r in caplog.records if "no loaded plugin provides" in r.getMessage()]
    assert len(warnings) == 1  # once per integration, not per request
    assert warnings[0].levelno == logging.WARNING
    assert tenant.integration_id in warnings[0].getMessage() and "'rmm'" in warnings[0].getMessage()
