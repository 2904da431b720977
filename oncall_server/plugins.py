"""Loads plugins from the ``oncall`` entry-point group and collects what they register."""

from __future__ import annotations

import importlib.metadata
import logging
import os
from dataclasses import dataclass

import pluggy

from oncall_server import hookspecs
from oncall_server.errors import FailedPrecondition, InvalidArgument
from oncall_server.hookspecs import Adapter, Channel
from oncall_server.runtime.settings import Settings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "oncall"
#: Comma-separated plugin (entry point) names that must not be loaded.
BLOCK_ENV = "ONCALL_BLOCK_PLUGINS"


class NoAdapter(FailedPrecondition):
    """Alerts for an integration whose type no loaded plugin provides (removed or blocked since).

    Not the sender's fault and not a server failure: ``FAILED_PRECONDITION`` / HTTP 422, so senders
    that retry 5xx do not retry it forever and the error says what the operator has to fix.
    """

    http_status = 422


@dataclass(frozen=True, slots=True)
class PluginInfo:
    name: str
    distribution: str
    version: str


class Plugins:
    """The plugin manager and the registries filled through its hooks."""

    def __init__(self, blocked: set[str] | None = None, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.manager.add_hookspecs(hookspecs)
        if blocked is None:
            blocked = {name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()}
        self.blocked = blocked
        self.adapters: dict[str, Adapter] = {}
        self.channels: dict[str, Channel] = {}
        self.loaded: list[PluginInfo] = []

    def load(self) -> Plugins:
        for name in self.blocked:
            self.manager.set_blocked(name)
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry_point.name in self.blocked or self.manager.is_blocked(entry_point.name):
                log.info("plugin %s is blocked by %s", entry_point.name, BLOCK_ENV)
                continue
            if self.manager.get_plugin(entry_point.name) is not None:
                continue
            self.manager.register(entry_point.load(), name=entry_point.name)
            dist = entry_point.dist
            self.loaded.append(
                PluginInfo(entry_point.name, dist.name if dist else "?", dist.version if dist else "?")
            )
        self.manager.check_pending()
        self._collect()
        return self

    def register(self, plugin: object, name: str) -> None:
        """Register an in-process plugin object (tests, embedding)."""
        self.manager.register(plugin, name=name)
        self.manager.check_pending()
        self._collect()

    def _collect(self) -> None:
        self.adapters = {}

        def register(adapter: Adapter) -> None:
            if adapter.name in self.adapters and self.adapters[adapter.name] is not adapter:
                raise RuntimeError(f"two plugins register an adapter named {adapter.name!r}")
            self.adapters[adapter.name] = adapter

        self.manager.hook.oncall_register_adapters(register=register)

        channels: dict[str, Channel] = {}

        def register_channel(channel: Channel) -> None:
            if channel.name in channels and channels[channel.name] is not channel:
                raise RuntimeError(f"two plugins register a notification channel named {channel.name!r}")
            previous = self.channels.get(channel.name)
            # Re-collecting (a plugin registered later) keeps live channels and their connections.
            channels[channel.name] = previous if type(previous) is type(channel) else channel

        self.manager.hook.oncall_register_channels(register=register_channel, settings=self.settings)
        self.channels = channels

    def adapter(self, integration_type: str) -> Adapter:
        """The adapter for a stored integration's type; :class:`NoAdapter` when none is loaded."""
        try:
            return self.adapters[integration_type]
        except KeyError:
            raise NoAdapter(
                f"integration type {integration_type!r} is provided by no loaded plugin "
                f"(loaded: {self.adapter_types_text()})"
            ) from None

    def adapter_types_text(self) -> str:
        """The adapter types the loaded plugins offer, for messages: ``"defend, rmm, webhook"``."""
        return ", ".join(sorted(self.adapters)) or "none"

    def check_adapter_type(self, integration_type: str, field: str = "integration.type") -> None:
        """INVALID_ARGUMENT naming ``field`` unless a loaded plugin provides ``integration_type``."""
        if integration_type not in self.adapters:
            raise InvalidArgument.field(
                field,
                f"no loaded plugin provides an adapter named {integration_type!r}; "
                f"choose one of: {self.adapter_types_text()}",
            )

    def channel(self, contact_type: str) -> Channel:
        try:
            return self.channels[contact_type]
        except KeyError:
            raise InvalidArgument.field(
                "contact_method.type", f"no notification channel named {contact_type!r} is installed"
            ) from None

    async def close(self) -> None:
        """Close every channel (their HTTP sessions and SMTP connections)."""
        for channel in self.channels.values():
            try:
                await channel.close()
            except Exception:
                log.exception("closing channel %s failed", channel.name)
