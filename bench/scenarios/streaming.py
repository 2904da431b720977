"""Scenario 4b: client-streaming ``IngestAlerts``, streams of ``--stream-messages`` messages of one
alert each, against the same no-op gRPC server streaming; with the grouped rows."""

from __future__ import annotations

from context import Context
from measure import RunResult

from scenarios.comparison import grpc_vs_noop


def run(ctx: Context) -> RunResult:
    return grpc_vs_noop(
        ctx,
        "noop streaming",
        grouped=True,
        mode="stream",
        keys="distinct",
        batch=1,
        messages=ctx.args.stream_messages,
    )
