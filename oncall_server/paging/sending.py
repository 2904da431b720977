"""The network side of a page: at-most-once sends marked before they begin, every send bounded in time.

What a take-over of a dead dispatcher's row does depends on the channel's declared delivery
(``hookspecs.delivery_of``): an at-least-once channel's page is sent again with the same
notification id; an at-most-once channel's page is marked ``delivering`` in its own transaction
before the network call, and a ``delivering`` row whose lease ran out is never sent again
(:mod:`oncall_server.paging.outbox_claims` records it ``unknown``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import cast

from sqlalchemy import Table, tuple_, update
from sqlalchemy.ext.asyncio import AsyncEngine

from oncall_server.clock import Clock
from oncall_server.hookspecs import DeliveryError, OutcomeUnknown
from oncall_server.paging.deliveries import Delivery
from oncall_server.paging.outbox import DELIVERING, SENDING
from oncall_server.storage.engine import write_connection
from oncall_server.storage.models import Notification

log = logging.getLogger(__name__)

_notifications = cast(Table, Notification.__table__)


async def begin_at_most_once(
    engine: AsyncEngine, deliveries: list[Delivery], clock: Clock, lease: timedelta
) -> list[Delivery]:
    """Mark the at-most-once sends ``delivering`` (committed) before any of them goes out; returns
    the deliveries still to send.

    The mark is fenced by the claim (status ``sending``, same ``attempts``): a row whose lease
    ran out and that another dispatcher took meanwhile is not sent here (nor recorded).
    """
    starting = [d for d in deliveries if d.at_most_once and d.channel is not None and d.page is not None]
    if not starting:
        return deliveries
    async with write_connection(engine) as conn:
        result = await conn.execute(
            update(_notifications)
            .where(
                tuple_(_notifications.c.id, _notifications.c.attempts).in_(
                    [(d.row.id, d.row.attempts) for d in starting]
                ),
                _notifications.c.status == SENDING,
            )
            .values(status=DELIVERING, lease_until=clock.now() + lease)
            .returning(_notifications.c.id)
        )
        ours = {row_id for (row_id,) in result}
    if len(ours) == len(starting):
        return deliveries
    lost = {d.row.id for d in starting if d.row.id not in ours}
    log.info("%d page(s) were taken over by another dispatcher before their send began", len(lost))
    return [d for d in deliveries if d.row.id not in lost]


async def send_with_timeout(delivery: Delivery, timeout_seconds: float) -> None:
    """Send through the delivery's channel; what went wrong is left on the delivery, never raised.

    The timeout is real elapsed time (the event loop's): without it a channel that never answers
    would keep its lease renewed, and its page, forever.
    """
    channel = delivery.channel
    if delivery.page is None or delivery.destination is None or channel is None:
        return
    try:
        async with asyncio.timeout(timeout_seconds):
            await channel.send(delivery.page, delivery.destination)
    except TimeoutError:  # it may have gone out: an at-most-once page is not sent again
        delivery.error = f"no answer within {timeout_seconds:g} s (ONCALL_NOTIFY_SEND_TIMEOUT_SECONDS)"
        delivery.retryable, delivery.unknown = True, True
    except DeliveryError as exc:
        delivery.error, delivery.retryable = str(exc) or type(exc).__name__, exc.retryable
        delivery.unknown = isinstance(exc, OutcomeUnknown)
    except Exception as exc:  # a plugin bug must not stop other pages; the page may have gone out
        log.exception("channel %s failed", delivery.row.channel)
        delivery.error, delivery.retryable = f"{type(exc).__name__}: {exc}", True
        delivery.unknown = True
