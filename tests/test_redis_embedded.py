"""The embedded Redis: our own process on a unix socket, persistent, one per data directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from redis.asyncio import Redis

from oncall_server.redis_embedded import EmbeddedRedis


@pytest.fixture
def data_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="oncall-er-", dir="/tmp"))  # unix socket paths must stay short


async def test_data_survives_a_restart_through_the_aof(data_dir: Path) -> None:
    first = EmbeddedRedis(data_dir)
    client = Redis.from_url(await first.start())
    await client.set("dedup", "incident-1")
    await client.aclose()
    pid = int((data_dir / "redis" / "redis.pid").read_text())
    await first.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    await first.stop()  # idempotent

    async with EmbeddedRedis(data_dir) as second:
        client = Redis.from_url(second.url)
        assert await client.get("dedup") == b"incident-1"
        assert (await client.config_get("appendonly"))["appendonly"] == "yes"
        assert (await client.config_get("maxmemory-policy"))["maxmemory-policy"] == "noeviction"
        await client.aclose()


async def test_a_second_server_on_the_same_data_dir_is_refused(data_dir: Path) -> None:
    async with EmbeddedRedis(data_dir):
        with pytest.raises(RuntimeError, match="in use"):
            await EmbeddedRedis(data_dir).start()


async def test_a_stale_socket_is_cleaned_up(data_dir: Path) -> None:
    (data_dir / "redis").mkdir(parents=True)
    (data_dir / "redis" / "redis.sock").write_text("left by a crash")
    async with EmbeddedRedis(data_dir) as redis:
        assert await Redis.from_url(redis.url).ping()


def test_a_too_long_socket_path_is_a_clear_error() -> None:
    import asyncio

    deep = Path("/tmp") / ("x" * 120)
    with pytest.raises(RuntimeError, match="longer than 107 bytes"):
        asyncio.run(EmbeddedRedis(deep).start())
