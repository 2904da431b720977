"""SQLite calls run on the event loop's own thread, with an asynchronous busy wait.

aiosqlite runs every call on a worker thread: a queue put, a thread wake-up, the GIL handed over
and back, a ``call_soon_threadsafe`` — about 200 µs of CPU per call and four calls per statement,
so ~350 µs per statement through SQLAlchemy (``bench/README.md``), against microseconds for the
statement itself on a local WAL database. That hand-off was most of the per-batch cost of ingest
and paging on SQLite. This connection keeps aiosqlite's interface (SQLAlchemy's dialect drives
it) but runs each call at once.

The catch is waiting: a call that finds the database locked must not block the loop (the lock
holder may be a task of this very loop, suspended on Redis). So the connection's SQLite busy
timeout is 0, and a "database is locked" answer is retried here after an ``asyncio.sleep``
(1 ms, doubling to 50 ms, for up to :data:`BUSY_TIMEOUT_SECONDS`), which lets the holder finish.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

import aiosqlite

BUSY_TIMEOUT_SECONDS = 10.0


class _RunNow:
    """Stands in for aiosqlite's queue to its worker thread: runs each item at once."""

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as exc:  # handed to the awaiting caller, as the worker thread would
            if future is not None:
                future.set_exception(exc)
            return
        if future is not None:
            future.set_result(result)


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection without its thread (see the module docstring)."""

    def __init__(self, connector: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(connector, iter_chunk_size=256)
        self._tx = _RunNow()  # type: ignore[assignment]

    def __await__(self) -> Generator[Any, None, aiosqlite.Connection]:
        return self._connect().__await__()  # no worker thread to start

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        delay, deadline = 0.001, 0.0
        while True:
            try:
                return fn(*args, **kwargs)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                now = asyncio.get_running_loop().time()
                deadline = deadline or now + BUSY_TIMEOUT_SECONDS
                if now >= deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)


def connector(database: str) -> Callable[[], InlineConnection]:
    """An ``async_creator`` for SQLAlchemy: connections to ``database`` that run inline."""

    def create() -> InlineConnection:
        # check_same_thread off only because the pool may finalise a connection from another
        # thread (garbage collection); every call is made from the event loop's thread.
        return InlineConnection(partial(sqlite3.connect, database, check_same_thread=False))

    return create
