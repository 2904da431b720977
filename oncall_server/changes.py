"""The change feed behind WatchIncidents.

Every committed change to an incident is published on a Redis pub/sub
channel per tenant, so watchers connected to any replica see changes made by
every replica. Messages carry ids only; watchers read the state from SQL.
One message carries all of a tenant's changes from one commit: a batch of
500 paged incidents is one PUBLISH, not 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.asyncio import Redis

from oncall_server import json_codec


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
            await pubsub.aclose()  # type: ignore[no-untyped-call]
