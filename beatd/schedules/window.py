"""An active window: a schedule whose slots exist only from `start` until `end`.

Slots before `start` or at and after `end` are not missed runs: they do not exist, so the planner
never sees them. The window is part of the schedule's `spec`, hence of the entry's identity: a
changed window resets the horizon to now, like any other schedule change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from beatd.errors import ScheduleError
from beatd.schedules.cron import CronSchedule
from beatd.schedules.interval import IntervalSchedule
from beatd.schedules.once import OnceSchedule

_JUST_BEFORE = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class WindowedSchedule:
    """`inner`'s slots in [start, end); either bound may be None (open)."""

    inner: CronSchedule | IntervalSchedule | OnceSchedule
    start: datetime | None = None
    end: datetime | None = None
    spec: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            bound = getattr(self, name)
            if bound is not None and bound.tzinfo is None:
                raise ScheduleError(f"{name} must carry a timezone")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ScheduleError(
                f"the window ends ({self.end.isoformat()}) before it starts "
                f"({self.start.isoformat()}); end must be later than start"
            )
        bounds = [
            f"{name} {bound.astimezone(UTC).isoformat()}"
            for name, bound in (("start", self.start), ("end", self.end))
            if bound is not None
        ]
        object.__setattr__(self, "spec", f"{self.inner.spec} {' '.join(bounds)}")

    def next_after(self, t: datetime) -> datetime | None:
        if self.start is not None and t < self.start:
            t = self.start - _JUST_BEFORE  # a slot at `start` itself belongs to the window
        slot = self.inner.next_after(t)
        if slot is None or (self.end is not None and slot >= self.end):
            return None
        return slot

    def ended(self, now: datetime) -> bool:
        """Whether the window is over: no slot after `now` will ever exist."""
        return self.end is not None and self.end <= now

    def describe(self) -> str:
        bounds = [
            f"{word} {bound.isoformat()}"
            for word, bound in (("from", self.start), ("until", self.end))
            if bound is not None
        ]
        return f"{self.inner.describe()}, {' '.join(bounds)}"
