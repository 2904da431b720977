"""Whom a tier of an escalation policy pages: its users, and whoever is on call in its schedules."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from oncall_server.configuration.rotations import Schedule, from_json, who_is_on_call
from oncall_server.storage.bulk import Executor
from oncall_server.storage.models import OnCallSchedule

# A tier's schedules, loaded once per batch of steps: id -> (tenant, schedule).
Schedules = dict[str, tuple[str, Schedule]]


async def load_schedules(session: Executor, tiers: Iterable[dict[str, Any]]) -> Schedules:
    """Every schedule these tiers name, in one query."""
    wanted: set[str] = set()
    for tier in tiers:
        wanted.update(t["id"] for t in tier.get("targets", []) if t.get("type") == "schedule")
    if not wanted:
        return {}
    rows = await session.execute(
        select(
            OnCallSchedule.id,
            OnCallSchedule.tenant_id,
            OnCallSchedule.time_zone,
            OnCallSchedule.layers,
            OnCallSchedule.overrides,
        ).where(OnCallSchedule.id.in_(wanted))
    )
    return {row.id: (row.tenant_id, from_json(row.time_zone, row.layers, row.overrides)) for row in rows}


def tier_users(
    targets: list[dict[str, str]], schedules: Schedules, tenant_id: str, at: datetime
) -> list[str]:
    """User ids a tier pages at ``at``, each once: its users, and whoever is on call in its
    schedules (only the tenant's own: a snapshot naming another tenant's schedule pages nobody there)."""
    users: list[str] = []
    for target in targets:
        if target.get("type") == "user":
            users.append(target["id"])
        elif (found := schedules.get(target.get("id", ""))) is not None and found[0] == tenant_id:
            on_call = who_is_on_call(found[1], at)
            if on_call:
                users.append(on_call)
    return list(dict.fromkeys(users))
