"""An aiohttp webhook handler that parses the JSON body and answers 202: the HTTP baseline.

Same route, same auth header read, same event loop (uvloop when installed) and
no access log, like ``oncall-server serve`` with ``ONCALL_ACCESS_LOG=false``.
Accepts one alert (an object) or a batch (an array), like the real gateway.

    python bench/noop_http.py --port 8099
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import web


async def ingest(request: web.Request) -> web.Response:
    _key = request.query.get("key") or request.headers.get("X-Integration-Key")
    payload = json.loads(await request.read())
    if isinstance(payload, list):
        results = [{"outcome": "created"} for _ in payload]
        return web.json_response({"status": "ok", "results": results}, status=202)
    return web.json_response({"status": "ok", "outcome": "created"}, status=202)


async def serve(port: int) -> None:
    app = web.Application(client_max_size=512 * 1024)
    app.router.add_post("/api/webhooks/ingest", ingest)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    print(f"noop HTTP listening on port {runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.port))
    except ImportError:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
