"""Loads plugins from the ``oncall`` entry-point group and collects what they register."""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pluggy

from oncall_server import hookspecs
from oncall_server.errors import FailedPrecondition, InvalidArgument
from oncall_server.hookspecs import Adapter, Channel
from oncall_server.runtime.settings import Settings

log = logging.getLogger(__name__)
_T = TypeVar("_T", Adapter, Channel)

ENTRY_POINT_GROUP = "oncall"
#: Comma-separated plugin (entry point) names that must not be loaded (``Settings.block_plugins``).
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
        self.blocked = set(self.settings.block_plugins) if blocked is None else blocked
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
        adapters: dict[str, tuple[Adapter, str]] = {}

        def adapter_registry(plugin: str) -> Callable[[Adapter], None]:
            def register(adapter: Adapter) -> None:
                _check_unique("an adapter", adapter.name, adapter, plugin, adapters)
                adapters[adapter.name] = (adapter, plugin)

            return register

        self._call_each("oncall_register_adapters", adapter_registry, {})
        self.adapters = {name: adapter for name, (adapter, _) in adapters.items()}

        channels: dict[str, tuple[Channel, str]] = {}

        def channel_registry(plugin: str) -> Callable[[Channel], None]:
            def register(channel: Channel) -> None:
                _check_unique("a notification channel", channel.name, channel, plugin, channels)
                previous = self.channels.get(channel.name)
                # Re-collecting (a plugin registered later) keeps live channels and their connections.
                kept = previous if type(previous) is type(channel) else channel
                channels[channel.name] = (kept, plugin)

            return register

        self._call_each("oncall_register_channels", channel_registry, {"settings": self.settings})
        self.channels = {name: channel for name, (channel, _) in channels.items()}

    def _call_each(
        self,
        hook_name: str,
        registry: Callable[[str], Callable[[_T], None]],
        arguments: dict[str, object],
    ) -> None:
        """Call a registration hook plugin by plugin, each with a ``register`` that knows its name,
        so a name registered twice can be reported with both plugins. Same order as a hook call."""
        hook = getattr(self.manager.hook, hook_name)
        for impl in reversed(hook.get_hookimpls()):
            if impl.hookwrapper or impl.wrapper:
                continue  # a wrapper registers nothing itself
            values = {**arguments, "register": registry(impl.plugin_name)}
            impl.function(*(values[name] for name in impl.argnames))

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


def _check_unique(kind: str, name: str, item: object, plugin: str, seen: dict[str, tuple[_T, str]]) -> None:
    """Two plugins registering the same name would make one of them silently unreachable."""
    if name in seen and seen[name][0] is not item:
        raise RuntimeError(f"plugins {seen[name][1]!r} and {plugin!r} both register {kind} named {name!r}")
