"""A one-off run at a fixed instant."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from beatd.errors import ScheduleError


@dataclass(frozen=True, slots=True)
class OnceSchedule:
    at: datetime

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ScheduleError("at must carry a timezone")
        if self.at.microsecond:
            raise ScheduleError("at must be a whole second (a run's id is its slot to the second)")

    def next_after(self, t: datetime) -> datetime | None:
        return self.at.astimezone(UTC) if self.at > t else None

    def describe(self) -> str:
        return f"once at {self.at.isoformat()}"

    @property
    def spec(self) -> str:
        return f"at {self.at.astimezone(UTC).isoformat()}"
