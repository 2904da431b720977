"""Scenario 4: batches of 100 alerts, one 100-alert ``IngestAlerts`` message per gRPC call and the
webhook's JSON array of 100 per HTTP request, against Alertmanager (100 per request) and the no-op
servers; with the grouped rows."""

from __future__ import annotations

from context import Context
from measure import RunResult, grpc_on, ratio, wrk_on

from scenarios.comparison import http_baselines, need_wrk, ours_and_grouped


def run(ctx: Context) -> RunResult:
    assert ctx.noop_grpc is not None
    batch = {"mode": "batch", "keys": "distinct", "batch": 100, "messages": 1}
    m = {"noop gRPC x100": grpc_on(ctx, "noop gRPC x100", ctx.noop_grpc, **batch)}
    ratios: dict[str, float | None] = {}
    http = need_wrk(ctx)
    if http:
        http_baselines(ctx, m, batch=100, suffix=" x100")
    for backend in ctx.backends:
        for serving in ours_and_grouped(ctx, backend):
            with serving as server:
                g, h = f"{server.name} gRPC x100", f"{server.name} HTTP x100"
                m[g] = grpc_on(ctx, g, server, **batch)
                if http:
                    m[h] = wrk_on(ctx, h, server, fmt="oncall", batch=100)
            ratios[f"{g} / Alertmanager x100"] = ratio(m, g, "Alertmanager x100")
            ratios[f"{h} / Alertmanager x100"] = ratio(m, h, "Alertmanager x100")
            ratios[f"{g} / noop gRPC x100"] = ratio(m, g, "noop gRPC x100")
            ratios[f"{h} / noop aiohttp x100"] = ratio(m, h, "noop aiohttp x100")
    return m, ratios
