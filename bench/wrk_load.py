"""HTTP load: ``wrk`` with ``bench/wrk_ingest.lua`` (a fresh dedup key per alert; our webhook's JSON or
Alertmanager's v2 array, ``batch`` alerts a request), measured like the gRPC load (loadgen.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadgen import BENCH, LoadError, LoadSettings, Watch, finish, py_spy, wait_idle
from sysinfo import cpu_between, sample_roles


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
        # The server first finishes the requests wrk left in flight; that work is not the measured run's.
        drained = wait_idle(watch, timeout=60.0, interval=0.25)
        if drained >= 60.0:
            print("the server was still busy 60 s after wrk's warm-up; measuring anyway", file=sys.stderr)
    seconds = max(1, round(load.duration))
    pids = watch()
    before = sample_roles(pids)
    spy = py_spy(profile_pid, seconds, profile) if profile and profile_pid else None
    started = time.monotonic()
    summary, generator_cpu = _wrk(url, seconds, args, load)
    elapsed = time.monotonic() - started
    after = sample_roles(pids)
    if spy is not None:
        spy.wait(60)
    cpu = cpu_between(before, after)
    # Server CPU is sampled around the whole wrk process (start-up included), so scale to wrk's own window.
    wrk_seconds = summary["duration_us"] / 1e6
    cpu = {role: value * min(1.0, wrk_seconds / elapsed) for role, value in cpu.items()}
    errors = summary["connect"] + summary["read"] + summary["write"] + summary["status"] + summary["timeout"]
    ok_requests = summary["requests"] - summary["status"]
    result = finish(
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
