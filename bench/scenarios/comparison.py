"""What scenarios 1-4b share: our server measured against a baseline (a no-op server, Alertmanager)
back to back in one run, and the ratio of their alerts/s."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from context import APT_HINT, Context
from measure import RunResult, grpc_on, ratio, wrk_on
from oncall_target import OncallServer
from wrk_load import wrk_available


def ours_and_grouped(ctx: Context, backend: str) -> Sequence[contextlib.AbstractContextManager[OncallServer]]:
    """Our server as configured by bootstrap (every alert a new incident), then with time grouping
    (the workload Alertmanager's figures are of) unless ``--no-grouped``."""
    return [ctx.ours(backend)] + ([ctx.ours_grouped(backend)] if ctx.args.grouped else [])


def grpc_vs_noop(ctx: Context, baseline: str, *, grouped: bool = False, **kw: Any) -> RunResult:
    """The no-op gRPC server as ``baseline``, then our server on each backend under the same load;
    ``grouped``: also each backend with its service grouping the alerts (see ``ours_and_grouped``)."""
    assert ctx.noop_grpc is not None
    m = {baseline: grpc_on(ctx, baseline, ctx.noop_grpc, **kw)}
    ratios: dict[str, float | None] = {}
    for backend in ctx.backends:
        for serving in ours_and_grouped(ctx, backend) if grouped else [ctx.ours(backend)]:
            with serving as server:
                m[server.name] = grpc_on(ctx, server.name, server, **kw)
            ratios[f"{server.name} / {baseline}"] = ratio(m, server.name, baseline)
    return m, ratios


def http_baselines(ctx: Context, m: dict[str, dict[str, Any]], *, batch: int, suffix: str = "") -> None:
    """The no-op aiohttp handler, then Alertmanager when installed, under wrk (``batch`` alerts a request)."""
    assert ctx.noop_http is not None
    noop, am_label = f"noop aiohttp{suffix}", f"Alertmanager{suffix}"
    m[noop] = wrk_on(ctx, noop, ctx.noop_http, fmt="oncall", batch=batch)
    with ctx.alertmanager() as am:
        if am is not None:
            m[am_label] = wrk_on(ctx, am_label, am, fmt="alertmanager", batch=batch)


def need_wrk(ctx: Context) -> bool:
    if wrk_available():
        return True
    ctx.note(f"wrk not installed: HTTP scenarios are skipped ({APT_HINT})")
    return False
