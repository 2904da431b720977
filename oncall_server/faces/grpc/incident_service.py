"""``oncall.v1.IncidentService``: read, act on and watch the caller's incidents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from oncall_server.api.v1 import incident_service_pb2 as inc_pb
from oncall_server.api.v1 import incident_service_pb2_grpc as inc_grpc
from oncall_server.errors import NotFound
from oncall_server.faces.grpc import convert
from oncall_server.faces.grpc.auth import Context, caller
from oncall_server.incidents.actions import IncidentFilter, clamp_page_size
from oncall_server.runtime.app import App


class IncidentServicer(inc_grpc.IncidentServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    def _incident(self, row: Any) -> Any:
        return convert.incident(row, self.app.settings.public_url)

    async def GetIncident(
        self, request: inc_pb.GetIncidentRequest, context: Context
    ) -> inc_pb.GetIncidentResponse:
        who = caller(context)
        return inc_pb.GetIncidentResponse(
            incident=self._incident(await self.app.incidents.get(who.tenant_id, request.incident_id))
        )

    async def ListIncidents(
        self, request: inc_pb.ListIncidentsRequest, context: Context
    ) -> inc_pb.ListIncidentsResponse:
        who = caller(context)
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
        who = caller(context)
        row = await self.app.incidents.acknowledge(
            who.tenant_id, request.incident_id, request.actor or who.name
        )
        return inc_pb.AcknowledgeIncidentResponse(incident=self._incident(row))

    async def UnacknowledgeIncident(
        self, request: inc_pb.UnacknowledgeIncidentRequest, context: Context
    ) -> inc_pb.UnacknowledgeIncidentResponse:
        who = caller(context)
        row = await self.app.incidents.unacknowledge(
            who.tenant_id, request.incident_id, request.actor or who.name
        )
        return inc_pb.UnacknowledgeIncidentResponse(incident=self._incident(row))

    async def ResolveIncident(
        self, request: inc_pb.ResolveIncidentRequest, context: Context
    ) -> inc_pb.ResolveIncidentResponse:
        who = caller(context)
        row = await self.app.incidents.resolve(
            who.tenant_id, request.incident_id, request.actor or who.name, request.resolution_summary
        )
        return inc_pb.ResolveIncidentResponse(incident=self._incident(row))

    async def ReassignIncident(
        self, request: inc_pb.ReassignIncidentRequest, context: Context
    ) -> inc_pb.ReassignIncidentResponse:
        who = caller(context)
        row = await self.app.incidents.reassign(
            who.tenant_id, request.incident_id, request.assigned_to, request.actor or who.name
        )
        return inc_pb.ReassignIncidentResponse(incident=self._incident(row))

    async def AddIncidentNote(
        self, request: inc_pb.AddIncidentNoteRequest, context: Context
    ) -> inc_pb.AddIncidentNoteResponse:
        who = caller(context)
        entry = await self.app.incidents.add_note(
            who.tenant_id, request.incident_id, request.note, request.actor or who.name
        )
        return inc_pb.AddIncidentNoteResponse(entry=convert.timeline_entry(entry))

    async def ListIncidentAlerts(
        self, request: inc_pb.ListIncidentAlertsRequest, context: Context
    ) -> inc_pb.ListIncidentAlertsResponse:
        who = caller(context)
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
        who = caller(context)
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
        who = caller(context)
        return inc_pb.GetAlertResponse(
            alert=convert.alert(await self.app.incidents.get_alert(who.tenant_id, request.alert_id))
        )

    async def WatchIncidents(
        self, request: inc_pb.WatchIncidentsRequest, context: Context
    ) -> AsyncIterator[inc_pb.WatchIncidentsResponse]:
        who = caller(context)
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
