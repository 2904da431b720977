"""Process CPU and memory from /proc, free ports, percentiles and machine facts for the harness."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of every thread of ``pid`` (``None`` once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def worker_pids(parent: int) -> list[int]:
    """The sibling server processes ``serve --workers N`` started (their command has ``--worker-of``)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"--worker-of" in argv and argv[argv.index(b"--worker-of") + 1] == str(parent).encode():
                found.append(int(entry))
    return found


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return None


@dataclass
class CpuSample:
    """CPU seconds of a set of processes at one instant."""

    seconds: dict[int, float]

    @classmethod
    def take(cls, pids: Iterable[int]) -> CpuSample:
        out = {}
        for pid in pids:
            value = cpu_seconds(pid)
            if value is not None:
                out[pid] = value
        return cls(out)

    def since(self, earlier: CpuSample) -> float:
        """CPU seconds spent between ``earlier`` and this sample (processes born since count from 0)."""
        return sum(v - earlier.seconds.get(pid, 0.0) for pid, v in self.seconds.items())


def sample_roles(pids: dict[str, list[int]]) -> dict[str, CpuSample]:
    """CPU seconds of each role's processes (``{"server": [pid], "redis": [...], ...}``) now."""
    return {role: CpuSample.take(p) for role, p in pids.items()}


def cpu_between(before: dict[str, CpuSample], after: dict[str, CpuSample]) -> dict[str, float]:
    """CPU seconds each role spent between two :func:`sample_roles` (a role new in ``after`` from 0)."""
    return {role: after[role].since(before.get(role, CpuSample({}))) for role in after}


def core_pct(cpu: dict[str, float], seconds: float) -> dict[str, float]:
    """CPU seconds per role over ``seconds`` as a percentage of one core."""
    return {role: round(100 * value / seconds, 1) for role, value in cpu.items()} if seconds > 0 else {}


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages as /proc/loadavg writes them."""
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``nan`` when empty)."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def spread(values: Sequence[float | None]) -> dict[str, float]:
    """Median with min and max, ignoring missing values."""
    clean = [v for v in values if v is not None and v == v]
    if not clean:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean), "n": len(clean)}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def _first_line(cmd: list[str]) -> str:
    if not shutil.which(cmd[0]):
        return "absent"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def machine_info() -> dict[str, object]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_total = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": mem_total,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "loadavg_at_start": loadavg(),
        "packages": {
            name: _version(name)
            for name in ("grpcio", "protobuf", "aiohttp", "uvloop", "SQLAlchemy", "asyncpg", "redis")
        },
        "wrk": _first_line(["wrk", "--version"]),
        "alertmanager": _first_line(["prometheus-alertmanager", "--version"]),
    }
