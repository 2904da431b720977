"""``oncall.v1.IntegrationService``: the caller's alert sources, their keys and dropped alerts."""

from __future__ import annotations

from oncall_server.api.v1 import integration_service_pb2 as int_pb
from oncall_server.api.v1 import integration_service_pb2_grpc as int_grpc
from oncall_server.errors import InvalidArgument
from oncall_server.faces.grpc import convert
from oncall_server.faces.grpc.auth import Context, caller
from oncall_server.incidents.actions import clamp_page_size, decode_page_token, page_of
from oncall_server.runtime.app import App


class IntegrationServicer(int_grpc.IntegrationServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    async def CreateIntegration(
        self, request: int_pb.CreateIntegrationRequest, context: Context
    ) -> int_pb.CreateIntegrationResponse:
        who = caller(context)
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
        who = caller(context)
        row = await self.app.integrations.get(who.tenant_id, request.integration_id)
        return int_pb.GetIntegrationResponse(integration=convert.integration(row))

    async def ListIntegrations(
        self, request: int_pb.ListIntegrationsRequest, context: Context
    ) -> int_pb.ListIntegrationsResponse:
        who = caller(context)
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
        who = caller(context)
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
        who = caller(context)
        await self.app.integrations.delete(who.tenant_id, request.integration_id)
        return int_pb.DeleteIntegrationResponse(integration_id=request.integration_id)

    async def RotateIntegrationKey(
        self, request: int_pb.RotateIntegrationKeyRequest, context: Context
    ) -> int_pb.RotateIntegrationKeyResponse:
        who = caller(context)
        row, key = await self.app.integrations.rotate_key(who.tenant_id, request.integration_id)
        return int_pb.RotateIntegrationKeyResponse(integration=convert.integration(row), integration_key=key)

    async def ListDroppedAlerts(
        self, request: int_pb.ListDroppedAlertsRequest, context: Context
    ) -> int_pb.ListDroppedAlertsResponse:
        who = caller(context)
        await self.app.integrations.get(who.tenant_id, request.integration_id)
        drops, counts = await self.app.pipeline.drops.latest(
            request.integration_id, clamp_page_size(request.page_size, 50, 100)
        )
        return int_pb.ListDroppedAlertsResponse(
            dropped_alerts=[convert.dropped_alert(d) for d in drops], drop_counts=counts
        )
