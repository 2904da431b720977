"""A grpc.aio server with On-Call's IngestService messages that stores nothing: the gRPC baseline.

Same service, same messages, same event loop (uvloop when installed) and the
same server options as ``oncall-server serve``; each call is parsed by the
generated code and answered with a constant result per alert, so the only
difference to our server is the work our server does.

    python bench/noop_grpc.py --port 50099
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from child_process import serve_main, until_stopped

from oncall_server.api.v1 import alert_pb2, ingest_service_pb2, ingest_service_pb2_grpc

RESULT = ingest_service_pb2.IngestResult(
    outcome=alert_pb2.INGEST_OUTCOME_CREATED,
    alert_id="0190a8f2-0000-7000-8000-000000000000",
    incident_id="0190a8f2-0000-7000-8000-000000000001",
    dedup_key="noop",
)


class NoopIngest(ingest_service_pb2_grpc.IngestServiceServicer):
    async def IngestAlert(self, request: Any, context: Any) -> Any:
        return ingest_service_pb2.IngestAlertResponse(result=RESULT)

    async def IngestAlerts(self, request_iterator: AsyncIterator[Any], context: Any) -> Any:
        count = 0
        async for message in request_iterator:
            count += len(message.alerts)
        return ingest_service_pb2.IngestAlertsResponse(results=[RESULT] * count)

    async def CreateEscalation(self, request: Any, context: Any) -> Any:
        # Abstract in the generated base class; no benchmark calls it, it answers the constant result.
        return ingest_service_pb2.CreateEscalationResponse(result=RESULT)


async def serve(port: int) -> None:
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", 16 * 1024 * 1024), ("grpc.so_reuseport", 0)]
    )
    ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(NoopIngest(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"noop gRPC listening on port {bound}", flush=True)
    await until_stopped()
    await server.stop(grace=0.5)


if __name__ == "__main__":
    serve_main(__doc__, serve)
