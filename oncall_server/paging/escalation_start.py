"""What an escalation starts from: the policy frozen onto the incident, and the step after each page.

Shared by the ingest writer (a new incident is inserted with its state after tier 1 already set)
and the scheduler (a step pages its tier and moves on), so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from oncall_server.storage import bulk
from oncall_server.storage.bulk import Executor
from oncall_server.storage.models import EscalationPolicy, Service

# A service and its escalation policy (NULL columns without one): what a new incident freezes.
_SERVICES_WITH_POLICY = bulk.KeyedSelect(
    select(
        Service.id,
        Service.auto_resolve_seconds,
        Service.name,
        EscalationPolicy.id.label("policy_id"),
        EscalationPolicy.name.label("policy_name"),
        EscalationPolicy.repeat_count,
        EscalationPolicy.tiers,
    ).outerjoin(EscalationPolicy, EscalationPolicy.id == Service.escalation_policy_id),
    Service.id,
    "service_id",
)


def snapshot_of(service: Any) -> dict[str, Any]:
    """The policy as the incident will follow it (a ``_SERVICES_WITH_POLICY`` row); ``{}`` pages nobody."""
    if service is None or service.policy_id is None:
        return {}
    return {
        "policy_id": service.policy_id,
        "name": service.policy_name,
        "repeat_count": service.repeat_count,
        "tiers": service.tiers,
    }


def after_page(
    snapshot: dict[str, Any], step: int, due_at: datetime | None, now: datetime
) -> tuple[int, datetime | None]:
    """The step an incident moves to once the tier of ``step`` is paged, and when that one is due
    (None: nothing more to page). Shared by the scheduler and the writer's new incidents, so the
    state written with a new incident is the one its first page moves it to."""
    tiers: list[dict[str, Any]] = snapshot.get("tiers") or []
    if not tiers:
        return step, None
    following = step + 1
    if following < len(tiers) * (int(snapshot.get("repeat_count", 0)) + 1):
        delay = int(tiers[step % len(tiers)].get("delay_seconds", 0))
        return following, (due_at or now) + timedelta(seconds=delay)
    return following, None


@dataclass(frozen=True, slots=True)
class InitialEscalation:
    """A new incident's escalation state once tier 1 is paged, known before it is inserted.

    The writer inserts the incident with it instead of updating the row after the first page: that
    update touches an indexed column, so PostgreSQL writes a second version of the row and its index
    entries (docs/performance.md).
    """

    snapshot: dict[str, Any]
    step: int
    due_at: datetime | None
    service_name: str
    auto_resolve_seconds: int | None


async def initial_escalations(
    conn: Executor, service_ids: Iterable[str], now: datetime
) -> dict[str, InitialEscalation]:
    """Per service, the state a new incident created ``now`` has once tier 1 is paged."""
    initial: dict[str, InitialEscalation] = {}
    for service in await bulk.fetch_by_keys(conn, _SERVICES_WITH_POLICY, service_ids):
        snapshot = snapshot_of(service)
        step, due_at = after_page(snapshot, 0, now, now)
        initial[service.id] = InitialEscalation(
            snapshot, step, due_at, service.name, service.auto_resolve_seconds
        )
    return initial
