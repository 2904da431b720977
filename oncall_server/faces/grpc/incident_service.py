"""``oncall.v1.IncidentService``: read, act on and watch the caller's incidents."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from oncall_server.api.v1 import incident_service_pb2 as inc_pb
from oncall_server.api.v1 import incident_service_pb2_grpc as inc_grpc
from oncall_server.errors import NotFound
from oncall_server.faces.grpc import convert
from oncall_server.faces.grpc.auth import Context, caller
from oncall_server.incidents.actions import IncidentFilter, clamp_page_size
from oncall_server.runtime.app import App

T = TypeVar("T")


class _Acting(Protocol):
    """What every incident action request carries."""

    @property
    def incident_id(self) -> str: ...
    @property
    def actor(self) -> str: ...


class _Paged(Protocol):
    @property
    def incident_id(self) -> str: ...
    @property
    def page_size(self) -> int: ...
    @property
    def page_token(self) -> str: ...


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

    async def _act(
        self, context: Context, request: _Acting, action: Callable[..., Awaitable[T]], **given: str
    ) -> T:
        """An incident action on the caller's tenant, by the request's actor (else the token's name)."""
        who = caller(context)
        return await action(who.tenant_id, request.incident_id, actor=request.actor or who.name, **given)

    async def _page(self, context: Context, request: _Paged, read: Callable[..., Awaitable[T]]) -> T:
        """A page of what hangs off one of the caller's incidents."""
        who = caller(context)
        size = clamp_page_size(request.page_size, 100, 1000)
        return await read(who.tenant_id, request.incident_id, size, request.page_token)

    async def AcknowledgeIncident(
        self, request: inc_pb.AcknowledgeIncidentRequest, context: Context
    ) -> inc_pb.AcknowledgeIncidentResponse:
        row = await self._act(context, request, self.app.incidents.acknowledge)
        return inc_pb.AcknowledgeIncidentResponse(incident=self._incident(row))

    async def UnacknowledgeIncident(
        self, request: inc_pb.UnacknowledgeIncidentRequest, context: Context
    ) -> inc_pb.UnacknowledgeIncidentResponse:
        row = await self._act(context, request, self.app.incidents.unacknowledge)
        return inc_pb.UnacknowledgeIncidentResponse(incident=self._incident(row))

    async def ResolveIncident(
        self, request: inc_pb.ResolveIncidentRequest, context: Context
    ) -> inc_pb.ResolveIncidentResponse:
        row = await self._act(
            context, request, self.app.incidents.resolve, summary=request.resolution_summary
        )
        return inc_pb.ResolveIncidentResponse(incident=self._incident(row))

    async def ReassignIncident(
        self, request: inc_pb.ReassignIncidentRequest, context: Context
    ) -> inc_pb.ReassignIncidentResponse:
        row = await self._act(context, request, self.app.incidents.reassign, assignee=request.assigned_to)
        return inc_pb.ReassignIncidentResponse(incident=self._incident(row))

    async def AddIncidentNote(
        self, request: inc_pb.AddIncidentNoteRequest, context: Context
    ) -> inc_pb.AddIncidentNoteResponse:
        entry = await self._act(context, request, self.app.incidents.add_note, note=request.note)
        return inc_pb.AddIncidentNoteResponse(entry=convert.timeline_entry(entry))

    async def ListIncidentAlerts(
        self, request: inc_pb.ListIncidentAlertsRequest, context: Context
    ) -> inc_pb.ListIncidentAlertsResponse:
        rows, token = await self._page(context, request, self.app.incidents.list_alerts)
        return inc_pb.ListIncidentAlertsResponse(
            alerts=[convert.alert(r) for r in rows], next_page_token=token
        )

    async def ListIncidentTimeline(
        self, request: inc_pb.ListIncidentTimelineRequest, context: Context
    ) -> inc_pb.ListIncidentTimelineResponse:
        rows, token = await self._page(context, request, self.app.incidents.timeline)
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
