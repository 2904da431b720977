"""gRPC servicers: translate messages, call the core, translate back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from oncall_server.api.v1 import (
    catalog_service_pb2 as cat_pb,
)
from oncall_server.api.v1 import (
    catalog_service_pb2_grpc as cat_grpc,
)
from oncall_server.api.v1 import (
    incident_service_pb2 as inc_pb,
)
from oncall_server.api.v1 import (
    incident_service_pb2_grpc as inc_grpc,
)
from oncall_server.api.v1 import (
    ingest_service_pb2 as ing_pb,
)
from oncall_server.api.v1 import (
    ingest_service_pb2_grpc as ing_grpc,
)
from oncall_server.api.v1 import (
    integration_service_pb2 as int_pb,
)
from oncall_server.api.v1 import (
    integration_service_pb2_grpc as int_grpc,
)
from oncall_server.configuration import services, tenants
from oncall_server.errors import InvalidArgument, NotFound
from oncall_server.faces.grpc import convert
from oncall_server.incidents.actions import IncidentFilter, clamp_page_size, decode_page_token, page_of
from oncall_server.ingest import defend
from oncall_server.ingest.integrations import IntegrationContext
from oncall_server.ingest.model import NormalizedEvent
from oncall_server.ingest.pipeline import IngestPart, fill_defaults
from oncall_server.runtime.app import App
from oncall_server.severity import Severity

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def _metadata(context: Context, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode()
    return None


async def _principal(app: App, context: Context) -> tenants.Principal:
    header = _metadata(context, "authorization") or ""
    scheme, _, token = header.partition(" ")
    return await tenants.authenticate_token(
        app.sessions, token.strip() if scheme.lower() == "bearer" else None
    )


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
                import json

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
                        severity=Severity(message.severity) if message.severity else None,  # type: ignore[arg-type]
                        dedup_key=message.dedup_key,
                        source=message.source,
                        source_ref=message.source_ref,
                        description=message.description,
                        details=dict(message.details),
                        raw_payload=message.raw_payload,
                    ),
                    context.name,
                )
            )
        return events, where

    async def _key(self, request_key: str, context: Context) -> IntegrationContext:
        return await self.app.integrations.resolve_key(request_key or _metadata(context, "x-integration-key"))

    async def IngestAlert(
        self, request: ing_pb.IngestAlertRequest, context: Context
    ) -> ing_pb.IngestAlertResponse:
        integration = await self._key(request.integration_key, context)
        events, paths = await self._events(integration, [request.alert], ["alert"])
        results = await self.app.pipeline.ingest_events(
            integration, events, idempotency_key=_metadata(context, "idempotency-key"), paths=paths
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
            parts, idempotency_key=_metadata(context, "idempotency-key")
        )
        return ing_pb.IngestAlertsResponse(results=[convert.ingest_result(r) for r in results])  # type: ignore[misc]

    async def CreateEscalation(
        self, request: ing_pb.CreateEscalationRequest, context: Context
    ) -> ing_pb.CreateEscalationResponse:
        from google.protobuf import json_format

        payload = json_format.MessageToDict(request, preserving_proto_field_name=True)
        result = await defend.create_escalation(self.app, _metadata(context, "x-integration-key"), payload)
        return ing_pb.CreateEscalationResponse(result=convert.ingest_result(result))  # type: ignore[arg-type]


class IncidentServicer(inc_grpc.IncidentServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    def _incident(self, row: Any) -> Any:
        return convert.incident(row, self.app.settings.public_url)

    async def GetIncident(
        self, request: inc_pb.GetIncidentRequest, context: Context
    ) -> inc_pb.GetIncidentResponse:
        who = await _principal(self.app, context)
        return inc_pb.GetIncidentResponse(
            incident=self._incident(await self.app.incidents.get(who.tenant_id, request.incident_id))
        )

    async def ListIncidents(
        self, request: inc_pb.ListIncidentsRequest, context: Context
    ) -> inc_pb.ListIncidentsResponse:
        who = await _principal(self.app, context)
        where = IncidentFilter(
            status=convert.INCIDENT_STATUS_NAME.get(request.status),
            service_id=request.service_id or None,
            severity=int(request.severity) or None,
            source=request.source or None,
        )
        rows, token = await self.app.incidents.list_incidents(
            who.tenant_id, where, clamp_page_size(request.page_size, 50, 500), request.page_token
        )
        return inc_pb.ListIncidentsResponse(
            incidents=[self._incident(r) for r in rows], next_page_token=token
        )

    async def AcknowledgeIncident(
        self, request: inc_pb.AcknowledgeIncidentRequest, context: Context
    ) -> inc_pb.AcknowledgeIncidentResponse:
        who = await _principal(self.app, context)
        row = await self.app.incidents.acknowledge(
            who.tenant_id, request.incident_id, request.actor or who.name
        )
        return inc_pb.AcknowledgeIncidentResponse(incident=self._incident(row))

    async def UnacknowledgeIncident(
        self, request: inc_pb.UnacknowledgeIncidentRequest, context: Context
    ) -> inc_pb.UnacknowledgeIncidentResponse:
        who = await _principal(self.app, context)
        row = await self.app.incidents.unacknowledge(
            who.tenant_id, request.incident_id, request.actor or who.name
        )
        return inc_pb.UnacknowledgeIncidentResponse(incident=self._incident(row))

    async def ResolveIncident(
        self, request: inc_pb.ResolveIncidentRequest, context: Context
    ) -> inc_pb.ResolveIncidentResponse:
        who = await _principal(self.app, context)
        row = await self.app.incidents.resolve(
            who.tenant_id, request.incident_id, request.actor or who.name, request.resolution_summary
        )
        return inc_pb.ResolveIncidentResponse(incident=self._incident(row))

    async def ReassignIncident(
        self, request: inc_pb.ReassignIncidentRequest, context: Context
    ) -> inc_pb.ReassignIncidentResponse:
        who = await _principal(self.app, context)
        row = await self.app.incidents.reassign(
            who.tenant_id, request.incident_id, request.assigned_to, request.actor or who.name
        )
        return inc_pb.ReassignIncidentResponse(incident=self._incident(row))

    async def AddIncidentNote(
        self, request: inc_pb.AddIncidentNoteRequest, context: Context
    ) -> inc_pb.AddIncidentNoteResponse:
        who = await _principal(self.app, context)
        entry = await self.app.incidents.add_note(
            who.tenant_id, request.incident_id, request.note, request.actor or who.name
        )
        return inc_pb.AddIncidentNoteResponse(entry=convert.timeline_entry(entry))

    async def ListIncidentAlerts(
        self, request: inc_pb.ListIncidentAlertsRequest, context: Context
    ) -> inc_pb.ListIncidentAlertsResponse:
        who = await _principal(self.app, context)
        rows, token = await self.app.incidents.list_alerts(
            who.tenant_id,
            request.incident_id,
            clamp_page_size(request.page_size, 100, 1000),
            request.page_token,
        )
        return inc_pb.ListIncidentAlertsResponse(
            alerts=[convert.alert(r) for r in rows], next_page_token=token
        )

    async def ListIncidentTimeline(
        self, request: inc_pb.ListIncidentTimelineRequest, context: Context
    ) -> inc_pb.ListIncidentTimelineResponse:
        who = await _principal(self.app, context)
        rows, token = await self.app.incidents.timeline(
            who.tenant_id,
            request.incident_id,
            clamp_page_size(request.page_size, 100, 1000),
            request.page_token,
        )
        return inc_pb.ListIncidentTimelineResponse(
            entries=[convert.timeline_entry(r) for r in rows], next_page_token=token
        )

    async def GetAlert(self, request: inc_pb.GetAlertRequest, context: Context) -> inc_pb.GetAlertResponse:
        who = await _principal(self.app, context)
        return inc_pb.GetAlertResponse(
            alert=convert.alert(await self.app.incidents.get_alert(who.tenant_id, request.alert_id))
        )

    async def WatchIncidents(
        self, request: inc_pb.WatchIncidentsRequest, context: Context
    ) -> AsyncIterator[inc_pb.WatchIncidentsResponse]:
        who = await _principal(self.app, context)
        async for change in self.app.changes.subscribe(who.tenant_id):
            if request.service_id and change.service_id != request.service_id:
                continue
            try:
                row = await self.app.incidents.get(who.tenant_id, change.incident_id)
            except NotFound:
                continue
            entry = await self.app.incidents.entry(who.tenant_id, change.entry_id)
            yield inc_pb.WatchIncidentsResponse(
                incident=self._incident(row), entry=convert.timeline_entry(entry) if entry else None
            )


class IntegrationServicer(int_grpc.IntegrationServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    async def CreateIntegration(
        self, request: int_pb.CreateIntegrationRequest, context: Context
    ) -> int_pb.CreateIntegrationResponse:
        who = await _principal(self.app, context)
        spec = request.integration
        row, key = await self.app.integrations.create(
            who.tenant_id,
            spec.service_id,
            spec.name,
            spec.type,
            convert.routing_rules_from(list(spec.routing_rules)),
        )
        return int_pb.CreateIntegrationResponse(integration=convert.integration(row), integration_key=key)

    async def GetIntegration(
        self, request: int_pb.GetIntegrationRequest, context: Context
    ) -> int_pb.GetIntegrationResponse:
        who = await _principal(self.app, context)
        row = await self.app.integrations.get(who.tenant_id, request.integration_id)
        return int_pb.GetIntegrationResponse(integration=convert.integration(row))

    async def ListIntegrations(
        self, request: int_pb.ListIntegrationsRequest, context: Context
    ) -> int_pb.ListIntegrationsResponse:
        who = await _principal(self.app, context)
        size = clamp_page_size(request.page_size, 100, 1000)
        rows = await self.app.integrations.list_integrations(
            who.tenant_id, request.service_id or None, size + 1, decode_page_token(request.page_token)
        )
        page, token = page_of(rows, size)
        return int_pb.ListIntegrationsResponse(
            integrations=[convert.integration(r) for r in page], next_page_token=token
        )

    async def UpdateIntegration(
        self, request: int_pb.UpdateIntegrationRequest, context: Context
    ) -> int_pb.UpdateIntegrationResponse:
        who = await _principal(self.app, context)
        spec = request.integration
        paths = list(request.update_mask.paths) or ["name", "service_id", "routing_rules"]
        changes: dict[str, object] = {}
        for path in paths:
            if path == "routing_rules":
                changes[path] = convert.routing_rules_from(list(spec.routing_rules))
            elif path in ("name", "service_id"):
                changes[path] = getattr(spec, path)
            else:
                raise InvalidArgument.field("update_mask", f"cannot update {path!r}")
        row = await self.app.integrations.update(who.tenant_id, spec.id, changes)
        return int_pb.UpdateIntegrationResponse(integration=convert.integration(row))

    async def DeleteIntegration(
        self, request: int_pb.DeleteIntegrationRequest, context: Context
    ) -> int_pb.DeleteIntegrationResponse:
        who = await _principal(self.app, context)
        await self.app.integrations.delete(who.tenant_id, request.integration_id)
        return int_pb.DeleteIntegrationResponse(integration_id=request.integration_id)

    async def RotateIntegrationKey(
        self, request: int_pb.RotateIntegrationKeyRequest, context: Context
    ) -> int_pb.RotateIntegrationKeyResponse:
        who = await _principal(self.app, context)
        row, key = await self.app.integrations.rotate_key(who.tenant_id, request.integration_id)
        return int_pb.RotateIntegrationKeyResponse(integration=convert.integration(row), integration_key=key)

    async def ListDroppedAlerts(
        self, request: int_pb.ListDroppedAlertsRequest, context: Context
    ) -> int_pb.ListDroppedAlertsResponse:
        who = await _principal(self.app, context)
        await self.app.integrations.get(who.tenant_id, request.integration_id)
        drops, counts = await self.app.pipeline.drops.latest(
            request.integration_id, clamp_page_size(request.page_size, 50, 100)
        )
        return int_pb.ListDroppedAlertsResponse(
            dropped_alerts=[convert.dropped_alert(d) for d in drops], drop_counts=counts
        )


class CatalogServicer(cat_grpc.CatalogServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    async def CreateService(
        self, request: cat_pb.CreateServiceRequest, context: Context
    ) -> cat_pb.CreateServiceResponse:
        who = await _principal(self.app, context)
        row = await services.create_service(
            self.app.sessions, self.app.clock, who.tenant_id, convert.service_fields(request.service)
        )
        return cat_pb.CreateServiceResponse(service=convert.service(row))

    async def GetService(
        self, request: cat_pb.GetServiceRequest, context: Context
    ) -> cat_pb.GetServiceResponse:
        who = await _principal(self.app, context)
        async with self.app.sessions() as session:
            row = await services.get_service(session, who.tenant_id, request.service_id)
        return cat_pb.GetServiceResponse(service=convert.service(row))

    async def ListServices(
        self, request: cat_pb.ListServicesRequest, context: Context
    ) -> cat_pb.ListServicesResponse:
        who = await _principal(self.app, context)
        size = clamp_page_size(request.page_size, 100, 1000)
        rows = await services.list_services(
            self.app.sessions, who.tenant_id, size + 1, decode_page_token(request.page_token)
        )
        page, token = page_of(rows, size)
        return cat_pb.ListServicesResponse(services=[convert.service(r) for r in page], next_page_token=token)

    async def UpdateService(
        self, request: cat_pb.UpdateServiceRequest, context: Context
    ) -> cat_pb.UpdateServiceResponse:
        who = await _principal(self.app, context)
        changes = convert.service_changes(request.service, list(request.update_mask.paths))
        row = await services.update_service(
            self.app.sessions, self.app.clock, who.tenant_id, request.service.id, changes
        )
        self.app.integrations.forget_cached()
        return cat_pb.UpdateServiceResponse(service=convert.service(row))

    async def DeleteService(
        self, request: cat_pb.DeleteServiceRequest, context: Context
    ) -> cat_pb.DeleteServiceResponse:
        who = await _principal(self.app, context)
        await services.delete_service(self.app.sessions, who.tenant_id, request.service_id)
        await self.app.coordinator.forget_service(request.service_id)
        return cat_pb.DeleteServiceResponse(service_id=request.service_id)

    async def CreateMaintenanceWindow(
        self, request: cat_pb.CreateMaintenanceWindowRequest, context: Context
    ) -> cat_pb.CreateMaintenanceWindowResponse:
        who = await _principal(self.app, context)
        spec = request.maintenance_window
        row = await services.create_maintenance_window(
            self.app.sessions,
            self.app.clock,
            who.tenant_id,
            spec.service_id,
            convert.from_timestamp(spec.start_time) if spec.HasField("start_time") else None,
            convert.from_timestamp(spec.end_time) if spec.HasField("end_time") else None,
            spec.reason,
        )
        # Shielded: a caller that hangs up now must not leave every writer's copy stale.
        await asyncio.shield(self.app.coordinator.windows_changed(row.service_id))
        return cat_pb.CreateMaintenanceWindowResponse(maintenance_window=_window(row))

    async def ListMaintenanceWindows(
        self, request: cat_pb.ListMaintenanceWindowsRequest, context: Context
    ) -> cat_pb.ListMaintenanceWindowsResponse:
        who = await _principal(self.app, context)
        rows = await services.list_maintenance_windows(
            self.app.sessions, self.app.clock, who.tenant_id, request.service_id, request.include_past
        )
        return cat_pb.ListMaintenanceWindowsResponse(maintenance_windows=[_window(r) for r in rows])

    async def DeleteMaintenanceWindow(
        self, request: cat_pb.DeleteMaintenanceWindowRequest, context: Context
    ) -> cat_pb.DeleteMaintenanceWindowResponse:
        who = await _principal(self.app, context)
        service_id = await services.delete_maintenance_window(
            self.app.sessions, who.tenant_id, request.maintenance_window_id
        )
        await asyncio.shield(self.app.coordinator.windows_changed(service_id))
        return cat_pb.DeleteMaintenanceWindowResponse(maintenance_window_id=request.maintenance_window_id)


def _window(row: Any) -> Any:
    from oncall_server.api.v1 import service_pb2

    return service_pb2.MaintenanceWindow(
        id=row.id,
        service_id=row.service_id,
        start_time=convert.timestamp(row.start_at),
        end_time=convert.timestamp(row.end_at),
        reason=row.reason,
        create_time=convert.timestamp(row.created_at),
    )
