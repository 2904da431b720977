"""The generic webhook adapter: any monitoring tool posting JSON.

A JSON object is one alert; a JSON array of objects is a batch. Fields are
found by the spec's auto-extraction rules (oncall_server.ingest.extraction).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oncall_server import json_codec
from oncall_server.errors import InvalidArgument
from oncall_server.hookspecs import Adapter, AdapterContext, hookimpl
from oncall_server.ingest.extraction import extract
from oncall_server.ingest.model import NormalizedEvent

_DETAIL_FIELDS = ("source_ref", "body", "description", "host", "device_name", "service", "component")


class WebhookAdapter:
    name = "webhook"

    def parse(self, payload: Any, context: AdapterContext) -> list[NormalizedEvent]:
        if isinstance(payload, list):
            if not payload:
                raise InvalidArgument.field("body", "an empty array holds no alerts")
            events = []
            for index, item in enumerate(payload):
                if not isinstance(item, dict):
                    raise InvalidArgument.field(
                        f"body[{index}]", "each alert in an array must be a JSON object"
                    )
                events.append(self._event(item, json_codec.dumps(item), context))
            return events
        if not isinstance(payload, dict):
            raise InvalidArgument.field("body", "must be a JSON object (one alert) or an array of objects")
        return [self._event(payload, None, context)]

    def _event(self, item: dict[str, Any], raw: str | None, context: AdapterContext) -> NormalizedEvent:
        found = extract(item, context.integration_name)
        description = item.get("description", item.get("body", ""))
        return NormalizedEvent(
            title=found.title,
            severity=found.severity,
            dedup_key=found.dedup_key,
            source=_text(item.get("source")) or context.integration_type,
            source_ref=_text(item.get("source_ref"))[:255],
            description=_text(description),
            details={k: _text(item[k]) for k in _DETAIL_FIELDS if k in item and item[k] is not None},
            raw_payload=raw or "",
            action=found.action,
        )


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json_codec.dumps(value)


@hookimpl
def oncall_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(WebhookAdapter())
