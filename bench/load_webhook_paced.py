"""Open-loop HTTP webhook load for scenario 8 (fair ingest): one tenant's steady alerts, one process.

``POST /api/webhooks/ingest`` with ``X-Integration-Key``, one alert per request, started on a fixed
schedule (``--rate`` per second from ``t0``) whether or not earlier requests were answered, so a slow
server is not offered less load (no coordinated omission). Every alert has its own dedup key, which
is also its title (the field the page carries): every alert opens an incident and pages, and the
receiver's arrival time for that title minus this process's send time is the ingest -> page latency.
The alert has the shape wrk_ingest.lua gives the other scenarios' alerts. ``--local-addr`` connects
from another loopback address, so the server sees another client than the flooding wrk's.

Protocol (stdin/stdout, like load_paging.py): print ``ready`` once the server answered a probe; read
``go <t0>`` (a ``time.monotonic()`` instant); send from ``t0`` for ``--warmup`` + ``--duration``
seconds; write JSON to ``--out``: per request sent inside the measured window ``[title, send wall
time (s), answer time (ms) or null, HTTP status or 0 (no answer)]``, and for the warm-up the count
sent and answered 2xx (their pages are drained too), how late the pacer ran, and this process's CPU
during the window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp
from child_process import own_cpu_seconds, ready_then_go, run_loop, write_result

BODY = "CPU sustained at 98% for 5 minutes. Host: client-server-01."


def alert_body(title: str, serial: int) -> bytes:
    return json.dumps(
        {
            "title": title,
            "severity": "critical",
            "dedup_key": title,
            "body": BODY,
            "source_ref": f"alert-{serial}",
            "host": "client-server-01",
        }
    ).encode()


class Pacer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.window: list[list[Any]] = []  # [title, sent wall s, answer ms | None, status | 0]
        self.warmup_sent = 0
        self.warmup_ok = 0
        self.failures = 0  # no answer (connection error, timeout)
        self.error_sample = ""
        self.late_ms: list[float] = []  # how far behind its schedule each measured request started
        self.tasks: set[asyncio.Task[None]] = set()

    async def post(self, session: aiohttp.ClientSession, serial: int, record: list[Any] | None) -> None:
        a = self.args
        title = f"{a.prefix}-{serial}"
        headers = {"Content-Type": "application/json", "X-Integration-Key": a.key}
        began = time.monotonic()
        if record is not None:
            record[0], record[1] = title, time.time()
        try:
            async with session.post(a.url, data=alert_body(title, serial), headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failures += 1
            self.error_sample = self.error_sample or f"{type(exc).__name__}: {exc}"[:300]
            return
        if record is not None:
            record[2] = round((time.monotonic() - began) * 1000, 3)
            record[3] = status
        elif 200 <= status < 300:
            self.warmup_ok += 1
        if not 200 <= status < 300 and not self.error_sample:
            self.error_sample = f"HTTP {status}"

    async def run(self) -> dict[str, Any]:
        a = self.args
        timeout = aiohttp.ClientTimeout(total=a.call_timeout)
        # No connection limit: an open loop must not queue its own requests behind slow answers.
        local = (a.local_addr, 0) if a.local_addr else None
        connector = aiohttp.TCPConnector(limit=0, local_addr=local)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            probe = a.url.rsplit("/api/", 1)[0] + "/healthz"
            async with session.get(probe) as response:
                if response.status != 200:
                    raise SystemExit(f"{probe} answered {response.status}")
            t0 = await ready_then_go()
            start, end = t0 + a.warmup, t0 + a.warmup + a.duration
            interval = 1.0 / a.rate
            serial = 0
            cpu_start = None
            while True:
                due = t0 + serial * interval
                if due >= end:
                    break
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                    now = time.monotonic()
                if cpu_start is None and due >= start:
                    cpu_start = own_cpu_seconds()
                record = None
                if due >= start:
                    record = ["", 0.0, None, 0]
                    self.window.append(record)
                    self.late_ms.append((now - due) * 1000)
                else:
                    self.warmup_sent += 1
                task = asyncio.create_task(self.post(session, serial, record))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                serial += 1
            cpu_end = own_cpu_seconds()
            if self.tasks:
                await asyncio.wait(set(self.tasks), timeout=a.call_timeout + 5)
        self.late_ms.sort()
        late = self.late_ms
        return {
            "sent": len(self.window),
            "window": self.window,
            "warmup_sent": self.warmup_sent,
            "warmup_ok": self.warmup_ok,
            "failures": self.failures,
            "error_sample": self.error_sample,
            "cpu_seconds": (cpu_end - cpu_start) if cpu_start is not None else 0.0,
            "pacer_late_ms_p50": late[len(late) // 2] if late else 0.0,
            "pacer_late_ms_max": late[-1] if late else 0.0,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the webhook URL (…/api/webhooks/ingest)")
    parser.add_argument("--key", required=True, help="integration key (X-Integration-Key)")
    parser.add_argument("--rate", type=float, required=True, help="requests (= alerts) per second")
    parser.add_argument("--prefix", required=True, help="title and dedup-key prefix, unique per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--call-timeout", type=float, default=30.0)
    parser.add_argument(
        "--local-addr", default="", help="source address of the connections (e.g. 127.0.0.2: another client)"
    )
    parser.add_argument("--out", required=True, help="file for the JSON result")
    args = parser.parse_args()
    write_result(args.out, run_loop(Pacer(args).run()))


if __name__ == "__main__":
    main()
