"""One measurement of one target: the load run (gRPC processes or wrk), the server's figures next to
it (RSS, alerts per group commit, the load average), a log line, and the checks that make a
crashed server or an empty window a failure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from context import Context, log
from loadgen import LoadError, LoadSettings, measure_grpc
from oncall_target import OncallServer
from sysinfo import loadavg
from wrk_load import measure_wrk

# Per run of a scenario: the measurements by target label, and the figures by name (ratios, latencies).
RunResult = tuple[dict[str, dict[str, Any]], dict[str, float | None]]


def alerts_per_commit(server: OncallServer, before: tuple[float, float]) -> float | None:
    """Mean alerts per ingest group commit since ``before`` (warm-up included): small batches mean the
    per-commit cost is paid by few alerts."""
    commits, alerts = (now - then for now, then in zip(server.ingest_batches(), before, strict=True))
    return round(alerts / commits, 1) if commits else None


def loadavg_1m() -> float:
    return float(loadavg()[0])  # other work on a shared machine shows here


def _checked(
    ctx: Context, label: str, m: dict[str, Any], target: Any, before: tuple[float, float] | None = None
) -> dict[str, Any]:
    m["rss_bytes"] = target.rss()
    if before is not None:
        m["alerts_per_commit"] = alerts_per_commit(target, before)
    m["loadavg_1m"] = loadavg_1m()
    cores = m["core_pct"]
    log(
        f"    {label:34} {m['alerts_per_s']:>11,.0f} alerts/s  p50 {m['p50_ms']:7.2f} ms  "
        f"p99 {m['p99_ms']:7.2f} ms  server {m['server_us_per_alert']:7.1f} µs/alert  "
        f"cores: server {cores.get('server', 0):.0f}% redis {cores.get('redis', 0):.0f}% "
        f"db {cores.get('db', 0):.0f}% generator {cores.get('generator', 0):.0f}%"
        + (f"  {m['alerts_per_commit']} alerts/commit" if m.get("alerts_per_commit") else "")
        + (f"  ERRORS {m['errors']}: {m['error_sample']}" if m["errors"] else "")
    )
    alive = getattr(target, "proc", None) is None or target.proc.poll() is None
    if not alive:
        raise LoadError(f"{label}: the server process died (exit {target.proc.returncode})")
    if m["alerts"] == 0:
        if m["errors"] or not m.get("completed_calls"):
            raise LoadError(f"{label}: nothing was ingested ({m['errors']} errors: {m['error_sample']})")
        ctx.note(f"{label}: no call completed inside the {ctx.load.duration:g} s window (too short?)")
    return m


def _on(
    ctx: Context, label: str, target: Any, measure: Callable[..., dict[str, Any]], address: str, **kw: Any
) -> dict[str, Any]:
    """``measure`` at ``address``; our server is also given its key, profiled with --profile, and
    asked for its group commits."""
    ours = target.kind == "ours"
    before = target.ingest_batches() if ours else None
    m = measure(
        address,
        target.watched,
        key=target.key if ours else "",
        prefix=ctx.prefix(),
        load=ctx.load,
        profile=ctx.profile_path(label) if ours else None,
        profile_pid=target.pid if ours else None,
        **kw,
    )
    return _checked(ctx, label, m, target, before)


def grpc_on_load(ctx: Context, label: str, target: Any, load: LoadSettings, keys: str) -> dict[str, Any]:
    """Unary ``IngestAlert`` with other load settings than the scenario's (a shorter or longer window)."""
    saved, ctx.load = ctx.load, load
    try:
        return grpc_on(ctx, label, target, mode="unary", keys=keys)
    finally:
        ctx.load = saved


def grpc_on(ctx: Context, label: str, target: Any, **kw: Any) -> dict[str, Any]:
    return _on(ctx, label, target, measure_grpc, target.grpc_target, **kw)


def wrk_on(ctx: Context, label: str, target: Any, *, fmt: str, batch: int) -> dict[str, Any]:
    return _on(ctx, label, target, measure_wrk, target.http_url, fmt=fmt, batch=batch)


def ratio(m: dict[str, dict[str, Any]], num: str, den: str) -> float | None:
    """``num``'s alerts/s over ``den``'s in one run (None when either is missing or ``den`` is 0)."""
    if num in m and den in m and m[den]["alerts_per_s"]:
        rate: float = m[num]["alerts_per_s"]
        base: float = m[den]["alerts_per_s"]
        return rate / base
    return None
