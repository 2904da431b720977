"""Maintenance windows as the ingest writer sees them: kept per service, checked by token.

Reading a service's windows from SQL for every group commit cost a pooled connection and a
query, ~300 µs of a ~2 ms batch. The writer keeps each service's windows with the token Redis
held for them when they were read; the decision script refuses a service whose token has been
replaced since (:meth:`Coordinator.windows_changed` runs after every change commits), and the
writer then reads them again. A copy is also read again after ``max_age`` seconds: that bounds
how long a change stays unseen when its process died between the commit and replacing the token.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from oncall_server.storage import bulk
from oncall_server.storage.engine import single_read
from oncall_server.storage.models import MaintenanceWindow

# Built once: a statement built per batch cost ~230 µs of SQLAlchemy work (construction, cache key).
_WINDOWS_ENDING_AFTER = bulk.KeyedSelect(
    select(MaintenanceWindow.service_id, MaintenanceWindow.start_at, MaintenanceWindow.end_at).where(
        MaintenanceWindow.end_at > bindparam("earliest")
    ),
    MaintenanceWindow.service_id,
    "service_id",
)


@dataclass(frozen=True, slots=True)
class _Copy:
    token: str  # '' until a decision confirms which token this read stands under
    windows: tuple[tuple[datetime, datetime], ...]
    covers_from: datetime  # windows that ended before this were not read
    read_at: float  # time.monotonic()


class MaintenanceWindows:
    """The writer's copy of the windows of the services it has seen."""

    def __init__(self, engine: AsyncEngine, *, max_age: float = 60.0, max_services: int = 10_000) -> None:
        self.engine = engine
        self.max_age = max_age
        self.max_services = max_services
        self._copies: dict[str, _Copy] = {}

    def token(self, service_id: str) -> str:
        """The token this service's copy was read under, for the decision script to check."""
        copy = self._copies.get(service_id)
        return copy.token if copy else ""

    def confirm(self, service_id: str, token: str) -> None:
        """A decision accepted this service's copy: it stands under ``token`` from now on."""
        copy = self._copies.get(service_id)
        if copy is not None and copy.token != token:
            self._copies[service_id] = _Copy(token, copy.windows, copy.covers_from, copy.read_at)

    def covers(self, service_id: str, at: datetime) -> bool:
        """True if a window of the service holds ``at`` (the service's copy must be current)."""
        return any(start <= at < end for start, end in self._copies[service_id].windows)

    async def refresh(self, services: Iterable[str], earliest: datetime) -> None:
        """Make sure each service has a copy that covers alerts from ``earliest`` on."""
        if len(self._copies) >= self.max_services:
            self._copies.clear()  # services come and go; the batch's are read again below
        now = time.monotonic()
        stale = {
            service_id: copy.token if copy else ""
            for service_id in services
            if (copy := self._copies.get(service_id)) is None
            or not copy.token  # never confirmed (a decision failed): only a new read may stand
            or copy.covers_from > earliest
            or now - copy.read_at > self.max_age
        }
        if stale:
            await self.read(stale, earliest)

    async def read(self, tokens: Mapping[str, str], earliest: datetime) -> None:
        """Read these services' windows from SQL now, each kept under the given token.

        The token must have been current before this read (or be '' for "not known yet"):
        a change committed after the read replaces it, so this copy is refused.
        """
        async with single_read(self.engine) as conn:
            rows = await bulk.fetch_by_keys(conn, _WINDOWS_ENDING_AFTER, tokens, earliest=earliest)
        found: dict[str, list[tuple[datetime, datetime]]] = {service_id: [] for service_id in tokens}
        for service_id, start, end in rows:
            found[service_id].append((start, end))
        read_at = time.monotonic()
        for service_id, windows in found.items():
            self._copies[service_id] = _Copy(tokens[service_id], tuple(windows), earliest, read_at)
