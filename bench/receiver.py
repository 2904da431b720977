"""A webhook receiver for the paging scenarios (5 and 6): records when each page arrives, answers 204.

Its own process (aiohttp on uvloop, no access log), on loopback. For every ``POST /page`` it takes
``time.time()`` (wall clock, the same machine as the load process and the seeder) as the handler
starts, parses the JSON body On-Call's ``webhook`` channel sends, and keeps
``(arrival, title, notification_id, incident_id)``. A repeated ``X-OnCall-Notification-Id`` (a
retried delivery) is counted but not recorded twice.

* ``GET /records?since=N`` - the records from index N on, as JSON (``{"records": [...], "count": n,
  "duplicates": d}``);
* ``POST /reset`` - forget everything (between measurements).

    python bench/receiver.py --port 8098
"""

from __future__ import annotations

import json
import time

from aiohttp import web
from child_process import serve_aiohttp, serve_main

RECORDS = web.AppKey("records", list)
SEEN = web.AppKey("seen", set)
STATS = web.AppKey("stats", dict)


async def page(request: web.Request) -> web.Response:
    arrived = time.time()
    body = json.loads(await request.read())
    notification_id = request.headers.get("X-OnCall-Notification-Id", body.get("notification_id", ""))
    seen = request.app[SEEN]
    if notification_id in seen:
        request.app[STATS]["duplicates"] += 1
        return web.Response(status=204)
    seen.add(notification_id)
    request.app[RECORDS].append(
        (arrived, body.get("title", ""), notification_id, body.get("incident_id", ""))
    )
    return web.Response(status=204)


async def records(request: web.Request) -> web.Response:
    since = int(request.query.get("since", "0"))
    rows = request.app[RECORDS]
    return web.json_response(
        {"records": rows[since:], "count": len(rows), "duplicates": request.app[STATS]["duplicates"]}
    )


async def reset(request: web.Request) -> web.Response:
    request.app[RECORDS].clear()
    request.app[SEEN].clear()
    request.app[STATS]["duplicates"] = 0
    return web.Response(status=204)


async def serve(port: int) -> None:
    app = web.Application(client_max_size=1024 * 1024)
    app[RECORDS] = []
    app[SEEN] = set()
    app[STATS] = {"duplicates": 0}
    app.router.add_post("/page", page)
    app.router.add_get("/records", records)
    app.router.add_post("/reset", reset)
    await serve_aiohttp(app, port, "page receiver")


if __name__ == "__main__":
    serve_main(__doc__, serve)
