"""Who is on call: rotations, layers and overrides, correct across DST.

Pure computation (no storage), so it can be checked exhaustively. The rules,
as PagerDuty and Grafana OnCall have them:

* A **layer** rotates through its members. Calendar rotations (``days`` /
  ``weeks``) hand off at the same *local wall-clock time* in the schedule's
  time zone, so a daily 09:00 handoff stays at 09:00 when the clocks change
  (the shift that spans the change lasts 23 or 25 hours). Hour rotations
  (``hours``) are elapsed time: a 12-hour shift is always 12 hours long.
* A handoff time that does not exist on a spring-forward day happens at the
  first instant after the gap; one that occurs twice on a fall-back day
  happens at its first occurrence.
* Later layers sit above earlier ones: the highest layer active at an instant
  decides. A layer may start late and end early (a temporary layer).
* An **override** (a user for a time range) beats every layer; of overlapping
  overrides the last one given wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from oncall_server.errors import InvalidArgument

UNITS = ("hours", "days", "weeks")


@dataclass(frozen=True, slots=True)
class Layer:
    """One rotation. ``start`` is local wall-clock time in the schedule's zone: when ``members[0]`` begins."""

    members: tuple[str, ...]
    start: datetime
    rotation_length: int = 1
    rotation_unit: str = "weeks"
    end: datetime | None = None  # local wall-clock time; None = forever

    def validate(self, where: str) -> None:
        if not self.members:
            raise InvalidArgument.field(f"{where}.members", "needs at least one member")
        if self.rotation_unit not in UNITS:
            raise InvalidArgument.field(f"{where}.rotation_unit", f"must be one of {', '.join(UNITS)}")
        if self.rotation_length < 1:
            raise InvalidArgument.field(f"{where}.rotation_length", "must be at least 1")
        if self.start.tzinfo is not None or (self.end is not None and self.end.tzinfo is not None):
            raise InvalidArgument.field(
                f"{where}.start", "is local wall-clock time: give it without a UTC offset"
            )
        if self.end is not None and self.end <= self.start:
            raise InvalidArgument.field(f"{where}.end", "must be after start")


@dataclass(frozen=True, slots=True)
class Override:
    """``user`` is on call from ``start`` to ``end`` (aware instants), above every layer."""

    user: str
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Schedule:
    time_zone: str
    layers: tuple[Layer, ...]
    overrides: tuple[Override, ...] = field(default=())

    def validate(self) -> ZoneInfo:
        try:
            zone = ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidArgument.field(
                "schedule.time_zone", f"unknown time zone {self.time_zone!r}"
            ) from None
        for index, layer in enumerate(self.layers):
            layer.validate(f"schedule.layers[{index}]")
        for index, override in enumerate(self.overrides):
            if override.start.tzinfo is None or override.end.tzinfo is None:
                raise InvalidArgument.field(f"schedule.overrides[{index}]", "start and end need a UTC offset")
            if override.end <= override.start:
                raise InvalidArgument.field(f"schedule.overrides[{index}].end", "must be after start")
        return zone


def to_instant(local: datetime, zone: ZoneInfo) -> datetime:
    """The instant of a local wall-clock time: after a spring-forward gap, first of a fall-back repeat."""
    candidate = local.replace(tzinfo=zone, fold=0)
    if candidate.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == local:
        return candidate
    # Inside the gap: the answer is the transition, between the two readings of ``local``.
    low = local.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = candidate.astimezone(UTC)
    low, high = min(low, high), max(low, high)
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset():
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0).astimezone(zone)


def _periods_elapsed(layer: Layer, at: datetime, zone: ZoneInfo) -> int | None:
    """Whole rotations completed at ``at``; None before the layer starts or after it ends."""
    start_instant = to_instant(layer.start, zone)
    if at < start_instant or (layer.end is not None and at >= to_instant(layer.end, zone)):
        return None
    if layer.rotation_unit == "hours":
        return int((at - start_instant) // timedelta(hours=layer.rotation_length))
    days_per_period = layer.rotation_length * (7 if layer.rotation_unit == "weeks" else 1)
    local = at.astimezone(zone)
    days = (local.date() - layer.start.date()).days
    handoff_today = to_instant(datetime.combine(local.date(), layer.start.time()), zone)
    if at < handoff_today:
        days -= 1
    return days // days_per_period


def layer_member(layer: Layer, at: datetime, zone: ZoneInfo) -> str | None:
    periods = _periods_elapsed(layer, at, zone)
    return None if periods is None else layer.members[periods % len(layer.members)]


def who_is_on_call(schedule: Schedule, at: datetime) -> str | None:
    """The user on call at an aware instant, or None when nobody is scheduled."""
    if at.tzinfo is None:
        raise InvalidArgument.field("at", "needs a UTC offset")
    zone = schedule.validate()
    for override in reversed(schedule.overrides):
        if override.start <= at < override.end:
            return override.user
    for layer in reversed(schedule.layers):
        member = layer_member(layer, at, zone)
        if member is not None:
            return member
    return None


def handoffs(schedule: Schedule, since: datetime, until: datetime) -> list[tuple[datetime, str | None]]:
    """The instants in ``[since, until)`` where the on-call user changes, with the new user.

    Found by walking layer boundaries, so it is exact and cheap for any range
    an escalation needs (the next few weeks).
    """
    zone = schedule.validate()
    points = {since}
    for override in schedule.overrides:
        points.update(p for p in (override.start, override.end) if since <= p < until)
    for layer in schedule.layers:
        points.update(_layer_boundaries(layer, zone, since, until))
    changes: list[tuple[datetime, str | None]] = []
    current: object = object()
    for point in sorted(points):
        user = who_is_on_call(schedule, point)
        if user != current:
            changes.append((point, user))
            current = user
    return changes


def _layer_boundaries(layer: Layer, zone: ZoneInfo, since: datetime, until: datetime) -> Sequence[datetime]:
    start = to_instant(layer.start, zone)
    out = [start] if since <= start < until else []
    if layer.end is not None:
        end = to_instant(layer.end, zone)
        if since <= end < until:
            out.append(end)
    if layer.rotation_unit == "hours":
        step = timedelta(hours=layer.rotation_length)
        first = max(0, int((since - start) // step))
        moment = start + first * step
        while moment < until:
            if moment >= since:
                out.append(moment)
            moment += step
        return out
    days = layer.rotation_length * (7 if layer.rotation_unit == "weeks" else 1)
    day: date = max(layer.start.date(), since.astimezone(zone).date() - timedelta(days=days))
    offset = (day - layer.start.date()).days % days
    day -= timedelta(days=offset)
    handoff: time = layer.start.time()
    while True:
        moment = to_instant(datetime.combine(day, handoff), zone)
        if moment >= until:
            return out
        if moment >= since:
            out.append(moment)
        day += timedelta(days=days)


def to_json(schedule: Schedule) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """The (layers, overrides) JSON stored on a schedule row: local times naive, override instants UTC."""
    layers: list[dict[str, object]] = [
        {
            "members": list(layer.members),
            "start": layer.start.isoformat(),
            "rotation_length": layer.rotation_length,
            "rotation_unit": layer.rotation_unit,
            "end": layer.end.isoformat() if layer.end else None,
        }
        for layer in schedule.layers
    ]
    overrides: list[dict[str, object]] = [
        {
            "user": override.user,
            "start": override.start.astimezone(UTC).isoformat(),
            "end": override.end.astimezone(UTC).isoformat(),
        }
        for override in schedule.overrides
    ]
    return layers, overrides


def from_json(
    time_zone: str, layers: Sequence[dict[str, Any]], overrides: Sequence[dict[str, Any]]
) -> Schedule:
    """The inverse of :func:`to_json`."""
    return Schedule(
        time_zone=time_zone,
        layers=tuple(
            Layer(
                members=tuple(layer["members"]),
                start=datetime.fromisoformat(layer["start"]),
                rotation_length=int(layer["rotation_length"]),
                rotation_unit=str(layer["rotation_unit"]),
                end=datetime.fromisoformat(layer["end"]) if layer.get("end") else None,
            )
            for layer in layers
        ),
        overrides=tuple(
            Override(
                user=override["user"],
                start=datetime.fromisoformat(override["start"]),
                end=datetime.fromisoformat(override["end"]),
            )
            for override in overrides
        ),
    )
