"""The event bus from outside a server: publish an event, list dead letters, replay one."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from oncall_server.errors import OncallError
from oncall_server.runtime.commands import emit, settings_of


@contextlib.asynccontextmanager
async def _redis(args: argparse.Namespace) -> AsyncIterator[Any]:
    """The external Redis, or the embedded one's socket when a local server runs on this data dir."""
    from urllib.parse import quote

    from oncall_server import redis_client

    settings = settings_of(args)
    if settings.redis_url:
        redis = redis_client.connect(settings.redis_url, timeout_seconds=settings.redis_timeout_seconds)
    else:
        socket_path = (settings.data_dir / "redis" / "redis.sock").resolve()
        if not socket_path.exists():
            raise OncallError(f"no Redis: set --redis-url, or start the server on {settings.data_dir} first")
        redis = redis_client.connect(
            f"unix://{quote(str(socket_path))}", timeout_seconds=settings.redis_timeout_seconds
        )
    try:
        yield redis
    finally:
        await redis.aclose()


async def publish(args: argparse.Namespace) -> int:
    from oncall_server.ingest import bus

    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise OncallError(f"payload is not valid JSON: {exc}") from None
    async with _redis(args) as redis:
        message_id = await bus.publish(redis, args.source, payload)
    emit(args, {"stream": bus.stream_of(args.source), "message_id": message_id})
    return 0


async def dead_letters(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from oncall_server.ingest import bus

    async with _redis(args) as redis:
        letters = await bus.dead_letters(redis, args.limit)
    if args.json:
        print(json.dumps([asdict(letter) for letter in letters], indent=2))
    for letter in [] if args.json else letters:
        print(f"{letter.id}  {letter.stream}  {letter.failed_at}  {letter.error}")
    return 0


async def replay(args: argparse.Namespace) -> int:
    from oncall_server.ingest import bus

    async with _redis(args) as redis:
        message_id = await bus.replay(redis, args.id)
    emit(args, {"replayed": args.id, "message_id": message_id})
    return 0
