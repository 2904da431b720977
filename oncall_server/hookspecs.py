"""Hook specifications: the contract between On-Call and its plugins.

Plugins are packages exposing a module under the ``oncall`` entry-point
group; functions there marked with :data:`hookimpl` implement these hooks.
Hooks are always called with keyword arguments, so new parameters can be
added without breaking existing plugins. Every hook here is documented in
docs/plugins.md (a test checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import pluggy

from oncall_server.ingest.model import NormalizedEvent

hookspec = pluggy.HookspecMarker("oncall")
hookimpl = pluggy.HookimplMarker("oncall")


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """What an adapter may know about the integration a payload arrived on."""

    integration_name: str
    integration_type: str
    headers: Mapping[str, str]


class Adapter(Protocol):
    """Turns one raw payload into normalized alert events; pure: no I/O, no storage."""

    #: The integration type this adapter serves (``Integration.type``), e.g. ``"webhook"``.
    name: str

    def parse(self, payload: Any, context: AdapterContext) -> list[NormalizedEvent]:
        """Normalize ``payload`` (decoded JSON). Raise ``InvalidArgument`` naming the bad field."""
        ...


@hookspec
def oncall_register_adapters(register: Callable[[Adapter], None]) -> None:
    """Register source adapters.

    Called once when the plugin manager loads. Call ``register(adapter)`` for
    each adapter the plugin provides; registering a second adapter under a
    name already taken is an error that names both plugins.
    """
