"""From a request to committed alerts: key → adapter → routing rules → writer.

The gRPC servicer and the HTTP gateway both call :class:`IngestPipeline`;
neither knows how alerts are stored.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from prometheus_client import Counter

from oncall_server import json_codec
from oncall_server.clock import Clock
from oncall_server.errors import InvalidArgument, OncallError
from oncall_server.hookspecs import AdapterContext
from oncall_server.incidents.source_events import SourceEvent, SourceEvents
from oncall_server.ingest import validation
from oncall_server.ingest.drops import DropLog
from oncall_server.ingest.integrations import IntegrationContext, Integrations
from oncall_server.ingest.model import EventAction, IngestResult, NormalizedEvent, Outcome, PreparedAlert
from oncall_server.ingest.routing_rules import Drop, evaluate
from oncall_server.ingest.writer import GroupCommitWriter
from oncall_server.plugins import Plugins
from oncall_server.severity import DEFAULT_SEVERITY

log = logging.getLogger(__name__)

REQUESTS_REJECTED = Counter(
    "oncall_ingest_requests_rejected_total",
    "Ingest requests refused after their integration was known, by source and error "
    "(InvalidArgument: a bad payload; ResourceExhausted: over a queue limit; ...).",
    ["source", "error"],
)
ALERTS_INGESTED = Counter(
    "oncall_alerts_ingested_total",
    "Events accepted, by source, action (trigger, acknowledge, resolve, change) and outcome.",
    ["source", "action", "outcome"],
)


@dataclass(frozen=True, slots=True)
class IngestPart:
    """One integration's events within a call, and where each event was in the request.

    ``paths`` name the events for errors (``body[3]``, ``alerts[0]``; empty: top level); None
    names them by position.
    """

    context: IntegrationContext
    events: Sequence[NormalizedEvent]
    paths: Sequence[str] | None = None


class IngestPipeline:
    def __init__(
        self,
        integrations: Integrations,
        plugins: Plugins,
        writer: GroupCommitWriter,
        source_events: SourceEvents,
        drops: DropLog,
        clock: Clock,
        *,
        max_batch_alerts: int = 1000,
        room_wait_seconds: float = 0.0,
    ) -> None:
        self.integrations = integrations
        self.plugins = plugins
        self.writer = writer
        self.source_events = source_events
        self.drops = drops
        self.clock = clock
        self.max_batch_alerts = max_batch_alerts
        self.room_wait_seconds = room_wait_seconds

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
        with _counting_rejections(context.type):
            text = json_codec.request_text(body, field="body")
            payload = json_codec.loads_request(text, field="body")
            events = self.normalize(context, payload, headers or {})
        if len(events) == 1 and not events[0].raw_payload:
            events[0].raw_payload = text
        paths = ["body"] if len(events) == 1 else [f"body[{i}]" for i in range(len(events))]
        return await self.ingest_events(context, events, idempotency_key=idempotency_key, paths=paths)

    def normalize(
        self, context: IntegrationContext, payload: object, headers: Mapping[str, str]
    ) -> list[NormalizedEvent]:
        adapter = self.plugins.adapter(context.type)
        adapter_context = AdapterContext(context.name, context.type, headers)
        if context.field_mapping is None:
            events = adapter.parse(payload, adapter_context)
        else:  # the operator's field mapping overrides what the adapter found (field_mapping.py)
            events = context.field_mapping.normalize(adapter, payload, adapter_context)
        self.check_count(len(events), "body")
        return events

    def check_count(self, alerts: int, field: str, *, per: str = "request") -> None:
        """Refuse a request of more than ``ONCALL_MAX_BATCH_ALERTS`` alerts, naming ``field``."""
        if alerts > self.max_batch_alerts:
            raise InvalidArgument.field(
                field,
                f"holds {alerts} alerts; at most {self.max_batch_alerts} per {per} (ONCALL_MAX_BATCH_ALERTS)",
            )

    async def ingest_events(
        self,
        context: IntegrationContext,
        events: Sequence[NormalizedEvent],
        *,
        idempotency_key: str | None = None,
        paths: Sequence[str] | None = None,
        source_holds_backlog: bool = False,
    ) -> list[IngestResult]:
        """Route and store already-normalized events; one result per event, in order."""
        return await self.ingest_parts(
            [IngestPart(context, events, paths)],
            idempotency_key=idempotency_key,
            source_holds_backlog=source_holds_backlog,
        )

    async def wait_for_room(self, context: IntegrationContext) -> None:
        """Before reading a body: wait up to ``ONCALL_INGEST_QUEUE_WAIT_SECONDS`` while the
        integration's or tenant's queue is full, then refuse."""
        with _counting_rejections(context.type):
            await self.writer.queue.wait_for_room(
                context.tenant_id, context.integration_id, wait_seconds=self.room_wait_seconds
            )

    async def ingest_parts(
        self,
        parts: Sequence[IngestPart],
        *,
        idempotency_key: str | None = None,
        source_holds_backlog: bool = False,
    ) -> list[IngestResult]:
        """Validate, route and store one call's events, all or nothing; one result per event, in order.

        Every face comes through here. Every event is checked first (validation.py), so a refused
        one stores nothing of the call; the survivors of routing go to the writer as one request,
        which commits in one transaction or not at all. An idempotency key covers the whole call:
        each of several alerts is stored under ``<key>#<index>``. Over a queue limit the call is
        refused whole after waiting ``ONCALL_INGEST_QUEUE_WAIT_SECONDS`` for room; with
        ``source_holds_backlog`` (the bus) it waits as long as it takes (fair_queue.py).
        """
        with _counting_rejections(parts[0].context.type if parts else "-"):
            return await self._ingest_parts(parts, idempotency_key, source_holds_backlog)

    async def _ingest_parts(
        self, parts: Sequence[IngestPart], idempotency_key: str | None, source_holds_backlog: bool
    ) -> list[IngestResult]:
        total = sum(len(part.events) for part in parts)
        key = validation.idempotency_key(idempotency_key, total)
        for part in parts:
            paths = part.paths or _positions(len(part.events))
            for event, path in zip(part.events, paths, strict=True):
                validation.check_event(event, path)
        now = self.clock.now()
        results: list[IngestResult | None] = []
        accepted: list[PreparedAlert] = []
        source_events: list[SourceEvent] = []
        index = -1
        for part in parts:
            context = part.context
            for event in part.events:
                index += 1
                if event.action is not EventAction.TRIGGER:
                    # Not filtered by routing rules: a recovery must reach the alert its trigger opened.
                    source_events.append(SourceEvent(context, event))
                    results.append(None)
                    continue
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
                alert_key = f"{key}#{index}" if key is not None and total > 1 else key
                accepted.append(
                    PreparedAlert(
                        tenant_id=context.tenant_id,
                        service_id=context.service_id,
                        integration_id=context.integration_id,
                        grouping_window_ms=context.grouping_window_ms,
                        event=event,
                        received_at=now,
                        idempotency_key=alert_key if event.dedup_key is None else None,
                    )
                )
                results.append(None)
        # Triggers first, then the request's acknowledge/resolve events: "fired, then cleared".
        wait = None if source_holds_backlog else self.room_wait_seconds
        stored = iter(await self.writer.submit(accepted, room_wait_seconds=wait))
        acted = iter(await self._apply(source_events, now))
        final: list[IngestResult] = []
        events = ((part.context.type, event) for part in parts for event in part.events)
        for result, (source, event) in zip(results, events, strict=True):
            if result is None:
                result = next(stored) if event.action is EventAction.TRIGGER else next(acted)
            final.append(result)
            ALERTS_INGESTED.labels(source, event.action.name.lower(), result.outcome.name.lower()).inc()
        return final

    async def _apply(self, source_events: list[SourceEvent], now: datetime) -> list[IngestResult]:
        """Acknowledge, resolve and change events; the ones that found nothing go to the drop log."""
        if not source_events:
            return []
        results, no_ops = await self.source_events.apply(source_events, now)
        for source_event, reason in no_ops:
            action = source_event.event.action.name.lower()
            await self.drops.record(
                source_event.context, source_event.event, Drop(-1, f"{action} event", reason), now
            )
        return results


@contextlib.contextmanager
def _counting_rejections(source: str) -> Iterator[None]:
    """Count a request refused on the ingest path (the sender hears why; the operator sees how often)."""
    try:
        yield
    except OncallError as exc:
        REQUESTS_REJECTED.labels(source, type(exc).__name__).inc()
        raise


def _positions(count: int) -> list[str]:
    """Paths of events a face did not name: the fields of one event, or ``alerts[i]``."""
    return [""] if count == 1 else [f"alerts[{i}]" for i in range(count)]


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
