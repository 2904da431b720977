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

With ``--ack-rate`` (scenario 8: 2/s) the same process also acknowledges this tenant's incidents through
gRPC ``AcknowledgeIncident`` (``--grpc-target``, ``--api-token``), open loop on its own schedule from
``t0``: each call takes the oldest incident that has already paged the receiver (``--records-url``,
polled every 0.2 s; only titles of this run's ``--prefix``) and is not yet acknowledged, so every
call does real work (triggered -> acknowledged, its escalation stopped) and no measured page is
cancelled by it. Per call sent in the window: ``[send wall time (s), answer time (ms) or null, gRPC
status name]``; a due call with no paged incident left is counted as ``ack_skipped``, not sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp
import grpc
from child_process import own_cpu_seconds, ready_then_go, run_loop, write_result

from oncall_server.api.v1 import incident_service_pb2, incident_service_pb2_grpc

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
        self.paged: list[str] = []  # incident ids that paged the receiver, oldest first, not yet acked
        self.seen: set[str] = set()
        self.ack_window: list[list[Any]] = []  # [sent wall s, answer ms | None, gRPC status name]
        self.ack_warmup_sent = 0
        self.ack_skipped = 0
        self.ack_error_sample = ""

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

    async def poll_pages(self, session: aiohttp.ClientSession, end: float) -> None:
        """Learn which of this run's incidents have paged (the receiver's records, incrementally)."""
        since = 0
        mine = f"{self.args.prefix}-"
        while time.monotonic() < end:
            try:
                async with session.get(f"{self.args.records_url}?since={since}") as response:
                    got = await response.json()
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.2)
                continue
            since += len(got["records"])
            for _at, title, _nid, incident_id in got["records"]:
                if title.startswith(mine) and incident_id and incident_id not in self.seen:
                    self.seen.add(incident_id)
                    self.paged.append(incident_id)
            await asyncio.sleep(0.2)

    async def ack(self, stub: Any, incident_id: str, record: list[Any] | None) -> None:
        a = self.args
        request = incident_service_pb2.AcknowledgeIncidentRequest(incident_id=incident_id)
        metadata = [("authorization", f"Bearer {a.api_token}")]
        began = time.monotonic()
        if record is not None:
            record[0] = time.time()
        try:
            await stub.AcknowledgeIncident(request, metadata=metadata, timeout=a.call_timeout)
            status = "OK"
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
            self.ack_error_sample = self.ack_error_sample or f"{status}: {exc.details()}"[:300]
        if record is not None:
            record[2] = status
            if status == "OK" or status not in ("DEADLINE_EXCEEDED", "UNAVAILABLE", "CANCELLED"):
                record[1] = round((time.monotonic() - began) * 1000, 3)

    async def acks(self, session: aiohttp.ClientSession, t0: float, start: float, end: float) -> None:
        """Open loop: ``--ack-rate`` AcknowledgeIncident calls per second from ``t0``."""
        a = self.args
        async with grpc.aio.insecure_channel(a.grpc_target) as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            stub = incident_service_pb2_grpc.IncidentServiceStub(channel)
            poller = asyncio.create_task(self.poll_pages(session, end))
            interval = 1.0 / a.ack_rate
            serial = 0
            calls: set[asyncio.Task[None]] = set()
            while True:
                due = t0 + (serial + 0.5) * interval  # half a step after B's first alert
                if due >= end:
                    break
                serial += 1
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                if not self.paged:
                    self.ack_skipped += due >= start
                    continue
                record = None
                if due >= start:
                    record = [0.0, None, ""]
                    self.ack_window.append(record)
                else:
                    self.ack_warmup_sent += 1
                task = asyncio.create_task(self.ack(stub, self.paged.pop(0), record))
                calls.add(task)
                task.add_done_callback(calls.discard)
            if calls:
                await asyncio.wait(set(calls), timeout=a.call_timeout + 5)
            poller.cancel()

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
            acker = asyncio.create_task(self.acks(session, t0, start, end)) if a.ack_rate > 0 else None
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
            if acker is not None:
                await acker  # its calls were sent before ``end``; it waits for their answers
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
            "ack_window": self.ack_window,
            "ack_warmup_sent": self.ack_warmup_sent,
            "ack_skipped": self.ack_skipped,
            "ack_error_sample": self.ack_error_sample,
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
    parser.add_argument("--ack-rate", type=float, default=0.0, help="AcknowledgeIncident calls/s (0: none)")
    parser.add_argument("--grpc-target", default="", help="the server's gRPC address (with --ack-rate)")
    parser.add_argument("--api-token", default="", help="the tenant's API token (with --ack-rate)")
    parser.add_argument(
        "--records-url", default="", help="the page receiver's /records URL (with --ack-rate)"
    )
    parser.add_argument("--out", required=True, help="file for the JSON result")
    args = parser.parse_args()
    write_result(args.out, run_loop(Pacer(args).run()))


if __name__ == "__main__":
    main()
