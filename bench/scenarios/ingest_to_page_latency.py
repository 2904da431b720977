"""Scenario 5: ingest -> first page. Open-loop gRPC ``IngestAlert`` at half of scenario 1's rate,
a distinct dedup key per alert that is also its title; latency = the page's arrival at the webhook
receiver - the call's start."""

from __future__ import annotations

import time
from typing import Any

from context import Context, log
from loadgen import LoadSettings, measure_paced, py_spy
from measure import RunResult, alerts_per_commit, grpc_on_load
from oncall_target import OncallServer
from sysinfo import core_pct, percentile
from targets import PageReceiver

from scenarios import paging


def run(ctx: Context) -> RunResult:
    return paging.each_backend(ctx, _measure, _figures)


def _measure(ctx: Context, backend: str, receiver: PageReceiver) -> tuple[str, dict[str, Any]]:
    rate = half_max_rate(ctx, backend)  # before the paging server: it may measure on a server of its own
    with paging.server_paging(ctx, backend, receiver) as server:
        return server.name, page_latency(ctx, server, receiver, rate)


def _figures(name: str, r: dict[str, Any]) -> dict[str, float | None]:
    return {
        f"{name} ingest -> page p99 ms": r["p99_ms"],
        f"{name} ingest -> page p50 ms": r["p50_ms"],
        f"{name} pages / alerts sent": r["pages"] / r["sent"] if r["sent"] else None,
    }


def note(ctx: Context, runs: int) -> str:
    """How the rate was chosen and what the latency is, for the report under the table."""
    a = ctx.args
    rates = "; ".join(
        f"oncall/{b}: {ctx.max_rate[b] / 2:,.0f} alerts/s = half of {ctx.max_rate[b]:,.0f} from "
        f"{ctx.max_rate_source.get(b, '?')}"
        for b in ctx.backends
        if b in ctx.max_rate
    )
    if a.page_rate:
        rates = f"{a.page_rate:,.0f} alerts/s on every backend (--page-rate; not half of scenario 1's)"
    return (
        f"Open-loop gRPC IngestAlert from one process, a new incident per alert, {a.warmup:g} s warm-up "
        f"+ {a.duration:g} s measured, {runs} run(s), a fresh server per run. Offered rate: {rates}. "
        "Page latency = arrival at the webhook receiver (wall clock) - the IngestAlert call's start; a "
        f"page missing after {a.page_drain:g} s counts as infinite. CPU is over the measured window."
    )


def half_max_rate(ctx: Context, backend: str) -> float:
    """Half of scenario 1's median alerts/s for this backend; measured briefly if 1 did not run.
    ``--page-rate`` overrides it (a fixed rate, e.g. to see the latency of a lightly loaded server)."""
    if ctx.args.page_rate:
        ctx.max_rate[backend] = 2 * ctx.args.page_rate
        ctx.max_rate_source[backend] = "--page-rate (fixed)"
        return float(ctx.args.page_rate)
    if backend not in ctx.max_rate:
        load = LoadSettings(
            warmup=min(1.0, ctx.load.warmup),
            duration=min(5.0, ctx.load.duration),
            grpc_clients=ctx.load.grpc_clients,
            grpc_concurrency=ctx.load.grpc_concurrency,
        )
        log(f"  scenario 1 did not run: measuring the maximum rate of oncall/{backend} ({load.duration:g} s)")
        with ctx.ours(backend) as server:
            m = grpc_on_load(ctx, f"{server.name} max (scenario 1 load)", server, load, keys="distinct")
        ctx.max_rate[backend] = m["alerts_per_s"]
        ctx.max_rate_source[backend] = (
            f"a {load.duration:g} s scenario-1 window in this scenario "
            f"({ctx.load.grpc_clients} x {ctx.load.grpc_concurrency} calls in flight)"
        )
    return ctx.max_rate[backend] / 2


def page_latency(ctx: Context, server: OncallServer, receiver: PageReceiver, rate: float) -> dict[str, Any]:
    label = server.name
    receiver.reset()
    profile_path = ctx.profile_path(label)
    before = server.ingest_batches()
    result = measure_paced(
        server.grpc_target,
        server.key,
        rate=rate,
        prefix=ctx.prefix(),
        warmup=ctx.load.warmup,
        duration=ctx.load.duration,
        watch=lambda: paging.watched_with_receiver(server, receiver),
        profile=(lambda seconds: py_spy(server.pid, seconds, profile_path)) if profile_path else None,
    )
    per_commit = alerts_per_commit(server, before)
    window = [row for row in result["window"] if row[2] is not None]  # answered calls
    expected = result["warmup_sent"] + result["sent"] - result["errors"]
    drain = ctx.args.page_drain
    paging.wait_pages(receiver, expected, time.monotonic() + drain, stalled_after=min(drain, 10.0))
    got = receiver.records()
    arrival = {title: at for at, title, _nid, _iid in got["records"]}
    page_ms = [(arrival[title] - sent) * 1000 for title, sent, _ms in window if title in arrival]
    missing = len(window) - len(page_ms)
    started = window[0][1] if window else 0.0
    worst = [((arrival[t] - sent) * 1000, sent - started) for t, sent, _ms in window if t in arrival]
    cpu = result["cpu"]
    seconds = result["window_seconds"]
    sent = len(window)
    calls = sorted(ms for _t, _s, ms in window)
    m: dict[str, Any] = {
        "alerts": sent,
        "seconds": seconds,
        "alerts_per_s": sent / seconds if seconds else 0.0,
        "target_rate": rate,
        "sent": sent,
        "pages": len(page_ms),
        "missing": missing,
        **paging.latencies(page_ms, missing),
        "call_p50_ms": percentile(calls, 50),
        "call_p99_ms": percentile(calls, 99),
        **paging.cpu_per_page(cpu, sent),
        "cpu_seconds": {
            **{k: round(v, 3) for k, v in cpu.items()},
            "generator": round(result["cpu_seconds"], 3),
        },
        "core_pct": {**core_pct(cpu, seconds), "generator": round(100 * result["cpu_seconds"] / seconds, 1)},
        "errors": result["errors"],
        "error_sample": result["error_sample"],
        "duplicates": got["duplicates"],
        "pacer_late_ms_max": result["pacer_late_ms_max"],
        "warmup_sent": result["warmup_sent"],
        "rss_bytes": server.rss(),
        "alerts_per_commit": per_commit,
        "worst": paging.latest(worst, "sent_at_s"),
        **paging.delivery_facts(server),
    }
    c = m["core_pct"]
    log(
        f"    {label:20} {rate:7,.0f} alerts/s offered, pages {m['pages']:,}/{sent:,}  page p50 "
        f"{m['p50_ms']:7.1f} ms  p99 {m['p99_ms']:7.1f} ms  max {m['max_ms']:7.1f} ms  (ingest call p99 "
        f"{m['call_p99_ms']:.1f} ms)  cores: server {c.get('server', 0):.0f}% "
        f"redis {c.get('redis', 0):.0f}% db {c.get('db', 0):.0f}% receiver {c.get('receiver', 0):.0f}% "
        f"generator {c.get('generator', 0):.0f}%  {per_commit} alerts/commit"
        + (f"  ERRORS {m['errors']}: {m['error_sample']}" if m["errors"] else "")
        + paging.retried(m)
    )
    paging.check_pages(
        server, paged=bool(page_ms or not sent), nothing=f"no page reached the receiver in {drain:g} s"
    )
    if missing:
        ctx.note(
            f"scenario 5, {label}: {missing} of {sent} alerts had no page within {drain:g} s (counted as inf)"
        )
    return m
