"""``oncall.v1.IntegrationService``: the caller's alert sources, their keys and dropped alerts."""

from __future__ import annotations

from typing import Any

from oncall_server import json_codec
from oncall_server.api.v1 import alert_pb2, integration_pb2
from oncall_server.api.v1 import integration_service_pb2 as int_pb
from oncall_server.api.v1 import integration_service_pb2_grpc as int_grpc
from oncall_server.errors import InvalidArgument
from oncall_server.faces.grpc import convert
from oncall_server.faces.grpc.auth import Context, caller
from oncall_server.incidents.actions import clamp_page_size, decode_page_token, page_of
from oncall_server.ingest.field_mapping import EXPRESSION_KEYS, MAP_KEYS
from oncall_server.ingest.model import NormalizedEvent
from oncall_server.runtime.app import App
from oncall_server.storage.models import Integration


def field_mapping_from(message: integration_pb2.FieldMapping) -> dict[str, Any]:
    """The proto mapping as the JSON form field_mapping.parse_mapping validates (empty fields left out)."""
    mapping: dict[str, Any] = {key: getattr(message, key) for key in EXPRESSION_KEYS if getattr(message, key)}
    for key in MAP_KEYS:
        if getattr(message, key):
            mapping[key] = dict(getattr(message, key))
    return mapping


def integration_message(row: Integration) -> integration_pb2.Integration:
    """``convert.integration`` and the field mapping, which is stored valid (parse_mapping's form)."""
    message = convert.integration(row)
    if row.field_mapping:
        message.field_mapping.CopyFrom(integration_pb2.FieldMapping(**row.field_mapping))
    return message


def _event_message(event: NormalizedEvent) -> alert_pb2.AlertEvent:
    return alert_pb2.AlertEvent(
        title=event.title,
        severity=int(event.severity),  # type: ignore[arg-type]
        dedup_key=event.dedup_key or "",
        source=event.source,
        source_ref=event.source_ref,
        description=event.description,
        details=event.details,
        action=int(event.action),  # type: ignore[arg-type]
    )


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
            field_mapping_from(spec.field_mapping) if spec.HasField("field_mapping") else None,
        )
        return int_pb.CreateIntegrationResponse(integration=integration_message(row), integration_key=key)

    async def GetIntegration(
        self, request: int_pb.GetIntegrationRequest, context: Context
    ) -> int_pb.GetIntegrationResponse:
        who = caller(context)
        row = await self.app.integrations.get(who.tenant_id, request.integration_id)
        return int_pb.GetIntegrationResponse(integration=integration_message(row))

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
            integrations=[integration_message(r) for r in page], next_page_token=token
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
            elif path == "field_mapping":  # unset: remove the mapping
                changes[path] = (
                    field_mapping_from(spec.field_mapping) if spec.HasField("field_mapping") else None
                )
            elif path in ("name", "service_id"):
                changes[path] = getattr(spec, path)
            else:
                raise InvalidArgument.field("update_mask", f"cannot update {path!r}")
        row = await self.app.integrations.update(who.tenant_id, spec.id, changes)
        return int_pb.UpdateIntegrationResponse(integration=integration_message(row))

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
        return int_pb.RotateIntegrationKeyResponse(integration=integration_message(row), integration_key=key)

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

    async def TestFieldMapping(
        self, request: int_pb.TestFieldMappingRequest, context: Context
    ) -> int_pb.TestFieldMappingResponse:
        who = caller(context)
        text = request.sample_payload
        if not text.strip():
            raise InvalidArgument.field("sample_payload", "is required: the JSON a sender would post")
        sample = json_codec.loads_request(text, field="sample_payload")
        given = request.HasField("field_mapping")
        events, notes = await self.app.integrations.test_field_mapping(
            who.tenant_id,
            request.integration_id,
            request.integration_type,
            field_mapping_from(request.field_mapping) if given else None,
            sample,
            use_stored=not given,
        )
        return int_pb.TestFieldMappingResponse(events=[_event_message(e) for e in events], notes=notes)
