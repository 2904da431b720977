"""On-call schedules as stored objects, and who is on call on one.

The rotation arithmetic lives in :mod:`oncall_server.configuration.rotations` (pure, DST
aware); this module validates what callers send, checks that every user it
names belongs to the tenant, and keeps the rows' ``layers``/``overrides``
JSON in the form :func:`rotations.to_json` writes.

Layer times are *local wall-clock* strings in the schedule's zone (so a
daily 09:00 handoff stays at 09:00 across DST changes); override times are
instants.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server.clock import Clock
from oncall_server.configuration import rotations, rows, users
from oncall_server.errors import FailedPrecondition, InvalidArgument, NotFound
from oncall_server.ids import uuid7
from oncall_server.storage.engine import retrying_write
from oncall_server.storage.models import EscalationPolicy, OnCallSchedule

MAX_NAME = 200
MAX_LAYERS = 20
MAX_MEMBERS = 100
MAX_OVERRIDES = 500
# AddScheduleOverride drops overrides that ended this long ago, so a busy schedule never hits MAX_OVERRIDES.
OVERRIDE_RETENTION = timedelta(days=30)
LOCAL_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?")
LOCAL_TIME_FORMAT = '"YYYY-MM-DDTHH:MM[:SS]"'
Overrides = tuple[rotations.Override, ...]


@dataclass(slots=True)
class LayerSpec:
    """A layer as a caller gives it: local times still as text, ``rotation_unit`` "" when unset."""

    members: list[str]
    start: str
    rotation_length: int = 1
    rotation_unit: str = "weeks"
    end: str = ""


@dataclass(slots=True)
class OverrideSpec:
    """An override as a caller gives it; times are aware instants, None when missing."""

    user_id: str
    start: datetime | None
    end: datetime | None

    def build(self, where: str) -> rotations.Override:
        if not self.user_id:
            raise InvalidArgument.field(f"{where}.user_id", "is required")
        if self.start is None:
            raise InvalidArgument.field(f"{where}.start_time", "is required")
        if self.end is None:
            raise InvalidArgument.field(f"{where}.end_time", "is required")
        if self.end <= self.start:
            raise InvalidArgument.field(f"{where}.end_time", "must be after start_time")
        return rotations.Override(self.user_id, self.start, self.end)


@dataclass(slots=True)
class ScheduleSpec:
    """The writable fields of a schedule."""

    name: str = ""
    time_zone: str = ""
    layers: list[LayerSpec] = field(default_factory=list)
    overrides: list[OverrideSpec] = field(default_factory=list)

    def build(self) -> rotations.Schedule:
        """The validated engine schedule; INVALID_ARGUMENT naming the field otherwise (users not checked)."""
        self.name = self.name.strip()
        if not self.name or len(self.name) > MAX_NAME:
            raise InvalidArgument.field("schedule.name", f"must be 1 to {MAX_NAME} characters")
        if not self.time_zone.strip():
            raise InvalidArgument.field("schedule.time_zone", 'is required, e.g. "Europe/Berlin"')
        if len(self.layers) > MAX_LAYERS:
            raise InvalidArgument.field("schedule.layers", f"must have at most {MAX_LAYERS} layers")
        if len(self.overrides) > MAX_OVERRIDES:
            raise InvalidArgument.field("schedule.overrides", f"must have at most {MAX_OVERRIDES} overrides")
        layers = tuple(_layer(spec, f"schedule.layers[{i}]") for i, spec in enumerate(self.layers))
        overrides = tuple(spec.build(f"schedule.overrides[{i}]") for i, spec in enumerate(self.overrides))
        schedule = rotations.Schedule(self.time_zone.strip(), layers, overrides)
        schedule.validate()
        return schedule


def _layer(spec: LayerSpec, where: str) -> rotations.Layer:
    if len(spec.members) > MAX_MEMBERS:
        raise InvalidArgument.field(f"{where}.members", f"must have at most {MAX_MEMBERS} members")
    for index, member in enumerate(spec.members):
        if not member:
            raise InvalidArgument.field(f"{where}.members[{index}]", "must be a user ID")
    if not spec.rotation_unit:
        raise InvalidArgument.field(f"{where}.rotation_unit", "is required")
    if not spec.start.strip():
        raise InvalidArgument.field(f"{where}.start", f"is required, as local time {LOCAL_TIME_FORMAT}")
    layer = rotations.Layer(
        members=tuple(spec.members),
        start=parse_local_time(spec.start, f"{where}.start"),
        rotation_length=spec.rotation_length,
        rotation_unit=spec.rotation_unit,
        end=parse_local_time(spec.end, f"{where}.end") if spec.end.strip() else None,
    )
    layer.validate(where)
    return layer


def parse_local_time(value: str, where: str) -> datetime:
    """A naive local wall-clock time from ``YYYY-MM-DDTHH:MM[:SS]``; offsets are refused, not ignored."""
    value = value.strip()
    if not LOCAL_TIME_RE.fullmatch(value):
        raise InvalidArgument.field(
            where, f"must be local wall-clock time {LOCAL_TIME_FORMAT} without a UTC offset"
        )
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument.field(where, f"{value!r} is not a valid date and time") from None


def user_refs(schedule: rotations.Schedule, prefix: str = "schedule") -> list[tuple[str, str]]:
    """Every user the schedule names, with the field path an error about it should carry."""
    refs = [
        (f"{prefix}.layers[{i}].members[{j}]", member)
        for i, layer in enumerate(schedule.layers)
        for j, member in enumerate(layer.members)
    ]
    refs += [(f"{prefix}.overrides[{i}].user_id", o.user) for i, o in enumerate(schedule.overrides)]
    return refs


def engine_schedule(row: OnCallSchedule) -> rotations.Schedule:
    """The row as the engine's schedule."""
    return rotations.from_json(row.time_zone, row.layers, row.overrides)


def _store(row: OnCallSchedule, schedule: rotations.Schedule) -> None:
    row.time_zone = schedule.time_zone
    row.layers, row.overrides = rotations.to_json(schedule)


async def load_schedule(
    session: AsyncSession, tenant_id: str, schedule_id: str, *, lock: rows.Lock = None
) -> OnCallSchedule:
    return await rows.load(session, OnCallSchedule, "schedule", tenant_id, schedule_id, lock=lock)


async def existing_schedules(session: AsyncSession, tenant_id: str, schedule_ids: Sequence[str]) -> set[str]:
    """Which of ``schedule_ids`` are schedules of the tenant; ``FOR KEY SHARE`` on them until commit."""
    return await rows.existing(session, OnCallSchedule, tenant_id, schedule_ids)


async def create_schedule(
    sessions: async_sessionmaker[AsyncSession], clock: Clock, tenant_id: str, spec: ScheduleSpec
) -> OnCallSchedule:
    schedule = spec.build()
    now = clock.now()

    async def work(session: AsyncSession) -> OnCallSchedule:
        row = OnCallSchedule(id=uuid7(), tenant_id=tenant_id, name=spec.name, created_at=now, updated_at=now)
        _store(row, schedule)
        await users.check_users(session, tenant_id, user_refs(schedule))
        session.add(row)
        return row

    return await rows.write(sessions, work, taken=_taken(spec), missing=_MISSING)


async def get_schedule(
    sessions: async_sessionmaker[AsyncSession], tenant_id: str, schedule_id: str
) -> OnCallSchedule:
    return await rows.get(sessions, OnCallSchedule, "schedule", tenant_id, schedule_id)


async def list_schedules(
    sessions: async_sessionmaker[AsyncSession], tenant_id: str, page_size: int, after: str | None
) -> list[OnCallSchedule]:
    return await rows.list_page(sessions, OnCallSchedule, tenant_id, page_size, after)


async def update_schedule(
    sessions: async_sessionmaker[AsyncSession],
    clock: Clock,
    tenant_id: str,
    schedule_id: str,
    spec: ScheduleSpec,
) -> OnCallSchedule:
    """Replaces the whole schedule, checked before the row changes, so a bad update changes nothing."""
    schedule = spec.build()

    async def work(session: AsyncSession) -> OnCallSchedule:
        row = await load_schedule(session, tenant_id, schedule_id, lock="update")
        await users.check_users(session, tenant_id, user_refs(schedule))
        row.name = spec.name
        _store(row, schedule)
        row.updated_at = clock.now()
        return row

    return await rows.write(sessions, work, taken=_taken(spec), missing=_MISSING)


_MISSING = "the tenant or a user it names is gone (deleted meanwhile)"


def _taken(spec: ScheduleSpec) -> str:
    return f"a schedule named {spec.name!r} already exists"


async def delete_schedule(
    sessions: async_sessionmaker[AsyncSession], tenant_id: str, schedule_id: str
) -> None:
    """FAILED_PRECONDITION while an escalation policy pages the schedule: that policy would page nobody."""

    async def work(session: AsyncSession) -> None:
        row = await load_schedule(session, tenant_id, schedule_id, lock="update")
        paging_policies = [
            f"escalation policy {policy.name!r} ({policy.id})"
            for policy in await session.scalars(
                select(EscalationPolicy)
                .where(EscalationPolicy.tenant_id == tenant_id)
                .order_by(EscalationPolicy.id)
            )
            if any(
                target.get("type") == "schedule" and target.get("id") == schedule_id
                for tier in policy.tiers
                for target in tier.get("targets", ())
            )
        ]
        if paging_policies:
            raise FailedPrecondition(
                f"schedule {schedule_id!r} is still paged by {', '.join(paging_policies)}; "
                "remove it there first"
            )
        await session.delete(row)

    await retrying_write(sessions, work)


@dataclass(frozen=True, slots=True)
class OnCall:
    """The answer of :func:`who_is_on_call`."""

    at: datetime
    user_id: str | None
    user: users.UserRecord | None


async def who_is_on_call(
    sessions: async_sessionmaker[AsyncSession],
    clock: Clock,
    tenant_id: str,
    schedule_id: str,
    at: datetime | None,
) -> OnCall:
    """Who is on call at ``at`` (now when None), with their contact methods."""
    when = at or clock.now()
    async with sessions() as session:
        row = await load_schedule(session, tenant_id, schedule_id)
        user_id = rotations.who_is_on_call(engine_schedule(row), when)
        found = await users.get_users(session, tenant_id, [user_id]) if user_id else []
    return OnCall(when, user_id, found[0] if found else None)


async def _change_overrides(
    sessions: async_sessionmaker[AsyncSession],
    clock: Clock,
    tenant_id: str,
    schedule_id: str,
    change: Callable[[AsyncSession, Overrides, datetime], Awaitable[Overrides]],
) -> OnCallSchedule:
    """Overrides have no rows of their own: ``change`` rewrites the schedule's list under its row lock."""

    async def work(session: AsyncSession) -> OnCallSchedule:
        row = await load_schedule(session, tenant_id, schedule_id, lock="update")
        current = engine_schedule(row)
        now = clock.now()
        overrides = await change(session, current.overrides, now)
        _store(row, rotations.Schedule(current.time_zone, current.layers, overrides))
        row.updated_at = now
        return row

    return await retrying_write(sessions, work)


async def add_override(
    sessions: async_sessionmaker[AsyncSession],
    clock: Clock,
    tenant_id: str,
    schedule_id: str,
    spec: OverrideSpec,
) -> OnCallSchedule:
    """Appends an override (the newest wins where overrides overlap) and drops long-finished ones."""
    override = spec.build("override")

    async def add(session: AsyncSession, current: Overrides, now: datetime) -> Overrides:
        await users.check_users(session, tenant_id, [("override.user_id", override.user)])
        kept = tuple(o for o in current if o.end > now - OVERRIDE_RETENTION)
        if len(kept) >= MAX_OVERRIDES:
            raise FailedPrecondition(
                f"schedule {schedule_id!r} already has {MAX_OVERRIDES} overrides; remove some first"
            )
        return (*kept, override)

    return await _change_overrides(sessions, clock, tenant_id, schedule_id, add)


async def remove_override(
    sessions: async_sessionmaker[AsyncSession],
    clock: Clock,
    tenant_id: str,
    schedule_id: str,
    spec: OverrideSpec,
) -> OnCallSchedule:
    """Removes the (last) override equal to ``spec``: overrides have no ids, their fields identify them."""
    override = spec.build("override")

    async def remove(session: AsyncSession, current: Overrides, now: datetime) -> Overrides:
        matches = [i for i, o in enumerate(current) if o == override]
        if not matches:
            raise NotFound(f"schedule {schedule_id!r} has no such override")
        last = matches[-1]
        return current[:last] + current[last + 1 :]

    return await _change_overrides(sessions, clock, tenant_id, schedule_id, remove)
