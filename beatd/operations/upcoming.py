"""An entry's next runs with their DST marks, as `beatd next` lists them and
`GET /v1/next-runs/{name}` returns them: each slot after a start, and the rule of
beatd.schedules.dstmarks that moved, kept or skipped something there, if one did."""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from beatd.schedules import CronSchedule, Schedule
from beatd.schedules.dstmarks import DstMark, dst_mark
from beatd.schedules.window import WindowedSchedule
from beatd.timetext import stamp

_JUST_BEFORE = timedelta(microseconds=1)  # a slot at a window's start belongs to the window


def upcoming(schedule: Schedule, start: datetime, count: int) -> list[datetime]:
    """The next `count` slots after `start` (fewer when the schedule ends)."""
    times: list[datetime] = []
    t: datetime | None = start
    while len(times) < count:
        t = schedule.next_after(t) if t is not None else None
        if t is None:
            break
        times.append(t)
    return times


def marked(
    schedule: Schedule, start: datetime, times: list[datetime]
) -> list[tuple[datetime, DstMark | None]]:
    """Each time with the DST rule that moved, kept or skipped something there, if one did."""
    cron = schedule.inner if isinstance(schedule, WindowedSchedule) else schedule
    if not isinstance(cron, CronSchedule):
        return [(t, None) for t in times]  # intervals follow elapsed time: DST touches nothing
    if isinstance(schedule, WindowedSchedule) and schedule.start is not None:
        # Slots before the window do not exist: DST moved or skipped nothing there.
        start = max(start, schedule.start - _JUST_BEFORE)
    return [(t, dst_mark(cron, previous, t)) for previous, t in pairwise([start, *times])]


def next_marked(
    schedule: Schedule, start: datetime, count: int
) -> list[tuple[datetime, DstMark | None]]:
    return marked(schedule, start, upcoming(schedule, start, count))


def dst_object(mark: DstMark | None) -> dict[str, str] | None:
    """A DST mark as JSON: {"rule", "note"}, or None."""
    return None if mark is None else {"rule": mark.rule, "note": mark.note}


def run_object(t: datetime, mark: DstMark | None) -> dict[str, Any]:
    """One run as the API returns it: its slot (UTC) and its DST mark or null."""
    return {"slot": stamp(t), "dst": dst_object(mark)}
