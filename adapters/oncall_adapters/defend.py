"""The Defend (EDR) adapter: a detection becomes one alert keyed by its Defend alert ID.

Field names are the spec's ("Alert Payload from Defend"). Pure: the paging
threshold, tenant routing and authentication are the core's business.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oncall_server.errors import FieldViolation, InvalidArgument
from oncall_server.hookspecs import Adapter, AdapterContext, hookimpl
from oncall_server.ingest.model import NormalizedEvent
from oncall_server.severity import Severity

REQUIRED = ("title", "severity", "source_ref", "tenant_id")
CONTEXT_FIELDS = ("device_name", "detection_type", "mitre_technique", "recommended_action", "tenant_id")
SEVERITIES = ("critical", "high", "medium", "low", "info")


class DefendAdapter:
    name = "defend"

    def parse(self, payload: Any, context: AdapterContext) -> list[NormalizedEvent]:
        if not isinstance(payload, dict):
            raise InvalidArgument.field("body", "must be a JSON object with the Defend alert fields")
        missing = [f for f in REQUIRED if not isinstance(payload.get(f), str) or not payload[f].strip()]
        if missing:
            raise InvalidArgument(
                f"missing required fields: {', '.join(missing)}",
                [FieldViolation(f, "is required") for f in missing],
            )
        source = payload.get("source", "defend")
        if source != "defend":
            raise InvalidArgument.field("source", 'must be "defend"')
        severity_text = payload["severity"].strip().lower()
        if severity_text not in SEVERITIES:
            raise InvalidArgument.field("severity", f"must be one of {', '.join(SEVERITIES)}")
        details = {k: str(payload[k]) for k in CONTEXT_FIELDS if payload.get(k) not in (None, "")}
        return [
            NormalizedEvent(
                title=payload["title"].strip()[:1024],
                severity=Severity[severity_text.upper()],
                dedup_key=payload["source_ref"].strip()[:255],
                source="defend",
                source_ref=payload["source_ref"].strip()[:255],
                description=str(payload.get("description") or ""),
                details=details,
            )
        ]


@hookimpl
def oncall_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(DefendAdapter())
