"""One gRPC load-generator process: many concurrent in-flight IngestService calls over grpc.aio.

The harness starts several of these (one per core is the usual choice) so the
client is not the bottleneck. Protocol, on stdin/stdout:

1. the worker connects and prints ``ready``;
2. the harness writes ``go <t0>`` (a ``time.monotonic()`` instant, shared by all
   processes on Linux); calls start at ``t0``, calls completed in
   ``[t0 + warmup, t0 + warmup + duration]`` are counted, no call starts after
   that window;
3. the worker writes its result as JSON to ``--out``: alerts counted, call latencies (ms),
   errors and its own CPU seconds during the window.

``--mode seed`` instead sends exactly ``--count`` alerts as fast as it can and reports.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Iterator
from typing import Any

import grpc
from child_process import own_cpu_seconds, ready_then_go, run_loop, write_result

from oncall_server.api.v1 import alert_pb2, ingest_service_pb2, ingest_service_pb2_grpc

TITLE = "CPU usage critical on client-server-01"
DESCRIPTION = "CPU sustained at 98% for 5 minutes. Host: client-server-01."


def alert(dedup_key: str, serial: int, title: str = TITLE) -> Any:
    """The alert every target gets (the same shape as wrk_ingest.lua's)."""
    return alert_pb2.AlertEvent(
        title=title,
        severity=alert_pb2.SEVERITY_CRITICAL,
        dedup_key=dedup_key,
        source="bench",
        source_ref=f"alert-{serial}",
        description=DESCRIPTION,
        details={"host": "client-server-01", "component": "cpu"},
    )


class Keys:
    """Dedup keys: distinct (``<prefix>-<n>``), one (a storm), or random among seeded open alerts."""

    def __init__(self, spec: str, prefix: str) -> None:
        self.spec = spec
        self.prefix = prefix
        self.serial = 0
        self.seeded = int(spec.split(":", 1)[1]) if spec.startswith("random:") else 0

    def next(self) -> tuple[str, int]:
        self.serial += 1
        if self.spec == "distinct":
            return f"{self.prefix}-{self.serial}", self.serial
        if self.spec == "one":
            return "storm", self.serial
        if self.seeded:
            return f"seed-{random.randrange(self.seeded)}", self.serial
        raise ValueError(f"unknown key spec {self.spec!r}")


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.keys = Keys(args.keys, args.prefix)
        self.counted = 0
        self.latencies: list[float] = []
        self.errors = 0
        self.error_sample = ""
        self.completed = 0  # calls answered at any time, in the window or not
        self.window = (0.0, 0.0)

    def messages(self) -> Iterator[Any]:
        a = self.args
        for _ in range(a.messages):
            alerts = [alert(*self.keys.next()) for _ in range(a.batch)]
            yield ingest_service_pb2.IngestAlertsRequest(integration_key=a.key, alerts=alerts)

    async def one_call(self, stub: Any) -> tuple[int, float]:
        """One call; returns the alerts it carried and when it started (after building the messages)."""
        a = self.args
        if a.mode == "unary":
            request = ingest_service_pb2.IngestAlertRequest(
                integration_key=a.key, alert=alert(*self.keys.next())
            )
            began = time.monotonic()
            await stub.IngestAlert(request)
            return 1, began
        messages = list(self.messages())
        began = time.monotonic()
        response = await stub.IngestAlerts(iter(messages))
        if len(response.results) != a.batch * a.messages:
            raise RuntimeError(f"{len(response.results)} results for {a.batch * a.messages} alerts")
        return a.batch * a.messages, began

    async def loop(self, stub: Any, stop_at: float) -> None:
        start, end = self.window
        while True:
            if time.monotonic() >= stop_at:
                return
            try:
                alerts, began = await self.one_call(stub)
            except (grpc.aio.AioRpcError, RuntimeError) as exc:
                done = time.monotonic()
                if start <= done <= end:
                    self.errors += 1
                    self.error_sample = self.error_sample or str(exc)[:300]
                await asyncio.sleep(0.01)
                continue
            done = time.monotonic()
            self.completed += 1
            if start <= done <= end:
                self.counted += alerts
                self.latencies.append((done - began) * 1000)

    async def run(self) -> dict[str, Any]:
        a = self.args
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
        async with grpc.aio.insecure_channel(a.target, options=options) as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
            t0 = await ready_then_go()
            if a.mode == "seed":
                return await self.seed(stub, t0)
            self.window = (t0 + a.warmup, t0 + a.warmup + a.duration)
            await asyncio.sleep(max(0.0, t0 - time.monotonic()))
            tasks = [asyncio.create_task(self.loop(stub, self.window[1])) for _ in range(a.concurrency)]
            await asyncio.sleep(max(0.0, self.window[0] - time.monotonic()))
            cpu_start = own_cpu_seconds()
            await asyncio.sleep(max(0.0, self.window[1] - time.monotonic()))
            cpu_used = own_cpu_seconds() - cpu_start
            _done, pending = await asyncio.wait(tasks, timeout=a.drain_timeout)
            for task in pending:
                task.cancel()
            return {
                "alerts": self.counted,
                "calls": len(self.latencies),
                "latencies_ms": [round(x, 3) for x in self.latencies],
                "errors": self.errors,
                "error_sample": self.error_sample,
                "cpu_seconds": cpu_used,
                "unfinished_calls": len(pending),
                "completed_calls": self.completed,
            }

    async def seed(self, stub: Any, t0: float) -> dict[str, Any]:
        """Send exactly ``--count`` alerts with keys ``seed-<offset>`` .. as fast as possible."""
        a = self.args
        serial = a.offset
        remaining = a.count
        started = time.monotonic()
        cpu_start = own_cpu_seconds()

        async def sender() -> None:
            nonlocal remaining, serial
            while remaining > 0:
                n = min(a.batch, remaining)
                remaining -= n
                alerts = [alert(f"seed-{serial + i}", serial + i) for i in range(n)]
                serial += n
                request = ingest_service_pb2.IngestAlertsRequest(integration_key=a.key, alerts=alerts)
                for attempt in range(5):
                    try:
                        await stub.IngestAlerts(iter([request]))
                        self.counted += n
                        break
                    except grpc.aio.AioRpcError as exc:
                        self.errors += 1
                        self.error_sample = self.error_sample or str(exc)[:300]
                        await asyncio.sleep(0.2 * (attempt + 1))

        await asyncio.gather(*(sender() for _ in range(a.concurrency)))
        return {
            "alerts": self.counted,
            "seconds": time.monotonic() - started,
            "errors": self.errors,
            "error_sample": self.error_sample,
            "cpu_seconds": own_cpu_seconds() - cpu_start,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--key", default="", help="integration key")
    parser.add_argument("--mode", choices=["unary", "batch", "stream", "seed"], default="unary")
    parser.add_argument("--keys", default="distinct", help="distinct, one, or random:N (seed-0..N-1)")
    parser.add_argument("--prefix", default="k", help="prefix of distinct keys (unique per worker and run)")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    parser.add_argument("--batch", type=int, default=1, help="alerts per IngestAlerts message")
    parser.add_argument("--messages", type=int, default=1, help="messages per IngestAlerts stream")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--count", type=int, default=0, help="seed mode: alerts to send")
    parser.add_argument("--offset", type=int, default=0, help="seed mode: first seed key number")
    parser.add_argument("--out", required=True, help="file for the JSON result")
    args = parser.parse_args()
    write_result(args.out, run_loop(Worker(args).run()))


if __name__ == "__main__":
    main()
