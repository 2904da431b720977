"""A third-party adapter package, pip-installed into this environment, works end to end."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from oncall_server.plugins import Plugins
from oncall_server.testing import RunningServer, adapter_samples, assert_adapter_contract, bootstrap
from tests.helpers import post_json

PACKAGE = Path(__file__).resolve().parent.parent / "plugins" / "oncall-example-adapter"


@pytest.fixture(scope="module")
def installed_plugin() -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", str(PACKAGE)],
        check=True,
    )
    importlib.invalidate_caches()


def test_the_plugin_is_discovered_listed_and_blockable(installed_plugin: None) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "oncall_server.runtime.cli", "plugins"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "example_uptime" in listed and "oncall-example-adapter 1.0.0" in listed
    assert "example_uptime" not in Plugins(blocked={"example_uptime"}).load().adapters


@pytest.mark.parametrize(
    ("adapter_name", "sample"), adapter_samples(PACKAGE / "oncall_example_adapter" / "samples")
)
def test_the_plugin_meets_the_adapter_contract(
    installed_plugin: None, adapter_name: str, sample: Path
) -> None:
    assert_adapter_contract(Plugins().load().adapter(adapter_name), sample)


async def test_an_alert_through_the_plugin_opens_an_incident(
    installed_plugin: None, server: RunningServer
) -> None:
    server.app.plugins.load()
    tenant = await bootstrap(server.app, integration_type="example_uptime")
    url = f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}"
    status, down = await post_json(url, {"check": {"id": "chk-1", "name": "Portal"}, "state": "down"})
    assert status == 202 and down["outcome"] == "created"
    incident = await server.app.incidents.get(tenant.tenant_id, down["incident_id"])
    assert (incident.title, incident.source, incident.severity) == ("Portal is down", "example_uptime", 1)
    status, bad = await post_json(url, {"state": "down"})
    assert status == 400 and bad["fields"][0]["field"] == "check.id"
