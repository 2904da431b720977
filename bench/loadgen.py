"""Drives load from separate processes and measures the target around the measured window.

gRPC: several ``bench/load_grpc.py`` processes (grpc.aio, uvloop, many calls in flight); scenario 5's
open-loop ``bench/load_paging.py``; HTTP: ``wrk`` (wrk_load.py, on the helpers here).
Each reports alerts/s, latency percentiles, the server's CPU (from /proc/<pid>/stat, every thread),
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

from sysinfo import CpuSample, core_pct, cpu_between, percentile, sample_roles

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


def start_load(cmds: list[list[str]], what: str) -> list[subprocess.Popen[str]]:
    """Start one load process per command and wait until each has said ``ready`` (connected)."""
    procs = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        for cmd in cmds
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise LoadError(f"{what} (got {line!r})")
    except BaseException:
        stop_load(procs)
        raise
    return procs


def go(procs: list[subprocess.Popen[str]], t0: float) -> None:
    """Tell every load process to start at ``t0`` (a monotonic instant, the same in every process)."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(f"go {t0}\n")
        proc.stdin.flush()


def stop_load(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def py_spy(pid: int, seconds: float, out: Path | None) -> subprocess.Popen[bytes] | None:
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


def finish(
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
    cores = core_pct(cpu, seconds)
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
    cmds = [
        [
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
            f"--out={result_file()}",
        ]
        for i in range(load.grpc_clients)
    ]
    procs = start_load(cmds, f"gRPC load process did not connect to {target}")
    try:
        t0 = time.monotonic() + 0.05
        go(procs, t0)
        start, end = t0 + load.warmup, t0 + load.warmup + load.duration
        time.sleep(max(0.0, start - time.monotonic()))
        pids = watch()
        before = sample_roles(pids)
        spy = py_spy(profile_pid, load.duration, profile) if profile and profile_pid else None
        time.sleep(max(0.0, end - time.monotonic()))
        cpu = cpu_between(before, sample_roles(pids))
        results = _collect(procs, load.duration + 120)
        if spy is not None:
            spy.wait(60)
    finally:
        stop_load(procs)
    latencies = [x for r in results for x in r["latencies_ms"]]
    result = finish(
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


def result_file() -> str:
    """A fresh path for a load process's JSON result (the process creates the file)."""
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
    share = count // clients
    cmds = [
        [
            sys.executable,
            str(BENCH / "load_grpc.py"),
            f"--target={target}",
            f"--key={key}",
            "--mode=seed",
            "--batch=500",
            "--concurrency=4",
            f"--count={share if i < clients - 1 else count - share * (clients - 1)}",
            f"--offset={offset + i * share}",
            f"--out={result_file()}",
        ]
        for i in range(clients)
    ]
    procs = start_load(cmds, f"seed process did not connect to {target}")
    try:
        go(procs, time.monotonic())
        results = _collect(procs, 3600)
    finally:
        stop_load(procs)
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


def measure_paced(
    target: str,
    key: str,
    *,
    rate: float,
    prefix: str,
    warmup: float,
    duration: float,
    watch: Watch,
    profile: Callable[[float], subprocess.Popen[bytes] | None] | None = None,
) -> dict[str, Any]:
    """One load_paging.py process (open loop, scenario 5); returns its JSON plus the watched
    processes' CPU in the window. ``profile`` (optional) is called with the window length at the
    window's start and returns a process to wait for (py-spy)."""
    out = result_file()
    cmd = [
        sys.executable,
        str(BENCH / "load_paging.py"),
        f"--target={target}",
        f"--key={key}",
        f"--rate={rate}",
        f"--prefix={prefix}",
        f"--warmup={warmup}",
        f"--duration={duration}",
        f"--out={out}",
    ]
    procs = start_load([cmd], f"paging load process did not connect to {target}")
    proc = procs[0]
    try:
        assert proc.stdin is not None
        t0 = time.monotonic() + 0.05
        go(procs, t0)
        start, end = t0 + warmup, t0 + warmup + duration
        time.sleep(max(0.0, start - time.monotonic()))
        pids = watch()
        before = sample_roles(pids)
        spy = profile(duration) if profile else None
        time.sleep(max(0.0, end - time.monotonic()))
        cpu = cpu_between(before, sample_roles(pids))
        proc.stdin.close()
        proc.wait(timeout=120)
        if spy is not None:
            spy.wait(60)
        if proc.returncode != 0 or not Path(out).exists():
            raise LoadError(f"paging load process failed (exit {proc.returncode})")
        result: dict[str, Any] = json.loads(Path(out).read_text())
    finally:
        stop_load(procs)
        Path(out).unlink(missing_ok=True)
    result["cpu"] = cpu
    result["window_seconds"] = duration
    return result
