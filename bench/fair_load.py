"""Scenario 8's load (fair ingest): one tenant's steady open-loop webhook alerts
(``bench/load_webhook_paced.py``) and another tenant's flood (``wrk`` with ``bench/wrk_ingest.lua``
counting the answers by status), started together on one clock, with the CPU of the server, its
Redis and database sampled around the measured window.

Both loads share ``t0``: warm-up from ``t0``, the measured window ``[t0 + warmup, t0 + warmup +
duration)``. The paced process records every request it sent in the window; wrk counts the answers
that arrived in the window (``BENCH_WRK_WINDOW``, CLOCK_MONOTONIC like ``time.monotonic()``), so one
wrk run covers warm-up and window: no second run inherits the requests a warm-up run abandoned.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadgen import BENCH, LoadError, Watch, go, result_file, start_load, stop_load
from sysinfo import cpu_between, sample_roles


@dataclass(frozen=True)
class Flood:
    """The flooding tenant's wrk load: ``batch`` alerts per request on ``connections`` connections."""

    batch: int
    connections: int

    @property
    def label(self) -> str:
        return f"x{self.batch} c{self.connections}"


def parse_floods(text: str) -> list[Flood]:
    """``"1x64,100x64,100x256"`` (alerts per request x connections) as floods."""
    floods = []
    for part in text.split(","):
        batch, _, connections = part.strip().partition("x")
        floods.append(Flood(int(batch), int(connections)))
    return floods


@dataclass
class Steady:
    """The steady tenant's open-loop load: ``rate`` requests (one alert each) per second."""

    url: str
    key: str
    rate: float
    prefix: str
    local_addr: str = ""  # the connections' source address ("": the system's choice)
    # AcknowledgeIncident calls/s on this tenant's already-paged incidents (0: none), over gRPC
    ack_rate: float = 0.0
    grpc_target: str = ""
    api_token: str = ""
    records_url: str = ""  # the page receiver's /records (which incidents have paged)


@dataclass
class Flooding:
    url: str
    key: str
    flood: Flood
    prefix: str
    threads: int = 1


def _wrk_cmd(f: Flooding, seconds: int) -> list[str]:
    return [
        "wrk",
        f"-t{min(f.threads, f.flood.connections)}",
        f"-c{f.flood.connections}",
        f"-d{seconds}s",
        "--timeout=30s",
        "-s",
        str(BENCH / "wrk_ingest.lua"),
        f.url,
        "--",
        "oncall",
        str(f.flood.batch),
        f.prefix,
        f.key,
    ]


def _read_wrk(out: Path, err: Path, proc: subprocess.Popen[bytes]) -> tuple[dict[str, Any], float]:
    """Reap wrk (its rusage: the generator's CPU) and parse its BENCHJSON and BENCHSTATUS lines."""
    _pid, status, usage = os.wait4(proc.pid, 0)
    code = proc.returncode = os.waitstatus_to_exitcode(status)
    text = out.read_text(errors="replace")
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in text.splitlines() if " {" in line}
    if code != 0 or "BENCHJSON" not in lines or "BENCHSTATUS" not in lines:
        raise LoadError(
            f"wrk failed (exit {code}): {err.read_text(errors='replace').strip() or text.strip()}"
        )
    summary = {**json.loads(lines["BENCHJSON"]), **json.loads(lines["BENCHSTATUS"])}
    return summary, usage.ru_utime + usage.ru_stime


def run_phase(
    *,
    steady: Steady | None,
    flooding: Flooding | None,
    warmup: float,
    duration: float,
    watch: Watch,
    call_timeout: float = 30.0,
) -> dict[str, Any]:
    """Run the given loads for ``warmup`` + ``duration`` s; returns ``{"steady": the paced process's
    JSON or None, "wrk": wrk's counts or None, "cpu": CPU seconds per role in the window,
    "generator_cpu_s": the load processes' CPU in the window, "window_seconds": duration}``."""
    procs: list[subprocess.Popen[str]] = []
    steady_out = result_file()
    wrk_proc: subprocess.Popen[bytes] | None = None
    tmp = Path(tempfile.mkdtemp(prefix="ocb-wrk-"))
    wrk_out, wrk_err = tmp / "stdout", tmp / "stderr"
    try:
        if steady is not None:
            cmd = [
                sys.executable,
                str(BENCH / "load_webhook_paced.py"),
                f"--url={steady.url}",
                f"--key={steady.key}",
                f"--rate={steady.rate}",
                f"--prefix={steady.prefix}",
                f"--warmup={warmup}",
                f"--duration={duration}",
                f"--call-timeout={call_timeout}",
                f"--local-addr={steady.local_addr}",
                f"--ack-rate={steady.ack_rate}",
                f"--grpc-target={steady.grpc_target}",
                f"--api-token={steady.api_token}",
                f"--records-url={steady.records_url}",
                f"--out={steady_out}",
            ]
            procs = start_load([cmd], f"webhook load process did not reach {steady.url}")
        t0 = time.monotonic() + 0.1
        start, end = t0 + warmup, t0 + warmup + duration
        go(procs, t0)
        wrk_started = 0.0
        if flooding is not None:
            time.sleep(max(0.0, t0 - time.monotonic()))
            env = {**os.environ, "BENCH_WRK_WINDOW": f"{start:.6f},{end:.6f}"}
            seconds = math.ceil(warmup + duration + 0.3)  # wrk takes whole seconds; it runs past the window
            with open(wrk_out, "wb") as out, open(wrk_err, "wb") as err:
                wrk_proc = subprocess.Popen(_wrk_cmd(flooding, seconds), stdout=out, stderr=err, env=env)
            wrk_started = time.monotonic()
        time.sleep(max(0.0, start - time.monotonic()))
        pids = watch()
        before = sample_roles(pids)
        time.sleep(max(0.0, end - time.monotonic()))
        cpu = cpu_between(before, sample_roles(pids))
        result: dict[str, Any] = {"steady": None, "wrk": None, "cpu": cpu, "window_seconds": duration}
        generator = 0.0
        if wrk_proc is not None:
            summary, wrk_cpu = _read_wrk(wrk_out, wrk_err, wrk_proc)
            ran = time.monotonic() - wrk_started
            generator += wrk_cpu * min(1.0, duration / ran) if ran > 0 else 0.0
            result["wrk"] = summary
        if procs:
            proc = procs[0]
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=call_timeout + 30)
            if proc.returncode != 0 or not Path(steady_out).exists():
                raise LoadError(f"webhook load process failed (exit {proc.returncode})")
            result["steady"] = json.loads(Path(steady_out).read_text())
            generator += result["steady"]["cpu_seconds"]
        result["generator_cpu_s"] = generator
        return result
    finally:
        stop_load(procs)
        if wrk_proc is not None and wrk_proc.returncode is None:
            wrk_proc.kill()
            wrk_proc.wait()
        Path(steady_out).unlink(missing_ok=True)
        for path in (wrk_out, wrk_err):
            path.unlink(missing_ok=True)
        tmp.rmdir()
