"""Internal escalations: Defend creates incidents directly (spec "Defend Alert Integration").

Authenticated by the shared ``DEFEND_SERVICE_KEY``, compared in constant
time; unset or wrong answers 401 without saying which. ``tenant_id`` routes
the detection to that tenant's Defend integration. Detections at or above the
integration's paging threshold (its severity-filter rule; high by default)
open an incident; lower ones are recorded without an incident or page.
"""

from __future__ import annotations

from dataclasses import replace

from oncall_server import security
from oncall_server.errors import Unauthenticated
from oncall_server.hookspecs import AdapterContext
from oncall_server.ingest.model import IngestResult
from oncall_server.runtime.app import App
from oncall_server.severity import Severity

DEFEND_TYPE = "defend"
DEFAULT_THRESHOLD = Severity.HIGH


def check_service_key(app: App, presented: str | None) -> None:
    expected = app.settings.defend_service_key
    if not security.same_secret(presented, expected):
        raise Unauthenticated("a valid Defend service key is required (X-Integration-Key)")


async def create_escalation(app: App, presented_key: str | None, payload: object) -> IngestResult:
    check_service_key(app, presented_key)
    adapter = app.plugins.adapter(DEFEND_TYPE)
    events = adapter.parse(payload, AdapterContext("Defend", DEFEND_TYPE, {}))
    event = events[0]
    context = await app.integrations.for_tenant(event.details.get("tenant_id", ""), DEFEND_TYPE)
    threshold = next(
        (
            r.minimum_severity
            for r in context.routing_rules
            if r.kind == "severity_filter" and r.minimum_severity
        ),
        DEFAULT_THRESHOLD,
    )
    event.record_only = not event.severity.at_least(threshold)
    event.details["defend_url"] = app.settings.defend_detection_url.format(source_ref=event.source_ref)
    routing = replace(
        context, routing_rules=tuple(r for r in context.routing_rules if r.kind != "severity_filter")
    )
    results = await app.pipeline.ingest_events(routing, [event])
    return results[0]
