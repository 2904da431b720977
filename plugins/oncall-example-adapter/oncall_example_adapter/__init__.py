"""An example third-party adapter: the webhook of an imaginary uptime checker.

Its payload: {"check": {"id": "...", "name": "...", "url": "..."}, "state": "down"|"up",
"since": "...", "region": "..."}. A "down" check pages (critical); "up" pages nobody.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oncall_server.errors import InvalidArgument
from oncall_server.hookspecs import Adapter, AdapterContext, hookimpl
from oncall_server.ingest.model import NormalizedEvent
from oncall_server.severity import Severity


class UptimeAdapter:
    name = "example_uptime"

    def parse(self, payload: Any, context: AdapterContext) -> list[NormalizedEvent]:
        check = payload.get("check") if isinstance(payload, dict) else None
        if not isinstance(check, dict) or not check.get("id"):
            raise InvalidArgument.field("check.id", "is required")
        state = payload.get("state")
        if state not in ("down", "up"):
            raise InvalidArgument.field("state", 'must be "down" or "up"')
        name = str(check.get("name") or check["id"])
        return [
            NormalizedEvent(
                title=f"{name} is {state}",
                severity=Severity.CRITICAL if state == "down" else Severity.INFO,
                dedup_key=f"uptime:{check['id']}",
                source="example_uptime",
                source_ref=str(check["id"]),
                details={
                    k: str(v) for k, v in (("url", check.get("url")), ("region", payload.get("region"))) if v
                },
                record_only=state == "up",
            )
        ]


@hookimpl
def oncall_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(UptimeAdapter())
