"""Scenario 8: fair ingest (issue 19): one tenant's alert storm must never delay another tenant's page.

One fresh server per backend with two tenants: **B**, the bootstrap tenant, whose service pages the
webhook receiver (``paging_bench.configure_paging``, as scenario 5), and **A**, a second tenant made
by ``oncall-server bootstrap --tenant ...`` before the server starts, with its own service and
webhook integration (its bootstrap policy pages a user through the ``log`` channel). B sends
``--fair-rate`` (20) alerts/s, one per ``POST /api/webhooks/ingest``, open loop, a new incident each
(``bench/load_webhook_paced.py``); A floods with wrk (``bench/wrk_ingest.lua``, answers counted by
status). Phases, each ``--warmup`` + ``--duration`` with both loads started together:

* ``B alone`` (A quiet), B's reference latencies;
* per flood of ``--fair-floods`` (alerts per request x connections; 1x64, 100x64, 100x256):
  ``A <flood> + B`` (B keeps sending) and then ``A <flood> alone`` (B quiet), back to back.

While B sends, the same process acknowledges B's incidents through gRPC ``AcknowledgeIncident`` with
B's API token, ``ACK_RATE`` (2) calls/s open loop, each on the oldest incident of B that has already
paged the receiver (so no measured page is cancelled by it): B's ack latency per phase.

B connects from 127.0.0.2 and A's wrk from 127.0.0.1 (the server listens on 127.0.0.1): two clients,
each with its own per-address connection budget, as two tenants' senders would be.

Between phases the harness waits for B's pages and for the server to go idle (wrk's abandoned
requests are still ingested). After the last phase: A's alerts answered 2xx (all phases, warm-ups
included) against the alerts stored for A's service, and the same for B.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from context import Context, log, new_server
from fair_load import Flood, Flooding, Steady, parse_floods, run_phase
from loadgen import LoadError, wait_idle
from measure import RunResult, loadavg_1m
from oncall_target import OncallServer
from paging_bench import configure_paging
from processes import StartError, tail
from sysinfo import core_pct, percentile
from targets import PageReceiver

from scenarios import paging
from scenarios.comparison import need_wrk

FLOOD_TENANT = ("bench-flood-a", "A flood", "A webhook")  # tenant, service, integration
QUIET = "B alone"
# B's connections come from another loopback address than wrk's (A's), as two tenants' senders would:
# the server's per-address connection limit (ONCALL_HTTP_MAX_CONNECTIONS_PER_CLIENT, 256) would
# otherwise count B's connections in A's budget and answer them 503 at 256 connections of A.
B_SOURCE = "127.0.0.2"
# The ratios of a phase (``<target> <phase>: <what>``), judged in reporting/goals.py by suffix.
B_P99_RATIO = "B ingest p99 / B alone"
B_PAGE_RATIO = "B ingest->page p99 / B alone"
B_REFUSED = "B refused"
B_ACK_RATIO = "B ack p99 / B alone"
A_RATIO = "A accepted with B / A alone"
DEFAULT_FLOODS = "1x64,100x64,100x256"
# B's acknowledgements (issue 19: acknowledgements are never queued behind another tenant's backlog):
# AcknowledgeIncident over gRPC with B's API token, open loop, on B's incidents that already paged.
ACK_RATE = 2.0
QUICK_FLOODS = "100x8"  # the smoke pass (CI): one flood, so the scenario stays near 20 s


def floods(ctx: Context) -> list[Flood]:
    return parse_floods(ctx.args.fair_floods or (QUICK_FLOODS if ctx.args.quick else DEFAULT_FLOODS))


def run(ctx: Context) -> RunResult:
    m: dict[str, dict[str, Any]] = {}
    figures: dict[str, float | None] = {}
    if not need_wrk(ctx):
        return m, figures
    with paging.receiver_running() as receiver:
        for backend in ctx.backends:
            with two_tenants(ctx, backend, receiver) as (server, flood_tenant):
                measure_backend(ctx, server, flood_tenant, receiver, m, figures)
    return m, figures


def note(ctx: Context, runs: int) -> str:
    a = ctx.args
    flood_list = ", ".join(f.label for f in floods(ctx))
    return (
        f"Two tenants on one fresh server per backend and run ({runs} run(s)). B: open-loop webhook POSTs, "
        f"one alert each, {a.fair_rate:g}/s, a new incident and a page to the receiver per alert. A: wrk "
        f"(1 thread), xN = alerts per request, cN = connections ({flood_list}). Each phase {a.warmup:g} s "
        f"warm-up + {a.duration:g} s measured, both loads started together; B's figures are of the requests "
        "sent in the window, A's of the answers that arrived in it. B ingest = send -> HTTP answer (2xx; "
        "no answer = inf), B page = arrival at the receiver - send (no page, also for a refused alert, "
        f"after {a.page_drain:g} s = inf). B refused = non-2xx / no answer. B ack = gRPC AcknowledgeIncident "
        f"with B's API token, {ACK_RATE:g}/s open loop from the same process, each on the oldest of B's "
        "incidents that already paged: send -> answer (OK; no answer = inf), errors = non-OK. "
        "A accepted = 2xx answers x alerts per request / window; "
        "A refused = 429 / 503 / other non-2xx (+ socket errors); wrk "
        "ignores Retry-After and sends the next request at once (a worst-case sender). "
        "Ratios are within the run: B's p99 over B alone's, A's alerts/s with B over A alone (same flood, "
        "measured right after). B connects from 127.0.0.2, A from 127.0.0.1 (two clients for the server's "
        "per-address connection limit). CPU over the window."
    )


# --- the server with two tenants -----------------------------------------------------------------------


def bootstrap_tenant(server: OncallServer, tenant: str, service: str, integration: str) -> dict[str, str]:
    """``oncall-server bootstrap`` for another tenant on the server's database (before it starts)."""
    args = ["bootstrap", "--json", "--tenant", tenant, "--service", service, "--integration", integration]
    boot = subprocess.run(
        [*server.cli, *args],
        env=server.env,
        capture_output=True,
        text=True,
        cwd=server.data_dir,
    )
    if boot.returncode != 0:
        raise StartError(f"oncall-server bootstrap --tenant {tenant} failed:\n{boot.stderr}")
    creds: dict[str, str] = json.loads(boot.stdout)
    if creds["tenant_id"] == server.creds["tenant_id"]:
        raise StartError(f"bootstrap --tenant {tenant} answered the first tenant")
    return creds


@contextlib.contextmanager
def two_tenants(
    ctx: Context, backend: str, receiver: PageReceiver
) -> Iterator[tuple[OncallServer, dict[str, str]]]:
    """A fresh server: its bootstrap tenant (B) pages ``receiver``; a second tenant (A) floods."""
    ctx.release(backend)  # never next to a reused server: they would share the Redis db on PostgreSQL
    server = new_server(ctx, backend)
    server.extra_env = {**paging.PAGING_ENV, **server.extra_env}
    log(f"  starting {server.name} (tenant B pages the receiver, tenant A floods) ...")
    try:
        server.prepare()
        flood_tenant = bootstrap_tenant(server, *FLOOD_TENANT)
        server.launch()
        configure_paging(
            server.grpc_target, server.creds["api_token"], server.creds["service_id"], receiver.url
        )
    except BaseException:
        server.stop()
        raise
    try:
        yield server, flood_tenant
    finally:
        server.stop()


# --- the phases ----------------------------------------------------------------------------------------


def measure_backend(
    ctx: Context,
    server: OncallServer,
    flood_tenant: dict[str, str],
    receiver: PageReceiver,
    m: dict[str, dict[str, Any]],
    figures: dict[str, float | None],
) -> None:
    name = server.name
    answered = {"A": 0, "B": 0}  # alerts answered 2xx over every phase (warm-ups included)
    quiet = phase(ctx, server, flood_tenant, receiver, steady=True, flood=None, answered=answered)
    m[f"{name} {QUIET}"] = quiet
    for flood in floods(ctx):
        both_label, alone_label = f"{name} A {flood.label} + B", f"{name} A {flood.label} alone"
        both = phase(ctx, server, flood_tenant, receiver, steady=True, flood=flood, answered=answered)
        m[both_label] = both
        alone = phase(ctx, server, flood_tenant, receiver, steady=False, flood=flood, answered=answered)
        m[alone_label] = alone
        figures[f"{both_label}: {B_P99_RATIO}"] = _over(both["p99_ms"], quiet["p99_ms"])
        figures[f"{both_label}: {B_PAGE_RATIO}"] = _over(both["b_page_p99_ms"], quiet["b_page_p99_ms"])
        figures[f"{both_label}: {B_REFUSED}"] = both["b_refused"] + both["b_no_answer"]
        figures[f"{both_label}: {B_ACK_RATIO}"] = _over(both["b_ack_p99_ms"], quiet["b_ack_p99_ms"])
        figures[f"{both_label}: {A_RATIO}"] = _over(both["a_alerts_per_s"], alone["a_alerts_per_s"])
    figures[f"{name} {QUIET}: {B_REFUSED}"] = quiet["b_refused"] + quiet["b_no_answer"]
    waited = wait_idle(lambda: server.watched(), timeout=ctx.args.settle_timeout, interval=0.5)
    stored = stored_alerts(server, flood_tenant)
    for who in ("A", "B"):
        figures[f"{name} {who}: alerts answered 2xx (all phases)"] = answered[who]
        figures[f"{name} {who}: alerts stored for its service"] = stored[who]
    log(
        f"    {name}: A answered 2xx {answered['A']:,}, stored {stored['A']:,}; "
        f"B answered 2xx {answered['B']:,}, stored {stored['B']:,} (after {waited:g} s to go idle)"
    )
    if stored["A"] < answered["A"] or stored["B"] < answered["B"]:
        ctx.note(
            f"scenario 8, {name}: fewer alerts stored than answered 2xx (A {stored['A']:,} of "
            f"{answered['A']:,}, B {stored['B']:,} of {answered['B']:,})"
        )


def stored_alerts(server: OncallServer, flood_tenant: dict[str, str]) -> dict[str, int]:
    """Alerts stored for A's and B's services (SQL count on the server's database)."""
    ids = {"A": flood_tenant["service_id"], "B": server.creds["service_id"]}
    rows = server.sql(
        "SELECT service_id, count(*) FROM alerts WHERE service_id IN "
        f"('{ids['A']}', '{ids['B']}') GROUP BY service_id"
    )
    counts = {str(service): int(n) for service, n in rows}
    return {who: counts.get(service, 0) for who, service in ids.items()}


def _over(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or value != value or base != base or base == 0:
        return None
    return value / base


def phase(
    ctx: Context,
    server: OncallServer,
    flood_tenant: dict[str, str],
    receiver: PageReceiver,
    *,
    steady: bool,
    flood: Flood | None,
    answered: dict[str, int],
) -> dict[str, Any]:
    """One phase: B's steady load and/or A's flood; B's pages drained, the server idle again after."""
    label = f"{server.name} " + (
        QUIET if flood is None else f"A {flood.label} " + ("+ B" if steady else "alone")
    )
    receiver.reset()
    prefix = ctx.prefix()
    watch = lambda: paging.watched_with_receiver(server, receiver)  # noqa: E731
    result = run_phase(
        steady=Steady(
            server.http_url,
            server.key,
            ctx.args.fair_rate,
            f"{prefix}-b",
            B_SOURCE,
            ack_rate=ACK_RATE,
            grpc_target=server.grpc_target,
            api_token=server.creds["api_token"],
            records_url=receiver.http("/records"),
        )
        if steady
        else None,
        flooding=Flooding(
            server.http_url, flood_tenant["integration_key"], flood, f"{prefix}-a", ctx.load.wrk_threads
        )
        if flood is not None
        else None,
        warmup=ctx.load.warmup,
        duration=ctx.load.duration,
        watch=watch,
    )
    seconds = result["window_seconds"]
    m: dict[str, Any] = {"seconds": seconds, "phase": label.split(" ", 1)[1]}
    m.update(_steady_figures(ctx, receiver, result["steady"], answered))
    m.update(_flood_figures(result["wrk"], flood, seconds, answered))
    cpu = result["cpu"]
    accepted = (m.get("a_alerts_per_s") or 0.0) * seconds + (m.get("b_ok") or 0)
    m["server_us_per_alert"] = 1e6 * cpu.get("server", 0.0) / accepted if accepted else float("nan")
    m["all_us_per_alert"] = (
        1e6 * sum(v for k, v in cpu.items() if k != "receiver") / accepted if accepted else float("nan")
    )
    m["alerts_per_s"] = m.get("a_alerts_per_s", float("nan"))
    m["core_pct"] = {
        **core_pct(cpu, seconds),
        "generator": round(100 * result["generator_cpu_s"] / seconds, 1),
    }
    m["errors"] = (
        m.get("b_refused", 0)
        + m.get("b_no_answer", 0)
        + m.get("a_refused_requests", 0)
        + m.get("a_socket_errors", 0)
    )
    m["rss_bytes"] = server.rss()
    m["loadavg_1m"] = loadavg_1m()
    m["idle_wait_s"] = wait_idle(watch, timeout=ctx.args.settle_timeout, interval=0.5)
    m["server_log_problems"] = server.log_problems()
    _log(label, m)
    if server.proc is None or server.proc.poll() is not None:
        raise LoadError(f"{label}: the server process died:\n{tail(server.log)}")
    # Refusals are figures (B's must be 0); only a set-up that never worked fails the measurement.
    if steady and m["b_ack_errors"]:
        ctx.note(
            f"scenario 8, {label}: {m['b_ack_errors']} acknowledgement(s) failed ({m['b_ack_error_sample']})"
        )
    if steady and not m["b_ok"]:
        if flood is None:
            raise LoadError(f"{label}: no alert of tenant B was accepted ({m['b_error_sample']})")
        ctx.note(f"scenario 8, {label}: no alert of tenant B was accepted ({m['b_error_sample']})")
    if flood is not None and not m["a_ok_total"]:
        if not m["a_refused_total"]:
            raise LoadError(f"{label}: tenant A's wrk got no answer ({m['a_socket_errors']} socket errors)")
        ctx.note(f"scenario 8, {label}: every request of tenant A was refused")
    return m


def _steady_figures(
    ctx: Context, receiver: PageReceiver, steady: dict[str, Any] | None, answered: dict[str, int]
) -> dict[str, Any]:
    """B: ingest latency (2xx; no answer = inf), refusals, and each window alert's page latency."""
    nan = float("nan")
    if steady is None:
        return {"p50_ms": nan, "p99_ms": nan, "b_ack_p99_ms": nan}
    window = steady["window"]
    ok = [row for row in window if 200 <= row[3] < 300]
    no_answer = sum(1 for row in window if row[2] is None)
    answered["B"] += len(ok) + steady["warmup_ok"]
    expected = len(ok) + steady["warmup_ok"]
    drain = ctx.args.page_drain
    paging.wait_pages(receiver, expected, time.monotonic() + drain, stalled_after=min(drain, 10.0))
    got = receiver.records()
    arrival = {title: at for at, title, _nid, _iid in got["records"]}
    page_ms = [(arrival[title] - sent) * 1000 for title, sent, _ms, _status in window if title in arrival]
    missing = len(window) - len(page_ms)  # refused alerts too: they never page
    ingest_ms = sorted(row[2] for row in ok) + [math.inf] * no_answer
    pages = paging.latencies(page_ms, missing)
    acks = steady["ack_window"]
    ack_ok = sorted(row[1] for row in acks if row[2] == "OK")
    ack_no_answer = sum(1 for row in acks if row[1] is None)
    ack_ms = ack_ok + [math.inf] * ack_no_answer  # an unanswered ack is infinitely late
    started = window[0][1] if window else 0.0
    worst = [((arrival[t] - sent) * 1000, sent - started) for t, sent, _ms, _st in window if t in arrival]
    return {
        "b_sent": len(window),
        "b_ok": len(ok),
        "b_refused": sum(1 for row in window if row[2] is not None and not 200 <= row[3] < 300),
        "b_no_answer": no_answer,
        "b_statuses": sorted({row[3] for row in window}),
        "b_error_sample": steady["error_sample"],
        "p50_ms": percentile(ingest_ms, 50),
        "p99_ms": percentile(ingest_ms, 99),
        "b_ingest_max_ms": ingest_ms[-1] if ingest_ms else nan,
        "b_pages": len(page_ms),
        "b_page_missing": missing,
        "b_page_p50_ms": pages["p50_ms"],
        "b_page_p99_ms": pages["p99_ms"],
        "b_page_max_ms": pages["max_ms"],
        "b_worst_pages": paging.latest(worst, "sent_at_s"),
        "b_duplicate_pages": got["duplicates"],
        "b_pacer_late_ms_max": steady["pacer_late_ms_max"],
        "b_warmup_sent": steady["warmup_sent"],
        "b_ack_sent": len(acks),
        "b_ack_ok": len(ack_ok),
        "b_ack_errors": len(acks) - len(ack_ok),
        "b_ack_no_answer": ack_no_answer,
        "b_ack_skipped": steady["ack_skipped"],
        "b_ack_statuses": sorted({row[2] for row in acks}),
        "b_ack_error_sample": steady["ack_error_sample"],
        "b_ack_p50_ms": percentile(ack_ms, 50),
        "b_ack_p99_ms": percentile(ack_ms, 99),
        "b_ack_max_ms": ack_ms[-1] if ack_ms else nan,
    }


def _flood_figures(
    wrk: dict[str, Any] | None, flood: Flood | None, seconds: float, answered: dict[str, int]
) -> dict[str, Any]:
    """A: alerts accepted (2xx) in the window per second, refusals by status, wrk's own counts."""
    if wrk is None or flood is None:
        return {}
    answered["A"] += wrk["ok_total"] * flood.batch
    socket_errors = wrk["connect"] + wrk["read"] + wrk["write"] + wrk["timeout"]
    return {
        "a_batch": flood.batch,
        "a_connections": flood.connections,
        "a_alerts_per_s": wrk["ok_window"] * flood.batch / seconds,
        "a_ok_requests": wrk["ok_window"],
        "a_429": wrk["r429_window"],
        "a_503": wrk["r503_window"],
        "a_other": wrk["other_window"],
        "a_refused_requests": wrk["r429_window"] + wrk["r503_window"] + wrk["other_window"],
        "a_retry_after": wrk["retry_after"],
        "a_socket_errors": socket_errors,
        "a_ok_total": wrk["ok_total"],
        "a_refused_total": wrk["r429_total"] + wrk["r503_total"] + wrk["other_total"],
        "a_p50_ms": wrk["p50_us"] / 1000,
        "a_p99_ms": wrk["p99_us"] / 1000,
        "a_requests_total": wrk["requests"],
    }


def _log(label: str, m: dict[str, Any]) -> None:
    c = m["core_pct"]
    parts = [f"    {label:34}"]
    if "b_sent" in m:
        parts.append(
            f"B ingest p50 {m['p50_ms']:6.1f} p99 {m['p99_ms']:7.1f} ms, "
            f"page p99 {m['b_page_p99_ms']:7.1f} ms, "
            f"refused {m['b_refused']}/{m['b_no_answer']} of {m['b_sent']}; "
            f"ack p50 {m['b_ack_p50_ms']:6.1f} p99 {m['b_ack_p99_ms']:7.1f} ms, "
            f"errors {m['b_ack_errors']} of {m['b_ack_sent']} (skipped {m['b_ack_skipped']});"
        )
    if "a_alerts_per_s" in m:
        parts.append(
            f"A {m['a_alerts_per_s']:8,.0f} alerts/s, 429 {m['a_429']} 503 {m['a_503']} other {m['a_other']} "
            f"sock {m['a_socket_errors']};"
        )
    parts.append(
        f"cores: server {c.get('server', 0):.0f}% redis {c.get('redis', 0):.0f}% db {c.get('db', 0):.0f}% "
        f"generator {c.get('generator', 0):.0f}%; idle after {m['idle_wait_s']:g} s"
    )
    log(" ".join(parts))
