"""The change feed behind WatchIncidents.

Every committed change to an incident is published on a Redis pub/sub
channel per tenant, so watchers connected to any replica see changes made by
every replica. Messages carry ids only; watchers read the state from SQL.
One message carries all of a tenant's changes queued since the last send: a
batch of 500 paged incidents is one PUBLISH, not 500, and under load an ingest
batch's changes and its pages' outcomes share one round trip. Publishing only
queues: nobody waits for watchers to be told (an ingest caller used to wait a
Redis round trip for it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from oncall_server import json_codec

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Change:
    tenant_id: str
    service_id: str
    incident_id: str
    entry_id: str


def _channel(tenant_id: str) -> str:
    return f"oncall:changes:{tenant_id}"


class ChangeFeed:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._queued: list[Change] = []
        self._sender: asyncio.Task[None] | None = None

    def publish(self, changes: Iterable[Change]) -> None:
        """Queue committed changes for watchers; they go out in order, on the next turn of the loop
        or right after the send in progress."""
        self._queued.extend(changes)
        if self._queued and (self._sender is None or self._sender.done()):
            self._sender = asyncio.get_running_loop().create_task(self._send(), name="change-feed")

    async def flush(self) -> None:
        """Until every change queued so far is sent (or its send failed)."""
        while self._sender is not None and not self._sender.done():
            await asyncio.wait([self._sender])

    async def _send(self) -> None:
        while self._queued:
            taken, self._queued = self._queued, []
            try:
                await self._publish(taken)
            except Exception:  # committed: watchers see the state on their next read
                log.exception("could not publish %d change(s) to watchers", len(taken))

    async def _publish(self, changes: list[Change]) -> None:
        by_tenant: dict[str, list[tuple[str, str, str]]] = {}
        for change in changes:
            by_tenant.setdefault(change.tenant_id, []).append(
                (change.service_id, change.incident_id, change.entry_id)
            )
        if len(by_tenant) == 1:
            [(tenant_id, items)] = by_tenant.items()
            await self.redis.publish(_channel(tenant_id), json_codec.dumps(items))
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant_id, items in by_tenant.items():
                pipe.publish(_channel(tenant_id), json_codec.dumps(items))
            await pipe.execute()

    async def subscribe(self, tenant_id: str) -> AsyncIterator[Change]:
        """Changes of one tenant from now on, until the caller stops iterating."""
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(_channel(tenant_id))
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                for service_id, incident_id, entry_id in json_codec.loads(message["data"]):
                    yield Change(tenant_id, service_id, incident_id, entry_id)
        finally:
            await pubsub.unsubscribe()
            await pubsub.aclose()
