"""A grpc.aio server with On-Call's IngestService messages that stores nothing: the gRPC baseline.

Same service, same messages, same event loop (uvloop when installed) and the
same server options as ``oncall-server serve``; each call is parsed by the
generated code and answered with a constant result per alert, so the only
difference to our server is the work our server does.

    python bench/noop_grpc.py --port 50099
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc

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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.port))
    except ImportError:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
