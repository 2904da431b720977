"""What the processes the harness starts share: the event loop, the start signal, the result file
and stopping on SIGTERM or SIGINT.

The servers (``noop_grpc.py``, ``noop_http.py``, ``receiver.py``) print ``<what> listening on port N``
once bound; the load processes (``load_grpc.py``, ``load_paging.py``) print ``ready`` once connected,
wait for ``go <t0>`` on stdin and write their result as JSON to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from aiohttp import web

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when installed (as ``oncall-server serve`` does), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def ready_then_go() -> float:
    """Print ``ready``, then wait for the harness's ``go <t0>``; returns ``t0`` (a monotonic instant)."""
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return float(line.split()[1])


def write_result(path: str, result: Any) -> None:
    # A file, not stdout: the event loop may leave stdout non-blocking, which truncates big writes.
    with open(path, "w") as f:
        json.dump(result, f)


async def until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_aiohttp(app: web.Application, port: int, what: str) -> None:
    """Serve ``app`` on loopback without an access log (like ``ONCALL_ACCESS_LOG=false``) until stopped."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    print(f"{what} listening on port {runner.addresses[0][1]}", flush=True)
    await until_stopped()
    await runner.cleanup()


def serve_main(doc: str | None, serve: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """The command line of a server process: ``--port`` (0: any free port)."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    run_loop(serve(args.port))
