"""Scenario 1: gRPC ``IngestAlert``, one alert per call, a distinct dedup key per alert (every alert
opens an incident), against the no-op gRPC server. Its alerts/s is also the maximum rate scenario 5
offers half of."""

from __future__ import annotations

from typing import Any

from context import Context
from measure import RunResult

from scenarios.comparison import grpc_vs_noop


def run(ctx: Context) -> RunResult:
    return grpc_vs_noop(ctx, "noop gRPC", mode="unary", keys="distinct")


def remember_max_rate(ctx: Context, summary: dict[str, Any]) -> None:
    """Keep each backend's median alerts/s for scenario 5 (which offers half of it)."""
    for backend in ctx.backends:
        rate = summary["targets"].get(f"oncall/{backend}", {}).get("alerts_per_s", {})
        if rate.get("n"):
            ctx.max_rate[backend] = rate["median"]
            ctx.max_rate_source[backend] = "scenario 1 of this invocation (median)"
