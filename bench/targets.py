"""The targets our server is compared with, and the page receiver, each its own process on loopback
with a free port (our server itself: ``oncall_target.py``).

* :class:`NoopGrpc` / :class:`NoopHttp` - the do-nothing baselines (bench/noop_grpc.py, bench/noop_http.py).
* :class:`PageReceiver` - bench/receiver.py, the webhook the paging scenarios (5, 6) page.
* :class:`Alertmanager` - Debian's ``prometheus-alertmanager``, in memory, temp storage, no cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from processes import clean_env, terminate, wait_http, wait_line
from sysinfo import free_port, rss_bytes

BENCH = Path(__file__).resolve().parent
ALERTMANAGER = os.environ.get("BENCH_ALERTMANAGER", "/usr/bin/prometheus-alertmanager")


class _Process:
    """A baseline target: one process on a free loopback port, measured alone (no Redis, no DB)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[Any] | None = None
        self.port = 0

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def watched(self) -> dict[str, list[int]]:
        return {"server": [self.pid], "redis": [], "db": []}

    def rss(self) -> int | None:
        return rss_bytes(self.pid)

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class _Script(_Process):
    """A bench/*.py server run as its own process."""

    script = ""
    kind = "noop"
    name = ""

    def start(self) -> _Script:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / self.script), "--port", str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
            env=clean_env({}),
        )
        wait_line(self.proc, "listening")
        return self


class NoopGrpc(_Script):
    script = "noop_grpc.py"
    name = "noop gRPC"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.port}"


class NoopHttp(_Script):
    script = "noop_http.py"
    name = "noop aiohttp"

    @property
    def http_url(self) -> str:
        return self.http("/api/webhooks/ingest")


class PageReceiver(_Script):
    """bench/receiver.py: the webhook the paging scenarios page; records each page's arrival time."""

    script = "receiver.py"
    name = "page receiver"

    @property
    def url(self) -> str:
        return self.http("/page")

    def records(self, since: int = 0) -> dict[str, Any]:
        """``{"records": [[arrival wall s, title, notification id, incident id], ...], "count": n,
        "duplicates": d}``."""
        with urllib.request.urlopen(self.http(f"/records?since={since}"), timeout=30) as r:
            return dict(json.loads(r.read()))

    def count(self) -> int:
        return int(self.records(since=999_999_999)["count"])  # past the end: the count, no records

    def reset(self) -> None:
        request = urllib.request.Request(self.http("/reset"), method="POST")
        with urllib.request.urlopen(request, timeout=30):
            pass


ALERTMANAGER_CONFIG = """\
route:
  receiver: blackhole
receivers:
  - name: blackhole
"""


class Alertmanager(_Process):
    """prometheus-alertmanager with a do-nothing receiver, temp storage, clustering off."""

    kind = "alertmanager"
    name = "Alertmanager"

    @staticmethod
    def available() -> bool:
        return os.access(ALERTMANAGER, os.X_OK)

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ocb-am-", dir="/tmp"))
        self.log = self.dir / "alertmanager.log"

    def start(self) -> Alertmanager:
        (self.dir / "alertmanager.yml").write_text(ALERTMANAGER_CONFIG)
        (self.dir / "data").mkdir(exist_ok=True)
        self.port = free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    ALERTMANAGER,
                    f"--config.file={self.dir / 'alertmanager.yml'}",
                    f"--storage.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=log,
                env=clean_env({}),
            )
        wait_http(self.http("/-/ready"), self.proc, self.log)
        return self

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def http_url(self) -> str:
        return self.http("/api/v2/alerts")
