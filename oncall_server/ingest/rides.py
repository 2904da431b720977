"""Writes that ride in the ingest writer's next transaction instead of one of their own.

The outcomes of sent pages are recorded after each ingest batch's pages go out. In a transaction
of their own that was a pooled connection, a ``COMMIT`` and its fsync for every ingest batch:
~40 % of what the dispatcher cost per batch. When an ingest batch is coming anyway (one is
running and has not taken its riders yet, or requests are queued), the owner of such writes (the
dispatcher) waits for it; the writer takes them just before its commit and settles them after.
A ride whose transaction failed goes back to its owner, which writes it alone: a write that
cannot commit must not fail ingest twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Ride:
    """Statements with their rows, and ``settle``, called once: with None after they committed,
    or with the error that failed the transaction (nothing of them is stored then)."""

    writes: list[tuple[Any, list[dict[str, Any]]]]
    settle: Callable[[BaseException | None], None]


class RideSource(Protocol):
    """What the writer asks at its take point (the dispatcher)."""

    def take_ride(self) -> Ride | None: ...


class Carrier(Protocol):
    """What a ride's owner asks before writing alone (the ingest writer)."""

    def will_carry(self) -> bool:
        """Whether a transaction that takes rides is coming: a batch before its take point, or
        requests waiting for the next batch."""
        ...

    async def carried(self) -> bool:
        """Wait for the next take point's transaction to end; True if it committed a ride."""
        ...
