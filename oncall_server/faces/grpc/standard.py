"""gRPC's standard services as the server runs them: health checking and server reflection.

Health (``grpc.health.v1.Health``): grpcio-health-checking's servicer, which answers ``Check`` and
``Watch``, plus ``List`` (every service's status, the overall ``""`` included), which that servicer
leaves to the generated base class (an exception logged as a traceback).

Reflection in both protocols: ``grpc.reflection.v1`` (what grpcurl, buf curl and Postman ask first)
and ``grpc.reflection.v1alpha`` (older clients, grpcio-reflection's own client). grpcio-reflection
(1.85) serves v1alpha only. v1 is the same protocol under another package: its messages are field
for field those of v1alpha, so one servicer answers both paths with the same serializers, and the
v1 file (v1alpha's, renamed) is added to the descriptor pool so that a client can describe the
reflection service it is talking to.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

HEALTH_SERVICE_NAME: str = health.SERVICE_NAME
V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_PACKAGE = reflection_pb2.DESCRIPTOR.package


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]
    """grpcio-health-checking's servicer with ``List``."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        """A snapshot of every status this server reports (a few services: never RESOURCE_EXHAUSTED)."""
        statuses = dict(self._server_status)  # the servicer's own table: what Check answers from
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=s) for name, s in statuses.items()}
        )


def _renamed(type_name: str) -> str:
    prefix = f".{_V1ALPHA_PACKAGE}."
    return f".{V1_PACKAGE}.{type_name[len(prefix) :]}" if type_name.startswith(prefix) else type_name


def _rename_messages(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    for message in messages:
        for field in message.field:
            if field.type_name:  # scalars have none (assigning even "" would set one)
                field.type_name = _renamed(field.type_name)
        _rename_messages(message.nested_type)


def v1_file() -> descriptor_pb2.FileDescriptorProto:
    """``grpc/reflection/v1/reflection.proto``: v1alpha's file under the v1 package."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = V1_FILE
    proto.package = V1_PACKAGE
    proto.ClearField("options")
    _rename_messages(proto.message_type)
    for service in proto.service:
        for method in service.method:
            method.input_type = _renamed(method.input_type)
            method.output_type = _renamed(method.output_type)
    return proto


def _add_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(V1_FILE)  # another library (a later grpcio-reflection) added it
    except KeyError:
        pool.AddSerializedFile(v1_file().SerializeToString())


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha on ``server``, listing ``service_names`` and both reflection
    services; descriptors come from the default pool, where the generated code put them."""
    _add_v1_file(descriptor_pool.Default())
    servicer = reflection.aio.ReflectionServicer([*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)  # v1alpha
    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))
