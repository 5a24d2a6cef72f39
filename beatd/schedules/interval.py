"""Fixed intervals on a grid anchored at an instant (the Unix epoch by default).

Slots are `anchor + k * every`: elapsed time, unaffected by DST, and the same on every node and
after every restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from beatd.durations import format_duration
from beatd.errors import ScheduleError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class IntervalSchedule:
    every: timedelta
    anchor: datetime = EPOCH
    spec: str = field(init=False, compare=False, repr=False)  # canonical text, made once

    def __post_init__(self) -> None:
        seconds = self.every.total_seconds()
        if seconds <= 0:
            raise ScheduleError(f"interval must be positive, got {format_duration(self.every)}")
        if seconds != int(seconds):
            raise ScheduleError(
                f"interval must be a whole number of seconds, got {seconds:g}s "
                "(a run's id is its slot to the second)"
            )
        if self.anchor.tzinfo is None:
            raise ScheduleError("anchor must carry a timezone")
        anchor = self.anchor.astimezone(UTC)  # slots come out in UTC without converting each
        object.__setattr__(self, "anchor", anchor)
        object.__setattr__(self, "spec", f"every {int(seconds)}s anchor {anchor.isoformat()}")

    def next_after(self, t: datetime) -> datetime:
        return self.anchor + self.every * ((t - self.anchor) // self.every + 1)

    def count_between(self, start: datetime, end: datetime) -> int:
        """How many slots lie in (start, end]."""
        if end <= start:
            return 0
        first = (start - self.anchor) // self.every
        last = (end - self.anchor) // self.every
        return max(0, last - first)

    def describe(self) -> str:
        text = f"every {format_duration(self.every)}"
        if self.anchor != EPOCH:
            text += f" from {self.anchor:%Y-%m-%dT%H:%M:%SZ}"
        return text
