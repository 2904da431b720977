"""Open-loop gRPC IngestAlert load for scenario 5 (ingest -> first page), one process.

Calls start on a fixed schedule (``--rate`` per second from ``t0``), whether or not earlier calls
have been answered, so a slow server is not offered less load (no coordinated omission). Every
alert has its own dedup key (every alert opens an incident) and the key is also its title, which
is what the webhook page carries: the receiver's arrival time for that title minus this process's
send time is the ingest -> first page latency.

Protocol (stdin/stdout, like load_grpc.py): print ``ready`` once connected; read ``go <t0>`` (a
``time.monotonic()`` instant); send from ``t0`` for ``--warmup`` + ``--duration`` seconds; write
JSON to ``--out``: per alert sent inside the measured window ``[title, send wall time (s),
call latency (ms) or null on error]``, the warm-up count, errors, how late the pacer ran, and
this process's CPU during the window.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import grpc
from child_process import own_cpu_seconds, ready_then_go, run_loop, write_result
from load_grpc import alert

from oncall_server.api.v1 import ingest_service_pb2, ingest_service_pb2_grpc


class Pacer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.window: list[list[Any]] = []  # [title, sent wall s, call ms | None]
        self.warmup_sent = 0
        self.errors = 0
        self.error_sample = ""
        self.late_ms: list[float] = []  # how far behind its schedule each measured call started
        self.tasks: set[asyncio.Task[None]] = set()

    async def call(self, stub: Any, serial: int, record: list[Any] | None) -> None:
        a = self.args
        title = f"{a.prefix}-{serial}"
        request = ingest_service_pb2.IngestAlertRequest(
            integration_key=a.key,
            alert=alert(title, serial, title=title),
        )
        began = time.monotonic()
        if record is not None:
            record[0], record[1] = title, time.time()
        try:
            await stub.IngestAlert(request, timeout=a.call_timeout)
        except grpc.aio.AioRpcError as exc:
            self.errors += 1
            self.error_sample = self.error_sample or str(exc)[:300]
            return
        if record is not None:
            record[2] = round((time.monotonic() - began) * 1000, 3)

    async def run(self) -> dict[str, Any]:
        a = self.args
        async with grpc.aio.insecure_channel(a.target) as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
            t0 = await ready_then_go()
            start, end = t0 + a.warmup, t0 + a.warmup + a.duration
            interval = 1.0 / a.rate
            serial = 0
            cpu_start = cpu_end = None
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
                    record = ["", 0.0, None]
                    self.window.append(record)
                    self.late_ms.append((now - due) * 1000)
                else:
                    self.warmup_sent += 1
                task = asyncio.create_task(self.call(stub, serial, record))
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
            "errors": self.errors,
            "error_sample": self.error_sample,
            "answered": sum(1 for r in self.window if r[2] is not None),
            "cpu_seconds": (cpu_end - cpu_start) if cpu_start is not None else 0.0,
            "pacer_late_ms_p50": late[len(late) // 2] if late else 0.0,
            "pacer_late_ms_max": late[-1] if late else 0.0,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--key", required=True, help="integration key")
    parser.add_argument("--rate", type=float, required=True, help="alerts per second (open loop)")
    parser.add_argument("--prefix", required=True, help="title and dedup-key prefix, unique per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--call-timeout", type=float, default=30.0)
    parser.add_argument("--out", required=True, help="file for the JSON result")
    args = parser.parse_args()
    write_result(args.out, run_loop(Pacer(args).run()))


if __name__ == "__main__":
    main()
