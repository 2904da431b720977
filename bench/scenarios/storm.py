"""Scenario 2: an alert storm, gRPC ``IngestAlert`` with one dedup key for every alert (each a
duplicate of the first), against the no-op gRPC server."""

from __future__ import annotations

from context import Context
from measure import RunResult

from scenarios.comparison import grpc_vs_noop


def run(ctx: Context) -> RunResult:
    return grpc_vs_noop(ctx, "noop gRPC", mode="unary", keys="one")
