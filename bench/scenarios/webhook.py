"""Scenario 3: the HTTP webhook, one alert per request from wrk, against the no-op aiohttp handler
and Alertmanager; with the grouped rows."""

from __future__ import annotations

from typing import Any

from context import Context
from measure import RunResult, ratio, wrk_on

from scenarios.comparison import http_baselines, need_wrk, ours_and_grouped


def run(ctx: Context) -> RunResult:
    m: dict[str, dict[str, Any]] = {}
    ratios: dict[str, float | None] = {}
    if not need_wrk(ctx):
        return m, ratios
    http_baselines(ctx, m, batch=1)
    for backend in ctx.backends:
        for serving in ours_and_grouped(ctx, backend):
            with serving as server:
                m[server.name] = wrk_on(ctx, server.name, server, fmt="oncall", batch=1)
            ratios[f"{server.name} / noop aiohttp"] = ratio(m, server.name, "noop aiohttp")
            ratios[f"{server.name} / Alertmanager"] = ratio(m, server.name, "Alertmanager")
    return m, ratios
