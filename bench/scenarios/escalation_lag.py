"""Scenario 6: escalation lag with N pending steps. Seed the incidents in SQL while the server is
stopped, start it (its rebuild loads every pending step into Redis), and time the measured steps'
pages against their due times."""

from __future__ import annotations

import time
from typing import Any

from context import Context, log
from loadgen import py_spy
from measure import RunResult
from oncall_target import OncallServer
from paging_bench import FAR_PREFIX, MEASURED_PREFIX, seed_pending, startup_timings
from reporting.formats import num
from sysinfo import core_pct, cpu_between, cpu_seconds, sample_roles
from targets import PageReceiver

from scenarios import paging


def run(ctx: Context) -> RunResult:
    return paging.each_backend(ctx, _measure, _figures)


def _measure(ctx: Context, backend: str, receiver: PageReceiver) -> tuple[str, dict[str, Any]]:
    # INFO: the scheduler's start-up lines the rebuild is timed from
    with paging.server_paging(ctx, backend, receiver, ONCALL_LOG_LEVEL="INFO") as server:
        return server.name, escalation_lag(ctx, server, receiver)


def _figures(name: str, r: dict[str, Any]) -> dict[str, float | None]:
    return {
        f"{name} escalation lag p99 ms": r["p99_ms"],
        f"{name} escalation lag p50 ms": r["p50_ms"],
        f"{name} pages / steps due": r["pages"] / r["due"] if r["due"] else None,
        f"{name} rebuild s ({r['pending']:,} pending)": r["rebuild_s"],
    }


def note(ctx: Context, runs: int) -> str:
    """How the steps were seeded and what the lag is, for the report under the table."""
    a = ctx.args
    return (
        f"{a.pending:,} triggered incidents seeded in SQL (Core, chunks of 5,000) with the server "
        f"stopped, each with its first escalation step pending: {a.pending_measured:,} due evenly over "
        f"{a.pending_window:g} s from {a.pending_start:g} s after the seeding ended (≈ server start), "
        f"the rest 1-2 h later. {runs} run(s) per backend, a fresh database per run. Lag = page arrival "
        "- due time; rebuild = the scheduler's start-up load of every pending step into Redis "
        "(server log: "
        "'scheduler running' to 'scheduler set rebuilt'); server ready = process start to /healthz 200. "
        "CPU is from the first due step until the last page (or the drain timeout)."
    )


def escalation_lag(ctx: Context, server: OncallServer, receiver: PageReceiver) -> dict[str, Any]:
    a = ctx.args
    label = server.name
    server.stop_process()
    log(f"    seeding {a.pending:,} pending escalation steps ({a.pending_measured:,} due in the window) ...")
    seed = seed_pending(
        server.sqlalchemy_url,
        server.creds["tenant_id"],
        server.creds["service_id"],
        total=a.pending,
        measured=a.pending_measured,
        start_in=a.pending_start,
        window=a.pending_window,
    )
    log(f"    seeded in {seed['seconds']:.1f} s; starting {label} ...")
    receiver.reset()
    server.launch()
    # Start-up: wait for the rebuild's log line (or the window), then the CPU it took from process start.
    timings = startup_timings(server.log)
    while timings["rebuilt_at"] is None and time.time() < seed["due_start"] - 0.5:
        time.sleep(0.05)
        timings = startup_timings(server.log)
    startup_cpu = cpu_seconds(server.pid)
    rebuilt_at = timings["rebuilt_at"]
    if rebuilt_at is None:
        ctx.note(f"scenario 6, {label}: no 'scheduler set rebuilt' log line before the window started")
    elif rebuilt_at > seed["due_start"]:
        ctx.note(f"scenario 6, {label}: the rebuild ended after the first step was due")
    due_set = server.redis_client().zcard("oncall:{sched}:due")

    time.sleep(max(0.0, seed["due_start"] - 0.2 - time.time()))
    pids = paging.watched_with_receiver(server, receiver)
    before, began = sample_roles(pids), time.monotonic()
    profile_path = ctx.profile_path(label)
    spy = (
        py_spy(server.pid, seed["due_end"] - time.time() + 1.0, profile_path)
        if profile_path and server.proc
        else None
    )
    drain = a.page_drain
    until = time.monotonic() + (seed["due_end"] - time.time()) + drain
    stopped = paging.wait_pages(receiver, a.pending_measured, until, stalled_after=drain)
    # CPU over the due window (and any catch-up after it), not the idle wait for stragglers.
    cpu = cpu_between(before, sample_roles(pids))
    seconds = stopped - began
    if spy is not None:
        spy.wait(60)
    got = receiver.records()
    lags, early, worst = [], 0, []
    for arrived, title, _nid, _iid in got["records"]:
        if title.startswith(MEASURED_PREFIX):
            due_s = int(title.split(":")[1]) / 1000
            lags.append((arrived - due_s) * 1000)
            worst.append((lags[-1], due_s - seed["due_start"]))
        elif title.startswith(FAR_PREFIX):
            early += 1
    missing = a.pending_measured - len(lags)
    m: dict[str, Any] = {
        "alerts": len(lags),
        "seconds": round(seconds, 3),
        "alerts_per_s": a.pending_measured / a.pending_window if a.pending_window else 0.0,
        "pending": a.pending,
        "due": a.pending_measured,
        "pages": len(lags),
        "missing": missing,
        "early_pages": early,
        **paging.latencies(lags, missing),
        **paging.cpu_per_page(cpu, len(lags)),
        "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()},
        "core_pct": core_pct(cpu, seconds),
        "errors": early + got["duplicates"],
        "error_sample": f"{early} pages of steps not yet due" if early else "",
        "duplicates": got["duplicates"],
        "seed_seconds": seed["seconds"],
        "ready_s": server.ready_at - server.launched_at,
        "rebuild_s": rebuilt_at - timings["scheduler_running_at"] if rebuilt_at else None,
        "rebuilt_after_launch_s": rebuilt_at - server.launched_at if rebuilt_at else None,
        "restored": timings["restored"],
        "startup_cpu_s": startup_cpu,
        "due_set_at_window": due_set,
        "window_s": a.pending_window,
        "rss_bytes": server.rss(),
        "worst": paging.latest(worst, "due_at_s"),
        **paging.delivery_facts(server),
    }
    c = m["core_pct"]
    log(
        f"    {label:20} pages {m['pages']:,}/{m['due']:,} with {a.pending:,} pending  "
        f"lag p50 {m['p50_ms']:7.1f} ms  p99 {m['p99_ms']:7.1f} ms  max {m['max_ms']:7.1f} ms  "
        f"ready {m['ready_s']:.1f} s, rebuild "
        f"{num(m['rebuild_s'], '.2f')} s ({num(m['restored'])} restored; due set {due_set:,})  cores: "
        f"server {c.get('server', 0):.0f}% redis {c.get('redis', 0):.0f}% db {c.get('db', 0):.0f}% "
        f"receiver {c.get('receiver', 0):.0f}%"
        + (f"  early pages {early}" if early else "")
        + paging.retried(m)
    )
    paging.check_pages(server, paged=bool(lags), nothing="no escalation page reached the receiver")
    if missing:
        ctx.note(
            f"scenario 6, {label}: {missing} of {m['due']} due steps paged nothing in time (counted as inf)"
        )
    return m
