"""Small helpers shared by the test modules."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from sqlalchemy import func, select

from oncall_server.app import App
from oncall_server.storage.models import Alert, Incident


async def post_json(
    url: str, body: Any = None, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        payload = data if data is not None else json.dumps(body).encode()
        async with http.post(
            url, data=payload, headers={"Content-Type": "application/json", **(headers or {})}
        ) as r:
            return r.status, await r.json(content_type=None)


async def count_rows(app: App) -> tuple[int, int]:
    """(alerts, incidents) stored."""
    async with app.sessions() as session:
        alerts = await session.scalar(select(func.count()).select_from(Alert))
        incidents = await session.scalar(select(func.count()).select_from(Incident))
    return int(alerts or 0), int(incidents or 0)
