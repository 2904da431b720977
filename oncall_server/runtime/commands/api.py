"""Commands that go through the gRPC API with an API token, as any client would."""

from __future__ import annotations

import argparse

import grpc

INCIDENT_STATUSES = ("", "triggered", "acknowledged", "resolved")


async def list_incidents(args: argparse.Namespace) -> int:
    """Lists incidents through the generated gRPC stub."""
    from oncall_server.api.v1 import alert_pb2, incident_pb2, incident_service_pb2, incident_service_pb2_grpc

    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = incident_service_pb2_grpc.IncidentServiceStub(channel)
        status = INCIDENT_STATUSES.index(args.status)
        response = await stub.ListIncidents(
            incident_service_pb2.ListIncidentsRequest(status=status, page_size=args.limit),  # type: ignore[arg-type]
            metadata=[("authorization", f"Bearer {args.token}")],
        )
    if args.json:
        from google.protobuf import json_format

        print(json_format.MessageToJson(response, preserving_proto_field_name=True))
        return 0
    print(f"{'ID':36}  {'STATUS':12}  {'SEVERITY':8}  {'ALERTS':>6}  TITLE")
    for inc in response.incidents:
        severity = alert_pb2.Severity.Name(inc.severity).removeprefix("SEVERITY_").lower()
        state = incident_pb2.IncidentStatus.Name(inc.status).removeprefix("INCIDENT_STATUS_").lower()
        print(f"{inc.id:36}  {state:12}  {severity:8}  {inc.alert_count:>6}  {inc.title}")
    return 0
