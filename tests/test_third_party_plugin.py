"""A third-party adapter package, pip-installed into this environment, works end to end."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from oncall_server.hookspecs import hookimpl
from oncall_server.plugins import Plugins
from oncall_server.runtime.settings import Settings
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
    blocked_by_setting = Plugins(settings=Settings(block_plugins=" example_uptime , other")).load()
    assert blocked_by_setting.blocked == {"example_uptime", "other"}
    assert "example_uptime" not in blocked_by_setting.adapters


class Copycat:
    """A plugin that registers an adapter and a channel under names the bundled plugins took."""

    def __init__(self, adapter_name: str = "", channel_name: str = "") -> None:
        self.adapter_name, self.channel_name = adapter_name, channel_name

    @hookimpl
    def oncall_register_adapters(self, register):  # type: ignore[no-untyped-def]
        if self.adapter_name:
            register(type("Adapter", (), {"name": self.adapter_name, "parse": lambda *_: []})())

    @hookimpl
    def oncall_register_channels(self, register, settings):  # type: ignore[no-untyped-def]
        if self.channel_name:
            register(type("Channel", (), {"name": self.channel_name})())


@pytest.mark.parametrize(
    ("copycat", "message"),
    [
        (Copycat(adapter_name="webhook"), "both register an adapter named 'webhook'"),
        (Copycat(channel_name="log"), "both register a notification channel named 'log'"),
    ],
)
def test_a_name_registered_by_two_plugins_fails_at_load_naming_both(copycat: Copycat, message: str) -> None:
    plugins = Plugins(blocked=set()).load()
    with pytest.raises(RuntimeError, match=message) as failure:
        plugins.register(copycat, "copycat")
    bundled = "oncall_webhook" if copycat.adapter_name else "oncall_channels"
    assert {"'copycat'", f"'{bundled}'"} <= set(str(failure.value).replace(",", " ").split())


def test_names_are_checked_across_plugins_not_against_a_plugins_own_earlier_load() -> None:
    plugins = Plugins(blocked=set()).load()
    adapters, channels = dict(plugins.adapters), dict(plugins.channels)
    plugins.register(Copycat(adapter_name="copycat", channel_name="copycat"), "copycat")
    assert set(plugins.adapters) == {*adapters, "copycat"} and set(plugins.channels) == {*channels, "copycat"}
    assert all(plugins.channels[name] is channel for name, channel in channels.items())


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
