"""Alerts dropped by routing rules: counted, and the latest kept for operators.

A drop is silent for the sender (2xx, no incident, no page) but must never
be invisible to the operator who wrote the rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import Counter
from redis.asyncio import Redis

from oncall_server.ingest.integrations import IntegrationContext
from oncall_server.ingest.model import NormalizedEvent
from oncall_server.ingest.routing_rules import Drop

KEEP_LATEST = 100
ALERTS_DROPPED = Counter(
    "oncall_alerts_dropped_total", "Alerts dropped by routing rules.", ["integration_id", "rule_index"]
)


@dataclass(frozen=True, slots=True)
class DroppedAlert:
    integration_id: str
    rule_index: int
    rule: str
    reason: str
    title: str
    dropped_at: datetime


def _list_key(integration_id: str) -> str:
    return f"oncall:{{{integration_id}}}:drops"


def _count_key(integration_id: str) -> str:
    return f"oncall:{{{integration_id}}}:drop_counts"


class DropLog:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def record(
        self, context: IntegrationContext, event: NormalizedEvent, drop: Drop, at: datetime
    ) -> None:
        ALERTS_DROPPED.labels(context.integration_id, str(drop.rule_index)).inc()
        entry = json.dumps(
            {
                "rule_index": drop.rule_index,
                "rule": drop.rule,
                "reason": drop.reason,
                "title": event.title,
                "at": at.isoformat(),
            }
        )
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(_list_key(context.integration_id), entry)
            pipe.ltrim(_list_key(context.integration_id), 0, KEEP_LATEST - 1)
            pipe.hincrby(_count_key(context.integration_id), str(drop.rule_index), 1)
            await pipe.execute()

    async def latest(self, integration_id: str, limit: int) -> tuple[list[DroppedAlert], dict[str, int]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(_list_key(integration_id), 0, max(0, min(limit, KEEP_LATEST) - 1))
            pipe.hgetall(_count_key(integration_id))
            entries, counts = await pipe.execute()
        drops = []
        for raw in entries:
            item = json.loads(raw)
            drops.append(
                DroppedAlert(
                    integration_id,
                    item["rule_index"],
                    item["rule"],
                    item["reason"],
                    item["title"],
                    datetime.fromisoformat(item["at"]),
                )
            )
        return drops, {_s(k): int(v) for k, v in counts.items()}


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
