"""The change feed behind WatchIncidents.

Every committed change to an incident is published on a Redis pub/sub
channel per tenant, so watchers connected to any replica see changes made by
every replica. Messages carry ids only; watchers read the state from SQL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.asyncio import Redis


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

    async def publish(self, changes: list[Change]) -> None:
        if not changes:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for change in changes:
                pipe.publish(
                    _channel(change.tenant_id),
                    json.dumps({"s": change.service_id, "i": change.incident_id, "e": change.entry_id}),
                )
            await pipe.execute()

    async def subscribe(self, tenant_id: str) -> AsyncIterator[Change]:
        """Changes of one tenant from now on, until the caller stops iterating."""
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(_channel(tenant_id))
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                data = json.loads(message["data"])
                yield Change(tenant_id, data["s"], data["i"], data["e"])
        finally:
            await pubsub.unsubscribe()
            await pubsub.aclose()  # type: ignore[no-untyped-call]
