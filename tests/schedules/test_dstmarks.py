"""DST marks of `beatd next`: one table case per named rule, and the runs left unmarked."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

import pytest

from beatd.schedules.cron import CronSchedule
from beatd.schedules.dstmarks import dst_mark


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def marks(expr: str, zone: str, start: str, count: int) -> list[tuple[str, str | None]]:
    schedule = CronSchedule.parse(expr, zone)
    times = [utc(start)]
    for _ in range(count):
        fire = schedule.next_after(times[-1])
        assert fire is not None
        times.append(fire)
    out = []
    for previous, fire in pairwise(times):
        mark = dst_mark(schedule, previous, fire)
        out.append((f"{fire:%Y-%m-%dT%H:%M:%S}", None if mark is None else mark.rule))
    return out


# id: (expression, zone, start (UTC), [(fire (UTC), rule or None)])
CASES = {
    # Berlin 2021-03-28: 02:00 CET jumps to 03:00 CEST at 01:00Z; 02:30 runs at the jump.
    "spring_gap_fixed_time": (
        "30 2 * * *",
        "Europe/Berlin",
        "2021-03-27T12:00:00",
        [("2021-03-28T01:00:00", "spring_gap_fixed_time"), ("2021-03-29T00:30:00", None)],
    ),
    # The wildcard job skips 02:30: its run at 03:30 CEST says so.
    "spring_gap_wildcard": (
        "30 * * * *",
        "Europe/Berlin",
        "2021-03-28T00:00:00",
        [("2021-03-28T00:30:00", None), ("2021-03-28T01:30:00", "spring_gap_wildcard")],
    ),
    # Berlin 2021-10-31: 03:00 CEST goes back to 02:00 CET at 01:00Z: 02:30 is shown twice.
    "autumn_repeat_fixed_time": (
        "30 2 * * *",
        "Europe/Berlin",
        "2021-10-30T12:00:00",
        [("2021-10-31T00:30:00", "autumn_repeat_fixed_time"), ("2021-11-01T01:30:00", None)],
    ),
    "autumn_repeat_wildcard": (
        "30 * * * *",
        "Europe/Berlin",
        "2021-10-31T00:00:00",
        [
            ("2021-10-31T00:30:00", "autumn_repeat_wildcard"),
            ("2021-10-31T01:30:00", "autumn_repeat_wildcard"),
            ("2021-10-31T02:30:00", None),
        ],
    ),
    # Casey 2009-10-18: 02:00 (+8) to 05:00 (+11), a correction: 03:30 that day never runs.
    "clock_correction_gap": (
        "30 3 * * *",
        "Antarctica/Casey",
        "2009-10-17T00:00:00",
        [("2009-10-18T16:30:00", "clock_correction_gap"), ("2009-10-19T16:30:00", None)],
    ),
    # Casey 2010-03-05: back from +11 to +8: the fixed 00:30 runs at both passes.
    "clock_correction_repeat_fixed_time": (
        "30 0 * * *",
        "Antarctica/Casey",
        "2010-03-04T12:00:00",
        [
            ("2010-03-04T13:30:00", "clock_correction_repeat"),
            ("2010-03-04T16:30:00", "clock_correction_repeat"),
            ("2010-03-05T16:30:00", None),
        ],
    ),
    # Apia skipped 2011-12-30 entirely: the run after it names the noon that never was.
    "apia_skipped_day": (
        "0 12 * * *",
        "Pacific/Apia",
        "2011-12-29T00:00:00",
        [
            ("2011-12-29T22:00:00", None),
            ("2011-12-30T22:00:00", "clock_correction_gap"),
            ("2011-12-31T22:00:00", None),
        ],
    ),
    # The last Sunday of March is Berlin's spring-forward day: the run moves to the jump every
    # year. From one run to the next the offset goes back and forward again (+2 to +2), and the
    # 2027 run must be marked as well as the first.
    "spring_gap_fixed_time_a_year_later": (
        "30 2 * 3 0L",
        "Europe/Berlin",
        "2026-01-01T00:00:00",
        [
            ("2026-03-29T01:00:00", "spring_gap_fixed_time"),
            ("2027-03-28T01:00:00", "spring_gap_fixed_time"),
        ],
    ),
    # A job that never meets the gap is not marked on the transition day.
    "spring_gap_not_touched": (
        "0 12 * * *",
        "Europe/Berlin",
        "2021-03-27T12:00:00",
        [("2021-03-28T10:00:00", None)],
    ),
}


@pytest.mark.parametrize(
    ("expr", "zone", "start", "expected"), list(CASES.values()), ids=list(CASES)
)
def test_marks(expr: str, zone: str, start: str, expected: list[tuple[str, str | None]]) -> None:
    assert marks(expr, zone, start, len(expected)) == expected


def test_notes_say_what_happened_in_local_wall_times() -> None:
    berlin = CronSchedule.parse("30 2 * * *", "Europe/Berlin")
    gap = dst_mark(berlin, utc("2021-03-27T12:00:00"), utc("2021-03-28T01:00:00"))
    assert gap is not None and gap.note == (
        "for 02:30:00, which does not exist (clocks go forward, 02:00-03:00): a fixed-time job "
        "runs at the jump"
    )
    repeat = dst_mark(berlin, utc("2021-10-30T12:00:00"), utc("2021-10-31T00:30:00"))
    assert repeat is not None and repeat.note == (
        "first of two 02:30:00 (clocks go back): a fixed-time job runs once, not at the second"
    )
    apia = CronSchedule.parse("0 12 * * *", "Pacific/Apia")
    skipped = dst_mark(apia, utc("2011-12-29T22:00:00"), utc("2011-12-30T22:00:00"))
    assert skipped is not None and skipped.note == (
        "2011-12-30 12:00:00 was skipped: the clock was set forward 24 h (2011-12-30 00:00 to "
        "2011-12-31 00:00), and nothing runs for skipped times"
    )
