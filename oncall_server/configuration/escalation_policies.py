"""Escalation policies: who is paged for a service's incidents, in what order.

Stored on ``EscalationPolicy.tiers`` in exactly the form the escalation
engine reads::

    [{"delay_seconds": 300, "targets": [{"type": "user" | "schedule", "id": "..."}]}]

``delay_seconds`` is how long the engine waits for an acknowledgement after
paging that tier before it pages the next one (after the last tier, before
the next pass); so tier 0's delay matters too and has the same bounds.

A policy can only name users and schedules of its own tenant, and neither
can be deleted while a policy names it; a policy cannot be deleted while a
service uses it. Together that means a running policy never points at
something missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server.clock import Clock
from oncall_server.configuration import rows, schedules, users
from oncall_server.errors import FailedPrecondition, InvalidArgument
from oncall_server.ids import uuid7
from oncall_server.storage.engine import retrying_write
from oncall_server.storage.models import EscalationPolicy, Service

MAX_NAME = 200
MAX_DESCRIPTION = 4000
MAX_TIERS = 20
MAX_TARGETS = 10
MAX_REPEAT_COUNT = 9
MIN_DELAY_SECONDS = 60
MAX_DELAY_SECONDS = 24 * 3600
TARGET_TYPES = ("user", "schedule")


@dataclass(slots=True)
class TargetSpec:
    """A user or schedule to page; ``type`` is "" when the caller left it unset."""

    type: str
    id: str


@dataclass(slots=True)
class TierSpec:
    """One tier; ``delay_seconds`` is None when the caller left it unset."""

    delay_seconds: int | None
    targets: list[TargetSpec] = field(default_factory=list)


@dataclass(slots=True)
class PolicySpec:
    """The writable fields of a policy."""

    name: str = ""
    description: str = ""
    tiers: list[TierSpec] = field(default_factory=list)
    repeat_count: int = 0

    def validate(self) -> None:
        """Checks everything but whether the targets exist (that needs the database)."""
        self.name = self.name.strip()
        if not self.name or len(self.name) > MAX_NAME:
            raise InvalidArgument.field("escalation_policy.name", f"must be 1 to {MAX_NAME} characters")
        if len(self.description) > MAX_DESCRIPTION:
            raise InvalidArgument.field(
                "escalation_policy.description", f"must be at most {MAX_DESCRIPTION} characters"
            )
        if not 0 <= self.repeat_count <= MAX_REPEAT_COUNT:
            raise InvalidArgument.field(
                "escalation_policy.repeat_count", f"must be between 0 and {MAX_REPEAT_COUNT}"
            )
        if not self.tiers:
            raise InvalidArgument.field("escalation_policy.tiers", "needs at least one tier")
        if len(self.tiers) > MAX_TIERS:
            raise InvalidArgument.field("escalation_policy.tiers", f"must have at most {MAX_TIERS} tiers")
        for i, tier in enumerate(self.tiers):
            where = f"escalation_policy.tiers[{i}]"
            if tier.delay_seconds is None or not MIN_DELAY_SECONDS <= tier.delay_seconds <= MAX_DELAY_SECONDS:
                raise InvalidArgument.field(f"{where}.delay", "must be between 1 minute and 24 hours")
            if not tier.targets:
                raise InvalidArgument.field(f"{where}.targets", "needs at least one target")
            if len(tier.targets) > MAX_TARGETS:
                raise InvalidArgument.field(f"{where}.targets", f"must have at most {MAX_TARGETS} targets")
            seen: dict[tuple[str, str], int] = {}
            for j, target in enumerate(tier.targets):
                if target.type not in TARGET_TYPES:
                    raise InvalidArgument.field(f"{where}.targets[{j}].type", "must be USER or SCHEDULE")
                if not target.id:
                    raise InvalidArgument.field(f"{where}.targets[{j}].id", "is required")
                first = seen.setdefault((target.type, target.id), j)
                if first != j:
                    raise InvalidArgument.field(f"{where}.targets[{j}]", f"repeats targets[{first}]")

    def tiers_json(self) -> list[dict[str, Any]]:
        """The stored form the escalation engine reads."""
        return [
            {
                "delay_seconds": tier.delay_seconds,
                "targets": [{"type": t.type, "id": t.id} for t in tier.targets],
            }
            for tier in self.tiers
        ]

    async def check_targets(self, session: AsyncSession, tenant_id: str) -> None:
        """Every target is a user or schedule of the tenant (and stays so until the caller commits)."""
        targets = [t for tier in self.tiers for t in tier.targets]
        found = {
            "user": await users.existing_users(
                session, tenant_id, [t.id for t in targets if t.type == "user"]
            ),
            "schedule": await schedules.existing_schedules(
                session, tenant_id, [t.id for t in targets if t.type == "schedule"]
            ),
        }
        for i, tier in enumerate(self.tiers):
            for j, target in enumerate(tier.targets):
                if target.id not in found[target.type]:
                    raise InvalidArgument.field(
                        f"escalation_policy.tiers[{i}].targets[{j}].id",
                        f"no {target.type} {target.id!r} in this tenant",
                    )


def parse_tiers(tiers: Sequence[dict[str, Any]]) -> list[TierSpec]:
    """The stored JSON back as specs."""
    return [
        TierSpec(int(t["delay_seconds"]), [TargetSpec(str(x["type"]), str(x["id"])) for x in t["targets"]])
        for t in tiers
    ]


async def load_policy(
    session: AsyncSession, tenant_id: str, policy_id: str, *, lock: rows.Lock = None
) -> EscalationPolicy:
    return await rows.load(session, EscalationPolicy, "escalation policy", tenant_id, policy_id, lock=lock)


async def check_policy_reference(session: AsyncSession, tenant_id: str, policy_id: str, path: str) -> None:
    """INVALID_ARGUMENT on ``path`` unless the tenant has the policy; FOR KEY SHARE holds it till commit."""
    if not await rows.existing(session, EscalationPolicy, tenant_id, [policy_id]):
        raise InvalidArgument.field(path, f"no escalation policy {policy_id!r} in this tenant")


async def create_policy(
    sessions: async_sessionmaker[AsyncSession], clock: Clock, tenant_id: str, spec: PolicySpec
) -> EscalationPolicy:
    spec.validate()
    now = clock.now()

    async def work(session: AsyncSession) -> EscalationPolicy:
        row = EscalationPolicy(
            id=uuid7(),
            tenant_id=tenant_id,
            name=spec.name,
            description=spec.description,
            tiers=spec.tiers_json(),
            repeat_count=spec.repeat_count,
            created_at=now,
            updated_at=now,
        )
        await spec.check_targets(session, tenant_id)
        session.add(row)
        return row

    return await rows.write(sessions, work, taken=_taken(spec), missing=_MISSING)


async def get_policy(
    sessions: async_sessionmaker[AsyncSession], tenant_id: str, policy_id: str
) -> EscalationPolicy:
    return await rows.get(sessions, EscalationPolicy, "escalation policy", tenant_id, policy_id)


async def list_policies(
    sessions: async_sessionmaker[AsyncSession], tenant_id: str, page_size: int, after: str | None
) -> list[EscalationPolicy]:
    return await rows.list_page(sessions, EscalationPolicy, tenant_id, page_size, after)


async def update_policy(
    sessions: async_sessionmaker[AsyncSession],
    clock: Clock,
    tenant_id: str,
    policy_id: str,
    spec: PolicySpec,
) -> EscalationPolicy:
    """Replaces the whole policy, checked first, so a bad update changes nothing.

    Incidents already escalating keep the snapshot they started with.
    """
    spec.validate()

    async def work(session: AsyncSession) -> EscalationPolicy:
        row = await load_policy(session, tenant_id, policy_id, lock="update")
        await spec.check_targets(session, tenant_id)
        row.name, row.description = spec.name, spec.description
        row.tiers, row.repeat_count = spec.tiers_json(), spec.repeat_count
        row.updated_at = clock.now()
        return row

    return await rows.write(sessions, work, taken=_taken(spec), missing=_MISSING)


_MISSING = "the tenant or a target it names is gone (deleted meanwhile)"


def _taken(spec: PolicySpec) -> str:
    return f"an escalation policy named {spec.name!r} already exists"


async def delete_policy(sessions: async_sessionmaker[AsyncSession], tenant_id: str, policy_id: str) -> None:
    """FAILED_PRECONDITION while a service uses the policy: its incidents would page nobody."""

    async def work(session: AsyncSession) -> None:
        row = await load_policy(session, tenant_id, policy_id, lock="update")
        services = (
            await session.scalars(
                select(Service)
                .where(Service.tenant_id == tenant_id, Service.escalation_policy_id == policy_id)
                .order_by(Service.name)
            )
        ).all()
        if services:
            names = ", ".join(f"service {s.name!r} ({s.id})" for s in services)
            raise FailedPrecondition(
                f"escalation policy {policy_id!r} is used by {names}; give it another policy first"
            )
        await session.delete(row)

    await retrying_write(sessions, work)
