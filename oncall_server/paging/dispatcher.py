"""The outbox dispatcher: takes claimed page rows, sends them through the channel plugins, records outcomes.

The pieces, in the order a row goes through them: :mod:`~oncall_server.paging.outbox_claims`
(claims due rows), :mod:`~oncall_server.paging.leases` (keeps the claims' leases while sends
last), :mod:`~oncall_server.paging.deliveries` (page, destination and channel of each row),
:mod:`~oncall_server.paging.sending` (the at-most-once mark and the bounded send),
:mod:`~oncall_server.paging.send_outcomes` (what became of each send) and
:mod:`~oncall_server.paging.outcomes` (commits them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server.clock import Clock
from oncall_server.paging.claim_loop import run_claim_loop
from oncall_server.paging.deliveries import Delivery, prepare_deliveries
from oncall_server.paging.leases import InFlightLeases
from oncall_server.paging.outbox import OutboxRow
from oncall_server.paging.outbox_claims import claim_due_rows
from oncall_server.paging.outcomes import OutcomeRecorder
from oncall_server.paging.send_outcomes import decide_outcomes
from oncall_server.paging.sending import begin_at_most_once, send_with_timeout
from oncall_server.plugins import Plugins
from oncall_server.storage.engine import write_transaction

log = logging.getLogger(__name__)


class Dispatcher:
    """Sends claimed outbox rows through the channel plugins, and records what happened.

    Rows come two ways: claimed by :meth:`run_once` (retries, expired leases, rows written by
    processes without a dispatcher, delayed notification rules), or handed over by
    :meth:`take` right after the transaction that wrote them already claimed.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        plugins: Plugins,
        recorder: OutcomeRecorder,
        *,
        public_url: str,
        max_attempts: int = 10,
        lease_seconds: float = 10.0,
        send_timeout_seconds: float = 30.0,
        retry_base_seconds: float = 1.0,
        retry_max_seconds: float = 300.0,
        poll_seconds: float = 0.5,
        batch_size: int = 200,
        max_handed_over: int = 5000,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.plugins = plugins
        self.recorder = recorder  # commits what became of the pages sent
        self.public_url = public_url
        self.max_attempts = max_attempts
        self.lease = timedelta(seconds=lease_seconds)
        # Without it a channel that never answers would keep its lease renewed, and its page, forever.
        self.send_timeout_seconds = send_timeout_seconds
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self.max_handed_over = max_handed_over
        self.running = False
        self._engine = sessions.kw["bind"]
        self._wakeup = asyncio.Event()
        self._handed_over: set[asyncio.Task[None]] = set()
        self._handed_over_rows = 0
        self._in_flight = InFlightLeases(self._engine, clock, self.lease)

    def wake(self) -> None:
        self._wakeup.set()

    def claim_until(self) -> datetime | None:
        """A lease for rows a transaction of this process writes for :meth:`take`; None when they
        should be left pending instead: no dispatcher loop runs here, or sends are backing up."""
        if not self.running or self._handed_over_rows >= self.max_handed_over:
            return None
        return self.clock.now() + self.lease

    def take(self, rows: Sequence[OutboxRow]) -> None:
        """Send rows its caller's committed transaction wrote already claimed; returns at once."""
        if not rows:
            return
        self._handed_over_rows += len(rows)
        task = asyncio.create_task(self._deliver_handed_over(list(rows)))
        self._handed_over.add(task)
        task.add_done_callback(self._handed_over.discard)

    async def _deliver_handed_over(self, rows: list[OutboxRow]) -> None:
        try:
            await self._deliver(rows)
        except Exception:  # the rows stay leased; after the lease any dispatcher retries them
            log.exception("sending %d page(s) failed; they are retried when their lease ends", len(rows))
        finally:
            self._handed_over_rows -= len(rows)

    async def run_forever(self, stopping: asyncio.Event) -> None:
        self.running = True
        heartbeat = asyncio.create_task(self._in_flight.keep_renewed(), name="outbox-leases")
        try:
            await run_claim_loop(
                stopping,
                self._wakeup,
                self.run_once,
                batch_size=self.batch_size,
                idle_seconds=self._poll_interval,
                log=log,
                failure="notification dispatch failed; retrying",
            )
        finally:
            self.running = False
            try:
                await self.drain()
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat

    async def _poll_interval(self) -> float:
        return self.poll_seconds

    async def renew_leases(self) -> int:
        """Extend by one lease every row this process is still sending; returns how many it held."""
        return await self._in_flight.renew()

    async def drain(self) -> None:
        """Until every batch handed over by :meth:`take` is sent and recorded."""
        while self._handed_over:
            await asyncio.gather(*self._handed_over, return_exceptions=True)

    async def run_once(self) -> int:
        """Claim, send and record one batch; returns how many rows it handled."""
        claimed = await self._claim()
        if claimed:
            await self._deliver(claimed)
        return len(claimed)

    async def _claim(self) -> list[OutboxRow]:
        now = self.clock.now()
        async with write_transaction(self.sessions) as session:
            claimed, unknown = await claim_due_rows(session, now, self.lease, self.batch_size)
        if unknown:
            self.recorder.announce([unknown])
        return claimed

    async def _deliver(self, rows: list[OutboxRow]) -> None:
        self._in_flight.hold(rows)
        try:
            deliveries = await prepare_deliveries(self._engine, rows, self.plugins.channels, self.public_url)
            deliveries = await begin_at_most_once(self._engine, deliveries, self.clock, self.lease)
            await asyncio.gather(*(send_with_timeout(d, self.send_timeout_seconds) for d in deliveries))
            await self._record(deliveries)
        finally:
            self._in_flight.release(rows)

    async def _record(self, deliveries: list[Delivery]) -> None:
        """Returns once the deliveries' outcomes are committed."""
        outcomes = decide_outcomes(
            deliveries,
            self.clock.now(),
            max_attempts=self.max_attempts,
            retry_base_seconds=self.retry_base_seconds,
            retry_max_seconds=self.retry_max_seconds,
        )
        await self.recorder.record(outcomes)
