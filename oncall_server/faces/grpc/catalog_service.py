"""``oncall.v1.CatalogService``: the caller's services and their maintenance windows."""

from __future__ import annotations

from typing import Any

from oncall_server.api.v1 import catalog_service_pb2 as cat_pb
from oncall_server.api.v1 import catalog_service_pb2_grpc as cat_grpc
from oncall_server.api.v1 import service_pb2
from oncall_server.configuration import services
from oncall_server.faces.grpc import convert
from oncall_server.faces.grpc.auth import Context, caller
from oncall_server.incidents.actions import clamp_page_size, decode_page_token, page_of
from oncall_server.runtime.app import App


class CatalogServicer(cat_grpc.CatalogServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    async def CreateService(
        self, request: cat_pb.CreateServiceRequest, context: Context
    ) -> cat_pb.CreateServiceResponse:
        who = caller(context)
        row = await services.create_service(
            self.app.sessions, self.app.clock, who.tenant_id, convert.service_fields(request.service)
        )
        return cat_pb.CreateServiceResponse(service=convert.service(row))

    async def GetService(
        self, request: cat_pb.GetServiceRequest, context: Context
    ) -> cat_pb.GetServiceResponse:
        who = caller(context)
        async with self.app.sessions() as session:
            row = await services.get_service(session, who.tenant_id, request.service_id)
        return cat_pb.GetServiceResponse(service=convert.service(row))

    async def ListServices(
        self, request: cat_pb.ListServicesRequest, context: Context
    ) -> cat_pb.ListServicesResponse:
        who = caller(context)
        size = clamp_page_size(request.page_size, 100, 1000)
        rows = await services.list_services(
            self.app.sessions, who.tenant_id, size + 1, decode_page_token(request.page_token)
        )
        page, token = page_of(rows, size)
        return cat_pb.ListServicesResponse(services=[convert.service(r) for r in page], next_page_token=token)

    async def UpdateService(
        self, request: cat_pb.UpdateServiceRequest, context: Context
    ) -> cat_pb.UpdateServiceResponse:
        who = caller(context)
        changes = convert.service_changes(request.service, list(request.update_mask.paths))
        row = await services.update_service(
            self.app.sessions,
            self.app.clock,
            who.tenant_id,
            request.service.id,
            changes,
            key_cache=self.app.integrations,
        )
        return cat_pb.UpdateServiceResponse(service=convert.service(row))

    async def DeleteService(
        self, request: cat_pb.DeleteServiceRequest, context: Context
    ) -> cat_pb.DeleteServiceResponse:
        who = caller(context)
        await services.delete_service(
            self.app.sessions, who.tenant_id, request.service_id, ingest_state=self.app.coordinator
        )
        return cat_pb.DeleteServiceResponse(service_id=request.service_id)

    async def CreateMaintenanceWindow(
        self, request: cat_pb.CreateMaintenanceWindowRequest, context: Context
    ) -> cat_pb.CreateMaintenanceWindowResponse:
        who = caller(context)
        spec = request.maintenance_window
        row = await services.create_maintenance_window(
            self.app.sessions,
            self.app.clock,
            who.tenant_id,
            spec.service_id,
            convert.from_timestamp(spec.start_time) if spec.HasField("start_time") else None,
            convert.from_timestamp(spec.end_time) if spec.HasField("end_time") else None,
            spec.reason,
            ingest_state=self.app.coordinator,
        )
        return cat_pb.CreateMaintenanceWindowResponse(maintenance_window=_window(row))

    async def ListMaintenanceWindows(
        self, request: cat_pb.ListMaintenanceWindowsRequest, context: Context
    ) -> cat_pb.ListMaintenanceWindowsResponse:
        who = caller(context)
        rows = await services.list_maintenance_windows(
            self.app.sessions, self.app.clock, who.tenant_id, request.service_id, request.include_past
        )
        return cat_pb.ListMaintenanceWindowsResponse(maintenance_windows=[_window(r) for r in rows])

    async def DeleteMaintenanceWindow(
        self, request: cat_pb.DeleteMaintenanceWindowRequest, context: Context
    ) -> cat_pb.DeleteMaintenanceWindowResponse:
        who = caller(context)
        await services.delete_maintenance_window(
            self.app.sessions,
            who.tenant_id,
            request.maintenance_window_id,
            ingest_state=self.app.coordinator,
        )
        return cat_pb.DeleteMaintenanceWindowResponse(maintenance_window_id=request.maintenance_window_id)

    async def ListServiceEvents(
        self, request: cat_pb.ListServiceEventsRequest, context: Context
    ) -> cat_pb.ListServiceEventsResponse:
        who = caller(context)
        size = clamp_page_size(request.page_size, 100, 1000)
        rows = await services.list_service_events(
            self.app.sessions,
            who.tenant_id,
            request.service_id,
            size + 1,
            decode_page_token(request.page_token),
        )
        page, token = page_of(rows, size)
        return cat_pb.ListServiceEventsResponse(
            service_events=[convert.service_event(r) for r in page], next_page_token=token
        )


def _window(row: Any) -> Any:
    return service_pb2.MaintenanceWindow(
        id=row.id,
        service_id=row.service_id,
        start_time=convert.timestamp(row.start_at),
        end_time=convert.timestamp(row.end_at),
        reason=row.reason,
        create_time=convert.timestamp(row.created_at),
    )
