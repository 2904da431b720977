"""From a request to committed alerts: key → adapter → routing rules → writer.

The gRPC servicer and the HTTP gateway both call :class:`IngestPipeline`;
neither knows how alerts are stored.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

from prometheus_client import Counter

from oncall_server import json_codec
from oncall_server.clock import Clock
from oncall_server.errors import InvalidArgument
from oncall_server.hookspecs import AdapterContext
from oncall_server.ingest.drops import DropLog
from oncall_server.ingest.model import IngestResult, NormalizedEvent, Outcome, PreparedAlert
from oncall_server.ingest.writer import GroupCommitWriter
from oncall_server.integrations import IntegrationContext, Integrations
from oncall_server.plugins import Plugins
from oncall_server.routing_rules import Drop, evaluate
from oncall_server.severity import DEFAULT_SEVERITY

log = logging.getLogger(__name__)

ALERTS_INGESTED = Counter("oncall_alerts_ingested_total", "Alerts accepted, by outcome.", ["outcome"])
MAX_IDEMPOTENCY_KEY = 255


class IngestPipeline:
    def __init__(
        self,
        integrations: Integrations,
        plugins: Plugins,
        writer: GroupCommitWriter,
        drops: DropLog,
        clock: Clock,
        *,
        max_batch_alerts: int = 1000,
    ) -> None:
        self.integrations = integrations
        self.plugins = plugins
        self.writer = writer
        self.drops = drops
        self.clock = clock
        self.max_batch_alerts = max_batch_alerts

    async def ingest_body(
        self,
        key: str | None,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> list[IngestResult]:
        """A raw JSON body from the webhook gateway, parsed by the integration's adapter."""
        context = await self.integrations.resolve_key(key)
        text = json_codec.request_text(body, field="body")
        payload = json_codec.loads_request(text, field="body")
        events = self.normalize(context, payload, headers or {})
        if len(events) == 1 and not events[0].raw_payload:
            events[0].raw_payload = text
        return await self.ingest_events(context, events, idempotency_key=idempotency_key)

    def normalize(
        self, context: IntegrationContext, payload: object, headers: Mapping[str, str]
    ) -> list[NormalizedEvent]:
        adapter = self.plugins.adapter(context.type)
        events = adapter.parse(payload, AdapterContext(context.name, context.type, headers))
        if len(events) > self.max_batch_alerts:
            raise InvalidArgument.field(
                "body", f"holds {len(events)} alerts; at most {self.max_batch_alerts} per request"
            )
        return events

    async def ingest_events(
        self,
        context: IntegrationContext,
        events: Sequence[NormalizedEvent],
        *,
        idempotency_key: str | None = None,
    ) -> list[IngestResult]:
        """Route and store already-normalized events; one result per event, in order."""
        if idempotency_key is not None and len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidArgument.field(
                "Idempotency-Key", f"must be at most {MAX_IDEMPOTENCY_KEY} characters"
            )
        now = self.clock.now()
        results: list[IngestResult | None] = []
        accepted: list[PreparedAlert] = []
        for index, event in enumerate(events):
            drop = (
                Drop(-1, f"{context.type} adapter", event.drop_reason)
                if event.drop_reason
                else evaluate(
                    context.routing_rules,
                    severity=event.severity,
                    title=event.title,
                    payload=functools.partial(_payload_of, event),
                )
            )
            if drop is not None:
                await self.drops.record(context, event, drop, now)
                results.append(IngestResult(Outcome.DROPPED, dedup_key=event.dedup_key or ""))
                continue
            key = idempotency_key
            if key is not None and len(events) > 1:
                key = f"{key}#{index}"
            accepted.append(
                PreparedAlert(
                    tenant_id=context.tenant_id,
                    service_id=context.service_id,
                    integration_id=context.integration_id,
                    grouping_window_ms=context.grouping_window_ms,
                    event=event,
                    received_at=now,
                    idempotency_key=key if event.dedup_key is None else None,
                )
            )
            results.append(None)
        stored = iter(await self.writer.submit(accepted))
        final = [r if r is not None else next(stored) for r in results]
        for result in final:
            ALERTS_INGESTED.labels(result.outcome.name.lower()).inc()
        return final


def fill_defaults(event: NormalizedEvent, integration_name: str) -> NormalizedEvent:
    """Structured events (gRPC) get the same fallbacks as extracted ones."""
    return replace(
        event,
        title=event.title.strip()[:1024] or f"Alert from {integration_name}",
        severity=event.severity or DEFAULT_SEVERITY,
        dedup_key=(event.dedup_key or "").strip() or None,
    )


def _payload_of(event: NormalizedEvent) -> object:
    """What field-match rules look at: the raw JSON if there is one, else the structured fields."""
    if event.raw_payload:
        try:
            return json.loads(event.raw_payload)
        except ValueError:
            pass
    fields = event.fields()
    return {**fields.pop("details"), **fields}
