"""On-Call's built-in notification channels: ``log``, ``webhook`` and ``email``.

They are a plugin like any other (entry point ``oncall_channels`` in the
``oncall`` group), so ``ONCALL_BLOCK_PLUGINS=oncall_channels`` removes them,
e.g. to let another package serve one of these names (two channels may not share one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from oncall_channels.email import EmailChannel
from oncall_channels.log import LogChannel
from oncall_channels.webhook import WebhookChannel
from oncall_server.hookspecs import Channel, hookimpl

if TYPE_CHECKING:
    from oncall_server.runtime.settings import Settings

__all__ = ["EmailChannel", "LogChannel", "WebhookChannel", "oncall_register_channels"]


@hookimpl
def oncall_register_channels(register: Callable[[Channel], None], settings: Settings) -> None:
    register(LogChannel())
    register(WebhookChannel.from_settings(settings))
    register(EmailChannel.from_settings(settings))
