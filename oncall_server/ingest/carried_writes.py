"""Outcome writes carried by the ingest commit: page outcomes written in the next ingest transaction.

When an ingest batch is coming anyway (one is running and has not taken its carried writes yet, or
requests are queued), the owner of such writes (the dispatcher) waits for it instead of committing
them in a transaction of its own; the writer takes them just before its commit and settles them
after. Carried writes whose transaction failed go back to their owner, which writes them alone: a
write that cannot commit must not fail ingest twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

# The longest the owner of carried writes waits for an ingest transaction before writing alone.
_CARRY_WAIT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class CarriedWrites:
    """Statements with their rows, and ``settle``, called once: with None after they committed,
    or with the error that failed the transaction (nothing of them is stored then)."""

    writes: list[tuple[Any, list[dict[str, Any]]]]
    settle: Callable[[BaseException | None], None]


class CarriedWritesSource(Protocol):
    """What the writer asks just before its commit (the dispatcher)."""

    def take_carried_writes(self) -> CarriedWrites | None: ...


class NextIngestCommit:
    """Whether an ingest commit that accepts carried writes is coming, and waiting for it.

    The writer tells it when its batches run; the owner of carried writes asks it before writing
    alone. Both are given it at construction, so neither holds the other.
    """

    def __init__(self) -> None:
        self.writer_running = False
        self.requests_waiting = False  # requests are queued for the writer's next batch
        self.accepting = False  # a batch is running and has not taken its carried writes yet
        self._waiters: asyncio.Future[bool] | None = None  # resolved when the next taking transaction ends

    def will_carry(self) -> bool:
        """Whether a transaction that accepts carried writes is coming: a batch before it takes
        them, or requests waiting for the next batch."""
        return self.writer_running and (self.accepting or self.requests_waiting)

    async def carried(self) -> bool:
        """Wait for the next transaction that takes carried writes to end; True if it committed some."""
        if self._waiters is None:
            self._waiters = asyncio.get_running_loop().create_future()
        try:  # a batch stuck on Redis or the database must not hold the outcomes until leases end
            return await asyncio.wait_for(asyncio.shield(self._waiters), _CARRY_WAIT_SECONDS)
        except TimeoutError:
            return False

    def take_waiters(self) -> asyncio.Future[bool] | None:
        """Just before the commit: stop accepting, and return the future on which those who waited
        hear how it went (later waiters get the next batch's)."""
        self.accepting = False
        waiters, self._waiters = self._waiters, None
        return waiters

    def none_coming(self) -> None:
        """No transaction that takes carried writes is coming for those waiting now."""
        waiters, self._waiters = self._waiters, None
        answer(waiters, False)


def answer(waiters: asyncio.Future[bool] | None, carried: bool) -> None:
    """Tell those waiting on ``waiters`` whether their writes were carried."""
    if waiters is not None and not waiters.done():
        waiters.set_result(carried)
