"""The paging configuration API over real gRPC: users, schedules, escalation policies.

Runs on every backend of the conftest (SQLite, and PostgreSQL when configured).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from oncall_server.api.v1 import (
    catalog_service_pb2,
    catalog_service_pb2_grpc,
    escalation_policy_pb2,
    escalation_policy_service_pb2,
    escalation_policy_service_pb2_grpc,
    schedule_pb2,
    schedule_service_pb2,
    schedule_service_pb2_grpc,
    service_pb2,
    user_pb2,
    user_service_pb2,
    user_service_pb2_grpc,
)
from oncall_server.clock import FakeClock
from oncall_server.configuration import services
from oncall_server.errors import InvalidArgument
from oncall_server.hookspecs import Destination, Page, hookimpl
from oncall_server.storage.models import EscalationPolicy
from oncall_server.testing import RunningServer, Tenant, bootstrap

PAGER = "test-pager"
USER = escalation_policy_pb2.ESCALATION_TARGET_TYPE_USER
SCHEDULE = escalation_policy_pb2.ESCALATION_TARGET_TYPE_SCHEDULE


class PagerChannel:
    """A tiny in-test channel: addresses are phone numbers, stored without spaces."""

    name = PAGER

    def validate_address(self, address: str) -> str:
        compact = address.replace(" ", "")
        if not (compact.startswith("+") and compact[1:].isdigit() and len(compact) > 6):
            raise ValueError("must be a phone number like +49 170 1234567")
        return compact

    async def send(self, page: Page, destination: Destination) -> None:
        """Never called here: these tests configure, they do not page."""

    async def close(self) -> None:
        """Nothing to release."""


class PagerPlugin:
    @hookimpl
    def oncall_register_channels(self, register: Any, settings: Any) -> None:
        register(PagerChannel())


@dataclass
class Api:
    """Stubs on one channel, and the tenant whose token they send."""

    users: user_service_pb2_grpc.UserServiceStub
    schedules: schedule_service_pb2_grpc.ScheduleServiceStub
    policies: escalation_policy_service_pb2_grpc.EscalationPolicyServiceStub
    catalog: catalog_service_pb2_grpc.CatalogServiceStub
    tenant: Tenant

    @property
    def auth(self) -> list[tuple[str, str]]:
        return self.tenant.auth


@pytest.fixture
async def channel(clocked_server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    clocked_server.app.plugins.register(PagerPlugin(), name="test-pager-plugin")
    async with grpc.aio.insecure_channel(clocked_server.grpc_target) as ch:
        yield ch


async def _api(server: RunningServer, channel: grpc.aio.Channel) -> Api:
    return Api(
        user_service_pb2_grpc.UserServiceStub(channel),
        schedule_service_pb2_grpc.ScheduleServiceStub(channel),
        escalation_policy_service_pb2_grpc.EscalationPolicyServiceStub(channel),
        catalog_service_pb2_grpc.CatalogServiceStub(channel),
        await bootstrap(server.app),
    )


@pytest.fixture
async def api(clocked_server: RunningServer, channel: grpc.aio.Channel) -> Api:
    return await _api(clocked_server, channel)


@pytest.fixture
async def other(clocked_server: RunningServer, channel: grpc.aio.Channel) -> Api:
    """A second tenant on the same server."""
    return await _api(clocked_server, channel)


def ts(text: str) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(datetime.fromisoformat(text))
    return out


def minutes(n: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=60 * n)


def violation(error: grpc.aio.AioRpcError) -> tuple[str, str]:
    """The (field, description) of the google.rpc.BadRequest an INVALID_ARGUMENT carries."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    status = rpc_status.from_call(error)
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return bad.field_violations[0].field, bad.field_violations[0].description


async def create_user(api: Api, name: str, email: str) -> user_pb2.User:
    reply = await api.users.CreateUser(
        user_service_pb2.CreateUserRequest(user=user_pb2.User(name=name, email=email)), metadata=api.auth
    )
    return reply.user


async def test_users_with_contact_methods_and_notification_rules(api: Api, other: Api) -> None:
    alice = await create_user(api, " Alice Example ", "Alice@Example.com")
    assert (alice.name, alice.email) == ("Alice Example", "alice@example.com")
    assert alice.id and alice.create_time.seconds and not alice.contact_methods

    added = await api.users.AddContactMethod(
        user_service_pb2.AddContactMethodRequest(
            user_id=alice.id,
            contact_method=user_pb2.ContactMethod(type=PAGER, address=" +49 170 1234567 ", secret="s3cr3t"),
        ),
        metadata=api.auth,
    )
    phone = added.contact_method
    assert (phone.type, phone.address) == (PAGER, "+491701234567")  # the channel's canonical form
    assert phone.has_secret and phone.secret == ""  # write-only
    backup = (
        await api.users.AddContactMethod(
            user_service_pb2.AddContactMethodRequest(
                user_id=alice.id, contact_method=user_pb2.ContactMethod(type=PAGER, address="+15550100")
            ),
            metadata=api.auth,
        )
    ).contact_method
    assert not backup.has_secret

    later = await api.users.AddNotificationRule(
        user_service_pb2.AddNotificationRuleRequest(
            user_id=alice.id,
            notification_rule=user_pb2.NotificationRule(contact_method_id=backup.id, delay=minutes(5)),
        ),
        metadata=api.auth,
    )
    now = await api.users.AddNotificationRule(
        user_service_pb2.AddNotificationRuleRequest(
            user_id=alice.id, notification_rule=user_pb2.NotificationRule(contact_method_id=phone.id)
        ),
        metadata=api.auth,
    )
    got = (await api.users.GetUser(user_service_pb2.GetUserRequest(user_id=alice.id), metadata=api.auth)).user
    assert [m.id for m in got.contact_methods] == [phone.id, backup.id]
    assert all(m.secret == "" for m in got.contact_methods)
    # Rules come ordered by delay: the immediate one first.
    assert [(r.id, r.contact_method_id, r.delay.seconds) for r in got.notification_rules] == [
        (now.notification_rule.id, phone.id, 0),
        (later.notification_rule.id, backup.id, 300),
    ]

    bob = await create_user(api, "Bob", "bob@example.com")
    listed = await api.users.ListUsers(user_service_pb2.ListUsersRequest(page_size=1), metadata=api.auth)
    assert [u.id for u in listed.users] == [alice.id] and listed.next_page_token
    rest = await api.users.ListUsers(
        user_service_pb2.ListUsersRequest(page_token=listed.next_page_token), metadata=api.auth
    )
    assert [u.id for u in rest.users] == [bob.id] and not rest.next_page_token
    assert listed.users[0].notification_rules == got.notification_rules

    # Removing a contact method removes the rules that use it.
    after = await api.users.RemoveContactMethod(
        user_service_pb2.RemoveContactMethodRequest(user_id=alice.id, contact_method_id=backup.id),
        metadata=api.auth,
    )
    assert [m.id for m in after.user.contact_methods] == [phone.id]
    assert [r.contact_method_id for r in after.user.notification_rules] == [phone.id]
    after = await api.users.RemoveNotificationRule(
        user_service_pb2.RemoveNotificationRuleRequest(
            user_id=alice.id, notification_rule_id=now.notification_rule.id
        ),
        metadata=api.auth,
    )
    assert not after.user.notification_rules  # now paged on every contact method at once

    updated = await api.users.UpdateUser(
        user_service_pb2.UpdateUserRequest(user=user_pb2.User(id=alice.id, name="Alice B", email="ab@x.io")),
        metadata=api.auth,
    )
    assert (updated.user.name, updated.user.email) == ("Alice B", "ab@x.io")
    assert [m.id for m in updated.user.contact_methods] == [phone.id]  # untouched by UpdateUser

    # The other tenant sees none of it.
    assert not (await other.users.ListUsers(user_service_pb2.ListUsersRequest(), metadata=other.auth)).users
    # Emails are unique per tenant, not globally.
    assert (await create_user(other, "Alice elsewhere", "AB@x.io")).email == "ab@x.io"


async def test_user_validation_names_the_field_and_changes_nothing(api: Api) -> None:
    alice = await create_user(api, "Alice", "alice@example.com")
    bob = await create_user(api, "Bob", "bob@example.com")
    bobs_phone = (
        await api.users.AddContactMethod(
            user_service_pb2.AddContactMethodRequest(
                user_id=bob.id, contact_method=user_pb2.ContactMethod(type=PAGER, address="+15550199")
            ),
            metadata=api.auth,
        )
    ).contact_method

    async def fails(call: Any, request: Any) -> tuple[str, str]:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await call(request, metadata=api.auth)
        return violation(bad.value)

    def user(**fields: Any) -> user_service_pb2.CreateUserRequest:
        return user_service_pb2.CreateUserRequest(user=user_pb2.User(**fields))

    assert (await fails(api.users.CreateUser, user(name="", email="x@y")))[0] == "user.name"
    assert await fails(api.users.CreateUser, user(name="X", email="not-an-email")) == (
        "user.email",
        "is not an email address",
    )
    assert (
        await fails(
            api.users.CreateUser,
            user(
                name="X", email="x@y", contact_methods=[user_pb2.ContactMethod(type=PAGER, address="+1555")]
            ),
        )
    )[0] == "user.contact_methods"

    def method(**fields: Any) -> user_service_pb2.AddContactMethodRequest:
        return user_service_pb2.AddContactMethodRequest(
            user_id=alice.id, contact_method=user_pb2.ContactMethod(**fields)
        )

    field, why = await fails(api.users.AddContactMethod, method(type="carrier-pigeon", address="roof"))
    assert field == "contact_method.type" and "carrier-pigeon" in why
    assert await fails(api.users.AddContactMethod, method(type=PAGER, address="call me maybe")) == (
        "contact_method.address",
        "must be a phone number like +49 170 1234567",
    )
    assert (
        await fails(api.users.AddContactMethod, method(type=PAGER, address="+15550123", secret="x" * 129))
    )[0] == "contact_method.secret"

    def rule(method_id: str, delay: duration_pb2.Duration | None = None) -> Any:
        return user_service_pb2.AddNotificationRuleRequest(
            user_id=alice.id,
            notification_rule=user_pb2.NotificationRule(contact_method_id=method_id, delay=delay),
        )

    field, why = await fails(api.users.AddNotificationRule, rule(bobs_phone.id))
    assert field == "notification_rule.contact_method_id" and bobs_phone.id in why
    alices_phone = (
        await api.users.AddContactMethod(method(type=PAGER, address="+15550123"), metadata=api.auth)
    ).contact_method
    assert await fails(api.users.AddNotificationRule, rule(alices_phone.id, minutes(24 * 60 + 1))) == (
        "notification_rule.delay",
        "must be between 0 and 24 hours",
    )
    assert (
        await fails(api.users.AddNotificationRule, rule(alices_phone.id, duration_pb2.Duration(seconds=-1)))
    )[0] == "notification_rule.delay"

    before = (
        await api.users.GetUser(user_service_pb2.GetUserRequest(user_id=alice.id), metadata=api.auth)
    ).user
    bad_update = user_service_pb2.UpdateUserRequest(user=user_pb2.User(id=alice.id, name="Alice", email="@"))
    assert (await fails(api.users.UpdateUser, bad_update))[0] == "user.email"
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await api.users.UpdateUser(
            user_service_pb2.UpdateUserRequest(
                user=user_pb2.User(id=alice.id, name="Alice", email="BOB@example.com")
            ),
            metadata=api.auth,
        )
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await api.users.CreateUser(user(name="Bob again", email="bob@EXAMPLE.com"), metadata=api.auth)
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    after = (
        await api.users.GetUser(user_service_pb2.GetUserRequest(user_id=alice.id), metadata=api.auth)
    ).user
    assert after == before


def berlin_schedule(name: str, a: str, b: str, c: str, d: str) -> schedule_pb2.Schedule:
    """Daily 09:00 handoffs between a and b, plus a temporary 12-hour night layer of c and d on top."""
    return schedule_pb2.Schedule(
        name=name,
        time_zone="Europe/Berlin",
        layers=[
            schedule_pb2.ScheduleLayer(
                members=[a, b],
                start="2026-03-27T09:00",
                rotation_length=1,
                rotation_unit=schedule_pb2.ROTATION_UNIT_DAYS,
            ),
            schedule_pb2.ScheduleLayer(
                members=[c, d],
                start="2026-03-30T20:00",
                rotation_length=12,
                rotation_unit=schedule_pb2.ROTATION_UNIT_HOURS,
                end="2026-04-01T08:00",
            ),
        ],
        overrides=[
            schedule_pb2.ScheduleOverride(
                user_id=d,
                start_time=ts("2026-03-28T12:00:00+00:00"),
                end_time=ts("2026-03-28T14:00:00+00:00"),
            )
        ],
    )


async def test_schedule_who_is_on_call_across_a_dst_change(api: Api, clock: FakeClock) -> None:
    a, b, c, d = [await create_user(api, n, f"{n}@example.com") for n in ("anna", "ben", "cleo", "dev")]
    created = await api.schedules.CreateSchedule(
        schedule_service_pb2.CreateScheduleRequest(
            schedule=berlin_schedule("Primary", a.id, b.id, c.id, d.id)
        ),
        metadata=api.auth,
    )
    schedule = created.schedule
    assert schedule.layers[0].start == "2026-03-27T09:00:00"
    assert schedule.layers[1].end == "2026-04-01T08:00:00"
    assert schedule.layers[1].rotation_unit == schedule_pb2.ROTATION_UNIT_HOURS

    async def on_call(at: str | None) -> str:
        request = schedule_service_pb2.WhoIsOnCallRequest(schedule_id=schedule.id, at=ts(at) if at else None)
        reply = await api.schedules.WhoIsOnCall(request, metadata=api.auth)
        assert reply.user_id == reply.user.id
        return {a.id: "anna", b.id: "ben", c.id: "cleo", d.id: "dev", "": "nobody"}[reply.user_id]

    # Berlin is UTC+1 until 2026-03-29 01:00 UTC, UTC+2 after; the daily handoff stays at 09:00 local.
    assert await on_call("2026-03-27T07:59:00+00:00") == "nobody"  # 08:59 CET, before the first shift
    assert await on_call("2026-03-27T08:00:00+00:00") == "anna"  # 09:00 CET
    assert await on_call("2026-03-28T07:59:00+00:00") == "anna"
    assert await on_call("2026-03-28T08:00:00+00:00") == "ben"
    assert await on_call("2026-03-28T12:00:00+00:00") == "dev"  # the override
    assert await on_call("2026-03-28T14:00:00+00:00") == "ben"  # override end is exclusive
    assert await on_call("2026-03-29T01:30:00+00:00") == "ben"  # 03:30 CEST, just after the change
    assert await on_call("2026-03-29T06:59:00+00:00") == "ben"  # 08:59 CEST: a 23-hour shift
    assert await on_call("2026-03-29T07:00:00+00:00") == "anna"  # 09:00 CEST, not 10:00
    # The night layer: 12 elapsed hours each, from 20:00 CEST on the 30th until 08:00 CEST on 1 April.
    assert await on_call("2026-03-30T17:59:00+00:00") == "ben"
    assert await on_call("2026-03-30T18:00:00+00:00") == "cleo"
    assert await on_call("2026-03-31T06:00:00+00:00") == "dev"
    assert await on_call("2026-03-31T18:00:00+00:00") == "cleo"
    assert await on_call("2026-04-01T06:00:00+00:00") == "anna"  # the night layer ended; the day layer shows
    assert await on_call("2026-04-01T07:00:00+00:00") == "ben"

    # Without a time it answers for now (the server's clock), with the user's contact details.
    clock.set(datetime(2026, 3, 29, 7, 30, tzinfo=UTC))
    reply = await api.schedules.WhoIsOnCall(
        schedule_service_pb2.WhoIsOnCallRequest(schedule_id=schedule.id), metadata=api.auth
    )
    assert (reply.user_id, reply.user.email) == (a.id, "anna@example.com")
    assert reply.at.ToDatetime(tzinfo=UTC) == clock.now()

    # An override added later wins over the earlier one where they overlap; removing it restores.
    override = schedule_pb2.ScheduleOverride(
        user_id=c.id, start_time=ts("2026-03-28T13:00:00+00:00"), end_time=ts("2026-03-28T15:00:00+00:00")
    )
    added = await api.schedules.AddScheduleOverride(
        schedule_service_pb2.AddScheduleOverrideRequest(schedule_id=schedule.id, override=override),
        metadata=api.auth,
    )
    assert [o.user_id for o in added.schedule.overrides] == [d.id, c.id]
    assert await on_call("2026-03-28T12:30:00+00:00") == "dev"
    assert await on_call("2026-03-28T13:30:00+00:00") == "cleo"
    removed = await api.schedules.RemoveScheduleOverride(
        schedule_service_pb2.RemoveScheduleOverrideRequest(schedule_id=schedule.id, override=override),
        metadata=api.auth,
    )
    assert [o.user_id for o in removed.schedule.overrides] == [d.id]
    assert await on_call("2026-03-28T13:30:00+00:00") == "dev"
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await api.schedules.RemoveScheduleOverride(
            schedule_service_pb2.RemoveScheduleOverrideRequest(schedule_id=schedule.id, override=override),
            metadata=api.auth,
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND

    # Whole-object update: drop the night layer and the overrides.
    replacement = berlin_schedule("Primary (days only)", a.id, b.id, c.id, d.id)
    del replacement.layers[1]
    del replacement.overrides[:]
    replacement.id = schedule.id
    updated = await api.schedules.UpdateSchedule(
        schedule_service_pb2.UpdateScheduleRequest(schedule=replacement), metadata=api.auth
    )
    assert updated.schedule.name == "Primary (days only)" and len(updated.schedule.layers) == 1
    assert await on_call("2026-03-31T06:00:00+00:00") == "ben"
    listed = await api.schedules.ListSchedules(schedule_service_pb2.ListSchedulesRequest(), metadata=api.auth)
    assert [s.id for s in listed.schedules] == [schedule.id]


async def test_schedule_validation_names_the_field_and_changes_nothing(api: Api, other: Api) -> None:
    a, b = [await create_user(api, n, f"{n}@example.com") for n in ("anna", "ben")]
    stranger = await create_user(other, "stranger", "s@example.com")
    good = berlin_schedule("Primary", a.id, b.id, a.id, b.id)
    stored = (
        await api.schedules.CreateSchedule(
            schedule_service_pb2.CreateScheduleRequest(schedule=good), metadata=api.auth
        )
    ).schedule

    def broken(change: Any) -> schedule_pb2.Schedule:
        copy = schedule_pb2.Schedule()
        copy.CopyFrom(stored)
        change(copy)
        return copy

    def set_layer_start(s: schedule_pb2.Schedule) -> None:
        s.layers[0].start = "2026-03-27T09:00:00+01:00"

    def set_member(s: schedule_pb2.Schedule) -> None:
        s.layers[1].members[0] = stranger.id

    def clear_unit(s: schedule_pb2.Schedule) -> None:
        s.layers[1].rotation_unit = schedule_pb2.ROTATION_UNIT_UNSPECIFIED

    def bad_zone(s: schedule_pb2.Schedule) -> None:
        s.time_zone = "Mars/Olympus_Mons"

    def backwards_override(s: schedule_pb2.Schedule) -> None:
        s.overrides[0].end_time.CopyFrom(ts("2026-03-28T11:00:00+00:00"))

    def bad_end(s: schedule_pb2.Schedule) -> None:
        s.layers[1].end = "2026-03-30T19:00"

    def no_members(s: schedule_pb2.Schedule) -> None:
        del s.layers[0].members[:]

    cases = [
        (set_layer_start, "schedule.layers[0].start", "without a UTC offset"),
        (set_member, "schedule.layers[1].members[0]", f"no user {stranger.id!r} in this tenant"),
        (clear_unit, "schedule.layers[1].rotation_unit", "is required"),
        (bad_zone, "schedule.time_zone", "unknown time zone"),
        (backwards_override, "schedule.overrides[0].end_time", "must be after start_time"),
        (bad_end, "schedule.layers[1].end", "must be after start"),
        (no_members, "schedule.layers[0].members", "needs at least one member"),
    ]
    for change, field, why in cases:
        for call, request in (
            (
                api.schedules.UpdateSchedule,
                schedule_service_pb2.UpdateScheduleRequest(schedule=broken(change)),
            ),
            (
                api.schedules.CreateSchedule,
                schedule_service_pb2.CreateScheduleRequest(schedule=broken(change)),
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await call(request, metadata=api.auth)
            got_field, got_why = violation(bad.value)
            assert got_field == field and why in got_why, (field, got_field, got_why)

    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await api.schedules.CreateSchedule(
            schedule_service_pb2.CreateScheduleRequest(schedule=good), metadata=api.auth
        )
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await api.schedules.AddScheduleOverride(
            schedule_service_pb2.AddScheduleOverrideRequest(
                schedule_id=stored.id,
                override=schedule_pb2.ScheduleOverride(
                    user_id=stranger.id,
                    start_time=ts("2026-04-01T00:00:00+00:00"),
                    end_time=ts("2026-04-02T00:00:00+00:00"),
                ),
            ),
            metadata=api.auth,
        )
    assert violation(bad.value)[0] == "override.user_id"

    after = (
        await api.schedules.GetSchedule(
            schedule_service_pb2.GetScheduleRequest(schedule_id=stored.id), metadata=api.auth
        )
    ).schedule
    assert after == stored
    listed = await api.schedules.ListSchedules(schedule_service_pb2.ListSchedulesRequest(), metadata=api.auth)
    assert len(listed.schedules) == 1


def tier(delay_minutes: int, *targets: tuple[int, str]) -> escalation_policy_pb2.EscalationTier:
    return escalation_policy_pb2.EscalationTier(
        delay=minutes(delay_minutes),
        targets=[escalation_policy_pb2.EscalationTarget(type=kind, id=ident) for kind, ident in targets],
    )


async def test_escalation_policy_tiers_of_users_and_schedules(
    api: Api, other: Api, clocked_server: RunningServer
) -> None:
    a, b = [await create_user(api, n, f"{n}@example.com") for n in ("anna", "ben")]
    schedule = (
        await api.schedules.CreateSchedule(
            schedule_service_pb2.CreateScheduleRequest(
                schedule=berlin_schedule("Primary", a.id, b.id, a.id, b.id)
            ),
            metadata=api.auth,
        )
    ).schedule
    policy = escalation_policy_pb2.EscalationPolicy(
        name="Security",
        description="Defend detections: fast escalation",
        tiers=[tier(5, (SCHEDULE, schedule.id)), tier(10, (USER, b.id), (USER, a.id))],
        repeat_count=2,
    )
    created = (
        await api.policies.CreateEscalationPolicy(
            escalation_policy_service_pb2.CreateEscalationPolicyRequest(escalation_policy=policy),
            metadata=api.auth,
        )
    ).escalation_policy
    assert created.id and created.repeat_count == 2
    assert [t.delay.seconds for t in created.tiers] == [300, 600]
    assert [(x.type, x.id) for x in created.tiers[1].targets] == [(USER, b.id), (USER, a.id)]

    # The exact JSON the escalation engine reads.
    async with clocked_server.app.sessions() as session:
        row = await session.get(EscalationPolicy, created.id)
    assert row is not None
    assert row.tiers == [
        {"delay_seconds": 300, "targets": [{"type": "schedule", "id": schedule.id}]},
        {"delay_seconds": 600, "targets": [{"type": "user", "id": b.id}, {"type": "user", "id": a.id}]},
    ]

    got = await api.policies.GetEscalationPolicy(
        escalation_policy_service_pb2.GetEscalationPolicyRequest(escalation_policy_id=created.id),
        metadata=api.auth,
    )
    assert got.escalation_policy == created
    listed = await api.policies.ListEscalationPolicies(
        escalation_policy_service_pb2.ListEscalationPoliciesRequest(), metadata=api.auth
    )
    assert [p.id for p in listed.escalation_policies] == [created.id]

    replacement = escalation_policy_pb2.EscalationPolicy()
    replacement.CopyFrom(created)
    del replacement.tiers[1]
    replacement.repeat_count = 0
    updated = (
        await api.policies.UpdateEscalationPolicy(
            escalation_policy_service_pb2.UpdateEscalationPolicyRequest(escalation_policy=replacement),
            metadata=api.auth,
        )
    ).escalation_policy
    assert len(updated.tiers) == 1 and updated.repeat_count == 0
    assert updated.update_time.ToDatetime() >= created.update_time.ToDatetime()

    stranger = await create_user(other, "stranger", "s@example.com")

    def variant(**changes: Any) -> escalation_policy_pb2.EscalationPolicy:
        out = escalation_policy_pb2.EscalationPolicy()
        out.CopyFrom(updated)
        for name, value in changes.items():
            if name == "tiers":
                del out.tiers[:]
                out.tiers.extend(value)
            else:
                setattr(out, name, value)
        return out

    cases = [
        (variant(tiers=[]), "escalation_policy.tiers", "needs at least one tier"),
        (
            variant(tiers=[tier(5, (USER, a.id)), tier(10, (USER, stranger.id))]),
            "escalation_policy.tiers[1].targets[0].id",
            f"no user {stranger.id!r} in this tenant",
        ),
        (
            variant(tiers=[tier(5, (USER, a.id)), tier(5, (SCHEDULE, a.id))]),
            "escalation_policy.tiers[1].targets[0].id",
            "no schedule",
        ),
        (
            variant(tiers=[escalation_policy_pb2.EscalationTier(targets=tier(1, (USER, a.id)).targets)]),
            "escalation_policy.tiers[0].delay",
            "must be between 1 minute and 24 hours",
        ),
        (
            variant(tiers=[tier(0, (USER, a.id))]),
            "escalation_policy.tiers[0].delay",
            "must be between 1 minute and 24 hours",
        ),
        (
            variant(tiers=[tier(5, (USER, a.id)), tier(24 * 60 + 1, (USER, b.id))]),
            "escalation_policy.tiers[1].delay",
            "must be between 1 minute and 24 hours",
        ),
        (variant(tiers=[tier(5)]), "escalation_policy.tiers[0].targets", "needs at least one target"),
        (
            variant(tiers=[tier(5, (0, a.id))]),
            "escalation_policy.tiers[0].targets[0].type",
            "USER or SCHEDULE",
        ),
        (
            variant(tiers=[tier(5, (USER, a.id), (USER, a.id))]),
            "escalation_policy.tiers[0].targets[1]",
            "repeats targets[0]",
        ),
        (variant(tiers=[tier(5, *[(USER, a.id)] * 11)]), "escalation_policy.tiers[0].targets", "at most 10"),
        (variant(tiers=[tier(5, (USER, a.id))] * 21), "escalation_policy.tiers", "at most 20"),
        (variant(repeat_count=10), "escalation_policy.repeat_count", "between 0 and 9"),
        (variant(name=" "), "escalation_policy.name", "1 to 200"),
    ]
    for message, field, why in cases:
        for call, request in (
            (
                api.policies.UpdateEscalationPolicy,
                escalation_policy_service_pb2.UpdateEscalationPolicyRequest(escalation_policy=message),
            ),
            (
                api.policies.CreateEscalationPolicy,
                escalation_policy_service_pb2.CreateEscalationPolicyRequest(escalation_policy=message),
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await call(request, metadata=api.auth)
            got_field, got_why = violation(bad.value)
            assert got_field == field and why in got_why, (field, got_field, got_why)
            assert f"{field}: " in (bad.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await api.policies.CreateEscalationPolicy(
            escalation_policy_service_pb2.CreateEscalationPolicyRequest(escalation_policy=variant(id="")),
            metadata=api.auth,
        )
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    after = await api.policies.GetEscalationPolicy(
        escalation_policy_service_pb2.GetEscalationPolicyRequest(escalation_policy_id=created.id),
        metadata=api.auth,
    )
    assert after.escalation_policy == updated
    async with clocked_server.app.sessions() as session:
        assert (await session.get(EscalationPolicy, created.id)).tiers == [  # type: ignore[union-attr]
            {"delay_seconds": 300, "targets": [{"type": "schedule", "id": schedule.id}]}
        ]


async def test_other_tenants_objects_are_not_found(api: Api, other: Api) -> None:
    a = await create_user(api, "anna", "anna@example.com")
    schedule = (
        await api.schedules.CreateSchedule(
            schedule_service_pb2.CreateScheduleRequest(schedule=berlin_schedule("P", a.id, a.id, a.id, a.id)),
            metadata=api.auth,
        )
    ).schedule
    policy = (
        await api.policies.CreateEscalationPolicy(
            escalation_policy_service_pb2.CreateEscalationPolicyRequest(
                escalation_policy=escalation_policy_pb2.EscalationPolicy(
                    name="P", tiers=[tier(5, (USER, a.id))]
                )
            ),
            metadata=api.auth,
        )
    ).escalation_policy

    calls = [
        (other.users.GetUser, user_service_pb2.GetUserRequest(user_id=a.id)),
        (
            other.users.UpdateUser,
            user_service_pb2.UpdateUserRequest(user=user_pb2.User(id=a.id, name="x", email="x@y")),
        ),
        (other.users.DeleteUser, user_service_pb2.DeleteUserRequest(user_id=a.id)),
        (
            other.users.AddContactMethod,
            user_service_pb2.AddContactMethodRequest(
                user_id=a.id, contact_method=user_pb2.ContactMethod(type=PAGER, address="+15550100")
            ),
        ),
        (other.users.RemoveContactMethod, user_service_pb2.RemoveContactMethodRequest(user_id=a.id)),
        (other.users.GetUser, user_service_pb2.GetUserRequest(user_id="not-an-id")),
        (other.schedules.GetSchedule, schedule_service_pb2.GetScheduleRequest(schedule_id=schedule.id)),
        (other.schedules.WhoIsOnCall, schedule_service_pb2.WhoIsOnCallRequest(schedule_id=schedule.id)),
        (other.schedules.DeleteSchedule, schedule_service_pb2.DeleteScheduleRequest(schedule_id=schedule.id)),
        (
            other.schedules.UpdateSchedule,
            schedule_service_pb2.UpdateScheduleRequest(
                schedule=schedule_pb2.Schedule(id=schedule.id, name="x", time_zone="UTC")
            ),
        ),
        (
            other.policies.GetEscalationPolicy,
            escalation_policy_service_pb2.GetEscalationPolicyRequest(escalation_policy_id=policy.id),
        ),
        (
            other.policies.DeleteEscalationPolicy,
            escalation_policy_service_pb2.DeleteEscalationPolicyRequest(escalation_policy_id=policy.id),
        ),
    ]
    for call, request in calls:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await call(request, metadata=other.auth)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND, (call, missing.value.details())

    # Nor can the other tenant point at them.
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await other.policies.CreateEscalationPolicy(
            escalation_policy_service_pb2.CreateEscalationPolicyRequest(
                escalation_policy=escalation_policy_pb2.EscalationPolicy(
                    name="Mine", tiers=[tier(5, (SCHEDULE, schedule.id))]
                )
            ),
            metadata=other.auth,
        )
    assert violation(bad.value)[0] == "escalation_policy.tiers[0].targets[0].id"
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await other.catalog.UpdateService(
            catalog_service_pb2.UpdateServiceRequest(
                service=service_pb2.Service(id=other.tenant.service_id, escalation_policy_id=policy.id),
                update_mask={"paths": ["escalation_policy_id"]},
            ),
            metadata=other.auth,
        )
    assert violation(bad.value)[0] == "service.escalation_policy_id"

    # And without a token nothing answers.
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await api.users.ListUsers(user_service_pb2.ListUsersRequest())
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (
        await api.users.GetUser(user_service_pb2.GetUserRequest(user_id=a.id), metadata=api.auth)
    ).user.name == ("anna")


async def test_deleting_what_is_in_use_fails_and_names_the_user(api: Api) -> None:
    a, b = [await create_user(api, n, f"{n}@example.com") for n in ("anna", "ben")]
    await api.users.AddContactMethod(
        user_service_pb2.AddContactMethodRequest(
            user_id=b.id, contact_method=user_pb2.ContactMethod(type=PAGER, address="+15550100")
        ),
        metadata=api.auth,
    )
    schedule = (
        await api.schedules.CreateSchedule(
            schedule_service_pb2.CreateScheduleRequest(
                schedule=schedule_pb2.Schedule(
                    name="Nights",
                    time_zone="America/New_York",
                    layers=[
                        schedule_pb2.ScheduleLayer(
                            members=[a.id],
                            start="2026-03-01T18:00",
                            rotation_length=1,
                            rotation_unit=schedule_pb2.ROTATION_UNIT_WEEKS,
                        )
                    ],
                )
            ),
            metadata=api.auth,
        )
    ).schedule
    policy = (
        await api.policies.CreateEscalationPolicy(
            escalation_policy_service_pb2.CreateEscalationPolicyRequest(
                escalation_policy=escalation_policy_pb2.EscalationPolicy(
                    name="Ops", tiers=[tier(5, (SCHEDULE, schedule.id)), tier(15, (USER, b.id))]
                )
            ),
            metadata=api.auth,
        )
    ).escalation_policy
    service = (
        await api.catalog.UpdateService(
            catalog_service_pb2.UpdateServiceRequest(
                service=service_pb2.Service(id=api.tenant.service_id, escalation_policy_id=policy.id),
                update_mask={"paths": ["escalation_policy_id"]},
            ),
            metadata=api.auth,
        )
    ).service

    async def refused(call: Any, request: Any, *names: str) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as busy:
            await call(request, metadata=api.auth)
        assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        for name in names:
            assert name in (busy.value.details() or ""), busy.value.details()

    delete_a = user_service_pb2.DeleteUserRequest(user_id=a.id)
    delete_b = user_service_pb2.DeleteUserRequest(user_id=b.id)
    delete_schedule = schedule_service_pb2.DeleteScheduleRequest(schedule_id=schedule.id)
    delete_policy = escalation_policy_service_pb2.DeleteEscalationPolicyRequest(
        escalation_policy_id=policy.id
    )
    await refused(api.users.DeleteUser, delete_a, "schedule 'Nights'", schedule.id)
    await refused(api.users.DeleteUser, delete_b, "escalation policy 'Ops'", policy.id)
    await refused(api.schedules.DeleteSchedule, delete_schedule, "escalation policy 'Ops'")
    await refused(api.policies.DeleteEscalationPolicy, delete_policy, "service 'Default Service'", service.id)

    # Unhook from the top down, and each delete goes through.
    await api.catalog.UpdateService(
        catalog_service_pb2.UpdateServiceRequest(
            service=service_pb2.Service(id=service.id), update_mask={"paths": ["escalation_policy_id"]}
        ),
        metadata=api.auth,
    )
    await api.policies.DeleteEscalationPolicy(delete_policy, metadata=api.auth)
    await api.schedules.DeleteSchedule(delete_schedule, metadata=api.auth)
    await api.users.DeleteUser(delete_a, metadata=api.auth)
    await api.users.DeleteUser(delete_b, metadata=api.auth)  # with its contact method
    assert not (await api.users.ListUsers(user_service_pb2.ListUsersRequest(), metadata=api.auth)).users
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await api.schedules.GetSchedule(
            schedule_service_pb2.GetScheduleRequest(schedule_id=schedule.id), metadata=api.auth
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def security_policy(api: Api) -> escalation_policy_pb2.EscalationPolicy:
    """A dedicated policy for security incidents: faster escalation, shorter delays."""
    analyst = await create_user(api, "SOC analyst", "soc@example.com")
    lead = await create_user(api, "SOC lead", "lead@example.com")
    reply = await api.policies.CreateEscalationPolicy(
        escalation_policy_service_pb2.CreateEscalationPolicyRequest(
            escalation_policy=escalation_policy_pb2.EscalationPolicy(
                name="Security incidents",
                description="Faster escalation, shorter delays",
                tiers=[tier(2, (USER, analyst.id)), tier(5, (USER, lead.id))],
                repeat_count=3,
            )
        ),
        metadata=api.auth,
    )
    return reply.escalation_policy


def defend_service(policy_id: str) -> service_pb2.Service:
    """The spec's "Defend Critical Alerts" (Create a Defend Escalation Service, step 2)."""
    return service_pb2.Service(
        name="Defend Critical Alerts",
        criticality=service_pb2.CRITICALITY_CRITICAL,
        escalation_policy_id=policy_id,
        alert_grouping=service_pb2.ALERT_GROUPING_TIME,
        alert_grouping_timeout_minutes=5,
        # auto_resolve_timeout left unset: "Never".
    )


DEFEND_PATHS = [
    "name",
    "criticality",
    "escalation_policy_id",
    "alert_grouping",
    "alert_grouping_timeout_minutes",
]


async def test_defend_critical_alerts_service_with_a_dedicated_policy(
    api: Api, clocked_server: RunningServer
) -> None:
    """Configured through CatalogService.UpdateService on the tenant's service; the policy id is checked."""
    policy = await security_policy(api)
    defend = defend_service(policy.id)
    defend.id = api.tenant.service_id
    configured = (
        await api.catalog.UpdateService(
            catalog_service_pb2.UpdateServiceRequest(service=defend, update_mask={"paths": DEFEND_PATHS}),
            metadata=api.auth,
        )
    ).service
    assert configured.name == "Defend Critical Alerts"
    assert configured.criticality == service_pb2.CRITICALITY_CRITICAL
    assert configured.alert_grouping == service_pb2.ALERT_GROUPING_TIME
    assert configured.alert_grouping_timeout_minutes == 5
    assert not configured.HasField("auto_resolve_timeout")
    assert configured.escalation_policy_id == policy.id

    # The policy id is checked; a failed update changes nothing.
    missing = "0190a0b0-0000-7000-8000-000000000000"
    for bad_id in (missing, "not-an-id"):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await api.catalog.UpdateService(
                catalog_service_pb2.UpdateServiceRequest(
                    service=service_pb2.Service(id=configured.id, escalation_policy_id=bad_id),
                    update_mask={"paths": ["escalation_policy_id"]},
                ),
                metadata=api.auth,
            )
        assert violation(bad.value) == (
            "service.escalation_policy_id",
            f"no escalation policy {bad_id!r} in this tenant",
        )
        # The core check CreateService goes through.
        with pytest.raises(InvalidArgument) as refused:
            await services.create_service(
                clocked_server.app.sessions,
                clocked_server.app.clock,
                api.tenant.tenant_id,
                services.ServiceFields(name="Defend (typo)", escalation_policy_id=bad_id),
            )
        assert refused.value.violations[0].field == "service.escalation_policy_id"
    got = await api.catalog.GetService(
        catalog_service_pb2.GetServiceRequest(service_id=configured.id), metadata=api.auth
    )
    assert got.service == configured

    # Unrelated updates still work on a service whose policy is set.
    described = await api.catalog.UpdateService(
        catalog_service_pb2.UpdateServiceRequest(
            service=service_pb2.Service(id=configured.id, description="Defend detections"),
            update_mask={"paths": ["description"]},
        ),
        metadata=api.auth,
    )
    assert described.service.escalation_policy_id == policy.id


async def test_defend_critical_alerts_service_created_over_grpc(api: Api) -> None:
    policy = await security_policy(api)
    created = (
        await api.catalog.CreateService(
            catalog_service_pb2.CreateServiceRequest(service=defend_service(policy.id)), metadata=api.auth
        )
    ).service
    assert created.escalation_policy_id == policy.id
    assert created.criticality == service_pb2.CRITICALITY_CRITICAL
    typo = defend_service("0190a0b0-0000-7000-8000-000000000000")
    typo.name = "Defend (typo)"
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await api.catalog.CreateService(
            catalog_service_pb2.CreateServiceRequest(service=typo), metadata=api.auth
        )
    assert violation(bad.value)[0] == "service.escalation_policy_id"
