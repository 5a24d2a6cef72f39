"""Cron table tests: every expected instant was worked out by hand from cronie's rules.

Each case lists the first fires after a start instant, all in UTC. The comment above a case
gives the local times it comes from; offsets and change instants are from the IANA database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from beatd.errors import ScheduleError
from beatd.schedules.cron import CronSchedule


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def fires(expr: str, zone: str, start: datetime, count: int) -> list[datetime]:
    schedule = CronSchedule.parse(expr, zone)
    out: list[datetime] = []
    t: datetime | None = start
    for _ in range(count):
        assert t is not None
        t = schedule.next_after(t)
        assert t is not None
        out.append(t)
    return out


# id: (expression, zone, start (UTC), the next fires (UTC))
CASES = {
    # Berlin 2021-03-28: 02:00 CET (+1) jumps to 03:00 CEST (+2) at 01:00Z. 02:30 does not
    # exist, so the fixed-time job runs at the jump; the next day 02:30 CEST is 00:30Z.
    "spring_gap_fixed_time": (
        "30 2 * * *",
        "Europe/Berlin",
        "2021-03-27T12:00:00",
        ["2021-03-28T01:00:00", "2021-03-29T00:30:00"],
    ),
    # Same day: the wildcard job runs at 01:30 CET (00:30Z), skips 02:30, runs at 03:30 CEST.
    "spring_gap_wildcard": (
        "30 * * * *",
        "Europe/Berlin",
        "2021-03-28T00:00:00",
        ["2021-03-28T00:30:00", "2021-03-28T01:30:00"],
    ),
    # Two skipped times (02:00, 02:30) and 03:00 itself all fall on the jump: one run there.
    "spring_gap_several_times_one_run": (
        "0,30 2,3 * * *",
        "Europe/Berlin",
        "2021-03-27T23:00:00",
        ["2021-03-28T01:00:00", "2021-03-28T01:30:00", "2021-03-29T00:00:00"],
    ),
    # `0-23/2` does not start with `*`: fixed-time, so 02:00 runs at the jump (01:00Z).
    "spring_gap_hour_range_step_is_fixed_time": (
        "0 0-23/2 * * *",
        "Europe/Berlin",
        "2021-03-27T22:30:00",
        ["2021-03-27T23:00:00", "2021-03-28T01:00:00", "2021-03-28T02:00:00"],
    ),
    # `*/2` starts with `*`: a wildcard job, so 02:00 is skipped; 00:00 CET, then 04:00 CEST.
    "spring_gap_hour_star_step_is_wildcard": (
        "0 */2 * * *",
        "Europe/Berlin",
        "2021-03-27T22:30:00",
        ["2021-03-27T23:00:00", "2021-03-28T02:00:00"],
    ),
    # New York 2024-03-10: 02:00 EST jumps to 03:00 EDT at 07:00Z.
    "new_york_spring_gap_fixed_time": (
        "30 2 * * *",
        "America/New_York",
        "2024-03-09T12:00:00",
        ["2024-03-10T07:00:00", "2024-03-11T06:30:00"],
    ),
    # Berlin 2021-10-31: 03:00 CEST (+2) falls back to 02:00 CET (+1) at 01:00Z, so 02:00-02:59
    # happens twice. The fixed-time job runs at the first 02:30 only (00:30Z).
    "autumn_repeat_fixed_time": (
        "30 2 * * *",
        "Europe/Berlin",
        "2021-10-30T12:00:00",
        ["2021-10-31T00:30:00", "2021-11-01T01:30:00"],
    ),
    # Starting inside the second pass (02:10 CET): 02:30 already ran, so not again today.
    "autumn_repeat_fixed_time_from_second_pass": (
        "30 2 * * *",
        "Europe/Berlin",
        "2021-10-31T01:10:00",
        ["2021-11-01T01:30:00"],
    ),
    # The wildcard job runs at both 02:30s (00:30Z CEST, 01:30Z CET), then 03:30 CET.
    "autumn_repeat_wildcard": (
        "30 * * * *",
        "Europe/Berlin",
        "2021-10-30T23:45:00",
        ["2021-10-31T00:30:00", "2021-10-31T01:30:00", "2021-10-31T02:30:00"],
    ),
    # Starting in the first pass at 02:45 CEST: the next hour mark is the second 02:00 (CET).
    "autumn_repeat_wildcard_from_first_pass": (
        "@hourly",
        "Europe/Berlin",
        "2021-10-31T00:45:00",
        ["2021-10-31T01:00:00", "2021-10-31T02:00:00"],
    ),
    # `0-23/2` is fixed-time: 02:00 CEST (00:00Z) only, not 02:00 CET; then 04:00 CET.
    "autumn_repeat_hour_range_step_is_fixed_time": (
        "0 0-23/2 * * *",
        "Europe/Berlin",
        "2021-10-30T23:30:00",
        ["2021-10-31T00:00:00", "2021-10-31T03:00:00"],
    ),
    # `*/2` is a wildcard: both 02:00s.
    "autumn_repeat_hour_star_step_is_wildcard": (
        "0 */2 * * *",
        "Europe/Berlin",
        "2021-10-30T23:30:00",
        ["2021-10-31T00:00:00", "2021-10-31T01:00:00", "2021-10-31T03:00:00"],
    ),
    # Lord Howe 2021-10-03: 02:00 (+10:30) jumps to 02:30 (+11) at 15:30Z. 02:15 is skipped, so
    # it runs at the jump; the next day 02:15 (+11) is 15:15Z.
    "lord_howe_half_hour_gap": (
        "15 2 * * *",
        "Australia/Lord_Howe",
        "2021-10-02T12:00:00",
        ["2021-10-02T15:30:00", "2021-10-03T15:15:00"],
    ),
    # Same jump, wildcard: 01:40 (+10:30) is 15:10Z; 02:00 and 02:20 do not exist; 02:40 (+11).
    "lord_howe_half_hour_gap_wildcard": (
        "*/20 * * * *",
        "Australia/Lord_Howe",
        "2021-10-02T15:00:00",
        ["2021-10-02T15:10:00", "2021-10-02T15:40:00"],
    ),
    # Lord Howe 2022-04-03: 02:00 (+11) falls back to 01:30 (+10:30) at 15:00Z. A fixed-time
    # 01:45 runs at the first pass only (14:45Z), then 01:45 (+10:30) the next day.
    "lord_howe_half_hour_repeat": (
        "45 1 * * *",
        "Australia/Lord_Howe",
        "2022-04-02T12:00:00",
        ["2022-04-02T14:45:00", "2022-04-03T15:15:00"],
    ),
    # Santiago 2023-09-03: midnight (-4) jumps to 01:00 (-3) at 04:00Z. Midnight is skipped, so
    # the daily job runs at the jump; the next midnight (-3) is 03:00Z.
    "santiago_midnight_gap": (
        "0 0 * * *",
        "America/Santiago",
        "2023-09-02T12:00:00",
        ["2023-09-03T04:00:00", "2023-09-04T03:00:00"],
    ),
    # Santiago 2024-04-07: midnight (-3) falls back to Saturday 23:00 (-4) at 03:00Z, so
    # Saturday 23:00-23:59 happens twice: 23:30 runs at the first pass (02:30Z) only.
    "santiago_midnight_repeat": (
        "30 23 * * *",
        "America/Santiago",
        "2024-04-06T12:00:00",
        ["2024-04-07T02:30:00", "2024-04-08T03:30:00"],
    ),
    # Chatham is +12:45: 09:00 on 2023-06-15 is 20:15Z the day before.
    "chatham_odd_offset": (
        "0 9 * * *",
        "Pacific/Chatham",
        "2023-06-14T00:00:00",
        ["2023-06-14T20:15:00", "2023-06-15T20:15:00"],
    ),
    # Chatham 2023-09-24: 02:45 (+12:45) jumps to 03:45 (+13:45) at 14:00Z; 03:00 is skipped.
    "chatham_odd_offset_gap": (
        "0 3 * * *",
        "Pacific/Chatham",
        "2023-09-23T12:00:00",
        ["2023-09-23T14:00:00", "2023-09-24T13:15:00"],
    ),
    # Kolkata is +5:30 all year: 02:30 IST is 21:00Z the day before.
    "kolkata_no_dst": (
        "30 2 * * *",
        "Asia/Kolkata",
        "2024-03-10T00:00:00",
        ["2024-03-10T21:00:00", "2024-03-11T21:00:00"],
    ),
    # Kathmandu moved from +5:30 to +5:45 on 1986-01-01: a 15-minute gap at midnight
    # (18:30Z), so the daily midnight job runs at the jump, then at 00:00 +5:45 (18:15Z).
    "kathmandu_quarter_hour_change": (
        "0 0 * * *",
        "Asia/Kathmandu",
        "1985-12-31T12:00:00",
        ["1985-12-31T18:30:00", "1986-01-01T18:15:00"],
    ),
    # Troll's daylight saving is two hours (+0 to +2 at 01:00Z on 2024-03-31): still DST,
    # not a correction, so 01:30 and 02:30 both run once at the jump.
    "two_hour_gap_fixed_time": (
        "30 1,2 * * *",
        "Antarctica/Troll",
        "2024-03-30T12:00:00",
        ["2024-03-31T01:00:00", "2024-03-31T23:30:00"],
    ),
    # Casey 2009-10-18: 02:00 (+8) jumps to 05:00 (+11). Three hours is a clock correction:
    # 03:30 that day simply does not happen; the next is 03:30 (+11) on the 19th.
    "clock_correction_gap": (
        "30 3 * * *",
        "Antarctica/Casey",
        "2009-10-17T00:00:00",
        ["2009-10-18T16:30:00", "2009-10-19T16:30:00"],
    ),
    # Casey 2010-03-05: 02:00 (+11) goes back to 23:00 (+8) on the 4th, a correction: the fixed
    # 00:30 runs at both passes (13:30Z at +11, 16:30Z at +8), then on the 6th at +8.
    "clock_correction_repeat_fixed_time": (
        "30 0 * * *",
        "Antarctica/Casey",
        "2010-03-04T12:00:00",
        ["2010-03-04T13:30:00", "2010-03-04T16:30:00", "2010-03-05T16:30:00"],
    ),
    # Apia skipped 2011-12-30: 23:59:59 on the 29th (-10) was followed by midnight on the 31st
    # (+14). Noon on the 29th is 22:00Z; there is no noon on the 30th; noon on the 31st is
    # 22:00Z on the 30th.
    "apia_skipped_day": (
        "0 12 * * *",
        "Pacific/Apia",
        "2011-12-29T00:00:00",
        ["2011-12-29T22:00:00", "2011-12-30T22:00:00", "2011-12-31T22:00:00"],
    ),
    # Monrovia was -0:44:30 until 1972: 12:00 local is 12:44:30Z.
    "monrovia_sub_minute_offset": (
        "0 12 * * *",
        "Africa/Monrovia",
        "1971-06-01T00:00:00",
        ["1971-06-01T12:44:30", "1971-06-02T12:44:30"],
    ),
    # 1972-01-07 00:00 (-0:44:30) jumped to 00:44:30 GMT at 00:44:30Z. 00:30 was skipped, so
    # it runs at the jump, even though the local seconds there are 30.
    "monrovia_gap_fixed_time": (
        "30 0 * * *",
        "Africa/Monrovia",
        "1972-01-06T12:00:00",
        ["1972-01-07T00:44:30", "1972-01-08T00:30:00"],
    ),
    # Wildcard across that jump: 00:00-00:44:29 never existed, the next quarter is 00:45 GMT.
    "monrovia_gap_wildcard": (
        "*/15 * * * *",
        "Africa/Monrovia",
        "1972-01-07T00:30:00",
        ["1972-01-07T00:45:00", "1972-01-07T01:00:00"],
    ),
    "leap_day": (
        "0 12 29 2 *",
        "UTC",
        "2021-01-01T00:00:00",
        ["2024-02-29T12:00:00", "2028-02-29T12:00:00"],
    ),
    # 2000 is a leap year (divisible by 400), 2100 is not (divisible by 100).
    "leap_day_centuries": (
        "0 0 29 2 *",
        "UTC",
        "2096-03-01T00:00:00",
        ["2104-02-29T00:00:00", "2108-02-29T00:00:00"],
    ),
    # 2024-05-01 is a Wednesday: Friday the 3rd, Saturday, Sunday, then Friday the 10th.
    "fri_sun_range": (
        "0 9 * * FRI-SUN",
        "UTC",
        "2024-05-01T00:00:00",
        [
            "2024-05-03T09:00:00",
            "2024-05-04T09:00:00",
            "2024-05-05T09:00:00",
            "2024-05-10T09:00:00",
        ],
    ),
    "fri_sun_range_numeric_sunday_0": (
        "0 9 * * 5-0",
        "UTC",
        "2024-05-01T00:00:00",
        [
            "2024-05-03T09:00:00",
            "2024-05-04T09:00:00",
            "2024-05-05T09:00:00",
            "2024-05-10T09:00:00",
        ],
    ),
    "sunday_as_7": (
        "0 9 * * 7",
        "UTC",
        "2024-05-01T00:00:00",
        ["2024-05-05T09:00:00", "2024-05-12T09:00:00"],
    ),
    # Both day fields restricted: the 13th or any Friday. September 2024 starts on a Sunday;
    # Friday the 13th counts once; Sunday 13 October counts as the 13th.
    "dom_or_dow": (
        "0 0 13 * 5",
        "UTC",
        "2024-09-01T00:00:00",
        [
            "2024-09-06T00:00:00",
            "2024-09-13T00:00:00",
            "2024-09-20T00:00:00",
            "2024-09-27T00:00:00",
            "2024-10-04T00:00:00",
            "2024-10-11T00:00:00",
            "2024-10-13T00:00:00",
        ],
    ),
    # `*/2` starts with `*`, so both fields must match: odd days that are Mondays.
    "dom_star_step_and_dow": (
        "0 0 */2 * 1",
        "UTC",
        "2024-09-01T00:00:00",
        [
            "2024-09-09T00:00:00",
            "2024-09-23T00:00:00",
            "2024-10-07T00:00:00",
            "2024-10-21T00:00:00",
        ],
    ),
    "last_day": (
        "0 0 L * *",
        "UTC",
        "2024-01-15T00:00:00",
        [
            "2024-01-31T00:00:00",
            "2024-02-29T00:00:00",
            "2024-03-31T00:00:00",
            "2024-04-30T00:00:00",
        ],
    ),
    # 31 August 2024 is a Saturday and 30 November a Saturday: the Friday before.
    "last_weekday": (
        "0 0 LW * *",
        "UTC",
        "2024-08-01T00:00:00",
        [
            "2024-08-30T00:00:00",
            "2024-09-30T00:00:00",
            "2024-10-31T00:00:00",
            "2024-11-29T00:00:00",
        ],
    ),
    # The 15th: Saturday in June 2024 (Friday 14th), Monday in July, Thursday in August,
    # Sunday in September (Monday 16th).
    "nearest_weekday": (
        "0 0 15W * *",
        "UTC",
        "2024-06-01T00:00:00",
        [
            "2024-06-14T00:00:00",
            "2024-07-15T00:00:00",
            "2024-08-15T00:00:00",
            "2024-09-16T00:00:00",
        ],
    ),
    # 1 June 2024 is a Saturday: not the Friday before (May), but Monday the 3rd.
    # 1 September is a Sunday: Monday the 2nd.
    "nearest_weekday_first_of_month": (
        "0 0 1W * *",
        "UTC",
        "2024-05-15T00:00:00",
        [
            "2024-06-03T00:00:00",
            "2024-07-01T00:00:00",
            "2024-08-01T00:00:00",
            "2024-09-02T00:00:00",
        ],
    ),
    # 30 March 2024 is a Saturday (Friday 29th); 30 June a Sunday and the last day, so not
    # Monday (July) but Friday the 28th. February has no 30th.
    "nearest_weekday_last_day": (
        "0 0 30W * *",
        "UTC",
        "2024-02-01T00:00:00",
        [
            "2024-03-29T00:00:00",
            "2024-04-30T00:00:00",
            "2024-05-30T00:00:00",
            "2024-06-28T00:00:00",
        ],
    ),
    # Second Monday: 8 January, 12 February, 11 March, 8 April 2024.
    "nth_weekday": (
        "0 0 * * 1#2",
        "UTC",
        "2024-01-01T00:00:00",
        [
            "2024-01-08T00:00:00",
            "2024-02-12T00:00:00",
            "2024-03-11T00:00:00",
            "2024-04-08T00:00:00",
        ],
    ),
    # Months of 2024 with a fifth Friday: March, May, August, November.
    "nth_weekday_fifth": (
        "0 0 * * FRI#5",
        "UTC",
        "2024-01-01T00:00:00",
        [
            "2024-03-29T00:00:00",
            "2024-05-31T00:00:00",
            "2024-08-30T00:00:00",
            "2024-11-29T00:00:00",
        ],
    ),
    # Last Friday: 26 January, 23 February, 29 March, 26 April 2024.
    "last_weekday_of_month": (
        "0 0 * * 5L",
        "UTC",
        "2024-01-01T00:00:00",
        [
            "2024-01-26T00:00:00",
            "2024-02-23T00:00:00",
            "2024-03-29T00:00:00",
            "2024-04-26T00:00:00",
        ],
    ),
    "six_fields_seconds": (
        "*/20 30 9 * * *",
        "UTC",
        "2024-05-01T09:29:50",
        [
            "2024-05-01T09:30:00",
            "2024-05-01T09:30:20",
            "2024-05-01T09:30:40",
            "2024-05-02T09:30:00",
        ],
    ),
    # 02:30:15 does not exist in Berlin on 2021-03-28: a fixed-time job, so at the jump.
    "six_fields_in_gap": (
        "15 30 2 * * *",
        "Europe/Berlin",
        "2021-03-27T12:00:00",
        ["2021-03-28T01:00:00", "2021-03-29T00:30:15"],
    ),
    "macros": (
        "@hourly",
        "UTC",
        "2024-05-01T10:20:00",
        ["2024-05-01T11:00:00", "2024-05-01T12:00:00"],
    ),
    "macro_daily": ("@daily", "UTC", "2024-05-01T10:20:00", ["2024-05-02T00:00:00"]),
    "macro_weekly_is_sunday": ("@weekly", "UTC", "2024-05-01T10:20:00", ["2024-05-05T00:00:00"]),
    "macro_monthly": ("@monthly", "UTC", "2024-05-01T10:20:00", ["2024-06-01T00:00:00"]),
    "macro_yearly": ("@yearly", "UTC", "2024-05-01T10:20:00", ["2025-01-01T00:00:00"]),
    # @daily is fixed-time: Santiago's skipped midnight runs at the jump.
    "macro_daily_in_gap": (
        "@daily",
        "America/Santiago",
        "2023-09-02T12:00:00",
        ["2023-09-03T04:00:00"],
    ),
    # The start itself is never returned: strictly after.
    "strictly_after_a_fire": (
        "0 * * * *",
        "UTC",
        "2024-05-01T10:00:00",
        ["2024-05-01T11:00:00"],
    ),
    "start_with_microseconds": (
        "0 * * * *",
        "UTC",
        "2024-05-01T10:59:59.999999",
        ["2024-05-01T11:00:00"],
    ),
}


@pytest.mark.parametrize(
    ("expr", "zone", "start", "expected"), list(CASES.values()), ids=list(CASES)
)
def test_next_fires(expr: str, zone: str, start: str, expected: list[str]) -> None:
    assert fires(expr, zone, utc(start), len(expected)) == [utc(e) for e in expected]


def test_start_in_another_zone_returns_utc() -> None:
    schedule = CronSchedule.parse("0 * * * *", "Europe/Berlin")
    start = datetime(2024, 5, 1, 12, 20, tzinfo=ZoneInfo("Asia/Tokyo"))  # 03:20Z
    fire = schedule.next_after(start)
    assert fire == utc("2024-05-01T04:00:00")
    assert fire is not None and fire.tzinfo is UTC


ERRORS = {
    "out_of_range": (
        "60 * * * *",
        "invalid cron expression '60 * * * *': minute field: 60 is out of range 0-59",
    ),
    "out_of_range_day_of_week": (
        "0 0 * * 8",
        "invalid cron expression '0 0 * * 8': day of week field: 8 is out of range 0-7",
    ),
    "step_zero": (
        "*/0 * * * *",
        "invalid cron expression '*/0 * * * *': minute field: "
        "step '0' must be a positive whole number",
    ),
    "step_too_large": (
        "0 */25 * * *",
        "invalid cron expression '0 */25 * * *': hour field: step 25 is larger than the range 0-23",
    ),
    "backwards_range": (
        "0 22-2 * * *",
        "invalid cron expression '0 22-2 * * *': hour field: "
        "range 22-2 runs backwards; write it as two ranges joined by a comma",
    ),
    "wrong_field_count": (
        "0 0 * *",
        "invalid cron expression '0 0 * *': expected 5 fields (minute hour day-of-month month "
        "day-of-week) or 6 with leading seconds, got 4",
    ),
    "unknown_name": (
        "0 0 * * FUN",
        "invalid cron expression '0 0 * * FUN': day of week field: "
        "'FUN' is not a number or a name (SUN, MON, TUE, WED, THU, FRI, SAT)",
    ),
    "unknown_month_name": (
        "0 0 1 JANUARY *",
        "invalid cron expression '0 0 1 JANUARY *': month field: 'JANUARY' is not a number or "
        "a name (JAN, FEB, MAR, APR, MAY, JUN, JUL, AUG, SEP, OCT, NOV, DEC)",
    ),
    "week_out_of_range": (
        "0 0 * * 1#6",
        "invalid cron expression '0 0 * * 1#6': day of week field: in '1#6' the week must be 1-5",
    ),
    "unknown_macro": (
        "@fortnightly",
        "invalid cron expression '@fortnightly': unknown macro; use one of "
        "@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly",
    ),
}


@pytest.mark.parametrize(("expr", "message"), list(ERRORS.values()), ids=list(ERRORS))
def test_parse_errors(expr: str, message: str) -> None:
    with pytest.raises(ScheduleError) as error:
        CronSchedule.parse(expr, "UTC")
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        (
            "0 0 31 2 *",
            "invalid cron expression '0 0 31 2 *': it can never fire: February never has day 31",
        ),
        (
            "0 0 30,31 2 *",
            "invalid cron expression '0 0 30,31 2 *': it can never fire: "
            "February never has day 30 and 31",
        ),
        (
            "0 0 * * L",
            "invalid cron expression '0 0 * * L': day of week field: L needs a weekday "
            "before it, such as 5L (last Friday)",
        ),
    ],
    ids=["feb_31", "months_without_the_day", "bare_l_in_day_of_week"],
)
def test_never_fires_and_bare_l(expr: str, message: str) -> None:
    with pytest.raises(ScheduleError) as error:
        CronSchedule.parse(expr, "UTC")
    assert str(error.value) == message


def test_entries_with_one_expression_share_one_schedule() -> None:
    berlin = CronSchedule.parse("30 2 * * *", "Europe/Berlin")
    assert CronSchedule.parse("30 2 * * *", ZoneInfo("Europe/Berlin")) is berlin
    assert CronSchedule.parse("30 2 * * *", "Europe/Paris") is not berlin
    assert CronSchedule.parse("30 2 * * *", "Europe/Berlin", both_days=True) is not berlin


def test_remembered_fires_are_the_computed_ones() -> None:
    # a fresh schedule (not the shared one) for each question computes without memory
    expr = "*/7 1-3 * * *"
    shared = CronSchedule.parse(expr, "Europe/London")
    t = utc("2026-03-28T23:00:00Z")
    for _ in range(200):  # across the spring-forward night, each asked twice
        fresh = CronSchedule(shared.expression, shared.timezone)
        expected = fresh.next_after(t)
        assert shared.next_after(t) == expected
        assert shared.next_after(t) == expected
        assert expected is not None
        t = expected


def test_a_second_pass_local_time_is_not_answered_from_the_first() -> None:
    # 01:30 happens twice in New York on 2026-11-01; both times compare equal in Python
    schedule = CronSchedule.parse("0 * * * *", "America/New_York")
    zone = ZoneInfo("America/New_York")
    first = datetime(2026, 11, 1, 1, 30, tzinfo=zone)
    second = first.replace(fold=1)
    assert schedule.next_after(first) == utc("2026-11-01T06:00:00Z")  # 01:00 EST, second pass
    assert schedule.next_after(second) == utc("2026-11-01T07:00:00Z")  # 02:00 EST


@pytest.mark.parametrize(
    ("expr", "start"),
    [
        # 02:00-02:59 on the last Sunday of March is Berlin's spring gap, every year: a wildcard
        # job there never fires, and the search must end at year 9999, not raise past it.
        ("*/30 2 * 3 0L", "2026-01-01T00:00:00+00:00"),
        ("0 0 1 1 *", "9999-06-01T00:00:00+00:00"),
        ("* * * * * *", "9999-12-31T22:59:59+00:00"),
    ],
    ids=["only_in_spring_gaps", "after_the_last_new_year", "at_the_last_second"],
)
def test_the_search_ends_at_year_9999(expr: str, start: str) -> None:
    schedule = CronSchedule.parse(expr, "Europe/Berlin")
    assert schedule.next_after(datetime.fromisoformat(start)) is None
