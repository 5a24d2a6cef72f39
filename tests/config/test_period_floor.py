"""`period_floor`: the bound a bulk import trusts instead of searching for a cron entry's
fires (beatd.config.entries._derive_timing) must hold in the installed tz database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, available_timezones

import pytest

from beatd.config.model import nominal_period, period_floor
from beatd.schedules import CronSchedule, IntervalSchedule, OnceSchedule
from beatd.schedules.cron import transition
from beatd.schedules.interval import EPOCH

FIRST_YEAR, LAST_YEAR = 2001, 2040  # nominal_period probes from 2001


def _months() -> list[datetime]:
    return [
        datetime(year, month, 1, tzinfo=UTC)
        for year in range(FIRST_YEAR, LAST_YEAR + 1)
        for month in range(1, 13)
    ]


def _odd_offsets_and_transitions(zone: ZoneInfo, months: list[datetime]) -> list[str]:
    odd = []
    offsets = [m.astimezone(zone).utcoffset() for m in months]
    for i in range(1, len(months)):
        low, high, before, after = months[i - 1], months[i], offsets[i - 1], offsets[i]
        assert after is not None
        if after.total_seconds() % 60:
            odd.append(f"{zone.key}: offset {after} at {high}")
        if after != before:
            at = transition(low, high, zone)
            if at.timestamp() % 60:
                odd.append(f"{zone.key}: transition at {at}")
    return odd


def test_every_zone_has_whole_minute_offsets_and_transitions_from_2001() -> None:
    months = _months()
    odd = [
        problem
        for key in sorted(available_timezones())
        for problem in _odd_offsets_and_transitions(ZoneInfo(key), months)
    ]
    assert odd == []


@pytest.mark.parametrize(
    "text",
    ["* * * * *", "30 * * * *", "0 2 * * *", "30 2 * * *", "0 0 29 2 *", "*/7 1-3 * * 0"],
    ids=["every_minute", "hourly", "daily_0200", "daily_0230_gap_and_fold", "leap_day", "odd"],
)
@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "Australia/Lord_Howe", "America/St_Johns"])
def test_a_cron_schedule_period_is_never_below_its_floor(text: str, zone: str) -> None:
    schedule = CronSchedule.parse(text, zone)
    period = nominal_period(schedule)
    assert period is not None
    assert period >= period_floor(schedule) == timedelta(minutes=1)


def test_the_floor_of_an_interval_is_its_period_and_of_a_one_off_zero() -> None:
    every = IntervalSchedule(timedelta(hours=3), EPOCH)
    assert period_floor(every) == nominal_period(every) == timedelta(hours=3)
    assert period_floor(OnceSchedule(datetime(2030, 1, 1, tzinfo=UTC))) == timedelta(0)


def test_a_cron_schedule_with_seconds_has_no_floor() -> None:
    schedule = CronSchedule.parse("*/5 * * * * *", "UTC")
    assert period_floor(schedule) == timedelta(0)
    assert nominal_period(schedule) == timedelta(seconds=5)
