"""The leases of the outbox rows a dispatcher is sending, kept renewed while the sends last.

Leases are short (``ONCALL_NOTIFY_LEASE_SECONDS``) and renewed while a send is in progress, so a
slow but live send keeps its row and a dead replica's rows are taken over within about one lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import cast

from sqlalchemy import Table, bindparam, update
from sqlalchemy.ext.asyncio import AsyncEngine

from oncall_server.clock import Clock
from oncall_server.paging.outbox import OutboxRow
from oncall_server.paging.outcomes import STILL_OURS
from oncall_server.storage import bulk
from oncall_server.storage.engine import write_connection
from oncall_server.storage.models import Notification

log = logging.getLogger(__name__)

_notifications = cast(Table, Notification.__table__)
_RENEW_LEASE = update(_notifications).where(*STILL_OURS).values(lease_until=bindparam("b_until"))


class InFlightLeases:
    """Rows this process is sending (id -> attempts, the claim's fencing token), and their renewal."""

    def __init__(self, engine: AsyncEngine, clock: Clock, lease: timedelta) -> None:
        self.engine = engine
        self.clock = clock
        self.lease = lease
        self._held: dict[str, int] = {}

    def hold(self, rows: Sequence[OutboxRow]) -> None:
        for row in rows:
            self._held[row.id] = row.attempts

    def release(self, rows: Sequence[OutboxRow]) -> None:
        for row in rows:
            if self._held.get(row.id) == row.attempts:  # not re-claimed here meanwhile
                del self._held[row.id]

    async def renew(self) -> int:
        """Extend by one lease every row this process is still sending; returns how many it held.

        Fenced by the claim's ``attempts``: a row another dispatcher took over is left alone.
        """
        held = sorted(self._held.items())  # rows locked in id order on PostgreSQL
        if not held:
            return 0
        until = self.clock.now() + self.lease
        async with write_connection(self.engine) as conn:
            await bulk.execute_all(
                conn, [(_RENEW_LEASE, [{"b_id": i, "b_attempts": a, "b_until": until} for i, a in held])]
            )
        return len(held)

    async def keep_renewed(self) -> None:
        """Renew three times per lease until cancelled, so a slow send keeps its row."""
        interval = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew()
            except Exception as exc:  # the next beat tries again; past the lease others take over
                log.warning("could not renew the leases of %d page(s) in flight: %s", len(self._held), exc)
