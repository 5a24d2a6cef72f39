from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from beatd.errors import ScheduleError
from beatd.schedules import IntervalSchedule, OnceSchedule

T = datetime(2026, 3, 29, 0, 59, 59, 999_999, tzinfo=UTC)


def test_slots_are_anchored_at_the_epoch() -> None:
    hourly = IntervalSchedule(timedelta(hours=1))
    assert hourly.next_after(T) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert hourly.next_after(datetime(2026, 3, 29, 1, 0, tzinfo=UTC)) == datetime(
        2026, 3, 29, 2, 0, tzinfo=UTC
    )
    tens = IntervalSchedule(timedelta(seconds=10))
    assert tens.next_after(datetime(2026, 1, 1, 0, 0, 3, tzinfo=UTC)).second == 10


def test_anchor_shifts_the_grid() -> None:
    anchor = datetime(2026, 1, 1, 0, 15, tzinfo=UTC)
    schedule = IntervalSchedule(timedelta(hours=1), anchor)
    assert schedule.next_after(T) == datetime(2026, 3, 29, 1, 15, tzinfo=UTC)
    assert schedule.next_after(datetime(2025, 12, 31, 23, 0, tzinfo=UTC)) == datetime(
        2025, 12, 31, 23, 15, tzinfo=UTC
    )


def test_elapsed_time_ignores_dst() -> None:
    # Berlin springs forward at 01:00 UTC on 2026-03-29; an interval does not notice.
    schedule = IntervalSchedule(timedelta(minutes=30))
    t = datetime(2026, 3, 29, 0, 45, tzinfo=UTC)
    fires = []
    for _ in range(3):
        t = schedule.next_after(t)
        fires.append(t)
    assert [f.strftime("%H:%M") for f in fires] == ["01:00", "01:30", "02:00"]


def test_an_anchor_in_a_named_zone_counts_elapsed_time_across_dst() -> None:
    # 09:00 in Berlin in winter is 08:00Z; a day is 24 h, so in summer the slots are 10:00 local.
    # (Adding days to the zoned anchor in wall time once gave a "next" slot equal to t, and the
    # planner's walk spun on it.)
    anchor = datetime(2026, 1, 1, 9, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    schedule = IntervalSchedule(timedelta(days=1), anchor)
    t = datetime(2026, 7, 1, 7, 0, tzinfo=UTC)
    assert schedule.next_after(t) == datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
    assert schedule.next_after(schedule.next_after(t)) == datetime(2026, 7, 2, 8, 0, tzinfo=UTC)
    assert schedule.count_between(t, t + timedelta(days=3)) == 3


def test_count_between() -> None:
    schedule = IntervalSchedule(timedelta(seconds=60))
    start = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    assert schedule.count_between(start, start + timedelta(minutes=10)) == 10
    assert schedule.count_between(start, start) == 0


@pytest.mark.parametrize(
    ("every", "message"),
    [
        (timedelta(0), "interval must be positive, got 0s"),
        (timedelta(seconds=-1), "interval must be positive, got -1s"),
        (
            timedelta(seconds=1.5),
            "interval must be a whole number of seconds, got 1.5s (a run's id "
            "is its slot to the second)",
        ),
    ],
    ids=["zero", "negative", "fractional"],
)
def test_bad_intervals(every: timedelta, message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        IntervalSchedule(every)
    assert str(info.value) == message


def test_once() -> None:
    at = datetime(2027, 1, 1, tzinfo=UTC)
    once = OnceSchedule(at)
    assert once.next_after(T) == at
    assert once.next_after(at) is None
