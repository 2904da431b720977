"""On-call schedules: rotations across DST, layers, overrides, handoff listing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oncall_server.configuration.rotations import Layer, Override, Schedule, handoffs, who_is_on_call
from oncall_server.errors import InvalidArgument


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


NY_DAILY = Schedule(
    "America/New_York", (Layer(("ann", "bob", "cat"), datetime(2026, 3, 6, 9, 0), 1, "days"),)
)


@pytest.mark.parametrize(
    ("at", "who"),
    [
        (utc(2026, 3, 6, 13, 59), None),  # before the layer starts (09:00 EST = 14:00Z)
        (utc(2026, 3, 6, 14, 0), "ann"),
        (utc(2026, 3, 7, 13, 59), "ann"),
        (utc(2026, 3, 7, 14, 0), "bob"),  # Sat 09:00 EST
        # Sun 8 March: clocks spring forward at 02:00; 09:00 EDT is 13:00Z, an hour earlier in UTC.
        (utc(2026, 3, 8, 12, 59), "bob"),
        (utc(2026, 3, 8, 13, 0), "cat"),  # bob's shift lasted 23 hours
        (utc(2026, 3, 9, 13, 0), "ann"),
    ],
)
def test_daily_rotation_keeps_the_local_handoff_time_across_spring_forward(
    at: datetime, who: str | None
) -> None:
    assert who_is_on_call(NY_DAILY, at) == who


def test_daily_rotation_across_fall_back_gives_a_25_hour_shift() -> None:
    days = (datetime(2026, 10, 31).date() - datetime(2026, 3, 6).date()).days
    saturday = ("ann", "bob", "cat")[days % 3]
    sunday = ("ann", "bob", "cat")[(days + 1) % 3]
    assert who_is_on_call(NY_DAILY, utc(2026, 10, 31, 13, 0)) == saturday  # 09:00 EDT
    assert who_is_on_call(NY_DAILY, utc(2026, 11, 1, 13, 59)) == saturday  # 08:59 EST: still Saturday's shift
    assert who_is_on_call(NY_DAILY, utc(2026, 11, 1, 14, 0)) == sunday  # 09:00 EST, 25 hours later


def test_a_handoff_inside_the_spring_forward_gap_happens_when_the_gap_ends() -> None:
    schedule = Schedule("America/New_York", (Layer(("ann", "bob"), datetime(2026, 3, 7, 2, 30), 1, "days"),))
    assert who_is_on_call(schedule, utc(2026, 3, 8, 6, 59)) == "ann"  # 01:59 EST
    assert (
        who_is_on_call(schedule, utc(2026, 3, 8, 7, 0)) == "bob"
    )  # 03:00 EDT, the first instant after 02:30


def test_hour_rotations_are_elapsed_time() -> None:
    schedule = Schedule("Europe/Berlin", (Layer(("ann", "bob"), datetime(2026, 3, 28, 20, 0), 12, "hours"),))
    # Berlin springs forward on 29 March at 02:00: the 20:00 CET shift ends at 09:00 CEST (12 real hours).
    assert who_is_on_call(schedule, utc(2026, 3, 29, 6, 59)) == "ann"
    assert who_is_on_call(schedule, utc(2026, 3, 29, 7, 0)) == "bob"


def test_weekly_rotation_on_monday_mornings() -> None:
    schedule = Schedule("Europe/Berlin", (Layer(("ann", "bob"), datetime(2026, 10, 19, 9, 0), 1, "weeks"),))
    assert who_is_on_call(schedule, utc(2026, 10, 26, 7, 59)) == "ann"  # Mon 08:59 CET (after fall-back)
    assert who_is_on_call(schedule, utc(2026, 10, 26, 8, 0)) == "bob"  # Mon 09:00 CET
    assert who_is_on_call(schedule, utc(2026, 11, 2, 8, 0)) == "ann"


def test_higher_layers_and_overrides_win() -> None:
    base = Layer(("ann",), datetime(2026, 1, 1, 0, 0), 1, "weeks")
    nights = Layer(("night",), datetime(2026, 1, 5, 18, 0), 1, "days", end=datetime(2026, 1, 6, 6, 0))
    schedule = Schedule(
        "UTC",
        (base, nights),
        (
            Override("sub", utc(2026, 1, 5, 20, 0), utc(2026, 1, 5, 22, 0)),
            Override("later", utc(2026, 1, 5, 21, 0), utc(2026, 1, 5, 21, 30)),
        ),
    )
    assert who_is_on_call(schedule, utc(2026, 1, 5, 17, 0)) == "ann"
    assert who_is_on_call(schedule, utc(2026, 1, 5, 19, 0)) == "night"
    assert who_is_on_call(schedule, utc(2026, 1, 5, 20, 30)) == "sub"
    assert who_is_on_call(schedule, utc(2026, 1, 5, 21, 15)) == "later"  # the last override given wins
    assert who_is_on_call(schedule, utc(2026, 1, 6, 6, 0)) == "ann"  # the temporary layer ended
    assert handoffs(schedule, utc(2026, 1, 5, 12, 0), utc(2026, 1, 6, 12, 0)) == [
        (utc(2026, 1, 5, 12, 0), "ann"),
        (utc(2026, 1, 5, 18, 0), "night"),
        (utc(2026, 1, 5, 20, 0), "sub"),
        (utc(2026, 1, 5, 21, 0), "later"),
        (utc(2026, 1, 5, 21, 30), "sub"),
        (utc(2026, 1, 5, 22, 0), "night"),
        (utc(2026, 1, 6, 6, 0), "ann"),
    ]


@pytest.mark.parametrize(
    ("schedule", "field"),
    [
        (Schedule("Mars/Olympus", ()), "schedule.time_zone"),
        (Schedule("UTC", (Layer((), datetime(2026, 1, 1)),)), "schedule.layers[0].members"),
        (
            Schedule("UTC", (Layer(("a",), datetime(2026, 1, 1), 0, "days"),)),
            "schedule.layers[0].rotation_length",
        ),
        (
            Schedule("UTC", (Layer(("a",), datetime(2026, 1, 1), 1, "months"),)),
            "schedule.layers[0].rotation_unit",
        ),
        (
            Schedule("UTC", (), (Override("a", utc(2026, 1, 2), utc(2026, 1, 1)),)),
            "schedule.overrides[0].end",
        ),
    ],
)
def test_invalid_schedules_name_the_field(schedule: Schedule, field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        who_is_on_call(schedule, utc(2026, 1, 1))
    assert error.value.violations[0].field == field


@given(
    zone=st.sampled_from(["America/New_York", "Europe/Berlin", "Australia/Sydney", "Asia/Kolkata", "UTC"]),
    hour=st.integers(0, 23),
    length=st.integers(1, 3),
    day_offset=st.integers(0, 400),
)
def test_daily_handoffs_follow_the_member_order_at_local_wall_time(
    zone: str, hour: int, length: int, day_offset: int
) -> None:
    members = ("a", "b", "c", "d")
    start = datetime(2026, 1, 1, hour, 0)
    schedule = Schedule(zone, (Layer(members, start, length, "days"),))
    since = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day_offset)
    changes = handoffs(schedule, since, since + timedelta(days=3 * length + 1))
    for (at, who), (_, previous) in zip(changes[1:], changes, strict=False):
        local = at.astimezone(schedule.validate())
        assert local.minute == 0 and local.hour in (hour, hour + 1)  # +1 only when the hour fell in a DST gap
        assert members.index(who) == (members.index(previous) + 1) % 4 if previous else True
