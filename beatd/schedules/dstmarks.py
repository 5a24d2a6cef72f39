"""Which runs of a cron schedule a timezone transition touched, and by which rule.

`beatd next` marks them the way `systemd-analyze calendar` helps a reader: a run moved out of a
spring-forward gap, a run at a repeated wall time (which pass, and whether it repeats), and runs
next to a clock correction (an offset change of three hours or more: cronie's rule). The rules
are those of beatd.schedules.cron; the names are the ids of its table tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from beatd.schedules.cron import CLOCK_CORRECTION, CronSchedule, transition

_SECOND = timedelta(seconds=1)
_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class DstMark:
    rule: str  # spring_gap_fixed_time, spring_gap_wildcard, autumn_repeat_*, clock_correction_*
    note: str  # what happened, in local wall times


def dst_mark(schedule: CronSchedule, previous: datetime, fire: datetime) -> DstMark | None:
    """The mark of `fire`, the run after `previous` (or after the start of a listing)."""
    return _repeat_mark(schedule, fire) or _gap_mark(schedule, previous, fire)


def _repeat_mark(schedule: CronSchedule, fire: datetime) -> DstMark | None:
    """A run at a wall time the clock shows twice."""
    local = fire.astimezone(schedule.timezone)
    first = local.replace(fold=0).utcoffset()
    second = local.replace(fold=1).utcoffset()
    assert first is not None and second is not None
    if first <= second:
        return None
    wall = f"{local:%H:%M:%S}"
    occurrence = "second" if local.fold else "first"
    if first - second >= CLOCK_CORRECTION:
        return DstMark(
            "clock_correction_repeat",
            f"{occurrence} of two {wall}: the clock was set back {_hours(first - second)}, and "
            "every job runs again at repeated times",
        )
    if schedule.expression.wildcard:
        return DstMark(
            "autumn_repeat_wildcard",
            f"{occurrence} of two {wall} (clocks go back): a wildcard job runs at both",
        )
    return DstMark(
        "autumn_repeat_fixed_time",
        f"first of two {wall} (clocks go back): a fixed-time job runs once, not at the second",
    )


def _gap_mark(schedule: CronSchedule, previous: datetime, fire: datetime) -> DstMark | None:
    """A run after wall times the clock skipped: moved to the jump, or the skipped ones named."""
    zone = schedule.timezone
    low = previous
    while low < fire:
        before = low.astimezone(zone).utcoffset()
        jump = _next_transition(low, fire, zone)
        if jump is None:
            return None
        after = jump.astimezone(zone).utcoffset()
        assert before is not None and after is not None
        if after > before:
            gap_start = (jump + before).replace(tzinfo=None)
            gap_end = (jump + after).replace(tzinfo=None)
            wall = schedule.expression.next_wall(gap_start - _SECOND)
            if wall is not None and wall < gap_end:
                return _skipped(schedule, wall, gap_start, gap_end, after - before, jump == fire)
        low = jump
    return None


def _next_transition(low: datetime, high: datetime, zone: ZoneInfo) -> datetime | None:
    """The first offset change in (low, high], if any. Day by day, because the offsets at both
    ends may be equal with a fall-back and a spring-forward between them (a yearly job)."""
    offset = low.astimezone(zone).utcoffset()
    step_low = low
    while step_low < high:
        step_high = min(step_low + _DAY, high)
        if step_high.astimezone(zone).utcoffset() != offset:
            return transition(step_low, step_high, zone)
        step_low = step_high
    return None


def _skipped(
    schedule: CronSchedule,
    wall: datetime,
    gap_start: datetime,
    gap_end: datetime,
    shift: timedelta,
    at_jump: bool,
) -> DstMark:
    span = f"{gap_start:%H:%M}-{gap_end:%H:%M}"
    if shift >= CLOCK_CORRECTION:
        span = f"{gap_start:%Y-%m-%d %H:%M} to {gap_end:%Y-%m-%d %H:%M}"
        return DstMark(
            "clock_correction_gap",
            f"{wall:%Y-%m-%d %H:%M:%S} was skipped: the clock was set forward {_hours(shift)} "
            f"({span}), and nothing runs for skipped times",
        )
    if not schedule.expression.wildcard and at_jump:
        return DstMark(
            "spring_gap_fixed_time",
            f"for {wall:%H:%M:%S}, which does not exist (clocks go forward, {span}): a fixed-time "
            "job runs at the jump",
        )
    return DstMark(
        "spring_gap_wildcard",
        f"{wall:%H:%M:%S} was skipped (clocks go forward, {span}): a wildcard job runs only at "
        "times that exist",
    )


def _hours(delta: timedelta) -> str:
    hours = delta / timedelta(hours=1)
    return f"{hours:g} h"


__all__ = ["DstMark", "dst_mark"]
