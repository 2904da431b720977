"""Starting and stopping the processes under test: each stopped by its own pid, its start awaited on
a line it prints or an HTTP 200, its log's tail quoted when it fails, no ``ONCALL_*`` variable of
the caller leaked into it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class StartError(RuntimeError):
    pass


def terminate(proc: subprocess.Popen[Any] | None, timeout: float = 15.0) -> None:
    """SIGTERM this one process, SIGKILL it if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_http(url: str, proc: subprocess.Popen[Any], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"{proc.args!r} exited with {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise StartError(f"{url} did not answer 200 within {timeout}s:\n{tail(log)}")


def wait_line(proc: subprocess.Popen[str], needle: str, timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise StartError(f"{proc.args!r} exited before printing {needle!r}")
        if needle in line:
            return line
    raise StartError(f"{proc.args!r} did not print {needle!r} within {timeout}s")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONCALL_")}
    env.update(extra)
    return env
