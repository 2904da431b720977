"""What the ``oncall-server`` commands share: settings from the arguments, printing results, and
opening the database for the admin commands."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from oncall_server.clock import Clock, SystemClock
from oncall_server.runtime.settings import Settings
from oncall_server.storage import migrate
from oncall_server.storage.engine import create_engine, session_factory

Command = Callable[[argparse.Namespace], Awaitable[int]]
Sessions = async_sessionmaker[AsyncSession]

_SETTING_ARGUMENTS = (
    "data_dir",
    "database_url",
    "redis_url",
    "grpc_listen",
    "http_listen",
    "roles",
    "log_level",
    "workers",
)


def settings_of(args: argparse.Namespace) -> Settings:
    """``ONCALL_*`` settings, with whatever the command line gave taking precedence."""
    overrides: dict[str, Any] = {}
    for name in _SETTING_ARGUMENTS:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def emit(args: argparse.Namespace, data: dict[str, Any]) -> None:
    """``key: value`` lines for people, or JSON with ``--json`` for scripts."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            print(f"{key}: {value}")


@contextlib.asynccontextmanager
async def migrated_engine(args: argparse.Namespace) -> AsyncIterator[AsyncEngine]:
    """The configured database, its schema upgraded first (a no-op when it is current)."""
    settings = settings_of(args)
    engine = create_engine(settings.resolved_database_url, sqlite_driver=settings.sqlite_driver)
    try:
        await migrate.upgrade(engine)
        yield engine
    finally:
        await engine.dispose()


def admin_command(work: Callable[[argparse.Namespace, Sessions, Clock], Awaitable[int]]) -> Command:
    """A command run straight on SQL rather than through the API: it needs no running server, and
    works while one runs."""

    @functools.wraps(work)
    async def command(args: argparse.Namespace) -> int:
        async with migrated_engine(args) as engine:
            return await work(args, session_factory(engine), SystemClock())

    return command
