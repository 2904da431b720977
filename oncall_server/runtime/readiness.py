"""Readiness: may this process be sent traffic? The database answers, Redis answers, and the
schema is at this code's head revision, each check bounded by :data:`CHECK_TIMEOUT_SECONDS`.

``GET /readyz`` runs the checks on demand; the gRPC role runs them every
:data:`CHECK_INTERVAL_SECONDS` too, and every result (either way) is handed to the listeners, so
the gRPC health status (``""`` and every ``oncall.v1`` service) follows readiness: SERVING when
ready, NOT_SERVING when not, and ``Health/Watch`` streams see the change.

Readiness is not liveness: a process whose Redis is unreachable is alive and should not be
restarted for it, only be sent no traffic until Redis is back.

A database at a revision this code does not know (a newer release migrated it during a rolling
upgrade) passes: refusing it would take every replica of the older release out at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from oncall_server.runtime.app import App
from oncall_server.storage import migrate

log = logging.getLogger(__name__)
CHECK_TIMEOUT_SECONDS = 2.0
"""How long one check may take before it counts as failed (the database and the migrations
share it: one connection)."""
CHECK_INTERVAL_SECONDS = 5.0
"""How often the gRPC role checks readiness for its health status."""
OK = "ok"
CHECKS = ("database", "redis", "migrations")


@dataclass(frozen=True)
class Report:
    """Each check's outcome (``ok`` or why not) and the checks that failed."""

    checks: dict[str, str]
    failing: tuple[str, ...] = field(default=())

    @property
    def ready(self) -> bool:
        return not self.failing

    def body(self) -> dict[str, Any]:
        """What ``/readyz`` answers."""
        if self.ready:
            return {"status": "ready", "checks": self.checks}
        return {"status": "not ready", "failing": list(self.failing), "checks": self.checks}


Listener = Callable[[Report], Awaitable[None]]


def _failure(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g} s"
    return f"unreachable ({type(exc).__name__})"  # never the message: it may name hosts or users


class Readiness:
    def __init__(
        self,
        app: App,
        *,
        timeout_seconds: float | None = None,
        interval_seconds: float | None = None,
    ) -> None:
        """The defaults are this module's constants as they are now (tests change them)."""
        self.app = app
        self.timeout_seconds = CHECK_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds
        self.interval_seconds = CHECK_INTERVAL_SECONDS if interval_seconds is None else interval_seconds
        self.last: Report | None = None
        self._listeners: list[Listener] = []
        self._scripts = ScriptDirectory.from_config(migrate.alembic_config())
        self.heads = frozenset(self._scripts.get_heads())

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def check(self) -> Report:
        """Run every check now (concurrently), tell the listeners, return the report."""
        (database, migrations), redis = await asyncio.gather(self._database(), self._redis())
        checks = {"database": database, "redis": redis, "migrations": migrations}
        failing = tuple(name for name in CHECKS if checks[name] != OK)
        if database != OK:  # the migrations were not checked: only the database failed
            failing = tuple(name for name in failing if name != "migrations")
        report = Report(checks, failing)
        self._log_change(report)
        self.last = report
        for listener in list(self._listeners):
            try:
                await listener(report)
            except Exception:
                log.exception("a readiness listener failed")
        return report

    async def run_until(self, stopping: asyncio.Event) -> None:
        """Check every ``interval_seconds`` until ``stopping`` is set."""
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), self.interval_seconds)
            except TimeoutError:
                await self.check()

    def _log_change(self, report: Report) -> None:
        before = self.last
        if report.ready and before is not None and not before.ready:
            log.info("ready again")
        elif not report.ready and (before is None or before.checks != report.checks):
            log.warning(
                "not ready: %s", ", ".join(f"{name} {report.checks[name]}" for name in report.failing)
            )

    async def _redis(self) -> str:
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await self.app.redis.ping()
        except Exception as exc:
            log.debug("readiness: Redis check failed", exc_info=exc)
            return _failure(exc, self.timeout_seconds)
        return OK

    async def _database(self) -> tuple[str, str]:
        """(database, migrations): the revision is read on the connection that answered."""
        try:
            async with asyncio.timeout(self.timeout_seconds):
                async with self.app.engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
                    current = await connection.run_sync(_current_heads)
        except Exception as exc:
            log.debug("readiness: database check failed", exc_info=exc)
            return _failure(exc, self.timeout_seconds), "unknown (the database did not answer)"
        return OK, self._migrations(current)

    def _migrations(self, current: frozenset[str]) -> str:
        if current == self.heads:
            return OK
        head = ", ".join(sorted(self.heads))
        if not current:
            return f"behind: no revision applied, this code's head is {head}"
        for revision in current:
            try:
                known = self._scripts.get_revision(revision) is not None
            except Exception:
                known = False
            if not known:
                return OK  # a newer release's revision: see the module's docstring
        return f"behind: the database is at {', '.join(sorted(current))}, this code's head is {head}"


def _current_heads(connection: Connection) -> frozenset[str]:
    return frozenset(MigrationContext.configure(connection).get_current_heads())
