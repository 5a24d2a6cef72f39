"""Schedules: immutable values that say when an entry is due, as aware UTC datetimes."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from beatd.schedules.cron import CronSchedule
from beatd.schedules.interval import IntervalSchedule
from beatd.schedules.once import OnceSchedule


class Schedule(Protocol):
    def next_after(self, t: datetime) -> datetime | None:
        """The first slot strictly after `t` (aware), as aware UTC; None when there is none."""

    def describe(self) -> str:
        """A short human description, such as 'every 30 minutes'."""

    @property
    def spec(self) -> str:
        """A canonical text of the schedule: equal specs fire at the same times."""


__all__ = ["CronSchedule", "IntervalSchedule", "OnceSchedule", "Schedule"]
