"""``oncall.v1.IngestService``: senders' alerts, authenticated by integration key (Defend's
escalations by the Defend service key), checked by the core per message."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import json_format

from oncall_server.api.v1 import ingest_service_pb2 as ing_pb
from oncall_server.api.v1 import ingest_service_pb2_grpc as ing_grpc
from oncall_server.errors import InvalidArgument
from oncall_server.faces.grpc import convert
from oncall_server.faces.grpc.auth import Context, metadata
from oncall_server.ingest import defend
from oncall_server.ingest.integrations import IntegrationContext
from oncall_server.ingest.model import EventAction, NormalizedEvent
from oncall_server.ingest.pipeline import IngestPart, fill_defaults
from oncall_server.runtime.app import App


class IngestServicer(ing_grpc.IngestServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    async def _events(
        self, context: IntegrationContext, alerts: Any, paths: list[str]
    ) -> tuple[list[NormalizedEvent], list[str]]:
        """The alerts as events, and each event's path in the request (``paths``: each alert's)."""
        events: list[NormalizedEvent] = []
        where: list[str] = []
        for path, message in zip(paths, alerts, strict=True):
            if message.raw_payload and not message.title:
                try:
                    payload = json.loads(message.raw_payload)
                except ValueError as exc:
                    raise InvalidArgument.field(f"{path}.raw_payload", f"is not valid JSON: {exc}") from None
                parsed = self.app.pipeline.normalize(context, payload, {})
                for event in parsed:
                    event.raw_payload = event.raw_payload or message.raw_payload
                events += parsed
                raw = f"{path}.raw_payload"
                where += [raw] if len(parsed) == 1 else [f"{raw}[{i}]" for i in range(len(parsed))]
                continue
            where.append(path)
            events.append(
                fill_defaults(
                    NormalizedEvent(
                        title=message.title,
                        severity=convert.SEVERITY_OF[message.severity] if message.severity else None,  # type: ignore[arg-type]
                        dedup_key=message.dedup_key,
                        source=message.source,
                        source_ref=message.source_ref,
                        description=message.description,
                        details=dict(message.details),
                        raw_payload=message.raw_payload,
                        action=_action(message.action, f"{path}.action"),
                    ),
                    context.name,
                )
            )
        return events, where

    async def _key(self, request_key: str, context: Context) -> IntegrationContext:
        return await self.app.integrations.resolve_key(request_key or metadata(context, "x-integration-key"))

    async def IngestAlert(
        self, request: ing_pb.IngestAlertRequest, context: Context
    ) -> ing_pb.IngestAlertResponse:
        integration = await self._key(request.integration_key, context)
        events, paths = await self._events(integration, [request.alert], ["alert"])
        results = await self.app.pipeline.ingest_events(
            integration, events, idempotency_key=metadata(context, "idempotency-key"), paths=paths
        )
        return ing_pb.IngestAlertResponse(result=convert.ingest_result(results[0]))  # type: ignore[arg-type]

    async def IngestAlerts(
        self, request_iterator: AsyncIterator[ing_pb.IngestAlertsRequest], context: Context
    ) -> ing_pb.IngestAlertsResponse:
        """All or nothing: every message is read and checked first (at most ONCALL_MAX_BATCH_ALERTS
        alerts in the whole call), then every alert is stored in one transaction. A refused alert
        anywhere in the stream stores nothing of the call; the answer lists every result in order."""
        parts: list[IngestPart] = []
        alerts = 0
        async for message in request_iterator:
            integration = await self._key(message.integration_key, context)
            where = [f"requests[{len(parts)}].alerts[{i}]" for i in range(len(message.alerts))]
            events, paths = await self._events(integration, message.alerts, where)
            alerts += len(events)  # stop reading as soon as the call is over the limit
            self.app.pipeline.check_count(alerts, "alerts", per="IngestAlerts call")
            parts.append(IngestPart(integration, events, paths))
        results = await self.app.pipeline.ingest_parts(
            parts, idempotency_key=metadata(context, "idempotency-key")
        )
        return ing_pb.IngestAlertsResponse(results=[convert.ingest_result(r) for r in results])  # type: ignore[misc]

    async def CreateEscalation(
        self, request: ing_pb.CreateEscalationRequest, context: Context
    ) -> ing_pb.CreateEscalationResponse:
        payload = json_format.MessageToDict(request, preserving_proto_field_name=True)
        result = await defend.create_escalation(self.app, metadata(context, "x-integration-key"), payload)
        return ing_pb.CreateEscalationResponse(result=convert.ingest_result(result))  # type: ignore[arg-type]


def _action(value: int, field: str) -> EventAction:
    """The event's action (unspecified: trigger); a number this server does not know is refused."""
    try:
        return EventAction(value or EventAction.TRIGGER)
    except ValueError:
        raise InvalidArgument.field(field, f"{value} is not an event action this server knows") from None
