"""What every scenario is handed: the command line, the load settings, the backends, the targets
that stay up between scenarios, and the notes and failures collected for the report."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen import LoadSettings
from oncall_target import OncallServer
from paging_bench import group_alerts
from targets import Alertmanager, NoopGrpc, NoopHttp

APT_HINT = "apt-get install -y wrk prometheus-alertmanager"

_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


class Pending(Exception):
    """A scenario whose feature is not built yet: reported as pending, never a failure."""


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
        safe = label.replace("/", "-").replace(" ", "_")
        return Path(self.args.profile) / f"s{self.scenario}-r{self.run}-{safe}.txt"

    @contextlib.contextmanager
    def ours(self, backend: str) -> Iterator[OncallServer]:
        """Our server: fresh for every run, or one for the whole pass with --reuse-servers (--quick)."""
        if self.args.reuse_servers and backend in self.live:
            yield self.live[backend]
            return
        server = new_server(self, backend)
        log(f"  starting {server.name} ...")
        start(server)
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
        start(server)
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
        am = start(Alertmanager())
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


def start(target: Any) -> Any:
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
