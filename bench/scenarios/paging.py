"""What scenarios 5 and 6 share: the webhook receiver, a server whose bootstrap service pages it,
waiting for the pages, their latencies, and the outbox's account of the deliveries."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from context import Context, log, new_server, start
from loadgen import LoadError
from measure import RunResult, loadavg_1m
from oncall_target import OncallServer
from paging_bench import configure_paging
from processes import tail
from sysinfo import percentile
from targets import PageReceiver

# Our server for the paging scenarios: the webhook channel may reach the loopback receiver.
PAGING_ENV = {"ONCALL_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}


@contextlib.contextmanager
def receiver_running() -> Iterator[PageReceiver]:
    receiver = start(PageReceiver())
    try:
        yield receiver
    finally:
        receiver.stop()


def each_backend(
    ctx: Context,
    measure: Callable[[Context, str, PageReceiver], tuple[str, dict[str, Any]]],
    figures: Callable[[str, dict[str, Any]], dict[str, float | None]],
) -> RunResult:
    """One receiver for the run; on each backend ``measure`` gives a target's name and measurement,
    ``figures`` the per-run figures of it."""
    m: dict[str, dict[str, Any]] = {}
    out: dict[str, float | None] = {}
    with receiver_running() as receiver:
        for backend in ctx.backends:
            name, measured = measure(ctx, backend, receiver)
            m[name] = measured
            out.update(figures(name, measured))
    return m, out


@contextlib.contextmanager
def server_paging(ctx: Context, backend: str, receiver: PageReceiver, **env: str) -> Iterator[OncallServer]:
    """A fresh server whose bootstrap service pages ``receiver`` (configured through the gRPC API)."""
    ctx.release(backend)
    server = new_server(ctx, backend)
    server.extra_env = {**PAGING_ENV, **env, **server.extra_env}
    log(f"  starting {server.name} (paging the receiver) ...")
    start(server)
    try:
        configure_paging(
            server.grpc_target, server.creds["api_token"], server.creds["service_id"], receiver.url
        )
    except BaseException:
        server.stop()
        raise
    try:
        yield server
    finally:
        server.stop()


def watched_with_receiver(server: OncallServer, receiver: PageReceiver) -> dict[str, list[int]]:
    return {**server.watched(), "receiver": [receiver.pid]}


def latencies(values: list[float], missing: int) -> dict[str, float]:
    """p50/p99/max in ms; pages that never arrived count as infinitely late (so p99 says so)."""
    ordered = sorted(values) + [math.inf] * missing
    return {
        "p50_ms": percentile(ordered, 50),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1] if ordered else float("nan"),
    }


def latest(pages: list[tuple[float, float]], when: str) -> list[dict[str, float]]:
    """The ten latest of ``(ms late, when in the window)``, latest first: a block of consecutive
    ``when`` is a stall."""
    return [{"ms": round(ms, 1), when: round(at, 3)} for ms, at in reversed(sorted(pages)[-10:])]


def cpu_per_page(cpu: dict[str, float], count: int) -> dict[str, float]:
    """Server CPU, and server + Redis + DB CPU (the receiver left out), per alert or page in µs."""
    return {
        "server_us_per_alert": 1e6 * cpu.get("server", 0.0) / count if count else float("nan"),
        "all_us_per_alert": 1e6 * sum(v for k, v in cpu.items() if k != "receiver") / count
        if count
        else float("nan"),
    }


def wait_pages(receiver: PageReceiver, expected: int, deadline: float, stalled_after: float) -> float:
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
    """Outbox rows by status and attempts (retries show why a page was late), log warnings, and the
    load average (other work on a shared machine)."""
    rows = server.sql(
        "SELECT status, attempts, count(*), max(last_error) FROM notifications GROUP BY status, attempts"
    )
    return {
        "notifications": {f"{status} after {attempts} attempt(s)": n for status, attempts, n, _ in rows},
        "retried_notifications": sum(n for _s, attempts, n, _e in rows if attempts > 1),
        "notification_errors": sorted({e for *_rest, e in rows if e}),
        "server_log_problems": server.log_problems(),
        "loadavg_1m": loadavg_1m(),
    }


def retried(m: dict[str, Any]) -> str:
    """The log line's note of retried deliveries (a retry waits, so it explains a late page)."""
    if not m["retried_notifications"]:
        return ""
    return f"  RETRIED {m['retried_notifications']}: {m['notification_errors']}"


def check_pages(server: OncallServer, *, paged: bool, nothing: str) -> None:
    """A dead server, or no page at all (``nothing`` says which), fails the measurement."""
    if server.proc is None or server.proc.poll() is not None:
        raise LoadError(f"{server.name}: the server process died:\n{tail(server.log)}")
    if not paged:
        raise LoadError(f"{server.name}: {nothing}:\n{tail(server.log)}")
