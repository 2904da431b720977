"""Drives load from separate processes and measures the target around the measured window.

gRPC: several ``bench/load_grpc.py`` processes (grpc.aio, uvloop, many calls in flight).
HTTP: ``wrk`` with ``bench/wrk_ingest.lua`` (a fresh dedup key per alert).
Both report alerts/s, latency percentiles, the server's CPU (from /proc/<pid>/stat, every thread),
the CPU of its Redis and database processes, and the load generator's own CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sysinfo import CpuSample, percentile

BENCH = Path(__file__).resolve().parent
Watch = Callable[[], dict[str, list[int]]]


@dataclass
class LoadSettings:
    warmup: float = 2.0
    duration: float = 10.0
    grpc_clients: int = 2
    grpc_concurrency: int = 64
    wrk_threads: int = 1
    wrk_connections: int = 64


class LoadError(RuntimeError):
    pass


def _sample(pids: dict[str, list[int]]) -> dict[str, CpuSample]:
    return {role: CpuSample.take(p) for role, p in pids.items()}


def _cpu_between(
    before: dict[str, CpuSample], after_pids: dict[str, list[int]], after: dict[str, CpuSample]
) -> dict[str, float]:
    return {role: after[role].since(before.get(role, CpuSample({}))) for role in after_pids}


def _profile(pid: int, seconds: float, out: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy on the server for the measured window (only in a --profile pass: it costs CPU too).

    Non-blocking Python stacks by default; with BENCH_PYSPY_NATIVE=1 (``--profile-native``) C frames
    too (grpc, uvloop, sqlite3), which needs py-spy to pause the process for each sample.
    """
    native = os.environ.get("BENCH_PYSPY_NATIVE") == "1"
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if out is None or not os.access(spy, os.X_OK):
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            spy,
            "record",
            f"--pid={pid}",
            f"--duration={max(1, round(seconds))}",
            "--rate=100" if native else "--rate=200",
            "--format=raw",
            "--native" if native else "--nonblocking",
            f"--output={out}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _finish(
    alerts: int,
    seconds: float,
    latencies_ms: list[float],
    cpu: dict[str, float],
    generator_cpu: float,
    errors: int,
    error_sample: str,
    calls: int,
) -> dict[str, Any]:
    latencies_ms.sort()
    cores = {role: round(100 * value / seconds, 1) for role, value in cpu.items()}
    cores["generator"] = round(100 * generator_cpu / seconds, 1)
    return {
        "alerts": alerts,
        "seconds": round(seconds, 3),
        "alerts_per_s": alerts / seconds if seconds else 0.0,
        "calls": calls,
        "p50_ms": percentile(latencies_ms, 50),
        "p99_ms": percentile(latencies_ms, 99),
        "server_us_per_alert": 1e6 * cpu.get("server", 0.0) / alerts if alerts else float("nan"),
        "all_us_per_alert": 1e6 * sum(cpu.values()) / alerts if alerts else float("nan"),
        "cpu_seconds": {**{k: round(v, 3) for k, v in cpu.items()}, "generator": round(generator_cpu, 3)},
        "core_pct": cores,
        "errors": errors,
        "error_sample": error_sample,
    }


def measure_grpc(
    target: str,
    watch: Watch,
    *,
    key: str,
    mode: str,
    keys: str,
    prefix: str,
    load: LoadSettings,
    batch: int = 1,
    messages: int = 1,
    profile: Path | None = None,
    profile_pid: int | None = None,
) -> dict[str, Any]:
    """Run ``load.grpc_clients`` load_grpc.py processes against ``target`` and measure the window."""
    procs = []
    for i in range(load.grpc_clients):
        cmd = [
            sys.executable,
            str(BENCH / "load_grpc.py"),
            f"--target={target}",
            f"--key={key}",
            f"--mode={mode}",
            f"--keys={keys}",
            f"--prefix={prefix}-w{i}",
            f"--concurrency={load.grpc_concurrency}",
            f"--batch={batch}",
            f"--messages={messages}",
            f"--warmup={load.warmup}",
            f"--duration={load.duration}",
            f"--out={_result_file()}",
        ]
        procs.append(
            subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        )
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise LoadError(f"gRPC load process did not connect to {target} (got {line!r})")
        t0 = time.monotonic() + 0.05
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"go {t0}\n")
            proc.stdin.flush()
        start, end = t0 + load.warmup, t0 + load.warmup + load.duration
        time.sleep(max(0.0, start - time.monotonic()))
        pids = watch()
        before = _sample(pids)
        spy = _profile(profile_pid, load.duration, profile) if profile and profile_pid else None
        time.sleep(max(0.0, end - time.monotonic()))
        after = _sample(pids)
        cpu = _cpu_between(before, pids, after)
        results = _collect(procs, load.duration + 120)
        if spy is not None:
            spy.wait(60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    latencies = [x for r in results for x in r["latencies_ms"]]
    result = _finish(
        sum(r["alerts"] for r in results),
        load.duration,
        latencies,
        cpu,
        sum(r["cpu_seconds"] for r in results),
        sum(r["errors"] for r in results),
        next((r["error_sample"] for r in results if r["error_sample"]), ""),
        sum(r["calls"] for r in results),
    )
    result["completed_calls"] = sum(r["completed_calls"] for r in results)
    return result


def _result_file() -> str:
    fd, name = tempfile.mkstemp(prefix="bench-load-", suffix=".json")
    os.close(fd)
    os.unlink(name)
    return name


def _collect(procs: list[subprocess.Popen[str]], timeout: float) -> list[dict[str, Any]]:
    """Each worker's JSON line; a watchdog kills workers still running after ``timeout`` seconds."""

    def kill_running() -> None:
        for p in procs:
            if p.poll() is None:
                p.kill()

    watchdog = threading.Timer(timeout, kill_running)
    watchdog.start()
    try:
        results = []
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait()
            args = proc.args  # typed as any command form; ours are always a list of str
            assert isinstance(args, list)
            flag = next(a for a in args if isinstance(a, str) and a.startswith("--out="))
            out = Path(flag[len("--out=") :])
            if proc.returncode != 0 or not out.exists():
                raise LoadError(f"gRPC load process failed (exit {proc.returncode})")
            results.append(json.loads(out.read_text()))
            out.unlink()
        return results
    finally:
        watchdog.cancel()


def seed_grpc(target: str, *, key: str, count: int, offset: int, clients: int) -> dict[str, Any]:
    """Send exactly ``count`` alerts (keys ``seed-<offset>``...) in IngestAlerts batches of 500."""
    procs = []
    share = count // clients
    for i in range(clients):
        n = share if i < clients - 1 else count - share * (clients - 1)
        cmd = [
            sys.executable,
            str(BENCH / "load_grpc.py"),
            f"--target={target}",
            f"--key={key}",
            "--mode=seed",
            "--batch=500",
            "--concurrency=4",
            f"--count={n}",
            f"--offset={offset + i * share}",
            f"--out={_result_file()}",
        ]
        procs.append(
            subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        )
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise LoadError(f"seed process did not connect to {target}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"go {time.monotonic()}\n")
            proc.stdin.flush()
        results = _collect(procs, 3600)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {
        "alerts": sum(r["alerts"] for r in results),
        "seconds": max(r["seconds"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "error_sample": next((r["error_sample"] for r in results if r["error_sample"]), ""),
    }


def wait_idle(watch: Watch, *, timeout: float, busy: float = 0.15, interval: float = 1.0) -> float:
    """Wait until the server uses under ``busy`` of a core over two ``interval``s in a row (what it
    was given has been done: seeded escalations, a warm-up's requests; one quiet interval can be a
    wait on the disk); returns the seconds waited."""
    started = time.monotonic()
    pids = watch()["server"]
    quiet = 0
    while quiet < 2 and time.monotonic() - started < timeout:
        before = CpuSample.take(pids)
        time.sleep(interval)
        quiet = quiet + 1 if CpuSample.take(pids).since(before) < busy * interval else 0
    return round(time.monotonic() - started, 1)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _wrk(url: str, seconds: int, args: list[str], load: LoadSettings) -> tuple[dict[str, Any], float]:
    cmd = [
        "wrk",
        f"-t{load.wrk_threads}",
        f"-c{load.wrk_connections}",
        f"-d{seconds}s",
        "--timeout=10s",
        "-s",
        str(BENCH / "wrk_ingest.lua"),
        url,
        "--",
        *args,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    summary = [line for line in out.splitlines() if line.startswith("BENCHJSON ")]
    if proc.returncode != 0 or not summary:
        raise LoadError(f"wrk failed (exit {proc.returncode}): {err.strip() or out.strip()}")
    return json.loads(summary[-1].split(" ", 1)[1]), usage.ru_utime + usage.ru_stime


def measure_wrk(
    url: str,
    watch: Watch,
    *,
    fmt: str,
    batch: int,
    key: str,
    prefix: str,
    load: LoadSettings,
    profile: Path | None = None,
    profile_pid: int | None = None,
) -> dict[str, Any]:
    """A wrk warm-up run, then the measured run; one request carries ``batch`` alerts."""
    args = [fmt, str(batch), prefix, key]
    if load.warmup >= 0.5:  # wrk takes whole seconds; --quick skips the warm-up run
        _wrk(url, max(1, round(load.warmup)), [fmt, str(batch), f"{prefix}-warm", key], load)
        # wrk leaves the requests it had in flight (up to connections x batch alerts): the server
        # finishes them first, and that work must not be charged to the measured run.
        drained = wait_idle(watch, timeout=60.0, interval=0.25)
        if drained >= 60.0:
            print("the server was still busy 60 s after wrk's warm-up; measuring anyway", file=sys.stderr)
    seconds = max(1, round(load.duration))
    pids = watch()
    before = _sample(pids)
    spy = _profile(profile_pid, seconds, profile) if profile and profile_pid else None
    started = time.monotonic()
    summary, generator_cpu = _wrk(url, seconds, args, load)
    elapsed = time.monotonic() - started
    after = _sample(pids)
    if spy is not None:
        spy.wait(60)
    cpu = _cpu_between(before, pids, after)
    # Server CPU is sampled around the whole wrk process (start-up included), so scale to wrk's own window.
    wrk_seconds = summary["duration_us"] / 1e6
    cpu = {role: value * min(1.0, wrk_seconds / elapsed) for role, value in cpu.items()}
    errors = summary["connect"] + summary["read"] + summary["write"] + summary["status"] + summary["timeout"]
    ok_requests = summary["requests"] - summary["status"]
    result = _finish(
        ok_requests * batch,
        wrk_seconds,
        [],
        cpu,
        generator_cpu,
        errors,
        f"{summary['status']} non-2xx responses" if summary["status"] else "",
        summary["requests"],
    )
    result["p50_ms"] = summary["p50_us"] / 1000
    result["p99_ms"] = summary["p99_us"] / 1000
    result["completed_calls"] = summary["requests"]
    return result
