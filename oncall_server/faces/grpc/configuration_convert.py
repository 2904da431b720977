"""Between the paging configuration (users, schedules, escalation policies) and ``oncall.v1`` messages.

Kept apart from :mod:`convert` so the two grow independently; the time
helpers are shared from there.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf import duration_pb2, timestamp_pb2

from oncall_server.api.v1 import escalation_policy_pb2, schedule_pb2, user_pb2
from oncall_server.configuration import escalation_policies, schedules
from oncall_server.configuration.users import ContactMethodFields, UserFields, UserRecord
from oncall_server.faces.grpc.convert import by_number, enum_labels, from_timestamp, timestamp
from oncall_server.storage import models

ROTATION_UNIT = enum_labels(schedule_pb2.RotationUnit)
ROTATION_UNIT_NAME = by_number(ROTATION_UNIT)
TARGET_TYPE = enum_labels(escalation_policy_pb2.EscalationTargetType)
TARGET_TYPE_NAME = by_number(TARGET_TYPE)


def seconds_of(value: duration_pb2.Duration) -> int:
    """Whole seconds of a Duration (fractions are dropped: every delay here is minutes or hours)."""
    return int(value.ToTimedelta().total_seconds())


def optional_time(message: object, name: str) -> datetime | None:
    """An optional Timestamp field as an aware datetime, None when unset."""
    if not message.HasField(name):  # type: ignore[attr-defined]
        return None
    value: timestamp_pb2.Timestamp = getattr(message, name)
    return from_timestamp(value)


# Users


def user(record: UserRecord) -> user_pb2.User:
    row = record.user
    return user_pb2.User(
        id=row.id,
        name=row.name,
        email=row.email,
        contact_methods=[contact_method(m) for m in record.contact_methods],
        notification_rules=[notification_rule(r) for r in record.notification_rules],
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
    )


def contact_method(row: models.ContactMethod) -> user_pb2.ContactMethod:
    """The secret never leaves the server: callers only learn whether one is set."""
    return user_pb2.ContactMethod(
        id=row.id,
        type=row.type,
        address=row.address,
        has_secret=bool(row.secret),
        create_time=timestamp(row.created_at),
    )


def notification_rule(row: models.NotificationRule) -> user_pb2.NotificationRule:
    return user_pb2.NotificationRule(
        id=row.id,
        contact_method_id=row.contact_method_id,
        delay=duration_pb2.Duration(seconds=row.delay_seconds),
    )


def user_fields(message: user_pb2.User) -> UserFields:
    return UserFields(name=message.name, email=message.email)


def contact_method_fields(message: user_pb2.ContactMethod) -> ContactMethodFields:
    return ContactMethodFields(type=message.type, address=message.address, secret=message.secret)


# Schedules


def schedule(row: models.OnCallSchedule) -> schedule_pb2.Schedule:
    engine = schedules.engine_schedule(row)
    return schedule_pb2.Schedule(
        id=row.id,
        name=row.name,
        time_zone=row.time_zone,
        layers=[
            schedule_pb2.ScheduleLayer(
                members=list(layer.members),
                start=layer.start.isoformat(),
                rotation_length=layer.rotation_length,
                rotation_unit=ROTATION_UNIT[layer.rotation_unit],
                end=layer.end.isoformat() if layer.end else "",
            )
            for layer in engine.layers
        ],
        overrides=[
            schedule_pb2.ScheduleOverride(
                user_id=o.user, start_time=timestamp(o.start), end_time=timestamp(o.end)
            )
            for o in engine.overrides
        ],
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
    )


def schedule_spec(message: schedule_pb2.Schedule) -> schedules.ScheduleSpec:
    return schedules.ScheduleSpec(
        name=message.name,
        time_zone=message.time_zone,
        layers=[
            schedules.LayerSpec(
                members=list(layer.members),
                start=layer.start,
                rotation_length=layer.rotation_length,
                rotation_unit=ROTATION_UNIT_NAME.get(layer.rotation_unit, ""),
                end=layer.end,
            )
            for layer in message.layers
        ],
        overrides=[override_spec(o) for o in message.overrides],
    )


def override_spec(message: schedule_pb2.ScheduleOverride) -> schedules.OverrideSpec:
    return schedules.OverrideSpec(
        user_id=message.user_id,
        start=optional_time(message, "start_time"),
        end=optional_time(message, "end_time"),
    )


# Escalation policies


def policy(row: models.EscalationPolicy) -> escalation_policy_pb2.EscalationPolicy:
    return escalation_policy_pb2.EscalationPolicy(
        id=row.id,
        name=row.name,
        description=row.description,
        tiers=[
            escalation_policy_pb2.EscalationTier(
                delay=duration_pb2.Duration(seconds=tier.delay_seconds or 0),
                targets=[
                    escalation_policy_pb2.EscalationTarget(type=TARGET_TYPE[t.type], id=t.id)
                    for t in tier.targets
                ],
            )
            for tier in escalation_policies.parse_tiers(row.tiers)
        ],
        repeat_count=row.repeat_count,
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
    )


def policy_spec(message: escalation_policy_pb2.EscalationPolicy) -> escalation_policies.PolicySpec:
    return escalation_policies.PolicySpec(
        name=message.name,
        description=message.description,
        tiers=[
            escalation_policies.TierSpec(
                delay_seconds=seconds_of(tier.delay) if tier.HasField("delay") else None,
                targets=[
                    escalation_policies.TargetSpec(type=TARGET_TYPE_NAME.get(t.type, ""), id=t.id)
                    for t in tier.targets
                ],
            )
            for tier in message.tiers
        ],
        repeat_count=message.repeat_count,
    )
