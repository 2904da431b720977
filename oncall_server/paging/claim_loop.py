"""The loop the escalation scheduler and the outbox dispatcher share: claim due work, run it, wait.

Both claim their work under a lease, so a round that fails leaves its work to be claimed again once
the lease ends: the loop logs the failure and goes on. A full batch suggests more is due, so the
next round starts at once; otherwise the loop waits for a wake-up (work was just written) or its
idle timeout, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable


async def run_claim_loop(
    stopping: asyncio.Event,
    wakeup: asyncio.Event,
    claim_and_run: Callable[[], Awaitable[int]],
    *,
    batch_size: int,
    idle_seconds: Callable[[], Awaitable[float]],
    log: logging.Logger,
    failure: str,
) -> None:
    """Until ``stopping``: run ``claim_and_run`` (returns how many items it claimed), then wait.

    ``idle_seconds`` is asked after each round that was not full: how long to wait at most.
    ``failure`` is logged, with the traceback, on ``log`` when a round raises.
    """
    while not stopping.is_set():
        wakeup.clear()  # before the work: a wake-up during it must not be lost
        try:
            handled = await claim_and_run()
        except Exception:
            log.exception(failure)
            handled = 0
        if handled >= batch_size:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), await idle_seconds())
