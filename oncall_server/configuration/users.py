"""Users, their contact methods and their notification rules: who can be paged, and how.

A page reaches a user through their notification rules: each rule uses one
contact method ``delay_seconds`` after the page starts. A user with contact
methods but no rules is paged on every contact method at once, so adding a
contact method is enough to make someone reachable; rules only refine it.

Schedules and escalation policies name users by id; a user they name cannot
be deleted (FAILED_PRECONDITION says which object still names them), so a
page can never point at nobody.

Row locks (PostgreSQL; SQLite serialises writers instead): objects that name
a user take ``FOR KEY SHARE`` on it while they are written, deleting a user
takes ``FOR UPDATE`` before looking for referrers, so the two cannot cross.
Changes to a user's contact methods and rules take ``FOR NO KEY UPDATE`` on
the user, which serialises the per-user limits without blocking referrers.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server.clock import Clock
from oncall_server.configuration import rows
from oncall_server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from oncall_server.ids import is_valid_id, uuid7
from oncall_server.plugins import Plugins
from oncall_server.storage.engine import retrying_write
from oncall_server.storage.models import (
    ContactMethod,
    EscalationPolicy,
    NotificationRule,
    OnCallSchedule,
    User,
)

MAX_NAME = 200
MAX_EMAIL = 320
MAX_SECRET = 128
MAX_CONTACT_METHODS = 20
MAX_NOTIFICATION_RULES = 50
MAX_RULE_DELAY_SECONDS = 24 * 3600
# Deliberately loose: one "@", something on each side, no spaces. Deliverability is the mail server's call.
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+")

T = TypeVar("T")
Owned = TypeVar("Owned", ContactMethod, NotificationRule)


@dataclass(slots=True)
class UserFields:
    """The writable fields of a user."""

    name: str = ""
    email: str = ""

    def validate(self) -> None:
        self.name = self.name.strip()
        if not self.name or len(self.name) > MAX_NAME:
            raise InvalidArgument.field("user.name", f"must be 1 to {MAX_NAME} characters")
        # Lower-cased so that "Alice@x" and "alice@x" are one person for the uniqueness check.
        self.email = self.email.strip().lower()
        if not self.email:
            raise InvalidArgument.field("user.email", "is required")
        if len(self.email) > MAX_EMAIL or not EMAIL_RE.fullmatch(self.email):
            raise InvalidArgument.field("user.email", "is not an email address")


@dataclass(slots=True)
class ContactMethodFields:
    """A contact method as a caller gives it."""

    type: str = ""
    address: str = ""
    secret: str = ""

    def validate(self, plugins: Plugins) -> None:
        """Checks the fields and asks the channel for the canonical address."""
        self.type = self.type.strip()
        if not self.type:
            raise InvalidArgument.field("contact_method.type", "is required")
        channel = plugins.channel(self.type)  # INVALID_ARGUMENT on contact_method.type when not installed
        if not self.address.strip():
            raise InvalidArgument.field("contact_method.address", "is required")
        try:
            self.address = channel.validate_address(self.address.strip())
        except ValueError as exc:
            raise InvalidArgument.field("contact_method.address", str(exc) or "is not valid") from None
        if len(self.secret) > MAX_SECRET:
            raise InvalidArgument.field("contact_method.secret", f"must be at most {MAX_SECRET} characters")


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user with their contact methods (oldest first) and rules (by delay): what the API returns."""

    user: User
    contact_methods: list[ContactMethod] = field(default_factory=list)
    notification_rules: list[NotificationRule] = field(default_factory=list)


async def load_user(session: AsyncSession, tenant_id: str, user_id: str, *, lock: rows.Lock = None) -> User:
    """The tenant's user row; NOT_FOUND for another tenant's or a malformed id."""
    return await rows.load(session, User, "user", tenant_id, user_id, lock=lock)


async def existing_users(session: AsyncSession, tenant_id: str, user_ids: Sequence[str]) -> set[str]:
    """Which of ``user_ids`` are users of the tenant; ``FOR KEY SHARE`` on them until commit."""
    return await rows.existing(session, User, tenant_id, user_ids)


async def check_users(session: AsyncSession, tenant_id: str, refs: Sequence[tuple[str, str]]) -> None:
    """Every ``(field path, user id)`` names a user of the tenant, else INVALID_ARGUMENT on that path."""
    found = await existing_users(session, tenant_id, [user_id for _, user_id in refs])
    for path, user_id in refs:
        if user_id not in found:
            raise InvalidArgument.field(path, f"no user {user_id!r} in this tenant")


async def _record(session: AsyncSession, user: User) -> UserRecord:
    return (await _records(session, [user]))[0]


async def _records(session: AsyncSession, users: Sequence[User]) -> list[UserRecord]:
    """Users with their contact methods and rules, in two queries however many users there are."""
    ids = [u.id for u in users]
    if not ids:
        return []
    methods = (
        await session.scalars(
            select(ContactMethod).where(ContactMethod.user_id.in_(ids)).order_by(ContactMethod.id)
        )
    ).all()
    rules = (
        await session.scalars(
            select(NotificationRule)
            .where(NotificationRule.user_id.in_(ids))
            .order_by(NotificationRule.delay_seconds, NotificationRule.id)
        )
    ).all()
    return [
        UserRecord(
            user,
            [m for m in methods if m.user_id == user.id],
            [r for r in rules if r.user_id == user.id],
        )
        for user in users
    ]


async def create_user(
    sessions: async_sessionmaker[AsyncSession], clock: Clock, tenant_id: str, spec: UserFields
) -> UserRecord:
    spec.validate()
    now = clock.now()

    async def work(session: AsyncSession) -> User:
        user = User(
            id=uuid7(), tenant_id=tenant_id, name=spec.name, email=spec.email, created_at=now, updated_at=now
        )
        session.add(user)
        return user

    return UserRecord(await rows.write(sessions, work, taken=_taken(spec), missing=_MISSING))


async def get_user(sessions: async_sessionmaker[AsyncSession], tenant_id: str, user_id: str) -> UserRecord:
    async with sessions() as session:
        return await _record(session, await load_user(session, tenant_id, user_id))


async def get_users(session: AsyncSession, tenant_id: str, user_ids: Sequence[str]) -> list[UserRecord]:
    """The tenant's users among ``user_ids`` (unknown ids are skipped), with contact methods and rules."""
    ids = sorted({i for i in user_ids if is_valid_id(i)})
    if not ids:
        return []
    users = (await session.scalars(select(User).where(User.tenant_id == tenant_id, User.id.in_(ids)))).all()
    return await _records(session, users)


async def list_users(
    sessions: async_sessionmaker[AsyncSession], tenant_id: str, page_size: int, after: str | None
) -> list[UserRecord]:
    async with sessions() as session:
        return await _records(session, await rows.page(session, User, tenant_id, page_size, after))


async def update_user(
    sessions: async_sessionmaker[AsyncSession], clock: Clock, tenant_id: str, user_id: str, spec: UserFields
) -> UserRecord:
    """Replaces name and email; validated before anything is written, so a bad update changes nothing."""
    spec.validate()

    async def work(session: AsyncSession) -> UserRecord:
        user = await load_user(session, tenant_id, user_id, lock="no_key_update")
        user.name, user.email, user.updated_at = spec.name, spec.email, clock.now()
        await session.flush()  # a taken email fails here, answered by rows.write
        return await _record(session, user)

    return await rows.write(sessions, work, taken=_taken(spec), missing=_MISSING)


_MISSING = "the tenant is gone (deleted meanwhile)"


def _taken(spec: UserFields) -> str:
    return f"a user with email {spec.email!r} already exists"


async def delete_user(sessions: async_sessionmaker[AsyncSession], tenant_id: str, user_id: str) -> None:
    """Deletes the user, their rules and contact methods; FAILED_PRECONDITION while anything names them."""

    async def work(session: AsyncSession) -> None:
        user = await load_user(session, tenant_id, user_id, lock="update")
        referrers = await user_referrers(session, tenant_id, user_id)
        if referrers:
            raise FailedPrecondition(
                f"user {user_id!r} is still named by {', '.join(referrers)}; remove them there first"
            )
        await session.execute(delete(NotificationRule).where(NotificationRule.user_id == user_id))
        await session.execute(delete(ContactMethod).where(ContactMethod.user_id == user_id))
        await session.delete(user)

    await retrying_write(sessions, work)


async def user_referrers(session: AsyncSession, tenant_id: str, user_id: str) -> list[str]:
    """Descriptions of the schedules and escalation policies that name the user (JSON, so scanned here)."""
    out: list[str] = []
    for schedule in await session.scalars(
        select(OnCallSchedule).where(OnCallSchedule.tenant_id == tenant_id).order_by(OnCallSchedule.id)
    ):
        members = {m for layer in schedule.layers for m in layer.get("members", ())}
        if user_id in members or any(o.get("user") == user_id for o in schedule.overrides):
            out.append(f"schedule {schedule.name!r} ({schedule.id})")
    for policy in await session.scalars(
        select(EscalationPolicy).where(EscalationPolicy.tenant_id == tenant_id).order_by(EscalationPolicy.id)
    ):
        if any(
            target.get("type") == "user" and target.get("id") == user_id
            for tier in policy.tiers
            for target in tier.get("targets", ())
        ):
            out.append(f"escalation policy {policy.name!r} ({policy.id})")
    return out


async def _change_user(
    sessions: async_sessionmaker[AsyncSession],
    tenant_id: str,
    user_id: str,
    change: Callable[[AsyncSession, User], Awaitable[T]],
) -> tuple[T, UserRecord]:
    """``change`` to what hangs off the user, under ``FOR NO KEY UPDATE`` on them (which serialises
    the per-user limits); its result and the user as they now are."""

    async def work(session: AsyncSession) -> tuple[T, UserRecord]:
        user = await load_user(session, tenant_id, user_id, lock="no_key_update")
        result = await change(session, user)
        await session.flush()
        return result, await _record(session, user)

    return await retrying_write(sessions, work)


async def _owned(session: AsyncSession, model: type[Owned], row_id: str, user: User) -> Owned | None:
    """The user's contact method or rule ``row_id``; None for another user's or a malformed id."""
    row = await session.get(model, row_id) if is_valid_id(row_id) else None
    return row if row is not None and row.user_id == user.id else None


async def add_contact_method(
    sessions: async_sessionmaker[AsyncSession],
    clock: Clock,
    plugins: Plugins,
    tenant_id: str,
    user_id: str,
    spec: ContactMethodFields,
) -> tuple[ContactMethod, UserRecord]:
    spec.validate(plugins)

    async def add(session: AsyncSession, user: User) -> ContactMethod:
        count = await session.scalar(
            select(func.count()).select_from(ContactMethod).where(ContactMethod.user_id == user_id)
        )
        if (count or 0) >= MAX_CONTACT_METHODS:
            raise FailedPrecondition(f"user {user_id!r} already has {MAX_CONTACT_METHODS} contact methods")
        method = ContactMethod(
            id=uuid7(),
            tenant_id=tenant_id,
            user_id=user_id,
            type=spec.type,
            address=spec.address,
            secret=spec.secret,
            created_at=clock.now(),
        )
        session.add(method)
        return method

    return await _change_user(sessions, tenant_id, user_id, add)


async def remove_contact_method(
    sessions: async_sessionmaker[AsyncSession], tenant_id: str, user_id: str, contact_method_id: str
) -> UserRecord:
    """Removes the contact method and the rules that use it (a rule without its method pages nobody)."""

    async def remove(session: AsyncSession, user: User) -> None:
        method = await _owned(session, ContactMethod, contact_method_id, user)
        if method is None:
            raise NotFound(f"contact method {contact_method_id!r} not found on user {user_id!r}")
        await session.execute(
            delete(NotificationRule).where(NotificationRule.contact_method_id == contact_method_id)
        )
        await session.delete(method)

    _, record = await _change_user(sessions, tenant_id, user_id, remove)
    return record


async def add_notification_rule(
    sessions: async_sessionmaker[AsyncSession],
    clock: Clock,
    tenant_id: str,
    user_id: str,
    contact_method_id: str,
    delay_seconds: int,
) -> tuple[NotificationRule, UserRecord]:
    if not 0 <= delay_seconds <= MAX_RULE_DELAY_SECONDS:
        raise InvalidArgument.field("notification_rule.delay", "must be between 0 and 24 hours")
    if not contact_method_id:
        raise InvalidArgument.field("notification_rule.contact_method_id", "is required")

    async def add(session: AsyncSession, user: User) -> NotificationRule:
        if await _owned(session, ContactMethod, contact_method_id, user) is None:
            raise InvalidArgument.field(
                "notification_rule.contact_method_id",
                f"no contact method {contact_method_id!r} on user {user_id!r}",
            )
        rules = (
            await session.scalars(select(NotificationRule).where(NotificationRule.user_id == user_id))
        ).all()
        if len(rules) >= MAX_NOTIFICATION_RULES:
            raise FailedPrecondition(
                f"user {user_id!r} already has {MAX_NOTIFICATION_RULES} notification rules"
            )
        if any(r.contact_method_id == contact_method_id and r.delay_seconds == delay_seconds for r in rules):
            raise AlreadyExists("the user already has a rule for this contact method with this delay")
        rule = NotificationRule(
            id=uuid7(),
            tenant_id=tenant_id,
            user_id=user_id,
            contact_method_id=contact_method_id,
            delay_seconds=delay_seconds,
            created_at=clock.now(),
        )
        session.add(rule)
        return rule

    return await _change_user(sessions, tenant_id, user_id, add)


async def remove_notification_rule(
    sessions: async_sessionmaker[AsyncSession], tenant_id: str, user_id: str, rule_id: str
) -> UserRecord:
    async def remove(session: AsyncSession, user: User) -> None:
        rule = await _owned(session, NotificationRule, rule_id, user)
        if rule is None:
            raise NotFound(f"notification rule {rule_id!r} not found on user {user_id!r}")
        await session.delete(rule)

    _, record = await _change_user(sessions, tenant_id, user_id, remove)
    return record
