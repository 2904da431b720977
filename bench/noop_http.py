"""An aiohttp webhook handler that parses the JSON body and answers 202: the HTTP baseline.

Same route, same auth header read, same event loop (uvloop when installed) and
no access log, like ``oncall-server serve`` with ``ONCALL_ACCESS_LOG=false``.
Accepts one alert (an object) or a batch (an array), like the real gateway.

    python bench/noop_http.py --port 8099
"""

from __future__ import annotations

import json

from aiohttp import web
from child_process import serve_aiohttp, serve_main


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
    await serve_aiohttp(app, port, "noop HTTP")


if __name__ == "__main__":
    serve_main(__doc__, serve)
